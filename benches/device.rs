//! Device benchmarks: vgpud against QEMU's own C backend (`/usr/lib/qemu/vhost-user-gpu`),
//! both driven by the same vhost-user frontend (vgpud-harness) in the same run.
//!
//! Run with `cargo bench --bench device`. Knobs (environment variables):
//!
//! - `VGPUD_BENCH_ROUNDS` (10): rounds; each measures everything once per backend, alternating
//!   which backend goes first. The tables show the median (and range) over rounds.
//! - `VGPUD_BENCH_ROUND_TRIPS` (5000): timed requests per round-trip measurement.
//! - `VGPUD_BENCH_FRAMES` (100): timed 1920x1080 transfers.
//! - `VGPUD_BENCH_RESOURCES` (1000): 256x256 resources created for the memory measurement.
//! - `VGPUD_BENCH_QEMU` (/usr/lib/qemu/vhost-user-gpu): the C backend; measured only if present.
//!
//! Every scenario starts a fresh backend process (the C backend accepts one connection per
//! process) and connects with a display (the C backend needs one), so both do the same work.

use std::collections::VecDeque;
use std::hint::black_box;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

mod common;

use common::{check, eventfd_ping_pong, knob, micros, percentile};
use vgpud_harness::{Daemon, Vm, VmConfig};
use vgpud_protocol::{format, resp, Command, CtrlHeader, MemEntry, Rect, Request};

const QEMU_DEFAULT: &str = "/usr/lib/qemu/vhost-user-gpu";
/// Untimed requests before each timed run.
const WARMUP: usize = 500;
/// Requests kept in flight in the pipelined runs.
const DEPTH: usize = 32;
/// Writable response buffer of every request (a display info response is 408 bytes).
const RESP_CAP: u32 = 1024;
const FRAME_W: u32 = 1920;
const FRAME_H: u32 = 1080;
const SMALL: u32 = 256;

struct Knobs {
    rounds: usize,
    round_trips: usize,
    frames: usize,
    resources: usize,
}

// ---------------------------------------------------------------------------------------------
// Talking to a backend

/// A backend process and the harness's connection to it. `vm` is declared first so it is
/// dropped (disconnected) before the process is killed.
struct Session {
    vm: Vm,
    daemon: Daemon,
}

fn start(program: &Path) -> io::Result<Session> {
    let daemon = Daemon::spawn_with_sockets(program, 1, &[])?;
    let cfg = VmConfig {
        display: Some(vec![(FRAME_W, FRAME_H)]),
        ..VmConfig::default()
    };
    let vm = Vm::connect(&daemon.socket(0), cfg).map_err(|e| with_log(e, &daemon))?;
    Ok(Session { vm, daemon })
}

fn with_log(e: io::Error, daemon: &Daemon) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("{e}\nbackend stderr:\n{}", daemon.stderr_log()),
    )
}

fn encode(cmd: Command) -> Vec<u8> {
    Request {
        hdr: CtrlHeader::default(),
        cmd,
    }
    .encode()
}

fn rect(width: u32, height: u32) -> Rect {
    Rect {
        x: 0,
        y: 0,
        width,
        height,
    }
}

fn ok(vm: &mut Vm, cmd: Command) -> io::Result<()> {
    let what = format!("{cmd:?}");
    let bytes = vm.request_cap(&encode(cmd), RESP_CAP)?;
    check(&bytes, resp::OK_NODATA).map_err(|e| io::Error::other(format!("{what}: {e}")))
}

/// Guest memory of `bytes` bytes, half in each of the two guest regions, filled with a pattern.
fn backing(vm: &mut Vm, bytes: usize) -> Vec<MemEntry> {
    let half = (bytes / 2) & !3;
    let parts = [(0, half), (1, bytes - half)];
    parts
        .iter()
        .map(|&(region, len)| {
            let addr = vm.alloc_in(region, len as u64, 4096);
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + region) as u8).collect();
            vm.write_mem(addr, &data);
            MemEntry {
                addr,
                length: len as u32,
            }
        })
        .collect()
}

/// Creates a `w`x`h` B8G8R8A8 resource on `entries` and uploads it once.
fn create_backed(vm: &mut Vm, id: u32, w: u32, h: u32, entries: &[MemEntry]) -> io::Result<()> {
    ok(
        vm,
        Command::ResourceCreate2d {
            resource_id: id,
            format: format::B8G8R8A8_UNORM,
            width: w,
            height: h,
        },
    )?;
    ok(
        vm,
        Command::ResourceAttachBacking {
            resource_id: id,
            entries: entries.to_vec(),
        },
    )?;
    ok(
        vm,
        Command::TransferToHost2d {
            rect: rect(w, h),
            offset: 0,
            resource_id: id,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// A sequential run: latency percentiles (µs) and the overall rate (commands/s).
#[derive(Clone, Copy, Default)]
struct Sequential {
    p50: f64,
    p99: f64,
    rate: f64,
}

/// One request at a time, after `WARMUP` untimed ones.
fn sequential(vm: &mut Vm, req: &[u8], want: u32, n: usize) -> io::Result<Sequential> {
    for _ in 0..WARMUP {
        check(&vm.request_cap(req, RESP_CAP)?, want)?;
    }
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let bytes = vm.request_cap(req, RESP_CAP)?;
        samples.push(t.elapsed());
        check(&bytes, want)?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let us = micros(&samples);
    Ok(Sequential {
        p50: percentile(&us, 0.50),
        p99: percentile(&us, 0.99),
        rate,
    })
}

/// `DEPTH` requests in flight (wait for the oldest, post a new one): commands/s.
fn pipelined(vm: &mut Vm, req: &[u8], want: u32, n: usize) -> io::Result<f64> {
    let start = Instant::now();
    let mut in_flight = VecDeque::with_capacity(DEPTH);
    let mut posted = 0;
    while posted < n.min(DEPTH) {
        in_flight.push_back(vm.post(0, req, RESP_CAP)?);
        posted += 1;
    }
    while let Some(tok) = in_flight.pop_front() {
        check(&vm.wait(tok)?, want)?;
        if posted < n {
            in_flight.push_back(vm.post(0, req, RESP_CAP)?);
            posted += 1;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// (VmRSS, RssAnon) of a process in KiB.
fn rss_kib(pid: u32) -> io::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| io::Error::other(format!("no {name} in /proc/{pid}/status")))
    };
    Ok((field("VmRSS:")?, field("RssAnon:")?))
}

// ---------------------------------------------------------------------------------------------
// What one backend scores in one round

#[derive(Default)]
struct Scores {
    info: Sequential,
    info_pipelined: f64,
    flush: Sequential,
    flush_pipelined: f64,
    tiny: Sequential,
    frame_mb_s: f64,
    rss_per_resource: f64,
    anon_per_resource: f64,
}

fn measure(program: &Path, k: &Knobs) -> io::Result<Scores> {
    let mut s = Scores::default();
    round_trips(program, k, &mut s)?;
    frame_transfer(program, k, &mut s)?;
    memory_per_resource(program, k, &mut s)?;
    Ok(s)
}

/// Runs `f` on a fresh backend; errors carry the backend's stderr.
fn with_session(program: &Path, f: impl FnOnce(&mut Vm, u32) -> io::Result<()>) -> io::Result<()> {
    let Session { mut vm, daemon } = start(program)?;
    let result = f(&mut vm, daemon.pid());
    drop(vm);
    result.map_err(|e| with_log(e, &daemon))
}

fn round_trips(program: &Path, k: &Knobs, s: &mut Scores) -> io::Result<()> {
    with_session(program, |vm, _| {
        // A small backed resource that is never put on a scanout.
        let entries = backing(vm, 64 * 64 * 4);
        create_backed(vm, 1, 64, 64, &entries)?;

        let info = encode(Command::GetDisplayInfo);
        s.info = sequential(vm, &info, resp::OK_DISPLAY_INFO, k.round_trips)?;
        s.info_pipelined = pipelined(vm, &info, resp::OK_DISPLAY_INFO, k.round_trips)?;

        // Answered inside the backend: the resource is on no scanout, so nothing is shown.
        let flush = encode(Command::ResourceFlush {
            rect: rect(64, 64),
            resource_id: 1,
        });
        s.flush = sequential(vm, &flush, resp::OK_NODATA, k.round_trips)?;
        s.flush_pipelined = pipelined(vm, &flush, resp::OK_NODATA, k.round_trips)?;

        // Reaches the pixels (in vgpud: on its renderer thread) but copies only 4 bytes.
        let tiny = encode(Command::TransferToHost2d {
            rect: rect(1, 1),
            offset: 0,
            resource_id: 1,
        });
        s.tiny = sequential(vm, &tiny, resp::OK_NODATA, k.round_trips)?;
        Ok(())
    })
}

fn frame_transfer(program: &Path, k: &Knobs, s: &mut Scores) -> io::Result<()> {
    with_session(program, |vm, _| {
        let bytes = (FRAME_W * FRAME_H * 4) as usize;
        let entries = backing(vm, bytes);
        create_backed(vm, 1, FRAME_W, FRAME_H, &entries)?;
        let req = encode(Command::TransferToHost2d {
            rect: rect(FRAME_W, FRAME_H),
            offset: 0,
            resource_id: 1,
        });
        for _ in 0..5 {
            check(&vm.request_cap(&req, RESP_CAP)?, resp::OK_NODATA)?;
        }
        let start = Instant::now();
        for _ in 0..k.frames {
            check(&vm.request_cap(&req, RESP_CAP)?, resp::OK_NODATA)?;
        }
        s.frame_mb_s = (k.frames * bytes) as f64 / start.elapsed().as_secs_f64() / 1e6;
        Ok(())
    })
}

fn memory_per_resource(program: &Path, k: &Knobs, s: &mut Scores) -> io::Result<()> {
    with_session(program, |vm, pid| {
        // All resources share one guest backing, read once before the baseline, so the guest
        // pages the backend maps do not count as per-resource memory.
        let entries = backing(vm, (SMALL * SMALL * 4) as usize);
        create_backed(vm, 1, SMALL, SMALL, &entries)?;
        let (rss0, anon0) = rss_kib(pid)?;
        for id in 2..2 + k.resources as u32 {
            create_backed(vm, id, SMALL, SMALL, &entries)?;
        }
        let (rss1, anon1) = rss_kib(pid)?;
        let n = k.resources as f64;
        s.rss_per_resource = (rss1 as f64 - rss0 as f64) / n;
        s.anon_per_resource = (anon1 as f64 - anon0 as f64) / n;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// References measured in this process

#[derive(Default)]
struct References {
    eventfd_p50: f64,
    mpsc_p50: f64,
    memcpy_hot: f64,
    memcpy_cold: f64,
    worker_p50: f64,
    worker_first_ms: f64,
}

fn references(k: &Knobs, vgpud: &Path) -> io::Result<References> {
    let (memcpy_hot, memcpy_cold) = memcpy_mb_s((FRAME_W * FRAME_H * 4) as usize, 100);
    let (worker_p50, worker_first_ms) = worker_call(vgpud, k.round_trips)?;
    Ok(References {
        eventfd_p50: eventfd_ping_pong(k.round_trips)?,
        mpsc_p50: mpsc_call(k.round_trips),
        memcpy_hot,
        memcpy_cold,
        worker_p50,
        worker_first_ms,
    })
}

/// A renderer-bound command through a render worker process, with vgpud's scripted renderer
/// (which does no GPU work, so this is the cost of the process boundary): TRANSFER_TO_HOST_3D
/// of a 4-byte buffer, p50 in µs. Also the time from connecting to the first answered command
/// that needs the renderer (CTX_CREATE, which starts the VM's worker), in ms.
fn worker_call(vgpud: &Path, n: usize) -> io::Result<(f64, f64)> {
    let daemon = Daemon::spawn_with_sockets(vgpud, 1, &["--renderer", "fake"])?;
    let in_ctx = |cmd: Command| {
        Request {
            hdr: CtrlHeader {
                ctx_id: 1,
                ..CtrlHeader::default()
            },
            cmd,
        }
        .encode()
    };
    let start = Instant::now();
    let mut vm = Vm::connect(&daemon.socket(0), VmConfig::default())?;
    let create = in_ctx(Command::CtxCreate {
        context_init: 0,
        debug_name: b"bench".to_vec(),
    });
    check(&vm.request(&create)?, resp::OK_NODATA)?;
    let first_ms = start.elapsed().as_secs_f64() * 1000.0;
    let buffer = vgpud_protocol::ResourceCreate3d {
        resource_id: 1,
        width: 4,
        height: 1,
        depth: 1,
        array_size: 1,
        ..Default::default()
    };
    ok(&mut vm, Command::ResourceCreate3d(buffer))?;
    let entries = backing(&mut vm, 4);
    ok(
        &mut vm,
        Command::ResourceAttachBacking {
            resource_id: 1,
            entries,
        },
    )?;
    let transfer = in_ctx(Command::TransferToHost3d(vgpud_protocol::Transfer3d {
        box_: vgpud_protocol::Box3d {
            w: 4,
            h: 1,
            d: 1,
            ..Default::default()
        },
        resource_id: 1,
        ..Default::default()
    }));
    let timed = sequential(&mut vm, &transfer, resp::OK_NODATA, n)?;
    Ok((timed.p50, first_ms))
}

/// p50 (µs) of a call to another thread over std mpsc channels (a boxed job on a channel, the
/// answer on a fresh sync_channel): what each renderer call cost inside a render worker while
/// rutabaga ran on a thread of its own (it now runs on the worker's main thread).
fn mpsc_call(n: usize) -> f64 {
    type Job = Box<dyn FnOnce(&mut u64) + Send>;
    let (jobs, inbox) = mpsc::channel::<Job>();
    let worker = thread::spawn(move || {
        let mut state = 0u64;
        while let Ok(job) = inbox.recv() {
            job(&mut state);
        }
    });
    let call = |x: u64| -> u64 {
        let (tx, rx) = mpsc::sync_channel(1);
        jobs.send(Box::new(move |s: &mut u64| {
            *s += x;
            let _ = tx.send(*s);
        }))
        .expect("worker alive");
        rx.recv().expect("worker answers")
    };
    for i in 0..WARMUP as u64 {
        black_box(call(i));
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        black_box(call(i));
        samples.push(t.elapsed());
    }
    drop(jobs);
    worker.join().expect("worker thread");
    percentile(&micros(&samples), 0.5)
}

/// memcpy (copy_from_slice) of one frame, MB/s: hot copies the same two buffers over and over
/// (they fit the last-level cache here); cold-ish cycles through 64+ MiB of sources and as much
/// of destinations, more than the caches hold.
fn memcpy_mb_s(bytes: usize, copies: usize) -> (f64, f64) {
    let fill = |seed: usize| -> Vec<u8> { (0..bytes).map(|i| (i + seed) as u8).collect() };
    let time = |srcs: &[Vec<u8>], dsts: &mut [Vec<u8>]| -> f64 {
        for (d, s) in dsts.iter_mut().zip(srcs) {
            d.copy_from_slice(s);
        }
        let start = Instant::now();
        for i in 0..copies {
            let j = i % srcs.len();
            dsts[j].copy_from_slice(&srcs[j]);
            black_box(&dsts[j]);
        }
        (copies * bytes) as f64 / start.elapsed().as_secs_f64() / 1e6
    };
    let hot = time(&[fill(0)], &mut [vec![0u8; bytes]]);
    let sets = (64 << 20) / bytes + 1;
    let srcs: Vec<Vec<u8>> = (0..sets).map(fill).collect();
    let mut dsts: Vec<Vec<u8>> = (0..sets).map(|_| vec![0u8; bytes]).collect();
    let cold = time(&srcs, &mut dsts);
    (hot, cold)
}

// ---------------------------------------------------------------------------------------------
// Report

struct Round {
    refs: References,
    vgpud: Scores,
    qemu: Option<Scores>,
}

enum Better {
    Lower,
    Higher,
}

type Metric = dyn Fn(&Scores, &References) -> f64;

/// Table rows: name, direction, how to read the value from one round.
fn metrics() -> Vec<(&'static str, Better, Box<Metric>)> {
    use Better::{Higher, Lower};
    vec![
        (
            "GET_DISPLAY_INFO p50 (µs)",
            Lower,
            Box::new(|s, _| s.info.p50),
        ),
        (
            "GET_DISPLAY_INFO p99 (µs)",
            Lower,
            Box::new(|s, _| s.info.p99),
        ),
        (
            "GET_DISPLAY_INFO p50 ÷ eventfd ping-pong p50 (×)",
            Lower,
            Box::new(|s, r| s.info.p50 / r.eventfd_p50),
        ),
        (
            "GET_DISPLAY_INFO sequential (cmd/s)",
            Higher,
            Box::new(|s, _| s.info.rate),
        ),
        (
            "GET_DISPLAY_INFO, 32 in flight (cmd/s)",
            Higher,
            Box::new(|s, _| s.info_pipelined),
        ),
        (
            "RESOURCE_FLUSH off-scanout p50 (µs)",
            Lower,
            Box::new(|s, _| s.flush.p50),
        ),
        (
            "RESOURCE_FLUSH off-scanout p99 (µs)",
            Lower,
            Box::new(|s, _| s.flush.p99),
        ),
        (
            "RESOURCE_FLUSH p50 ÷ eventfd ping-pong p50 (×)",
            Lower,
            Box::new(|s, r| s.flush.p50 / r.eventfd_p50),
        ),
        (
            "RESOURCE_FLUSH sequential (cmd/s)",
            Higher,
            Box::new(|s, _| s.flush.rate),
        ),
        (
            "RESOURCE_FLUSH, 32 in flight (cmd/s)",
            Higher,
            Box::new(|s, _| s.flush_pipelined),
        ),
        (
            "TRANSFER_TO_HOST_2D 1x1 p50 (µs)",
            Lower,
            Box::new(|s, _| s.tiny.p50),
        ),
        (
            "TRANSFER_TO_HOST_2D 1x1 p99 (µs)",
            Lower,
            Box::new(|s, _| s.tiny.p99),
        ),
        (
            "TRANSFER_TO_HOST_2D 1920x1080 (MB/s)",
            Higher,
            Box::new(|s, _| s.frame_mb_s),
        ),
        (
            "1920x1080 transfer ÷ hot memcpy (×)",
            Higher,
            Box::new(|s, r| s.frame_mb_s / r.memcpy_hot),
        ),
        (
            "1920x1080 transfer ÷ cold-ish memcpy (×)",
            Higher,
            Box::new(|s, r| s.frame_mb_s / r.memcpy_cold),
        ),
        (
            "VmRSS per 256x256 resource (KiB; floor 256)",
            Lower,
            Box::new(|s, _| s.rss_per_resource),
        ),
        (
            "RssAnon per 256x256 resource (KiB)",
            Lower,
            Box::new(|s, _| s.anon_per_resource),
        ),
    ]
}

fn number(x: f64) -> String {
    if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn print_references(rounds: &[Round]) {
    let med = |f: fn(&References) -> f64| summarize(rounds.iter().map(|r| f(&r.refs)).collect()).0;
    println!("| reference, median (min–max) over rounds | value |");
    println!("|---|---:|");
    println!(
        "| eventfd ping-pong between two threads, p50 | {} µs |",
        med(|r| r.eventfd_p50)
    );
    println!(
        "| std mpsc call to another thread (a thread hop), p50 | {} µs |",
        med(|r| r.mpsc_p50)
    );
    println!(
        "| vgpud: TRANSFER_TO_HOST_3D through a render worker (scripted renderer), p50 | {} µs |",
        med(|r| r.worker_p50)
    );
    println!(
        "| that ÷ eventfd ping-pong p50 | {} × |",
        med(|r| r.worker_p50 / r.eventfd_p50)
    );
    println!(
        "| vgpud: connect to the first answered renderer command (its worker started meanwhile) | {} ms |",
        med(|r| r.worker_first_ms)
    );
    println!(
        "| memcpy of a 1920x1080x4 frame, hot (same buffers) | {} MB/s |",
        med(|r| r.memcpy_hot)
    );
    println!(
        "| memcpy of a 1920x1080x4 frame, cold-ish (64+ MiB of buffers each way) | {} MB/s |",
        med(|r| r.memcpy_cold)
    );
}

/// "median (min–max)" of one metric over the rounds, and the median.
fn summarize(mut xs: Vec<f64>) -> (String, f64) {
    xs.sort_by(f64::total_cmp);
    let (lo, mid, hi) = (xs[0], percentile(&xs, 0.5), xs[xs.len() - 1]);
    let text = if xs.len() > 1 {
        format!("{} ({}–{})", number(mid), number(lo), number(hi))
    } else {
        number(mid)
    };
    (text, mid)
}

fn print_table(rounds: &[Round]) {
    println!("Each cell: median over rounds (min–max over rounds).");
    println!();
    println!("| metric | better | vgpud | QEMU C backend | vgpud / QEMU (medians) |");
    println!("|---|---|---:|---:|---:|");
    for (name, better, get) in metrics() {
        let better = match better {
            Better::Lower => "lower",
            Better::Higher => "higher",
        };
        let (vgpud, v) = summarize(rounds.iter().map(|r| get(&r.vgpud, &r.refs)).collect());
        let qemu: Option<Vec<f64>> = rounds
            .iter()
            .map(|r| r.qemu.as_ref().map(|q| get(q, &r.refs)))
            .collect();
        let (qemu, ratio) = match qemu.map(summarize) {
            Some((text, q)) => (text, format!("{:.2}", v / q)),
            None => ("n/a".to_string(), "n/a".to_string()),
        };
        println!("| {name} | {better} | {vgpud} | {qemu} | {ratio} |");
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and then a quick smoke
    // run checks that everything works. Filters and other flags are ignored.
    let full = std::env::args().any(|a| a == "--bench");
    let default = |full_run: usize, smoke: usize| if full { full_run } else { smoke };
    let k = Knobs {
        rounds: knob("VGPUD_BENCH_ROUNDS", default(10, 1)).max(1),
        round_trips: knob("VGPUD_BENCH_ROUND_TRIPS", default(5000, 50)).max(1),
        frames: knob("VGPUD_BENCH_FRAMES", default(100, 3)).max(1),
        resources: knob("VGPUD_BENCH_RESOURCES", default(1000, 10)).max(1),
    };
    if !full {
        println!("smoke run (no --bench argument): numbers are not meaningful");
    }
    let vgpud = Path::new(env!("CARGO_BIN_EXE_vgpud"));
    let qemu = PathBuf::from(std::env::var("VGPUD_BENCH_QEMU").unwrap_or(QEMU_DEFAULT.into()));
    println!("vgpud binary: {}", vgpud.display());
    if !vgpud.components().any(|c| c.as_os_str() == "release") {
        println!("WARNING: not a release build; run through `cargo bench`");
    }
    let qemu = if qemu.exists() {
        println!("QEMU C backend: {}", qemu.display());
        Some(qemu)
    } else {
        println!(
            "{} not found (Debian package qemu-system-gui): measuring vgpud alone",
            qemu.display()
        );
        None
    };
    println!(
        "VGPUD_BENCH_ROUNDS={} VGPUD_BENCH_ROUND_TRIPS={} VGPUD_BENCH_FRAMES={} \
         VGPUD_BENCH_RESOURCES={}",
        k.rounds, k.round_trips, k.frames, k.resources
    );

    let started = Instant::now();
    let mut rounds = Vec::new();
    for i in 0..k.rounds {
        let refs = references(&k, vgpud).expect("reference measurements");
        let run = |program: &Path| {
            measure(program, &k).unwrap_or_else(|e| panic!("{}: {e}", program.display()))
        };
        // Alternate which backend goes first, so drift in the machine hits both alike.
        let (vgpud, qemu) = if i % 2 == 0 {
            let v = run(vgpud);
            (v, qemu.as_deref().map(run))
        } else {
            let q = qemu.as_deref().map(run);
            (run(vgpud), q)
        };
        rounds.push(Round { refs, vgpud, qemu });
        println!("round {} done at {:.1?}", i + 1, started.elapsed());
    }

    println!();
    print_references(&rounds);
    println!();
    print_table(&rounds);
}
