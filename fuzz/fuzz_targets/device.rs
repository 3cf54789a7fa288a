#![no_main]

//! Request sequences through one VM's device model, over the real 2D renderer and in-process
//! memfd guest memory, with every invariant checked after each request. The interpreter is
//! `vgpud::fuzzing`, shared with the deterministic test tests/device_sequences.rs.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vgpud::fuzzing::run(data);
});
