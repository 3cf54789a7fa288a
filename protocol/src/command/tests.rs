use super::*;
use crate::wire::DecodeError;

/// A fenced header (fence_id 0x2a, ctx_id 3) with the type bytes given.
#[rustfmt::skip]
fn hdr(lo: u8, hi: u8) -> Vec<u8> {
    vec![
        lo, hi, 0x00, 0x00, // type
        0x01, 0x00, 0x00, 0x00, // flags = FENCE
        0x2a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // fence_id
        0x03, 0x00, 0x00, 0x00, // ctx_id
        0x00, 0x00, 0x00, 0x00, // ring_idx, padding
    ]
}

fn msg(lo: u8, hi: u8, body: &[u8]) -> Vec<u8> {
    let mut v = hdr(lo, hi);
    v.extend_from_slice(body);
    v
}

fn req(cmd: Command) -> Request {
    Request {
        hdr: CtrlHeader {
            type_: cmd.type_code(),
            flags: 1,
            fence_id: 0x2a,
            ctx_id: 3,
            ring_idx: 0,
        },
        cmd,
    }
}

/// (wire bytes, expected command); every case is also the canonical encoding.
#[rustfmt::skip]
fn wire_cases() -> Vec<(Vec<u8>, Command)> {
    let mut name = b"test".to_vec();
    name.resize(64, 0);
    vec![
        (msg(0x00, 0x01, &[]), Command::GetDisplayInfo),
        (
            msg(0x01, 0x01, &[
                0x05, 0x00, 0x00, 0x00, // resource_id
                0x01, 0x00, 0x00, 0x00, // format B8G8R8A8
                0x80, 0x02, 0x00, 0x00, // width 640
                0xe0, 0x01, 0x00, 0x00, // height 480
            ]),
            Command::ResourceCreate2d { resource_id: 5, format: 1, width: 640, height: 480 },
        ),
        (
            msg(0x02, 0x01, &[0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
            Command::ResourceUnref { resource_id: 5 },
        ),
        (
            msg(0x03, 0x01, &[
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // x, y
                0x00, 0x04, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, // 1024 x 768
                0x01, 0x00, 0x00, 0x00, // scanout_id
                0x05, 0x00, 0x00, 0x00, // resource_id
            ]),
            Command::SetScanout {
                rect: Rect { x: 0, y: 0, width: 1024, height: 768 },
                scanout_id: 1,
                resource_id: 5,
            },
        ),
        (
            msg(0x04, 0x01, &[
                0x0a, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, // x 10, y 20
                0x20, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, // 32 x 16
                0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // resource_id, pad
            ]),
            Command::ResourceFlush {
                rect: Rect { x: 10, y: 20, width: 32, height: 16 },
                resource_id: 5,
            },
        ),
        (
            msg(0x05, 0x01, &[
                0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, // x, y
                0x03, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, // width, height
                0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // offset
                0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // resource_id, pad
            ]),
            Command::TransferToHost2d {
                rect: Rect { x: 1, y: 2, width: 3, height: 4 },
                offset: 0x1122_3344_5566_7788,
                resource_id: 7,
            },
        ),
        (
            msg(0x06, 0x01, &[
                0x05, 0x00, 0x00, 0x00, // resource_id
                0x02, 0x00, 0x00, 0x00, // nr_entries
                0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, // addr
                0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // length, pad
                0x00, 0x60, 0x45, 0x23, 0x01, 0x00, 0x00, 0x00, // addr
                0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // length, pad
            ]),
            Command::ResourceAttachBacking {
                resource_id: 5,
                entries: vec![
                    MemEntry { addr: 0x1000_0000, length: 0x1000 },
                    MemEntry { addr: 0x1_2345_6000, length: 0x2000 },
                ],
            },
        ),
        (
            msg(0x07, 0x01, &[0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
            Command::ResourceDetachBacking { resource_id: 5 },
        ),
        (
            msg(0x08, 0x01, &[0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
            Command::GetCapsetInfo { capset_index: 1 },
        ),
        (
            msg(0x09, 0x01, &[0x04, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00]),
            Command::GetCapset { capset_id: 4, capset_version: 2 },
        ),
        (
            msg(0x0a, 0x01, &[0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
            Command::GetEdid { scanout: 1 },
        ),
        (
            msg(0x0b, 0x01, &[0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
            Command::ResourceAssignUuid { resource_id: 9 },
        ),
        (
            msg(0x0c, 0x01, &[
                0x09, 0x00, 0x00, 0x00, // resource_id
                0x01, 0x00, 0x00, 0x00, // blob_mem GUEST
                0x03, 0x00, 0x00, 0x00, // MAPPABLE | SHAREABLE
                0x01, 0x00, 0x00, 0x00, // nr_entries
                0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // blob_id
                0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, // size 64 KiB
                0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, // addr
                0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, // length, pad
            ]),
            Command::ResourceCreateBlob(CreateBlob {
                resource_id: 9,
                blob_mem: 1,
                blob_flags: 3,
                blob_id: 7,
                size: 0x1_0000,
                entries: vec![MemEntry { addr: 0x20_0000, length: 0x1_0000 }],
            }),
        ),
        (
            msg(0x0d, 0x01, &[
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // x, y
                0x00, 0x04, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, // 1024 x 768
                0x01, 0x00, 0x00, 0x00, // scanout_id
                0x09, 0x00, 0x00, 0x00, // resource_id
                0x00, 0x04, 0x00, 0x00, // width
                0x00, 0x03, 0x00, 0x00, // height
                0x02, 0x00, 0x00, 0x00, // format B8G8R8X8
                0x00, 0x00, 0x00, 0x00, // pad
                0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // strides
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, // offsets
                0x20, 0x00, 0x00, 0x00, 0x30, 0x00, 0x00, 0x00,
            ]),
            Command::SetScanoutBlob(ScanoutBlob {
                rect: Rect { x: 0, y: 0, width: 1024, height: 768 },
                scanout_id: 1,
                resource_id: 9,
                width: 1024,
                height: 768,
                format: 2,
                strides: [4096, 0, 0, 0],
                offsets: [0, 0x10, 0x20, 0x30],
            }),
        ),
        (
            msg(0x00, 0x02, &[
                &[
                    0x04, 0x00, 0x00, 0x00, // nlen
                    0x04, 0x00, 0x00, 0x00, // context_init: capset VENUS
                ][..],
                &name,
            ].concat()),
            Command::CtxCreate { context_init: 4, debug_name: b"test".to_vec() },
        ),
        (msg(0x01, 0x02, &[]), Command::CtxDestroy),
        (
            msg(0x02, 0x02, &[0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
            Command::CtxAttachResource { resource_id: 5 },
        ),
        (
            msg(0x03, 0x02, &[0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
            Command::CtxDetachResource { resource_id: 5 },
        ),
        (
            msg(0x04, 0x02, &[
                0x0c, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, // resource_id, target
                0x43, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, // format, bind
                0x40, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, // width, height
                0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // depth, array_size
                0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // last_level, nr_samples
                0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // flags, pad
            ]),
            Command::ResourceCreate3d(ResourceCreate3d {
                resource_id: 12,
                target: 2,
                format: 67,
                bind: 2,
                width: 64,
                height: 32,
                depth: 1,
                array_size: 1,
                last_level: 3,
                nr_samples: 0,
                flags: 8,
            }),
        ),
        (
            msg(0x06, 0x02, &[
                0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, // x, y
                0x03, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, // z, w
                0x05, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, // h, d
                0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // offset
                0x0c, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, // resource_id, level
                0x00, 0x01, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, // stride, layer_stride
            ]),
            Command::TransferFromHost3d(Transfer3d {
                box_: Box3d { x: 1, y: 2, z: 3, w: 4, h: 5, d: 6 },
                offset: 0x100,
                resource_id: 12,
                level: 2,
                stride: 0x100,
                layer_stride: 0x2000,
            }),
        ),
        (
            msg(0x07, 0x02, &[
                0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // size, pad
                0xde, 0xad, 0xbe, 0xef, 0x42,
            ]),
            Command::Submit3d { commands: vec![0xde, 0xad, 0xbe, 0xef, 0x42] },
        ),
        (
            msg(0x08, 0x02, &[
                0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // resource_id, pad
                0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // offset 4 GiB
            ]),
            Command::ResourceMapBlob { resource_id: 3, offset: 0x1_0000_0000 },
        ),
        (
            msg(0x09, 0x02, &[0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
            Command::ResourceUnmapBlob { resource_id: 3 },
        ),
        (
            msg(0x00, 0x03, &[
                0x00, 0x00, 0x00, 0x00, // scanout_id
                0x64, 0x00, 0x00, 0x00, // x 100
                0xc8, 0x00, 0x00, 0x00, // y 200
                0x00, 0x00, 0x00, 0x00, // pad
                0x0b, 0x00, 0x00, 0x00, // resource_id
                0x02, 0x00, 0x00, 0x00, // hot_x
                0x03, 0x00, 0x00, 0x00, // hot_y
                0x00, 0x00, 0x00, 0x00, // pad
            ]),
            Command::UpdateCursor(UpdateCursor {
                pos: CursorPos { scanout_id: 0, x: 100, y: 200 },
                resource_id: 11,
                hot_x: 2,
                hot_y: 3,
            }),
        ),
        (
            msg(0x01, 0x03, &[
                0x01, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, // scanout_id, x
                0x0b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // y, pad
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // resource_id, hot_x
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // hot_y, pad
            ]),
            Command::MoveCursor(UpdateCursor {
                pos: CursorPos { scanout_id: 1, x: 10, y: 11 },
                ..Default::default()
            }),
        ),
    ]
}

#[test]
fn decodes_and_encodes_spec_layouts() {
    for (bytes, cmd) in wire_cases() {
        let want = req(cmd);
        assert_eq!(
            Request::decode(&bytes, &Limits::default()),
            Ok(want.clone())
        );
        assert_eq!(want.encode(), bytes, "{want:?}");
    }
}

#[test]
fn ignores_padding_and_trailing_bytes() {
    for (mut bytes, cmd) in wire_cases() {
        bytes.extend_from_slice(&[0xff; 7]);
        assert_eq!(Request::decode(&bytes, &Limits::default()), Ok(req(cmd)));
    }
    // Non-zero padding after resource_id.
    let bytes = msg(
        0x02,
        0x01,
        &[0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff],
    );
    let got = Request::decode(&bytes, &Limits::default()).map(|r| r.cmd);
    assert_eq!(got, Ok(Command::ResourceUnref { resource_id: 5 }));
}

#[test]
fn every_command_truncated_by_one_byte() {
    for (bytes, cmd) in wire_cases() {
        let short = bytes.get(..bytes.len() - 1).unwrap_or_default();
        let got = Request::decode(short, &Limits::default());
        let want = DecodeError::Truncated {
            need: bytes.len(),
            have: bytes.len() - 1,
        };
        assert_eq!(got, Err(want), "{cmd:?}");
    }
}

#[test]
fn ctx_create_debug_name_length() {
    let mut name = [b'a'; 64];
    name[..4].copy_from_slice(b"abcd");
    #[rustfmt::skip]
    let cases: &[(&[u8], &[u8])] = &[
        (&[0x02, 0x00, 0x00, 0x00], b"ab"), // nlen shorter than the name
        (&[0x00, 0x00, 0x00, 0x00], b""),
        (&[0x40, 0x00, 0x00, 0x00], &name),
        (&[0xff, 0xff, 0xff, 0xff], &name), // clamped to the 64-byte field
    ];
    for (nlen, want) in cases {
        let bytes = msg(0x00, 0x02, &[nlen, &[0u8; 4][..], &name].concat());
        let got = Request::decode(&bytes, &Limits::default()).map(|r| r.cmd);
        let want = Command::CtxCreate {
            context_init: 0,
            debug_name: want.to_vec(),
        };
        assert_eq!(got, Ok(want));
    }
}

#[test]
fn malformed_requests() {
    let limits = Limits::default();
    let unlimited = Limits {
        max_entries: u32::MAX,
        max_submit_bytes: u32::MAX,
    };
    #[rustfmt::skip]
    let cases: Vec<(Vec<u8>, Limits, DecodeError)> = vec![
        // Attach backing: 0xffffffff entries.
        (
            msg(0x06, 0x01, &[0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff]),
            limits,
            DecodeError::TooManyEntries { count: u32::MAX, max: 262_144 },
        ),
        // Same with no limit: refused because the bytes are absent, before allocating.
        (
            msg(0x06, 0x01, &[0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff]),
            unlimited,
            DecodeError::Truncated { need: 32 + 0xffff_ffff * 16, have: 32 },
        ),
        // Three entries announced, two present.
        (
            msg(0x06, 0x01, &[&[0x05, 0, 0, 0, 0x03, 0, 0, 0][..], &[0u8; 32]].concat()),
            limits,
            DecodeError::Truncated { need: 32 + 48, have: 32 + 32 },
        ),
        // Create blob with too many entries.
        (
            msg(0x0c, 0x01, &[
                0x09, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x04, 0x00, // nr_entries 0x40001
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ]),
            limits,
            DecodeError::TooManyEntries { count: 0x4_0001, max: 262_144 },
        ),
        // Submit one byte over the limit.
        (
            msg(0x07, 0x02, &[0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00]),
            limits,
            DecodeError::SubmitTooLarge { size: (16 << 20) + 1, max: 16 << 20 },
        ),
        // Submit at the limit but with the data missing.
        (
            msg(0x07, 0x02, &[0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0xaa]),
            limits,
            DecodeError::Truncated { need: 32 + (16 << 20), have: 33 },
        ),
        (msg(0x00, 0x00, &[]), limits, DecodeError::UnknownType(0)),
        (msg(0x0e, 0x01, &[0; 64]), limits, DecodeError::UnknownType(0x10e)),
        (msg(0x00, 0x11, &[]), limits, DecodeError::UnknownType(0x1100)),
        (vec![0x00, 0x01], limits, DecodeError::Truncated { need: 24, have: 2 }),
    ];
    for (bytes, limits, want) in cases {
        assert_eq!(Request::decode(&bytes, &limits), Err(want));
    }
}

#[test]
fn decode_error_codes() {
    use crate::response::ErrorCode;
    assert_eq!(DecodeError::UnknownType(7).error_code(), ErrorCode::Unspec);
    let invalid = [
        DecodeError::Truncated { need: 1, have: 0 },
        DecodeError::TooManyEntries { count: 2, max: 1 },
        DecodeError::SubmitTooLarge { size: 2, max: 1 },
    ];
    for e in invalid {
        assert_eq!(e.error_code(), ErrorCode::InvalidParameter);
    }
}

/// One value of every variant, with distinctive non-zero fields.
fn every_variant() -> Vec<Command> {
    let rect = Rect {
        x: 1,
        y: 2,
        width: 3,
        height: 4,
    };
    let t3d = Transfer3d {
        box_: Box3d {
            x: 1,
            y: 2,
            z: 3,
            w: 4,
            h: 5,
            d: 6,
        },
        offset: u64::MAX,
        resource_id: 7,
        level: 8,
        stride: 9,
        layer_stride: 10,
    };
    let cursor = UpdateCursor {
        pos: CursorPos {
            scanout_id: 15,
            x: u32::MAX,
            y: 2,
        },
        resource_id: 3,
        hot_x: 4,
        hot_y: 5,
    };
    let entries = vec![
        MemEntry {
            addr: u64::MAX,
            length: 1,
        },
        MemEntry {
            addr: 0x1000,
            length: u32::MAX,
        },
        MemEntry::default(),
    ];
    vec![
        Command::GetDisplayInfo,
        Command::ResourceCreate2d {
            resource_id: 1,
            format: 2,
            width: 3,
            height: 4,
        },
        Command::ResourceUnref { resource_id: 1 },
        Command::SetScanout {
            rect,
            scanout_id: 5,
            resource_id: 6,
        },
        Command::ResourceFlush {
            rect,
            resource_id: 7,
        },
        Command::TransferToHost2d {
            rect,
            offset: 8,
            resource_id: 9,
        },
        Command::ResourceAttachBacking {
            resource_id: 10,
            entries: entries.clone(),
        },
        Command::ResourceAttachBacking {
            resource_id: 10,
            entries: Vec::new(),
        },
        Command::ResourceDetachBacking { resource_id: 11 },
        Command::GetCapsetInfo { capset_index: 12 },
        Command::GetCapset {
            capset_id: 13,
            capset_version: 14,
        },
        Command::GetEdid { scanout: 15 },
        Command::ResourceAssignUuid { resource_id: 16 },
        Command::ResourceCreateBlob(CreateBlob {
            resource_id: 17,
            blob_mem: 2,
            blob_flags: 7,
            blob_id: u64::MAX - 1,
            size: 1 << 40,
            entries,
        }),
        Command::SetScanoutBlob(ScanoutBlob {
            rect,
            scanout_id: 18,
            resource_id: 19,
            width: 20,
            height: 21,
            format: 22,
            strides: [23, 24, 25, 26],
            offsets: [27, 28, 29, 30],
        }),
        Command::CtxCreate {
            context_init: 0x104,
            debug_name: b"vgpud".to_vec(),
        },
        Command::CtxCreate {
            context_init: 0,
            debug_name: vec![0x55; 64],
        },
        Command::CtxDestroy,
        Command::CtxAttachResource { resource_id: 31 },
        Command::CtxDetachResource { resource_id: 32 },
        Command::ResourceCreate3d(ResourceCreate3d {
            resource_id: 33,
            target: 34,
            format: 35,
            bind: 36,
            width: 37,
            height: 38,
            depth: 39,
            array_size: 40,
            last_level: 41,
            nr_samples: 42,
            flags: 43,
        }),
        Command::TransferToHost3d(t3d),
        Command::TransferFromHost3d(t3d),
        Command::Submit3d {
            commands: (0..=255).collect(),
        },
        Command::Submit3d {
            commands: Vec::new(),
        },
        Command::ResourceMapBlob {
            resource_id: 44,
            offset: 45,
        },
        Command::ResourceUnmapBlob { resource_id: 46 },
        Command::UpdateCursor(cursor),
        Command::MoveCursor(cursor),
    ]
}

#[test]
fn roundtrip_every_variant() {
    let cmds = every_variant();
    let mut codes: Vec<u32> = cmds.iter().map(Command::type_code).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), 26, "every variant is covered");
    for cmd in cmds {
        let r = Request {
            hdr: CtrlHeader {
                type_: cmd.type_code(),
                flags: 3,
                fence_id: 77,
                ctx_id: 2,
                ring_idx: 1,
            },
            cmd,
        };
        let bytes = r.encode();
        assert_eq!(Request::decode(&bytes, &Limits::default()), Ok(r));
    }
}

#[test]
fn encode_takes_type_from_command() {
    let r = Request {
        hdr: CtrlHeader::default(),
        cmd: Command::CtxDestroy,
    };
    let got = Request::decode(&r.encode(), &Limits::default()).map(|d| d.hdr.type_);
    assert_eq!(got, Ok(0x201));
}

#[test]
fn encode_cuts_long_debug_name() {
    let r = req(Command::CtxCreate {
        context_init: 1,
        debug_name: vec![b'x'; 100],
    });
    let bytes = r.encode();
    assert_eq!(bytes.len(), 24 + 8 + 64);
    let got = Request::decode(&bytes, &Limits::default()).map(|d| d.cmd);
    let want = Command::CtxCreate {
        context_init: 1,
        debug_name: vec![b'x'; 64],
    };
    assert_eq!(got, Ok(want));
}

#[test]
fn format_sizes() {
    use crate::consts::format;
    for f in [1, 2, 3, 4, 67, 68, 121, 134] {
        assert_eq!(format::bytes_per_pixel(f), Some(4), "format {f}");
    }
    for f in [0, 5, 66, 69, 120, 133, 135, u32::MAX] {
        assert_eq!(format::bytes_per_pixel(f), None, "format {f}");
    }
}
