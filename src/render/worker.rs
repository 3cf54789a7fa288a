//! The render worker: `vgpud render-worker`, one process per 3D VM, started by the broker with
//! fork+exec. It owns that VM's renderer (virglrenderer through rutabaga_gfx), maps only that
//! VM's guest memory, and answers the broker's requests one at a time (protocol::worker).
//!
//! Descriptors from the broker: 3, the request channel; 4, the event channel (fence signals);
//! 5, the mailbox; 6, 7 and 8, the request channel's doorbell (its page, the eventfd the worker
//! waits on, the one it rings).

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{error, info};
use vgpud_protocol::worker::{Event, Region, Reply, Request, MAX_WHY};
use vgpud_protocol::MemEntry;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::channel::{Channel, Doorbell, DoorbellFds, Mailbox, Spin};
use super::{start, Poll, RendererKind, SharedRenderer, Started};
use crate::device::memory::{check_region, resolve_backing, Backing};
use crate::device::{band_bytes, BlobArgs, RenderError};
use crate::fences::{Fence, FenceSink};
use crate::ids::{FenceId, RendererCtxId as Ctx, RendererResId as Res};

pub const REQUEST_FD: i32 = 3;
pub const EVENT_FD: i32 = 4;
pub const MAILBOX_FD: i32 = 5;
pub const DOORBELL_PAGE_FD: i32 = 6;
pub const DOORBELL_BELL_FD: i32 = 7;
pub const DOORBELL_RING_FD: i32 = 8;

/// Fence signals go to the broker on the event channel, from whatever thread signals them;
/// except the fence the worker is waiting for before it replies (`wait_for`), which is told in
/// the reply instead.
struct EventSink {
    events: Mutex<Channel>,
    awaited: Mutex<Awaited>,
    /// Whether the fence waited for has signalled: read without the lock while waiting.
    done: AtomicBool,
    /// How long a fence is waited for, and whether fences come quickly enough to wait for: off
    /// when a wait gives up, on again when a fence not waited for signals within the budget.
    budget: Duration,
    hot: AtomicBool,
}

#[derive(Default)]
struct Awaited {
    phase: Phase,
    /// Fences made and not waited for, and when: whether they signal within the budget says
    /// whether to wait again. The newest `RECENT` only.
    recent: VecDeque<(FenceId, Instant)>,
}

#[derive(Default)]
enum Phase {
    #[default]
    Idle,
    /// A fence is being made, its id not known yet: signals are held until it is (at most
    /// `MAX_HELD`; `spilled` when more went out at once, perhaps its own).
    Making { held: Vec<FenceId>, spilled: bool },
    /// Its signal goes into the reply, not the event channel.
    Waiting(FenceId),
}

/// Most signals held while a fence is made (each is of a fence the broker asked for, so there are
/// few); more go out at once.
const MAX_HELD: usize = 64;

/// Fences not waited for whose signal is watched (pipelined fences signal in order, so the
/// newest few tell enough).
const RECENT: usize = 16;

impl FenceSink for EventSink {
    fn signalled(&self, fence: FenceId) {
        {
            let mut awaited = crate::sync::lock(&self.awaited);
            if let Some(at) = awaited.recent.iter().position(|(id, _)| *id == fence) {
                if let Some((_, made)) = awaited.recent.remove(at) {
                    if made.elapsed() <= self.budget && !self.budget.is_zero() {
                        self.hot.store(true, Ordering::Relaxed);
                    }
                }
            }
            match &mut awaited.phase {
                Phase::Making { held, .. } if held.len() < MAX_HELD => {
                    return held.push(fence);
                }
                Phase::Making { spilled, .. } => *spilled = true,
                Phase::Waiting(id) if *id == fence => {
                    self.done.store(true, Ordering::Release);
                    return;
                }
                _ => {}
            }
        }
        self.send(fence);
    }
}

impl EventSink {
    fn new(events: Channel, budget: Duration) -> EventSink {
        EventSink {
            events: Mutex::new(events),
            awaited: Mutex::new(Awaited::default()),
            done: AtomicBool::new(false),
            budget,
            hot: AtomicBool::new(!budget.is_zero()),
        }
    }

    fn send(&self, fence: FenceId) {
        let events = crate::sync::lock(&self.events);
        if let Err(e) = events.send(&Event::FenceSignalled { id: fence.0 }, &[]) {
            error!("render worker: cannot report fence {fence}: {e}");
        }
    }

    /// Makes a fence with `make`, then, while fences come quickly, waits for it until one budget
    /// after it was asked for, letting the renderer look at its work meanwhile. Says whether it
    /// has signalled; if so, no event follows for it. (A fence that signals just after the reply
    /// costs the broker a second wakeup, which on an idle host is most of a fenced command.)
    fn wait_for(
        &self,
        make: impl FnOnce() -> Result<Fence, RenderError>,
        poll: Option<&Poll>,
    ) -> Result<(Fence, bool), RenderError> {
        crate::sync::lock(&self.awaited).phase = Phase::Making {
            held: Vec::new(),
            spilled: false,
        };
        let made = Instant::now();
        let fence = make();
        let (id, held, wait) = {
            let mut awaited = crate::sync::lock(&self.awaited);
            // Only this thread sets the phase.
            let (held, spilled) = match std::mem::take(&mut awaited.phase) {
                Phase::Making { held, spilled } => (held, spilled),
                _ => (Vec::new(), true),
            };
            let id = match fence {
                Ok(Fence::Pending(id)) => id,
                other => {
                    drop(awaited);
                    held.into_iter().for_each(|f| self.send(f));
                    return other.map(|f| (f, false));
                }
            };
            // Decided once, under the lock: the phase says where its signal goes.
            let wait = if held.contains(&id) {
                FenceWait::Done
            } else if self.hot.load(Ordering::Relaxed) && !spilled {
                awaited.phase = Phase::Waiting(id);
                self.done.store(false, Ordering::Release);
                FenceWait::Until(made + self.budget)
            } else {
                if awaited.recent.len() >= RECENT {
                    awaited.recent.pop_front();
                }
                awaited.recent.push_back((id, made));
                FenceWait::No
            };
            let held: Vec<FenceId> = held.into_iter().filter(|f| *f != id).collect();
            (id, held, wait)
        };
        held.into_iter().for_each(|f| self.send(f));
        let until = match wait {
            FenceWait::Done => return Ok((Fence::Pending(id), true)),
            FenceWait::No => return Ok((Fence::Pending(id), false)),
            FenceWait::Until(until) => until,
        };
        let mut looks = 0u32;
        while !self.done.load(Ordering::Acquire) && Instant::now() < until {
            if Spin::time_to_poll(&mut looks) {
                if let Some(p) = poll.filter(|p| readable(&p.fd.as_fd())) {
                    p.run();
                }
            }
        }
        // Under the lock: a signal after this goes to the event channel.
        let mut awaited = crate::sync::lock(&self.awaited);
        awaited.phase = Phase::Idle;
        let done = self.done.load(Ordering::Acquire);
        if !done {
            // Fences are slower than the budget now: stop waiting until one is quick again.
            self.hot.store(false, Ordering::Relaxed);
        }
        Ok((Fence::Pending(id), done))
    }
}

/// What `wait_for` does once the fence is made.
enum FenceWait {
    /// It signalled while it was made.
    Done,
    /// Fences have been slow: not waited for.
    No,
    Until(Instant),
}

/// Whether a descriptor is readable now.
fn readable(fd: &BorrowedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, ours, for the call only; no wait.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

struct Worker {
    renderer: SharedRenderer,
    /// The renderer's descriptor to look at, if it has one (see `Poll`).
    poll: Option<Poll>,
    fences: Arc<EventSink>,
    mailbox: Mailbox,
    mem: Option<Arc<GuestMemoryMmap>>,
    /// Guest pages attached to resources: held so they stay mapped while the renderer uses them.
    backings: HashMap<Res, Backing>,
}

/// Serves the broker until it closes the request channel, looking for the next request for up
/// to `spin` before it sleeps (see `Spin`). Returns the process's exit status.
pub fn run(kind: RendererKind, vm: &str, spin: Duration) -> i32 {
    // Named apart from the broker in ps and /proc (it was exec'd as /proc/self/exe).
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"vgpud-worker".as_ptr()) };
    // SAFETY: the broker passed these descriptors to this process for it alone (see the module
    // docs); each is wrapped once and owned from here on.
    let (requests, events, mailbox, doorbell) = unsafe {
        (
            UnixStream::from_raw_fd(REQUEST_FD),
            UnixStream::from_raw_fd(EVENT_FD),
            File::from_raw_fd(MAILBOX_FD),
            DoorbellFds {
                page: File::from_raw_fd(DOORBELL_PAGE_FD),
                bell: OwnedFd::from_raw_fd(DOORBELL_BELL_FD),
                ring: OwnedFd::from_raw_fd(DOORBELL_RING_FD),
            },
        )
    };
    let requests = match Doorbell::open(doorbell) {
        // The worker spins in its own wait (`Wait`), over the renderer's descriptor too.
        Ok(doorbell) => Channel::with_doorbell(requests, doorbell, Duration::ZERO),
        Err(e) => {
            error!("render worker for {vm}: doorbell: {e}");
            return 1;
        }
    };
    let fences = Arc::new(EventSink::new(Channel::new(events), spin));
    let setup = Mailbox::map(mailbox).and_then(|mailbox| {
        let started = start(kind, fences.clone()).map_err(io::Error::other)?;
        let renderer_fd = started.poll.as_ref().map(|p| p.fd.as_fd().as_raw_fd());
        let wait = Wait::new(&requests, renderer_fd, spin)?;
        Ok((started, mailbox, wait))
    });
    let (Started { renderer, poll }, mailbox, wait) = match setup {
        Ok(s) => s,
        Err(e) => {
            error!("render worker for {vm}: {e}");
            return 1;
        }
    };
    info!(
        "render worker for {vm}: {kind:?} renderer, pid {}",
        std::process::id()
    );
    let mut worker = Worker {
        renderer,
        poll,
        fences,
        mailbox,
        mem: None,
        backings: HashMap::new(),
    };
    // When the wait for the next request began: the last reply. Renderer work in between does
    // not start a new wait (nor a new spin).
    let mut since = Instant::now();
    loop {
        // The renderer's own work (fences) is looked at on this thread too, between requests.
        match wait.next(&requests, since) {
            Ok(Ready::Renderer) => {
                if let Some(p) = &worker.poll {
                    p.run();
                }
                continue;
            }
            Ok(Ready::Request) => {}
            Err(e) => {
                error!("render worker for {vm}: {e}");
                return 1;
            }
        }
        let (request, files) = match requests.recv_waiting::<Request>() {
            Ok(r) => r,
            // The broker closed the channel: its VM is gone.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return 0,
            Err(e) => {
                error!("render worker for {vm}: {e}");
                return 1;
            }
        };
        let (reply, fd) = match worker.handle(request, files) {
            Ok(r) => r,
            Err(e) => (failed(&e), None),
        };
        let fds: Vec<i32> = fd.iter().map(|f| f.as_raw_fd()).collect();
        if let Err(e) = requests.send(&reply, &fds) {
            error!("render worker for {vm}: {e}");
            return 1;
        }
        since = Instant::now();
    }
}

enum Ready {
    Request,
    Renderer,
}

/// One epoll over the broker's request channel and the renderer's descriptor (`Poll`).
struct Wait {
    epoll: Epoll,
    spin: Spin,
    /// Times in a row that a wait found the broker on this worker's CPU since it last tried
    /// to move (`beside_broker`); a wait that never did starts the count again.
    met: Cell<u32>,
    /// The start of the last wait that did so (and so spins no more).
    quiet: Cell<Option<Instant>>,
    /// When this worker last moved off the broker's CPU.
    moved: Cell<Option<Instant>>,
    /// Until when its waits spin as usual, beside the broker or not (`beside_broker`).
    spin_on: Cell<Option<Instant>>,
}

impl Wait {
    const SOCKET: u64 = 0;
    const RENDERER: u64 = 1;
    const BELL: u64 = 2;

    fn new(requests: &Channel, renderer: Option<RawFd>, spin: Duration) -> io::Result<Wait> {
        let epoll = Epoll::new()?;
        let add = |fd, token| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(requests.socket_fd(), Wait::SOCKET)?;
        if let Some(doorbell) = requests.doorbell() {
            add(doorbell.bell_fd(), Wait::BELL)?;
        }
        if let Some(fd) = renderer {
            add(fd, Wait::RENDERER)?;
        }
        Ok(Wait {
            epoll,
            spin: Spin::new(spin),
            met: Cell::new(0),
            quiet: Cell::new(None),
            moved: Cell::new(None),
            spin_on: Cell::new(None),
        })
    }

    /// Waits until there is a request on `requests` or renderer work; requests first. If
    /// requests have been coming quickly, looks without sleeping until one budget after
    /// `since`, when the wait for the next request began.
    fn next(&self, requests: &Channel, since: Instant) -> io::Result<Ready> {
        let doorbell = requests.doorbell();
        let slot_ready = || doorbell.map_or(Ok(false), |d| d.ready());
        let mut events = [EpollEvent::default(); 3];
        // A wait that met the broker does not spin again, after renderer work included.
        let met_broker = || self.quiet.get() == Some(since);
        let mut spin_until = self.spin.until(since).filter(|_| !met_broker());
        let request = || {
            self.spin.settle(since.elapsed());
            if !met_broker() {
                self.met.set(0);
            }
            Ok(Ready::Request)
        };
        let mut looks = 0u32;
        loop {
            // The slot first: a look at memory, no syscall.
            if slot_ready()? {
                return request();
            }
            let spinning = spin_until.is_some_and(|until| Instant::now() < until);
            if spinning {
                if !Spin::time_to_poll(&mut looks) {
                    continue;
                }
                if let Some(cpu) = doorbell.and_then(|d| d.beside_peer().ok().flatten()) {
                    if !self.beside_broker(cpu) {
                        self.quiet.set(Some(since));
                        spin_until = None;
                    }
                    continue;
                }
            } else if let Some(d) = doorbell {
                if d.going_to_sleep()? {
                    continue;
                }
            }
            let got = self.epoll.wait(if spinning { 0 } else { -1 }, &mut events);
            if let Some(d) = doorbell {
                d.awake()?;
            }
            let n = match got {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let ready = events.get(..n).unwrap_or_default();
            let has = |token| ready.iter().any(|e| e.data() == token);
            if has(Wait::BELL) {
                if let Some(d) = doorbell {
                    d.drain()?;
                }
            }
            if has(Wait::SOCKET) || slot_ready()? {
                return request();
            }
            if has(Wait::RENDERER) {
                return Ok(Ready::Renderer);
            }
        }
    }
}

impl Wait {
    const MOVE_EVERY: Duration = Duration::from_millis(1);
    /// How long the waits of a worker that could not keep away from the broker spin as usual,
    /// beside it or not.
    const SPIN_ON: Duration = Duration::from_millis(20);

    /// A look while spinning found the broker last ran on this worker's CPU `cpu`: true if
    /// the worker spins on (it moved to another CPU, or gave up keeping away), false if it
    /// should sleep.
    ///
    /// A spinner beside the broker only keeps it waiting: its next wakeup there waits for the
    /// spinner to yield, and the scheduler need not let it run even then. With few cores the
    /// renderer's fence threads wait behind two spinners, too (docs/benchmarks.md, step 8).
    /// Sleeping leaves the CPU to them. But a sleeping worker tends to be woken onto the
    /// broker's CPU again, so the `STUCK`th wait in a row that meets it moves instead: at most
    /// once per `MOVE_EVERY`, so a scheduler that keeps putting the two together costs little.
    ///
    /// When moving does not help either, so that it meets the broker `GIVE_UP` times before it
    /// may move again (about a millisecond), sleeping only holds the two there: the broker's
    /// CPU goes idle between requests, and the scheduler keeps waking the broker on its idle
    /// CPU, away from the VMM's thread, at the cost of an idle CPU's wakeup each time
    /// (docs/benchmarks.md, step 9). Then for `SPIN_ON` the worker's waits spin as usual, as if
    /// it had not met the broker: a busy CPU is where the scheduler wakes the broker no more.
    fn beside_broker(&self, cpu: usize) -> bool {
        const STUCK: u32 = 2;
        const GIVE_UP: u32 = 8;
        if self
            .spin_on
            .get()
            .is_some_and(|until| Instant::now() < until)
        {
            return true;
        }
        let met = self.met.get().saturating_add(1);
        self.met.set(met);
        if met >= GIVE_UP {
            self.met.set(0);
            self.spin_on.set(Some(Instant::now() + Wait::SPIN_ON));
            return true;
        }
        if met < STUCK
            || self
                .moved
                .get()
                .is_some_and(|t| t.elapsed() < Wait::MOVE_EVERY)
        {
            return false;
        }
        self.met.set(0);
        self.moved.set(Some(Instant::now()));
        matches!(super::cpus::step_off(cpu), Ok(Some(_)))
    }
}

fn failed(e: &RenderError) -> Reply {
    // The broker says "renderer rejected the request" itself.
    let mut why = match e {
        RenderError::Rejected(why) => why.clone(),
        other => other.to_string(),
    };
    // The broker takes small replies only.
    crate::device::cut_to(&mut why, MAX_WHY);
    Reply::Failed {
        out_of_memory: matches!(e, RenderError::OutOfMemory),
        why,
    }
}

fn done(result: Result<(), RenderError>) -> Result<(Reply, Option<File>), RenderError> {
    result.map(|()| (Reply::Ok, None))
}

impl Worker {
    fn handle(
        &mut self,
        request: Request,
        files: Vec<File>,
    ) -> Result<(Reply, Option<File>), RenderError> {
        let r = &self.renderer;
        match request {
            Request::MemoryTable(regions) => done(self.set_memory(&regions, files)),
            Request::Capsets => {
                let caps = r.capsets();
                let caps = caps
                    .iter()
                    .map(|c| (c.id, c.max_version, c.max_size))
                    .collect();
                Ok((Reply::Capsets(caps), None))
            }
            Request::Capset { id, version } => {
                let data = r.capset(id, version)?;
                self.data(&data)
            }
            Request::Create2d {
                id,
                width,
                height,
                format,
            } => done(r.create_2d(Res(id), width, height, format)),
            Request::Create3d { id, args } => done(r.create_3d(Res(id), &args)),
            Request::Unref { id } => {
                r.unref(Res(id));
                self.backings.remove(&Res(id));
                Ok((Reply::Ok, None))
            }
            Request::AttachBacking { id, ranges } => {
                let backing = self.backing(&ranges)?;
                self.renderer
                    .attach_backing(Res(id), backing.ranges.clone())?;
                self.backings.insert(Res(id), backing);
                Ok((Reply::Ok, None))
            }
            Request::DetachBacking { id } => {
                r.detach_backing(Res(id));
                self.backings.remove(&Res(id));
                Ok((Reply::Ok, None))
            }
            Request::TransferToHost2d {
                id,
                width,
                rect,
                offset,
            } => done(r.transfer_to_host_2d(Res(id), width, rect, offset)),
            Request::ReadPixels { id, rect } => {
                // Straight into the mailbox: no frame-sized buffer to fault in and copy.
                let len =
                    usize::try_from(band_bytes(rect)).map_err(|_| RenderError::OutOfMemory)?;
                let renderer = &self.renderer;
                (self.mailbox)
                    .fill(len, |out| renderer.read_pixels_into(Res(id), rect, out))
                    .map_err(render_io)??;
                Ok((Reply::Data { len: len as u64 }, None))
            }
            Request::CreateContext {
                ctx,
                context_init,
                name,
            } => done(r.create_context(Ctx(ctx), context_init, &name)),
            Request::DestroyContext { ctx } => {
                r.destroy_context(Ctx(ctx));
                Ok((Reply::Ok, None))
            }
            Request::AttachToContext { ctx, id } => done(r.attach_to_context(Ctx(ctx), Res(id))),
            Request::DetachFromContext { ctx, id } => {
                r.detach_from_context(Ctx(ctx), Res(id));
                Ok((Reply::Ok, None))
            }
            Request::Transfer3d {
                ctx,
                id,
                to_host,
                transfer,
                fence,
            } => {
                if to_host {
                    r.transfer_to_host_3d(Ctx(ctx), Res(id), &transfer)?;
                } else {
                    r.transfer_from_host_3d(Ctx(ctx), Res(id), &transfer)?;
                }
                match fence {
                    None => Ok((Reply::Ok, None)),
                    Some(f) => self.fence(Ctx(ctx), f.ring),
                }
            }
            Request::Submit3d { ctx, len, fence } => {
                let commands = self.mailbox.read(len).map_err(render_io)?;
                self.renderer.submit_3d(Ctx(ctx), commands)?;
                match fence {
                    None => Ok((Reply::Ok, None)),
                    Some(f) => self.fence(Ctx(ctx), f.ring),
                }
            }
            Request::CreateBlob {
                ctx,
                id,
                mem,
                flags,
                blob_id,
                size,
                ranges,
            } => {
                let backing = ranges.map(|g| self.backing(&g)).transpose()?;
                let args = BlobArgs {
                    mem,
                    flags,
                    blob_id,
                    size,
                };
                let pages = backing.as_ref().map(|b| b.ranges.clone());
                self.renderer.create_blob(Ctx(ctx), Res(id), args, pages)?;
                if let Some(b) = backing {
                    self.backings.insert(Res(id), b);
                }
                Ok((Reply::Ok, None))
            }
            Request::MapBlob { id } => {
                let blob = r.map_blob(Res(id))?;
                let file = blob.file.try_clone().map_err(render_io)?;
                let reply = Reply::Blob {
                    offset: blob.offset,
                    size: blob.size,
                    map_info: blob.map_info,
                };
                Ok((reply, Some(file)))
            }
            Request::CreateFence { ctx, ring } => self.fence(Ctx(ctx), ring),
        }
    }

    /// Makes a fence on `ring` of `ctx` and waits a little for it (`EventSink::wait_for`).
    fn fence(&self, ctx: Ctx, ring: Option<u8>) -> Result<(Reply, Option<File>), RenderError> {
        let make = || self.renderer.create_fence(ctx, ring);
        let reply = match self.fences.wait_for(make, self.poll.as_ref())? {
            (Fence::Pending(id), true) => Reply::FenceDone { id: id.0 },
            (Fence::Pending(id), false) => Reply::Fence { id: id.0 },
            (Fence::Signalled, _) => Reply::Ok,
        };
        Ok((reply, None))
    }

    fn data(&self, bytes: &[u8]) -> Result<(Reply, Option<File>), RenderError> {
        let len = self.mailbox.write(bytes).map_err(render_io)?;
        Ok((Reply::Data { len }, None))
    }

    /// Maps the VM's memory table: each region from its descriptor, checked against its file.
    fn set_memory(&mut self, regions: &[Region], files: Vec<File>) -> Result<(), RenderError> {
        if regions.len() != files.len() {
            return Err(RenderError::Rejected("a descriptor per region".into()));
        }
        let mut mapped = Vec::with_capacity(regions.len());
        for (r, file) in regions.iter().zip(files) {
            let size = usize::try_from(r.size).map_err(|_| rejected("region size"))?;
            let region = GuestRegionMmap::from_range(
                GuestAddress(r.guest_addr),
                size,
                Some(FileOffset::new(file, r.file_offset)),
            )
            .map_err(|e| rejected(&format!("mapping region {:#x}: {e}", r.guest_addr)))?;
            check_region(&region).map_err(|e| rejected(&e))?;
            mapped.push(region);
        }
        let mem = GuestMemoryMmap::from_regions(mapped).map_err(|e| rejected(&e.to_string()))?;
        self.mem = Some(Arc::new(mem));
        Ok(())
    }

    fn backing(&self, ranges: &[(u64, u64)]) -> Result<Backing, RenderError> {
        let mem = self
            .mem
            .as_ref()
            .ok_or_else(|| rejected("no guest memory"))?;
        let entries: Vec<MemEntry> = ranges
            .iter()
            .map(|&(addr, len)| {
                u32::try_from(len)
                    .map(|length| MemEntry { addr, length })
                    .map_err(|_| rejected("range too long"))
            })
            .collect::<Result<_, _>>()?;
        resolve_backing(mem, &entries).map_err(|code| rejected(&format!("{code:?}")))
    }
}

fn rejected(why: &str) -> RenderError {
    RenderError::Rejected(why.to_string())
}

fn render_io(e: io::Error) -> RenderError {
    RenderError::Rejected(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::thread;
    use vmm_sys_util::eventfd::EventFd;

    use crate::render::channel::{thread_cpu, Doorbell};
    use crate::sync::lock;

    #[test]
    fn a_refusal_fits_the_reply_frame_the_broker_accepts() {
        let long = RenderError::Rejected("é".repeat(10 * MAX_WHY));
        let reply = failed(&long);
        let Reply::Failed { why, .. } = &reply else {
            panic!("{reply:?}");
        };
        assert!(
            why.len() <= MAX_WHY && why.len() > MAX_WHY - 2,
            "{}",
            why.len()
        );
        let frame = vgpud_protocol::worker::encode(&reply).unwrap();
        assert!(frame.len() <= vgpud_protocol::worker::MAX_REPLY_FRAME);
    }

    /// A sink over a socket pair, its budget `spin`, and the broker's end of its events
    /// (reads time out after `wait`).
    fn sink(spin: Duration, wait: Duration) -> (Arc<EventSink>, Channel) {
        let (a, b) = UnixStream::pair().unwrap();
        let broker = Channel::new(a);
        broker.set_timeout(Some(wait)).unwrap();
        (Arc::new(EventSink::new(Channel::new(b), spin)), broker)
    }

    fn event(broker: &Channel) -> io::Result<Event> {
        broker.recv::<Event>().map(|(e, _)| e)
    }

    #[test]
    fn a_fence_that_signals_while_it_is_made_or_waited_for_is_told_in_the_reply_alone() {
        let (fences, broker) = sink(Duration::from_secs(2), Duration::from_millis(100));
        // Signalled while it is made, with another fence's signal, which still goes out.
        let make = || {
            fences.signalled(FenceId(7));
            fences.signalled(FenceId(1));
            Ok(Fence::Pending(FenceId(1)))
        };
        let got = fences.wait_for(make, None).unwrap();
        assert_eq!(got, (Fence::Pending(FenceId(1)), true));
        assert_eq!(event(&broker).unwrap(), Event::FenceSignalled { id: 7 });
        // Signalled by another thread while the worker waits.
        let signaller = {
            let fences = fences.clone();
            thread::spawn(move || {
                // Once the worker waits for it.
                while !matches!(lock(&fences.awaited).phase, Phase::Waiting(FenceId(2))) {
                    thread::sleep(Duration::from_millis(1));
                }
                fences.signalled(FenceId(2));
            })
        };
        let got = fences.wait_for(|| Ok(Fence::Pending(FenceId(2))), None);
        signaller.join().unwrap();
        assert_eq!(got.unwrap(), (Fence::Pending(FenceId(2)), true));
        let nothing = event(&broker).expect_err("a fence told in the reply was sent as well");
        assert!(matches!(
            nothing.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
    }

    #[test]
    fn a_fence_slower_than_the_budget_is_sent_as_an_event_and_the_next_is_not_waited_for() {
        let (fences, broker) = sink(Duration::from_millis(10), Duration::from_secs(5));
        let hot = |f: &EventSink| f.hot.load(Ordering::Relaxed);
        let got = fences.wait_for(|| Ok(Fence::Pending(FenceId(3))), None);
        assert_eq!(got.unwrap(), (Fence::Pending(FenceId(3)), false));
        // Fences that slow are not waited for...
        assert!(!hot(&fences));
        // ...even with several in flight (each made before the one before has signalled).
        for id in [4, 5] {
            let got = fences.wait_for(|| Ok(Fence::Pending(FenceId(id))), None);
            assert_eq!(got.unwrap(), (Fence::Pending(FenceId(id)), false));
        }
        thread::sleep(Duration::from_millis(50));
        for id in [3, 4, 5] {
            fences.signalled(FenceId(id));
            assert_eq!(event(&broker).unwrap(), Event::FenceSignalled { id });
        }
        assert!(
            !hot(&fences),
            "fences slower than the budget turned the wait on"
        );
        // ...until one not waited for signals within the budget.
        let got = fences.wait_for(|| Ok(Fence::Pending(FenceId(6))), None);
        assert_eq!(got.unwrap(), (Fence::Pending(FenceId(6)), false));
        fences.signalled(FenceId(6));
        assert_eq!(event(&broker).unwrap(), Event::FenceSignalled { id: 6 });
        assert!(hot(&fences));
        // A refused fence sends what was held meanwhile.
        let refused = || {
            fences.signalled(FenceId(8));
            Err(RenderError::Rejected("no".into()))
        };
        assert!(fences.wait_for(refused, None).is_err());
        assert_eq!(event(&broker).unwrap(), Event::FenceSignalled { id: 8 });
    }

    #[test]
    fn a_fence_whose_signal_did_not_fit_the_held_ones_is_not_waited_for() {
        let (fences, broker) = sink(Duration::from_secs(5), Duration::from_secs(5));
        let many = MAX_HELD as u64 + 1;
        // Its own signal comes last, after the held list is full: it goes out as an event.
        let make = || {
            (1..=many).for_each(|id| fences.signalled(FenceId(id)));
            Ok(Fence::Pending(FenceId(many)))
        };
        let started = Instant::now();
        let got = fences.wait_for(make, None).unwrap();
        assert_eq!(got, (Fence::Pending(FenceId(many)), false));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited the whole budget for a signal already sent"
        );
        let id = |e: Event| match e {
            Event::FenceSignalled { id } => id,
        };
        let mut sent: Vec<u64> = (0..many).map(|_| id(event(&broker).unwrap())).collect();
        sent.sort_unstable();
        assert_eq!(sent, (1..=many).collect::<Vec<u64>>());
    }

    use crate::render::cpus::CpuList;

    /// The broker's end of a request channel with a doorbell, and the worker's.
    fn request_channels() -> (Channel, Channel) {
        let (a, b) = UnixStream::pair().unwrap();
        let (broker_end, theirs) = Doorbell::create().unwrap();
        let worker_end = Doorbell::open(theirs).unwrap();
        (
            Channel::with_doorbell(a, broker_end, Duration::ZERO),
            Channel::with_doorbell(b, worker_end, Duration::ZERO),
        )
    }

    #[test]
    fn a_worker_that_keeps_meeting_the_broker_moves_off_its_cpu_now_and_then() {
        let (broker, requests) = request_channels();
        let wait = Wait::new(&requests, None, Duration::from_millis(1)).unwrap();
        thread::spawn(move || {
            let doorbell = requests.doorbell().unwrap();
            // The broker sends from this thread's CPU and the worker looks from there (again,
            // if the scheduler moved the thread in between).
            let meet = || {
                (0..1000)
                    .find_map(|_| {
                        broker.send(&Request::Capsets, &[]).unwrap();
                        let _: Request = requests.recv().unwrap().0;
                        doorbell.beside_peer().unwrap()
                    })
                    .expect("never beside a broker on the same thread")
            };
            let cpu = meet();
            assert!(!wait.beside_broker(cpu), "moved at the first meeting");
            if CpuList::of_this_thread().unwrap().cpus().len() < 2 {
                assert!(!wait.beside_broker(cpu), "moved with nowhere to go");
                return;
            }
            assert!(
                wait.beside_broker(cpu),
                "stayed at the second meeting in a row"
            );
            // Meeting again at once: it sleeps rather than moving again so soon.
            let cpu = meet();
            assert!(!wait.beside_broker(cpu));
            let last_move = wait.moved.get().unwrap();
            let moved = wait.beside_broker(cpu);
            // Unless the thread was held up past MOVE_EVERY meanwhile.
            let soon = last_move.elapsed() < Wait::MOVE_EVERY;
            assert!(!(moved && soon), "moved twice within MOVE_EVERY");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_worker_that_cannot_keep_away_from_the_broker_spins_beside_it_for_a_while() {
        let (_broker, requests) = request_channels();
        let wait = Wait::new(&requests, None, Duration::from_millis(1)).unwrap();
        let cpu = CpuList::of_this_thread().unwrap().cpus()[0];
        thread::spawn(move || {
            // On one CPU a move has nowhere to go: every wait meets the broker again.
            let here = CpuList::parse(&cpu.to_string()).unwrap();
            here.pin_this_thread().unwrap();
            // Two meetings, a move that cannot happen, then seven within MOVE_EVERY of it.
            let slept = (0..100).take_while(|_| !wait.beside_broker(cpu)).count();
            let gave_up = Instant::now();
            assert!(slept >= 9, "gave up after {slept} waits that slept");
            assert!(slept < 100, "never gave up sleeping beside the broker");
            let spins = wait.beside_broker(cpu);
            // Unless the thread was held up past SPIN_ON meanwhile.
            assert!(
                spins || gave_up.elapsed() >= Wait::SPIN_ON,
                "stopped spinning beside it at once"
            );
            thread::sleep(Wait::SPIN_ON);
            assert!(!wait.beside_broker(cpu), "spun beside it past SPIN_ON");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_worker_on_the_broker_s_cpu_sleeps_for_its_next_request_instead_of_spinning() {
        let (broker, requests) = request_channels();
        // A budget far longer than the wait: only meeting the broker stops the spin.
        let wait = Wait::new(&requests, None, Duration::from_secs(5)).unwrap();
        let cpu = CpuList::of_this_thread().unwrap().cpus()[0];
        let here = CpuList::parse(&cpu.to_string()).unwrap();
        let (broker, here) = (&broker, &here);
        thread::scope(|s| {
            s.spawn(move || {
                here.pin_this_thread().unwrap();
                broker.send(&Request::Capsets, &[]).unwrap();
                let _: Request = requests.recv().unwrap().0;
                // The next request comes from the same CPU, 50 ms later.
                let sender = s.spawn(move || {
                    here.pin_this_thread().unwrap();
                    thread::sleep(Duration::from_millis(50));
                    broker.send(&Request::Capsets, &[]).unwrap();
                });
                let burnt = crate::render::channel::thread_cpu();
                assert!(matches!(
                    wait.next(&requests, Instant::now()),
                    Ok(Ready::Request)
                ));
                let burnt = crate::render::channel::thread_cpu() - burnt;
                sender.join().unwrap();
                assert!(burnt < Duration::from_millis(25), "spun {burnt:?}");
            });
        });
    }

    #[test]
    fn renderer_work_between_requests_does_not_start_a_new_spin() {
        let (broker, requests) = request_channels();
        let fences = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let wait = Wait::new(
            &requests,
            Some(fences.as_raw_fd()),
            Duration::from_millis(1),
        )
        .unwrap();
        // The renderer signals every 2 ms for 40 ms, then a request comes.
        let ticker = {
            let fences = fences.try_clone().unwrap();
            thread::spawn(move || {
                for _ in 0..20 {
                    thread::sleep(Duration::from_millis(2));
                    fences.write(1).unwrap();
                }
                broker.send(&Request::Capsets, &[]).unwrap();
                broker
            })
        };
        let (since, cpu) = (Instant::now(), thread_cpu());
        let mut renderer_turns = 0;
        while let Ready::Renderer = wait.next(&requests, since).unwrap() {
            renderer_turns += 1;
            let _ = fences.read();
        }
        let cpu = thread_cpu() - cpu;
        assert!(renderer_turns >= 10, "{renderer_turns} renderer turns");
        // One budget spun in all (and the looks at the signals), not one per signal.
        assert!(
            cpu < Duration::from_millis(8),
            "spun {cpu:?} in {renderer_turns} turns"
        );
        assert_eq!(
            requests.recv_waiting::<Request>().unwrap().0,
            Request::Capsets
        );
        // A 40 ms wait for the request turned spinning off.
        assert_eq!(wait.spin.until(Instant::now()), None);
        drop(ticker.join().unwrap());
    }
}
