//! Shared by the integration tests: a vgpud process and request/response helpers.
#![allow(dead_code)]

pub mod metrics;
pub mod share;

use std::path::Path;

use std::time::{Duration, Instant};

use vgpud_harness::{Daemon, ProcStats, Vm, VmConfig};
use vgpud_protocol::{
    format, Command, CreateBlob, CtrlHeader, MemEntry, Rect, Request, Response,
    BLOB_FLAG_USE_MAPPABLE, BLOB_MEM_GUEST,
};

pub fn vgpud() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vgpud"))
}

/// A daemon serving `n` VMs, one socket each; the 2D renderer unless `extra` names one (the
/// default, auto, would pick a 3D renderer in a build that has one).
pub fn daemon(n: usize, extra: &[&str]) -> Daemon {
    let mut args = extra.to_vec();
    if !args.contains(&"--renderer") {
        args.extend(["--renderer", "2d"]);
    }
    Daemon::spawn_with_sockets(vgpud(), n, &args).expect("start vgpud")
}

pub fn connect(d: &Daemon, i: usize) -> Vm {
    Vm::connect(&d.socket(i), VmConfig::default()).expect("connect")
}

pub fn connect_with_display(d: &Daemon, i: usize, modes: Vec<(u32, u32)>) -> Vm {
    let cfg = VmConfig {
        display: Some(modes),
        ..VmConfig::default()
    };
    Vm::connect(&d.socket(i), cfg).expect("connect")
}

/// A request on context `ctx_id`.
pub fn in_ctx(ctx_id: u32, cmd: Command) -> Vec<u8> {
    Request {
        hdr: CtrlHeader {
            ctx_id,
            ..CtrlHeader::default()
        },
        cmd,
    }
    .encode()
}

/// A fenced request on `ring` of context `ctx_id`.
pub fn fenced_cmd(ctx_id: u32, ring: u8, fence_id: u64, cmd: Command) -> Vec<u8> {
    Request {
        hdr: CtrlHeader {
            flags: vgpud_protocol::FLAG_FENCE | vgpud_protocol::FLAG_INFO_RING_IDX,
            fence_id,
            ctx_id,
            ring_idx: ring,
            ..CtrlHeader::default()
        },
        cmd,
    }
    .encode()
}

/// Sends a raw request and decodes the answer with its header.
pub fn answer(vm: &mut Vm, req: &[u8]) -> (CtrlHeader, Response) {
    let bytes = vm.request(req).expect("request");
    Response::decode(&bytes).expect("decodable response")
}

pub fn encode(cmd: Command) -> Vec<u8> {
    Request {
        hdr: CtrlHeader::default(),
        cmd,
    }
    .encode()
}

/// Sends one control command and decodes the answer.
pub fn call(vm: &mut Vm, cmd: Command) -> Response {
    let bytes = vm.request(&encode(cmd)).expect("request");
    Response::decode(&bytes).expect("decodable response").1
}

/// Whether `vm` is disconnected within `within`: its requests (that need no renderer) fail, and
/// not for want of an answer. A VM whose render worker died may still have an unfenced request
/// answered (it was posted before the death was seen); then it is disconnected.
pub fn disconnected_within(vm: &mut Vm, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    vm.set_timeout(within);
    while Instant::now() < deadline {
        match vm.request(&encode(Command::GetDisplayInfo)) {
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return e.kind() != std::io::ErrorKind::TimedOut,
        }
    }
    false
}

pub fn ok(vm: &mut Vm, cmd: Command) {
    let what = format!("{cmd:?}");
    assert_eq!(call(vm, cmd), Response::OkNodata, "{what}");
}

pub fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

pub fn create(resource_id: u32, width: u32, height: u32) -> Command {
    Command::ResourceCreate2d {
        resource_id,
        format: format::B8G8R8A8_UNORM,
        width,
        height,
    }
}

/// Creates a `w`x`h` resource whose backing holds `pixels` (4 bytes each), split into two entries in
/// two different guest memory regions, and uploads it.
pub fn upload(vm: &mut Vm, id: u32, w: u32, h: u32, pixels: &[u8]) {
    ok(vm, create(id, w, h));
    let half = (pixels.len() / 2) & !3;
    let a = vm.alloc_in(0, half as u64, 4096);
    let b = vm.alloc_in(1, (pixels.len() - half) as u64, 4096);
    vm.write_mem(a, &pixels[..half]);
    vm.write_mem(b, &pixels[half..]);
    let entries = vec![
        MemEntry {
            addr: a,
            length: half as u32,
        },
        MemEntry {
            addr: b,
            length: (pixels.len() - half) as u32,
        },
    ];
    ok(
        vm,
        Command::ResourceAttachBacking {
            resource_id: id,
            entries,
        },
    );
    ok(
        vm,
        Command::TransferToHost2d {
            rect: rect(0, 0, w, h),
            offset: 0,
            resource_id: id,
        },
    );
}

/// A recognisable pattern: every pixel differs, seeded so two VMs can draw different images.
pub fn pattern(w: u32, h: u32, seed: u32) -> Vec<u8> {
    (0..w * h)
        .flat_map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).to_le_bytes())
        .collect()
}

/// Shows resource `id` (`w`x`h`) on scanout 0 and flushes all of it.
pub fn show(vm: &mut Vm, id: u32, w: u32, h: u32) {
    ok(
        vm,
        Command::SetScanout {
            rect: rect(0, 0, w, h),
            scanout_id: 0,
            resource_id: id,
        },
    );
    ok(
        vm,
        Command::ResourceFlush {
            rect: rect(0, 0, w, h),
            resource_id: id,
        },
    );
}

/// Creates `id` as a mappable one-page guest blob (the VM must have a host-visible window).
pub fn mappable_page(vm: &mut Vm, id: u32) {
    mappable_blob(vm, id, 1, 0);
}

/// Creates `id` as a mappable guest blob of `pages` pages in memory region 0, filled with
/// `fill`; returns where it is.
pub fn mappable_blob(vm: &mut Vm, id: u32, pages: u64, fill: u8) -> u64 {
    let len = pages * 4096;
    let gpa = vm.alloc_in(0, len, 4096);
    vm.write_mem(gpa, &vec![fill; len as usize]);
    ok(
        vm,
        Command::ResourceCreateBlob(CreateBlob {
            resource_id: id,
            blob_mem: BLOB_MEM_GUEST,
            blob_flags: BLOB_FLAG_USE_MAPPABLE,
            blob_id: 0,
            size: len,
            entries: vec![MemEntry {
                addr: gpa,
                length: len as u32,
            }],
        }),
    );
    gpa
}

/// RESOURCE_MAP_BLOB of `id` at window `offset`.
pub fn map_blob(vm: &mut Vm, id: u32, offset: u64) -> Response {
    call(
        vm,
        Command::ResourceMapBlob {
            resource_id: id,
            offset,
        },
    )
}

/// Polls `f` until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stats(d: &Daemon) -> ProcStats {
    d.stats().expect("daemon stats")
}

/// Stats once descriptors and threads hold still for a moment: after a VM leaves, its socket's
/// server tears it down and then sets the next VM up.
pub fn quiet_stats(d: &Daemon) -> ProcStats {
    let mut last = stats(d);
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(200));
        let now = stats(d);
        if (now.fds, now.threads) == (last.fds, last.threads) {
            return now;
        }
        last = now;
    }
    last
}

/// The daemon's child processes: its render workers.
pub fn workers(d: &Daemon) -> Vec<u32> {
    let ppid = d.pid().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|p| {
            let p = p.ok()?;
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(p.path().join("stat")).ok()?;
            let after = stat.rsplit_once(')')?.1;
            // Field 4, the parent, after the state; a zombie is reaped soon and not counted.
            let mut fields = after.split_whitespace();
            let state = fields.next()?;
            (fields.next()? == ppid && state != "Z").then_some(pid)
        })
        .collect()
}
