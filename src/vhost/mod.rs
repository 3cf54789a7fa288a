//! vhost-user transport: one `VmBackend` per connected VM, served on its own listening socket.

mod answers;
mod backend;
mod display;
mod lifecycle;
mod memtable;
mod peer;
mod queue;
mod relay;

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{error, info};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

pub use self::backend::VmBackend;
use crate::device::CapsetInfo;
use crate::device::DeviceConfig;
use crate::fences::FenceSink;
use crate::guestlog::GuestLog;
use crate::hub::registry::{Registry, VmState};
use crate::hub::share::ShareRegistry;
use crate::output::VncOutput;
use crate::render::{RendererKind, SharedRenderer};

/// Where a VM's renderer comes from.
#[derive(Clone)]
pub enum RendererSpec {
    /// One renderer in this process for every VM (2D).
    Shared(SharedRenderer),
    /// A worker process per VM, offering `capsets`, each request bounded by `timeout`, both
    /// ends spinning up to `spin` before they sleep.
    Worker {
        kind: RendererKind,
        capsets: Vec<CapsetInfo>,
        timeout: Duration,
        spin: Duration,
    },
    /// Benchmarks only (benches/workers.rs), never reachable from the daemon's command line:
    /// the renderer `make` builds for the VM's fence sink, called in place on the VM's queue
    /// thread. It is the peer the render worker's cost is measured against.
    #[doc(hidden)]
    InPlace(MakeRenderer),
}

/// Builds a VM's renderer, given where its fences go.
pub type MakeRenderer = Arc<dyn Fn(Arc<dyn FenceSink>) -> SharedRenderer + Send + Sync>;

impl RendererSpec {
    /// The renderer's name, as the status command shows it.
    pub fn name(&self) -> String {
        match self {
            RendererSpec::Shared(_) => "2d".to_string(),
            RendererSpec::Worker { kind, .. } => format!("{kind:?}").to_lowercase(),
            RendererSpec::InPlace(_) => "in-place".to_string(),
        }
    }
}

/// Everything a socket's VMs are made from.
#[derive(Clone)]
pub struct VmTemplate {
    /// The socket, as the status command shows it (the VM's name is `serve`'s).
    pub socket: String,
    /// Where the daemon's VMs are registered.
    pub registry: Arc<Registry>,
    pub renderer: RendererSpec,
    pub device: DeviceConfig,
    /// The daemon's share registry, and whether this socket's VMs may use it.
    pub shares: Option<Arc<ShareRegistry>>,
    pub share: bool,
    /// The longest the daemon waits on a VMM's answer (display socket, backend channel).
    pub vmm_timeout: Duration,
    pub failure_limit: FailureLimit,
    /// The socket's rate-limited log, shared by the VMs it serves one after another.
    pub log: GuestLog,
    /// vgpud's own display output for the socket's VMs, if configured: it outlives each VM.
    pub output: Option<VncOutput>,
}

/// Pause after a failure to set up or accept a connection (out of fds, say), doubling up to
/// `RETRY_MAX`: the socket keeps serving once the cause goes away, without spinning meanwhile.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Descriptors that must still be free once a VM is accepted. Setting a VM up takes a few dozen
/// (sockets, eventfds, memory region files), and a descriptor passed by the VMM that cannot be
/// received is lost inside the vhost crate, which then waits for the rest of a message that
/// never comes: a hang, not an error. So a VM is refused up front instead.
pub const FD_ROOM: u64 = 64;

/// How often a socket's VMs may lose their renderer (a render worker that died or hung) before
/// the socket refuses VMs for a while: one guest must not make the daemon fork in a loop.
#[derive(Clone, Copy, Debug)]
pub struct FailureLimit {
    pub failures: usize,
    pub window: Duration,
    pub cooldown: Duration,
}

/// Where a VM's VMM comes from.
pub enum VmmSource {
    /// A listening socket: one VMM after another (a VM that restarts connects again).
    Listener(Listener),
    /// A socket already connected to one VMM (libvirt's `--fd`): served once.
    Connected(UnixStream),
}

/// Serves the VMM(s) of `source`: a listener one connection at a time, forever; a connected
/// socket once. Each connection gets a fresh device; when the frontend goes away, that VM's
/// state is torn down before the next one is accepted. Returns an error when a connected VMM
/// could not be served at all (the daemon then exits non-zero, so its supervisor sees it).
pub fn serve(name: &str, source: VmmSource, template: VmTemplate) -> io::Result<()> {
    match source {
        VmmSource::Listener(listener) => {
            serve_listener(name, listener, template);
            Ok(())
        }
        VmmSource::Connected(vmm) => serve_connection(name, vmm, &template).map(|_| ()),
    }
}

/// Serves one VMM (relayed, see relay.rs) until it goes away. Returns whether the VM's
/// renderer failed (its worker died or hung).
fn serve_connection(name: &str, vmm: UnixStream, template: &VmTemplate) -> io::Result<bool> {
    let channel = relay::BackendChannel::default();
    let mut listener = relayed(name, vmm, channel.clone())?;
    serve_one(name, &mut listener, template, channel)
}

/// A private listener with `vmm` relayed to the one connection waiting on it (see relay.rs).
/// Its path is in a fresh owner-only directory with an unguessable name (mkdtemp), so no other
/// user can take the path first or connect in the VMM's place.
fn relayed(name: &str, vmm: UnixStream, channel: relay::BackendChannel) -> io::Result<Listener> {
    let dir = private_dir()?;
    let path = dir.join("vmm.sock");
    let made = Listener::new(&path, true)
        .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
        .and_then(|l| UnixStream::connect(&path).map(|inner| (l, inner)));
    // Connected (or not), the path has done its job.
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    let (listener, inner) = made?;
    relay::spawn(name, vmm, inner, channel)?;
    Ok(listener)
}

/// A new directory, mode 0700, under the runtime directory systemd gives the service
/// (`$RUNTIME_DIRECTORY`), else `$XDG_RUNTIME_DIR`, else the temporary directory.
fn private_dir() -> io::Result<PathBuf> {
    use std::ffi::{CString, OsString};
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let base = ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"]
        .iter()
        .filter_map(std::env::var_os)
        // systemd may list several runtime directories, separated by ':'.
        .filter_map(|v| {
            v.as_bytes()
                .split(|&b| b == b':')
                .next()
                .map(<[u8]>::to_vec)
        })
        .map(|v| PathBuf::from(OsString::from_vec(v)))
        .find(|p| p.is_absolute())
        .unwrap_or_else(std::env::temp_dir);
    let template = base.join("vgpud-relay-XXXXXX");
    let template = CString::new(template.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("a runtime directory path with a NUL byte"))?;
    let mut bytes = template.into_bytes_with_nul();
    // SAFETY: `bytes` is a NUL-terminated template that mkdtemp rewrites in place.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot make a private directory in {}: {e}", base.display()),
        ));
    }
    bytes.pop();
    Ok(PathBuf::from(OsString::from_vec(bytes)))
}

fn serve_listener(name: &str, listener: Listener, template: VmTemplate) {
    let mut pause = RETRY_MIN;
    let mut failures: std::collections::VecDeque<Instant> = Default::default();
    loop {
        let served = listener
            .accept()
            .map_err(|e| io::Error::other(format!("accepting a VMM: {e}")))
            .and_then(|vmm| match vmm {
                Some(vmm) => serve_connection(name, vmm, &template),
                // It left before it was accepted.
                None => Ok(false),
            });
        match served {
            Ok(renderer_failed) => {
                pause = RETRY_MIN;
                if renderer_failed {
                    let limit = template.failure_limit;
                    let now = Instant::now();
                    failures.push_back(now);
                    failures.retain(|t| now.duration_since(*t) < limit.window);
                    if failures.len() >= limit.failures {
                        error!(
                            "{name}: {} renderer failures within {:?}: refusing VMs for {:?}",
                            failures.len(),
                            limit.window,
                            limit.cooldown
                        );
                        refuse_for(name, &listener, limit.cooldown);
                        failures.clear();
                    }
                }
            }
            Err(e) => {
                // Not guest-triggered at will: each failure waits `pause` before the next try.
                error!("{name}: cannot serve a VM, retrying in {pause:?}: {e}");
                thread::sleep(pause);
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Accepts and closes every connection for `cooldown`.
fn refuse_for(name: &str, listener: &Listener, cooldown: Duration) {
    let until = Instant::now() + cooldown;
    if listener.set_nonblocking(true).is_err() {
        thread::sleep(cooldown);
        return;
    }
    let mut refused = 0u64;
    while Instant::now() < until {
        match listener.accept() {
            Ok(Some(conn)) => {
                drop(conn);
                refused += 1;
            }
            _ => thread::sleep(Duration::from_millis(100)),
        }
    }
    let _ = listener.set_nonblocking(false);
    info!("{name}: serving VMs again ({refused} refused meanwhile)");
}

/// Accepts one connection and serves it until the frontend goes away. Returns whether the VM's
/// renderer failed (its worker died or hung).
fn serve_one(
    name: &str,
    listener: &mut Listener,
    template: &VmTemplate,
    channel: relay::BackendChannel,
) -> io::Result<bool> {
    // Listed in the registry once its VMM connects; it leaves when this returns, after its
    // teardown.
    let registration =
        template
            .registry
            .register(name, &template.socket, &template.renderer.name());
    let backend = Arc::new(VmBackend::new(
        registration.record.clone(),
        template.clone(),
        channel,
    )?);
    backend.join_shares();
    let stopping = Arc::downgrade(&backend);
    registration.record.on_stop(Box::new(move || {
        if let Some(vm) = stopping.upgrade() {
            vm.stop();
        }
    }));
    // A renderer that dies costs its VM the connection, nothing more.
    let vm = Arc::downgrade(&backend);
    backend.device().renderer().on_death(Box::new(move |why| {
        if let Some(vm) = vm.upgrade() {
            vm.renderer_failed
                .store(true, std::sync::atomic::Ordering::Release);
            vm.disconnect(&why);
        }
    }));
    let mut daemon = VhostUserDaemon::new(
        name.to_string(),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| io::Error::other(format!("vhost-user daemon: {e}")))?;
    let exit = backend.exit.as_raw_fd();
    let exit_watched = daemon.get_epoll_handlers().iter().all(|worker| {
        worker
            .register_listener(exit, EventSet::IN, u64::from(backend::EXIT_EVENT))
            .is_ok()
    });
    if !exit_watched {
        // Dropping the daemon would wait for a worker nothing can stop: leak it instead.
        std::mem::forget(daemon);
        return Err(io::Error::other("cannot watch the exit eventfd"));
    }
    let mut result = accept(&mut daemon, &backend, listener);
    let mut disconnected = None;
    if result.is_ok() {
        if let Err(e) = fd_room() {
            daemon.request_shutdown();
            result = Err(e);
        }
    }
    let log = &template.log;
    if result.is_ok() {
        registration.publish();
        crate::stats::bump(&crate::stats::DAEMON.connects);
        log.event(
            "connect",
            format_args!(
                "id={} socket={} renderer={}",
                registration.record.id.0,
                template.socket,
                template.renderer.name()
            ),
        );
        use vhost::vhost_user::Error as Protocol;
        use vhost_user_backend::Error as Daemon;
        let ended = daemon.wait();
        let why = match ended {
            // vgpud ended it (and logged why when it did).
            _ if registration.record.state() == VmState::Disconnecting => {
                "disconnected-by-vgpud".to_string()
            }
            // A VMM that closes its socket, between messages or in the middle of one, has left.
            Ok(())
            | Err(Daemon::HandleRequest(Protocol::Disconnected | Protocol::PartialMessage)) => {
                "vmm-closed".to_string()
            }
            Err(e) => format!("\"{e}\""),
        };
        // Torn down below; counted and logged once it is.
        disconnected = Some(why);
    }
    // Stop the queue worker, then free what the VM held in the renderer.
    let _ = backend.exit.write(1);
    drop(daemon);
    // Answers still waiting for their fence when the VM went (a hung guest shows here).
    let parked =
        (backend.record.counters.fences_pending).load(std::sync::atomic::Ordering::Relaxed);
    backend.teardown();
    let renderer_failed = backend
        .renderer_failed
        .load(std::sync::atomic::Ordering::Acquire);
    // The last reference: the renderer (and its worker) goes with it.
    drop(backend);
    // Its guest memory is unmapped now that nothing holds it.
    crate::memfault::sweep();
    drop(registration);
    if let Some(why) = disconnected {
        crate::stats::bump(&crate::stats::DAEMON.disconnects);
        log.event("disconnect", format_args!("reason={why} parked={parked}"));
    }
    result.map(|()| renderer_failed)
}

fn accept(
    daemon: &mut VhostUserDaemon<Arc<VmBackend>>,
    backend: &Arc<VmBackend>,
    listener: &mut Listener,
) -> io::Result<()> {
    let worker = daemon
        .get_epoll_handlers()
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::other("no queue worker"))?;
    let fences = backend.fence_inbox.event.as_raw_fd();
    worker.register_listener(fences, EventSet::IN, u64::from(backend::FENCE_EVENT))?;
    let resume = crate::sync::lock(&backend.resume_timer).as_raw_fd();
    worker.register_listener(resume, EventSet::IN, u64::from(backend::RESUME_EVENT))?;
    let refresh = backend.refresh.as_raw_fd();
    worker.register_listener(refresh, EventSet::IN, u64::from(backend::REFRESH_EVENT))?;
    let renderer_fd = backend.device().renderer().poll_fd();
    if let Some(fd) = renderer_fd {
        worker.register_listener(fd, EventSet::IN, u64::from(backend::RENDERER_EVENT))?;
    }
    daemon
        .start(listener)
        .map_err(|e| io::Error::other(format!("accepting a frontend: {e}")))?;
    if let Some(handle) = daemon.shutdown_handle() {
        backend.set_shutdown(handle);
    }
    Ok(())
}

/// Fails when fewer than `FD_ROOM` descriptors are left under the process's limit.
fn fd_room() -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let open = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    let free = limit.rlim_cur.saturating_sub(open);
    if free < FD_ROOM {
        return Err(io::Error::other(format!(
            "out of descriptors: {open} open of {}, a VM needs {FD_ROOM} free; refused it",
            limit.rlim_cur
        )));
    }
    Ok(())
}
