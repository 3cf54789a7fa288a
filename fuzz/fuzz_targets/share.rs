#![no_main]

//! Share-context sequences between two VMs' devices and one share registry: exports, imports,
//! maps, frees, resets and raw share-context streams, with invariants checked after each step.
//! The interpreter is `vgpud::fuzzing::run_share`, shared with tests/device_sequences.rs.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vgpud::fuzzing::run_share(data);
});
