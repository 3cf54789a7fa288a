//! MAP_BLOB / UNMAP_BLOB latency through the whole path: the control queue, the device's window
//! checks, and the SHMEM_MAP / SHMEM_UNMAP round trip to the frontend (the harness, which mmaps
//! and munmaps the passed fd as QEMU does). No other vhost-user GPU backend maps blobs, so the
//! peers are measured in the same run: a control-queue round trip that does no work
//! (GET_DISPLAY_INFO) and an in-process mmap + munmap of the same memfd page.
//!
//! Run with `cargo bench --bench blob`. Knobs: `VGPUD_BENCH_ROUNDS` (5),
//! `VGPUD_BENCH_MAPS` (3000 map + unmap cycles per round).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::knob;
use vgpud_harness::{Daemon, Vm, VmConfig};
use vgpud_protocol::{
    resp, Command, CreateBlob, CtrlHeader, MemEntry, Request, Response, BLOB_FLAG_USE_MAPPABLE,
    BLOB_MEM_GUEST,
};

const PAGE: u64 = 4096;
const WARMUP: usize = 200;
/// Mappings alive while measuring: the window's bookkeeping is not measured empty.
const LIVE: u32 = 256;

fn encode(cmd: Command) -> Vec<u8> {
    Request {
        hdr: CtrlHeader::default(),
        cmd,
    }
    .encode()
}

fn call(vm: &mut Vm, cmd: Command) -> io::Result<Response> {
    let bytes = vm.request(&encode(cmd))?;
    Response::decode(&bytes)
        .map(|(_, r)| r)
        .map_err(|e| io::Error::other(format!("bad response: {e:?}")))
}

fn expect(vm: &mut Vm, cmd: Command, want: u32) -> io::Result<Duration> {
    let req = encode(cmd);
    let t = Instant::now();
    let bytes = vm.request(&req)?;
    let took = t.elapsed();
    let code = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if code != Some(want) {
        return Err(io::Error::other(format!(
            "answer {code:x?}, wanted {want:#x}"
        )));
    }
    Ok(took)
}

fn create_blob(vm: &mut Vm, id: u32) -> io::Result<()> {
    let gpa = vm.alloc_in(0, PAGE, PAGE);
    let cmd = Command::ResourceCreateBlob(CreateBlob {
        resource_id: id,
        blob_mem: BLOB_MEM_GUEST,
        blob_flags: BLOB_FLAG_USE_MAPPABLE,
        blob_id: 0,
        size: PAGE,
        entries: vec![MemEntry {
            addr: gpa,
            length: PAGE as u32,
        }],
    });
    match call(vm, cmd)? {
        Response::OkNodata => Ok(()),
        other => Err(io::Error::other(format!("create blob: {other:?}"))),
    }
}

fn p50_us(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

struct Round {
    map: f64,
    unmap: f64,
    round_trip: f64,
    mmap: f64,
}

fn round(program: &Path, cycles: usize) -> io::Result<Round> {
    let daemon = Daemon::spawn_with_sockets(program, 1, &["--hostmem", "64M"])?;
    let mut vm = Vm::connect(&daemon.socket(0), VmConfig::default())?;
    for id in 1..=LIVE {
        create_blob(&mut vm, id)?;
        let offset = u64::from(id) * PAGE;
        let map = Command::ResourceMapBlob {
            resource_id: id,
            offset,
        };
        expect(&mut vm, map, resp::OK_MAP_INFO)?;
    }
    let id = LIVE + 1;
    create_blob(&mut vm, id)?;
    let (mut maps, mut unmaps, mut trips) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..WARMUP + cycles {
        let map = Command::ResourceMapBlob {
            resource_id: id,
            offset: 0,
        };
        let m = expect(&mut vm, map, resp::OK_MAP_INFO)?;
        let u = expect(
            &mut vm,
            Command::ResourceUnmapBlob { resource_id: id },
            resp::OK_NODATA,
        )?;
        let t = expect(&mut vm, Command::GetDisplayInfo, resp::OK_DISPLAY_INFO)?;
        if i >= WARMUP {
            maps.push(m);
            unmaps.push(u);
            trips.push(t);
        }
    }
    Ok(Round {
        map: p50_us(maps),
        unmap: p50_us(unmaps),
        round_trip: p50_us(trips),
        mmap: mmap_munmap_us(cycles)?,
    })
}

/// p50 of mapping and unmapping one shared memfd page in this process.
fn mmap_munmap_us(n: usize) -> io::Result<f64> {
    // SAFETY: a valid C string; the result is checked and then owned by the File.
    let fd = unsafe { libc::memfd_create(c"bench".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is fresh and owned by nobody else.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(PAGE)?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        // SAFETY: a fresh shared mapping chosen by the kernel, unmapped right after.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                PAGE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            libc::munmap(p, PAGE as usize);
        }
        samples.push(t.elapsed());
    }
    Ok(p50_us(samples))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let program = Path::new(env!("CARGO_BIN_EXE_vgpud"));
    let rounds = knob("VGPUD_BENCH_ROUNDS", 5).max(1);
    let cycles = knob("VGPUD_BENCH_MAPS", 3000).max(1);
    println!("MAP_BLOB / UNMAP_BLOB of a 4 KiB guest blob, {LIVE} other mappings live");
    println!("{rounds} rounds x {cycles} cycles; medians over rounds of each round's p50\n");
    let all: Vec<Round> = (0..rounds)
        .map(|_| round(program, cycles).unwrap_or_else(|e| panic!("round failed: {e}")))
        .collect();
    let get = |f: fn(&Round) -> f64| median(all.iter().map(f).collect());
    let (map, unmap, trip, mmap) = (
        get(|r| r.map),
        get(|r| r.unmap),
        get(|r| r.round_trip),
        get(|r| r.mmap),
    );
    println!("| measurement | p50 (us) | / control round trip |");
    println!("| --- | --- | --- |");
    println!(
        "| MAP_BLOB (incl. SHMEM_MAP) | {map:.1} | {:.2}x |",
        map / trip
    );
    println!(
        "| UNMAP_BLOB (incl. SHMEM_UNMAP) | {unmap:.1} | {:.2}x |",
        unmap / trip
    );
    println!("| GET_DISPLAY_INFO (control round trip) | {trip:.1} | 1.00x |");
    println!(
        "| mmap + munmap of the page in-process | {mmap:.1} | {:.2}x |",
        mmap / trip
    );
}
