//! Render worker benchmarks: what one process per 3D VM costs.
//!
//! - Round trips of renderer-bound commands through a virgl render worker, against QEMU's C
//!   backend (`/usr/lib/qemu/vhost-user-gpu --virgl`, virglrenderer in its own process) and the
//!   eventfd ping-pong floor, same run, same harness frontend: a 4-byte TRANSFER_TO_HOST_3D and
//!   an empty fenced SUBMIT_3D.
//! - Memory of the whole daemon (broker, workers, render servers: proportional set size, so shared
//!   libraries count once) with 1, 4 and 16 idle 3D VMs, virgl and Venus.
//!
//! Needs virglrenderer, so it runs in the testbed:
//! `scripts/testbed/run.sh cargo bench --locked --features virgl --bench workers`.
//! Knobs: `VGPUD_BENCH_ROUND_TRIPS` (2000), `VGPUD_BENCH_ROUNDS` (5), `VGPUD_BENCH_QEMU`.
//! Without `--bench` (cargo test --benches) it makes a quick smoke run.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::{check, eventfd_ping_pong, knob};
use vgpud_harness::{Daemon, Vm, VmConfig};
use vgpud_protocol::{
    format, resp, Box3d, Command, CtrlHeader, MemEntry, Request, Transfer3d, FLAG_FENCE,
};

const QEMU_DEFAULT: &str = "/usr/lib/qemu/vhost-user-gpu";
const WARMUP: usize = 200;
const VENUS: u32 = 4;

fn request(ctx_id: u32, flags: u32, cmd: Command) -> Vec<u8> {
    Request {
        hdr: CtrlHeader {
            ctx_id,
            flags,
            fence_id: u64::from(flags),
            ..CtrlHeader::default()
        },
        cmd,
    }
    .encode()
}

fn ok(vm: &mut Vm, req: &[u8]) -> io::Result<()> {
    check(&vm.request(req)?, resp::OK_NODATA)
}

/// p50 in µs of `n` sequential requests.
fn p50(vm: &mut Vm, req: &[u8], n: usize) -> io::Result<f64> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        let t = Instant::now();
        check(&vm.request(req)?, resp::OK_NODATA)?;
        if i >= WARMUP {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN))
}

/// The two 3D round trips against one backend: (transfer p50, fenced submit p50) in µs.
fn round_trips(program: &Path, args: &[&str], n: usize) -> io::Result<(f64, f64)> {
    let daemon = Daemon::spawn_with_sockets(program, 1, args)?;
    let cfg = VmConfig {
        // QEMU's C backend needs a display.
        display: Some(vec![(64, 64)]),
        timeout: Duration::from_secs(20),
        ..VmConfig::default()
    };
    let with_log = |e: io::Error| io::Error::other(format!("{e}\n{}", daemon.stderr_log()));
    let mut vm = Vm::connect(&daemon.socket(0), cfg).map_err(with_log)?;
    let setup = |vm: &mut Vm| -> io::Result<()> {
        let create = Command::CtxCreate {
            context_init: 0,
            debug_name: b"bench".to_vec(),
        };
        ok(vm, &request(1, 0, create))?;
        let create = Command::ResourceCreate2d {
            resource_id: 1,
            format: format::B8G8R8X8_UNORM,
            width: 64,
            height: 64,
        };
        ok(vm, &request(0, 0, create))?;
        let addr = vm.alloc(64 * 64 * 4, 4096);
        let attach = Command::ResourceAttachBacking {
            resource_id: 1,
            entries: vec![MemEntry {
                addr,
                length: 64 * 64 * 4,
            }],
        };
        ok(vm, &request(0, 0, attach))?;
        ok(
            vm,
            &request(1, 0, Command::CtxAttachResource { resource_id: 1 }),
        )
    };
    setup(&mut vm).map_err(with_log)?;
    let transfer = request(
        1,
        0,
        Command::TransferToHost3d(Transfer3d {
            box_: Box3d {
                w: 1,
                h: 1,
                d: 1,
                ..Box3d::default()
            },
            resource_id: 1,
            stride: 64 * 4,
            ..Transfer3d::default()
        }),
    );
    let submit = request(
        1,
        FLAG_FENCE,
        Command::Submit3d {
            commands: Vec::new(),
        },
    );
    let t = p50(&mut vm, &transfer, n).map_err(with_log)?;
    let s = p50(&mut vm, &submit, n).map_err(with_log)?;
    Ok((t, s))
}

/// `pid` and every process below it.
fn tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Some(child) = p.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else {
                continue;
            };
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok());
            if let Some(parent) = parent {
                parents.push((child, parent));
            }
        }
    }
    let mut found: HashSet<u32> = HashSet::from([pid]);
    loop {
        let before = found.len();
        for &(child, parent) in &parents {
            if found.contains(&parent) {
                found.insert(child);
            }
        }
        if found.len() == before {
            break;
        }
    }
    found.into_iter().collect()
}

fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Memory of the daemon and everything it started, with `n` idle 3D VMs: each made one
/// context (`context_init`), which starts its worker (and for Venus, a render server
/// process). Returns (total PSS in MiB, processes).
fn idle_vms(
    program: &Path,
    renderer: &str,
    context_init: u32,
    n: usize,
) -> io::Result<(f64, usize)> {
    let daemon =
        Daemon::spawn_with_sockets(program, n, &["--renderer", renderer, "--hostmem", "64M"])?;
    let mut vms = Vec::new();
    for i in 0..n {
        let cfg = VmConfig {
            timeout: Duration::from_secs(30),
            ..VmConfig::default()
        };
        let mut vm = Vm::connect(&daemon.socket(i), cfg)?;
        let create = Command::CtxCreate {
            context_init,
            debug_name: b"idle".to_vec(),
        };
        ok(&mut vm, &request(1, 0, create))
            .map_err(|e| io::Error::other(format!("{e}\n{}", daemon.stderr_log())))?;
        vms.push(vm);
    }
    // Settled: lazily started threads and first allocations are done.
    thread::sleep(Duration::from_secs(2));
    let procs = tree(daemon.pid());
    let kib: u64 = procs.iter().map(|&p| pss_kib(p)).sum();
    drop(vms);
    Ok((kib as f64 / 1024.0, procs.len()))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = knob("VGPUD_BENCH_ROUND_TRIPS", if full { 2000 } else { 20 });
    let rounds = knob("VGPUD_BENCH_ROUNDS", if full { 5 } else { 1 }).max(1);
    let vgpud = Path::new(env!("CARGO_BIN_EXE_vgpud"));
    let qemu = PathBuf::from(std::env::var("VGPUD_BENCH_QEMU").unwrap_or(QEMU_DEFAULT.into()));
    if !cfg!(feature = "virgl") {
        println!("built without the virgl feature: nothing to measure (run it in the testbed)");
        return;
    }
    println!(
        "vgpud: {}  rounds: {rounds}  round trips: {n}",
        vgpud.display()
    );

    let mut ours = (Vec::new(), Vec::new());
    let mut boundary = (Vec::new(), Vec::new());
    let mut theirs = (Vec::new(), Vec::new());
    let mut floor = Vec::new();
    let mut qemu_failed = None;
    for round in 0..rounds {
        floor.push(eventfd_ping_pong(n).expect("eventfd floor"));
        let (t, s) = round_trips(vgpud, &["--renderer", "virgl"], n).expect("vgpud virgl");
        ours.0.push(t);
        ours.1.push(s);
        // The same through a worker with the scripted renderer, which does no GPU work: the cost
        // of the process boundary alone.
        let (t, s) = round_trips(vgpud, &["--renderer", "fake"], n).expect("vgpud fake");
        boundary.0.push(t);
        boundary.1.push(s);
        if qemu.exists() && qemu_failed.is_none() {
            match round_trips(&qemu, &["--virgl"], n) {
                Ok((t, s)) => {
                    theirs.0.push(t);
                    theirs.1.push(s);
                }
                Err(e) => qemu_failed = Some(e.to_string()),
            }
        }
        println!("round {} done", round + 1);
    }
    let floor = median(floor);
    println!();
    println!("3D round trips, p50 µs (median of rounds); eventfd ping-pong floor {floor:.1} µs");
    println!("(boundary: the same through a worker whose scripted renderer does no GPU work)");
    println!(
        "{:<34} {:>10} {:>10} {:>14} {:>10} {:>12}",
        "command", "vgpud", "boundary", "QEMU C virgl", "ratio", "x floor"
    );
    let rows = [
        (
            "TRANSFER_TO_HOST_3D 4 bytes",
            &ours.0,
            &boundary.0,
            &theirs.0,
        ),
        ("SUBMIT_3D empty, fenced", &ours.1, &boundary.1, &theirs.1),
    ];
    for (name, v, b, q) in rows {
        let v = median(v.clone());
        let b = median(b.clone());
        let (q, ratio) = if q.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            let q = median(q.clone());
            (format!("{q:.1}"), format!("{:.2}x", v / q))
        };
        println!(
            "{name:<34} {v:>10.1} {b:>10.1} {q:>14} {ratio:>10} {:>11.1}x",
            v / floor
        );
    }
    if let Some(e) = qemu_failed {
        println!("QEMU's C backend with --virgl could not be measured: {e}");
    }

    println!();
    println!(
        "Memory of the whole daemon with idle 3D VMs (PSS: broker + workers + render servers)"
    );
    println!(
        "{:<8} {:>4} {:>11} {:>10} {:>12}",
        "renderer", "VMs", "total MiB", "processes", "MiB per VM"
    );
    let counts: &[usize] = if full { &[1, 4, 16] } else { &[1] };
    for (renderer, init) in [("virgl", 0), ("venus", VENUS)] {
        let mut first = None;
        for &count in counts {
            let (mib, procs) = idle_vms(vgpud, renderer, init, count).expect("idle VMs");
            let base: &(usize, f64) = first.get_or_insert((count, mib));
            let per_vm = if count > base.0 {
                format!("{:.1}", (mib - base.1) / (count - base.0) as f64)
            } else {
                "-".to_string()
            };
            println!("{renderer:<8} {count:>4} {mib:>11.1} {procs:>10} {per_vm:>12}");
        }
    }
}
