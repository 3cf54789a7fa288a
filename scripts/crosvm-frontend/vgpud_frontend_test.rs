//! vgpud (a vhost-user virtio-gpu backend, a separate process) driven by crosvm's own
//! `VhostUserFrontend`, as crosvm's PCI transport drives it, with no KVM.
//!
//! Drop this file into `devices/src/virtio/vhost_user_frontend/` and add
//! `#[cfg(test)] mod vgpud_frontend_test;` to that directory's `mod.rs`. Run with
//! `VGPUD_BIN=/path/to/vgpud cargo test -p devices --lib vgpud_ -- --nocapture --test-threads=1`.
//!
//! The test plays the guest driver (a minimal split-virtqueue driver writing into a crosvm
//! `GuestMemory`) and the VMM's memory manager (a `SharedMemoryMapper` that really maps what
//! crosvm's backend-request handler hands it into a reserved host range). Everything between
//! the two is crosvm's code: feature and protocol negotiation, SET_MEM_TABLE, vring setup,
//! the worker thread serving the backend channel (SHMEM_MAP/UNMAP), reset, sleep and wake.
//! Any failure of that worker is reported by crosvm as `VmEventType::DeviceCrashed` on the
//! VM event tube, which every test checks.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::fence;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::anyhow;
use anyhow::bail;
use base::AsRawDescriptor;
use base::Event;
use base::Protection;
use base::ReadNotifier;
use base::RecvTube;
use base::Tube;
use base::VmEventType;
use hypervisor::MemCacheType;
use hypervisor::ProtectionType;
use vm_control::VmMemorySource;
use vm_memory::GuestAddress;
use vm_memory::GuestMemory;

use crate::virtio::base_features;
use crate::virtio::DeviceType;
use crate::virtio::Interrupt;
use crate::virtio::Queue;
use crate::virtio::QueueConfig;
use crate::virtio::SharedMemoryMapper;
use crate::virtio::VhostUserFrontend;
use crate::virtio::VirtioDevice;

const PAGE: u64 = 4096;
const MEM_SIZE: u64 = 32 << 20;
// Each queue gets 1 MiB: a 32768-entry split ring needs 512 KiB of descriptors, 64 KiB of
// avail ring and 256 KiB of used ring.
const RINGS_BASE: u64 = 0x10_0000;
const RING_STRIDE: u64 = 0x10_0000;
const REQ_BUF: u64 = 0x40_0000;
const RESP_BUF: u64 = 0x40_1000;
const BLOB_GPA: u64 = 0x80_0000;

// virtio-gpu (virtio spec 5.7).
const F_RESOURCE_BLOB: u64 = 1 << 3;
const CMD_GET_DISPLAY_INFO: u32 = 0x100;
const CMD_RESOURCE_CREATE_2D: u32 = 0x101;
const CMD_RESOURCE_UNREF: u32 = 0x102;
const CMD_RESOURCE_CREATE_BLOB: u32 = 0x10c;
const CMD_RESOURCE_MAP_BLOB: u32 = 0x208;
const CMD_RESOURCE_UNMAP_BLOB: u32 = 0x209;
const RESP_OK_NODATA: u32 = 0x1100;
const RESP_OK_DISPLAY_INFO: u32 = 0x1101;
const RESP_OK_MAP_INFO: u32 = 0x1106;
const RESP_ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
const FORMAT_B8G8R8A8: u32 = 1;
const BLOB_MEM_GUEST: u32 = 1;
const BLOB_FLAG_USE_MAPPABLE: u32 = 1;
const MAP_CACHE_CACHED: u32 = 1;
const SHM_ID_HOST_VISIBLE: u8 = 1;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

// ---------------------------------------------------------------------------------------------
// The vgpud daemon, a real process on a real UNIX socket.

struct Vgpud {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Vgpud {
    fn start(extra: &[&str]) -> Vgpud {
        let bin = std::env::var("VGPUD_BIN").expect("set VGPUD_BIN to the vgpud binary");
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vgpud.sock");
        let log = dir.path().join("vgpud.log");
        let out = File::create(&log).unwrap();
        let child = Command::new(&bin)
            .arg("--socket-path")
            .arg(&sock)
            .args(["--renderer", "2d"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let d = Vgpud {
            child,
            sock,
            log,
            _dir: dir,
        };
        println!(
            "vgpud started: {bin} --socket-path <tmp> --renderer 2d {}",
            extra.join(" ")
        );
        d
    }

    fn connect(&self) -> vmm_vhost::Connection {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(&self.sock) {
                Ok(s) => return vmm_vhost::Connection::try_from(s).expect("vhost-user connection"),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("vgpud never listened: {e}\nlog:\n{}", self.log_text()),
            }
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn logged(&self, what: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.log_text().contains(what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn print_events(&self) {
        for l in self.log_text().lines().filter(|l| l.contains("event=")) {
            println!("  vgpud| {l}");
        }
    }
}

impl Drop for Vgpud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The VMM's side of the host-visible window: what crosvm's handler calls for SHMEM_MAP/UNMAP.
// It maps the backend's fd range into a reserved range of this process (where crosvm would add
// a KVM memory slot), refusing what KVM would refuse (overlaps, out of range).

struct Window {
    base: usize,
    len: u64,
    maps: BTreeMap<u64, u64>,
    log: Vec<String>,
    /// Negative control: refuse every map, as a VMM out of memory slots would.
    refuse: bool,
}

// SAFETY: the reservation is owned by the Window and only touched under its mutex.
unsafe impl Send for Window {}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: unmapping our own reservation.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len as usize) };
    }
}

#[derive(Clone)]
struct TestMapper(Arc<Mutex<Window>>);

impl TestMapper {
    fn new(len: u64) -> TestMapper {
        // SAFETY: a fresh PROT_NONE anonymous reservation at an address of the kernel's choice.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "reserve the window");
        TestMapper(Arc::new(Mutex::new(Window {
            base: base as usize,
            len,
            maps: BTreeMap::new(),
            log: Vec::new(),
            refuse: false,
        })))
    }

    fn mappings(&self) -> Vec<(u64, u64)> {
        self.0
            .lock()
            .unwrap()
            .maps
            .iter()
            .map(|(&o, &l)| (o, l))
            .collect()
    }

    fn log(&self) -> Vec<String> {
        self.0.lock().unwrap().log.clone()
    }

    fn covered(w: &Window, off: u64, len: u64) -> bool {
        w.maps.iter().any(|(&o, &l)| o <= off && off + len <= o + l)
    }

    /// Reads the window through the mapping crosvm's handler made.
    fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let w = self.0.lock().unwrap();
        assert!(
            Self::covered(&w, off, len as u64),
            "{off:#x}+{len} is not mapped"
        );
        let mut v = vec![0u8; len];
        // SAFETY: the range lies inside a live MAP_SHARED mapping of the reservation.
        unsafe {
            std::ptr::copy_nonoverlapping((w.base + off as usize) as *const u8, v.as_mut_ptr(), len)
        };
        v
    }

    fn write(&self, off: u64, data: &[u8]) {
        let w = self.0.lock().unwrap();
        assert!(
            Self::covered(&w, off, data.len() as u64),
            "{off:#x} is not mapped"
        );
        // SAFETY: as in `read`; the mapping is writable (checked by the caller's assertion on prot).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (w.base + off as usize) as *mut u8,
                data.len(),
            )
        };
    }
}

impl SharedMemoryMapper for TestMapper {
    fn add_mapping(
        &mut self,
        source: VmMemorySource,
        offset: u64,
        prot: Protection,
        _cache: MemCacheType,
    ) -> anyhow::Result<()> {
        let VmMemorySource::Descriptor {
            descriptor,
            offset: fd_offset,
            size,
        } = source
        else {
            bail!("unexpected mapping source");
        };
        let mut w = self.0.lock().unwrap();
        if w.refuse {
            println!("  mapper| refusing map shm_offset={offset:#x} len={size:#x}");
            bail!("refused (negative control)");
        }
        let end = offset
            .checked_add(size)
            .ok_or_else(|| anyhow!("overflow"))?;
        if size == 0 || offset % PAGE != 0 || size % PAGE != 0 || end > w.len {
            bail!("bad mapping {offset:#x}+{size:#x} in a {:#x} window", w.len);
        }
        if let Some((o, l)) = w.maps.iter().find(|(&o, &l)| o < end && offset < o + l) {
            bail!("{offset:#x}+{size:#x} overlaps the live mapping {o:#x}+{l:#x}");
        }
        // SAFETY: MAP_FIXED over our own reservation, inside its bounds.
        let p = unsafe {
            libc::mmap(
                (w.base + offset as usize) as *mut libc::c_void,
                size as usize,
                libc::c_int::from(prot),
                libc::MAP_SHARED | libc::MAP_FIXED,
                descriptor.as_raw_descriptor(),
                fd_offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap: {}", std::io::Error::last_os_error());
        }
        w.maps.insert(offset, size);
        let line = format!(
            "map shm_offset={offset:#x} len={size:#x} fd_offset={fd_offset:#x} prot={prot:?}"
        );
        println!("  mapper| {line}");
        w.log.push(line);
        Ok(())
    }

    fn remove_mapping(&mut self, offset: u64) -> anyhow::Result<()> {
        let mut w = self.0.lock().unwrap();
        let size = w
            .maps
            .remove(&offset)
            .ok_or_else(|| anyhow!("no mapping at {offset:#x}"))?;
        // SAFETY: back to an inaccessible reservation, inside our own range.
        let p = unsafe {
            libc::mmap(
                (w.base + offset as usize) as *mut libc::c_void,
                size as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap: {}", std::io::Error::last_os_error());
        }
        let line = format!("unmap shm_offset={offset:#x} len={size:#x}");
        println!("  mapper| {line}");
        w.log.push(line);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The guest driver: split virtqueues in a crosvm GuestMemory, one request in flight at a time.

struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    next_avail: u16,
    last_used: u16,
    kick: Option<Event>,
}

struct Guest {
    mem: GuestMemory,
    rings: Vec<Ring>,
}

impl Guest {
    fn new(queue_sizes: &[u16]) -> Guest {
        let mem = GuestMemory::new(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mut g = Guest {
            mem,
            rings: Vec::new(),
        };
        g.fresh_rings(queue_sizes);
        g
    }

    /// What a driver does when it (re)initialises the device: zeroed rings, indices at 0.
    fn fresh_rings(&mut self, queue_sizes: &[u16]) {
        self.rings = queue_sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let desc = RINGS_BASE + i as u64 * RING_STRIDE;
                self.mem
                    .write_all_at_addr(&vec![0u8; RING_STRIDE as usize], GuestAddress(desc))
                    .unwrap();
                Ring {
                    desc,
                    avail: desc + 16 * u64::from(size),
                    used: desc + 16 * u64::from(size) + 0x1_8000,
                    size,
                    next_avail: 0,
                    last_used: 0,
                    kick: None,
                }
            })
            .collect();
        for r in &self.rings {
            assert!(r.used + 4 + 8 * u64::from(r.size) + 2 <= r.desc + RING_STRIDE);
        }
    }

    fn write(&self, addr: u64, data: &[u8]) {
        self.mem
            .write_all_at_addr(data, GuestAddress(addr))
            .unwrap();
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_exact_at_addr(&mut v, GuestAddress(addr))
            .unwrap();
        v
    }

    fn write_desc(&self, r: &Ring, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = Vec::with_capacity(16);
        d.extend_from_slice(&addr.to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        self.write(r.desc + 16 * u64::from(i), &d);
    }

    /// Posts `req` with a `resp_len`-byte answer buffer on queue `q`, kicks, and waits for the
    /// device to return the chain in the used ring. Returns the bytes the device wrote.
    fn call(&mut self, q: usize, req: &[u8], resp_len: u32) -> Vec<u8> {
        self.try_call(q, req, resp_len, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no answer on queue {q} within 10 s"))
    }

    /// As `call`, but `None` if no answer comes within `limit`.
    fn try_call(
        &mut self,
        q: usize,
        req: &[u8],
        resp_len: u32,
        limit: Duration,
    ) -> Option<Vec<u8>> {
        self.write(REQ_BUF, req);
        self.write(RESP_BUF, &vec![0u8; resp_len as usize]);
        let r = &self.rings[q];
        let head = r.next_avail.wrapping_mul(2) % r.size;
        self.write_desc(
            r,
            head,
            REQ_BUF,
            req.len() as u32,
            VRING_DESC_F_NEXT,
            head + 1,
        );
        self.write_desc(r, head + 1, RESP_BUF, resp_len, VRING_DESC_F_WRITE, 0);
        let slot = r.avail + 4 + 2 * u64::from(r.next_avail % r.size);
        self.write(slot, &head.to_le_bytes());
        // used_event (VIRTIO_RING_F_EVENT_IDX): interrupt as soon as this one is used.
        self.write(
            r.avail + 4 + 2 * u64::from(r.size),
            &r.last_used.to_le_bytes(),
        );
        fence(Ordering::SeqCst);
        let idx = r.next_avail.wrapping_add(1);
        self.write(r.avail + 2, &idx.to_le_bytes());
        fence(Ordering::SeqCst);
        r.kick
            .as_ref()
            .expect("queue not activated")
            .signal()
            .unwrap();
        let (used, size, last_used) = (r.used, r.size, r.last_used);
        self.rings[q].next_avail = idx;

        let deadline = Instant::now() + limit;
        loop {
            let used_idx: u16 = self.mem.read_obj_from_addr(GuestAddress(used + 2)).unwrap();
            if used_idx != last_used {
                break;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        fence(Ordering::SeqCst);
        let elem = used + 4 + 8 * u64::from(last_used % size);
        let id: u32 = self.mem.read_obj_from_addr(GuestAddress(elem)).unwrap();
        let len: u32 = self.mem.read_obj_from_addr(GuestAddress(elem + 4)).unwrap();
        assert_eq!(id, u32::from(head), "the device returned another chain");
        assert!(len <= resp_len, "used length {len} > buffer {resp_len}");
        self.rings[q].last_used = last_used.wrapping_add(1);
        Some(self.read(RESP_BUF, len as usize))
    }

    /// As the PCI transport's activate does: ready queues become `Queue`s holding the memory,
    /// their kick events and the interrupt, then `VirtioDevice::activate`.
    fn activate(&mut self, dev: &mut VhostUserFrontend, acked: u64, interrupt: &Interrupt) {
        let mut queues = BTreeMap::new();
        for (i, r) in self.rings.iter_mut().enumerate() {
            let mut qc = QueueConfig::new(dev.queue_max_sizes()[i], dev.features());
            qc.set_size(r.size);
            qc.set_desc_table(GuestAddress(r.desc));
            qc.set_avail_ring(GuestAddress(r.avail));
            qc.set_used_ring(GuestAddress(r.used));
            qc.ack_features(acked);
            qc.set_ready(true);
            let kick = Event::new().unwrap();
            let q = qc
                .activate(&self.mem, kick.try_clone().unwrap(), interrupt.clone())
                .expect("queue activate");
            r.kick = Some(kick);
            queues.insert(i, q);
        }
        dev.activate(self.mem.clone(), interrupt.clone(), queues)
            .expect("VhostUserFrontend::activate");
    }

    /// As the PCI transport's wake does: the queues `virtio_sleep` returned go back as they are.
    fn wake(
        &self,
        dev: &mut VhostUserFrontend,
        interrupt: &Interrupt,
        queues: BTreeMap<usize, Queue>,
    ) {
        dev.virtio_wake(Some((self.mem.clone(), interrupt.clone(), queues)))
            .expect("virtio_wake");
    }
}

// ---------------------------------------------------------------------------------------------
// virtio-gpu requests.

fn hdr(ty: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(&ty.to_le_bytes()); // type
    v.extend_from_slice(&0u32.to_le_bytes()); // flags
    v.extend_from_slice(&0u64.to_le_bytes()); // fence_id
    v.extend_from_slice(&0u32.to_le_bytes()); // ctx_id
    v.extend_from_slice(&[0u8; 4]); // ring_idx + padding
    v
}

fn u32s(mut v: Vec<u8>, xs: &[u32]) -> Vec<u8> {
    for x in xs {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

fn resp_type(resp: &[u8]) -> u32 {
    assert!(resp.len() >= 24, "short answer: {} bytes", resp.len());
    u32::from_le_bytes(resp[0..4].try_into().unwrap())
}

fn name(ty: u32) -> &'static str {
    match ty {
        RESP_OK_NODATA => "OK_NODATA",
        RESP_OK_DISPLAY_INFO => "OK_DISPLAY_INFO",
        RESP_OK_MAP_INFO => "OK_MAP_INFO",
        RESP_ERR_INVALID_RESOURCE_ID => "ERR_INVALID_RESOURCE_ID",
        0x1200 => "ERR_UNSPEC",
        0x1201 => "ERR_OUT_OF_MEMORY",
        0x1205 => "ERR_INVALID_PARAMETER",
        _ => "?",
    }
}

fn ctrl(g: &mut Guest, what: &str, req: Vec<u8>, resp_len: u32) -> Vec<u8> {
    let resp = g.call(0, &req, resp_len);
    let ty = resp_type(&resp);
    println!("  guest | {what} -> {} ({ty:#x})", name(ty));
    resp
}

fn create_2d(g: &mut Guest, id: u32) -> u32 {
    let req = u32s(hdr(CMD_RESOURCE_CREATE_2D), &[id, FORMAT_B8G8R8A8, 64, 64]);
    resp_type(&ctrl(
        g,
        &format!("RESOURCE_CREATE_2D id={id} 64x64"),
        req,
        24,
    ))
}

fn create_guest_blob(g: &mut Guest, id: u32, gpa: u64, len: u64) -> u32 {
    let mut req = u32s(
        hdr(CMD_RESOURCE_CREATE_BLOB),
        &[id, BLOB_MEM_GUEST, BLOB_FLAG_USE_MAPPABLE, 1],
    );
    req.extend_from_slice(&0u64.to_le_bytes()); // blob_id
    req.extend_from_slice(&len.to_le_bytes()); // size
    req.extend_from_slice(&gpa.to_le_bytes()); // entry addr
    req = u32s(req, &[len as u32, 0]); // entry length, padding
    resp_type(&ctrl(
        g,
        &format!("RESOURCE_CREATE_BLOB id={id} guest gpa={gpa:#x} len={len:#x}"),
        req,
        24,
    ))
}

/// Returns (response type, map_info).
fn map_blob(g: &mut Guest, id: u32, offset: u64) -> (u32, u32) {
    let mut req = u32s(hdr(CMD_RESOURCE_MAP_BLOB), &[id, 0]);
    req.extend_from_slice(&offset.to_le_bytes());
    let resp = ctrl(
        g,
        &format!("RESOURCE_MAP_BLOB id={id} offset={offset:#x}"),
        req,
        32,
    );
    let info = if resp.len() >= 28 {
        u32::from_le_bytes(resp[24..28].try_into().unwrap())
    } else {
        0
    };
    (resp_type(&resp), info)
}

fn unmap_blob(g: &mut Guest, id: u32) -> u32 {
    let req = u32s(hdr(CMD_RESOURCE_UNMAP_BLOB), &[id, 0]);
    resp_type(&ctrl(g, &format!("RESOURCE_UNMAP_BLOB id={id}"), req, 24))
}

fn unref(g: &mut Guest, id: u32) -> u32 {
    let req = u32s(hdr(CMD_RESOURCE_UNREF), &[id, 0]);
    resp_type(&ctrl(g, &format!("RESOURCE_UNREF id={id}"), req, 24))
}

// ---------------------------------------------------------------------------------------------
// The VM: crosvm's frontend connected to vgpud, set up as crosvm's PCI transport sets it up.

struct Vm {
    dev: VhostUserFrontend,
    crash_rx: RecvTube,
    mapper: Option<TestMapper>,
    shm_id: Option<u8>,
    acked: u64,
    guest: Guest,
    interrupt: Interrupt,
    vgpud: Vgpud,
}

impl Vm {
    fn boot(vgpud_args: &[&str]) -> Vm {
        let vgpud = Vgpud::start(vgpud_args);
        let (crash_tx, crash_rx) = Tube::directional_pair().unwrap();
        // As crosvm's create_vhost_user_frontend: `--vhost-user gpu,socket=...`, default queue
        // size, a remote backend.
        let mut dev = VhostUserFrontend::new(
            DeviceType::Gpu,
            base_features(ProtectionType::Unprotected),
            vgpud.connect(),
            crash_tx,
            None,
            None,
            true,
        )
        .expect("VhostUserFrontend::new");
        // The PCI device's BAR layout asks for the shared memory region; when there is one,
        // crosvm gives the device a mapper.
        let region = dev.get_shared_memory_region();
        let mapper = region.map(|region| {
            println!(
                "  crosvm| shared memory region id={} length={:#x}",
                region.id, region.length
            );
            let m = TestMapper::new(region.length);
            dev.set_shared_memory_mapper(Box::new(m.clone()));
            m
        });
        // The driver reads the config space and acks the features it knows (here: all offered).
        let mut cfg = [0u8; 24];
        dev.read_config(0, &mut cfg);
        let num_scanouts = u32::from_le_bytes(cfg[8..12].try_into().unwrap());
        assert_eq!(num_scanouts, 1, "config space num_scanouts");
        let acked = dev.features();
        dev.ack_features(acked);
        println!(
            "  crosvm| features={acked:#x} queues={:?} num_scanouts={num_scanouts}",
            dev.queue_max_sizes()
        );
        let guest = Guest::new(dev.queue_max_sizes());
        Vm {
            dev,
            crash_rx,
            mapper,
            shm_id: region.map(|r| r.id),
            acked,
            guest,
            interrupt: Interrupt::new_for_test_with_msix(),
            vgpud,
        }
    }

    fn activate(&mut self) {
        self.guest
            .activate(&mut self.dev, self.acked, &self.interrupt);
    }

    /// The event crosvm's frontend sent on the VM event tube within `limit`, if any.
    fn vm_event(&self, limit: Duration) -> Option<VmEventType> {
        let mut pfd = libc::pollfd {
            fd: self.crash_rx.get_read_notifier().as_raw_descriptor(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, limit.as_millis() as libc::c_int) };
        (n > 0).then(|| self.crash_rx.recv().expect("VM event"))
    }

    /// Fails the test if crosvm's frontend has reported the device crashed.
    fn assert_no_crash(&self) {
        if let Some(ev) = self.vm_event(Duration::from_millis(200)) {
            panic!(
                "crosvm's frontend reported {ev:?}\nvgpud log:\n{}",
                self.vgpud.log_text()
            );
        }
        println!("  crosvm| no crash reported on the VM event tube");
    }

    fn ctrl(&mut self) -> &mut Guest {
        &mut self.guest
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn vgpud_activation_with_crosvm_default_queue_size() {
    let mut vm = Vm::boot(&[]);
    assert_eq!(
        vm.dev.queue_max_sizes(),
        &[32768, 32768],
        "crosvm's default queue size"
    );
    assert!(vm.mapper.is_none(), "no window without --hostmem");
    vm.activate();

    let resp = ctrl(
        vm.ctrl(),
        "GET_DISPLAY_INFO",
        hdr(CMD_GET_DISPLAY_INFO),
        408,
    );
    assert_eq!(resp_type(&resp), RESP_OK_DISPLAY_INFO);
    assert_eq!(resp.len(), 408);
    let word = |o: usize| u32::from_le_bytes(resp[o..o + 4].try_into().unwrap());
    // pmodes[0]: rect {x, y, width, height}, enabled, flags
    let (w, h, enabled) = (word(24 + 8), word(24 + 12), word(24 + 16));
    println!("  guest | scanout 0: {w}x{h} enabled={enabled}");
    assert_eq!(enabled, 1);
    assert!(w > 0 && h > 0);

    assert_eq!(create_2d(vm.ctrl(), 1), RESP_OK_NODATA);
    assert_eq!(
        create_2d(vm.ctrl(), 1),
        RESP_ERR_INVALID_RESOURCE_ID,
        "id 1 is taken"
    );
    assert_eq!(unref(vm.ctrl(), 1), RESP_OK_NODATA);
    assert_eq!(
        create_2d(vm.ctrl(), 1),
        RESP_OK_NODATA,
        "id 1 is free again"
    );
    vm.assert_no_crash();
    assert!(vm.vgpud.logged("event=connect"));
    vm.vgpud.print_events();
}

#[test]
fn vgpud_blob_map_through_crosvm_backend_channel() {
    let mut vm = Vm::boot(&["--hostmem", "1M"]);
    assert_ne!(vm.acked & F_RESOURCE_BLOB, 0, "RESOURCE_BLOB offered");
    let mapper = vm
        .mapper
        .clone()
        .expect("crosvm got a shared memory region");
    assert_eq!(
        vm.shm_id,
        Some(SHM_ID_HOST_VISIBLE),
        "the host-visible region"
    );
    vm.activate();

    const LEN: u64 = 2 * PAGE;
    let bytes = pattern(LEN as usize, 7);
    vm.guest.write(BLOB_GPA, &bytes);
    assert_eq!(
        create_guest_blob(vm.ctrl(), 10, BLOB_GPA, LEN),
        RESP_OK_NODATA
    );
    let (ty, info) = map_blob(vm.ctrl(), 10, 0x10000);
    assert_eq!(ty, RESP_OK_MAP_INFO);
    assert_eq!(info & 0xf, MAP_CACHE_CACHED);
    // MAP_BLOB is answered after crosvm's handler acked SHMEM_MAP (REPLY_ACK).
    assert_eq!(mapper.mappings(), vec![(0x10000, LEN)]);
    assert_eq!(
        mapper.read(0x10000, LEN as usize),
        bytes,
        "the window shows the guest's bytes"
    );
    println!("  guest | read {LEN} bytes through the window: they are the blob's");
    // No copy: a write through the window is in the guest's pages.
    mapper.write(0x10000 + PAGE, b"written through crosvm's mapping");
    assert_eq!(
        vm.guest.read(BLOB_GPA + PAGE, 32),
        b"written through crosvm's mapping".to_vec()
    );

    assert_eq!(unmap_blob(vm.ctrl(), 10), RESP_OK_NODATA);
    assert!(
        mapper.mappings().is_empty(),
        "UNMAP_BLOB unmapped it in crosvm"
    );
    // Again elsewhere, then UNREF of a mapped blob unmaps it first.
    assert_eq!(map_blob(vm.ctrl(), 10, 0).0, RESP_OK_MAP_INFO);
    assert_eq!(mapper.read(0, 4), bytes[..4].to_vec());
    assert_eq!(unref(vm.ctrl(), 10), RESP_OK_NODATA);
    assert!(mapper.mappings().is_empty(), "UNREF unmapped it in crosvm");
    assert_eq!(
        mapper
            .log()
            .iter()
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect::<Vec<_>>(),
        vec!["map", "unmap", "map", "unmap"]
    );
    vm.assert_no_crash();
    vm.vgpud.print_events();
}

#[test]
fn vgpud_reset_then_reactivation_starts_over() {
    let mut vm = Vm::boot(&["--hostmem", "1M"]);
    let mapper = vm.mapper.clone().expect("window");
    vm.activate();
    assert_eq!(create_2d(vm.ctrl(), 1), RESP_OK_NODATA);
    vm.guest.write(BLOB_GPA, &pattern(PAGE as usize, 1));
    assert_eq!(
        create_guest_blob(vm.ctrl(), 2, BLOB_GPA, PAGE),
        RESP_OK_NODATA
    );
    assert_eq!(map_blob(vm.ctrl(), 2, 0).0, RESP_OK_MAP_INFO);

    // The driver resets the device: crosvm's reset (ENABLE(0) + GET_VRING_BASE per queue, the
    // worker stopped), then the PCI transport resets its queue configs.
    vm.dev.reset().expect("VhostUserFrontend::reset");
    println!("  crosvm| reset()");
    // crosvm keeps the window's mappings across a reset (TODO in its reset()).
    assert_eq!(mapper.mappings(), vec![(0, PAGE)]);
    // The driver starts over: fresh rings, a new interrupt, activation.
    let sizes = vm.dev.queue_max_sizes().to_vec();
    vm.guest.fresh_rings(&sizes);
    vm.interrupt = Interrupt::new_for_test_with_msix();
    vm.activate();
    assert_eq!(
        create_2d(vm.ctrl(), 1),
        RESP_OK_NODATA,
        "the reset dropped resource 1"
    );
    // The same place in the window again: the mapper refuses overlaps (as KVM would), so this
    // works only if vgpud unmapped what crosvm kept.
    vm.guest.write(BLOB_GPA, &pattern(PAGE as usize, 2));
    assert_eq!(
        create_guest_blob(vm.ctrl(), 2, BLOB_GPA, PAGE),
        RESP_OK_NODATA
    );
    assert_eq!(map_blob(vm.ctrl(), 2, 0).0, RESP_OK_MAP_INFO);
    assert_eq!(mapper.mappings(), vec![(0, PAGE)]);
    assert_eq!(mapper.read(0, 8), pattern(8, 2));
    assert!(vm.vgpud.logged("event=reset by=fresh rings after a stop"));
    vm.assert_no_crash();
    vm.vgpud.print_events();
}

#[test]
fn vgpud_sleep_wake_keeps_the_device() {
    let mut vm = Vm::boot(&["--hostmem", "1M"]);
    let mapper = vm.mapper.clone().expect("window");
    vm.activate();
    assert_eq!(create_2d(vm.ctrl(), 1), RESP_OK_NODATA);
    vm.guest.write(BLOB_GPA, &pattern(PAGE as usize, 3));
    assert_eq!(
        create_guest_blob(vm.ctrl(), 2, BLOB_GPA, PAGE),
        RESP_OK_NODATA
    );
    assert_eq!(map_blob(vm.ctrl(), 2, 0x4000).0, RESP_OK_MAP_INFO);
    let sent = vm.guest.rings[0].next_avail;

    let queues = vm
        .dev
        .virtio_sleep()
        .expect("virtio_sleep")
        .expect("active queues");
    println!("  crosvm| virtio_sleep() -> {} queues", queues.len());
    assert_eq!(queues.len(), 2);
    // crosvm reclaimed the queues at the base vgpud gave on GET_VRING_BASE.
    assert_eq!(
        queues[&0].next_avail_to_process(),
        sent,
        "control queue base"
    );
    assert_eq!(queues[&1].next_avail_to_process(), 0, "cursor queue base");
    std::thread::sleep(Duration::from_millis(200));
    vm.guest.wake(&mut vm.dev, &vm.interrupt, queues);
    println!("  crosvm| virtio_wake()");

    assert_eq!(
        create_2d(vm.ctrl(), 1),
        RESP_ERR_INVALID_RESOURCE_ID,
        "resource 1 is still there after the wake"
    );
    assert_eq!(
        mapper.mappings(),
        vec![(0x4000, PAGE)],
        "the blob stays mapped"
    );
    assert_eq!(mapper.read(0x4000, 8), pattern(8, 3));
    assert_eq!(
        unmap_blob(vm.ctrl(), 2),
        RESP_OK_NODATA,
        "blob 2 is still mapped in vgpud"
    );
    assert!(mapper.mappings().is_empty());
    assert!(vm.vgpud.logged("event=wake state kept"));
    assert!(
        !vm.vgpud.log_text().contains("event=reset"),
        "a wake is no reset"
    );
    vm.assert_no_crash();
    vm.vgpud.print_events();
}

// Negative controls: the no-crash check above can fail. crosvm reports a backend that went
// away, and a backend request its mapper refused, as a crashed device.

#[test]
fn vgpud_control_backend_death_is_reported_as_a_crash() {
    let mut vm = Vm::boot(&[]);
    vm.activate();
    assert_eq!(create_2d(vm.ctrl(), 1), RESP_OK_NODATA);
    vm.vgpud.child.kill().unwrap();
    let _ = vm.vgpud.child.wait();
    println!("  test  | killed vgpud");
    let ev = vm.vm_event(Duration::from_secs(5));
    println!("  crosvm| VM event: {ev:?}");
    assert!(matches!(ev, Some(VmEventType::DeviceCrashed)), "got {ev:?}");
}

#[test]
fn vgpud_control_refused_map_is_reported_as_a_crash() {
    let mut vm = Vm::boot(&["--hostmem", "1M"]);
    let mapper = vm.mapper.clone().expect("window");
    vm.activate();
    vm.guest.write(BLOB_GPA, &pattern(PAGE as usize, 4));
    assert_eq!(
        create_guest_blob(vm.ctrl(), 2, BLOB_GPA, PAGE),
        RESP_OK_NODATA
    );
    mapper.0.lock().unwrap().refuse = true;
    let mut req = u32s(hdr(CMD_RESOURCE_MAP_BLOB), &[2, 0]);
    req.extend_from_slice(&0u64.to_le_bytes());
    let answer = vm.guest.try_call(0, &req, 32, Duration::from_secs(5));
    println!(
        "  guest | RESOURCE_MAP_BLOB id=2 offset=0 -> {}",
        answer
            .as_deref()
            .map_or("no answer".to_string(), |r| format!(
                "{} ({:#x})",
                name(resp_type(r)),
                resp_type(r)
            ))
    );
    if let Some(r) = &answer {
        assert_ne!(
            resp_type(r),
            RESP_OK_MAP_INFO,
            "a refused map must not be answered OK"
        );
    }
    let ev = vm.vm_event(Duration::from_secs(5));
    println!("  crosvm| VM event: {ev:?}");
    assert!(matches!(ev, Some(VmEventType::DeviceCrashed)), "got {ev:?}");
    vm.vgpud.print_events();
}
