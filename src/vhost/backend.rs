//! `VhostUserBackend` for one VM. State lives behind small locks (interior mutability) rather
//! than one big lock around the backend: frontend requests (config reads, memory tables) must be
//! answerable while a queue worker is busy or waiting on the frontend.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{error, info};
use vgpud_protocol::{
    Command, GpuConfig, Response, CONFIG_SIZE, EVENT_DISPLAY, F_BLOB_ALIGNMENT, F_CONTEXT_INIT,
    F_EDID, F_RESOURCE_BLOB, F_RESOURCE_UUID, F_VIRGL, SHM_ID_HOST_VISIBLE,
};
use vhost::vhost_user::message::{
    VhostUserMMap, VhostUserMMapFlags, VhostUserProtocolFeatures, VhostUserShMemConfig,
};
use vhost::vhost_user::{Backend, GpuBackend, VhostUserFrontendReqHandler};
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::answers::Answer;
use super::display::DisplayLink;
use super::lifecycle::{Lifecycle, Resumed, RingPlace};
use super::memtable::{self, WindowFiles};
use super::peer::PeerWatch;
use super::queue;
use super::relay::{self, BackendChannel};
use super::RendererSpec;
use super::VmTemplate;
use crate::device::memory::check_region;
use crate::device::{Device, Gauges, ShmemRequest};
use crate::fences::{FenceInbox, FenceSink, Timeline, Timelines};
use crate::guestlog::GuestLog;
use crate::hub::registry::{VmRecord, VmState};
use crate::hub::share::{ShareClient, ShareRegistry};
use crate::ids::FenceId;
use crate::memfault;
use crate::output::VncOutput;
use crate::render::remote::{Limits, RemoteRenderer};
use crate::render::SharedRenderer;
use crate::sync::lock;
use vgpud_protocol::share::Uuid;

pub const CONTROL_QUEUE: u16 = 0;
pub const CURSOR_QUEUE: u16 = 1;
const NUM_QUEUES: usize = 2;
/// The epoll token of the fence inbox's eventfd (tokens up to NUM_QUEUES belong to the library).
pub const FENCE_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// The epoll token of this VM's exit eventfd: it ends the queue worker.
pub const EXIT_EVENT: u16 = NUM_QUEUES as u16 + 2;
/// The epoll token of this VM's resume timer (see `VmBackend::resume_timer`).
pub const RESUME_EVENT: u16 = NUM_QUEUES as u16 + 3;
/// The epoll token of the VNC output's request for the whole picture (`VmBackend::refresh`).
pub const REFRESH_EVENT: u16 = NUM_QUEUES as u16 + 4;
/// The epoll token of the renderer's own descriptor (`Renderer::poll_fd`), if it has one.
pub const RENDERER_EVENT: u16 = NUM_QUEUES as u16 + 5;
/// How often a stopped VM with answers or window changes waiting looks whether it was resumed.
const RESUME_POLL: Duration = Duration::from_millis(50);
/// The largest queue a split ring may have (virtio 1.x), and what crosvm offers by default
/// (devices/src/virtio/queue.rs): Linux drivers take the size offered. Nothing here grows with
/// the size beyond what the guest actually posts: a batch is bounded by the chains on the ring,
/// parked answers by the fences in flight.
const MAX_QUEUE_SIZE: usize = 32768;
/// The page size the window maps by (device::window's).
const BLOB_ALIGNMENT: u32 = 4096;
const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;
/// QEMU's vhost-user-gpu-pci acks this bit whether or not the backend offers it, and an acked bit
/// that was never offered fails SET_FEATURES. The GPU driver never resets a single queue.
const VIRTIO_F_RING_RESET: u32 = 40;

pub struct VmBackend {
    pub(super) name: String,
    /// This VM in the daemon's registry: its state and counters.
    pub(super) record: Arc<VmRecord>,
    pub(super) log: GuestLog,
    pub(super) device: Mutex<Device<SharedRenderer>>,
    /// The guest memory the queues use: only tables whose regions all lie inside their files.
    mem: Mutex<Arc<GuestMemoryMmap>>,
    /// Whose guest memory the SIGBUS handler repairs: see `lost_memory`.
    memory_owner: memfault::Owner,
    /// The files behind the window's live mappings, which the VMM's table may carry too.
    window_files: WindowFiles,
    /// Tells a reset from a sleep when the frontend sends no RESET_DEVICE (crosvm).
    lifecycle: Lifecycle,
    /// Queues stopped (GET_VRING_BASE) and not served since: while any is, the VMM may not serve
    /// the backend channel (crosvm does not until it re-activated every queue), so window
    /// changes wait in `deferred` (see `apply_shmem`).
    asleep: [AtomicBool; NUM_QUEUES],
    deferred: Mutex<Vec<ShmemRequest>>,
    /// Answers whose fences signalled while the queues were stopped: used when they are served
    /// again (after a wake), dropped with the rings (after a reset). At most one per ring entry.
    pub(super) held: Mutex<Vec<Answer>>,
    /// Ticks while the queues are stopped: re-activation itself raises no event here (the vhost
    /// library takes the rings without telling the backend), and a guest waiting for a fence
    /// answer, or for a chain whose kick was taken as its queue stopped, may never kick.
    pub(super) resume_timer: Mutex<TimerFd>,
    pub(super) display: Mutex<Option<DisplayLink>>,
    /// The pixels of the last update shown, kept so that every flush reads into the same
    /// memory, which stays mapped (at most `UPDATE_BAND_BYTES`).
    pub(super) pixels: Mutex<Vec<u8>>,
    /// vgpud's own output for this VM, if configured.
    pub(super) output: Option<VncOutput>,
    /// Written by the output when a viewer needs the whole picture: the queue thread feeds it.
    pub(super) refresh: EventFd,
    /// The VMM handed over a display socket: it is QEMU's vhost-user-gpu, which keeps the
    /// config's display events itself (see `raise_display_event`).
    vmm_owns_display_events: AtomicBool,
    backend_req: Mutex<Option<Backend>>,
    /// The same channel, for what the vhost crate cannot send (CONFIG_CHANGE_MSG).
    backend_channel: BackendChannel,
    /// Bounds every request to the VMM (display socket, backend channel).
    pub(super) peer: PeerWatch,
    /// Ends the connection, once the daemon has accepted one.
    shutdown: Mutex<Option<ShutdownHandle>>,
    /// Ends the queue worker; ours, so it is closed with the VM (see `exit_event`).
    pub(super) exit: EventFd,
    /// Queues whose rings the guest broke: not served until the driver sets them up again.
    broken: [AtomicBool; NUM_QUEUES],
    /// The VMM is being disconnected: nothing more is taken off or put on its rings.
    gone: AtomicBool,
    /// The VM's renderer died or hung (counted against the socket's failure limit).
    pub(super) renderer_failed: AtomicBool,
    pub(super) fence_inbox: Arc<FenceInbox>,
    /// Held from the device's decision to change the window until the frontend was asked.
    shmem_order: Mutex<()>,
    /// The daemon's share registry, when this VM may share.
    shares: Option<Arc<ShareRegistry>>,
    /// Answers waiting for their fence, with when they were parked.
    pub(super) parked: Mutex<Timelines<(Answer, Instant)>>,
    features: u64,
    events_read: Mutex<u32>,
    event_idx: AtomicBool,
    num_scanouts: u32,
    num_capsets: u32,
    /// What blob sizes and map offsets are aligned to (config space; 0 without blobs).
    blob_alignment: u32,
    /// Size of the host-visible window; 0 when blobs are off.
    hostmem: u64,
}

impl VmBackend {
    pub fn new(
        record: Arc<VmRecord>,
        template: VmTemplate,
        backend_channel: BackendChannel,
    ) -> io::Result<Self> {
        let name = record.name.as_str();
        let fence_inbox = Arc::new(FenceInbox::new()?);
        let sink: Arc<dyn FenceSink> = fence_inbox.clone();
        let sink = Arc::downgrade(&sink);
        let log = template.log.clone();
        let renderer: SharedRenderer = match template.renderer {
            RendererSpec::Shared(r) => r,
            RendererSpec::InPlace(make) => make(fence_inbox.clone()),
            RendererSpec::Worker {
                kind,
                capsets,
                timeout,
                spin,
            } => Arc::new(RemoteRenderer::new(
                kind,
                name,
                log.clone(),
                Limits { timeout, spin },
                capsets,
                sink,
                record.worker_pid.clone(),
            )?),
        };
        let mut device = Device::new(renderer, template.device).with_log(log.clone());
        let shares = template.shares.filter(|_| template.share);
        if let Some(hub) = &shares {
            device = device.with_share(hub.clone(), record.id);
        }
        let refresh = EventFd::new(libc::EFD_NONBLOCK)?;
        let output = template.output.clone();
        if let Some(out) = &output {
            device.attach_output();
            out.attach(refresh.try_clone()?);
            record.set_output(out.gauges());
        }
        let mut features = BASE_FEATURES;
        if device.supports_3d() {
            features |= 1 << F_VIRGL | 1 << F_CONTEXT_INIT;
        }
        // Blobs and their mappings in the window go by whole pages: say so to guests that ask.
        let blob_alignment = if device.supports_blob() {
            features |= 1 << F_RESOURCE_BLOB | 1 << F_BLOB_ALIGNMENT;
            BLOB_ALIGNMENT
        } else {
            0
        };
        Ok(VmBackend {
            name: name.to_string(),
            record: record.clone(),
            log,
            num_scanouts: device.num_scanouts(),
            num_capsets: device.num_capsets(),
            blob_alignment,
            features,
            hostmem: device.hostmem(),
            device: Mutex::new(device),
            mem: Mutex::new(Arc::new(GuestMemoryMmap::new())),
            memory_owner: memfault::Owner::new(),
            window_files: WindowFiles::default(),
            lifecycle: Lifecycle::default(),
            asleep: Default::default(),
            deferred: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            resume_timer: Mutex::new(nonblocking_timer()?),
            display: Mutex::new(None),
            pixels: Mutex::new(Vec::new()),
            output,
            refresh,
            backend_req: Mutex::new(None),
            backend_channel,
            peer: PeerWatch::new(template.vmm_timeout),
            shutdown: Mutex::new(None),
            exit: EventFd::new(EFD_NONBLOCK)?,
            broken: Default::default(),
            gone: AtomicBool::new(false),
            renderer_failed: AtomicBool::new(false),
            vmm_owns_display_events: AtomicBool::new(false),
            fence_inbox,
            shmem_order: Mutex::new(()),
            shares,
            parked: Mutex::new(Timelines::default()),
            events_read: Mutex::new(0),
            event_idx: AtomicBool::new(false),
        })
    }

    pub(super) fn device(&self) -> MutexGuard<'_, Device<SharedRenderer>> {
        // A panic while holding the lock would be a bug; the state is still usable for teardown.
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn memory(&self) -> Arc<GuestMemoryMmap> {
        lock(&self.mem).clone()
    }

    /// Lets `disconnect` end this connection.
    pub fn set_shutdown(&self, handle: ShutdownHandle) {
        *lock(&self.shutdown) = Some(handle);
    }

    /// Ends the VM's connection: its VMM broke the protocol or stopped answering. The socket
    /// then accepts the next connection.
    pub(super) fn disconnect(&self, why: &dyn std::fmt::Display) {
        if self.gone.swap(true, Ordering::AcqRel) {
            return;
        }
        self.record.set_state(VmState::Disconnecting);
        error!("{}: disconnecting the VMM: {why}", self.name);
        if let Some(handle) = lock(&self.shutdown).as_ref() {
            handle.shutdown();
        }
    }

    /// Ends the connection because the daemon is stopping (not the VM's fault).
    pub fn stop(&self) {
        if self.gone.swap(true, Ordering::AcqRel) {
            return;
        }
        self.record.set_state(VmState::Disconnecting);
        info!(
            "{}: disconnecting the VMM: the daemon is stopping",
            self.name
        );
        if let Some(handle) = lock(&self.shutdown).as_ref() {
            handle.shutdown();
        }
    }

    /// Disconnects the VM if its VMM shrank a file of its guest memory under a request (the
    /// daemon's access faulted; the mapping reads as zeros since). Returns whether it did.
    pub(super) fn lost_memory(&self) -> bool {
        let Some(lost) = self.memory_owner.lost() else {
            return false;
        };
        self.disconnect(&format_args!(
            "its guest memory at {:#x} shrank under a request (SIGBUS); it reads as zeros now",
            lost.gpa
        ));
        true
    }

    /// Whether the queue is not served: the guest broke its rings (until they are set up again),
    /// or the VMM is being disconnected.
    pub(super) fn is_broken(&self, queue: u16) -> bool {
        self.gone.load(Ordering::Acquire)
            || self
                .broken
                .get(usize::from(queue))
                .is_some_and(|b| b.load(Ordering::Acquire))
    }

    /// Stops serving a queue whose rings the guest broke, as virtio's DEVICE_NEEDS_RESET would:
    /// the driver gets nothing more from it until it sets the queue up again (or resets).
    pub(super) fn mark_broken(&self, queue: u16, why: &dyn std::fmt::Display) {
        if let Some(b) = self.broken.get(usize::from(queue)) {
            if !b.swap(true, Ordering::AcqRel) {
                self.log.warn(format_args!(
                    "queue {queue} broken by the guest, not served until it is set up again: {why}"
                ));
            }
        }
    }
    /// Counts a handled control request (`command` None: one that did not decode), and what
    /// the VM holds after it.
    pub(super) fn count(&self, command: Option<&Command>, response: &Response, now: Gauges) {
        let c = &self.record.counters;
        let bump = |a: Option<&std::sync::atomic::AtomicU64>, n: u64| {
            if let Some(a) = a {
                a.fetch_add(n, Ordering::Relaxed);
            }
        };
        if c.commands.fetch_add(1, Ordering::Relaxed) == 0 {
            self.record.set_state(VmState::Running);
        }
        if let Some(cmd) = command {
            bump(
                vgpud_protocol::command_index(cmd.type_code()).and_then(|i| c.by_command.get(i)),
                1,
            );
        }
        match (command, response) {
            (_, Response::Err(e)) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                bump(c.by_error.get(e.index()), 1);
            }
            (Some(Command::TransferToHost2d { rect, .. }), _) => {
                // 2D resources hold 4 bytes a pixel.
                let bytes = u64::from(rect.width) * u64::from(rect.height) * 4;
                bump(Some(&c.transfer_2d_bytes), bytes);
            }
            _ => {}
        }
        let set = |a: &std::sync::atomic::AtomicU64, v: usize| a.store(v as u64, Ordering::Relaxed);
        set(&c.resources, now.resources);
        c.resource_bytes
            .store(now.resource_bytes, Ordering::Relaxed);
        set(&c.blob_mappings, now.blob_mappings);
        set(&c.exports, now.exports);
        set(&c.imports, now.imports);
        set(&c.pins, now.pins);
    }

    pub(super) fn event_idx(&self) -> bool {
        self.event_idx.load(Ordering::Relaxed)
    }

    /// Frees everything this VM holds, once its frontend is gone. Its exports are revoked
    /// first: no importer keeps a mapping of memory this VM hands back.
    pub fn teardown(&self) {
        if let Some(hub) = &self.shares {
            hub.leave(self.record.id);
        }
        self.device().reset();
        if let Some(out) = &self.output {
            out.detach();
        }
        self.drop_parked();
        self.peer.stop();
        *lock(&self.shutdown) = None;
        *lock(&self.display) = None;
        *lock(&self.backend_req) = None;
        *lock(&self.mem) = Arc::new(GuestMemoryMmap::new());
    }

    /// The driver starts over (RESET_DEVICE, or fresh rings after a stop: see `lifecycle`): the
    /// device forgets everything, exports are revoked, parked answers dropped.
    fn start_over(&self, why: &str) {
        self.log.event("reset", format_args!("by={why}"));
        if let Some(hub) = &self.shares {
            hub.revoke_all(self.record.id);
        }
        self.device().reset();
        // The rings are re-initialised after a reset: parked answers are dropped, not used.
        self.drop_parked();
        lock(&self.held).clear();
        if let Some(hub) = &self.shares {
            hub.fences_dropped(self.record.id, None);
        }
        *lock(&self.events_read) = 0;
        for b in &self.broken {
            b.store(false, Ordering::Release);
        }
    }

    /// The first event once the control queue is ready again decides: a wake keeps the device's
    /// state, fresh rings reset it. Nothing is served, and nothing that waited goes out, until
    /// every stopped queue is active again: crosvm sets the queues up one after the other and
    /// serves its backend channel only after the last one. Then the window changes that waited
    /// go out first, then the answers held, then what is on the rings. Returns whether the
    /// queues are still asleep.
    fn check_resumed(&self, vrings: &[VringRwLock]) -> bool {
        let place = |i: usize| {
            let (place, ready) = ring_place(vrings.get(i)?);
            ready.then_some(place)
        };
        let now = [place(0), place(1)];
        if now[0].is_none() {
            return self.is_asleep();
        }
        match self.lifecycle.resumed(now) {
            Resumed::NotNow => {}
            Resumed::Woke => self.log.event("wake", format_args!("state kept")),
            Resumed::WasReset => self.start_over("fresh rings after a stop"),
        }
        let back = |(i, asleep): (usize, &AtomicBool)| {
            !asleep.load(Ordering::Acquire) || vrings.get(i).is_some_and(is_active)
        };
        if !self.is_asleep() || !self.asleep.iter().enumerate().all(back) {
            return self.is_asleep();
        }
        if let Err(e) = lock(&self.resume_timer).clear() {
            error!("{}: resume timer: {e}", self.name);
        }
        {
            // Let go before serving: every request takes it.
            let _order = self.shmem_order();
            let pending = {
                let mut deferred = lock(&self.deferred);
                for asleep in &self.asleep {
                    asleep.store(false, Ordering::Release);
                }
                std::mem::take(&mut *deferred)
            };
            if !pending.is_empty() {
                self.log.event(
                    "resumed",
                    format_args!("window-changes-sent={}", pending.len()),
                );
                self.apply_shmem(pending);
            }
        }
        let held = std::mem::take(&mut *lock(&self.held));
        if let Some(control) = vrings.get(usize::from(CONTROL_QUEUE)) {
            if let Err(e) = self.answer(control, &held) {
                self.mark_broken(CONTROL_QUEUE, &e);
            }
        }
        // A kick taken while its queue was being stopped announced chains no kick will announce
        // again.
        for (index, kind) in [
            (CONTROL_QUEUE, queue::Kind::Control),
            (CURSOR_QUEUE, queue::Kind::Cursor),
        ] {
            if let Some(vring) = vrings.get(usize::from(index)).filter(|v| is_active(v)) {
                self.serve(index, vring, kind);
            }
        }
        false
    }

    pub(super) fn is_asleep(&self) -> bool {
        self.asleep.iter().any(|a| a.load(Ordering::Acquire))
    }

    /// Takes what is on a queue's avail ring and answers it.
    fn serve(&self, index: u16, vring: &VringRwLock, kind: queue::Kind) {
        // An error here is a broken ring in guest memory. Returning it would end this VM's worker
        // for good, so stop serving that queue until it is set up again.
        if let Err(e) = queue::drain(self, vring, kind) {
            self.mark_broken(index, &e);
        }
    }

    /// `queue` was read up to `place` (see `Lifecycle::served`).
    pub(super) fn served(&self, queue: u16, place: RingPlace) {
        self.lifecycle.served(usize::from(queue), place);
    }

    /// Starts the resume timer, if it is not ticking already.
    pub(super) fn poll_for_resume(&self) {
        let mut timer = lock(&self.resume_timer);
        if !timer.is_armed().unwrap_or(false) {
            if let Err(e) = timer.reset(RESUME_POLL, Some(RESUME_POLL)) {
                error!("{}: resume timer: {e}", self.name);
            }
        }
    }

    /// Sets EVENT_DISPLAY and tells the driver to re-read the config space (CONFIG_CHANGE_MSG),
    /// unless the VMM keeps display events itself. QEMU's vhost-user-gpu does: it answers the
    /// config's events fields from its own state (its get_config overwrites ours), raises the
    /// config interrupt on a resize itself, and takes CONFIG_CHANGE_MSG for an error ("vhost-user-gpu:
    /// unhandled backend config change" in its log). Frontends without a display of their own
    /// (QEMU's generic vhost-user device, crosvm) re-read the config and notify the guest.
    pub(super) fn raise_display_event(&self) {
        *lock(&self.events_read) |= EVENT_DISPLAY;
        if self.vmm_owns_display_events.load(Ordering::Acquire) {
            return;
        }
        let channel = match self.backend_channel.stream() {
            Ok(Some(channel)) => channel,
            // No channel: the driver sees the event when it next reads the config space.
            Ok(None) => return,
            Err(e) => return self.disconnect(&e),
        };
        // `channel` outlives the call, so the descriptor the watchdog may shut down is this one.
        let sent = self.peer.call("CONFIG_CHANGE_MSG", (), || {
            relay::notify_config_change(&channel)
        });
        if let Err(e) = sent {
            self.disconnect(&e);
        }
    }

    /// The share registry, if this VM shares.
    pub(super) fn shares(&self) -> Option<&ShareRegistry> {
        self.shares.as_deref()
    }

    pub(super) fn shmem_order(&self) -> MutexGuard<'_, ()> {
        lock(&self.shmem_order)
    }

    /// Lets this VM's imports and exports be found by other VMs (once it is an `Arc`).
    pub fn join_shares(self: &Arc<Self>) {
        if let Some(hub) = &self.shares {
            let me: Arc<dyn ShareClient> = self.clone();
            hub.join(self.record.id, &self.name, Arc::downgrade(&me));
        }
    }

    /// Withdraws exports of this VM: their importers unmap them before this returns. Then the
    /// shared memory is brought under the budget (what this request mapped may push out
    /// something else).
    pub(super) fn revoke(&self, uuids: &[Uuid]) {
        if let Some(hub) = &self.shares {
            for uuid in uuids {
                hub.revoke(uuid);
            }
            hub.enforce_budget();
        }
    }

    /// Carries out window changes at the frontend. Called without the device lock: the frontend
    /// re-sends its memory table while it maps, and waits for that answer. Returns false if a
    /// mapping was refused (the device has then forgotten it).
    ///
    /// While the queues are stopped the requests wait, in order, and go out once the device is
    /// served again (`check_resumed`), before anything the guest asks then. Nothing weakens
    /// "no importer reads after the exporter's unref was answered": a guest whose device is
    /// stopped is asleep or being reset, and each shared buffer is a file of its own whose pages
    /// are never reused for anything else, so until the unmap arrives the importer can read only
    /// what it could read before the unref.
    pub(super) fn apply_shmem(&self, requests: Vec<ShmemRequest>) -> bool {
        {
            let mut deferred = lock(&self.deferred);
            if self.is_asleep() {
                deferred.extend(requests);
                self.poll_for_resume();
                return true;
            }
        }
        let backend = lock(&self.backend_req).clone();
        let mut all_mapped = true;
        for request in requests {
            // Known before QEMU adds the mapping to the VM's memory table, while it maps.
            let registered = match &request {
                ShmemRequest::Map {
                    file,
                    file_offset,
                    shm_offset,
                    len,
                    ..
                } => self
                    .window_files
                    .mapping(*shm_offset, file, *file_offset, *len),
                ShmemRequest::Unmap { .. } => Ok(()),
            };
            let result = match (&backend, registered) {
                (_, Err(e)) => Err(e),
                (None, _) => Err(io::Error::other("no backend request channel")),
                (Some(b), Ok(())) => self
                    .peer
                    .call("SHMEM_MAP/UNMAP", b.clone(), || send_shmem(b, &request)),
            };
            match &request {
                ShmemRequest::Map { shm_offset, .. } if result.is_err() => {
                    self.window_files.unmapped(*shm_offset)
                }
                ShmemRequest::Unmap { shm_offset, .. } => self.window_files.unmapped(*shm_offset),
                ShmemRequest::Map { .. } => {}
            }
            if let Err(e) = result {
                if self.peer.is_stalled() {
                    self.disconnect(&e);
                } else {
                    self.log.warn(format_args!("{request:?} failed: {e}"));
                }
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
            blob_alignment: self.blob_alignment,
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

/// Where a queue's rings are and how far it was read, and whether it is ready (set up and not
/// stopped). Its next available index moves only while it is ready.
fn ring_place(vring: &VringRwLock) -> (RingPlace, bool) {
    let state = vring.get_ref();
    let q = state.get_queue();
    (place_of(q), q.ready())
}

pub(super) fn place_of(q: &Queue) -> RingPlace {
    RingPlace {
        desc: q.desc_table(),
        avail: q.avail_ring(),
        used: q.used_ring(),
        next_avail: q.next_avail(),
    }
}

/// A timer whose read does not block: disarming it (`check_resumed`) drops the ticks counted,
/// maybe after their event was reported, and a blocking read would then wait for ever.
fn nonblocking_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new()?;
    let fd = timer.as_raw_fd();
    // SAFETY: fcntl on a descriptor `timer` owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

/// Whether a queue is set up and enabled: the frontend has re-activated it.
fn is_active(vring: &VringRwLock) -> bool {
    let state = vring.get_ref();
    state.get_queue().ready() && state.is_enabled()
}

/// Asks the frontend to change the window; blocks until it acknowledged.
fn send_shmem(backend: &Backend, request: &ShmemRequest) -> io::Result<()> {
    match request {
        ShmemRequest::Map {
            file,
            file_offset,
            shm_offset,
            len,
            writable,
            ..
        } => {
            let flags = if *writable {
                VhostUserMMapFlags::WRITABLE
            } else {
                VhostUserMMapFlags::default()
            };
            let msg = mmap_msg(*shm_offset, *len, *file_offset, flags);
            backend.shmem_map(&msg, file.as_ref()).map(drop)
        }
        ShmemRequest::Unmap { shm_offset, len } => {
            let msg = mmap_msg(*shm_offset, *len, 0, VhostUserMMapFlags::default());
            backend.shmem_unmap(&msg).map(drop)
        }
    }
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

impl ShareClient for VmBackend {
    /// Another VM withdrew a buffer this one imported: its mappings go before this returns.
    fn revoked(&self, uuid: &Uuid) {
        let _order = self.shmem_order();
        let (unmaps, hidden) = self.device().revoke_import(uuid);
        self.apply_shmem(unmaps);
        // No display keeps showing the exporter's pages.
        self.show(&hidden);
    }

    fn last_fences(
        &self,
        timeline: Option<Timeline>,
        record: &mut dyn FnMut(Vec<(Timeline, FenceId)>),
    ) {
        let parked = lock(&self.parked);
        let parts = match timeline {
            Some(t) => parked.last_on(t).map(|f| (t, f)).into_iter().collect(),
            None => parked.last_of_each(),
        };
        record(parts);
    }

    fn share_fence_done(&self, fence: FenceId) {
        self.fence_inbox.signalled(fence);
    }

    fn fence_failed(&self, handle: u64) {
        self.device().share_fence_failed(handle);
    }

    fn can_move(&self, uuid: &Uuid) -> bool {
        !self.device().share_busy(uuid)
    }

    /// A buffer this VM imports is moved out: its mappings go before this returns.
    fn moved(&self, uuid: &Uuid) {
        let _order = self.shmem_order();
        let unmaps = self.device().share_moved(uuid);
        self.apply_shmem(unmaps);
    }
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

    fn acked_features(&self, features: u64) {
        let named = [
            (F_VIRGL, "virgl"),
            (F_EDID, "edid"),
            (F_RESOURCE_UUID, "resource_uuid"),
            (F_RESOURCE_BLOB, "resource_blob"),
            (F_CONTEXT_INIT, "context_init"),
            (F_BLOB_ALIGNMENT, "blob_alignment"),
        ];
        let on: Vec<&str> = (named.iter())
            .filter(|(bit, _)| features & (1 << bit) != 0)
            .map(|(_, name)| *name)
            .collect();
        self.log.event(
            "features",
            format_args!("acked={features:#x} gpu={}", on.join(",")),
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // CONFIGURE_MEM_SLOTS: QEMU adds every window mapping to the VM's memory table, and a
        // whole table (without it) takes only 8 regions; with it, 509 (see `memtable`).
        let base = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
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
        self.lifecycle.reset();
        self.start_over("RESET_DEVICE");
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        self.lifecycle.stopped(queue_index as usize);
        if let Some(a) = self.asleep.get(queue_index as usize) {
            a.store(true, Ordering::Release);
        }
        self.poll_for_resume();
        // The frontend sets the queue up anew after this: serve it again then.
        if let Some(b) = self.broken.get(queue_index as usize) {
            b.store(false, Ordering::Release);
        }
        Ok(())
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
        // The library has mapped the table and published it to its own users already; the queues
        // only ever use `self.mem`, which takes a table only once every region checked out.
        let table = mem.memory().into_inner();
        // Window mappings are not guest memory here; the rest is checked and watched before the
        // queues can use it: a file shrunk from now on costs this VM only.
        let checked = memtable::split(&table, &self.window_files).and_then(|split| {
            split.guest.iter().try_for_each(check_region)?;
            let guest = Arc::new(split.guest);
            memfault::watch(&guest, &self.memory_owner)?;
            Ok((guest, split.library))
        });
        let (guest, library) = match checked {
            Ok(tables) => tables,
            Err(why) => {
                // Also withdraw it from the library, which reads the used ring itself on
                // SET_VRING_ADDR. Refusing the message ends the connection.
                mem.lock()
                    .map_err(|_| io::Error::other("memory lock poisoned"))?
                    .replace(GuestMemoryMmap::new());
                *lock(&self.mem) = Arc::new(GuestMemoryMmap::new());
                error!("{}: memory table refused: {why}", self.name);
                return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
            }
        };
        if let Some(library) = library {
            mem.lock()
                .map_err(|_| io::Error::other("memory lock poisoned"))?
                .replace(library);
        }
        // Only a window mapping came or went (QEMU's every map and unmap): nothing to tell.
        let unchanged = memtable::same_regions(&lock(&self.mem), &guest);
        let mut device = self.device();
        // Each RAM region takes one of the frontend's slots; each mapping, another.
        device.set_mapping_limit(memtable::MAX_MEM_SLOTS.saturating_sub(guest.num_regions()));
        if unchanged {
            return Ok(());
        }
        device.renderer().memory_changed(&guest);
        drop(device);
        *lock(&self.mem) = guest;
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        *lock(&self.backend_req) = Some(backend);
    }

    fn set_gpu_socket(&self, gpu: GpuBackend) -> io::Result<()> {
        // Only store it: talking to the display now could deadlock, since the frontend may be
        // waiting for our reply to this very message. The queue worker does the handshake.
        *lock(&self.display) = Some(DisplayLink::new(gpu));
        self.vmm_owns_display_events.store(true, Ordering::Release);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // vhost-user-backend 0.24 turns the consumer it is given into a raw fd and never closes
        // it: one leaked eventfd per connection. So none is given; the worker is ended through
        // `self.exit`, a listener of ours (EXIT_EVENT), closed when this VM's backend is dropped.
        None
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
        if device_event == EXIT_EVENT {
            // An error is the only way to end the library's event loop from here.
            return Err(io::Error::other("VM torn down"));
        }
        let asleep = self.check_resumed(vrings);
        if device_event == RESUME_EVENT {
            // Only read the tick, if any is left: `check_resumed` did the work.
            let _ = lock(&self.resume_timer).wait();
            return Ok(());
        }
        if device_event == REFRESH_EVENT {
            let _ = self.refresh.read();
            self.refresh_output();
            return Ok(());
        }
        if device_event == RENDERER_EVENT {
            // Out of the device lock: a renderer that fails here tells the VM, which must not
            // wait for it.
            let renderer = self.device().renderer().clone();
            renderer.poll();
        }
        if device_event == FENCE_EVENT || device_event == RENDERER_EVENT {
            if let Some(control) = vrings.get(usize::from(CONTROL_QUEUE)) {
                if let Err(e) = self.answer_signalled(control) {
                    self.log
                        .warn(format_args!("answering fenced requests: {e}"));
                }
            }
            self.lost_memory();
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
        // A queue set up again before the others: served with them (`check_resumed`).
        if !asleep {
            self.serve(device_event, vring, kind);
        }
        // Also a fault outside a request (the rings, a fence's answer).
        self.lost_memory();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{config_window, CONFIG_SIZE};

    #[test]
    fn config_reads_are_exactly_the_size_asked() {
        let fields: [u8; CONFIG_SIZE] = std::array::from_fn(|i| i as u8 + 1);
        assert_eq!(
            config_window(&fields, 0, 24),
            [&fields[..], &[0; 4]].concat()
        );
        assert_eq!(config_window(&fields, 8, 4), vec![9, 10, 11, 12]);
        assert_eq!(config_window(&fields, 18, 4), vec![19, 20, 0, 0]);
        assert_eq!(config_window(&fields, u32::MAX, 2), vec![0, 0]);
        assert_eq!(config_window(&fields, 0, u32::MAX).len(), 256);
    }
}
