//! vhost-user transport: one `VmBackend` per connected VM, served on its own listening socket.

mod backend;
mod display;
mod fences;
mod peer;
mod queue;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use log::{error, info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

pub use self::backend::VmBackend;
use crate::device::DeviceConfig;
use crate::render::SharedRenderer;

/// Everything a VM's backend is made from; shared by all VMs of the daemon.
#[derive(Clone)]
pub struct VmTemplate {
    pub renderer: SharedRenderer,
    pub device: DeviceConfig,
    /// The longest the daemon waits on a VMM's answer (display socket, backend channel).
    pub vmm_timeout: Duration,
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

/// Serves VMs on `listener` one connection at a time, forever. Each connection gets a fresh device;
/// when the frontend goes away, that VM's state is torn down before the next one is accepted.
pub fn serve(name: &str, mut listener: Listener, template: VmTemplate) {
    let mut pause = RETRY_MIN;
    loop {
        match serve_one(name, &mut listener, &template) {
            Ok(()) => pause = RETRY_MIN,
            Err(e) => {
                // Not guest-triggered at will: each failure waits `pause` before the next try.
                error!("{name}: cannot serve a VM, retrying in {pause:?}: {e}");
                thread::sleep(pause);
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Accepts one connection and serves it until the frontend goes away.
fn serve_one(name: &str, listener: &mut Listener, template: &VmTemplate) -> io::Result<()> {
    let backend = Arc::new(VmBackend::new(name, template.clone())?);
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
    if result.is_ok() {
        if let Err(e) = fd_room() {
            daemon.request_shutdown();
            result = Err(e);
        }
    }
    if result.is_ok() {
        info!("{name}: frontend connected");
        match daemon.wait() {
            Ok(()) => info!("{name}: frontend disconnected"),
            Err(e) => warn!("{name}: connection ended: {e}"),
        }
    }
    // Stop the queue worker, then free what the VM held in the renderer.
    let _ = backend.exit.write(1);
    drop(daemon);
    backend.teardown();
    result
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
