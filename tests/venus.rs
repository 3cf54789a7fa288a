//! The Venus renderer over a real vhost-user connection: its capsets, CONTEXT_INIT contexts and
//! per-ring fences, answered by virglrenderer's render server. Needs `--features virgl` (sid's
//! virglrenderer and virgl-server), so it runs inside the testbed (scripts/test.sh).
#![cfg(feature = "virgl")]

mod common;

use std::time::Duration;

use common::*;
use vgpud_protocol::{
    Command, CtrlHeader, ErrorCode, Request, Response, FLAG_FENCE, FLAG_INFO_RING_IDX,
    F_CONTEXT_INIT, F_RESOURCE_BLOB, F_VIRGL,
};

const VENUS: u32 = 4;

fn venus() -> vgpud_harness::Daemon {
    daemon(1, &["--renderer", "venus", "--hostmem", "64M"])
}

fn in_ctx(ctx_id: u32, cmd: Command) -> Vec<u8> {
    Request {
        hdr: CtrlHeader {
            ctx_id,
            ..CtrlHeader::default()
        },
        cmd,
    }
    .encode()
}

fn fenced(ctx_id: u32, ring: u8, fence_id: u64) -> Vec<u8> {
    Request {
        hdr: CtrlHeader {
            flags: FLAG_FENCE | FLAG_INFO_RING_IDX,
            fence_id,
            ctx_id,
            ring_idx: ring,
            ..CtrlHeader::default()
        },
        // An empty command stream: the fence follows no work, but still goes through the ring.
        cmd: Command::Submit3d {
            commands: Vec::new(),
        },
    }
    .encode()
}

fn answer(vm: &mut vgpud_harness::Vm, req: &[u8]) -> (CtrlHeader, Response) {
    let bytes = vm.request(req).expect("request");
    Response::decode(&bytes).expect("decodable")
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
