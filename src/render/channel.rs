//! The broker<->worker transport (protocol::worker): framed messages with descriptors over a
//! UNIX stream socket, the doorbell (a shared slot and an eventfd per direction) for the
//! request channel's frames without descriptors, and the shared-memory mailbox bulk bytes
//! travel through.
//!
//! The doorbell is the hot path: a receiver that is looking (see `Spin`) finds a request or its
//! reply by reading the slot's sequence number, with no syscall on either side; a sleeping one
//! costs an eventfd wakeup, what an eventfd ping-pong costs, where the socket costs more per
//! message (socket buffers, and a frame read in two parts). The socket stays for descriptors
//! and for frames larger than a slot.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use vgpud_protocol::worker::{self, MAILBOX_BYTES, SLOT_BYTES, SLOT_HEADER};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::sync::lock;

/// Most descriptors one message carries (a memory table's regions).
pub const MAX_FDS: usize = 32;

pub struct Channel {
    sock: UnixStream,
    doorbell: Option<Doorbell>,
    spin: Spin,
    /// The longest a receive waits; None: for ever.
    limit: Mutex<Option<Duration>>,
    /// The largest frame a receive accepts.
    max_frame: usize,
}

impl Channel {
    pub fn new(sock: UnixStream) -> Self {
        Channel {
            sock,
            doorbell: None,
            spin: Spin::new(Duration::ZERO),
            limit: Mutex::new(None),
            max_frame: worker::MAX_FRAME,
        }
    }

    /// Refuses frames received larger than `max` bytes (the broker's end: replies are small).
    pub fn accepting_up_to(self, max: usize) -> Self {
        Channel {
            max_frame: max,
            ..self
        }
    }

    /// A channel whose frames without descriptors go through `doorbell`, a receive looking
    /// at it for up to `spin` before it sleeps (see `Spin`).
    pub fn with_doorbell(sock: UnixStream, doorbell: Doorbell, spin: Duration) -> Self {
        Channel {
            doorbell: Some(doorbell),
            spin: Spin::new(spin),
            ..Channel::new(sock)
        }
    }

    /// Bounds every later receive; None waits for ever.
    pub fn set_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        *lock(&self.limit) = limit;
        self.sock.set_read_timeout(limit)
    }

    /// The socket, which turns readable when a message came that way.
    pub fn socket_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    pub fn doorbell(&self) -> Option<&Doorbell> {
        self.doorbell.as_ref()
    }

    pub fn shutdown(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }

    /// Sends one message, with `fds` alongside its first byte; through the doorbell when it
    /// carries none and fits a slot.
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[RawFd]) -> io::Result<()> {
        if let Some(doorbell) = self.doorbell.as_ref().filter(|_| fds.is_empty()) {
            if doorbell.send(msg)? {
                return Ok(());
            }
        }
        let frame = worker::encode(msg).map_err(io::Error::other)?;
        let sent = if fds.is_empty() {
            0
        } else {
            self.sock
                .send_with_fds(&[&frame[..]], fds)
                .map_err(io::Error::from)?
        };
        (&self.sock).write_all(frame.get(sent..).unwrap_or_default())
    }

    /// Receives one message (from the doorbell or the socket, whichever has one) and the
    /// descriptors that came with it.
    pub fn recv<T: DeserializeOwned>(&self) -> io::Result<(T, Vec<File>)> {
        self.recv_serving(None)
    }

    /// As `recv`, for a caller that was just told a message is waiting: the doorbell is looked
    /// at first, without a poll.
    pub fn recv_waiting<T: DeserializeOwned>(&self) -> io::Result<(T, Vec<File>)> {
        match self.try_recv()? {
            Some(msg) => Ok((msg, Vec::new())),
            None => self.recv(),
        }
    }

    /// The message already waiting in the doorbell's slot, if there is one; never waits.
    pub fn try_recv<T: DeserializeOwned>(&self) -> io::Result<Option<T>> {
        let Some(doorbell) = &self.doorbell else {
            return Ok(None);
        };
        let got = doorbell.recv(self.max_frame)?;
        if got.is_some() {
            // A message that was there at once: the peer is quick, so the next wait spins.
            self.spin.settle(Duration::ZERO);
        }
        Ok(got)
    }

    /// As `recv`, and meanwhile, whenever `side`'s descriptor is readable, calls its function
    /// (a peer that must not block on a full socket while we wait for it), which says whether
    /// to keep watching it; its error ends the wait.
    pub fn recv_serving<T: DeserializeOwned>(
        &self,
        side: Option<(RawFd, &mut dyn FnMut() -> io::Result<bool>)>,
    ) -> io::Result<(T, Vec<File>)> {
        self.recv_serving_since(side, Instant::now())
    }

    /// As `recv_serving`, the timeout counted from `since` (when the message was asked for)
    /// rather than from now.
    pub fn recv_serving_since<T: DeserializeOwned>(
        &self,
        side: Option<(RawFd, &mut dyn FnMut() -> io::Result<bool>)>,
        since: Instant,
    ) -> io::Result<(T, Vec<File>)> {
        let deadline = lock(&self.limit).map(|l| since + l);
        let Some(doorbell) = &self.doorbell else {
            return self.recv_socket(deadline);
        };
        let start = Instant::now();
        let got = self.recv_polling(doorbell, side, deadline, self.spin.until(start));
        self.spin.settle(start.elapsed());
        got
    }

    /// `recv_serving` on a doorbell channel: polls without sleeping until `spin_until`, then
    /// sleeps in poll.
    fn recv_polling<T: DeserializeOwned>(
        &self,
        doorbell: &Doorbell,
        mut side: Option<(RawFd, &mut dyn FnMut() -> io::Result<bool>)>,
        deadline: Option<Instant>,
        spin_until: Option<Instant>,
    ) -> io::Result<(T, Vec<File>)> {
        let pollfd = |fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let side_fd = side.as_ref().map_or(-1, |(fd, _)| *fd);
        // A negative descriptor is skipped by poll.
        let mut fds = [
            pollfd(self.sock.as_raw_fd()),
            pollfd(doorbell.bell.as_raw_fd()),
            pollfd(side_fd),
        ];
        // Rings without a frame: an honest peer leaves at most two behind (rung for frames we
        // found by looking): the ones written before we last drained the bell, and one it had
        // decided on but not yet written. More are a lie.
        let mut empty_rings = 0;
        let mut looks = 0u32;
        loop {
            // The slot first: a look at memory, no syscall.
            if let Some(msg) = doorbell.recv(self.max_frame)? {
                return Ok((msg, Vec::new()));
            }
            let now = Instant::now();
            let spinning = spin_until.is_some_and(|until| now < until);
            if !spinning && deadline.is_some_and(|d| now >= d) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no message in time",
                ));
            }
            if spinning {
                if !Spin::time_to_poll(&mut looks) {
                    continue;
                }
            } else if doorbell.going_to_sleep()? {
                continue;
            }
            let wait = match deadline {
                _ if spinning => 0,
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    let ms = left.as_micros().div_ceil(1000);
                    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
                }
            };
            // SAFETY: `fds` is an array of initialised pollfds of the length passed.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait) };
            doorbell.awake()?;
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let [sock, bell, other] = &mut fds;
            if other.revents != 0 {
                if let Some((_, serve)) = side.as_mut() {
                    if !serve()? {
                        other.fd = -1;
                    }
                }
            }
            if bell.revents != 0 {
                doorbell.drain()?;
                if !doorbell.ready()? {
                    empty_rings += 1;
                    if empty_rings > 2 {
                        return Err(io::Error::other("the bell rang without a frame"));
                    }
                }
                continue;
            }
            if sock.revents != 0 {
                // A frame put in the slot before the socket turned readable comes first.
                if let Some(msg) = doorbell.recv(self.max_frame)? {
                    return Ok((msg, Vec::new()));
                }
                return self.recv_socket(deadline);
            }
            if !spinning && (n == 0 || deadline.is_some_and(|d| Instant::now() >= d)) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no message in time",
                ));
            }
        }
    }

    /// A frame from the socket, whole by `deadline` (each read is also bounded by the socket's
    /// timeout): a peer that sends it a byte at a time does not hold us longer.
    fn recv_socket<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
    ) -> io::Result<(T, Vec<File>)> {
        let mut header = [0u8; 4];
        let mut fds = [-1; MAX_FDS];
        let mut iov = [libc::iovec {
            iov_base: header.as_mut_ptr().cast(),
            iov_len: header.len(),
        }];
        // SAFETY: the iovec points at `header`, which is ours to write for its whole length.
        let (got, nfds) =
            unsafe { self.sock.recv_with_fds(&mut iov, &mut fds) }.map_err(io::Error::from)?;
        // SAFETY: the first `nfds` entries are descriptors we were just given and own.
        let files: Vec<File> = fds
            .iter()
            .take(nfds)
            .map(|&fd| unsafe { File::from_raw_fd(fd) })
            .collect();
        if got == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed"));
        }
        self.read_by(header.get_mut(got..).unwrap_or_default(), deadline)?;
        let len = worker::frame_len(header).map_err(io::Error::other)?;
        if len > self.max_frame {
            return Err(io::Error::other(format!("a frame of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        self.read_by(&mut body, deadline)?;
        let msg = worker::decode(&body).map_err(io::Error::other)?;
        Ok((msg, files))
    }
}

impl Channel {
    /// Fills `buf` from the socket, failing once `deadline` has passed.
    fn read_by(&self, mut buf: &mut [u8], deadline: Option<Instant>) -> io::Result<()> {
        while !buf.is_empty() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "frame not whole in time",
                ));
            }
            match (&self.sock).read(buf) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed")),
                Ok(n) => buf = buf.get_mut(n..).unwrap_or_default(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// How long a receiver keeps looking for a message before it goes to sleep on its
/// descriptors. Waking a sleeping thread costs several microseconds, tens when its core had
/// gone idle, and a request and its reply cost two such wakeups; a look reads the slot's
/// sequence number, and every `LOOKS_PER_POLL`th also polls the descriptors and yields. The
/// budget is spent only while messages come quickly: after a wait longer than `WARM` budgets
/// (an idle VM, a long GL command) the next waits sleep at once, until one is that short again.
/// So a quiet channel burns one budget per burst of requests, and a steady stream of requests
/// at most one budget in `WARM`.
pub struct Spin {
    budget: Duration,
    /// The last wait was at most `WARM` budgets long: the next one spins.
    hot: AtomicBool,
}

impl Spin {
    /// Looks at memory between two polls of the descriptors (and yields of the CPU).
    pub const LOOKS_PER_POLL: u32 = 16;

    /// A wait up to this many budgets long keeps spinning on: a sleeping receiver's wait
    /// includes its own wakeup (and its peer's, if that slept too), so even messages that
    /// spinning would catch take longer than the budget while nobody spins.
    const WARM: u32 = 4;

    pub fn new(budget: Duration) -> Spin {
        Spin {
            budget,
            hot: AtomicBool::new(!budget.is_zero()),
        }
    }

    /// Until when a wait starting at `start` may spin: None when the last wait was long.
    pub fn until(&self, start: Instant) -> Option<Instant> {
        self.hot
            .load(Ordering::Relaxed)
            .then(|| start + self.budget)
    }

    /// Counts a look at memory that found nothing; true when it is time to poll the
    /// descriptors too. Every `LOOKS_PER_POLL`th look also lets other runnable threads on this
    /// CPU run (the peer, the VMM's notifier), which on a host with fewer free cores than
    /// spinning threads would otherwise wait for the spinner's budget to run out.
    pub fn time_to_poll(looks: &mut u32) -> bool {
        *looks = looks.wrapping_add(1);
        if !looks.is_multiple_of(Spin::LOOKS_PER_POLL) {
            std::hint::spin_loop();
            return false;
        }
        // SAFETY: sched_yield has no arguments and no effect on memory.
        unsafe { libc::sched_yield() };
        true
    }

    /// Records how long a wait took, from its start.
    pub fn settle(&self, took: Duration) {
        let warm = self.budget * Spin::WARM;
        self.hot
            .store(!self.budget.is_zero() && took <= warm, Ordering::Relaxed);
    }
}

/// The mailbox: `MAILBOX_BYTES` of a memfd both processes map. Only one request is in flight
/// per worker, so one mailbox serves both directions.
pub struct Mailbox {
    file: File,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory. Through `&self`, `Mailbox` hands out copies only;
// the one borrow of its bytes (`fill`) takes `&mut self`.
unsafe impl Send for Mailbox {}
// SAFETY: as above; concurrent copies race only with the other process, which the protocol
// rules out (the one request in flight owns the mailbox).
unsafe impl Sync for Mailbox {}

impl Mailbox {
    /// A fresh, zeroed mailbox, sealed at its size: a worker (trusted no more than a guest)
    /// that could shrink it would make the broker's next copy fault (SIGBUS, every VM).
    pub fn create() -> io::Result<Mailbox> {
        Self::create_sized(MAILBOX_BYTES as usize)
    }

    /// A fresh, zeroed, sealed shared memory of `len` bytes.
    fn create_sized(len: usize) -> io::Result<Mailbox> {
        // SAFETY: a valid C string; the result is checked, then owned by the File.
        let fd = unsafe {
            libc::memfd_create(
                c"vgpud-mailbox".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64)?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS on a memfd we own; no memory is passed.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map_sized(file, len)
    }

    /// Maps a mailbox another process created (and must not shrink: it is ours too).
    pub fn map(file: File) -> io::Result<Mailbox> {
        Self::map_sized(file, MAILBOX_BYTES as usize)
    }

    /// Maps the first `len` bytes of shared memory another process created and sealed.
    fn map_sized(file: File, len: usize) -> io::Result<Mailbox> {
        if file.metadata()?.len() < len as u64 {
            return Err(io::Error::other("mailbox too small"));
        }
        // SAFETY: a fresh shared mapping of the file, at an address the kernel picks.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("null mapping"))?;
        Ok(Mailbox { file, ptr, len })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// `len` bytes from `offset`, checked against the mapping.
    fn slice(&self, offset: usize, len: u64) -> io::Result<vm_memory::VolatileSlice<'_>> {
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| offset.checked_add(l))
            .filter(|&end| end <= self.len)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "{len} bytes at {offset} do not fit the {}-byte mailbox",
                    self.len
                ))
            })?;
        // SAFETY: offset..end lies inside the mapping, which lives as long as `self`; the other
        // process may write it, hence volatile access.
        Ok(unsafe { vm_memory::VolatileSlice::new(self.ptr.as_ptr().add(offset), end - offset) })
    }

    /// The 4-byte word at `offset` (a multiple of 4), for both processes to read and write.
    fn atomic_at(&self, offset: usize) -> io::Result<&AtomicU32> {
        let fits = offset.checked_add(4).is_some_and(|end| end <= self.len);
        if !fits || !offset.is_multiple_of(4) {
            return Err(io::Error::other(format!("no word at {offset}")));
        }
        // SAFETY: four bytes inside the mapping (checked), 4-aligned (the mapping is
        // page-aligned), living as long as `self`; AtomicU32 has u32's layout, and these words
        // of memory shared with another process are only ever accessed as atomics.
        Ok(unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU32>() })
    }

    pub fn write(&self, data: &[u8]) -> io::Result<u64> {
        self.write_at(0, data)
    }

    fn write_at(&self, offset: usize, data: &[u8]) -> io::Result<u64> {
        self.slice(offset, data.len() as u64)?.copy_from(data);
        Ok(data.len() as u64)
    }

    /// Lets `f` write the first `len` bytes in place: bulk bytes of a reply, without a copy. For
    /// the worker's side only (the broker's peer is not trusted to leave the bytes alone).
    pub(super) fn fill<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> io::Result<R> {
        let slice = self.slice(0, len as u64)?;
        // SAFETY: the bytes lie inside the mapping (checked) and `&mut self` keeps this process
        // from touching them meanwhile. The other process is the broker, which leaves the
        // mailbox alone while the one request in flight owns it (until the reply).
        let bytes = unsafe { std::slice::from_raw_parts_mut(slice.ptr_guard_mut().as_ptr(), len) };
        Ok(f(bytes))
    }

    /// The first `len` bytes, copied out (the length comes from the other process: checked).
    pub fn read(&self, len: u64) -> io::Result<Vec<u8>> {
        self.read_at(0, len)
    }

    /// The first `out.len()` bytes, copied into `out`.
    pub fn read_into(&self, out: &mut [u8]) -> io::Result<()> {
        self.slice(0, out.len() as u64)?.copy_to(out);
        Ok(())
    }

    fn read_at(&self, offset: usize, len: u64) -> io::Result<Vec<u8>> {
        let src = self.slice(offset, len)?;
        let mut out = vec![0u8; src.len()];
        src.copy_to(&mut out[..]);
        Ok(out)
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; nothing refers to it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One end of a doorbell: two slots in a shared page (0: broker to worker, 1: worker to
/// broker), an eventfd this end rings when its slot holds a new frame, and one that rings for
/// this end (non-blocking).
///
/// A slot's sequence number is written last, so a receiver that sees it advance sees the whole
/// frame: a receiver that is looking (spinning) needs no ring. Each end has a flag in the page
/// saying it is about to sleep on its bell; a sender rings only then. The two orderings
/// (sender: sequence number, fence, flag; receiver: flag, fence, sequence number) make sure at
/// least one side sees the other, so no frame is left unseen by a sleeper. A peer that lies
/// about its flag only keeps its own frames from being rung for, or makes us ring for nothing.
///
/// Beside its flag, each end says which CPU it last ran on (the broker: sent a request from;
/// the worker: sent or looked from), so that a spinning worker can tell when it spins on the
/// broker's CPU (`beside_peer`). Only the
/// worker reads these words: a worker that writes them fools only itself.
pub struct Doorbell {
    page: Mailbox,
    mine: usize,
    ring: EventFd,
    bell: EventFd,
    /// Slot frames sent and received so far: the next ones are numbered one more.
    sent: AtomicU32,
    received: AtomicU32,
}

/// The worker's end of a doorbell, as descriptors to hand over: the page, the eventfd the
/// worker waits on, and the one it rings.
pub struct DoorbellFds {
    pub page: File,
    pub bell: OwnedFd,
    pub ring: OwnedFd,
}

impl Doorbell {
    /// A new doorbell: the broker's end, and the worker's as descriptors.
    pub fn create() -> io::Result<(Doorbell, DoorbellFds)> {
        let page = Mailbox::create_sized(Doorbell::PAGE)?;
        let flags = libc::EFD_NONBLOCK | libc::EFD_CLOEXEC;
        let (to_worker, to_broker) = (EventFd::new(flags)?, EventFd::new(flags)?);
        // SAFETY: each descriptor comes fresh from try_clone, owned by nothing else.
        let owned = |e: EventFd| unsafe { OwnedFd::from_raw_fd(e.into_raw_fd()) };
        let theirs = DoorbellFds {
            page: page.file().try_clone()?,
            bell: owned(to_worker.try_clone()?),
            ring: owned(to_broker.try_clone()?),
        };
        Ok((Doorbell::new(page, 0, to_worker, to_broker), theirs))
    }

    /// The worker's end, from the descriptors the broker handed over.
    pub fn open(fds: DoorbellFds) -> io::Result<Doorbell> {
        let page = Mailbox::map_sized(fds.page, Doorbell::PAGE)?;
        // SAFETY: the descriptors are ours alone (OwnedFd), handed over here.
        let (ring, bell) = unsafe {
            (
                EventFd::from_raw_fd(fds.ring.into_raw_fd()),
                EventFd::from_raw_fd(fds.bell.into_raw_fd()),
            )
        };
        Ok(Doorbell::new(page, 1, ring, bell))
    }

    /// The two slots, then each end's "about to sleep" flag and CPU on a cache line of its
    /// own.
    const PAGE: usize = 2 * SLOT_BYTES + 2 * 64;

    fn seq_of(&self, end: usize) -> io::Result<&AtomicU32> {
        self.page.atomic_at(end * SLOT_BYTES)
    }

    fn asleep_of(&self, end: usize) -> io::Result<&AtomicU32> {
        self.page.atomic_at(2 * SLOT_BYTES + end * 64)
    }

    /// The CPU an end last said it ran on, plus one (0: not said), beside its flag.
    fn cpu_of(&self, end: usize) -> io::Result<&AtomicU32> {
        self.page.atomic_at(2 * SLOT_BYTES + end * 64 + 4)
    }

    /// Says which CPU this thread runs on now; the word is written only when that changed.
    fn publish_cpu(&self) -> io::Result<u32> {
        // SAFETY: sched_getcpu has no arguments and no effect on memory.
        let cpu = unsafe { libc::sched_getcpu() };
        let Ok(cpu) = u32::try_from(cpu) else {
            return Ok(0);
        };
        let cpu = cpu.wrapping_add(1);
        let word = self.cpu_of(self.mine)?;
        if word.load(Ordering::Relaxed) != cpu {
            word.store(cpu, Ordering::Relaxed);
        }
        Ok(cpu)
    }

    /// The CPU this thread runs on, if the other end last ran there too: then a spin here
    /// only keeps it from running.
    pub fn beside_peer(&self) -> io::Result<Option<usize>> {
        debug_assert_eq!(self.mine, 1, "the broker trusts no word of the worker's");
        let cpu = self.publish_cpu()?;
        let same = cpu != 0 && self.cpu_of(1 - self.mine)?.load(Ordering::Relaxed) == cpu;
        Ok(same.then(|| cpu as usize - 1))
    }

    /// The eventfd this end sleeps on.
    pub fn bell_fd(&self) -> RawFd {
        self.bell.as_raw_fd()
    }

    fn new(page: Mailbox, mine: usize, ring: EventFd, bell: EventFd) -> Doorbell {
        Doorbell {
            page,
            mine,
            ring,
            bell,
            sent: AtomicU32::new(0),
            received: AtomicU32::new(0),
        }
    }

    /// Puts `msg` in this end's slot, and rings if the other end is about to sleep; false when
    /// it does not fit a slot.
    fn send<T: Serialize>(&self, msg: &T) -> io::Result<bool> {
        let seq = self.sent.load(Ordering::Relaxed).wrapping_add(1);
        let Some(frame) = worker::slot_frame(msg, seq).map_err(io::Error::other)? else {
            return Ok(false);
        };
        // The frame after its sequence number, which is stored last.
        let slot = self.mine * SLOT_BYTES;
        self.page
            .write_at(slot + 4, frame.get(4..).unwrap_or_default())?;
        self.publish_cpu()?;
        self.seq_of(self.mine)?.store(seq, Ordering::Release);
        self.sent.store(seq, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.asleep_of(1 - self.mine)?.load(Ordering::Relaxed) != 0 {
            self.ring.write(1)?;
        }
        Ok(true)
    }

    /// Whether the other end's slot holds a frame this end has not received (or a lie).
    pub fn ready(&self) -> io::Result<bool> {
        let last = self.received.load(Ordering::Relaxed);
        Ok(self.seq_of(1 - self.mine)?.load(Ordering::Acquire) != last)
    }

    /// Says this end is about to sleep on its bell; true if a frame came meanwhile (then it
    /// must not sleep, and is awake again).
    pub fn going_to_sleep(&self) -> io::Result<bool> {
        self.asleep_of(self.mine)?.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let ready = self.ready()?;
        if ready {
            self.awake()?;
        }
        Ok(ready)
    }

    pub fn awake(&self) -> io::Result<()> {
        // Written only when set: a spinning end that wrote it after every poll would take the
        // line from the other end's cache each time, and its next send would wait for it back.
        let asleep = self.asleep_of(self.mine)?;
        if asleep.load(Ordering::Relaxed) != 0 {
            asleep.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Takes the bell's rings, if any.
    pub fn drain(&self) -> io::Result<()> {
        match self.bell.read() {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The frame in the other end's slot if there is a new one (None if not), checked to be
    /// the next one and to fit the slot and `max` bytes.
    fn recv<T: DeserializeOwned>(&self, max: usize) -> io::Result<Option<T>> {
        let last = self.received.load(Ordering::Relaxed);
        let found = self.seq_of(1 - self.mine)?.load(Ordering::Acquire);
        if found == last {
            return Ok(None);
        }
        let seq = last.wrapping_add(1);
        // The sequence number as loaded above (the word is only ever accessed atomically), the
        // length from the page.
        let slot = (1 - self.mine) * SLOT_BYTES;
        let mut header = [0u8; SLOT_HEADER];
        let (number, length) = header.split_at_mut(4);
        number.copy_from_slice(&found.to_le_bytes());
        length.copy_from_slice(&self.page.read_at(slot + 4, 4)?);
        let len = worker::slot_body_len(header, seq).map_err(io::Error::other)?;
        if len > max {
            return Err(io::Error::other(format!("a slot frame of {len} bytes")));
        }
        // Most frames are a few bytes: those are read into the stack, not a fresh allocation.
        let mut small = [0u8; 256];
        let body = match small.get_mut(..len) {
            Some(body) => {
                self.page
                    .slice(slot + SLOT_HEADER, len as u64)?
                    .copy_to(body);
                std::borrow::Cow::Borrowed(&*body)
            }
            None => self.page.read_at(slot + SLOT_HEADER, len as u64)?.into(),
        };
        self.received.store(seq, Ordering::Relaxed);
        worker::decode(&body).map(Some).map_err(io::Error::other)
    }
}

/// CPU time of the calling thread: what a spin burned (tests).
#[cfg(test)]
pub(crate) fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass, nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use vgpud_protocol::worker::{Reply, Request};

    #[test]
    fn messages_and_descriptors_cross() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Channel::new(a), Channel::new(b));
        let mailbox = Mailbox::create().unwrap();
        a.send(&Request::Capsets, &[mailbox.file().as_raw_fd()])
            .unwrap();
        let (msg, files): (Request, _) = b.recv().unwrap();
        assert_eq!(msg, Request::Capsets);
        let theirs = Mailbox::map(files.into_iter().next().unwrap()).unwrap();
        mailbox.write(b"hello").unwrap();
        assert_eq!(theirs.read(5).unwrap(), b"hello");
        assert!(theirs.read(MAILBOX_BYTES + 1).is_err());
        b.send(&Reply::Data { len: 5 }, &[]).unwrap();
        assert_eq!(a.recv::<Reply>().unwrap().0, Reply::Data { len: 5 });
    }

    #[test]
    fn bytes_filled_in_place_reach_the_other_mapping_whole_and_bounded() {
        let mailbox = Mailbox::create().unwrap();
        let mut theirs = Mailbox::map(mailbox.file().try_clone().unwrap()).unwrap();
        let n = theirs.fill(6, |out| {
            out.copy_from_slice(b"pixels");
            out.len()
        });
        assert_eq!(n.unwrap(), 6);
        let mut got = [0u8; 6];
        mailbox.read_into(&mut got).unwrap();
        assert_eq!(&got, b"pixels");
        let whole = MAILBOX_BYTES as usize;
        assert!(theirs.fill(whole + 1, |_| ()).is_err(), "past the end");
        assert!(mailbox.read_into(&mut vec![0; whole + 1]).is_err());
    }

    #[test]
    fn the_worker_cannot_resize_the_mailbox() {
        let mailbox = Mailbox::create().unwrap();
        // What a worker gets: the same file, by descriptor.
        let theirs = mailbox.file().try_clone().unwrap();
        assert!(theirs.set_len(0).is_err(), "shrunk");
        assert!(theirs.set_len(MAILBOX_BYTES + 4096).is_err(), "grown");
        mailbox.write(b"still here").unwrap();
        assert_eq!(mailbox.read(10).unwrap(), b"still here");
    }

    #[test]
    fn a_silent_or_lying_peer_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let a = Channel::new(a);
        a.set_timeout(Some(Duration::from_millis(50))).unwrap();
        assert!(a.recv::<Reply>().is_err(), "timed out");
        (&b).write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert!(a.recv::<Reply>().is_err(), "frame too large");
        drop(b);
        assert!(a.recv::<Reply>().is_err(), "closed");
    }

    /// A broker's and a worker's channel joined by a socket pair and a doorbell.
    fn doorbell_pair() -> (Channel, Channel) {
        spinning_pair(Duration::ZERO)
    }

    fn spinning_pair(spin: Duration) -> (Channel, Channel) {
        let (a, b) = UnixStream::pair().unwrap();
        let (broker_end, theirs) = Doorbell::create().unwrap();
        let worker_end = Doorbell::open(theirs).unwrap();
        (
            Channel::with_doorbell(a, broker_end, spin),
            Channel::with_doorbell(b, worker_end, spin),
        )
    }

    /// The budgets the channel tests run with: none, and one longer than their waits.
    const SPINS: [Duration; 2] = [Duration::ZERO, Duration::from_millis(1)];

    #[test]
    fn an_end_sees_whether_the_other_last_ran_on_its_cpu() {
        use crate::render::cpus::CpuList;
        let cpus = CpuList::of_this_thread().unwrap().cpus().to_vec();
        let (broker, worker) = doorbell_pair();
        let at_worker = worker.doorbell().unwrap();
        assert_eq!(
            at_worker.beside_peer().unwrap(),
            None,
            "the broker never said"
        );
        // On each CPU in turn (the first two), the broker sends, then the worker looks.
        let on = |cpu: usize, f: &mut (dyn FnMut() + Send)| {
            thread::scope(|s| {
                s.spawn(|| {
                    CpuList::parse(&cpu.to_string())
                        .unwrap()
                        .pin_this_thread()
                        .unwrap();
                    f()
                });
            })
        };
        let first = cpus[0];
        on(first, &mut || broker.send(&Request::Capsets, &[]).unwrap());
        let _: Request = worker.recv().unwrap().0;
        on(first, &mut || {
            assert_eq!(at_worker.beside_peer().unwrap(), Some(first));
        });
        if let Some(&second) = cpus.get(1) {
            on(second, &mut || {
                assert_eq!(at_worker.beside_peer().unwrap(), None, "on another CPU");
            });
        }
    }

    #[test]
    fn a_sender_rings_only_for_a_receiver_about_to_sleep() {
        let (broker, worker) = doorbell_pair();
        let (to_worker, at_worker) = (broker.doorbell().unwrap(), worker.doorbell().unwrap());
        broker.send(&Request::Capsets, &[]).unwrap();
        assert!(at_worker.ready().unwrap(), "the frame is seen by looking");
        assert_eq!(
            at_worker.bell.read().unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "an awake receiver is not rung"
        );
        assert_eq!(worker.recv::<Request>().unwrap().0, Request::Capsets);
        assert!(
            !at_worker.going_to_sleep().unwrap(),
            "nothing new: it may sleep"
        );
        broker.send(&Request::Capsets, &[]).unwrap();
        assert_eq!(at_worker.bell.read().unwrap(), 1, "a sleeper is rung");
        at_worker.awake().unwrap();
        assert_eq!(worker.recv::<Request>().unwrap().0, Request::Capsets);
        assert_eq!(to_worker.sent.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn no_frame_is_left_unseen_by_a_sleeper() {
        // Both ends sleeping between every frame, and both spinning: a lost ring would leave
        // one waiting for the timeout.
        for spin in [Duration::ZERO, Duration::from_micros(50)] {
            let (broker, worker) = spinning_pair(spin);
            broker.set_timeout(Some(Duration::from_secs(10))).unwrap();
            worker.set_timeout(Some(Duration::from_secs(10))).unwrap();
            let echo = thread::spawn(move || {
                for _ in 0..20_000 {
                    let (request, _) = worker.recv::<Request>().unwrap();
                    assert_eq!(request, Request::Capsets);
                    worker.send(&Reply::Ok, &[]).unwrap();
                }
            });
            for _ in 0..20_000 {
                broker.send(&Request::Capsets, &[]).unwrap();
                assert_eq!(broker.recv::<Reply>().unwrap().0, Reply::Ok);
            }
            echo.join().unwrap();
        }
    }

    #[test]
    fn rings_an_honest_peer_leaves_behind_are_not_a_lie() {
        let (broker, worker) = doorbell_pair();
        broker.set_timeout(Some(Duration::from_secs(5))).unwrap();
        let ring = worker.doorbell.as_ref().unwrap().ring.try_clone().unwrap();
        // Two leftover rings, each waking the broker, then the reply.
        let replier = thread::spawn(move || {
            for _ in 0..2 {
                thread::sleep(Duration::from_millis(5));
                ring.write(1).unwrap();
            }
            thread::sleep(Duration::from_millis(5));
            worker.send(&Reply::Ok, &[]).unwrap();
            worker
        });
        assert_eq!(broker.recv::<Reply>().unwrap().0, Reply::Ok);
        drop(replier.join().unwrap());
    }

    #[test]
    fn a_bell_rung_again_and_again_without_a_frame_is_a_lie() {
        let (broker, worker) = doorbell_pair();
        broker.set_timeout(Some(Duration::from_secs(5))).unwrap();
        let bell = worker.doorbell.as_ref().unwrap();
        let ringer = {
            let ring = bell.ring.try_clone().unwrap();
            thread::spawn(move || {
                for _ in 0..50 {
                    let _ = ring.write(1);
                    thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let t = Instant::now();
        let e = broker.recv::<Reply>().unwrap_err();
        assert!(e.to_string().contains("without a frame"), "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "not left to the timeout"
        );
        ringer.join().unwrap();
    }

    #[test]
    fn spinning_stops_after_a_long_wait_and_resumes_after_a_short_one() {
        let start = Instant::now();
        let spin = Spin::new(Duration::from_micros(50));
        assert_eq!(spin.until(start), Some(start + Duration::from_micros(50)));
        spin.settle(Duration::from_micros(201));
        assert_eq!(spin.until(start), None, "a wait past four budgets");
        spin.settle(Duration::from_micros(200));
        assert!(spin.until(start).is_some(), "a wait within four budgets");
        let never = Spin::new(Duration::ZERO);
        never.settle(Duration::ZERO);
        assert_eq!(never.until(start), None);
    }

    #[test]
    fn a_spinning_receiver_sleeps_after_its_budget_and_serves_its_side() {
        let (broker, worker) = spinning_pair(Duration::from_millis(1));
        broker.set_timeout(Some(Duration::from_secs(5))).unwrap();
        let (side_a, side_b) = UnixStream::pair().unwrap();
        // The side descriptor turns readable, then the reply comes, both long after the budget.
        let replier = thread::spawn(move || {
            let (request, _) = worker.recv::<Request>().unwrap();
            thread::sleep(Duration::from_millis(20));
            (&side_b).write_all(b"x").unwrap();
            thread::sleep(Duration::from_millis(20));
            worker.send(&Reply::Ok, &[]).unwrap();
            (request, worker, side_b)
        });
        broker.send(&Request::Capsets, &[]).unwrap();
        let mut served = 0;
        let mut serve = || -> io::Result<bool> {
            served += 1;
            let mut byte = [0u8; 1];
            (&side_a).read_exact(&mut byte)?;
            Ok(false)
        };
        let side = Some((
            side_a.as_raw_fd(),
            &mut serve as &mut dyn FnMut() -> io::Result<bool>,
        ));
        let (cpu, wall) = (thread_cpu(), Instant::now());
        assert_eq!(broker.recv_serving::<Reply>(side).unwrap().0, Reply::Ok);
        let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
        assert!(wall >= Duration::from_millis(40));
        assert!(
            cpu < Duration::from_millis(15),
            "spun past its budget: {cpu:?} of CPU in {wall:?}"
        );
        assert_eq!(served, 1, "the side descriptor was served while asleep");
        let (request, _worker, _side) = replier.join().unwrap();
        assert_eq!(request, Request::Capsets);
        assert_eq!(
            broker.spin.until(Instant::now()),
            None,
            "a 40 ms wait turned spinning off"
        );
    }

    #[test]
    fn frames_without_descriptors_take_the_doorbell_others_the_socket() {
        for spin in SPINS {
            frames_take_their_way(spin);
        }
    }

    fn frames_take_their_way(spin: Duration) {
        let (broker, worker) = spinning_pair(spin);
        broker.set_timeout(Some(Duration::from_secs(5))).unwrap();
        for _ in 0..3 {
            broker.send(&Request::Capsets, &[]).unwrap();
            assert_eq!(worker.recv::<Request>().unwrap().0, Request::Capsets);
            worker.send(&Reply::Ok, &[]).unwrap();
            assert_eq!(broker.recv::<Reply>().unwrap().0, Reply::Ok);
        }
        assert_eq!(
            broker
                .doorbell
                .as_ref()
                .unwrap()
                .sent
                .load(Ordering::Relaxed),
            3
        );
        // A descriptor, and a frame larger than a slot, go through the socket, in order with
        // the rest.
        let mailbox = Mailbox::create().unwrap();
        worker
            .send(&Reply::Data { len: 1 }, &[mailbox.file().as_raw_fd()])
            .unwrap();
        let (reply, files) = broker.recv::<Reply>().unwrap();
        assert_eq!((reply, files.len()), (Reply::Data { len: 1 }, 1));
        let long = Reply::Failed {
            out_of_memory: false,
            why: "x".repeat(SLOT_BYTES),
        };
        worker.send(&long, &[]).unwrap();
        assert_eq!(broker.recv::<Reply>().unwrap().0, long);
        assert_eq!(
            worker
                .doorbell
                .as_ref()
                .unwrap()
                .sent
                .load(Ordering::Relaxed),
            3
        );
    }

    #[test]
    fn a_lying_doorbell_is_an_error_and_a_silent_one_times_out() {
        for spin in SPINS {
            lies_and_silence(spin);
        }
    }

    fn lies_and_silence(spin: Duration) {
        let (broker, worker) = spinning_pair(spin);
        broker.set_timeout(Some(Duration::from_millis(50))).unwrap();
        let t = std::time::Instant::now();
        assert_eq!(
            broker.recv::<Reply>().unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
        let bell = worker.doorbell.as_ref().unwrap();
        // What a lying worker writes in its slot: a length and a body, then a number.
        let put = |seq: u32, rest: &[u8]| {
            bell.page.write_at(SLOT_BYTES + 4, rest).unwrap();
            bell.seq_of(1).unwrap().store(seq, Ordering::Release);
            bell.ring.write(1).unwrap();
        };
        // A frame numbered out of turn (a replay of an old one, or one made up).
        let stale = worker::slot_frame(&Reply::Ok, 5).unwrap().unwrap();
        put(5, &stale[4..]);
        assert!(broker.recv::<Reply>().is_err(), "out of sequence");
        // A length past the slot.
        put(1, &u32::MAX.to_le_bytes());
        assert!(broker.recv::<Reply>().is_err(), "longer than the slot");
        // Garbage of a valid length.
        let mut junk = 4u32.to_le_bytes().to_vec();
        junk.extend_from_slice(b"\xff\xfe{]");
        put(1, &junk);
        assert!(broker.recv::<Reply>().is_err(), "undecodable");
    }

    #[test]
    fn frames_of_any_size_cross_and_a_limited_end_refuses_larger_ones() {
        let (broker, worker) = doorbell_pair();
        // Bodies on both sides of the 256 bytes read into the stack, and past it.
        for len in [1, 250, 253, 254, 300, 5000] {
            let failed = Reply::Failed {
                out_of_memory: false,
                why: "x".repeat(len),
            };
            worker.send(&failed, &[]).unwrap();
            assert_eq!(broker.recv::<Reply>().unwrap().0, failed, "{len}");
        }
        let long = Reply::Failed {
            out_of_memory: false,
            why: "x".repeat(200),
        };
        let (broker, worker) = doorbell_pair();
        let broker = broker.accepting_up_to(100);
        worker.send(&long, &[]).unwrap();
        assert!(broker.recv::<Reply>().is_err(), "in the slot");
        let (broker, worker) = doorbell_pair();
        let broker = broker.accepting_up_to(100);
        let frame = worker::encode(&long).unwrap();
        (&worker.sock).write_all(&frame).unwrap();
        assert!(broker.recv::<Reply>().is_err(), "on the socket");
    }

    #[test]
    fn the_worker_cannot_resize_the_doorbell_page() {
        let (_, theirs) = Doorbell::create().unwrap();
        assert!(theirs.page.set_len(0).is_err(), "shrunk");
    }

    #[test]
    fn a_reply_trickled_on_the_socket_is_bounded_by_the_timeout() {
        let (broker, worker) = doorbell_pair();
        broker
            .set_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let long = Reply::Failed {
            out_of_memory: false,
            why: "x".repeat(40),
        };
        let frame = worker::encode(&long).unwrap();
        let writer = std::thread::spawn(move || {
            for byte in frame.iter().take(frame.len() - 1) {
                if (&worker.sock).write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(60));
            }
        });
        let t = std::time::Instant::now();
        let got = broker.recv::<Reply>();
        assert!(got.is_err(), "{got:?}");
        assert!(
            t.elapsed() < Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );
        drop(broker);
        writer.join().unwrap();
    }
}
