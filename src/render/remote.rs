//! A VM's renderer in a render worker process (see `worker`): the broker side. Every call is
//! one request and one reply on the worker's channel, bounded by the worker timeout; fence
//! signals come on a second channel, read on the VM's queue thread (`Renderer::poll`), which
//! answers the fenced requests right away.
//!
//! A call whose answer is only "done" (a transfer, an unfenced submit, an attach) is posted:
//! it returns once the request is sent, and its reply is read before the next request goes
//! out (`Worker::owed`). The worker does requests in order, so whatever the guest asks next,
//! a fence or a readback included, comes after it. virtio-gpu allows this: only a fenced
//! request must be done before it is answered. A posted request the renderer refuses is
//! logged (rate-limited, the VM's budget) and counted, and the guest has had its answer.
//!
//! A worker runs GPU driver code for a guest: it is trusted no more than the guest. A worker
//! that dies, stops answering or says something it should not is killed, named in the log, and
//! the VM told through `on_death` (the transport then disconnects it). Other VMs never notice.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use log::{error, info, warn};
use vgpud_protocol::worker::{Event, FenceAfter, Region, Reply, Request, MAILBOX_BYTES};
use vgpud_protocol::{Rect, ResourceCreate3d, Transfer3d};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::channel::{Channel, Doorbell, Mailbox};
use super::worker::{
    DOORBELL_BELL_FD, DOORBELL_PAGE_FD, DOORBELL_RING_FD, EVENT_FD, MAILBOX_FD, REQUEST_FD,
};
use super::RendererKind;
use crate::device::memory::HostRange;
use crate::device::{
    band_bytes, bounded, BlobArgs, CapsetInfo, DeathNotice, ExportedBlob, RenderError, Renderer,
};
use crate::fences::{Fence, FenceSink};
use crate::guestlog::GuestLog;
use crate::ids::{FenceId, RendererCtxId as Ctx, RendererResId as Res};
use crate::stats;
use crate::sync::lock;

pub struct RemoteRenderer {
    inner: Arc<Inner>,
}

/// How long a worker may take to answer, and how long both ends spin before they sleep.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub spin: Duration,
}

struct Inner {
    kind: RendererKind,
    vm: String,
    /// The VM's rate-limited warnings (refusals of posted requests).
    log: GuestLog,
    limits: Limits,
    capsets: Vec<CapsetInfo>,
    next_ctx: AtomicU32,
    state: Mutex<State>,
    /// Where fence signals go: the VM's fence inbox (one VM per worker).
    sink: Weak<dyn FenceSink>,
    on_death: Mutex<Option<DeathNotice>>,
    /// Set when the worker failed; `dying` is held until the VM has been told, so that no
    /// caller returns (and no answer reaches the guest) before the VM is being disconnected.
    dead: AtomicBool,
    dying: Mutex<()>,
    /// The thread telling the VM: calls it makes meanwhile (the VM dropped, its device freeing
    /// what it held) must not wait for itself.
    teller: Mutex<Option<thread::ThreadId>>,
    /// The running worker's pid (0: none), for a kill that cannot wait for the state lock (a
    /// call may hold it, waiting on the very worker). Cleared, under this lock, before the
    /// worker is reaped, so a pid is never signalled after it could have been reused.
    killable: Mutex<u32>,
    /// The running worker's pid (0: none), for whoever shows it (the VM registry).
    shown_pid: Arc<AtomicU32>,
    /// Fences asked for and not yet signalled: while there are some, the worker must show it
    /// is alive (see `Events`).
    pending: AtomicU64,
    events: Events,
}

/// Most fence signals taken per look at the event socket.
const SIGNALS_PER_POLL: usize = 256;

/// Tokens in `Events::set`.
const SIGNALS: u64 = 0;
const TICK: u64 = 1;

/// What the VM's queue thread watches for this renderer (`Renderer::poll_fd`): the worker's
/// event channel, and a timer that ticks while fences or a posted request's reply are
/// outstanding, so that a worker that stops signalling them is asked whether it is alive. Slow work is not a hang: a worker that
/// answers is left alone however long its fences take.
struct Events {
    set: Epoll,
    channel: Mutex<Option<EventReader>>,
    alive: Mutex<TimerFd>,
    armed: AtomicBool,
    /// Fence signals received, and how many there were at the last tick.
    signalled: AtomicU64,
    at_last_tick: AtomicU64,
}

impl Events {
    fn new() -> io::Result<Events> {
        let set = Epoll::new()?;
        let alive = TimerFd::new()?;
        // Read only when the set says it ticked; never block the queue thread on it.
        // SAFETY: F_SETFL on a descriptor we own; no memory is passed.
        if unsafe { libc::fcntl(alive.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let ev = EpollEvent::new(EventSet::IN, TICK);
        set.ctl(ControlOperation::Add, alive.as_raw_fd(), ev)?;
        Ok(Events {
            set,
            channel: Mutex::new(None),
            alive: Mutex::new(alive),
            armed: AtomicBool::new(false),
            signalled: AtomicU64::new(0),
            at_last_tick: AtomicU64::new(0),
        })
    }

    /// Watches a new worker's event socket.
    fn attach(&self, socket: UnixStream) -> io::Result<()> {
        socket.set_nonblocking(true)?;
        let ev = EpollEvent::new(EventSet::IN, SIGNALS);
        self.set
            .ctl(ControlOperation::Add, socket.as_raw_fd(), ev)?;
        *lock(&self.channel) = Some(EventReader {
            socket,
            buf: Vec::new(),
        });
        Ok(())
    }

    /// Stops watching the event socket of a worker that failed (it would read as closed for
    /// ever). The socket itself stays open until the renderer goes: a call may still poll it.
    fn detach(&self) {
        if let Some(reader) = lock(&self.channel).as_ref() {
            let fd = reader.socket.as_raw_fd();
            let _ = (self.set).ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        self.disarm();
    }

    /// Ticks every `limit` from now on, until disarmed.
    fn arm(&self, limit: Duration) {
        if !self.armed.swap(true, Ordering::AcqRel) {
            let _ = lock(&self.alive).reset(limit, Some(limit));
        }
    }

    fn disarm(&self) {
        self.armed.store(false, Ordering::Release);
        let _ = lock(&self.alive).reset(Duration::ZERO, None);
    }

    /// The event socket's descriptor, once a worker runs.
    fn fd(&self) -> Option<RawFd> {
        lock(&self.channel).as_ref().map(|r| r.socket.as_raw_fd())
    }

    /// The next whole event if one has arrived; never waits.
    fn next(&self) -> Option<io::Result<Event>> {
        lock(&self.channel).as_mut()?.next()
    }
}

/// The broker's end of a worker's event socket, read without ever blocking: bytes are gathered
/// until a whole frame is there (a worker that sends a frame a byte at a time stalls nobody).
struct EventReader {
    socket: UnixStream,
    buf: Vec<u8>,
}

/// The largest event frame accepted (an event is a few dozen bytes).
const MAX_EVENT_FRAME: usize = 4096;

impl EventReader {
    fn next(&mut self) -> Option<io::Result<Event>> {
        loop {
            if let Some(event) = self.take_frame() {
                return Some(event);
            }
            let mut chunk = [0u8; MAX_EVENT_FRAME];
            // A plain read: descriptors a worker may have attached are discarded by the kernel.
            match (&self.socket).read(&mut chunk) {
                Ok(0) => return Some(Err(io::Error::other("event socket closed"))),
                Ok(n) => self
                    .buf
                    .extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// A whole frame off the front of the buffer, decoded; None if it has not all arrived.
    fn take_frame(&mut self) -> Option<io::Result<Event>> {
        let header: [u8; 4] = self.buf.get(..4)?.try_into().ok()?;
        let len = u32::from_le_bytes(header) as usize;
        if len > MAX_EVENT_FRAME {
            return Some(Err(io::Error::other(format!(
                "an event frame of {len} bytes"
            ))));
        }
        let body = self.buf.get(4..4 + len)?;
        let event = vgpud_protocol::worker::decode(body).map_err(io::Error::other);
        self.buf.drain(..4 + len);
        Some(event)
    }
}

#[derive(Default)]
struct State {
    worker: Option<Worker>,
    /// The VM's memory table, sent to each worker before anything else.
    table: Option<(Vec<Region>, Vec<Arc<File>>)>,
}

struct Worker {
    child: Child,
    requests: Channel,
    mailbox: Mailbox,
    /// The posted request whose reply has not been read yet. Its reply is read before anything
    /// else is sent or the mailbox written: the worker may still be reading the mailbox for it.
    owed_reply: Option<Owed>,
}

/// A posted request: its name for the log, and when it was sent (its timeout counts from then).
struct Owed {
    what: &'static str,
    sent: Instant,
}

fn rejected(why: impl Into<String>) -> RenderError {
    RenderError::Rejected(why.into())
}

/// What a worker's `Failed` means.
fn refusal(out_of_memory: bool, why: String) -> RenderError {
    if out_of_memory {
        RenderError::OutOfMemory
    } else {
        RenderError::Rejected(why)
    }
}

/// What a worker of `kind` offers, learnt from a short-lived worker at start-up, so that the
/// broker itself never runs GPU driver code.
pub fn probe(kind: RendererKind, timeout: Duration) -> io::Result<Vec<CapsetInfo>> {
    let limits = Limits {
        timeout,
        spin: Duration::ZERO,
    };
    let (worker, _events) = spawn(kind, "probe", limits)?;
    worker.requests.send(&Request::Capsets, &[])?;
    let (reply, _) = worker.requests.recv::<Reply>()?;
    let caps = match reply {
        Reply::Capsets(caps) => caps
            .into_iter()
            .map(|(id, max_version, max_size)| CapsetInfo {
                id,
                max_version,
                max_size,
            })
            .collect(),
        other => return Err(io::Error::other(format!("unexpected reply {other:?}"))),
    };
    end(worker);
    Ok(caps)
}

/// Starts a worker: fork+exec of this very binary, with the channels, the mailbox and the
/// doorbell as descriptors 3 to 8 (see `worker`) and every other descriptor of the broker closed
/// (they include other VMs' guest memory).
fn spawn(kind: RendererKind, vm: &str, limits: Limits) -> io::Result<(Worker, UnixStream)> {
    let (requests, theirs_req) = UnixStream::pair()?;
    let (events, theirs_ev) = UnixStream::pair()?;
    let mailbox = Mailbox::create()?;
    let (doorbell, theirs_bell) = Doorbell::create()?;
    let kind_name = kind
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .ok_or_else(|| io::Error::other("renderer has no name"))?;
    let mut cmd = Command::new("/proc/self/exe");
    let spin = format!("{}us", limits.spin.as_micros());
    cmd.args(["render-worker", "--renderer", &kind_name, "--vm", vm])
        .args(["--spin", &spin])
        .stdin(Stdio::null());
    if let Some(node) = super::render_node() {
        cmd.arg("--render-node").arg(node);
    }
    if let Some(cpus) = super::worker_cpus() {
        cmd.arg("--cpus").arg(cpus.to_string());
    }
    let fds = [
        theirs_req.as_raw_fd(),
        theirs_ev.as_raw_fd(),
        mailbox.file().as_raw_fd(),
        theirs_bell.page.as_raw_fd(),
        theirs_bell.bell.as_raw_fd(),
        theirs_bell.ring.as_raw_fd(),
    ];
    // SAFETY: only async-signal-safe calls (fcntl, dup2, close_range) between fork and exec.
    unsafe { cmd.pre_exec(move || place_fds(fds)) };
    let child = cmd.spawn()?;
    drop((theirs_req, theirs_ev, theirs_bell));
    let worker = Worker {
        child,
        requests: Channel::with_doorbell(requests, doorbell, limits.spin)
            .accepting_up_to(vgpud_protocol::worker::MAX_REPLY_FRAME),
        mailbox,
        owed_reply: None,
    };
    worker.requests.set_timeout(Some(limits.timeout))?;
    Ok((worker, events))
}

/// In the child: `fds` become 3 to 8 (`TARGETS`), everything from 9 on is closed.
fn place_fds(fds: [RawFd; 6]) -> io::Result<()> {
    const TARGETS: [RawFd; 6] = [
        REQUEST_FD,
        EVENT_FD,
        MAILBOX_FD,
        DOORBELL_PAGE_FD,
        DOORBELL_BELL_FD,
        DOORBELL_RING_FD,
    ];
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // Out of the way first, so that no source is overwritten by an earlier dup2.
    let mut high = [0; 6];
    for (h, fd) in high.iter_mut().zip(fds) {
        // SAFETY: duplicating a descriptor we hold.
        *h = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64) })?;
    }
    for (target, h) in TARGETS.into_iter().zip(high) {
        // SAFETY: dup2 onto a descriptor number this process is about to give up anyway.
        check(unsafe { libc::dup2(h, target) })?;
    }
    // SAFETY: closing descriptors the exec'd worker must not have.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 9u32, u32::MAX, 0u32) };
    if closed != 0 {
        return Err(io::Error::last_os_error());
    }
    // The broker blocks its stop and reload signals (they are taken by a thread of its own,
    // crate::signals); a blocked mask survives exec, and the worker must die of them as usual.
    // SAFETY: sigemptyset and sigprocmask are async-signal-safe and touch only `none`.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        check(libc::sigprocmask(
            libc::SIG_SETMASK,
            &none,
            std::ptr::null_mut(),
        ))?;
    }
    Ok(())
}

/// Ends a worker: closing its channel asks it to exit; it is killed if it does not, and reaped.
fn end(mut worker: Worker) {
    worker.requests.shutdown();
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = worker.child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = worker.child.kill();
    let _ = worker.child.wait();
}

impl RemoteRenderer {
    /// A renderer for VM `vm` whose worker is started at the first call that needs it; fence
    /// signals go to `sink`, and the worker's pid is kept in `pid` while it runs.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: RendererKind,
        vm: &str,
        log: GuestLog,
        limits: Limits,
        capsets: Vec<CapsetInfo>,
        sink: Weak<dyn FenceSink>,
        pid: Arc<AtomicU32>,
    ) -> io::Result<Self> {
        Ok(RemoteRenderer {
            inner: Arc::new(Inner {
                kind,
                vm: vm.to_string(),
                log,
                limits,
                capsets,
                next_ctx: AtomicU32::new(1),
                state: Mutex::default(),
                sink,
                on_death: Mutex::new(None),
                dead: AtomicBool::new(false),
                dying: Mutex::new(()),
                teller: Mutex::new(None),
                killable: Mutex::new(0),
                shown_pid: pid,
                pending: AtomicU64::new(0),
                events: Events::new()?,
            }),
        })
    }
}

impl RemoteRenderer {
    /// The fence a worker made, counted as outstanding before it was asked for.
    fn fence_from(&self, reply: Reply) -> Result<Fence, RenderError> {
        match reply {
            Reply::Fence { id } => Ok(Fence::Pending(FenceId(id))),
            Reply::FenceDone { id } => {
                // Pending all the same, and signalled now: the device parks the answer before
                // it takes the signals, so the answer still waits for the fences before it on
                // its timeline.
                if !self.inner.signal(FenceId(id)) {
                    return Err(self.inner.unexpected(Reply::FenceDone { id }));
                }
                stats::bump(&stats::DAEMON.fences_in_reply);
                Ok(Fence::Pending(FenceId(id)))
            }
            Reply::Ok => {
                // Its signal may have come (and been counted) while it answered: a worker that
                // says both is lying, and would otherwise unbound what it may signal.
                if !self.inner.uncount() {
                    return Err(self.inner.unexpected(Reply::Ok));
                }
                Ok(Fence::Signalled)
            }
            other => {
                self.inner.uncount();
                Err(self.inner.unexpected(other))
            }
        }
    }
}

impl RemoteRenderer {
    /// A request that makes a fence after its work: `Ok` with the fence, or the work's error
    /// (then no fence was made).
    fn fenced_call(
        &self,
        request: &Request,
        bulk: Option<&[u8]>,
    ) -> Result<Result<Fence, RenderError>, RenderError> {
        self.inner.pending.fetch_add(1, Ordering::AcqRel);
        self.inner.events.arm(self.inner.limits.timeout);
        match self.inner.call(request, &[], bulk) {
            Ok((reply, _)) => Ok(self.fence_from(reply)),
            Err(e) => {
                // The work was refused (or the worker is gone): no fence was made.
                self.inner.uncount();
                Err(e)
            }
        }
    }
}

impl Drop for RemoteRenderer {
    fn drop(&mut self) {
        // The VM is gone: its worker goes too, and no death is reported for it.
        *lock(&self.inner.on_death) = None;
        self.inner.dead.store(true, Ordering::Release);
        if let Some(worker) = lock(&self.inner.state).worker.take() {
            *lock(&self.inner.killable) = 0;
            self.inner.shown_pid.store(0, Ordering::Relaxed);
            let pid = worker.child.id();
            end(worker);
            info!(
                "vm={} event=worker-end pid={pid} reason=vm-gone fences_pending={}",
                self.inner.vm,
                self.inner.pending.load(Ordering::Acquire)
            );
        }
    }
}

impl Inner {
    /// One request and its reply (and the descriptor that came with it, if any).
    fn call(
        self: &Arc<Self>,
        request: &Request,
        fds: &[RawFd],
        bulk: Option<&[u8]>,
    ) -> Result<(Reply, Option<File>), RenderError> {
        let (reply, file) = self
            .exchange(request, fds, bulk, None)?
            .ok_or(RenderError::Gone)?;
        match reply {
            Reply::Failed { out_of_memory, why } => Err(refusal(out_of_memory, why)),
            reply => Ok((reply, file)),
        }
    }

    /// Posts `request` (named `what` for the log), whose reply must be `Ok` or `Failed`: see
    /// the module's comment. Fails only when the worker is gone.
    fn post(
        self: &Arc<Self>,
        request: &Request,
        bulk: Option<&[u8]>,
        what: &'static str,
    ) -> Result<(), RenderError> {
        self.exchange(request, &[], bulk, Some(what)).map(|_| ())
    }

    /// Sends `request` once the reply a posted request owes is read (its refusal logged:
    /// `late_refusal`); then, unless `posted` names it, waits for its reply (None if posted).
    fn exchange(
        self: &Arc<Self>,
        request: &Request,
        fds: &[RawFd],
        bulk: Option<&[u8]>,
        posted: Option<&'static str>,
    ) -> Result<Option<(Reply, Option<File>)>, RenderError> {
        self.with_worker(|worker, trouble| {
            if let Some((what, refused)) = self.settle_owed(worker, trouble)? {
                self.late_refusal(what, &refused);
            }
            if let Some(bytes) = bulk {
                worker.mailbox.write(bytes)?;
            }
            worker.requests.send(request, fds)?;
            if let Some(what) = posted {
                worker.owed_reply = Some(Owed {
                    what,
                    sent: Instant::now(),
                });
                // A posted request that never finishes is found by the alive timer.
                self.events.arm(self.limits.timeout);
                return Ok(None);
            }
            let (reply, files) = self.receive(worker, Instant::now(), trouble)?;
            if files.len() > 1 {
                return Err(io::Error::other("more descriptors than asked for"));
            }
            Ok(Some((reply, files.into_iter().next())))
        })
    }

    /// Reads the reply a posted request owes, if one does, and returns its refusal: see
    /// `Renderer::settle`.
    fn settle(self: &Arc<Self>) -> Result<(), RenderError> {
        match self.with_worker(|worker, trouble| self.settle_owed(worker, trouble))? {
            Some((_, refused)) => Err(refused),
            None => Ok(()),
        }
    }

    /// Runs `talk` with the running worker (started if there is none) under the state lock. A
    /// worker that fails it (an I/O error, a timeout, or trouble on the event channel, which
    /// `talk` is given to describe) is ended, and the caller gets `Gone`.
    fn with_worker<T>(
        self: &Arc<Self>,
        talk: impl FnOnce(&mut Worker, &mut Option<String>) -> io::Result<T>,
    ) -> Result<T, RenderError> {
        if self.dead.load(Ordering::Acquire) {
            // Returns only once the VM has been told (see `die`).
            if *lock(&self.teller) != Some(thread::current().id()) {
                drop(lock(&self.dying));
            }
            return Err(RenderError::Gone);
        }
        let mut trouble = None;
        let mut state = lock(&self.state);
        let result = (self.ensure_worker(&mut state)).and_then(|worker| talk(worker, &mut trouble));
        let why = match (trouble, result) {
            (Some(why), _) => why,
            (None, Ok(answer)) => return Ok(answer),
            (None, Err(e)) => {
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) {
                    stats::bump(&stats::DAEMON.watchdog_kills);
                }
                format!("render worker of {} failed: {e}", self.vm)
            }
        };
        drop(state);
        self.die(&why);
        Err(RenderError::Gone)
    }

    /// The worker's next reply, to a request sent at `sent` (the worker timeout counts from
    /// then). Fence signals are taken while waiting: a worker must never block on a full event
    /// channel while it owes a reply. A worker that broke the event protocol meanwhile is
    /// described in `trouble`.
    fn receive(
        &self,
        worker: &Worker,
        sent: Instant,
        trouble: &mut Option<String>,
    ) -> io::Result<(Reply, Vec<File>)> {
        let mut serve = || match self.take_signals_now(trouble) {
            false if trouble.is_some() => Err(io::Error::other("broke the event protocol")),
            go_on => Ok(go_on),
        };
        let side =
            (self.events.fd()).map(|fd| (fd, &mut serve as &mut dyn FnMut() -> io::Result<bool>));
        worker.requests.recv_serving_since::<Reply>(side, sent)
    }

    /// Reads the reply the posted request owes, if one does: Some with its refusal if the
    /// renderer refused it. Any answer but `Ok` or `Failed` is a lie.
    fn settle_owed(
        &self,
        worker: &mut Worker,
        trouble: &mut Option<String>,
    ) -> io::Result<Option<(&'static str, RenderError)>> {
        let Some(Owed { what, sent }) = worker.owed_reply.take() else {
            return Ok(None);
        };
        // Usually the worker is done by now: its reply is in the slot, and nothing needs waiting.
        let reply = match worker.requests.try_recv()? {
            Some(reply) => (reply, Vec::new()),
            None => self.receive(worker, sent, trouble)?,
        };
        match reply {
            (Reply::Ok, files) if files.is_empty() => Ok(None),
            (Reply::Failed { out_of_memory, why }, files) if files.is_empty() => {
                Ok(Some((what, refusal(out_of_memory, why))))
            }
            (other, _) => Err(io::Error::other(format!(
                "unexpected reply {other:?} to {what}"
            ))),
        }
    }

    /// A posted request the renderer refused after its answer went to the guest: the guest's
    /// to have caused, so it is logged from the VM's budget, and counted.
    fn late_refusal(&self, what: &str, refused: &RenderError) {
        stats::bump(&stats::DAEMON.late_refusals);
        let why = bounded(refused);
        (self.log).warn(format_args!("{what} refused after it was answered: {why}"));
    }

    /// The running worker, started (and given the memory table) if there is none yet.
    fn ensure_worker<'s>(self: &Arc<Self>, state: &'s mut State) -> io::Result<&'s mut Worker> {
        // A worker that failed is not replaced: the VM is being disconnected.
        if self.dead.load(Ordering::Acquire) {
            return Err(io::Error::other("the render worker failed"));
        }
        if state.worker.is_none() {
            let (worker, events) = spawn(self.kind, &self.vm, self.limits)?;
            stats::bump(&stats::DAEMON.worker_starts);
            info!(
                "vm={} event=worker-start pid={} renderer={:?}",
                self.vm,
                worker.child.id(),
                self.kind
            );
            let set_up = || -> io::Result<()> {
                if let Some((regions, files)) = &state.table {
                    let fds: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
                    worker
                        .requests
                        .send(&Request::MemoryTable(regions.clone()), &fds)?;
                    expect_ok(worker.requests.recv::<Reply>()?.0)?;
                }
                self.events.attach(events)
            };
            if let Err(e) = set_up() {
                // Not left running with the guest's memory mapped.
                let mut worker = worker;
                let _ = worker.child.kill();
                let _ = worker.child.wait();
                return Err(e);
            }
            *lock(&self.killable) = worker.child.id();
            self.shown_pid.store(worker.child.id(), Ordering::Relaxed);
            state.worker = Some(worker);
        }
        state
            .worker
            .as_mut()
            .ok_or_else(|| io::Error::other("no worker"))
    }

    /// The worker is gone for good: killed, reaped, logged, and the VM told (once).
    fn die(&self, why: &str) {
        let _dying = lock(&self.dying);
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        stats::bump(&stats::DAEMON.worker_failures);
        self.events.detach();
        *lock(&self.teller) = Some(thread::current().id());
        // Killed first: a call may hold the state lock while it waits on this worker.
        {
            // Held while signalling: no reaper can clear it (and reap) meanwhile.
            let pid = lock(&self.killable);
            if let Ok(pid) = libc::pid_t::try_from(*pid) {
                if pid > 0 {
                    // SAFETY: kill only sends a signal, to our own unreaped child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if let Some(mut worker) = lock(&self.state).worker.take() {
            *lock(&self.killable) = 0;
            self.shown_pid.store(0, Ordering::Relaxed);
            let pid = worker.child.id();
            let _ = worker.child.kill();
            let status = match worker.child.wait() {
                Ok(status) => status.to_string(),
                Err(e) => e.to_string(),
            };
            error!(
                "vm={} event=worker-end pid={pid} status=\"{status}\" reason=\"{why}\"",
                self.vm
            );
        }
        // Out of the lock first: the notice may drop the VM, and with it this renderer, whose
        // Drop takes that lock.
        let notice = lock(&self.on_death).take();
        if let Some(notice) = notice {
            notice(why);
        }
    }

    fn ok(self: &Arc<Self>, request: &Request) -> Result<(), RenderError> {
        match self.call(request, &[], None)?.0 {
            Reply::Ok => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    /// A reply that does not answer the request: the worker is not to be trusted any more.
    fn unexpected(&self, reply: Reply) -> RenderError {
        self.die(&format!("unexpected reply {reply:?}"));
        RenderError::Gone
    }

    /// A `Data` answer of exactly `out.len()` bytes, copied into `out`. The mailbox is read
    /// after `call` let go of the state lock: its callers hold the VM's device, so no other
    /// request of this VM (the only kind that writes the mailbox) can come in between.
    fn data_into(self: &Arc<Self>, request: &Request, out: &mut [u8]) -> Result<(), RenderError> {
        match self.call(request, &[], None)?.0 {
            Reply::Data { len } if len == out.len() as u64 => {
                let state = lock(&self.state);
                let worker = state.worker.as_ref().ok_or(RenderError::Gone)?;
                (worker.mailbox.read_into(out)).map_err(|e| rejected(e.to_string()))
            }
            other => Err(self.unexpected(other)),
        }
    }

    /// `len` bytes of the mailbox, checked against its size.
    fn data(self: &Arc<Self>, request: &Request) -> Result<Vec<u8>, RenderError> {
        match self.call(request, &[], None)?.0 {
            Reply::Data { len } if len <= MAILBOX_BYTES => {
                let state = lock(&self.state);
                let worker = state.worker.as_ref().ok_or(RenderError::Gone)?;
                worker
                    .mailbox
                    .read(len)
                    .map_err(|e| rejected(e.to_string()))
            }
            other => Err(self.unexpected(other)),
        }
    }
}

fn expect_ok(reply: Reply) -> io::Result<()> {
    match reply {
        Reply::Ok => Ok(()),
        other => Err(io::Error::other(format!("unexpected reply {other:?}"))),
    }
}

impl Inner {
    /// One outstanding fence fewer (one asked for was not made, or was signalled at once);
    /// false if none was outstanding.
    fn uncount(&self) -> bool {
        (self.pending)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Passes a fence signal on to the VM; false if no fence was outstanding. Never more
    /// signals than fences asked for: what a worker can make the broker queue stays bounded by
    /// what the guest asked.
    fn signal(&self, fence: FenceId) -> bool {
        if !self.uncount() {
            return false;
        }
        self.events.signalled.fetch_add(1, Ordering::AcqRel);
        if let Some(sink) = self.sink.upgrade() {
            sink.signalled(fence);
        }
        true
    }

    /// What the queue thread does when `Events::set` is readable: forward the fence signals
    /// that came, or see whether the worker is alive.
    fn poll(self: &Arc<Self>) {
        let mut ready = [EpollEvent::default(); 2];
        let n = self.events.set.wait(0, &mut ready).unwrap_or(0);
        for event in ready.iter().take(n) {
            match event.data() {
                SIGNALS => self.take_signals(),
                _ => self.tick(),
            }
        }
    }

    fn take_signals(self: &Arc<Self>) {
        let mut trouble = None;
        self.take_signals_now(&mut trouble);
        if let Some(why) = trouble {
            self.die(&why);
        }
    }

    /// Forwards the fence signals waiting now. A worker that broke the protocol is described in
    /// `trouble` (for the caller to end it, out of its locks); returns whether to go on.
    fn take_signals_now(&self, trouble: &mut Option<String>) -> bool {
        // A bounded batch per call: the descriptor stays readable for the rest, and the queue
        // thread gets to answer in between.
        for _ in 0..SIGNALS_PER_POLL {
            let Some(got) = self.events.next() else {
                break;
            };
            if self.dead.load(Ordering::Acquire) {
                return false;
            }
            match got {
                Ok(Event::FenceSignalled { id }) => {
                    if !self.signal(FenceId(id)) {
                        *trouble = Some(format!(
                            "signalled fence {id}, which it was never asked for"
                        ));
                        return false;
                    }
                }
                Err(e) => {
                    *trouble = Some(format!("event channel: {e}"));
                    return false;
                }
            }
        }
        true
    }

    /// A tick of the alive timer: with fences outstanding and none signalled since the last
    /// tick, or a posted request's reply not read yet, the worker must answer (a call, which
    /// reads that reply first, is bounded by the worker timeout).
    fn tick(self: &Arc<Self>) {
        // Readable, so this does not wait.
        let _ = lock(&self.events.alive).wait();
        let owed = lock(&self.state)
            .worker
            .as_ref()
            .is_some_and(|w| w.owed_reply.is_some());
        if self.pending.load(Ordering::Acquire) == 0 && !owed {
            self.events.disarm();
            return;
        }
        let now = self.events.signalled.load(Ordering::Acquire);
        let signalling = self.events.at_last_tick.swap(now, Ordering::AcqRel) != now;
        if signalling && !owed {
            return;
        }
        // Alive means its renderer answers (Capsets goes through it).
        if let Err(e) = self.call(&Request::Capsets, &[], None) {
            warn!("{}: render worker not answering: {e}", self.vm);
        }
    }
}

fn ranges(pages: &[HostRange]) -> Vec<(u64, u64)> {
    pages.iter().map(|r| (r.gpa, r.len as u64)).collect()
}

impl Renderer for RemoteRenderer {
    fn resource_id_for(&self, guest_id: u32) -> Option<Res> {
        // One VM per worker: its command streams name resources by the guest's own ids.
        Some(Res(guest_id))
    }

    fn create_2d(&self, id: Res, width: u32, height: u32, format: u32) -> Result<(), RenderError> {
        let request = Request::Create2d {
            id: id.0,
            width,
            height,
            format,
        };
        self.inner.post(&request, None, "RESOURCE_CREATE_2D")
    }

    fn unref(&self, id: Res) {
        let _ = (self.inner).post(&Request::Unref { id: id.0 }, None, "RESOURCE_UNREF");
    }

    fn attach_backing(&self, id: Res, pages: Vec<HostRange>) -> Result<(), RenderError> {
        let request = Request::AttachBacking {
            id: id.0,
            ranges: ranges(&pages),
        };
        self.inner.post(&request, None, "RESOURCE_ATTACH_BACKING")
    }

    fn detach_backing(&self, id: Res) {
        let request = Request::DetachBacking { id: id.0 };
        let _ = self.inner.post(&request, None, "RESOURCE_DETACH_BACKING");
    }

    fn transfer_to_host_2d(
        &self,
        id: Res,
        width: u32,
        rect: Rect,
        offset: u64,
    ) -> Result<(), RenderError> {
        let request = Request::TransferToHost2d {
            id: id.0,
            width,
            rect,
            offset,
        };
        self.inner.post(&request, None, "TRANSFER_TO_HOST_2D")
    }

    fn read_pixels(&self, id: Res, rect: Rect) -> Result<Vec<u8>, RenderError> {
        let pixels = self.inner.data(&Request::ReadPixels { id: id.0, rect })?;
        let want = rect.width as usize * rect.height as usize * 4;
        if pixels.len() != want {
            return Err(self.inner.unexpected(Reply::Data {
                len: pixels.len() as u64,
            }));
        }
        Ok(pixels)
    }

    fn read_pixels_into(&self, id: Res, rect: Rect, out: &mut [u8]) -> Result<(), RenderError> {
        if band_bytes(rect) != out.len() as u64 {
            return Err(RenderError::Rejected("pixels of another size".into()));
        }
        (self.inner).data_into(&Request::ReadPixels { id: id.0, rect }, out)
    }

    fn capsets(&self) -> Vec<CapsetInfo> {
        self.inner.capsets.clone()
    }

    fn capset(&self, id: u32, version: u32) -> Result<Vec<u8>, RenderError> {
        let data = self.inner.data(&Request::Capset { id, version })?;
        // No larger than the capset was said to be at start-up.
        let max = self
            .inner
            .capsets
            .iter()
            .find(|c| c.id == id)
            .map_or(0, |c| c.max_size as usize);
        if data.len() > max {
            return Err(self.inner.unexpected(Reply::Data {
                len: data.len() as u64,
            }));
        }
        Ok(data)
    }

    fn alloc_ctx_id(&self) -> Option<Ctx> {
        self.inner
            .next_ctx
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |id| id.checked_add(1))
            .ok()
            .map(Ctx)
    }

    fn create_3d(&self, id: Res, args: &ResourceCreate3d) -> Result<(), RenderError> {
        let request = Request::Create3d {
            id: id.0,
            args: *args,
        };
        self.inner.post(&request, None, "RESOURCE_CREATE_3D")
    }

    fn create_context(&self, ctx: Ctx, context_init: u32, name: &str) -> Result<(), RenderError> {
        self.inner.ok(&Request::CreateContext {
            ctx: ctx.0,
            context_init,
            name: name.chars().take(64).collect(),
        })
    }

    fn destroy_context(&self, ctx: Ctx) {
        let request = Request::DestroyContext { ctx: ctx.0 };
        let _ = self.inner.post(&request, None, "CTX_DESTROY");
    }

    fn attach_to_context(&self, ctx: Ctx, id: Res) -> Result<(), RenderError> {
        let request = Request::AttachToContext {
            ctx: ctx.0,
            id: id.0,
        };
        self.inner.post(&request, None, "CTX_ATTACH_RESOURCE")
    }

    fn detach_from_context(&self, ctx: Ctx, id: Res) {
        let request = Request::DetachFromContext {
            ctx: ctx.0,
            id: id.0,
        };
        let _ = self.inner.post(&request, None, "CTX_DETACH_RESOURCE");
    }

    fn transfer_to_host_3d(&self, ctx: Ctx, id: Res, t: &Transfer3d) -> Result<(), RenderError> {
        let request = Request::Transfer3d {
            ctx: ctx.0,
            id: id.0,
            to_host: true,
            transfer: *t,
            fence: None,
        };
        self.inner.post(&request, None, "TRANSFER_TO_HOST_3D")
    }

    fn transfer_from_host_3d(&self, ctx: Ctx, id: Res, t: &Transfer3d) -> Result<(), RenderError> {
        let request = Request::Transfer3d {
            ctx: ctx.0,
            id: id.0,
            to_host: false,
            transfer: *t,
            fence: None,
        };
        self.inner.post(&request, None, "TRANSFER_FROM_HOST_3D")
    }

    fn submit_3d(&self, ctx: Ctx, commands: Vec<u8>) -> Result<(), RenderError> {
        let request = Request::Submit3d {
            ctx: ctx.0,
            len: commands.len() as u64,
            fence: None,
        };
        (self.inner).post(&request, Some(&commands), "SUBMIT_3D")
    }

    fn submit_3d_fenced(
        &self,
        ctx: Ctx,
        commands: Vec<u8>,
        ring: Option<u8>,
    ) -> Result<Result<Fence, RenderError>, RenderError> {
        let request = Request::Submit3d {
            ctx: ctx.0,
            len: commands.len() as u64,
            fence: Some(FenceAfter { ring }),
        };
        self.fenced_call(&request, Some(&commands))
    }

    fn transfer_3d_fenced(
        &self,
        ctx: Ctx,
        id: Res,
        t: &Transfer3d,
        to_host: bool,
        ring: Option<u8>,
    ) -> Result<Result<Fence, RenderError>, RenderError> {
        let request = Request::Transfer3d {
            ctx: ctx.0,
            id: id.0,
            to_host,
            transfer: *t,
            fence: Some(FenceAfter { ring }),
        };
        self.fenced_call(&request, None)
    }

    fn create_blob(
        &self,
        ctx: Ctx,
        id: Res,
        args: BlobArgs,
        backing: Option<Vec<HostRange>>,
    ) -> Result<(), RenderError> {
        self.inner.ok(&Request::CreateBlob {
            ctx: ctx.0,
            id: id.0,
            mem: args.mem,
            flags: args.flags,
            blob_id: args.blob_id,
            size: args.size,
            ranges: backing.as_deref().map(ranges),
        })
    }

    fn map_blob(&self, id: Res) -> Result<ExportedBlob, RenderError> {
        match self.inner.call(&Request::MapBlob { id: id.0 }, &[], None)? {
            (
                Reply::Blob {
                    offset,
                    size,
                    map_info,
                },
                Some(file),
            ) => {
                // The descriptor's file must hold what the worker claims it does.
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                let fits = offset.checked_add(size).is_some_and(|end| end <= len);
                if !fits {
                    return Err(self.inner.unexpected(Reply::Blob {
                        offset,
                        size,
                        map_info,
                    }));
                }
                Ok(ExportedBlob {
                    file: Arc::new(file),
                    offset,
                    size,
                    map_info,
                })
            }
            (other, _) => Err(self.inner.unexpected(other)),
        }
    }

    fn create_fence(&self, ctx: Ctx, ring: Option<u8>) -> Result<Fence, RenderError> {
        self.inner.pending.fetch_add(1, Ordering::AcqRel);
        self.inner.events.arm(self.inner.limits.timeout);
        match (self.inner).call(&Request::CreateFence { ctx: ctx.0, ring }, &[], None) {
            Ok((reply, _)) => self.fence_from(reply),
            Err(e) => {
                self.inner.uncount();
                Err(e)
            }
        }
    }

    fn memory_changed(&self, mem: &GuestMemoryMmap) {
        let mut regions = Vec::new();
        let mut files = Vec::new();
        for r in mem.iter() {
            let Some(fo) = r.file_offset() else {
                continue;
            };
            regions.push(Region {
                guest_addr: r.start_addr().0,
                size: r.len(),
                file_offset: fo.start(),
            });
            files.push(fo.arc().clone());
        }
        let fds: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        let running = lock(&self.inner.state).worker.is_some();
        lock(&self.inner.state).table = Some((regions.clone(), files));
        if running {
            let _ = self.inner.call(&Request::MemoryTable(regions), &fds, None);
        }
    }

    fn settle(&self) -> Result<(), RenderError> {
        self.inner.settle()
    }

    fn on_death(&self, notice: DeathNotice) {
        *lock(&self.inner.on_death) = Some(notice);
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.inner.events.set.as_raw_fd())
    }

    fn poll(&self) {
        self.inner.poll();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn an_event_trickled_a_byte_at_a_time_is_taken_whole_and_nobody_waits_for_it() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let events = Events::new().unwrap();
        events.attach(ours).unwrap();
        let frame = vgpud_protocol::worker::encode(&Event::FenceSignalled { id: 7 }).unwrap();
        let (last, first) = frame.split_last().unwrap();
        for byte in first {
            theirs.write_all(&[*byte]).unwrap();
            let t = Instant::now();
            assert!(events.next().is_none(), "a part of a frame is no event");
            assert!(t.elapsed() < Duration::from_millis(100), "it waited");
        }
        theirs.write_all(&[*last]).unwrap();
        let got = events.next().unwrap().unwrap();
        assert_eq!(got, Event::FenceSignalled { id: 7 });
        assert!(events.next().is_none());
    }

    #[test]
    fn an_oversized_or_garbled_event_or_a_closed_socket_is_an_error() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let events = Events::new().unwrap();
        events.attach(ours).unwrap();
        theirs.write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert!(events.next().unwrap().is_err(), "oversized");
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        events.attach(ours).unwrap();
        theirs.write_all(&3u32.to_le_bytes()).unwrap();
        theirs.write_all(b"{]x").unwrap();
        assert!(events.next().unwrap().is_err(), "garbled");
        drop(theirs);
        let (ours, theirs) = UnixStream::pair().unwrap();
        events.attach(ours).unwrap();
        drop(theirs);
        assert!(events.next().unwrap().is_err(), "closed");
    }
}
