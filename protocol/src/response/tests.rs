use super::*;

/// The request header responses below answer: FENCE | INFO_RING_IDX plus an
/// unknown flag bit, fence_id 0x99, ctx_id 7, ring_idx 3.
fn request() -> CtrlHeader {
    CtrlHeader {
        type_: 0x207,
        flags: 0x83,
        fence_id: 0x99,
        ctx_id: 7,
        ring_idx: 3,
    }
}

/// The response header for `request()` with the type bytes given.
#[rustfmt::skip]
fn hdr(lo: u8, hi: u8) -> Vec<u8> {
    vec![
        lo, hi, 0x00, 0x00, // type
        0x03, 0x00, 0x00, 0x00, // flags: unknown bit dropped
        0x99, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // fence_id
        0x07, 0x00, 0x00, 0x00, // ctx_id
        0x03, 0x00, 0x00, 0x00, // ring_idx, padding
    ]
}

fn msg(lo: u8, hi: u8, body: &[u8]) -> Vec<u8> {
    let mut v = hdr(lo, hi);
    v.extend_from_slice(body);
    v
}

fn display_info() -> (Vec<u8>, Response) {
    #[rustfmt::skip]
    let first = [
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // x, y
        0x00, 0x04, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, // 1024 x 768
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // enabled, flags
    ];
    let mut bytes = msg(0x01, 0x11, &first);
    bytes.resize(408, 0);
    let mut displays = vec![DisplayOne::default(); MAX_SCANOUTS];
    displays[0] = DisplayOne {
        rect: Rect {
            x: 0,
            y: 0,
            width: 1024,
            height: 768,
        },
        enabled: true,
        flags: 0,
    };
    (bytes, Response::OkDisplayInfo(displays))
}

fn edid() -> (Vec<u8>, Response) {
    let data: Vec<u8> = (0..128).collect();
    let mut bytes = msg(
        0x04,
        0x11,
        &[0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
    );
    bytes.extend_from_slice(&data);
    bytes.resize(24 + 8 + 1024, 0);
    (bytes, Response::OkEdid(data))
}

/// (wire bytes, response); every case is the canonical encoding.
#[rustfmt::skip]
fn wire_cases() -> Vec<(Vec<u8>, Response)> {
    let uuid: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
    vec![
        (hdr(0x00, 0x11), Response::OkNodata),
        display_info(),
        (
            msg(0x02, 0x11, &[
                0x04, 0x00, 0x00, 0x00, // capset_id VENUS
                0x01, 0x00, 0x00, 0x00, // capset_max_version
                0x60, 0x01, 0x00, 0x00, // capset_max_size 352
                0x00, 0x00, 0x00, 0x00, // pad
            ]),
            Response::OkCapsetInfo { capset_id: 4, capset_max_version: 1, capset_max_size: 352 },
        ),
        (msg(0x03, 0x11, &[0xca, 0xfe, 0x01]), Response::OkCapset(vec![0xca, 0xfe, 0x01])),
        edid(),
        (msg(0x05, 0x11, &uuid), Response::OkResourceUuid(uuid)),
        (
            msg(0x06, 0x11, &[0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
            Response::OkMapInfo { map_info: 3 },
        ),
        (hdr(0x00, 0x12), Response::Err(ErrorCode::Unspec)),
        (hdr(0x01, 0x12), Response::Err(ErrorCode::OutOfMemory)),
        (hdr(0x02, 0x12), Response::Err(ErrorCode::InvalidScanoutId)),
        (hdr(0x03, 0x12), Response::Err(ErrorCode::InvalidResourceId)),
        (hdr(0x04, 0x12), Response::Err(ErrorCode::InvalidContextId)),
        (hdr(0x05, 0x12), Response::Err(ErrorCode::InvalidParameter)),
    ]
}

#[test]
fn encodes_and_decodes_spec_layouts() {
    let want_hdr = |resp: &Response| CtrlHeader {
        type_: resp.type_code(),
        flags: 3,
        ..request()
    };
    for (bytes, resp) in wire_cases() {
        assert_eq!(resp.encode(&request()), bytes, "{resp:?}");
        assert_eq!(Response::decode(&bytes), Ok((want_hdr(&resp), resp)));
    }
}

#[test]
fn sizes() {
    let table = [
        (Response::OkNodata, 24),
        (Response::OkDisplayInfo(Vec::new()), 408),
        (Response::OkEdid(Vec::new()), 24 + 8 + 1024),
        (
            Response::OkCapsetInfo {
                capset_id: 0,
                capset_max_version: 0,
                capset_max_size: 0,
            },
            40,
        ),
        (Response::OkMapInfo { map_info: 0 }, 32),
        (Response::OkResourceUuid([0; 16]), 40),
        (Response::OkCapset(vec![0; 10]), 34),
        (Response::Err(ErrorCode::InvalidParameter), 24),
    ];
    for (resp, len) in table {
        assert_eq!(resp.encode(&request()).len(), len, "{resp:?}");
    }
}

#[test]
fn unfenced_request_gives_unfenced_response() {
    let req = CtrlHeader {
        type_: 0x100,
        flags: 0,
        fence_id: 5,
        ctx_id: 0,
        ring_idx: 0,
    };
    let bytes = Response::Err(ErrorCode::InvalidScanoutId).encode(&req);
    #[rustfmt::skip]
    let want = [
        0x02, 0x12, 0, 0,  0, 0, 0, 0,  5, 0, 0, 0, 0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
    ];
    assert_eq!(bytes, want);
}

#[test]
fn display_info_extra_entries_dropped() {
    let one = DisplayOne {
        rect: Rect {
            x: 1,
            y: 2,
            width: 3,
            height: 4,
        },
        enabled: true,
        flags: 9,
    };
    let bytes = Response::OkDisplayInfo(vec![one; 20]).encode(&request());
    assert_eq!(bytes.len(), 408);
    assert_eq!(
        Response::decode(&bytes).map(|(_, r)| r),
        Ok(Response::OkDisplayInfo(vec![one; MAX_SCANOUTS]))
    );
}

#[test]
fn edid_truncated_to_blob_size() {
    let long: Vec<u8> = (0..2000).map(|i| (i % 251) as u8).collect();
    let bytes = Response::OkEdid(long.clone()).encode(&request());
    assert_eq!(bytes.len(), 24 + 8 + 1024);
    assert_eq!(bytes.get(24..28), Some(&[0x00, 0x04, 0x00, 0x00][..]));
    let got = Response::decode(&bytes).map(|(_, r)| r);
    assert_eq!(got, Ok(Response::OkEdid(long[..1024].to_vec())));

    // A size field larger than the blob is clamped when decoding.
    let mut bytes = msg(0x04, 0x11, &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    bytes.resize(24 + 8 + 1024, 0xab);
    let got = Response::decode(&bytes).map(|(_, r)| r);
    assert_eq!(got, Ok(Response::OkEdid(vec![0xab; 1024])));
}

#[test]
fn truncated_responses() {
    for (bytes, resp) in wire_cases() {
        if matches!(resp, Response::OkCapset(_)) {
            continue; // its payload is "whatever follows", so any length decodes
        }
        let short = bytes.get(..bytes.len() - 1).unwrap_or_default();
        let want = DecodeError::Truncated {
            need: bytes.len(),
            have: bytes.len() - 1,
        };
        assert_eq!(Response::decode(short), Err(want), "{resp:?}");
    }
}

#[test]
fn unknown_response_types() {
    for (lo, hi) in [(0x00, 0x01), (0x07, 0x11), (0x06, 0x12), (0xff, 0xff)] {
        let want = u32::from(lo) | u32::from(hi) << 8;
        assert_eq!(
            Response::decode(&hdr(lo, hi)),
            Err(DecodeError::UnknownType(want))
        );
    }
}

#[test]
fn error_code_table() {
    let table = [
        (ErrorCode::Unspec, 0x1200),
        (ErrorCode::OutOfMemory, 0x1201),
        (ErrorCode::InvalidScanoutId, 0x1202),
        (ErrorCode::InvalidResourceId, 0x1203),
        (ErrorCode::InvalidContextId, 0x1204),
        (ErrorCode::InvalidParameter, 0x1205),
    ];
    for (e, code) in table {
        assert_eq!(e.code(), code);
        assert_eq!(ErrorCode::from_code(code), Some(e));
        assert_eq!(Response::Err(e).type_code(), code);
    }
    for code in [0, 0x1100, 0x11ff, 0x1206, u32::MAX] {
        assert_eq!(ErrorCode::from_code(code), None);
    }
}

#[test]
fn error_codes_and_command_names_index_their_tables() {
    for (i, e) in ErrorCode::ALL.iter().enumerate() {
        assert_eq!(e.index(), i);
        assert_eq!(ErrorCode::from_code(e.code()), Some(*e));
    }
    for (i, (code, _)) in crate::COMMAND_NAMES.iter().enumerate() {
        assert_eq!(crate::command_index(*code), Some(i));
    }
    assert_eq!(crate::command_index(0x1100), None);
}
