//! The Venus renderer over a real vhost-user connection: its capsets, CONTEXT_INIT contexts and
//! per-ring fences, answered by virglrenderer's render server. Needs `--features virgl` (sid's
//! virglrenderer and virgl-server), so it runs inside the testbed (scripts/test.sh).
#![cfg(feature = "virgl")]

mod common;

use std::time::Duration;

use common::*;
use vgpud_protocol::{
    Command, ErrorCode, Response, FLAG_FENCE, F_CONTEXT_INIT, F_RESOURCE_BLOB, F_VIRGL,
};

const VENUS: u32 = 4;

fn venus() -> vgpud_harness::Daemon {
    daemon(1, &["--renderer", "venus", "--hostmem", "64M"])
}

/// A fenced empty command stream: the fence follows no work, but still goes through the ring.
fn fenced(ctx_id: u32, ring: u8, fence_id: u64) -> Vec<u8> {
    fenced_cmd(
        ctx_id,
        ring,
        fence_id,
        Command::Submit3d {
            commands: Vec::new(),
        },
    )
}

#[test]
fn venus_capset_contexts_and_features() {
    let d = venus();
    let mut vm = connect(&d, 0);
    let f = vm.offered_features();
    for bit in [F_VIRGL, F_CONTEXT_INIT, F_RESOURCE_BLOB] {
        assert_ne!(f & (1 << bit), 0, "feature bit {bit}");
    }
    let ids: Vec<u32> = (0..3)
        .map(
            |i| match call(&mut vm, Command::GetCapsetInfo { capset_index: i }) {
                Response::OkCapsetInfo { capset_id, .. } => capset_id,
                other => panic!("capset {i}: {other:?}"),
            },
        )
        .collect();
    assert!(ids.contains(&VENUS), "capsets {ids:?}");
    let Response::OkCapset(caps) = call(
        &mut vm,
        Command::GetCapset {
            capset_id: VENUS,
            capset_version: 0,
        },
    ) else {
        panic!("no Venus capset")
    };
    assert!(
        caps.iter().any(|&b| b != 0),
        "the Venus capset is filled in (the render server answered)"
    );
    let create = |context_init| Command::CtxCreate {
        context_init,
        debug_name: b"venus-test".to_vec(),
    };
    assert_eq!(
        answer(&mut vm, &in_ctx(1, create(VENUS))).1,
        Response::OkNodata
    );
    assert_eq!(
        answer(&mut vm, &in_ctx(2, create(9))).1,
        Response::Err(ErrorCode::InvalidParameter),
        "a capset the renderer does not offer"
    );
}

#[test]
fn fences_on_several_rings_each_answer_on_their_own_timeline() {
    let d = venus();
    let mut vm = connect(&d, 0);
    vm.set_timeout(Duration::from_secs(10));
    let create = Command::CtxCreate {
        context_init: VENUS,
        debug_name: b"rings".to_vec(),
    };
    assert_eq!(answer(&mut vm, &in_ctx(3, create)).1, Response::OkNodata);
    // Several fences in flight on three rings; each answer echoes its own fence and ring.
    let mut tokens = Vec::new();
    for i in 0..12u64 {
        let ring = (i % 3) as u8;
        let tok = vm.post(0, &fenced(3, ring, 100 + i), 64).expect("post");
        tokens.push((tok, ring, 100 + i));
    }
    for (tok, ring, fence) in tokens {
        let bytes = vm.wait(tok).expect("fenced answer");
        let (hdr, resp) = Response::decode(&bytes).expect("decodable");
        assert_eq!(resp, Response::OkNodata);
        assert_eq!(
            (hdr.flags & FLAG_FENCE, hdr.fence_id, hdr.ring_idx),
            (FLAG_FENCE, fence, ring)
        );
    }
    // A fence on a context that does not exist is answered at once, not lost.
    let (_, resp) = answer(&mut vm, &fenced(77, 0, 1));
    assert_eq!(resp, Response::Err(ErrorCode::InvalidContextId));
}

#[test]
fn three_vms_with_the_same_ids_each_show_their_own_picture() {
    let d = daemon(3, &["--renderer", "venus", "--hostmem", "64M"]);
    let mut vms: Vec<_> = (0..3)
        .map(|i| connect_with_display(&d, i, vec![(64, 64)]))
        .collect();
    for (i, vm) in vms.iter_mut().enumerate() {
        // Resource 1 in every VM, drawn by virglrenderer in that VM's own worker.
        upload(vm, 1, 64, 64, &pattern(64, 64, i as u32));
        show(vm, 1, 64, 64);
    }
    assert_eq!(workers(&d).len(), 3, "one render worker per VM");
    for (i, vm) in vms.iter_mut().enumerate() {
        let display = vm.display().unwrap();
        assert!(display.wait_updates(1, std::time::Duration::from_secs(10)));
        let frame = display.frame(0).unwrap();
        assert!(
            frame.pixels == pattern(64, 64, i as u32),
            "VM {i} shows another picture than its own"
        );
    }
}

#[test]
fn a_killed_worker_costs_only_its_vm() {
    let d = daemon(2, &["--renderer", "venus", "--hostmem", "64M"]);
    let mut victim = connect(&d, 0);
    upload(&mut victim, 1, 16, 16, &pattern(16, 16, 1));
    let mut other = connect(&d, 1);
    upload(&mut other, 1, 16, 16, &pattern(16, 16, 2));
    let victim_worker = *workers(&d).iter().min().expect("workers started");
    // SAFETY: kill only sends a signal.
    unsafe { libc::kill(victim_worker as i32, libc::SIGKILL) };
    let _ = victim.request(&encode(create(2, 16, 16)));
    assert!(
        disconnected_within(&mut victim, Duration::from_secs(8)),
        "a VM whose worker died is still served"
    );
    // The other VM goes on, fences included (the global timeline, signalled by its worker).
    let global_fence = vgpud_protocol::Request {
        hdr: vgpud_protocol::CtrlHeader {
            flags: FLAG_FENCE,
            fence_id: 5,
            ..Default::default()
        },
        cmd: create(3, 16, 16),
    };
    let (hdr, r) = answer(&mut other, &global_fence.encode());
    assert_eq!((hdr.fence_id, r), (5, Response::OkNodata));
    // And the socket serves the next VM, with a worker of its own.
    drop(victim);
    let mut next = connect(&d, 0);
    upload(&mut next, 1, 16, 16, &pattern(16, 16, 3));
}
