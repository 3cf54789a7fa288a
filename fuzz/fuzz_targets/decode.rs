#![no_main]

use libfuzzer_sys::fuzz_target;
use vgpud_protocol::share::{decode_stream, NO_REPLY};
use vgpud_protocol::{Limits, Request, Response, FLAG_FENCE, FLAG_INFO_RING_IDX};

fuzz_target!(|data: &[u8]| {
    // Small limits too, so the limit checks are reached with short inputs.
    let small = Limits {
        max_entries: 4,
        max_submit_bytes: 64,
    };
    for limits in [Limits::default(), small] {
        if let Ok(req) = Request::decode(data, &limits) {
            assert_eq!(Request::decode(&req.encode(), &limits), Ok(req));
        }
    }

    if let Ok((hdr, resp)) = Response::decode(data) {
        let (hdr2, resp2) = Response::decode(&resp.encode(&hdr)).expect("re-decode");
        assert_eq!(resp2, resp);
        assert_eq!(hdr2.type_, hdr.type_);
        assert_eq!(hdr2.flags, hdr.flags & (FLAG_FENCE | FLAG_INFO_RING_IDX));
        assert_eq!(
            (hdr2.fence_id, hdr2.ctx_id, hdr2.ring_idx),
            (hdr.fence_id, hdr.ctx_id, hdr.ring_idx)
        );
    }

    // The share context's command streams: what decodes re-encodes to the very same bytes
    // (reserved fields are 0, so the encoding is canonical).
    if let Ok(cmds) = decode_stream(data) {
        let again: Vec<u8> = cmds
            .iter()
            .flat_map(|c| c.command.encode(c.reply_offset.unwrap_or(NO_REPLY)))
            .collect();
        assert_eq!(again, data);
        assert_eq!(decode_stream(&again).expect("re-decode"), cmds);
    }
});
