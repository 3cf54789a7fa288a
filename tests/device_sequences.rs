//! Deterministic stand-in for the `device` fuzz target (fuzz/fuzz_targets/device.rs): the same
//! interpreter (`vgpud::fuzzing`) turns seeded pseudo-random inputs, and mutations of the ones
//! that got furthest, into request sequences through one VM's device model over the real 2D
//! renderer, checking its invariants after every request. It runs with the normal test suite.
//!
//! A failure prints the input and saves it to a file; replay it with
//! `cargo fuzz run -s none device FILE` (see fuzz/README.md), or here by putting it in
//! fuzz/regressions/device/.

use std::path::{Path, PathBuf};
use std::{fs, panic};

use vgpud::fuzzing::{self, Stats};

const SEED: u64 = 0x7667_7075_645f_7365;
const RANDOM: usize = 2000;
const MUTATED: usize = 6000;

/// xorshift64: tiny, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn random_input(rng: &mut Rng) -> Vec<u8> {
    let len = if rng.below(16) == 0 {
        rng.below(4096)
    } else {
        rng.below(768)
    };
    rng.bytes(len)
}

/// What libFuzzer's mutators do, roughly: flip, insert, erase, duplicate, splice.
fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 | 1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            2 => {
                let n = 1 + rng.below(16);
                let bytes = rng.bytes(n);
                v.splice(at..at, bytes);
            }
            3 => {
                let end = (at + 1 + rng.below(32)).min(v.len());
                v.drain(at.min(end)..end);
            }
            4 => {
                // Repeat a stretch: the same operations again, on the state they left.
                let end = (at + 1 + rng.below(64)).min(v.len());
                let chunk = v[at.min(end)..end].to_vec();
                v.splice(end..end, chunk);
            }
            _ => {
                let from = rng.below(other.len() + 1);
                let end = (from + rng.below(128)).min(other.len());
                v.splice(at.., other[from..end].iter().copied());
            }
        }
    }
    v
}

/// Runs one input; on a panic, saves it and says how to replay it.
fn run(input: &[u8], what: &str) -> Stats {
    match panic::catch_unwind(|| fuzzing::run(input)) {
        Ok(stats) => stats,
        Err(e) => {
            let path = std::env::temp_dir().join(format!("vgpud-device-{what}.bin"));
            let saved = fs::write(&path, input).map_or_else(
                |err| format!("(cannot save it to {}: {err})", path.display()),
                |()| format!("saved to {}", path.display()),
            );
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            eprintln!(
                "{what} failed; input of {} bytes {saved}\n{hex}\n\
                 replay: cargo fuzz run -s none device {}\n\
                 trace:  VGPUD_FUZZ_TRACE=1 cargo fuzz run -s none device {}",
                input.len(),
                path.display(),
                path.display()
            );
            panic::resume_unwind(e)
        }
    }
}

/// Whether a run got somewhere rare: worth mutating further.
fn deep(s: &Stats) -> bool {
    s.maps + s.unmaps + s.blob_scanouts + s.update_bands + s.stale_updates > 0
        || s.transfers > 2
        || s.cursor_images > 0
}

#[test]
fn random_and_mutated_sequences_keep_every_invariant() {
    let mut rng = Rng(SEED);
    let mut total = Stats::default();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    for i in 0..RANDOM + MUTATED {
        let input = if i < RANDOM || pool.is_empty() {
            random_input(&mut rng)
        } else {
            let base = &pool[rng.below(pool.len())];
            let other = &pool[rng.below(pool.len())];
            mutate(&mut rng, base, other)
        };
        let stats = run(&input, &format!("sequence-{i}"));
        if deep(&stats) && pool.len() < 512 {
            pool.push(input);
        }
        total.add(&stats);
    }
    println!("{total:#?}");
    // The interpreter must keep reaching deep states, or this test proves little.
    let reached = [
        ("created", total.created),
        ("attached", total.attached),
        ("transfers", total.transfers),
        ("scanouts", total.scanouts),
        ("updates", total.updates),
        ("update_bands", total.update_bands),
        ("stale_updates", total.stale_updates),
        ("blobs", total.blobs),
        ("maps", total.maps),
        ("unmaps", total.unmaps),
        ("maps_refused", total.maps_refused),
        ("blob_scanouts", total.blob_scanouts),
        ("cursor_images", total.cursor_images),
        ("fences", total.fences),
        ("resets", total.resets),
        ("out_of_memory", total.out_of_memory),
        ("decode_errors", total.decode_errors),
    ];
    for (what, n) in reached {
        assert!(n > 0, "no sequence reached {what}: {total:#?}");
    }
}

/// Inputs that once broke an invariant, kept as files: each must now pass.
#[test]
fn saved_inputs_keep_every_invariant() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/device");
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for path in files {
        let input = fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        run(&input, &name);
    }
}

/// The `share` fuzz target's interpreter, deterministically: two VMs exporting, importing,
/// mapping, freeing and resetting through one share registry, with well-formed and garbage
/// share-context streams.
#[test]
fn share_context_sequences_never_break() {
    let mut rng = Rng(SEED ^ 0x5348_4152);
    let (mut exported, mut imported, mut revoked, mut moved) = (0, 0, 0, 0);
    for i in 0..20_000 {
        let input = random_input(&mut rng);
        let stats = match panic::catch_unwind(|| fuzzing::run_share(&input)) {
            Ok(s) => s,
            Err(e) => {
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                eprintln!("share sequence {i} failed on input\n{hex}");
                panic::resume_unwind(e)
            }
        };
        exported += stats.exported;
        imported += stats.imported;
        revoked += stats.revoked;
        moved += stats.moved;
    }
    println!(
        "exported at {exported} steps, {imported} imports, {revoked} revocations, {moved} moves"
    );
    assert!(
        exported > 2000 && imported > 1000 && revoked > 30 && moved > 0,
        "the share interpreter reaches too little: {exported} {imported} {revoked} {moved}"
    );
}

/// The `vnc` fuzz target's interpreter, deterministically: viewers that send well-formed
/// messages in any pixel format, with garbage now and then.
#[test]
fn vnc_viewer_streams_never_break() {
    let mut rng = Rng(SEED ^ 0x564e_4321);
    let mut updates = 0;
    for i in 0..5_000 {
        let mut input = b"RFB 003.008\n".to_vec();
        for _ in 0..rng.below(12) {
            match rng.below(6) {
                0 => {
                    // SetPixelFormat: sensible sizes and shifts, or anything.
                    let mut m = vec![0, 0, 0, 0];
                    let mut pf = rng.bytes(16);
                    if rng.below(3) > 0 {
                        pf[0] = [8, 16, 32][rng.below(3)];
                        pf[3] = 1;
                        for (c, max) in [(4, 7u16), (6, 7), (8, 3)] {
                            pf[c..c + 2].copy_from_slice(&max.to_be_bytes());
                        }
                        pf[10..13].copy_from_slice(&[5, 2, 0]);
                    }
                    m.extend(pf);
                    input.extend(m);
                }
                1 => {
                    let n = rng.below(6) as u16;
                    input.extend([2, 0]);
                    input.extend(n.to_be_bytes());
                    for _ in 0..n {
                        input.extend([16i32, 0, -239, -223][rng.below(4)].to_be_bytes());
                    }
                }
                2 | 3 => {
                    input.extend([3, rng.below(2) as u8]);
                    for _ in 0..4 {
                        input.extend((rng.below(120) as u16).to_be_bytes());
                    }
                }
                4 => {
                    let len = rng.below(40);
                    input.extend([6, 0, 0, 0]);
                    input.extend((len as u32).to_be_bytes());
                    input.extend(rng.bytes(len));
                }
                _ => {
                    let len = rng.below(24);
                    input.extend(rng.bytes(len));
                }
            }
        }
        match panic::catch_unwind(|| fuzzing::run_vnc(&input)) {
            Ok(n) => updates += n,
            Err(e) => {
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                eprintln!("vnc stream {i} failed on input\n{hex}");
                panic::resume_unwind(e)
            }
        }
    }
    assert!(
        updates > 3_000,
        "the vnc interpreter encodes too little: {updates}"
    );
}
