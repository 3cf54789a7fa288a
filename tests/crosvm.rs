//! The device driven as crosvm's vhost-user frontend drives it (VmConfig::crosvm: its protocol
//! features, no NEED_REPLY, config and shared-memory reads before SET_FEATURES, rings of 32768
//! entries, a backend channel that counts every refused request, and every request while the
//! device is stopped, as a crash of the VM). A crosvm reset or sleep is only
//! SET_VRING_ENABLE(0) + GET_VRING_BASE on each queue, never RESET_DEVICE, and re-activation
//! sends the memory table and the rings again but not SET_FEATURES (crosvm
//! devices/src/virtio/vhost_user_frontend/mod.rs: reset, virtio_sleep, virtio_wake): after a
//! reset the driver's fresh rings at base 0, after a wake the same rings at the base
//! GET_VRING_BASE gave. crosvm keeps the window's mappings across a reset.

mod common;

use std::time::Duration;

use common::*;
use vgpud_harness::{Daemon, Vm, VmConfig};
use vgpud_protocol::{Command, ErrorCode, Response, MAP_CACHE_CACHED, SHM_ID_HOST_VISIBLE};

const PAGE: u64 = 4096;
const MAPPED: Response = Response::OkMapInfo {
    map_info: MAP_CACHE_CACHED,
};

fn crosvm_like(d: &Daemon, i: usize) -> Vm {
    Vm::connect(&d.socket(i), VmConfig::crosvm()).expect("connect")
}

fn logged(d: &Daemon, what: &str) -> bool {
    eventually(Duration::from_secs(5), || d.stderr_log().contains(what))
}

fn no_crash(vm: &Vm) {
    assert_eq!(
        vm.crashes(),
        Vec::<String>::new(),
        "crosvm would crash the VM"
    );
}

#[test]
fn a_headless_2d_guest_draws() {
    let d = daemon(1, &[]);
    let mut vm = crosvm_like(&d, 0);
    let Response::OkDisplayInfo(modes) = call(&mut vm, Command::GetDisplayInfo) else {
        panic!("no display info")
    };
    assert!(modes[0].enabled && modes[0].rect.width > 0);
    upload(&mut vm, 1, 64, 64, &pattern(64, 64, 5));
    show(&mut vm, 1, 64, 64);
    no_crash(&vm);
}

#[test]
fn blobs_mapped_and_unmapped_in_churn_never_crash_the_vm() {
    let d = daemon(1, &["--hostmem", "1M"]);
    let mut vm = crosvm_like(&d, 0);
    // Up to 8 live at once, at offsets that are reused all the time.
    for round in 0..300u32 {
        let id = round + 1;
        mappable_page(&mut vm, id);
        assert_eq!(map_blob(&mut vm, id, u64::from(id % 8) * PAGE), MAPPED);
        if round >= 7 {
            let old = id - 7;
            ok(&mut vm, Command::ResourceUnref { resource_id: old });
        }
    }
    assert_eq!(vm.shmem().mappings().len(), 7);
    no_crash(&vm);
}

#[test]
fn a_reset_without_reset_device_starts_the_device_over_and_its_ids_serve_again() {
    let d = daemon(1, &["--hostmem", "1M"]);
    let mut vm = crosvm_like(&d, 0);
    upload(&mut vm, 1, 8, 8, &pattern(8, 8, 1));
    mappable_page(&mut vm, 2);
    assert_eq!(map_blob(&mut vm, 2, 0), MAPPED);
    let _ = vm.stop_queues().expect("stop");
    vm.restart_queues(None)
        .expect("re-activate with fresh rings");
    // Everything is gone: the ids are free again, and the window place too (crosvm still has
    // the old mapping there: it must be unmapped before the new one, or KVM refuses the overlap).
    ok(&mut vm, create(1, 8, 8));
    mappable_page(&mut vm, 2);
    assert_eq!(map_blob(&mut vm, 2, 0), MAPPED);
    assert_eq!(vm.shmem().mappings().len(), 1);
    assert!(logged(&d, "event=reset by=fresh rings after a stop"));
    // Once more, to see what came after the reset go too.
    let _ = vm.stop_queues().expect("stop");
    vm.restart_queues(None)
        .expect("re-activate with fresh rings");
    ok(&mut vm, create(1, 8, 8));
    no_crash(&vm);
}

#[test]
fn a_wake_keeps_the_device() {
    let d = daemon(1, &[]);
    let mut vm = crosvm_like(&d, 0);
    // A sleep before any command comes back at base 0 with the same rings.
    let bases = vm.stop_queues().expect("sleep");
    assert_eq!(bases, vec![0, 0]);
    vm.restart_queues(Some(&bases)).expect("wake");
    upload(&mut vm, 1, 8, 8, &pattern(8, 8, 1));
    let bases = vm.stop_queues().expect("sleep");
    assert_ne!(bases[0], 0, "the control queue was used");
    vm.restart_queues(Some(&bases)).expect("wake");
    assert_eq!(
        call(&mut vm, create(1, 8, 8)),
        Response::Err(ErrorCode::InvalidResourceId),
        "resource 1 is still there"
    );
    show(&mut vm, 1, 8, 8);
    assert!(logged(&d, "event=wake state kept"));
    assert!(!d.stderr_log().contains("event=reset"));
    no_crash(&vm);
}

#[test]
fn a_fence_that_signals_while_the_vm_sleeps_is_answered_after_the_wake() {
    let d = daemon(1, &["--renderer", "fake"]);
    let mut vm = crosvm_like(&d, 0);
    let create = Command::CtxCreate {
        context_init: 0,
        debug_name: b"work".to_vec(),
    };
    assert_eq!(answer(&mut vm, &in_ctx(1, create)).1, Response::OkNodata);
    let script = Command::Submit3d {
        commands: b"delay 200".to_vec(),
    };
    let tok = vm.post(0, &fenced_cmd(1, 0, 1, script), 1024).unwrap();
    let bases = vm.stop_queues().expect("sleep");
    // The fence signals meanwhile; nothing may land on the stopped rings.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !vm.is_done(tok).unwrap(),
        "an answer landed while the device was stopped"
    );
    vm.restart_queues(Some(&bases)).expect("wake");
    // No kick: the guest waits for its answer, and gets it.
    let resp = vm.wait(tok).expect("the fenced answer after the wake");
    assert!(!resp.is_empty());
    no_crash(&vm);
}

#[test]
fn a_revocation_while_the_importer_sleeps_waits_for_its_wake_and_the_exporter_does_not() {
    let (d, policy) = share::sharing_daemon_with(
        &["a", "b"],
        r#"{"allow": [{"exporter": "a", "importers": ["b"]}]}"#,
        &["--renderer", "2d"],
    );
    let mut a = share::Sharer::with_vm(connect(&d, 0));
    let mut b = share::Sharer::with_vm(crosvm_like(&d, 1));
    share::host_blob(&mut a.vm, 1, 1, 0x11, 0);
    let uuid = a.export(1);
    b.import_and_map(uuid, 7, 0);
    assert_eq!(b.vm.shmem().mappings().len(), 1);
    let bases = b.vm.stop_queues().expect("b sleeps");
    // The exporter's unref is answered at once; b gets nothing while it sleeps.
    let started = std::time::Instant::now();
    ok(&mut a.vm, Command::ResourceUnref { resource_id: 1 });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the exporter waited for a sleeper"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        b.vm.shmem().mappings().len(),
        1,
        "nothing sent to a sleeping VMM"
    );
    b.vm.restart_queues(Some(&bases)).expect("b wakes");
    // Then the unmap comes, before b is served anything.
    assert!(eventually(Duration::from_secs(5), || b
        .vm
        .shmem()
        .mappings()
        .is_empty()));
    assert!(b.vm.shmem().read(SHM_ID_HOST_VISIBLE, 0, 16).is_none());
    ok(&mut b.vm, Command::ResourceUnref { resource_id: 7 });
    no_crash(&b.vm);
    let _ = std::fs::remove_file(policy);
}
