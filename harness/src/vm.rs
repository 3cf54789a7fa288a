//! `Vm`: one vhost-user frontend connection, brought up the way QEMU does it, with guest
//! memory and driver-side virtqueues.

use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, FrontendReqHandler, VhostUserFrontend};
use vhost::{VhostBackend, VringConfigData};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::display::DisplayPeer;
use crate::memory::GuestMem;
use crate::shmem::{BackendChannel, ShmemPeer, TableModel};
use crate::util::{err, poll_until, Polled};
use crate::vring::{Desc, Vring, DESC_F_NEXT, DESC_F_WRITE, SLOT_BYTES};

const MIB: u64 = 1 << 20;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Dirty logging switch; QEMU only sets it while migrating (with SET_LOG_BASE), never here.
const VHOST_F_LOG_ALL: u64 = 1 << 26;
const GPU_SET_SOCKET: u32 = 33;
/// Requests larger than a slot buffer share this arena.
const BIG_ARENA_MAX: u64 = 8 * MIB;

#[derive(Clone, Debug)]
pub struct VmConfig {
    /// (guest physical address, size) of each memory region.
    pub regions: Vec<(u64, u64)>,
    pub queue_size: u16,
    /// Some(modes): act as QEMU's display (GPU_SET_SOCKET) with these scanout sizes.
    pub display: Option<Vec<(u32, u32)>>,
    /// Acked device features = offered & mask (VHOST_F_LOG_ALL is never acked).
    pub feature_mask: u64,
    /// Limit for every wait on the backend.
    pub timeout: Duration,
    /// Some(gpa): act as QEMU does with window mappings: negotiate CONFIGURE_MEM_SLOTS, send RAM
    /// one region at a time and add each mapping to the memory table at gpa + its offset (see
    /// `shmem::TableModel`).
    pub window_gpa: Option<u64>,
    /// Drive the device as crosvm's vhost-user frontend does (see `VmConfig::crosvm`).
    pub crosvm: bool,
}

impl VmConfig {
    /// crosvm's frontend (devices/src/virtio/vhost_user_frontend/mod.rs, third_party/vmm_vhost):
    /// protocol features CONFIG, MQ, BACKEND_REQ, SHMEM and REPLY_ACK only (REPLY_ACK so that
    /// the backend may ask for answers; the frontend never sets NEED_REPLY); SET_BACKEND_REQ_FD
    /// before GET_QUEUE_NUM; GET_SHMEM_CONFIG and config reads before SET_FEATURES; no display
    /// socket; rings of 32768 entries (devices/src/virtio/queue.rs). Its backend channel counts
    /// every refused request, and every request while the device is stopped, as a crash of the
    /// VM (vhost_user_frontend/worker.rs ends with DeviceCrashed; the channel is served only
    /// while the device is active). Reset and sleep: `Vm::stop_queues`, `Vm::restart_queues`.
    pub fn crosvm() -> VmConfig {
        VmConfig {
            // The harness gives every two entries a 16 KiB buffer: 256 MiB per queue.
            regions: vec![(0, 768 * MIB), (0x1_0000_0000, 64 * MIB)],
            queue_size: 32768,
            crosvm: true,
            // Its tests stop and re-activate devices with 768 MiB of memory: room for a loaded
            // machine.
            timeout: Duration::from_secs(20),
            ..VmConfig::default()
        }
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            regions: vec![(0, 64 * MIB), (0x1_0000_0000, 64 * MIB)],
            queue_size: 256,
            display: None,
            feature_mask: !0,
            timeout: Duration::from_secs(5),
            window_gpa: None,
            crosvm: false,
        }
    }
}

/// A posted request; redeem it with `Vm::wait`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token {
    queue: usize,
    slot: u16,
    gen: u32,
}

impl Token {
    pub fn queue(&self) -> usize {
        self.queue
    }
}

/// Shared arena for requests that do not fit a slot buffer; reset whenever it is empty.
struct BigArena {
    base: u64,
    size: u64,
    next: u64,
    live: usize,
}

impl BigArena {
    fn alloc(&mut self, len: u64) -> Option<u64> {
        if self.live == 0 {
            self.next = 0;
        }
        let at = (self.next + 15) & !15;
        if at + len > self.size {
            return None;
        }
        self.next = at + len;
        self.live += 1;
        Some(self.base + at)
    }

    fn release(&mut self, n: usize) {
        self.live -= n;
    }
}

/// A thread serving a socket; shutting the socket down makes it return.
struct Service {
    sock: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct Vm {
    fe: Frontend,
    /// Our own handle on the frontend socket: raw messages, hang-up polling, shutdown.
    main: UnixStream,
    watchdog: crate::watchdog::Watchdog,
    timeout: Duration,
    reply_ack: bool,
    mem: GuestMem,
    queues: Vec<Vring>,
    big: BigArena,
    offered: u64,
    acked: u64,
    protocol: u64,
    queue_num: usize,
    channel: Arc<BackendChannel>,
    channel_errors: Arc<Mutex<Vec<String>>>,
    display: Option<Arc<DisplayPeer>>,
    /// Set while a batch is being posted: one kick at the end.
    defer_kick: bool,
    // Dropped after `main` is shut down (see Drop).
    _services: Vec<Service>,
}

fn connect_socket(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("connecting to {path:?}: {e}"),
                ))
            }
        }
    }
}

/// Duplicates `fd` into a UnixStream handle (for shutdown from another owner).
fn dup_stream(fd: RawFd) -> io::Result<UnixStream> {
    // SAFETY: the caller passes an fd owned by a live object for the duration of this call.
    let owned = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
    Ok(UnixStream::from(owned))
}

/// GPU_SET_SOCKET has no method on `Frontend`: a bare header with the fd attached.
fn send_gpu_set_socket(main: &UnixStream, fd: RawFd, need_reply: bool) -> io::Result<()> {
    let mut flags = 0x1;
    if need_reply {
        flags |= VhostUserHeaderFlag::NEED_REPLY.bits();
    }
    let mut hdr = [0u8; 12];
    hdr[0..4].copy_from_slice(&GPU_SET_SOCKET.to_le_bytes());
    hdr[4..8].copy_from_slice(&flags.to_le_bytes());
    let n = main.send_with_fd(&hdr[..], fd).map_err(io::Error::from)?;
    if n != hdr.len() {
        return Err(err(
            io::ErrorKind::WriteZero,
            "short write of GPU_SET_SOCKET",
        ));
    }
    if need_reply {
        let mut r = [0u8; 20];
        (&*main).read_exact(&mut r)?;
        let req = u32::from_le_bytes(r[0..4].try_into().unwrap());
        let rflags = u32::from_le_bytes(r[4..8].try_into().unwrap());
        let size = u32::from_le_bytes(r[8..12].try_into().unwrap());
        let value = u64::from_le_bytes(r[12..20].try_into().unwrap());
        if req != GPU_SET_SOCKET || rflags & VhostUserHeaderFlag::REPLY.bits() == 0 || size != 8 {
            return Err(err(
                io::ErrorKind::InvalidData,
                format!("bad ack: request {req} flags {rflags:#x} size {size}"),
            ));
        }
        if value != 0 {
            return Err(err(
                io::ErrorKind::Other,
                format!("backend nacked with {value:#x}"),
            ));
        }
    }
    Ok(())
}

fn serve_backend_channel(
    mut h: FrontendReqHandler<BackendChannel>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    use vhost::vhost_user::Error as E;
    loop {
        match h.handle_request() {
            Ok(_) => {}
            Err(E::Disconnected | E::PartialMessage | E::SocketBroken(_) | E::SocketError(_)) => {
                return
            }
            // Our handler said no; the backend got the error code as its ack.
            Err(E::ReqHandlerError(_)) => {}
            Err(e) => errors.lock().unwrap().push(e.to_string()),
        }
    }
}

impl Vm {
    /// Full vhost-user bring-up as QEMU does it; see the crate docs for the sequence.
    pub fn connect(socket: &Path, cfg: VmConfig) -> io::Result<Vm> {
        let stream = connect_socket(socket, cfg.timeout)?;
        Vm::over(stream, cfg)
    }

    /// As `connect`, over a socket already connected to the backend (as libvirt hands one end
    /// of a socketpair to the backend and the other to QEMU).
    pub fn over(stream: UnixStream, cfg: VmConfig) -> io::Result<Vm> {
        let t = cfg.timeout;
        let main = stream.try_clone()?;
        let watchdog = crate::watchdog::Watchdog::new(stream.try_clone()?)?;
        let mut mem = GuestMem::new(&cfg.regions)?;
        let mut fe = Frontend::from_stream(stream, 2);
        let mut services = Vec::new();

        watchdog.run(t, "SET_OWNER", || fe.set_owner())?;
        let offered = watchdog.run(t, "GET_FEATURES", || fe.get_features())?;
        let mut proto = VhostUserProtocolFeatures::empty();
        if offered & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let have = watchdog.run(t, "GET_PROTOCOL_FEATURES", || fe.get_protocol_features())?;
            let mut want = VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::BACKEND_REQ
                | VhostUserProtocolFeatures::BACKEND_SEND_FD
                | VhostUserProtocolFeatures::SHMEM;
            if cfg.crosvm {
                want.remove(VhostUserProtocolFeatures::BACKEND_SEND_FD);
            }
            let slots = if cfg.window_gpa.is_some() {
                VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            } else {
                VhostUserProtocolFeatures::empty()
            };
            proto = have & (want | slots);
            watchdog.run(t, "SET_PROTOCOL_FEATURES", || {
                fe.set_protocol_features(proto)
            })?;
        }
        let backend_may_ask = proto.contains(VhostUserProtocolFeatures::REPLY_ACK);
        let reply_ack = backend_may_ask && !cfg.crosvm;
        // NEED_REPLY only on messages without a reply of their own, as QEMU does.
        let ack = |fe: &Frontend, on: bool| {
            fe.set_hdr_flags(if on && reply_ack {
                VhostUserHeaderFlag::NEED_REPLY
            } else {
                VhostUserHeaderFlag::empty()
            })
        };

        let get_queue_num = |fe: &mut Frontend| -> io::Result<usize> {
            if !proto.contains(VhostUserProtocolFeatures::MQ) {
                return Ok(2);
            }
            Ok(watchdog.run(t, "GET_QUEUE_NUM", || fe.get_queue_num())? as usize)
        };
        let mut queue_num = if cfg.crosvm {
            0
        } else {
            get_queue_num(&mut fe)?
        };

        let slots = proto.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
        let table = match cfg.window_gpa {
            Some(gpa) if slots => {
                let max = watchdog.run(t, "GET_MAX_MEM_SLOTS", || fe.get_max_mem_slots())?;
                let ram = mem.num_regions() as u64;
                Some(TableModel::new(fe.clone(), gpa, max, ram))
            }
            _ => None,
        };
        let channel = Arc::new(BackendChannel {
            shmem: Arc::new(ShmemPeer::default()),
            config_changes: AtomicU64::new(0),
            table,
            active: AtomicBool::new(true),
            refusals: Mutex::new(Vec::new()),
        });
        let channel_errors = Arc::new(Mutex::new(Vec::new()));
        if proto.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
            let mut h = FrontendReqHandler::new(channel.clone())
                .map_err(|e| io::Error::other(format!("backend channel: {e}")))?;
            h.set_reply_ack_flag(backend_may_ask);
            let tx = h.get_tx_raw_fd();
            ack(&fe, true);
            watchdog.run(t, "SET_BACKEND_REQ_FD", || fe.set_backend_request_fd(&tx))?;
            let sock = dup_stream(h.as_raw_fd())?;
            let errors = channel_errors.clone();
            let thread = std::thread::Builder::new()
                .name("vu-backend-req".into())
                .spawn(move || serve_backend_channel(h, errors))?;
            services.push(Service {
                sock,
                thread: Some(thread),
            });
        }

        if cfg.crosvm {
            queue_num = get_queue_num(&mut fe)?;
            if proto.contains(VhostUserProtocolFeatures::SHMEM) {
                let c = watchdog.run(t, "GET_SHMEM_CONFIG", || fe.get_shmem_config())?;
                let n = (c.nregions as usize).min(c.memory_sizes.len());
                channel.shmem.set_region_sizes(c.memory_sizes[..n].to_vec());
            }
            // A guest reads the config (num_scanouts first) before the device is activated.
            let buf = [0u8; 4];
            watchdog.run(t, "GET_CONFIG", || {
                fe.get_config(8, 4, VhostUserConfigFlags::WRITABLE, &buf)
            })?;
        }

        let mut display = None;
        if let Some(modes) = &cfg.display {
            let (ours, theirs) = UnixStream::pair()?;
            let peer = Arc::new(DisplayPeer::new(modes.clone()));
            let sock = ours.try_clone()?;
            let p = peer.clone();
            let thread = std::thread::Builder::new()
                .name("vu-gpu-display".into())
                .spawn(move || p.serve(ours))?;
            services.push(Service {
                sock,
                thread: Some(thread),
            });
            watchdog.run_io(t, "GPU_SET_SOCKET", || {
                send_gpu_set_socket(&main, theirs.as_raw_fd(), reply_ack)
            })?;
            display = Some(peer);
        }

        let acked = offered & cfg.feature_mask & !VHOST_F_LOG_ALL;
        ack(&fe, true);
        watchdog.run(t, "SET_FEATURES", || fe.set_features(acked))?;
        let regions = mem.region_infos()?;
        if slots {
            for r in &regions {
                watchdog.run(t, "ADD_MEM_REG", || fe.add_mem_region(r).map(drop))?;
            }
        } else {
            watchdog.run(t, "SET_MEM_TABLE", || fe.set_mem_table(&regions))?;
        }
        if proto.contains(VhostUserProtocolFeatures::SHMEM) && !cfg.crosvm {
            ack(&fe, false);
            let c = watchdog.run(t, "GET_SHMEM_CONFIG", || fe.get_shmem_config())?;
            let n = (c.nregions as usize).min(c.memory_sizes.len());
            channel.shmem.set_region_sizes(c.memory_sizes[..n].to_vec());
            ack(&fe, true);
        }

        let event_idx = acked & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(queue_num);
        for q in 0..queue_num {
            let need = Vring::reserved_bytes(cfg.queue_size);
            let base = mem.try_alloc_in(0, need, 4096).ok_or_else(|| {
                err(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "region 0 too small for {queue_num} queues of {}",
                        cfg.queue_size
                    ),
                )
            })?;
            let vr = Vring::new(cfg.queue_size, base, event_idx)?;
            let vc = vr.config(&mem);
            watchdog.run(t, "SET_VRING_NUM", || fe.set_vring_num(q, cfg.queue_size))?;
            watchdog.run(t, "SET_VRING_ADDR", || fe.set_vring_addr(q, &vc))?;
            watchdog.run(t, "SET_VRING_BASE", || fe.set_vring_base(q, 0))?;
            watchdog.run(t, "SET_VRING_CALL", || fe.set_vring_call(q, &vr.call))?;
            watchdog.run(t, "SET_VRING_KICK", || fe.set_vring_kick(q, &vr.kick))?;
            if acked & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
                watchdog.run(t, "SET_VRING_ENABLE", || fe.set_vring_enable(q, true))?;
            }
            queues.push(vr);
        }

        let size = BIG_ARENA_MAX.min(mem.free_in(0) / 2) & !4095;
        let base = mem.try_alloc_in(0, size, 4096).unwrap_or(0);
        ack(&fe, false);

        Ok(Vm {
            fe,
            main,
            watchdog,
            timeout: t,
            reply_ack,
            mem,
            queues,
            big: BigArena {
                base,
                size,
                next: 0,
                live: 0,
            },
            offered,
            acked,
            protocol: proto.bits(),
            queue_num,
            channel,
            channel_errors,
            display,
            defer_kick: false,
            _services: services,
        })
    }

    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// Negotiated vhost-user protocol features.
    pub fn protocol_features(&self) -> u64 {
        self.protocol
    }

    pub fn queue_num(&self) -> usize {
        self.queue_num
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the limit for later waits (control messages and `wait`).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Control queue round trip with a 5 KiB response buffer (EDID needs 1056 bytes).
    pub fn request(&mut self, req: &[u8]) -> io::Result<Vec<u8>> {
        self.request_cap(req, 4096 + 1024)
    }

    /// Control queue round trip: [readable req][writable resp_cap]; returns the bytes written.
    pub fn request_cap(&mut self, req: &[u8], resp_cap: u32) -> io::Result<Vec<u8>> {
        let tok = self.post(0, req, resp_cap)?;
        self.wait(tok)
    }

    /// Places a chain (readable `req`, then `resp_cap` writable bytes if non-zero) and kicks,
    /// without waiting.
    pub fn post(&mut self, queue: usize, req: &[u8], resp_cap: u32) -> io::Result<Token> {
        if req.is_empty() && resp_cap == 0 {
            return Err(err(
                io::ErrorKind::InvalidInput,
                "empty request and no response buffer",
            ));
        }
        let Some(q) = self.queues.get_mut(queue) else {
            return Err(err(
                io::ErrorKind::InvalidInput,
                format!("no queue {queue}"),
            ));
        };
        let s = q.alloc_slot().ok_or_else(|| {
            err(
                io::ErrorKind::WouldBlock,
                format!("queue {queue}: all descriptors in flight"),
            )
        })?;
        let req_len = req.len() as u64;
        let resp_off = (req_len + 15) & !15;
        let total = resp_off + resp_cap as u64;
        let (base, big) = if total <= SLOT_BYTES {
            (q.slot_buf(s), false)
        } else if let Some(a) = self.big.alloc(total) {
            (a, true)
        } else {
            q.free_slot(s);
            return Err(err(
                io::ErrorKind::OutOfMemory,
                format!("request + response of {total} bytes do not fit the harness arena"),
            ));
        };
        let (req_gpa, resp_gpa) = (base, base + resp_off);
        self.mem.write(req_gpa, req);
        let head = 2 * s;
        let resp = Desc {
            addr: resp_gpa,
            len: resp_cap,
            flags: DESC_F_WRITE,
            next: 0,
        };
        if req.is_empty() {
            q.write_desc(&self.mem, head, resp);
        } else {
            let flags = if resp_cap > 0 { DESC_F_NEXT } else { 0 };
            let d = Desc {
                addr: req_gpa,
                len: req_len as u32,
                flags,
                next: head + 1,
            };
            q.write_desc(&self.mem, head, d);
            if resp_cap > 0 {
                q.write_desc(&self.mem, head + 1, resp);
            }
        }
        let slot = &mut q.slots[s as usize];
        slot.resp = resp_gpa;
        slot.cap = resp_cap;
        slot.big = big;
        let gen = slot.gen;
        q.publish(&self.mem, head);
        if !self.defer_kick {
            q.kick()?;
        }
        Ok(Token {
            queue,
            slot: s,
            gen,
        })
    }

    fn check_token(&self, tok: Token) -> io::Result<()> {
        let valid = self
            .queues
            .get(tok.queue)
            .and_then(|q| q.slots.get(tok.slot as usize))
            .is_some_and(|s| s.busy && !s.abandoned && s.gen == tok.gen);
        if valid {
            Ok(())
        } else {
            Err(err(
                io::ErrorKind::InvalidInput,
                format!("stale or foreign token {tok:?}"),
            ))
        }
    }

    fn drain(&mut self, queue: usize) -> io::Result<()> {
        let released = self.queues[queue].drain(&self.mem)?;
        self.big.release(released);
        Ok(())
    }

    /// Drains `queue` until `found` returns Some, sleeping on the call eventfd in between.
    /// Ok(None) when `deadline` passes; Err if the backend hangs up or corrupts the ring.
    fn wait_for<T>(
        &mut self,
        queue: usize,
        deadline: Instant,
        mut found: impl FnMut(&mut Vring) -> Option<T>,
    ) -> io::Result<Option<T>> {
        let mut slept = false;
        loop {
            self.drain(queue)?;
            if let Some(v) = found(&mut self.queues[queue]) {
                return Ok(Some(v));
            }
            if slept && Instant::now() >= deadline {
                return Ok(None);
            }
            // With EVENT_IDX the backend only notifies past used_event: publish it, then look
            // again so an element that landed just before is not slept through.
            self.queues[queue].arm(&self.mem);
            self.drain(queue)?;
            if let Some(v) = found(&mut self.queues[queue]) {
                return Ok(Some(v));
            }
            let call = self.queues[queue].call.as_raw_fd();
            match poll_until(call, Some(self.main.as_raw_fd()), deadline)? {
                Polled::Ready => {
                    let _ = self.queues[queue].call.read(); // non-blocking reset
                }
                Polled::TimedOut => {}
                Polled::Hangup => {
                    self.drain(queue)?;
                    return match found(&mut self.queues[queue]) {
                        Some(v) => Ok(Some(v)),
                        None => Err(err(
                            io::ErrorKind::ConnectionAborted,
                            "the vhost-user connection closed while waiting for a used element",
                        )),
                    };
                }
            }
            slept = true;
        }
    }

    /// Waits for the token's used element; returns its used.len.
    fn wait_used(&mut self, tok: Token, deadline: Instant) -> io::Result<u32> {
        let slot = tok.slot as usize;
        match self.wait_for(tok.queue, deadline, |q| q.slots[slot].done)? {
            Some(len) => Ok(len),
            None => Err(err(
                io::ErrorKind::TimedOut,
                format!(
                    "no used element on queue {} within {:?}",
                    tok.queue, self.timeout
                ),
            )),
        }
    }

    /// The response of a posted request (used elements may come in any order).
    pub fn wait(&mut self, tok: Token) -> io::Result<Vec<u8>> {
        self.check_token(tok)?;
        let deadline = Instant::now() + self.timeout;
        let len = match self.wait_used(tok, deadline) {
            Ok(len) => len,
            Err(e) => {
                // The backend may still return it later; free the slot then.
                self.queues[tok.queue].slots[tok.slot as usize].abandoned = true;
                return Err(e);
            }
        };
        let q = &mut self.queues[tok.queue];
        let slot = &q.slots[tok.slot as usize];
        let (resp, cap, big) = (slot.resp, slot.cap, slot.big);
        q.free_slot(tok.slot);
        if big {
            self.big.release(1);
        }
        if len > cap {
            return Err(err(
                io::ErrorKind::InvalidData,
                format!("used.len {len} exceeds the {cap}-byte writable buffer"),
            ));
        }
        let mut out = vec![0u8; len as usize];
        self.mem.read_into(resp, &mut out);
        Ok(out)
    }

    /// Non-blocking: is this token's used element already there?
    pub fn is_done(&mut self, tok: Token) -> io::Result<bool> {
        self.check_token(tok)?;
        self.drain(tok.queue)?;
        Ok(self.queues[tok.queue].slots[tok.slot as usize]
            .done
            .is_some())
    }

    /// Cursor queue (1): a readable-only chain; waits until it is used.
    pub fn cursor(&mut self, req: &[u8]) -> io::Result<()> {
        let tok = self.post(1, req, 0)?;
        self.wait(tok).map(|_| ())
    }

    /// Raw: writes `descs` at descriptor slots `first..`, publishes `head`, kicks and waits up
    /// to `timeout` for a used element with id == `head` (Ok(None) if none came).
    ///
    /// Meant for hostile tests. Do not mix with outstanding tokens on the same queue: raw
    /// descriptors overwrite the harness's, and head ids may collide with its slots.
    pub fn submit_raw(
        &mut self,
        queue: usize,
        descs: &[Desc],
        first: u16,
        head: u16,
        timeout: Duration,
    ) -> io::Result<Option<u32>> {
        let Some(q) = self.queues.get(queue) else {
            return Err(err(
                io::ErrorKind::InvalidInput,
                format!("no queue {queue}"),
            ));
        };
        if first as usize + descs.len() > q.size() as usize {
            return Err(err(
                io::ErrorKind::InvalidInput,
                "descriptors run past the table",
            ));
        }
        self.drain(queue)?;
        let q = &mut self.queues[queue];
        q.stray.clear();
        for (i, d) in descs.iter().enumerate() {
            q.write_desc(&self.mem, first + i as u16, *d);
        }
        q.publish(&self.mem, head);
        q.kick()?;
        let deadline = Instant::now() + timeout;
        let head = head as u32;
        self.wait_for(queue, deadline, |q| {
            let i = q.stray.iter().position(|&(id, _)| id == head)?;
            Some(q.stray.remove(i).1)
        })
    }

    /// Posts `reqs` (each answered into `resp_cap` bytes) as one batch behind a single kick, with a
    /// raw avail entry naming descriptor `bad_head` after the first request. Meant for hostile
    /// tests: the batch's good requests must all be answered whatever the bad entry is.
    pub fn post_batch_with_bad_head(
        &mut self,
        reqs: &[&[u8]],
        resp_cap: u32,
        bad_head: u16,
    ) -> io::Result<Vec<Token>> {
        self.defer_kick = true;
        let mut tokens = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            match self.post(0, req, resp_cap) {
                Ok(t) => tokens.push(t),
                Err(e) => {
                    self.defer_kick = false;
                    return Err(e);
                }
            }
            if i == 0 {
                self.queues[0].publish(&self.mem, bad_head);
            }
        }
        self.defer_kick = false;
        self.queues[0].kick()?;
        Ok(tokens)
    }

    /// Hostile: publishes an avail index `ahead` entries past the real one and kicks.
    pub fn corrupt_avail_idx(&mut self, queue: usize, ahead: u16) -> io::Result<()> {
        let q = self
            .queues
            .get_mut(queue)
            .ok_or_else(|| err(io::ErrorKind::InvalidInput, format!("no queue {queue}")))?;
        q.bump_avail_idx(&self.mem, ahead);
        q.kick()
    }

    /// Hostile VMM: sends a memory table whose first region claims `extra` bytes more than its
    /// file holds, then moves queue 0's rings into that phantom part.
    pub fn send_oversized_mem_table(&mut self, extra: u64) -> io::Result<()> {
        let mut regions = self.mem.region_infos()?;
        let first = regions
            .first_mut()
            .ok_or_else(|| err(io::ErrorKind::InvalidInput, "no memory regions"))?;
        let end_va = first.userspace_addr + first.memory_size;
        first.memory_size += extra;
        self.set_ack(true);
        let fe = &mut self.fe;
        let t = self.timeout;
        let sent = self
            .watchdog
            .run(t, "SET_MEM_TABLE", || fe.set_mem_table(&regions));
        self.set_ack(false);
        sent?;
        let size = self.queues[0].size();
        let rings = VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: end_va + 4096,
            used_ring_addr: end_va + 3 * 4096,
            avail_ring_addr: end_va + 2 * 4096,
            log_addr: None,
        };
        let fe = &mut self.fe;
        self.watchdog
            .run(t, "SET_VRING_ADDR", || fe.set_vring_addr(0, &rings))
    }

    /// Used elements that matched no outstanding request, (id, len), and forgets them.
    pub fn take_stray_used(&mut self, queue: usize) -> io::Result<Vec<(u32, u32)>> {
        self.drain(queue)?;
        Ok(std::mem::take(&mut self.queues[queue].stray))
    }

    /// Bump-allocates guest memory in any region with room (after the harness's own area).
    pub fn alloc(&mut self, size: u64, align: u64) -> u64 {
        (0..self.mem.num_regions())
            .find_map(|r| self.mem.try_alloc_in(r, size, align))
            .unwrap_or_else(|| panic!("guest memory exhausted allocating {size} bytes"))
    }

    pub fn alloc_in(&mut self, region: usize, size: u64, align: u64) -> u64 {
        self.mem
            .try_alloc_in(region, size, align)
            .unwrap_or_else(|| panic!("region {region} exhausted allocating {size} bytes"))
    }

    /// Kicks `queue` without touching guest memory (for when the rings' memory is gone).
    pub fn kick(&self, queue: usize) -> io::Result<()> {
        self.queues
            .get(queue)
            .ok_or_else(|| err(io::ErrorKind::InvalidInput, format!("no queue {queue}")))?
            .kick()
    }

    /// Hostile VMM: shrinks the file behind memory region `region` to `len` bytes (see
    /// `GuestMem::shrink_region`); the daemon's next access past that faults.
    pub fn shrink_region(&self, region: usize, len: u64) -> io::Result<()> {
        self.mem.shrink_region(region, len)
    }

    pub fn write_mem(&self, gpa: u64, data: &[u8]) {
        self.mem.write(gpa, data);
    }

    pub fn read_mem(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_into(gpa, &mut out);
        out
    }

    fn set_ack(&self, on: bool) {
        self.fe.set_hdr_flags(if on && self.reply_ack {
            VhostUserHeaderFlag::NEED_REPLY
        } else {
            VhostUserHeaderFlag::empty()
        });
    }

    pub fn get_config(&mut self, offset: u32, len: u32) -> io::Result<Vec<u8>> {
        self.set_ack(false);
        let buf = vec![0u8; len as usize];
        let fe = &mut self.fe;
        let (_, payload) = self.watchdog.run(self.timeout, "GET_CONFIG", || {
            fe.get_config(offset, len, VhostUserConfigFlags::empty(), &buf)
        })?;
        Ok(payload)
    }

    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> io::Result<()> {
        self.set_ack(true);
        let fe = &mut self.fe;
        let res = self.watchdog.run(self.timeout, "SET_CONFIG", || {
            fe.set_config(offset, VhostUserConfigFlags::empty(), data)
        });
        self.set_ack(false);
        res
    }

    /// A reset or sleep as crosvm does them (it never sends RESET_DEVICE): SET_VRING_ENABLE(0)
    /// and GET_VRING_BASE on each queue. Returns each queue's base. What was in flight stays
    /// unanswered, as for a real driver whose device stopped.
    pub fn stop_queues(&mut self) -> io::Result<Vec<u32>> {
        let t = self.timeout;
        let mut fe = self.fe.clone();
        let enable = self.acked & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        let mut bases = Vec::new();
        self.channel.active.store(false, Ordering::SeqCst);
        for q in 0..self.queues.len() {
            if enable {
                self.watchdog
                    .run(t, "SET_VRING_ENABLE", || fe.set_vring_enable(q, false))?;
            }
            bases.push(
                self.watchdog
                    .run(t, "GET_VRING_BASE", || fe.get_vring_base(q))?,
            );
        }
        Ok(bases)
    }

    /// Re-activation as crosvm does it: the memory table and every queue set up again, without
    /// SET_FEATURES. `bases` None: the driver reset, and its rings are fresh (zeroed, at the same
    /// addresses, base 0); Some: a wake, the same rings at those bases.
    pub fn restart_queues(&mut self, bases: Option<&[u32]>) -> io::Result<()> {
        let t = self.timeout;
        let regions = self.mem.region_infos()?;
        let mut fe = self.fe.clone();
        let enable = self.acked & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        self.watchdog
            .run(t, "SET_MEM_TABLE", || fe.set_mem_table(&regions))?;
        for q in 0..self.queues.len() {
            // crosvm serves its backend channel again once it sent the last message here (none
            // has a reply): a backend that acts on that message may ask before this thread is
            // past the send, so the channel counts as served from just before it.
            let last = q + 1 == self.queues.len();
            let base = match bases {
                Some(b) => *b
                    .get(q)
                    .ok_or_else(|| io::Error::other("a base per queue"))?,
                None => {
                    let old = &self.queues[q];
                    let (at, len) = old.rings();
                    self.mem.write(at, &vec![0; len as usize]);
                    self.queues[q] = Vring::new(old.size(), at, old.event_idx())?;
                    0
                }
            };
            let vr = &self.queues[q];
            let vc = vr.config(&self.mem);
            let size = vr.size();
            self.watchdog
                .run(t, "SET_VRING_NUM", || fe.set_vring_num(q, size))?;
            self.watchdog
                .run(t, "SET_VRING_ADDR", || fe.set_vring_addr(q, &vc))?;
            self.watchdog
                .run(t, "SET_VRING_BASE", || fe.set_vring_base(q, base as u16))?;
            self.watchdog
                .run(t, "SET_VRING_CALL", || fe.set_vring_call(q, &vr.call))?;
            if last && !enable {
                self.channel.active.store(true, Ordering::SeqCst);
            }
            self.watchdog
                .run(t, "SET_VRING_KICK", || fe.set_vring_kick(q, &vr.kick))?;
            if enable {
                if last {
                    self.channel.active.store(true, Ordering::SeqCst);
                }
                self.watchdog
                    .run(t, "SET_VRING_ENABLE", || fe.set_vring_enable(q, true))?;
            }
        }
        Ok(())
    }

    /// What would have crashed a crosvm VM: backend requests refused, or sent while the device
    /// was stopped.
    pub fn crashes(&self) -> Vec<String> {
        self.channel.refusals.lock().unwrap().clone()
    }

    /// Memory table changes that failed or could not be sent (window_gpa only): what QEMU
    /// logs as vhost errors.
    pub fn table_errors(&self) -> Vec<String> {
        self.channel
            .table
            .as_ref()
            .map(|t| t.errors())
            .unwrap_or_default()
    }

    /// Regions in the backend's memory table, RAM included (window_gpa only).
    pub fn table_regions(&self) -> Option<u64> {
        self.channel.table.as_ref().map(|t| t.regions())
    }

    /// CONFIG_CHANGE_MSG requests received on the backend channel.
    pub fn config_change_count(&self) -> u64 {
        self.channel.config_changes.load(Ordering::SeqCst)
    }

    /// Protocol errors seen on the backend request channel.
    pub fn backend_channel_errors(&self) -> Vec<String> {
        self.channel_errors.lock().unwrap().clone()
    }

    pub fn display(&self) -> Option<Arc<DisplayPeer>> {
        self.display.clone()
    }

    pub fn shmem(&self) -> Arc<ShmemPeer> {
        self.channel.shmem.clone()
    }

    /// Closes the connection (the backend sees a disconnect).
    pub fn disconnect(self) {
        drop(self)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // The frontend may hold other copies of this fd; shutting down guarantees the
        // backend sees the disconnect now. Service threads are stopped after this.
        let _ = self.main.shutdown(Shutdown::Both);
    }
}
