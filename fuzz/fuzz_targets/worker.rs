//! The broker's decoding of what a render worker sends: a worker runs GPU driver code for a guest
//! and is trusted no more than the guest. Nothing may panic, and whatever decodes must encode
//! back into a frame that decodes to the same message, on the socket and in a doorbell slot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vgpud_protocol::worker::{decode, encode, frame_len, slot_body, slot_frame, Event, Reply};

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.get(..4) {
        let _ = frame_len([header[0], header[1], header[2], header[3]]);
    }
    // A doorbell slot as a worker may have left it: numbered 1 (its first frame), any length.
    if let Ok(body) = slot_body(data, 1) {
        if let Ok(reply) = decode::<Reply>(body) {
            let slot = slot_frame(&reply, 1).expect("encodes").expect("fits a slot");
            let again = slot_body(&slot, 1).expect("re-reads");
            assert_eq!(decode::<Reply>(again).expect("re-decodes"), reply);
        }
    }
    if let Ok(reply) = decode::<Reply>(data) {
        let frame = encode(&reply).expect("a decoded reply encodes");
        assert_eq!(decode::<Reply>(&frame[4..]).expect("re-decodes"), reply);
    }
    if let Ok(event) = decode::<Event>(data) {
        let frame = encode(&event).expect("a decoded event encodes");
        assert_eq!(decode::<Event>(&frame[4..]).expect("re-decodes"), event);
    }
});
