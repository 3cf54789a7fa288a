//! Sharing between VMs (the share context), measured through real sockets with the harness
//! frontend:
//!
//! - import + map of a 1 MiB and a 256 MiB buffer (IMPORT, RESOURCE_CREATE_BLOB, MAP_BLOB): the
//!   target is that size does not matter (nothing is copied);
//! - a fence wait across VMs against the same wait inside one VM: the time from the producer's
//!   fence being answered to the dependent answer, with the scripted renderer;
//! - revocation: the exporter's RESOURCE_UNREF round trip with 0, 1, 8 and 64 importers mapped
//!   (each importer's mapping is removed before the exporter is answered);
//! - moves under the memory budget: 64 MiB buffers moved out to files and back, against memcpy;
//! - what the budget check costs every request of a VM that shares.
//!
//! `cargo bench --bench sharing`; knob `VGPUD_BENCH_ROUNDS` (20). Without `--bench` (cargo test
//! --benches) a quick smoke run.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::knob;
use vgpud_harness::{Daemon, Token, Vm, VmConfig};
use vgpud_protocol::share::{decode_reply, ShareCommand, CAPSET_SHARE, NO_REPLY};
use vgpud_protocol::{
    Command, CreateBlob, CtrlHeader, MemEntry, Reader, Request, Response, BLOB_FLAG_USE_MAPPABLE,
    BLOB_MEM_GUEST, BLOB_MEM_HOST3D, FLAG_FENCE, FLAG_INFO_RING_IDX,
};

const SHARE_CTX: u32 = 1;
const RENDER_CTX: u32 = 2;
const REPLY_BLOB: u32 = 1;
const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;

fn encode(ctx_id: u32, cmd: Command) -> Vec<u8> {
    Request {
        hdr: CtrlHeader {
            ctx_id,
            ..CtrlHeader::default()
        },
        cmd,
    }
    .encode()
}

fn fenced(ctx_id: u32, ring: u8, cmd: Command) -> Vec<u8> {
    Request {
        hdr: CtrlHeader {
            flags: FLAG_FENCE | FLAG_INFO_RING_IDX,
            ctx_id,
            ring_idx: ring,
            fence_id: 1,
            ..CtrlHeader::default()
        },
        cmd,
    }
    .encode()
}

fn call(vm: &mut Vm, ctx: u32, cmd: Command) -> Response {
    let bytes = vm.request(&encode(ctx, cmd)).expect("request");
    Response::decode(&bytes).expect("response").1
}

fn ok(vm: &mut Vm, ctx: u32, cmd: Command) {
    let what = format!("{cmd:?}");
    let r = call(vm, ctx, cmd);
    assert!(
        matches!(r, Response::OkNodata | Response::OkMapInfo { .. }),
        "{what}: {r:?}"
    );
}

/// A guest blob of `len` bytes in region 0; returns where it is.
fn guest_blob(vm: &mut Vm, id: u32, len: u64) -> u64 {
    let gpa = vm.alloc_in(0, len, PAGE);
    let create = Command::ResourceCreateBlob(CreateBlob {
        resource_id: id,
        blob_mem: BLOB_MEM_GUEST,
        blob_flags: BLOB_FLAG_USE_MAPPABLE,
        blob_id: 0,
        size: len,
        entries: vec![MemEntry {
            addr: gpa,
            length: len as u32,
        }],
    });
    ok(vm, 0, create);
    gpa
}

/// A mappable host blob (daemon memory) of `len` bytes: what a VM exports.
fn host_blob(vm: &mut Vm, id: u32, len: u64) {
    let create = Command::ResourceCreateBlob(CreateBlob {
        resource_id: id,
        blob_mem: BLOB_MEM_HOST3D,
        blob_flags: BLOB_FLAG_USE_MAPPABLE,
        blob_id: 0,
        size: len,
        entries: vec![],
    });
    ok(vm, 0, create);
}

/// A VM with a share context and a reply blob.
struct Sharer {
    vm: Vm,
    replies: u64,
}

impl Sharer {
    fn connect(d: &Daemon, i: usize, memory: u64) -> Sharer {
        let cfg = VmConfig {
            regions: vec![(0, memory)],
            timeout: Duration::from_secs(30),
            ..VmConfig::default()
        };
        let mut vm = Vm::connect(&d.socket(i), cfg).expect("connect");
        let replies = guest_blob(&mut vm, REPLY_BLOB, PAGE);
        let create = Command::CtxCreate {
            context_init: CAPSET_SHARE,
            debug_name: b"bench".to_vec(),
        };
        ok(&mut vm, SHARE_CTX, create);
        let mut s = Sharer { vm, replies };
        s.run_quiet(ShareCommand::SetReplyBlob {
            resource_id: REPLY_BLOB,
        });
        s
    }

    fn run_quiet(&mut self, c: ShareCommand) {
        let cmd = Command::Submit3d {
            commands: c.encode(NO_REPLY),
        };
        ok(&mut self.vm, SHARE_CTX, cmd);
    }

    fn run(&mut self, c: ShareCommand) -> Vec<u8> {
        let cmd = Command::Submit3d {
            commands: c.encode(0),
        };
        ok(&mut self.vm, SHARE_CTX, cmd);
        let bytes = self.vm.read_mem(self.replies, 64);
        let (status, payload) = decode_reply(&bytes).expect("reply");
        assert_eq!(status, 0, "share command failed");
        payload.to_vec()
    }

    fn export(&mut self, id: u32) -> [u8; 16] {
        self.run(ShareCommand::Export { resource_id: id })
            .try_into()
            .expect("uuid")
    }

    /// IMPORT, RESOURCE_CREATE_BLOB and MAP_BLOB of `uuid` as resource `id` at `offset`.
    fn import_and_map(&mut self, uuid: [u8; 16], id: u32, offset: u64) {
        let payload = self.run(ShareCommand::Import {
            uuid,
            dynamic: false,
        });
        let mut r = Reader::new(&payload);
        let (blob_id, size) = (r.u64().unwrap(), r.u64().unwrap());
        let create = Command::ResourceCreateBlob(CreateBlob {
            resource_id: id,
            blob_mem: BLOB_MEM_HOST3D,
            blob_flags: BLOB_FLAG_USE_MAPPABLE,
            blob_id,
            size,
            entries: vec![],
        });
        ok(&mut self.vm, SHARE_CTX, create);
        let map = Command::ResourceMapBlob {
            resource_id: id,
            offset,
        };
        ok(&mut self.vm, 0, map);
    }
}

fn daemon(n: usize, renderer: &str, hostmem: &str) -> (Daemon, std::path::PathBuf) {
    daemon_with(n, renderer, hostmem, &[])
}

fn daemon_with(
    n: usize,
    renderer: &str,
    hostmem: &str,
    extra: &[&str],
) -> (Daemon, std::path::PathBuf) {
    let policy =
        std::env::temp_dir().join(format!("vgpud-bench-share-{}.json", std::process::id()));
    std::fs::write(
        &policy,
        r#"{"allow": [{"exporter": "vm0", "importers": ["*"]}]}"#,
    )
    .expect("policy");
    let settings: Vec<String> = (0..n).map(|i| format!("name=vm{i},share=on")).collect();
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let mut args = vec![
        "--renderer",
        renderer,
        "--hostmem",
        hostmem,
        "--share-policy",
        policy.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let vgpud = Path::new(env!("CARGO_BIN_EXE_vgpud"));
    let d = Daemon::spawn_with_vm_settings(vgpud, &settings, &args).expect("start vgpud");
    (d, policy)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// µs for IMPORT + CREATE + MAP of a `size`-byte export, median of `rounds`.
fn import_map(rounds: usize, size: u64) -> f64 {
    let (d, policy) = daemon(2, "2d", "512M");
    let mut a = Sharer::connect(&d, 0, 16 * MIB);
    let mut b = Sharer::connect(&d, 1, 16 * MIB);
    host_blob(&mut a.vm, 2, size);
    let uuid = a.export(2);
    let mut samples = Vec::new();
    for i in 0..rounds {
        let id = 10 + i as u32;
        let t = Instant::now();
        b.import_and_map(uuid, id, 0);
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        ok(&mut b.vm, 0, Command::ResourceUnref { resource_id: id });
    }
    let _ = std::fs::remove_file(policy);
    median(samples)
}

/// µs from a producer's fenced answer to the answer that waited for it: (across VMs, within
/// one VM), medians of `rounds`.
fn fence_waits(rounds: usize) -> (f64, f64) {
    let (d, policy) = daemon(2, "fake", "16M");
    let mut a = Sharer::connect(&d, 0, 16 * MIB);
    let mut b = Sharer::connect(&d, 1, 16 * MIB);
    let create = Command::CtxCreate {
        context_init: 0,
        debug_name: b"work".to_vec(),
    };
    ok(&mut a.vm, RENDER_CTX, create);
    let script = |s: &str| Command::Submit3d {
        commands: s.as_bytes().to_vec(),
    };
    // The time between two answers the harness sees, both posted before either is answered.
    let gap = |vm0: &mut Vm, first: Token, vm1: &mut Vm, then: Token| {
        vm0.wait(first).expect("first");
        let t = Instant::now();
        vm1.wait(then).expect("then");
        t.elapsed().as_secs_f64() * 1e6
    };
    let (mut across, mut within) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let work =
            a.vm.post(0, &fenced(RENDER_CTX, 0, script("delay 20")), 1024)
                .unwrap();
        let handle = a.run(ShareCommand::ExportFence {
            ctx_id: RENDER_CTX,
            ring: 0,
        });
        let handle = u64::from_le_bytes(handle[..8].try_into().unwrap());
        let wait = ShareCommand::WaitFences {
            handles: vec![handle],
        };
        let cmd = Command::Submit3d {
            commands: wait.encode(NO_REPLY),
        };
        let waiting = b.vm.post(0, &fenced(SHARE_CTX, 0, cmd), 1024).unwrap();
        across.push(gap(&mut a.vm, work, &mut b.vm, waiting));

        let first =
            a.vm.post(0, &fenced(RENDER_CTX, 0, script("delay 20")), 1024)
                .unwrap();
        let behind =
            a.vm.post(0, &fenced(RENDER_CTX, 0, script("")), 1024)
                .unwrap();
        within.push(gap_same(&mut a.vm, first, behind));
    }
    let _ = std::fs::remove_file(policy);
    (median(across), median(within))
}

/// The gap between two answers of one VM, both posted before either is answered.
fn gap_same(vm: &mut Vm, first: Token, then: Token) -> f64 {
    vm.wait(first).expect("first");
    let t = Instant::now();
    vm.wait(then).expect("then");
    t.elapsed().as_secs_f64() * 1e6
}

/// µs of the exporter's RESOURCE_UNREF with `importers` VMs mapping the buffer, median of
/// `rounds`.
fn revoke(rounds: usize, importers: usize) -> f64 {
    let (d, policy) = daemon(importers + 1, "2d", "16M");
    let mut a = Sharer::connect(&d, 0, 16 * MIB);
    let mut others: Vec<Sharer> = (1..=importers)
        .map(|i| Sharer::connect(&d, i, 16 * MIB))
        .collect();
    let mut samples = Vec::new();
    for round in 0..rounds {
        let id = 2 + round as u32;
        host_blob(&mut a.vm, id, MIB);
        let uuid = a.export(id);
        for s in &mut others {
            s.import_and_map(uuid, 100 + round as u32, 0);
        }
        let t = Instant::now();
        ok(&mut a.vm, 0, Command::ResourceUnref { resource_id: id });
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        for s in &mut others {
            assert!(
                s.vm.shmem().mappings().is_empty(),
                "revoked before the answer"
            );
            ok(
                &mut s.vm,
                0,
                Command::ResourceUnref {
                    resource_id: 100 + round as u32,
                },
            );
        }
    }
    let _ = std::fs::remove_file(policy);
    median(samples)
}

/// MB/s of moving a 64 MiB buffer out (first) and of bringing one back while moving the other
/// out (second), against memcpy of the same size in this process.
fn moves(rounds: usize) -> (f64, f64, f64) {
    const SIZE: u64 = 64 * MIB;
    let dir = std::env::var("VGPUD_BENCH_EVICT_DIR").unwrap_or("/var/tmp".into());
    let extra = ["--share-budget", "64M", "--share-evict-dir", dir.as_str()];
    let (d, policy) = daemon_with(2, "2d", "512M", &extra);
    let mut a = Sharer::connect(&d, 0, 16 * MIB);
    let mut b = Sharer::connect(&d, 1, 16 * MIB);
    let mut uuids = Vec::new();
    for (i, fill) in [(2u32, 0x5au8), (3, 0xa5)] {
        host_blob(&mut a.vm, i, SIZE);
        let map = Command::ResourceMapBlob {
            resource_id: i,
            offset: 0,
        };
        ok(&mut a.vm, 0, map);
        assert!(a.vm.shmem().write(1, 0, &vec![fill; SIZE as usize]));
        ok(&mut a.vm, 0, Command::ResourceUnmapBlob { resource_id: i });
        uuids.push(a.export(i));
    }
    let import = |s: &mut Sharer, uuid, id| {
        let payload = s.run(ShareCommand::Import {
            uuid,
            dynamic: true,
        });
        let mut r = Reader::new(&payload);
        let (blob_id, size) = (r.u64().unwrap(), r.u64().unwrap());
        let create = Command::ResourceCreateBlob(CreateBlob {
            resource_id: id,
            blob_mem: BLOB_MEM_HOST3D,
            blob_flags: BLOB_FLAG_USE_MAPPABLE,
            blob_id,
            size,
            entries: vec![],
        });
        ok(&mut s.vm, SHARE_CTX, create);
    };
    import(&mut b, uuids[0], 10);
    import(&mut b, uuids[1], 11);
    let map = |s: &mut Sharer, id, at| {
        let t = Instant::now();
        ok(
            &mut s.vm,
            0,
            Command::ResourceMapBlob {
                resource_id: id,
                offset: at,
            },
        );
        t.elapsed().as_secs_f64()
    };
    let unmap =
        |s: &mut Sharer, id| ok(&mut s.vm, 0, Command::ResourceUnmapBlob { resource_id: id });
    let (mut out, mut swap) = (Vec::new(), Vec::new());
    // Mapping 10 makes it the newest: 11 (resident too) moves out before the answer.
    out.push(SIZE as f64 / map(&mut b, 10, 0) / 1e6);
    for _ in 0..rounds.min(5) {
        // 11 comes back, 10 goes out: 128 MiB moved.
        unmap(&mut b, 10);
        swap.push(2.0 * SIZE as f64 / map(&mut b, 11, SIZE) / 1e6);
        unmap(&mut b, 11);
        swap.push(2.0 * SIZE as f64 / map(&mut b, 10, 0) / 1e6);
    }
    let back = b.vm.shmem().read(1, 0, 4096).unwrap();
    assert!(back.iter().all(|&x| x == 0x5a), "moved back bit-exact");
    let _ = std::fs::remove_file(policy);
    // memcpy of the same size, same run.
    let src = vec![0x11u8; SIZE as usize];
    let mut dst = vec![0u8; SIZE as usize];
    let t = Instant::now();
    dst.copy_from_slice(&src);
    std::hint::black_box(&dst);
    let memcpy = SIZE as f64 / t.elapsed().as_secs_f64() / 1e6;
    (median(out), median(swap), memcpy)
}

/// µs per GET_DISPLAY_INFO round trip: a VM without sharing, and one that shares under a budget
/// (whose every request ends with the budget check).
fn budget_check(n: usize) -> (f64, f64) {
    let extra = ["--share-budget", "64M"];
    let (d, policy) = daemon_with(1, "2d", "16M", &extra);
    let mut shared = Sharer::connect(&d, 0, 16 * MIB);
    host_blob(&mut shared.vm, 5, MIB);
    shared.export(5);
    let (d2, policy2) = daemon_with(1, "2d", "16M", &[]);
    let mut alone = Vm::connect(&d2.socket(0), VmConfig::default()).expect("connect");
    let req = encode(0, Command::GetDisplayInfo);
    let time = |vm: &mut Vm| {
        let mut xs = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            vm.request(&req).expect("request");
            xs.push(t.elapsed().as_secs_f64() * 1e6);
        }
        median(xs)
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        a.push(time(&mut alone));
        b.push(time(&mut shared.vm));
    }
    let _ = std::fs::remove_file(policy);
    let _ = std::fs::remove_file(policy2);
    (median(a), median(b))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = knob("VGPUD_BENCH_ROUNDS", if full { 20 } else { 2 }).max(1);
    println!("rounds: {rounds}");

    let small = import_map(rounds, MIB);
    let large = import_map(rounds, if full { 256 * MIB } else { 16 * MIB });
    println!();
    println!("import + map (IMPORT, RESOURCE_CREATE_BLOB, MAP_BLOB), µs, median");
    println!("  1 MiB: {small:.1}");
    println!(
        "  {} MiB: {large:.1}  ({:.2}x the 1 MiB one)",
        if full { 256 } else { 16 },
        large / small
    );

    let (across, within) = fence_waits(rounds);
    println!();
    println!("from a producer's fenced answer to the answer that waited for it, µs, median");
    println!("  across VMs (share-context wait): {across:.1}");
    println!(
        "  within one VM (same ring):       {within:.1}  (across / within {:.2})",
        across / within
    );

    let (out, swap, memcpy) = moves(rounds);
    println!();
    println!("moves under the budget (64 MiB buffers, files in VGPUD_BENCH_EVICT_DIR or /var/tmp), MB/s, median");
    println!(
        "  move out (in the MAP round trip that needed the room): {out:.0}  ({:.2} of memcpy)",
        out / memcpy
    );
    println!(
        "  bring one back and move the other out:                 {swap:.0}  ({:.2} of memcpy)",
        swap / memcpy
    );
    println!("  memcpy, same size, this process:                       {memcpy:.0}");

    let (alone, checked) = budget_check(if full { 5000 } else { 200 });
    println!();
    println!("GET_DISPLAY_INFO round trip, µs, median: no sharing {alone:.1}, sharing under a budget {checked:.1} ({:.2}x)", checked / alone);

    println!();
    println!("exporter's RESOURCE_UNREF with importers mapped (all unmapped before it is answered), µs, median");
    let counts: &[usize] = if full { &[0, 1, 8, 64] } else { &[0, 1] };
    let base = revoke(rounds, counts[0]);
    for &n in counts {
        let t = if n == counts[0] {
            base
        } else {
            revoke(rounds, n)
        };
        println!(
            "  {n:>2} importers: {t:>9.1}  ({:.1} per importer over none)",
            if n > 0 { (t - base) / n as f64 } else { 0.0 }
        );
    }
}
