//! A hostile guest: every malformed request gets an error response (or is dropped) and the
//! daemon keeps serving, this VM and others.

mod common;

use std::time::Duration;

use common::*;
use vgpud_harness::{Desc, Vm, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use vgpud_protocol::{Command, CtrlHeader, ErrorCode, MemEntry, Response, HEADER_SIZE};

fn still_serving(vm: &mut Vm) {
    assert!(matches!(
        call(vm, Command::GetDisplayInfo),
        Response::OkDisplayInfo(_)
    ));
}

fn err_of(vm: &mut Vm, raw: &[u8]) -> ErrorCode {
    let bytes = vm.request(raw).unwrap();
    match Response::decode(&bytes).unwrap().1 {
        Response::Err(code) => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn malformed_requests_get_error_responses() {
    let d = daemon(1, &[]);
    let mut vm = connect(&d, 0);
    ok(&mut vm, create(1, 16, 16));

    // nr_entries = 0xffffffff with no entries behind it.
    let mut raw = encode(Command::ResourceAttachBacking {
        resource_id: 1,
        entries: vec![],
    });
    raw[HEADER_SIZE + 4..HEADER_SIZE + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(err_of(&mut vm, &raw), ErrorCode::InvalidParameter);

    // An unknown command type.
    let mut raw = encode(Command::GetDisplayInfo);
    raw[0..4].copy_from_slice(&0x1ffu32.to_le_bytes());
    assert_eq!(err_of(&mut vm, &raw), ErrorCode::Unspec);

    // Truncated: a header cut short, and a command cut short.
    assert_eq!(
        err_of(&mut vm, &encode(Command::GetDisplayInfo)[..10]),
        ErrorCode::InvalidParameter
    );
    let full = encode(create(2, 4, 4));
    assert_eq!(
        err_of(&mut vm, &full[..full.len() - 1]),
        ErrorCode::InvalidParameter
    );
    still_serving(&mut vm);
}

#[test]
fn bad_numbers_get_the_right_error() {
    let d = daemon(1, &[]);
    let mut vm = connect(&d, 0);
    let cases: Vec<(Command, ErrorCode)> = vec![
        (create(0, 4, 4), ErrorCode::InvalidResourceId),
        (create(1, 0x4000_0000, 4), ErrorCode::InvalidParameter),
        (create(1, 65535, 65535), ErrorCode::OutOfMemory),
        (
            Command::ResourceAttachBacking {
                resource_id: 7,
                entries: vec![MemEntry {
                    addr: 0,
                    length: 16,
                }],
            },
            ErrorCode::InvalidResourceId,
        ),
        (
            Command::ResourceUnref { resource_id: 5 },
            ErrorCode::InvalidResourceId,
        ),
        (
            Command::SetScanout {
                rect: rect(0, 0, 1, 1),
                scanout_id: 16,
                resource_id: 0,
            },
            ErrorCode::InvalidScanoutId,
        ),
        (
            Command::SetScanout {
                rect: rect(0, 0, 1, 1),
                scanout_id: u32::MAX,
                resource_id: 1,
            },
            ErrorCode::InvalidScanoutId,
        ),
    ];
    for (cmd, want) in cases {
        let what = format!("{cmd:?}");
        assert_eq!(call(&mut vm, cmd), Response::Err(want), "{what}");
    }

    ok(&mut vm, create(1, 16, 16));
    let outside = [
        MemEntry {
            addr: 1 << 48,
            length: 4096,
        },
        MemEntry {
            addr: u64::MAX - 8,
            length: 4096,
        },
        // Runs off the end of region 0 (64 MiB).
        MemEntry {
            addr: (64 << 20) - 16,
            length: 4096,
        },
    ];
    for entry in outside {
        let r = call(
            &mut vm,
            Command::ResourceAttachBacking {
                resource_id: 1,
                entries: vec![entry],
            },
        );
        assert_eq!(r, Response::Err(ErrorCode::InvalidParameter), "{entry:?}");
    }
    let backing = vm.alloc(16 * 16 * 4, 4096);
    let entries = vec![MemEntry {
        addr: backing,
        length: 16 * 16 * 4,
    }];
    ok(
        &mut vm,
        Command::ResourceAttachBacking {
            resource_id: 1,
            entries,
        },
    );
    for r in [
        rect(0, 0, 17, 1),
        rect(15, 15, 2, 2),
        rect(u32::MAX, 0, 2, 2),
        rect(0, 1, 16, u32::MAX),
    ] {
        let t = Command::TransferToHost2d {
            rect: r,
            offset: 0,
            resource_id: 1,
        };
        assert_eq!(
            call(&mut vm, t),
            Response::Err(ErrorCode::InvalidParameter),
            "{r:?}"
        );
        let f = Command::ResourceFlush {
            rect: r,
            resource_id: 1,
        };
        assert_eq!(
            call(&mut vm, f),
            Response::Err(ErrorCode::InvalidParameter),
            "{r:?}"
        );
    }
    // An offset far past the backing copies nothing; the other virtio-gpu devices answer OK.
    let far = Command::TransferToHost2d {
        rect: rect(0, 0, 16, 16),
        offset: u64::MAX - 10,
        resource_id: 1,
    };
    assert_eq!(call(&mut vm, far), Response::OkNodata);
    ok(
        &mut vm,
        Command::SetScanout {
            rect: rect(0, 0, 16, 16),
            scanout_id: 0,
            resource_id: 1,
        },
    );
    ok(&mut vm, Command::ResourceUnref { resource_id: 1 });
    assert_eq!(
        call(&mut vm, Command::ResourceUnref { resource_id: 1 }),
        Response::Err(ErrorCode::InvalidResourceId)
    );
    still_serving(&mut vm);
}

#[test]
fn broken_descriptor_chains_are_survived() {
    let d = daemon(2, &[]);
    let mut vm = connect(&d, 0);
    let mut other = connect(&d, 1);
    let req = vm.alloc(4096, 4096);
    vm.write_mem(req, &encode(Command::GetDisplayInfo));
    let resp = vm.alloc(4096, 4096);
    let t = Duration::from_secs(2);

    // A loop: 0 -> 1 -> 0.
    let looped = [
        Desc {
            addr: req,
            len: HEADER_SIZE as u32,
            flags: DESC_F_NEXT,
            next: 1,
        },
        Desc {
            addr: resp,
            len: 512,
            flags: DESC_F_NEXT | DESC_F_WRITE,
            next: 0,
        },
    ];
    vm.submit_raw(0, &looped, 0, 0, t).unwrap();
    still_serving(&mut vm);

    // Addresses outside guest memory, and a next index outside the table.
    let wild = [Desc {
        addr: 1 << 50,
        len: 64,
        flags: 0,
        next: 0,
    }];
    vm.submit_raw(0, &wild, 0, 0, t).unwrap();
    let dangling = [Desc {
        addr: req,
        len: 24,
        flags: DESC_F_NEXT,
        next: 4000,
    }];
    vm.submit_raw(0, &dangling, 0, 0, t).unwrap();
    still_serving(&mut vm);

    // A response buffer too small for the answer, and none at all.
    let short = [
        Desc {
            addr: req,
            len: HEADER_SIZE as u32,
            flags: DESC_F_NEXT,
            next: 1,
        },
        Desc {
            addr: resp,
            len: 8,
            flags: DESC_F_WRITE,
            next: 0,
        },
    ];
    let used = vm.submit_raw(0, &short, 0, 0, t).unwrap();
    assert!(
        matches!(used, Some(n) if n <= 8),
        "at most the 8 writable bytes: {used:?}"
    );
    let no_resp = [Desc {
        addr: req,
        len: HEADER_SIZE as u32,
        flags: 0,
        next: 0,
    }];
    assert_eq!(vm.submit_raw(0, &no_resp, 0, 0, t).unwrap(), Some(0));

    // An indirect table that points at itself, and one with a length that is not a multiple of 16.
    let table = vm.alloc(64, 16);
    let entry = |addr: u64, len: u32, flags: u16, next: u16| {
        let mut b = addr.to_le_bytes().to_vec();
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&next.to_le_bytes());
        b
    };
    vm.write_mem(
        table,
        &[
            entry(req, 24, DESC_F_NEXT, 1),
            entry(table, 32, DESC_F_INDIRECT, 0),
        ]
        .concat(),
    );
    vm.submit_raw(
        0,
        &[Desc {
            addr: table,
            len: 32,
            flags: DESC_F_INDIRECT,
            next: 0,
        }],
        0,
        0,
        t,
    )
    .unwrap();
    vm.submit_raw(
        0,
        &[Desc {
            addr: table,
            len: 17,
            flags: DESC_F_INDIRECT,
            next: 0,
        }],
        0,
        0,
        t,
    )
    .unwrap();
    still_serving(&mut vm);

    // The cursor queue with a garbage command.
    vm.cursor(&[0xff; 40]).unwrap();
    still_serving(&mut vm);
    still_serving(&mut other);
    let _ = CtrlHeader::default();
}
