//! The peer a render worker is measured against: the same renderer called in place, on the VM's
//! queue thread, by a vhost-user backend in the bench process (vgpud's own transport and device,
//! `RendererSpec::InPlace`). It exists only here; the daemon never builds it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use vgpud::device::memory::HostRange;
use vgpud::device::{BlobArgs, CapsetInfo, DeviceConfig, ExportedBlob, RenderError, Renderer};
use vgpud::fences::{Fence, FenceSink};
use vgpud::guestlog::GuestLog;
use vgpud::hub::registry::Registry;
use vgpud::ids::{RendererCtxId as Ctx, RendererResId as Res};
use vgpud::render::{self, RendererKind, SharedRenderer, Started};
use vgpud::vhost::{serve, FailureLimit, RendererSpec, VmTemplate, VmmSource};
use vgpud_protocol::{Rect, ResourceCreate3d, Transfer3d};
use vhost::vhost_user::Listener;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Serves one VM at a time on a fresh socket in `dir`, its renderer of `kind` built on the VM's
/// queue thread at its first call. virglrenderer starts once per process, so a 3D kind serves
/// one VM in all: keep its connection. `capsets` are what the renderer offers, given up front
/// because the device asks before the queue thread exists.
pub fn serve_in_place(
    dir: &Path,
    kind: RendererKind,
    capsets: Vec<CapsetInfo>,
) -> io::Result<PathBuf> {
    let socket = dir.join(format!("in-place-{kind:?}.sock"));
    let listener = Listener::new(&socket, true).map_err(io::Error::other)?;
    let make: vgpud::vhost::MakeRenderer = Arc::new(move |sink| -> SharedRenderer {
        Arc::new(OnQueueThread::new(kind, sink, capsets.clone()))
    });
    let template = VmTemplate {
        socket: socket.display().to_string(),
        registry: Arc::new(Registry::default()),
        renderer: RendererSpec::InPlace(make),
        device: DeviceConfig::default(),
        shares: None,
        share: false,
        vmm_timeout: Duration::from_secs(10),
        failure_limit: FailureLimit {
            failures: 1,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(1),
        },
        log: GuestLog::new("in-place"),
        output: None,
    };
    thread::Builder::new()
        .name("in-place".into())
        .spawn(move || serve("in-place", VmmSource::Listener(listener), template))?;
    Ok(socket)
}

/// A renderer built on the first thread that calls it (the queue thread) and used there only;
/// its fence descriptor is watched through `epoll`, the descriptor the queue thread polls.
struct OnQueueThread {
    kind: RendererKind,
    sink: Arc<dyn FenceSink>,
    capsets: Vec<CapsetInfo>,
    started: OnceLock<Option<Started>>,
    epoll: Epoll,
}

impl OnQueueThread {
    fn new(kind: RendererKind, sink: Arc<dyn FenceSink>, capsets: Vec<CapsetInfo>) -> Self {
        OnQueueThread {
            kind,
            sink,
            capsets,
            started: OnceLock::new(),
            epoll: Epoll::new().expect("epoll"),
        }
    }

    fn r(&self) -> Result<&SharedRenderer, RenderError> {
        let started = self.started.get_or_init(|| {
            let started = render::start(self.kind, self.sink.clone())
                .map_err(|e| log::error!("in-place renderer: {e}"))
                .ok()?;
            if let Some(poll) = &started.poll {
                let ev = EpollEvent::new(EventSet::IN, 0);
                let fd = poll.fd.as_fd().as_raw_fd();
                (self.epoll.ctl(ControlOperation::Add, fd, ev))
                    .map_err(|e| log::error!("in-place renderer: watching fd {fd}: {e}"))
                    .ok()?;
            }
            Some(started)
        });
        started
            .as_ref()
            .map(|s| &s.renderer)
            .ok_or_else(|| RenderError::Rejected("the in-place renderer did not start".into()))
    }
}

impl Renderer for OnQueueThread {
    fn resource_id_for(&self, guest_id: u32) -> Option<Res> {
        self.r().ok()?.resource_id_for(guest_id)
    }
    fn create_2d(&self, id: Res, width: u32, height: u32, format: u32) -> Result<(), RenderError> {
        self.r()?.create_2d(id, width, height, format)
    }
    fn unref(&self, id: Res) {
        if let Ok(r) = self.r() {
            r.unref(id)
        }
    }
    fn attach_backing(&self, id: Res, ranges: Vec<HostRange>) -> Result<(), RenderError> {
        self.r()?.attach_backing(id, ranges)
    }
    fn detach_backing(&self, id: Res) {
        if let Ok(r) = self.r() {
            r.detach_backing(id)
        }
    }
    fn transfer_to_host_2d(
        &self,
        id: Res,
        width: u32,
        rect: Rect,
        offset: u64,
    ) -> Result<(), RenderError> {
        self.r()?.transfer_to_host_2d(id, width, rect, offset)
    }
    fn read_pixels(&self, id: Res, rect: Rect) -> Result<Vec<u8>, RenderError> {
        self.r()?.read_pixels(id, rect)
    }
    fn capsets(&self) -> Vec<CapsetInfo> {
        self.capsets.clone()
    }
    fn capset(&self, id: u32, version: u32) -> Result<Vec<u8>, RenderError> {
        self.r()?.capset(id, version)
    }
    fn alloc_ctx_id(&self) -> Option<Ctx> {
        self.r().ok()?.alloc_ctx_id()
    }
    fn create_3d(&self, id: Res, args: &ResourceCreate3d) -> Result<(), RenderError> {
        self.r()?.create_3d(id, args)
    }
    fn create_context(&self, ctx: Ctx, context_init: u32, name: &str) -> Result<(), RenderError> {
        self.r()?.create_context(ctx, context_init, name)
    }
    fn destroy_context(&self, ctx: Ctx) {
        if let Ok(r) = self.r() {
            r.destroy_context(ctx)
        }
    }
    fn attach_to_context(&self, ctx: Ctx, id: Res) -> Result<(), RenderError> {
        self.r()?.attach_to_context(ctx, id)
    }
    fn detach_from_context(&self, ctx: Ctx, id: Res) {
        if let Ok(r) = self.r() {
            r.detach_from_context(ctx, id)
        }
    }
    fn transfer_to_host_3d(&self, ctx: Ctx, id: Res, t: &Transfer3d) -> Result<(), RenderError> {
        self.r()?.transfer_to_host_3d(ctx, id, t)
    }
    fn transfer_from_host_3d(&self, ctx: Ctx, id: Res, t: &Transfer3d) -> Result<(), RenderError> {
        self.r()?.transfer_from_host_3d(ctx, id, t)
    }
    fn submit_3d(&self, ctx: Ctx, commands: Vec<u8>) -> Result<(), RenderError> {
        self.r()?.submit_3d(ctx, commands)
    }
    fn create_blob(
        &self,
        ctx: Ctx,
        id: Res,
        args: BlobArgs,
        backing: Option<Vec<HostRange>>,
    ) -> Result<(), RenderError> {
        self.r()?.create_blob(ctx, id, args, backing)
    }
    fn map_blob(&self, id: Res) -> Result<ExportedBlob, RenderError> {
        self.r()?.map_blob(id)
    }
    fn create_fence(&self, ctx: Ctx, ring: Option<u8>) -> Result<Fence, RenderError> {
        self.r()?.create_fence(ctx, ring)
    }
    // Comes on the thread of the vhost-user messages, not the queue thread; an in-place
    // renderer reads backings through this process's own mapping, so there is nothing to do.
    fn memory_changed(&self, _mem: &GuestMemoryMmap) {}
    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }
    fn poll(&self) {
        if let Some(Some(Started { poll: Some(p), .. })) = self.started.get() {
            p.run();
        }
    }
}
