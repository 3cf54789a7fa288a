//! Soak: hundreds of VMs connect, spam the daemon (good requests, hostile ones, requests left in
//! flight) and vanish. Afterwards the daemon's descriptors, threads and memory must be back where
//! they started: what a single test cannot see, a leak per connection, shows here.

mod common;

use std::time::{Duration, Instant};

use common::*;
use vgpud_harness::vnc::{CURSOR, DESKTOP_SIZE, RAW, ZRLE};
use vgpud_harness::{Daemon, ProcStats, Vm, VmConfig, VncViewer};
use vgpud_protocol::Command;

const CYCLES: usize = 200;
const WARM_UP: usize = 10;

fn stats(d: &Daemon) -> ProcStats {
    d.stats().expect("daemon stats")
}

/// One VM's life: set up, drawing, a blob mapped into the window, hostile input (a broken ring
/// or guest memory shrunk under a request), requests left in flight, and an abrupt end.
fn cycle(d: &Daemon, n: usize) {
    let socket = d.socket(n % 2);
    let cfg = VmConfig {
        display: n.is_multiple_of(3).then(|| vec![(64, 64)]),
        ..VmConfig::default()
    };
    let mut vm = Vm::connect(&socket, cfg)
        .unwrap_or_else(|e| panic!("cycle {n}: connect: {e}\n{}", d.stderr_log()));
    upload(&mut vm, 1, 64, 64, &pattern(64, 64, n as u32));
    show(&mut vm, 1, 64, 64);
    mappable_page(&mut vm, 2);
    let _ = call(
        &mut vm,
        Command::ResourceMapBlob {
            resource_id: 2,
            offset: 0,
        },
    );
    // Hostile: a bad head in a batch, a resource far too large, an unknown id.
    let req = encode(Command::GetDisplayInfo);
    let _ = vm.post_batch_with_bad_head(&[&req, &req], 1024, 50_000);
    let _ = call(&mut vm, create(3, 16384, 16384));
    let _ = call(&mut vm, Command::ResourceUnref { resource_id: 77 });
    // Left in flight: fenced and plain requests nobody waits for.
    for id in 10..20 {
        let _ = vm.post(0, &encode(create(id, 32, 32)), 64);
    }
    if n.is_multiple_of(4) {
        // A ring the guest broke: the avail index far ahead.
        let _ = vm.corrupt_avail_idx(0, 1000);
    } else if n % 4 == 1 {
        // A VMM that shrinks the guest memory under a transfer (resource 1's backing is half in
        // region 1): the daemon faults there and disconnects the VM.
        vm.shrink_region(1, 0).expect("shrink");
        let _ = vm.request(&encode(Command::TransferToHost2d {
            rect: rect(0, 0, 64, 64),
            offset: 0,
            resource_id: 1,
        }));
    }
    drop(vm);
}

/// Waits until the daemon is back to `base` (descriptors and threads) or `limit` passes.
fn settle(d: &Daemon, base: ProcStats, limit: Duration) -> ProcStats {
    let deadline = Instant::now() + limit;
    loop {
        let now = stats(d);
        if (now.fds <= base.fds && now.threads <= base.threads) || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hundreds_of_hostile_vms_leave_nothing_behind() {
    // Socket 0's VMs have a VNC output too: a viewer stays on it throughout, others come and go.
    let dir = std::env::temp_dir().join(format!("vgpud-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let vnc = dir.join("vm0.vnc");
    let settings = format!("vnc={}", vnc.display());
    let args = ["--hostmem", "1M", "--renderer", "2d"];
    let d = Daemon::spawn_with_vm_settings(vgpud(), &[&settings, ""], &args).expect("start");
    assert!(eventually(Duration::from_secs(10), || vnc.exists()));
    let mut watcher = VncViewer::connect(&vnc, &[ZRLE, CURSOR, DESKTOP_SIZE]).expect("viewer");
    watcher.set_read_timeout(Duration::from_secs(30)).unwrap();
    let watching = std::thread::spawn(move || {
        let mut incremental = false;
        while watcher
            .request(incremental)
            .and_then(|()| watcher.read_update())
            .is_ok()
        {
            incremental = true;
        }
    });
    for n in 0..WARM_UP {
        cycle(&d, n);
    }
    // Both sockets have torn their last VM down once they accept again.
    for i in 0..2 {
        drop(Vm::connect(&d.socket(i), VmConfig::default()).expect("connect"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let base = stats(&d);
    let start = Instant::now();
    for n in WARM_UP..WARM_UP + CYCLES {
        cycle(&d, n);
        if n.is_multiple_of(5) {
            // A viewer that takes one picture and leaves, or one that leaves mid-handshake.
            if let Ok(mut v) = VncViewer::connect(&vnc, &[RAW]) {
                let _ = v.request(false).and_then(|()| v.read_update().map(drop));
            }
            drop(std::os::unix::net::UnixStream::connect(&vnc));
        }
    }
    for i in 0..2 {
        drop(Vm::connect(&d.socket(i), VmConfig::default()).expect("connect"));
    }
    let end = settle(&d, base, Duration::from_secs(10));
    eprintln!(
        "{CYCLES} cycles in {:?}: fds {} -> {}, threads {} -> {}, RSS {} -> {} KiB",
        start.elapsed(),
        base.fds,
        end.fds,
        base.threads,
        end.threads,
        base.rss_kib,
        end.rss_kib
    );
    assert!(
        end.fds <= base.fds,
        "descriptors leaked: {base:?} -> {end:?}"
    );
    assert!(
        end.threads <= base.threads,
        "threads leaked: {base:?} -> {end:?}"
    );
    // Allocator caches may keep a little; a leak per cycle would show as megabytes.
    assert!(
        end.rss_kib <= base.rss_kib + 16 * 1024,
        "memory grew: {base:?} -> {end:?}"
    );
    // Every VM whose memory shrank under a transfer was disconnected for it.
    let faulted = (WARM_UP..WARM_UP + CYCLES).filter(|n| n % 4 == 1).count();
    let log = d.stderr_log();
    assert!(
        log.matches("shrank under a request (SIGBUS)").count() >= faulted,
        "fewer than {faulted} VMs disconnected for a shrunk memory file"
    );
    let mut d = d;
    assert!(d.is_running());
    d.kill();
    let _ = watching.join();
}
