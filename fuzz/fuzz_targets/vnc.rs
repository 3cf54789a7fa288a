#![no_main]

//! What a VNC viewer sends, read as vgpud's output reads it, every update request answered in
//! the viewer's pixel format (Raw and ZRLE). The interpreter is `vgpud::fuzzing::run_vnc`,
//! shared with tests/device_sequences.rs.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vgpud::fuzzing::run_vnc(data);
});
