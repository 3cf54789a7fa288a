//! vhost-user transport: one `VmBackend` per connected VM, served on its own listening socket.

mod backend;
mod display;
mod fences;
mod queue;

use std::os::fd::AsRawFd;
use std::sync::Arc;

use log::{error, info};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

pub use self::backend::VmBackend;
use crate::device::DeviceConfig;
use crate::render::RenderHandle;

/// Everything a VM's backend is made from; shared by all VMs of the daemon.
#[derive(Clone)]
pub struct VmTemplate {
    pub renderer: RenderHandle,
    pub device: DeviceConfig,
}

/// Serves VMs on `listener` one connection at a time, forever. Each connection gets a fresh device;
/// when the frontend goes away, that VM's state is torn down before the next one is accepted.
pub fn serve(name: &str, mut listener: Listener, template: VmTemplate) {
    loop {
        let backend = match VmBackend::new(name, template.clone()) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                error!("{name}: cannot create the VM backend: {e}");
                return;
            }
        };
        let mut daemon = match VhostUserDaemon::new(
            name.to_string(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        ) {
            Ok(d) => d,
            Err(e) => {
                error!("{name}: cannot create the vhost-user daemon: {e}");
                return;
            }
        };
        let fence_fd = backend.fence_inbox.event.as_raw_fd();
        let registered = daemon.get_epoll_handlers().first().map(|worker| {
            worker.register_listener(fence_fd, EventSet::IN, u64::from(backend::FENCE_EVENT))
        });
        if !matches!(registered, Some(Ok(()))) {
            error!("{name}: cannot watch the fence eventfd: {registered:?}");
            return;
        }
        if let Err(e) = daemon.start(&mut listener) {
            error!("{name}: cannot accept a frontend: {e}");
            return;
        }
        info!("{name}: frontend connected");
        match daemon.wait() {
            Ok(()) => info!("{name}: frontend disconnected"),
            Err(e) => info!("{name}: connection ended: {e}"),
        }
        // Stop the queue workers, then free what the VM held in the renderer.
        for handler in daemon.get_epoll_handlers() {
            handler.send_exit_event();
        }
        drop(daemon);
        backend.teardown();
    }
}
