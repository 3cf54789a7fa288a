//! Render worker benchmarks: what one process per 3D VM costs.
//!
//! - Round trips of renderer-bound commands through a virgl render worker against the same
//!   renderer called in place on the VM's queue thread (a backend built from vgpud's own
//!   transport and device: common/in_place.rs), same harness frontend, through a worker that
//!   never spins (`--worker-spin 0`) too. The in-place peer runs twice: in this process, and in
//!   a child process of its own as a real backend would (`PeerProcess`). The VMs (and the 2D
//!   renderer's) take turns, a burst of requests each.
//! - The worker boundary alone: the scripted renderer (no GPU work) through a worker (spinning
//!   and not) against the same renderer in place, next to the eventfd ping-pong floor of the
//!   same round, and the cache-line ping-pong between two CPUs (the floor of a crossing whose
//!   ends spin: what the worker adds over in place is also given in those round trips).
//! - A 2D command of a VM on the virgl renderer against the same command on the 2D renderer.
//! - Memory of the whole daemon (broker, workers, render servers: proportional set size, so shared
//!   libraries count once) with 1, 4 and 16 idle 3D VMs, virgl and Venus.
//!
//! Needs virglrenderer, so it runs in the testbed:
//! `scripts/testbed/run.sh cargo bench --locked --features virgl --bench workers`.
//! Knobs: `VGPUD_BENCH_ROUND_TRIPS` (2000), `VGPUD_BENCH_ROUNDS` (5), `VGPUD_BENCH_WORKER_SPIN`
//! (the spinning workers' --worker-spin; the daemon's default if unset), `VGPUD_BENCH_PIN=1`
//! (this process, so the frontend, the in-place peers and the daemons' brokers, on the first
//! CPU it may use; the workers on the last, with `--worker-cpus`), `VGPUD_BENCH_DAEMON` (another
//! build of the daemon to run the workers with, such as an older revision's; the in-place peers
//! are always this build's).
//! Without `--bench` (cargo test --benches) it makes a quick smoke run.
// Without virglrenderer there is nothing to run.
#![cfg_attr(not(feature = "virgl"), allow(dead_code, unused_imports))]

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::in_place::serve_in_place;
use common::{cache_line_ping_pong, check, eventfd_ping_pong, knob, pin_to};
use vgpud::device::CapsetInfo;
use vgpud::render::cpus::CpuList;
use vgpud::render::RendererKind;
use vgpud_harness::{Daemon, ProcStats, Vm, VmConfig};
use vgpud_protocol::{
    format, resp, Box3d, Command, CtrlHeader, MemEntry, Rect, Request, ResourceCreate3d, Response,
    Transfer3d, FLAG_FENCE,
};

const WARMUP: usize = 200;
/// Requests a VM makes in a row before the next VM's turn: a guest's commands come in bursts
/// (a frame's transfers, submits and flush), and a turn of one request would leave every
/// worker a pause of several others' requests before each of its own.
const BURST: usize = 8;
const VENUS: u32 = 4;
/// The resources `setup` makes: a 2D one attached to the context, a 3D one that is not.
const RES_2D: u32 = 1;
const RES_3D: u32 = 2;
/// A resource id CREATE_3D makes (and UNREF frees) again and again.
const RES_CHURN: u32 = 3;

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

fn texture(resource_id: u32) -> Command {
    Command::ResourceCreate3d(ResourceCreate3d {
        resource_id,
        target: 2, // PIPE_TEXTURE_2D
        format: format::B8G8R8X8_UNORM,
        bind: 2, // PIPE_BIND_RENDER_TARGET
        width: 64,
        height: 64,
        depth: 1,
        array_size: 1,
        ..ResourceCreate3d::default()
    })
}

fn pixel(resource_id: u32) -> Transfer3d {
    Transfer3d {
        box_: Box3d {
            w: 1,
            h: 1,
            d: 1,
            ..Box3d::default()
        },
        resource_id,
        stride: 64 * 4,
        ..Transfer3d::default()
    }
}

/// What is measured: each a request timed and, if needed, one untimed to undo it.
struct Measured {
    name: &'static str,
    timed: Vec<u8>,
    undo: Option<Vec<u8>>,
    /// Whether it names the 3D context (the 2D renderer has none).
    needs_3d: bool,
}

fn commands() -> Vec<Measured> {
    let m = |name, timed, undo, needs_3d| Measured {
        name,
        timed,
        undo,
        needs_3d,
    };
    // One NOP (virgl's command 0, length 0), so that the stream reaches the renderer (the
    // device answers an empty one itself); the scripted renderer ignores it.
    let nop = || Command::Submit3d {
        commands: vec![0; 4],
    };
    let unref = Command::ResourceUnref {
        resource_id: RES_CHURN,
    };
    let to_host_2d = Command::TransferToHost2d {
        rect: Rect {
            x: 0,
            y: 0,
            width: 1,
            height: 1,
        },
        offset: 0,
        resource_id: RES_2D,
    };
    vec![
        m(
            "TRANSFER_TO_HOST_3D 4 bytes",
            request(1, 0, Command::TransferToHost3d(pixel(RES_2D))),
            None,
            true,
        ),
        m(
            "TRANSFER_FROM_HOST_3D 4 bytes",
            request(1, 0, Command::TransferFromHost3d(pixel(RES_2D))),
            None,
            true,
        ),
        m(
            "TRANSFER_TO_HOST_3D, fenced",
            request(1, FLAG_FENCE, Command::TransferToHost3d(pixel(RES_2D))),
            None,
            true,
        ),
        m(
            "TRANSFER_FROM_HOST_3D, fenced",
            request(1, FLAG_FENCE, Command::TransferFromHost3d(pixel(RES_2D))),
            None,
            true,
        ),
        m(
            "SUBMIT_3D one NOP, fenced",
            request(1, FLAG_FENCE, nop()),
            None,
            true,
        ),
        m("SUBMIT_3D one NOP", request(1, 0, nop()), None, true),
        m(
            "RESOURCE_CREATE_3D 64x64",
            request(0, 0, texture(RES_CHURN)),
            Some(request(0, 0, unref)),
            true,
        ),
        m(
            "CTX_ATTACH_RESOURCE",
            request(
                1,
                0,
                Command::CtxAttachResource {
                    resource_id: RES_3D,
                },
            ),
            Some(request(
                1,
                0,
                Command::CtxDetachResource {
                    resource_id: RES_3D,
                },
            )),
            true,
        ),
        m(
            "TRANSFER_TO_HOST_2D 1x1",
            request(0, 0, to_host_2d),
            None,
            false,
        ),
    ]
}

/// The resources and context the commands use.
fn setup(vm: &mut Vm, with_3d: bool) -> io::Result<()> {
    if with_3d {
        let create = Command::CtxCreate {
            context_init: 0,
            debug_name: b"bench".to_vec(),
        };
        ok(vm, &request(1, 0, create))?;
    }
    let create = Command::ResourceCreate2d {
        resource_id: RES_2D,
        format: format::B8G8R8X8_UNORM,
        width: 64,
        height: 64,
    };
    ok(vm, &request(0, 0, create))?;
    let addr = vm.alloc(64 * 64 * 4, 4096);
    let attach = Command::ResourceAttachBacking {
        resource_id: RES_2D,
        entries: vec![MemEntry {
            addr,
            length: 64 * 64 * 4,
        }],
    };
    ok(vm, &request(0, 0, attach))?;
    if with_3d {
        let attach = Command::CtxAttachResource {
            resource_id: RES_2D,
        };
        ok(vm, &request(1, 0, attach))?;
        ok(vm, &request(0, 0, texture(RES_3D)))?;
    }
    Ok(())
}

/// p50 in µs of each command on each VM (NaN for those that need 3D on a VM without it: the
/// bool), `n` times each. The VMs take turns, `BURST` samples each, so that every one of them
/// is measured under the same conditions (CPU frequency and idle states move under a long run).
/// Also counts the requests each VM made (timed, warm-up and undo) in `made`.
fn measure(vms: &mut [(&mut Vm, bool)], n: usize, made: &mut [u64]) -> io::Result<Vec<Vec<f64>>> {
    let mut p50s = vec![Vec::new(); vms.len()];
    for c in commands() {
        let mut samples = vec![Vec::with_capacity(n); vms.len()];
        for turn in (0..WARMUP + n).step_by(BURST) {
            let turns = vms.iter_mut().zip(samples.iter_mut()).zip(made.iter_mut());
            for (((vm, with_3d), mine), made) in turns {
                if c.needs_3d && !*with_3d {
                    continue;
                }
                for i in turn..(turn + BURST).min(WARMUP + n) {
                    *made += 1 + u64::from(c.undo.is_some());
                    let t = Instant::now();
                    check(&vm.request(&c.timed)?, resp::OK_NODATA)
                        .map_err(|e| io::Error::other(format!("{}: {e}", c.name)))?;
                    let took = t.elapsed();
                    if let Some(undo) = &c.undo {
                        ok(vm, undo)?;
                    }
                    if i >= WARMUP {
                        mine.push(took.as_secs_f64() * 1e6);
                    }
                }
            }
        }
        for (p50, mine) in p50s.iter_mut().zip(samples) {
            p50.push(median(mine));
        }
    }
    Ok(p50s)
}

fn connect(socket: &Path) -> io::Result<Vm> {
    let cfg = VmConfig {
        timeout: Duration::from_secs(20),
        ..VmConfig::default()
    };
    Vm::connect(socket, cfg)
}

/// A fresh daemon with `args` and its VM, set up for the commands.
fn fresh(program: &Path, args: &[&str], with_3d: bool) -> io::Result<(Daemon, Vm)> {
    let daemon = Daemon::spawn_with_sockets(program, 1, args)?;
    let with_log = |e: io::Error| io::Error::other(format!("{e}\n{}", daemon.stderr_log()));
    let mut vm = connect(&daemon.socket(0)).map_err(with_log)?;
    setup(&mut vm, with_3d).map_err(with_log)?;
    Ok((daemon, vm))
}

/// What a daemon's renderer offers, as its VMs see it (GET_CAPSET_INFO).
fn capsets_of(program: &Path, args: &[&str]) -> io::Result<Vec<CapsetInfo>> {
    let daemon = Daemon::spawn_with_sockets(program, 1, args)?;
    let mut vm = connect(&daemon.socket(0))?;
    let mut found = Vec::new();
    for capset_index in 0..8 {
        let reply = vm.request(&request(0, 0, Command::GetCapsetInfo { capset_index }))?;
        match Response::decode(&reply) {
            Ok((
                _,
                Response::OkCapsetInfo {
                    capset_id,
                    capset_max_version,
                    capset_max_size,
                },
            )) if capset_id != 0 => found.push(CapsetInfo {
                id: capset_id,
                max_version: capset_max_version,
                max_size: capset_max_size,
            }),
            _ => break,
        }
    }
    Ok(found)
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

/// CPU time (user and system) of `pids` so far, in µs.
fn cpu_us(pids: &[u32]) -> f64 {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let used: u64 = (pids.iter())
        .filter_map(|&p| ProcStats::of(p).ok())
        .map(|s| s.cpu_ticks)
        .sum();
    used as f64 / ticks * 1e6
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
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Medians of each column over the rounds.
fn medians(rounds: &[Vec<f64>]) -> Vec<f64> {
    let columns = rounds.first().map_or(0, Vec::len);
    (0..columns)
        .map(|c| median(rounds.iter().filter_map(|r| r.get(c).copied()).collect()))
        .collect()
}

#[cfg(not(feature = "virgl"))]
fn main() {
    println!("built without the virgl feature: nothing to measure (run it in the testbed)");
}

/// With `VGPUD_BENCH_PIN=1`: this process on the first CPU it may use (the threads and daemons
/// it starts from now on inherit that); the workers' CPU (for --worker-cpus), the last.
fn pin_apart() -> Option<String> {
    if knob("VGPUD_BENCH_PIN", 0) != 1 {
        return None;
    }
    let mine = CpuList::of_this_thread().expect("this thread's CPUs");
    let (Some(first), Some(last)) = (mine.cpus().first(), mine.cpus().last()) else {
        return None;
    };
    if first == last {
        println!("VGPUD_BENCH_PIN: only CPU {first} here, nothing pinned");
        return None;
    }
    let first = CpuList::parse(&first.to_string()).expect("a CPU");
    first.pin_this_thread().expect("pinning the bench");
    println!("pinned: frontend, in-place peers and brokers on CPU {first}, workers on {last}");
    Some(last.to_string())
}

/// The two CPUs the spinning floors run between: the first and the last this bench may use
/// (with `VGPUD_BENCH_PIN=1`, where the brokers and the workers run); None with one CPU.
fn line_cpus() -> Option<(usize, usize)> {
    let cpus = CpuList::of_this_thread().ok()?;
    let first = *cpus.cpus().first()?;
    let last = *cpus.cpus().last()?;
    (first != last).then_some((first, last))
}

/// p50 (µs) of a request and its reply through a doorbell channel between a thread on CPU `a`
/// (the broker's end) and one on CPU `b` (the worker's), both spinning: the crossing with the
/// channel's own code (encoding, the slot's checks, decoding) and nothing of the daemon's.
fn channel_ping_pong(n: usize, a: usize, b: usize) -> io::Result<f64> {
    use vgpud::render::channel::{Channel, Doorbell};
    use vgpud_protocol::worker::{Reply, Request};

    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let (doorbell, fds) = Doorbell::create()?;
    let spin = Duration::from_micros(50);
    let broker = Channel::with_doorbell(ours, doorbell, spin);
    let worker = Channel::with_doorbell(theirs, Doorbell::open(fds)?, spin);
    // Neither end waits for ever on a peer that failed.
    broker.set_timeout(Some(Duration::from_secs(1)))?;
    worker.set_timeout(Some(Duration::from_secs(1)))?;
    let total = common::WARMUP + n;
    let echo = thread::spawn(move || -> io::Result<()> {
        pin_to(b)?;
        for _ in 0..total {
            let _: (Request, _) = worker.recv()?;
            worker.send(&Reply::Ok, &[])?;
        }
        Ok(())
    });
    let saved_cpus = CpuList::of_this_thread()?;
    let asked = pin_to(a).and_then(|()| {
        let mut samples = Vec::with_capacity(n);
        for i in 0..total {
            let t = Instant::now();
            broker.send(&Request::Unref { id: 1 }, &[])?;
            let _: (Reply, _) = broker.recv()?;
            if i >= common::WARMUP {
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(samples)
    });
    let restored = saved_cpus.pin_this_thread();
    // Bounded: the echo's receive times out a second after the last request.
    let echoed = (echo.join()).map_err(|_| io::Error::other("echo thread panicked"))?;
    let samples = asked?;
    restored?;
    echoed?;
    Ok(median(samples))
}

/// A floor measured in a round, or None (and why, on stderr) when it could not be: a side
/// that never got a CPU costs the bench only that number.
fn floor_or_warn(what: &str, got: io::Result<f64>) -> Option<f64> {
    got.map_err(|e| eprintln!("{what}: {e}")).ok()
}

/// What the worker adds over in place, in floors of `floor` µs; "-" without a floor.
fn in_floors(extra: f64, floor: f64) -> String {
    if floor.is_nan() {
        "-".to_string()
    } else {
        format!("{:.1}", extra / floor)
    }
}

/// Set in a child of this bench that serves one in-place peer in a process of its own: the
/// renderer ("virgl" or "fake"); the directory for its socket and the daemon to ask for the
/// renderer's capsets come in `PEER_DIR_ENV` and `PEER_DAEMON_ENV`.
const PEER_ENV: &str = "VGPUD_BENCH_PEER";
const PEER_DIR_ENV: &str = "VGPUD_BENCH_PEER_DIR";
const PEER_DAEMON_ENV: &str = "VGPUD_BENCH_PEER_DAEMON";

/// In a child started by `PeerProcess::start`: serves the peer, says where on stdout, and ends
/// when its stdin closes (the bench ended, however it ended).
#[cfg(feature = "virgl")]
fn serve_peer(kind: &str) {
    use std::io::{Read, Write};
    let (kind, args) = match kind {
        "virgl" => (RendererKind::Virgl, ["--renderer", "virgl"]),
        _ => (RendererKind::Fake, ["--renderer", "fake"]),
    };
    let env = |name| std::path::PathBuf::from(std::env::var_os(name).expect(name));
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    vgpud::memfault::install().expect("SIGBUS handler");
    let capsets = capsets_of(&env(PEER_DAEMON_ENV), &args).expect("capsets");
    let socket = serve_in_place(&env(PEER_DIR_ENV), kind, capsets).expect("in-place backend");
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{}", socket.display()).and_then(|()| out.flush());
    let _ = io::stdin().lock().read_to_end(&mut Vec::new());
}

/// An in-place peer in a process of its own (a child of this bench, on its CPU), as a real
/// vhost-user backend is: in this process, its thread and the frontend's switch without
/// changing address space, which makes each round trip a few hundred ns cheaper. Killed when
/// dropped.
#[cfg(feature = "virgl")]
struct PeerProcess(std::process::Child);

#[cfg(feature = "virgl")]
impl PeerProcess {
    /// Starts one serving `kind` ("virgl" or "fake") on a socket in a directory of its own
    /// under `dir`, with the capsets `vgpud` offers, and connects its VM.
    fn start(kind: &str, dir: &Path, vgpud: &Path) -> (PeerProcess, Vm) {
        use std::io::BufRead;
        use std::process::{Command as Process, Stdio};
        let own = dir.join(format!("own-{kind}"));
        std::fs::create_dir_all(&own).expect("peer's directory");
        let child = Process::new(std::env::current_exe().expect("this bench"))
            .env(PEER_ENV, kind)
            .env(PEER_DIR_ENV, &own)
            .env(PEER_DAEMON_ENV, vgpud)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("peer process");
        let mut peer = PeerProcess(child);
        let out = peer.0.stdout.take().expect("peer's stdout");
        // Read on a thread of its own, so that a peer that never starts fails the bench.
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut socket = String::new();
            let _ = tx.send(
                io::BufReader::new(out)
                    .read_line(&mut socket)
                    .map(|_| socket),
            );
        });
        let socket = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(socket)) if !socket.is_empty() => socket,
            other => panic!("the {kind} peer did not start: {other:?}"),
        };
        let mut vm = connect(Path::new(socket.trim_end())).expect("in-place VM, own process");
        setup(&mut vm, true).expect("in-place setup");
        (peer, vm)
    }
}

#[cfg(feature = "virgl")]
impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(feature = "virgl")]
fn main() {
    if let Ok(kind) = std::env::var(PEER_ENV) {
        return serve_peer(&kind);
    }
    let full = std::env::args().any(|a| a == "--bench");
    let n = knob("VGPUD_BENCH_ROUND_TRIPS", if full { 2000 } else { 20 });
    let rounds = knob("VGPUD_BENCH_ROUNDS", if full { 5 } else { 1 }).max(1);
    // Another build of the daemon (an older revision's, to compare in one session), or this one.
    let other = std::env::var_os("VGPUD_BENCH_DAEMON")
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from);
    let vgpud = other
        .as_deref()
        .unwrap_or(Path::new(env!("CARGO_BIN_EXE_vgpud")));
    println!(
        "vgpud: {}  rounds: {rounds}  round trips: {n}",
        vgpud.display()
    );
    // The in-place backends log like the daemon does (RUST_LOG), to stderr.
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    vgpud::memfault::install().expect("SIGBUS handler");
    let dir = std::env::temp_dir().join(format!("vgpud-bench-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("socket directory");
    // The in-place peers serve one VM each for the whole run (virglrenderer starts once per
    // process); they are connected and set up once.
    // The spinning workers' budget: the daemon's default unless VGPUD_BENCH_WORKER_SPIN says.
    let spin = std::env::var("VGPUD_BENCH_WORKER_SPIN").ok();
    let spin: Vec<&str> = spin.iter().flat_map(|s| ["--worker-spin", s]).collect();
    // The spinning floor: between the brokers' CPU and the workers' when pinned, else between
    // the first and the last CPU this bench may use (None: only one). Found before pinning.
    let line_cpus = line_cpus();
    let pinned = pin_apart();
    let pin: Vec<&str> = pinned.iter().flat_map(|c| ["--worker-cpus", c]).collect();
    let virgl_spin = [&["--renderer", "virgl"][..], &spin, &pin].concat();
    let fake_spin = [&["--renderer", "fake"][..], &spin, &pin].concat();
    let virgl = ["--renderer", "virgl"];
    let fake = ["--renderer", "fake"];
    let no_spin = [&["--worker-spin", "0"][..], &pin].concat();
    let virgl_no_spin = [&virgl[..], &no_spin].concat();
    let fake_no_spin = [&fake[..], &no_spin].concat();
    let peer = |kind, args: &[&str]| -> Vm {
        let capsets = capsets_of(vgpud, args).expect("capsets");
        let socket = serve_in_place(&dir, kind, capsets).expect("in-place backend");
        let mut vm = connect(&socket).expect("in-place VM");
        setup(&mut vm, true).expect("in-place setup");
        vm
    };
    let mut virgl_in_place = peer(RendererKind::Virgl, &virgl);
    let mut fake_in_place = peer(RendererKind::Fake, &fake);
    let (virgl_peer, mut virgl_own) = PeerProcess::start("virgl", &dir, vgpud);
    let (fake_peer, mut fake_own) = PeerProcess::start("fake", &dir, vgpud);
    let (mut own_virgl, mut own_fake) = (Vec::new(), Vec::new());

    let (mut worker, mut still, mut in_place) = (Vec::new(), Vec::new(), Vec::new());
    let (mut fake_worker, mut fake_still, mut fake_local) = (Vec::new(), Vec::new(), Vec::new());
    let mut two_d = Vec::new();
    let mut floor = Vec::new();
    let (mut line, mut channel) = (Vec::new(), Vec::new());
    // CPU per request of the virgl daemons (broker and worker), spinning and not.
    let mut cpu = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        floor.push(eventfd_ping_pong(n).expect("eventfd floor"));
        if let Some((a, b)) = line_cpus {
            line.extend(floor_or_warn(
                "cache-line floor",
                cache_line_ping_pong(n, a, b),
            ));
            channel.extend(floor_or_warn("channel floor", channel_ping_pong(n, a, b)));
        }
        let (virgl_daemon, mut virgl_vm) = fresh(vgpud, &virgl_spin, true).expect("virgl worker");
        let (still_daemon, mut still_vm) =
            fresh(vgpud, &virgl_no_spin, true).expect("virgl worker, no spin");
        let (_two_d_daemon, mut two_d_vm) =
            fresh(vgpud, &["--renderer", "2d"], false).expect("2D renderer");
        let mut vms = [
            (&mut virgl_vm, true),
            (&mut still_vm, true),
            (&mut virgl_in_place, true),
            (&mut two_d_vm, false),
            (&mut virgl_own, true),
        ];
        let daemons = [tree(virgl_daemon.pid()), tree(still_daemon.pid())];
        let before = daemons.each_ref().map(|d| cpu_us(d));
        let mut made = [0; 5];
        let mut p50s = measure(&mut vms, n, &mut made).expect("virgl").into_iter();
        for ((cpu, d), (b, m)) in cpu.iter_mut().zip(&daemons).zip(before.iter().zip(made)) {
            cpu.push((cpu_us(d) - b) / m.max(1) as f64);
        }
        worker.extend(p50s.next());
        still.extend(p50s.next());
        in_place.extend(p50s.next());
        two_d.extend(p50s.next());
        own_virgl.extend(p50s.next());
        let (_fake_daemon, mut fake_vm) = fresh(vgpud, &fake_spin, true).expect("fake worker");
        let (_fake_still_daemon, mut fake_still_vm) =
            fresh(vgpud, &fake_no_spin, true).expect("fake worker, no spin");
        let mut vms = [
            (&mut fake_vm, true),
            (&mut fake_still_vm, true),
            (&mut fake_in_place, true),
            (&mut fake_own, true),
        ];
        let mut p50s = measure(&mut vms, n, &mut [0; 4]).expect("fake").into_iter();
        fake_worker.extend(p50s.next());
        fake_still.extend(p50s.next());
        fake_local.extend(p50s.next());
        own_fake.extend(p50s.next());
        println!("round {} done", round + 1);
    }
    // Before their VMs go, so that they do not see them go.
    drop((virgl_peer, fake_peer));
    let floor = median(floor);
    // NaN without a second CPU, or when they could not be measured.
    let (line, channel) = (median(line), median(channel));
    // The lines columns only where the two ends run on those two CPUs: pinned.
    let line_divisor = if pinned.is_some() { line } else { f64::NAN };
    // Each column's median over the rounds.
    let (worker, still, in_place) = (medians(&worker), medians(&still), medians(&in_place));
    let (fake_worker, fake_still) = (medians(&fake_worker), medians(&fake_still));
    let fake_local = medians(&fake_local);
    let two_d = medians(&two_d);
    let (own_virgl, own_fake) = (medians(&own_virgl), medians(&own_fake));
    let names: Vec<&str> = commands().iter().map(|c| c.name).collect();

    println!();
    println!("Round trips through a virgl render worker (spinning, and not) and with virgl in place, p50 µs (median of rounds)");
    println!("(in place: in this process; own: in a process of its own, as a real backend is;");
    println!(
        " lines, pinned only: what the spinning worker adds over in place, in cache-line round"
    );
    println!(" trips between the brokers' CPU and the workers')");
    if let Some((a, b)) = line_cpus {
        println!("between CPU {a} and CPU {b}, p50 µs: a cache-line round trip {line:.2}; a request and its reply through a doorbell channel alone {channel:.2}");
    }
    println!(
        "{:<30} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "command", "worker", "no spin", "in place", "own", "ratio", "vs own", "no spin", "lines"
    );
    for (i, name) in names.iter().enumerate() {
        let (w, s, p, o) = (worker[i], still[i], in_place[i], own_virgl[i]);
        println!(
            "{name:<30} {w:>8.1} {s:>8.1} {p:>8.1} {o:>8.1} {:>7.2}x {:>7.2}x {:>7.2}x {:>6}",
            w / p,
            w / o,
            s / p,
            in_floors(w - p, line_divisor)
        );
    }

    let [spin_cpu, still_cpu] = cpu.map(median);
    println!(
        "CPU of the daemon (broker and worker) per request, µs: {spin_cpu:.1} spinning, {still_cpu:.1} not ({:.2}x)",
        spin_cpu / still_cpu
    );

    println!();
    println!(
        "The worker boundary alone (scripted renderer, no GPU work), p50 µs; eventfd ping-pong floor {floor:.1} µs; lines as above"
    );
    println!(
        "{:<30} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "command", "worker", "no spin", "in place", "own", "x floor", "no spin", "lines"
    );
    for (i, name) in names.iter().enumerate() {
        let (w, s, p, o) = (fake_worker[i], fake_still[i], fake_local[i], own_fake[i]);
        if !w.is_nan() {
            println!(
                "{name:<30} {w:>8.1} {s:>8.1} {p:>8.1} {o:>8.1} {:>7.1}x {:>7.1}x {:>6}",
                (w - p) / floor,
                (s - p) / floor,
                in_floors(w - p, line_divisor)
            );
        }
    }

    println!();
    println!(
        "A 2D command on the virgl renderer (worker) and on the 2D renderer (in place), p50 µs"
    );
    if let Some(i) = names.iter().position(|n| n.contains("_2D")) {
        let (v, d) = (worker[i], two_d[i]);
        println!("{:<30} {v:>10.1} {d:>10.1} {:>7.2}x", names[i], v / d);
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
    // The in-place peers' threads still run virglrenderer (and llvmpipe's threads): returning
    // would run the libraries' exit handlers under them, as one run that crashed (SIGSEGV)
    // after its last line most likely did. The daemons are gone by now; the kernel frees the
    // rest.
    let _ = io::Write::flush(&mut io::stdout());
    // SAFETY: ends the process at once; nothing of ours is left to run.
    unsafe { libc::_exit(0) }
}
