//! Many VMs in one daemon: isolation, disconnects, reconnects, and teardown.

mod common;

use std::time::Duration;

use common::*;
use vgpud_protocol::{Command, ErrorCode, Response};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn two_vms_use_the_same_ids_in_isolation() {
    let d = daemon(2, &[]);
    let mut a = connect_with_display(&d, 0, vec![(64, 64)]);
    let mut b = connect_with_display(&d, 1, vec![(64, 64)]);
    let (pa, pb) = (pattern(64, 64, 0xa), pattern(64, 64, 0xb));
    upload(&mut a, 1, 64, 64, &pa);
    upload(&mut b, 1, 64, 64, &pb);
    ok(&mut a, create(2, 8, 8));
    for (vm, _) in [(&mut a, 0), (&mut b, 1)] {
        ok(
            vm,
            Command::SetScanout {
                rect: rect(0, 0, 64, 64),
                scanout_id: 0,
                resource_id: 1,
            },
        );
        ok(
            vm,
            Command::ResourceFlush {
                rect: rect(0, 0, 64, 64),
                resource_id: 1,
            },
        );
    }
    for (vm, expected) in [(&a, &pa), (&b, &pb)] {
        let display = vm.display().unwrap();
        assert!(display.wait_updates(1, Duration::from_secs(5)));
        assert!(
            &display.frame(0).unwrap().pixels == expected,
            "each VM sees its own resource 1"
        );
    }
    // B cannot name A's resource 2, nor free A's resource 1 by unref'ing its own.
    let r = call(&mut b, Command::ResourceUnref { resource_id: 2 });
    assert_eq!(r, Response::Err(ErrorCode::InvalidResourceId));
    ok(&mut b, Command::ResourceUnref { resource_id: 1 });
    ok(
        &mut a,
        Command::ResourceFlush {
            rect: rect(0, 0, 64, 64),
            resource_id: 1,
        },
    );
}

#[test]
fn disconnect_mid_stream_then_reconnect_to_a_fresh_device() {
    let d = daemon(1, &[]);
    let mut vm = connect(&d, 0);
    ok(&mut vm, create(1, 16, 16));
    for i in 0..64 {
        vm.post(0, &encode(create(100 + i, 16, 16)), 64).unwrap();
    }
    vm.disconnect();
    let mut vm = connect(&d, 0);
    // The old VM's resources are gone: id 1 is free again.
    ok(&mut vm, create(1, 16, 16));
    assert!(matches!(
        call(&mut vm, Command::GetDisplayInfo),
        Response::OkDisplayInfo(_)
    ));
}

#[test]
fn one_of_three_vms_killed_leaves_the_others_serving() {
    let mut d = daemon(3, &[]);
    let mut vms: Vec<_> = (0..3)
        .map(|i| connect_with_display(&d, i, vec![(32, 32)]))
        .collect();
    for vm in &mut vms {
        upload(vm, 1, 32, 32, &pattern(32, 32, 5));
    }
    let victim = vms.remove(1);
    // Abandon it with requests in flight, as a killed VMM would.
    let mut victim = victim;
    for i in 0..32 {
        victim.post(0, &encode(create(10 + i, 32, 32)), 64).unwrap();
    }
    drop(victim);
    for vm in &mut vms {
        ok(
            vm,
            Command::SetScanout {
                rect: rect(0, 0, 32, 32),
                scanout_id: 0,
                resource_id: 1,
            },
        );
        ok(
            vm,
            Command::ResourceFlush {
                rect: rect(0, 0, 32, 32),
                resource_id: 1,
            },
        );
        assert!(vm
            .display()
            .unwrap()
            .wait_updates(1, Duration::from_secs(5)));
    }
    assert!(d.is_running());
    // The killed VM's socket takes a new VM.
    let mut again = connect(&d, 1);
    ok(&mut again, create(1, 8, 8));
}

#[test]
fn a_vm_leaving_frees_its_memory() {
    let d = daemon(1, &["--max-resource-memory", "512M"]);
    let before = rss_kib(d.pid());
    let mut vm = connect(&d, 0);
    // Eight 16 MiB resources, each fully written by a transfer from the same guest pages.
    let side = 2048;
    let pixels = pattern(side, side / 2, 7);
    let half = vm.alloc(pixels.len() as u64, 4096);
    vm.write_mem(half, &pixels);
    for id in 1..=8 {
        ok(&mut vm, create(id, side, side));
        let entries = vec![
            vgpud_protocol::MemEntry {
                addr: half,
                length: pixels.len() as u32,
            },
            vgpud_protocol::MemEntry {
                addr: half,
                length: pixels.len() as u32,
            },
        ];
        ok(
            &mut vm,
            Command::ResourceAttachBacking {
                resource_id: id,
                entries,
            },
        );
        ok(
            &mut vm,
            Command::TransferToHost2d {
                rect: rect(0, 0, side, side),
                offset: 0,
                resource_id: id,
            },
        );
    }
    let during = rss_kib(d.pid());
    assert!(
        during > before + 100_000,
        "resources resident: {before} KiB -> {during} KiB"
    );
    vm.disconnect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let after = rss_kib(d.pid());
        if after < during - 100_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "RSS stayed at {after} KiB after disconnect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn each_socket_may_have_settings_of_its_own() {
    use vgpud_protocol::{F_RESOURCE_BLOB, F_VIRGL};
    let d = vgpud_harness::Daemon::spawn_with_vm_settings(
        vgpud(),
        &["hostmem=1M,scanouts=2", "renderer=fake", ""],
        &["--renderer", "2d"],
    )
    .expect("start vgpud");
    let offered = |i: usize| connect(&d, i).offered_features();
    let blob = 1 << F_RESOURCE_BLOB;
    let virgl = 1 << F_VIRGL;
    assert_eq!(
        (offered(0) & blob, offered(0) & virgl),
        (blob, 0),
        "2D with a window"
    );
    assert_eq!(
        (offered(1) & blob, offered(1) & virgl),
        (0, virgl),
        "3D, no window"
    );
    assert_eq!(
        (offered(2) & blob, offered(2) & virgl),
        (0, 0),
        "the daemon's defaults"
    );
    let scanouts = |i: usize| {
        let cfg = connect(&d, i).get_config(8, 4).expect("config");
        u32::from_le_bytes(cfg.try_into().expect("4 bytes"))
    };
    assert_eq!((scanouts(0), scanouts(2)), (2, 1));
}
