//! `VhostUserBackend` for one VM. State lives behind small locks (interior mutability) rather
//! than one big lock around the backend: frontend requests (config reads, memory tables) must be
//! answerable while a queue worker is busy or waiting on the frontend.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, info, warn};
use vgpud_protocol::{
    GpuConfig, CONFIG_SIZE, EVENT_DISPLAY, F_CONTEXT_INIT, F_EDID, F_RESOURCE_BLOB,
    F_RESOURCE_UUID, F_VIRGL, SHM_ID_HOST_VISIBLE,
};
use vhost::vhost_user::message::{
    VhostUserMMap, VhostUserMMapFlags, VhostUserProtocolFeatures, VhostUserShMemConfig,
};
use vhost::vhost_user::{Backend, GpuBackend, VhostUserFrontendReqHandler};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::display::DisplayLink;
use super::fences::{Answer, FenceInbox};
use super::queue;
use super::VmTemplate;
use crate::device::fences::Timelines;
use crate::device::{Device, FenceSink, ShmemRequest};
use crate::render::RenderHandle;

pub const CONTROL_QUEUE: u16 = 0;
pub const CURSOR_QUEUE: u16 = 1;
const NUM_QUEUES: usize = 2;
/// The epoll token of the fence inbox's eventfd (tokens up to NUM_QUEUES belong to the library).
pub const FENCE_EVENT: u16 = NUM_QUEUES as u16 + 1;
const MAX_QUEUE_SIZE: usize = 1024;
const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;
/// QEMU's vhost-user-gpu-pci acks this bit whether or not the backend offers it, and an acked bit
/// that was never offered fails SET_FEATURES. The GPU driver never resets a single queue.
const VIRTIO_F_RING_RESET: u32 = 40;

pub struct VmBackend {
    pub(super) name: String,
    pub(super) device: Mutex<Device<RenderHandle>>,
    pub(super) mem: Mutex<GuestMemoryAtomic<GuestMemoryMmap>>,
    pub(super) display: Mutex<Option<DisplayLink>>,
    backend_req: Mutex<Option<Backend>>,
    pub(super) fence_inbox: Arc<FenceInbox>,
    pub(super) parked: Mutex<Timelines<Answer>>,
    features: u64,
    events_read: Mutex<u32>,
    event_idx: AtomicBool,
    num_scanouts: u32,
    num_capsets: u32,
    /// Size of the host-visible window; 0 when blobs are off.
    hostmem: u64,
}

impl VmBackend {
    pub fn new(name: &str, template: VmTemplate) -> io::Result<Self> {
        let fence_inbox = Arc::new(FenceInbox::new()?);
        let sink: Arc<dyn FenceSink> = fence_inbox.clone();
        let device = Device::new(template.renderer, template.device, sink);
        let mut features = BASE_FEATURES;
        if device.supports_3d() {
            features |= 1 << F_VIRGL | 1 << F_CONTEXT_INIT;
        }
        if device.supports_blob() {
            features |= 1 << F_RESOURCE_BLOB;
        }
        Ok(VmBackend {
            name: name.to_string(),
            num_scanouts: device.num_scanouts(),
            num_capsets: device.num_capsets(),
            features,
            hostmem: device.hostmem(),
            device: Mutex::new(device),
            mem: Mutex::new(GuestMemoryAtomic::new(GuestMemoryMmap::new())),
            display: Mutex::new(None),
            backend_req: Mutex::new(None),
            fence_inbox,
            parked: Mutex::new(Timelines::default()),
            events_read: Mutex::new(0),
            event_idx: AtomicBool::new(false),
        })
    }

    pub(super) fn device(&self) -> MutexGuard<'_, Device<RenderHandle>> {
        // A panic while holding the lock would be a bug; the state is still usable for teardown.
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn memory(&self) -> Arc<GuestMemoryMmap> {
        lock(&self.mem).memory().into_inner()
    }

    pub(super) fn event_idx(&self) -> bool {
        self.event_idx.load(Ordering::Relaxed)
    }

    /// Frees everything this VM holds, once its frontend is gone.
    pub fn teardown(&self) {
        self.device().reset();
        lock(&self.parked).drain_all();
        *lock(&self.display) = None;
        *lock(&self.backend_req) = None;
        *lock(&self.mem) = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    }

    /// Sets EVENT_DISPLAY and tells the driver to re-read the config space.
    pub(super) fn raise_display_event(&self) {
        *lock(&self.events_read) |= EVENT_DISPLAY;
        let backend = lock(&self.backend_req).clone();
        if let Some(backend) = backend {
            // QEMU's vhost-user-gpu-pci manages display events itself and refuses this message.
            if let Err(e) = backend.handle_config_change() {
                debug!("{}: config change notification not taken: {e}", self.name);
            }
        }
    }

    /// Carries out window changes at the frontend. Called without the device lock: the frontend
    /// re-sends its memory table while it maps, and waits for that answer. Returns false if a
    /// mapping was refused (the device has then forgotten it).
    pub(super) fn apply_shmem(&self, requests: Vec<ShmemRequest>) -> bool {
        let backend = lock(&self.backend_req).clone();
        let mut all_mapped = true;
        for request in requests {
            let result = match (&backend, &request) {
                (None, _) => Err(io::Error::other("no backend request channel")),
                (
                    Some(b),
                    ShmemRequest::Map {
                        file,
                        file_offset,
                        shm_offset,
                        len,
                        writable,
                        ..
                    },
                ) => {
                    let flags = if *writable {
                        VhostUserMMapFlags::WRITABLE
                    } else {
                        VhostUserMMapFlags::default()
                    };
                    let msg = mmap_msg(*shm_offset, *len, *file_offset, flags);
                    b.shmem_map(&msg, file.as_ref()).map(drop)
                }
                (Some(b), ShmemRequest::Unmap { shm_offset, len }) => {
                    let msg = mmap_msg(*shm_offset, *len, 0, VhostUserMMapFlags::default());
                    b.shmem_unmap(&msg).map(drop)
                }
            };
            if let Err(e) = result {
                warn!("{}: {request:?} failed: {e}", self.name);
                if let ShmemRequest::Map { resource_id, .. } = request {
                    self.device().map_failed(resource_id);
                    all_mapped = false;
                }
            }
        }
        all_mapped
    }

    fn config(&self) -> GpuConfig {
        GpuConfig {
            events_read: *lock(&self.events_read),
            events_clear: 0,
            num_scanouts: self.num_scanouts,
            num_capsets: self.num_capsets,
        }
    }
}

/// The frontend may read more than the fields this device defines (QEMU 11 asks for 20 bytes) and
/// needs exactly `size` bytes back; anything past the defined fields reads as zero.
fn config_window(fields: &[u8; CONFIG_SIZE], offset: u32, size: u32) -> Vec<u8> {
    // The vhost-user config space is at most 256 bytes.
    let size = (size as usize).min(256);
    (0..size)
        .map(|i| {
            fields
                .get((offset as usize).saturating_add(i))
                .copied()
                .unwrap_or(0)
        })
        .collect()
}

fn mmap_msg(shm_offset: u64, len: u64, fd_offset: u64, flags: VhostUserMMapFlags) -> VhostUserMMap {
    VhostUserMMap {
        shmid: SHM_ID_HOST_VISIBLE,
        padding: [0; 7],
        fd_offset,
        shm_offset,
        len,
        flags: flags.bits(),
    }
}

/// Offered whatever the renderer; VIRGL is added when it does 3D.
const BASE_FEATURES: u64 = 1 << VIRTIO_F_VERSION_1
    | 1 << VIRTIO_F_NOTIFY_ON_EMPTY
    | 1 << VIRTIO_RING_F_INDIRECT_DESC
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VHOST_USER_F_PROTOCOL_FEATURES
    | 1 << VIRTIO_F_RING_RESET
    | 1 << F_EDID
    | 1 << F_RESOURCE_UUID;

/// Locks a mutex whose data stays consistent even if a holder panicked.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VhostUserBackend for VmBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // Never CONFIGURE_MEM_SLOTS: the frontend would then add every mapped blob as a memory
        // slot one by one, and gives up past a few hundred.
        let base = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::BACKEND_SEND_FD
            | VhostUserProtocolFeatures::RESET_DEVICE;
        if self.hostmem > 0 {
            base | VhostUserProtocolFeatures::SHMEM
        } else {
            base
        }
    }

    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        if self.hostmem == 0 {
            return Err(io::Error::other("no host-visible window"));
        }
        // Region i of the reply is shared memory id i: the window is id 1, id 0 is unused.
        let mut sizes = [0u64; SHM_ID_HOST_VISIBLE as usize + 1];
        sizes[SHM_ID_HOST_VISIBLE as usize] = self.hostmem;
        Ok(VhostUserShMemConfig::new(sizes.len() as u32, &sizes))
    }

    fn reset_device(&self) {
        info!("{}: device reset", self.name);
        self.device().reset();
        // The rings are re-initialised after a reset: parked answers are dropped, not used.
        lock(&self.parked).drain_all();
        *lock(&self.events_read) = 0;
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_window(&self.config().to_bytes(), offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only events_clear (offset 4) is writable; writing a bit there clears it in events_read.
        if offset == 4 {
            if let Some(b) = buf.get(0..4) {
                let clear = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                *lock(&self.events_read) &= !clear;
            }
        }
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *lock(&self.mem) = mem;
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        *lock(&self.backend_req) = Some(backend);
    }

    fn set_gpu_socket(&self, gpu: GpuBackend) -> io::Result<()> {
        // Only store it: talking to the display now could deadlock, since the frontend may be
        // waiting for our reply to this very message. The queue worker does the handshake.
        *lock(&self.display) = Some(DisplayLink::new(gpu));
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        if device_event == FENCE_EVENT {
            if let Some(control) = vrings.get(usize::from(CONTROL_QUEUE)) {
                if let Err(e) = self.answer_signalled(control) {
                    warn!("{}: answering fenced requests: {e}", self.name);
                }
            }
            return Ok(());
        }
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| io::Error::other(format!("unknown event {device_event}")))?;
        let kind = match device_event {
            CONTROL_QUEUE => queue::Kind::Control,
            CURSOR_QUEUE => queue::Kind::Cursor,
            _ => return Err(io::Error::other(format!("unknown event {device_event}"))),
        };
        // An error here is a broken ring in guest memory. Returning it would end this VM's worker
        // for good, so log it and keep serving.
        if let Err(e) = queue::drain(self, vring, kind) {
            warn!("{}: {kind:?} queue: {e}", self.name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::config_window;

    #[test]
    fn config_reads_are_exactly_the_size_asked() {
        let fields: [u8; 16] = std::array::from_fn(|i| i as u8 + 1);
        assert_eq!(
            config_window(&fields, 0, 20),
            [&fields[..], &[0; 4]].concat()
        );
        assert_eq!(config_window(&fields, 8, 4), vec![9, 10, 11, 12]);
        assert_eq!(config_window(&fields, 14, 4), vec![15, 16, 0, 0]);
        assert_eq!(config_window(&fields, u32::MAX, 2), vec![0, 0]);
        assert_eq!(config_window(&fields, 0, u32::MAX).len(), 256);
    }
}
