//! The VNC output: a 1920x1080 full-frame update, from the guest's RESOURCE_FLUSH until every
//! viewer holds the whole frame, to one and to four viewers, against a memcpy of the frame in
//! the same run; and what a flush costs the guest with viewers attached against none.
//!
//! Run with `cargo bench --bench vnc`. Knobs: `VGPUD_BENCH_ROUNDS` (3), `VGPUD_BENCH_FRAMES`
//! (40 per configuration and round). The viewers are the harness's (vgpud_harness::vnc), on the
//! VM's UNIX socket, each on its own thread, asking for the next update as soon as one is read.

use std::hint::black_box;
use std::io;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::{knob, percentile};
use vgpud_harness::vnc::{RAW, ZRLE};
use vgpud_harness::{Daemon, Vm, VmConfig, VncViewer};
use vgpud_protocol::{format, Command, CtrlHeader, MemEntry, Rect, Request};

const W: u32 = 1920;
const H: u32 = 1080;
const FRAME: usize = (W * H * 4) as usize;

fn whole() -> Rect {
    Rect {
        x: 0,
        y: 0,
        width: W,
        height: H,
    }
}

fn ok(vm: &mut Vm, cmd: Command) -> io::Result<()> {
    let req = Request {
        hdr: CtrlHeader::default(),
        cmd,
    };
    let resp = vm.request(&req.encode())?;
    // OK_NODATA is 0x1100.
    match resp.get(..4) {
        Some(t) if u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == 0x1100 => Ok(()),
        _ => Err(io::Error::other(format!("{:?} failed", req.cmd))),
    }
}

/// A 1080p frame on scanout 0 of a fresh VM.
fn frame_vm(daemon: &Daemon) -> io::Result<Vm> {
    let mut vm = Vm::connect(&daemon.socket(0), VmConfig::default())?;
    let pixels: Vec<u8> = (0..FRAME).map(|i| (i * 7 / 5) as u8).collect();
    let gpa = vm.alloc_in(0, FRAME as u64, 4096);
    vm.write_mem(gpa, &pixels);
    ok(
        &mut vm,
        Command::ResourceCreate2d {
            resource_id: 1,
            format: format::B8G8R8X8_UNORM,
            width: W,
            height: H,
        },
    )?;
    let entries = vec![MemEntry {
        addr: gpa,
        length: FRAME as u32,
    }];
    ok(
        &mut vm,
        Command::ResourceAttachBacking {
            resource_id: 1,
            entries,
        },
    )?;
    ok(
        &mut vm,
        Command::TransferToHost2d {
            rect: whole(),
            offset: 0,
            resource_id: 1,
        },
    )?;
    ok(
        &mut vm,
        Command::SetScanout {
            scanout_id: 0,
            resource_id: 1,
            rect: whole(),
        },
    )?;
    Ok(vm)
}

fn flush(vm: &mut Vm) -> io::Result<Duration> {
    let start = Instant::now();
    ok(
        vm,
        Command::ResourceFlush {
            rect: whole(),
            resource_id: 1,
        },
    )?;
    Ok(start.elapsed())
}

/// Viewers on their own threads; each reports when it has read an update, until the daemon
/// goes away.
fn viewers(path: &Path, n: usize, encoding: i32) -> io::Result<mpsc::Receiver<()>> {
    let (tx, rx) = mpsc::channel();
    for _ in 0..n {
        let mut v = VncViewer::connect(path, &[encoding])?;
        v.set_read_timeout(Duration::from_secs(60))?;
        let tx = tx.clone();
        thread::spawn(move || {
            let mut incremental = false;
            while v
                .request(incremental)
                .and_then(|()| v.read_update())
                .is_ok()
            {
                incremental = true;
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
    }
    Ok(rx)
}

struct Run {
    /// From the flush until the last viewer held the frame, per frame.
    latency: Vec<f64>,
    fps: f64,
    /// The flush's round trip as the guest sees it.
    flush: Vec<f64>,
}

fn run(daemon: &Daemon, vnc: &Path, n: usize, encoding: i32, frames: usize) -> io::Result<Run> {
    let mut vm = frame_vm(daemon)?;
    let rx = viewers(vnc, n, encoding)?;
    // The first updates (the picture as it is, then as the output fed it whole) until quiet.
    flush(&mut vm)?;
    rx.recv_timeout(Duration::from_secs(30))
        .map_err(|_| io::Error::other("no first update"))?;
    while rx.recv_timeout(Duration::from_millis(500)).is_ok() {}
    let (mut latency, mut flushes) = (Vec::new(), Vec::new());
    let start = Instant::now();
    for _ in 0..frames {
        let t0 = Instant::now();
        flushes.push(flush(&mut vm)?.as_secs_f64() * 1e6);
        for _ in 0..n {
            rx.recv_timeout(Duration::from_secs(30))
                .map_err(|_| io::Error::other("an update never came"))?;
        }
        latency.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    let fps = frames as f64 / start.elapsed().as_secs_f64();
    vm.disconnect();
    Ok(Run {
        latency,
        fps,
        flush: flushes,
    })
}

/// The guest's flush with nobody watching (the output reads no pixels then).
fn unwatched(daemon: &Daemon, frames: usize) -> io::Result<Vec<f64>> {
    let mut vm = frame_vm(daemon)?;
    let times = (0..frames)
        .map(|_| flush(&mut vm).map(|d| d.as_secs_f64() * 1e6))
        .collect::<io::Result<Vec<_>>>()?;
    vm.disconnect();
    Ok(times)
}

fn memcpy_us(copies: usize) -> f64 {
    let src: Vec<u8> = (0..FRAME).map(|i| i as u8).collect();
    let mut dst = vec![0u8; FRAME];
    let mut times: Vec<f64> = (0..copies)
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(&src);
            black_box(&dst);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    percentile(&times, 0.5)
}

fn p50(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    percentile(&xs, 0.5)
}

fn main() -> io::Result<()> {
    let rounds = knob("VGPUD_BENCH_ROUNDS", 3);
    let frames = knob("VGPUD_BENCH_FRAMES", 40);
    let program = Path::new(env!("CARGO_BIN_EXE_vgpud"));
    let dir = std::env::temp_dir().join(format!("vgpud-bench-vnc-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let vnc = dir.join("vm0.vnc");
    let settings = format!("vnc={},resolution={W}x{H}", vnc.display());
    let configs = [
        (1, RAW, "1 viewer, Raw"),
        (1, ZRLE, "1 viewer, ZRLE"),
        (4, RAW, "4 viewers, Raw"),
    ];
    println!("VNC output, {W}x{H} full-frame updates, {frames} frames per configuration, {rounds} rounds");
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    let mut push = |name: &str, v: f64| match rows.iter_mut().find(|r| r.0 == name) {
        Some(r) => r.1.push(v),
        None => rows.push((name.to_string(), vec![v])),
    };
    for _ in 0..rounds {
        let daemon = Daemon::spawn_with_vm_settings(program, &[&settings], &["--renderer", "2d"])?;
        for _ in 0..100 {
            if vnc.exists() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let copy = memcpy_us(50);
        push("memcpy of the frame (us)", copy);
        let none = p50(unwatched(&daemon, frames)?);
        push("guest flush, no viewer (us)", none);
        for (n, encoding, name) in configs {
            let r = run(&daemon, &vnc, n, encoding, frames)?;
            let lat = p50(r.latency);
            push(&format!("{name}: flush to frame held, p50 (us)"), lat);
            push(&format!("{name}: same, x memcpy"), lat / copy);
            push(&format!("{name}: frames per second"), r.fps);
            let f = p50(r.flush);
            push(&format!("{name}: guest flush (us)"), f);
            push(&format!("{name}: guest flush, x no viewer"), f / none);
        }
        drop(daemon);
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    println!(
        "{:width$}  {:>12}  {:>25}",
        "", "median", "range over rounds"
    );
    for (name, mut xs) in rows {
        xs.sort_by(f64::total_cmp);
        let (lo, hi) = (xs[0], xs[xs.len() - 1]);
        println!(
            "{name:width$}  {:>12.1}  {:>25}",
            percentile(&xs, 0.5),
            format!("{lo:.1} .. {hi:.1}")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
