//! A VMM whose guest memory is a file it can resize (QEMU's memory-backend-file, hugetlbfs, an
//! unsealed memfd) shrinks it after its memory table was accepted. The daemon's next access of
//! a page past the new end faults (SIGBUS); that must cost that VM only: the daemon lives on,
//! the VM is disconnected, another VM keeps drawing and the socket serves the next VM.

mod common;

use std::time::Duration;

use common::*;
use vgpud_harness::{Daemon, Desc, Vm, DESC_F_NEXT, DESC_F_WRITE};
use vgpud_protocol::{Command, MemEntry, Response};

const SIDE: u32 = 64;

/// Draws `seed`'s pattern into resource `id` of `vm` and shows it; asserts the display shows it.
fn draws(vm: &mut Vm, id: u32, seed: u32) {
    let display = vm.display().expect("a display");
    let before = display.update_count();
    let pixels = pattern(SIDE, SIDE, seed);
    upload(vm, id, SIDE, SIDE, &pixels);
    show(vm, id, SIDE, SIDE);
    assert!(display.wait_updates(before + 1, Duration::from_secs(5)));
    assert_eq!(display.frame(0).expect("a frame").pixels, pixels);
}

/// Runs `shrink_under` against a VM on socket 0 while a VM on socket 1 draws; `shrink_under`
/// shrinks the victim's memory region 1 and makes the daemon touch it. Then checks what that
/// cost.
fn costs_only_its_vm(shrink_under: impl FnOnce(&mut Vm) -> std::io::Result<()>) {
    let mut d = daemon(2, &[]);
    let mut other = connect_with_display(&d, 1, vec![(SIDE, SIDE)]);
    draws(&mut other, 1, 1);
    let mut victim = connect(&d, 0);
    assert!(matches!(
        call(&mut victim, Command::GetDisplayInfo),
        Response::OkDisplayInfo(_)
    ));
    victim.set_timeout(Duration::from_secs(8));
    let answered = shrink_under(&mut victim);
    let err = answered.expect_err("the VM whose memory shrank was answered");
    assert_ne!(
        err.kind(),
        std::io::ErrorKind::TimedOut,
        "not disconnected: {err}"
    );
    // Logged before the connection is ended (a daemon that died of the fault never logs it).
    let log = d.stderr_log();
    assert!(
        log.contains("disconnecting the VMM: its guest memory at 0x100000000 shrank"),
        "not disconnected for the fault; the daemon {}:\n{log}",
        match d.exit_status() {
            Some(status) => format!("ended: {status}"),
            None => "runs".to_string(),
        }
    );
    assert!(d.is_running(), "the daemon died:\n{log}");
    // The other VM draws on, and the socket serves the next VM, which draws too.
    draws(&mut other, 2, 2);
    drop(victim);
    let mut next = connect_with_display(&d, 0, vec![(SIDE, SIDE)]);
    draws(&mut next, 1, 3);
    assert!(d.is_running());
}

/// Region 1 of the harness's guest memory starts here (VmConfig's default).
const REGION1: u64 = 0x1_0000_0000;

/// A request chain through raw descriptors: the request at `req`, the response buffer at `resp`.
fn raw_request(vm: &mut Vm, req: u64, resp: u64) -> std::io::Result<()> {
    let bytes = encode(Command::GetDisplayInfo);
    let descs = [
        Desc {
            addr: req,
            len: bytes.len() as u32,
            flags: DESC_F_NEXT,
            next: 1,
        },
        Desc {
            addr: resp,
            len: 1024,
            flags: DESC_F_WRITE,
            next: 0,
        },
    ];
    match vm.submit_raw(0, &descs, 0, 0, Duration::from_secs(8))? {
        Some(_) => Ok(()),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer and no disconnect",
        )),
    }
}

#[test]
fn a_request_in_memory_that_shrank_costs_only_its_vm() {
    costs_only_its_vm(|vm| {
        let req = vm.alloc_in(1, 4096, 4096);
        assert_eq!(req, REGION1);
        let resp = vm.alloc_in(0, 4096, 4096);
        vm.write_mem(req, &encode(Command::GetDisplayInfo));
        vm.shrink_region(1, 0).unwrap();
        raw_request(vm, req, resp)
    });
}

#[test]
fn a_response_buffer_in_memory_that_shrank_costs_only_its_vm() {
    costs_only_its_vm(|vm| {
        let req = vm.alloc_in(0, 4096, 4096);
        let resp = vm.alloc_in(1, 4096, 4096);
        assert_eq!(resp, REGION1);
        vm.write_mem(req, &encode(Command::GetDisplayInfo));
        vm.shrink_region(1, 0).unwrap();
        raw_request(vm, req, resp)
    });
}

#[test]
fn a_backing_in_memory_that_shrank_costs_only_its_vm() {
    // The 2D renderer reads the backing pages in the daemon on TRANSFER_TO_HOST_2D.
    costs_only_its_vm(|vm| {
        let len = SIDE * SIDE * 4;
        let at = vm.alloc_in(1, u64::from(len), 4096);
        assert_eq!(at, REGION1);
        ok(vm, create(1, SIDE, SIDE));
        ok(
            vm,
            Command::ResourceAttachBacking {
                resource_id: 1,
                entries: vec![MemEntry {
                    addr: at,
                    length: len,
                }],
            },
        );
        vm.shrink_region(1, 0).unwrap();
        vm.request(&encode(Command::TransferToHost2d {
            rect: rect(0, 0, SIDE, SIDE),
            offset: 0,
            resource_id: 1,
        }))
        .map(drop)
    });
}

#[test]
fn rings_in_memory_that_shrank_cost_only_their_vm() {
    let mut d = daemon(2, &[]);
    let mut other = connect_with_display(&d, 1, vec![(SIDE, SIDE)]);
    draws(&mut other, 1, 1);
    let mut victim = connect(&d, 0);
    ok(&mut victim, create(1, SIDE, SIDE));
    // Region 0 holds the rings: the daemon faults reading the avail ring. (The harness must not
    // touch that memory any more either, so the disconnect is seen in the log.)
    victim.shrink_region(0, 0).unwrap();
    victim.kick(0).unwrap();
    let disconnected = eventually(Duration::from_secs(8), || {
        d.stderr_log()
            .contains("disconnecting the VMM: its guest memory at 0x0 shrank")
    });
    assert!(
        disconnected,
        "not disconnected for the fault ({:?}):\n{}",
        d.exit_status(),
        d.stderr_log()
    );
    assert!(d.is_running(), "the daemon died:\n{}", d.stderr_log());
    draws(&mut other, 2, 2);
    drop(victim);
    let mut next = connect_with_display(&d, 0, vec![(SIDE, SIDE)]);
    draws(&mut next, 1, 3);
}

#[test]
fn a_backing_that_shrank_under_a_render_worker_costs_only_that_worker() {
    // A 3D VM's worker maps its guest memory itself: the fault ends that worker, which the
    // daemon reports as a renderer failure of that VM.
    let mut d: Daemon = daemon(2, &["--renderer", "fake"]);
    let mut other = connect(&d, 1);
    let mut victim = connect(&d, 0);
    for vm in [&mut victim, &mut other] {
        ok(vm, create(1, SIDE, SIDE));
    }
    let len = SIDE * SIDE * 4;
    let at = victim.alloc_in(1, u64::from(len), 4096);
    ok(
        &mut victim,
        Command::ResourceAttachBacking {
            resource_id: 1,
            entries: vec![MemEntry {
                addr: at,
                length: len,
            }],
        },
    );
    victim.shrink_region(1, 0).unwrap();
    let transfer = Command::TransferToHost2d {
        rect: rect(0, 0, SIDE, SIDE),
        offset: 0,
        resource_id: 1,
    };
    // Unfenced, the transfer may be answered before the worker faults on it; either way the
    // VM is disconnected once its worker is dead, without asking anything of the renderer.
    let _ = victim.request(&encode(transfer.clone()));
    assert!(
        disconnected_within(&mut victim, Duration::from_secs(8)),
        "the VM whose worker died is still served"
    );
    assert!(d.is_running(), "the daemon died:\n{}", d.stderr_log());
    let log = d.stderr_log();
    assert!(log.contains("event=worker-end"), "{log}");
    assert!(log.contains("status=\"signal: 7 (SIGBUS)"), "{log}");
    let gpa = other.alloc(u64::from(len), 4096);
    ok(
        &mut other,
        Command::ResourceAttachBacking {
            resource_id: 1,
            entries: vec![MemEntry {
                addr: gpa,
                length: len,
            }],
        },
    );
    ok(&mut other, transfer);
    drop(victim);
    let mut next = connect(&d, 0);
    ok(&mut next, create(1, SIDE, SIDE));
}
