//! The virtio-gpu device model for one VM: resources, scanouts and cursor, over a `Renderer` and a
//! view of the VM's memory. No I/O here; the vhost layer feeds requests in and carries the
//! resulting display commands out, after releasing the device lock.

mod blob;
mod context;
pub mod memory;
pub mod renderer;
mod resource;
mod scanout;
pub mod share;
mod window;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use vgpud_protocol::{
    edid_for_mode, format, Command, CtrlHeader, DisplayOne, ErrorCode, Rect, Request, Response,
    UpdateCursor, MAX_SCANOUTS,
};
use vm_memory::GuestMemoryMmap;

pub use self::blob::ShmemRequest;
use self::context::Context;
use self::memory::resolve_backing;
pub use self::renderer::{BlobArgs, CapsetInfo, DeathNotice, ExportedBlob, RenderError, Renderer};
use self::resource::Resource;
pub use self::scanout::{
    band_bytes, bands, inside, intersect, CursorImage, DisplayCmd, CURSOR_SIZE,
};
use self::scanout::{rect_within, Scanout};
use self::share::{ShareHub, ShareState};
use self::window::HostWindow;
use crate::fences::{Fence, Timeline};
use crate::guestlog::GuestLog;
use crate::ids::VmId;
use crate::ids::{FenceId, GuestCtxId, RendererCtxId, RendererResId};
use vgpud_protocol::share::{Uuid, CAPSET_SHARE, SHARE_VERSION};

/// Counts of what a device holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    pub resources: usize,
    pub resource_bytes: u64,
    pub blob_mappings: usize,
    /// Buffers exported, resources made from imports, pins held.
    pub exports: usize,
    pub imports: usize,
    pub pins: usize,
}

/// Per-VM limits and the initial display layout.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    pub num_scanouts: u32,
    pub width: u32,
    pub height: u32,
    pub max_resources: usize,
    pub max_resource_bytes: u64,
    pub max_contexts: usize,
    /// Size of the host-visible window (shared memory region 1) blobs are mapped into; 0: none.
    pub hostmem: u64,
    /// Most blobs mapped in the window at once: each is a memory region to QEMU and a KVM
    /// memory slot to crosvm, of which a VM has a few hundred.
    pub max_mappings: usize,
}

/// Per-VM quotas unless configured otherwise (the command line's defaults too).
pub const DEFAULT_MAX_RESOURCES: usize = 16384;
pub const DEFAULT_MAX_RESOURCE_BYTES: u64 = 1 << 30;
pub const DEFAULT_MAX_CONTEXTS: usize = 64;
pub const DEFAULT_MAX_MAPPINGS: usize = 256;

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            num_scanouts: 1,
            width: 1280,
            height: 800,
            max_resources: DEFAULT_MAX_RESOURCES,
            max_resource_bytes: DEFAULT_MAX_RESOURCE_BYTES,
            max_contexts: DEFAULT_MAX_CONTEXTS,
            hostmem: 0,
            max_mappings: DEFAULT_MAX_MAPPINGS,
        }
    }
}

/// What one control request produced.
#[derive(Debug)]
pub struct Outcome {
    pub response: Response,
    pub display: Vec<DisplayCmd>,
    /// Answer only once this renderer fence has signalled (on this timeline, in order).
    pub fence: Option<(Timeline, FenceId)>,
    /// A context was destroyed: its parked responses will never be signalled.
    pub closed_context: Option<GuestCtxId>,
    /// Window mappings to change at the frontend before the response is sent.
    pub shmem: Vec<ShmemRequest>,
    /// Exports this request ended: every importer must let go before the response is sent.
    pub revoke: Vec<Uuid>,
}

/// Why a command failed: the error the guest is answered with, and the cause, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub why: Cow<'static, str>,
}

impl Failure {
    pub fn new(code: ErrorCode, why: impl Into<Cow<'static, str>>) -> Self {
        Failure {
            code,
            why: why.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:?} ({})", self.code, self.why)
    }
}

/// ERR_INVALID_PARAMETER, because of `why`.
fn invalid(why: impl Into<Cow<'static, str>>) -> Failure {
    Failure::new(ErrorCode::InvalidParameter, why)
}

/// ERR_OUT_OF_MEMORY, because of `why`.
fn out_of_memory(why: impl Into<Cow<'static, str>>) -> Failure {
    Failure::new(ErrorCode::OutOfMemory, why)
}

fn no_resource(id: u32) -> Failure {
    Failure::new(ErrorCode::InvalidResourceId, format!("no resource {id}"))
}

fn no_scanout(id: u32) -> Failure {
    Failure::new(ErrorCode::InvalidScanoutId, format!("no scanout {id}"))
}

type Result<T> = std::result::Result<T, Failure>;

pub struct Device<R: Renderer> {
    renderer: R,
    cfg: DeviceConfig,
    resources: BTreeMap<u32, Resource>,
    resource_bytes: u64,
    contexts: BTreeMap<GuestCtxId, Context>,
    capsets: Vec<CapsetInfo>,
    scanouts: Vec<Scanout>,
    modes: Vec<DisplayOne>,
    edids: Vec<Option<Vec<u8>>>,
    display_attached: bool,
    /// Flushes turn into display updates: a display or an output of vgpud's own shows them.
    showing: bool,
    window: HostWindow,
    /// Mappings a reset dropped; the frontend is told at the next request.
    stale_mappings: Vec<ShmemRequest>,
    /// Sharing with other VMs (the share context), when this VM may.
    share: Option<ShareState>,
    /// Exports ended by the request being handled (see `Outcome::revoke`).
    revoking: Vec<Uuid>,
    /// The fence the renderer made with the fenced SUBMIT_3D or 3D transfer being handled, if it
    /// did.
    made_fence: Option<std::result::Result<Fence, RenderError>>,
    /// Whether the request being handled is fenced: it must be done, refusals included, when
    /// it is answered (see `Renderer::settle`).
    fenced: bool,
    log: GuestLog,
}

impl<R: Renderer> Device<R> {
    pub fn new(renderer: R, mut cfg: DeviceConfig) -> Self {
        cfg.num_scanouts = cfg.num_scanouts.clamp(1, MAX_SCANOUTS as u32);
        // Slots for every scanout virtio-gpu allows: with a display attached, the frontend decides
        // how many the guest sees (QEMU's max_outputs), not our configuration.
        let modes = (0..MAX_SCANOUTS)
            .map(|i| DisplayOne {
                rect: Rect {
                    x: 0,
                    y: 0,
                    width: cfg.width,
                    height: cfg.height,
                },
                enabled: i == 0,
                flags: 0,
            })
            .collect();
        Device {
            capsets: renderer.capsets(),
            renderer,
            resources: BTreeMap::new(),
            resource_bytes: 0,
            contexts: BTreeMap::new(),
            scanouts: vec![Scanout::default(); MAX_SCANOUTS],
            modes,
            edids: vec![None; MAX_SCANOUTS],
            display_attached: false,
            showing: false,
            window: HostWindow::new(cfg.hostmem, cfg.max_mappings),
            stale_mappings: Vec::new(),
            share: None,
            revoking: Vec::new(),
            made_fence: None,
            fenced: false,
            log: GuestLog::new("vm"),
            cfg,
        }
    }

    /// Lets this VM share buffers with others through `hub`: the share context's capset is
    /// offered (and with it 3D, which contexts need).
    pub fn with_share(mut self, hub: Arc<dyn ShareHub>, vm: VmId) -> Self {
        self.capsets.push(CapsetInfo {
            id: CAPSET_SHARE,
            max_version: SHARE_VERSION,
            max_size: 4,
        });
        self.share = Some(ShareState::new(hub, vm));
        self
    }

    /// Where this VM's guest-triggered warnings go (rate-limited, named after the VM).
    pub fn with_log(mut self, log: GuestLog) -> Self {
        self.log = log;
        self
    }

    pub fn num_scanouts(&self) -> u32 {
        self.cfg.num_scanouts
    }

    pub fn num_capsets(&self) -> u32 {
        u32::try_from(self.capsets.len()).unwrap_or(0)
    }

    /// Whether the renderer does 3D (the VIRGL feature).
    pub fn supports_3d(&self) -> bool {
        self.has_3d()
    }

    /// Whether blobs are offered (the RESOURCE_BLOB feature).
    /// Without a window a VM that shares still gets blobs: it can import a buffer and show it
    /// (SET_SCANOUT_BLOB), only not map one.
    pub fn supports_blob(&self) -> bool {
        self.window.size() > 0 || self.share.is_some()
    }

    /// How many blobs the frontend's memory table can still take (QEMU adds each mapping to
    /// it); the window maps no more than that, nor than `max_mappings`. MAP_BLOB past it answers
    /// OUT_OF_MEMORY.
    pub fn set_mapping_limit(&mut self, slots: usize) {
        self.window.set_limit(slots.min(self.cfg.max_mappings));
    }

    pub fn hostmem(&self) -> u64 {
        self.window.size()
    }

    /// A display now receives scanouts and updates (pixels are read back only while attached).
    pub fn attach_display(&mut self) {
        self.display_attached = true;
        self.showing = true;
    }

    /// vgpud's own output shows the scanouts: flushes become updates, the scanouts stay the
    /// configured ones.
    pub fn attach_output(&mut self) {
        self.showing = true;
    }

    /// What it takes to show every scanout whole: its size, then all of its pixels (for an
    /// output whose picture went stale).
    pub fn picture(&self) -> Vec<DisplayCmd> {
        let mut cmds = Vec::new();
        for (i, s) in self.scanouts.iter().enumerate() {
            if s.resource_id == 0 {
                continue;
            }
            let scanout = i as u32;
            cmds.push(DisplayCmd::Scanout {
                scanout,
                width: s.rect.width,
                height: s.rect.height,
            });
            cmds.push(DisplayCmd::Update {
                scanout,
                rect: Rect {
                    x: 0,
                    y: 0,
                    width: s.rect.width,
                    height: s.rect.height,
                },
                resource_id: s.resource_id,
                area: s.rect,
            });
        }
        cmds
    }

    /// Scanouts that show one of `ids`, turned off for the displays (the guest's own view of
    /// them is unchanged): what a revoked import's pages leave behind.
    pub fn hide_scanouts_of(&self, ids: &[u32]) -> Vec<DisplayCmd> {
        (self.scanouts.iter().enumerate())
            .filter(|(_, s)| s.resource_id != 0 && ids.contains(&s.resource_id))
            .map(|(i, _)| DisplayCmd::disable(i as u32))
            .collect()
    }

    /// Replaces the display layout with what the frontend's display reports. Returns whether it
    /// changed (the caller raises EVENT_DISPLAY).
    pub fn set_display_modes(&mut self, modes: &[DisplayOne]) -> bool {
        let mut changed = false;
        for (mine, theirs) in self.modes.iter_mut().zip(modes) {
            changed |= mine != theirs;
            *mine = *theirs;
        }
        changed
    }

    /// An EDID the frontend's display supplied for `scanout`.
    pub fn set_edid(&mut self, scanout: u32, edid: Vec<u8>) {
        if let Some(slot) = self.edids.get_mut(scanout as usize) {
            *slot = Some(edid);
        }
    }

    pub fn handle(&mut self, req: &Request, mem: &Arc<GuestMemoryMmap>) -> Outcome {
        let mut display = Vec::new();
        let mut shmem = std::mem::take(&mut self.stale_mappings);
        self.made_fence = None;
        self.fenced = req.hdr.is_fenced();
        let mut result = self.dispatch(req, mem, &mut display, &mut shmem);
        // A fenced request is answered when done: a refusal the renderer found after its call
        // returned is its answer too. (A fence made with it has waited for it already.)
        if self.fenced && result.is_ok() && self.made_fence.is_none() {
            if let Err(e) = self.renderer.settle() {
                result = Err(render_error(e));
            }
        }
        let closed_context = (matches!(req.cmd, Command::CtxDestroy) && result.is_ok())
            .then_some(GuestCtxId(req.hdr.ctx_id));
        let response = result.unwrap_or_else(|failure| {
            let name = command_name(&req.hdr, &req.cmd);
            self.log.warn(format_args!("{name} failed: {failure}"));
            Response::Err(failure.code)
        });
        // Failed commands are fenced too: answering one early would signal the guest's earlier
        // fences on that timeline before their work is done.
        let fence = if req.hdr.is_fenced() {
            match self.made_fence.take() {
                Some(made) => self.pending_fence(Self::renderer_timeline(&req.hdr), made),
                None => self.create_fence(&req.hdr),
            }
        } else {
            None
        };
        Outcome {
            response,
            display,
            fence,
            closed_context,
            shmem,
            revoke: std::mem::take(&mut self.revoking),
        }
    }

    fn create_fence(&mut self, hdr: &CtrlHeader) -> Option<(Timeline, FenceId)> {
        let guest_ctx = GuestCtxId(hdr.ctx_id);
        let context = self.contexts.get(&guest_ctx);
        if context.is_some_and(|c| c.share) {
            // On the share context's own timeline, signalled by the hub once what the stream
            // waits for has (at once if nothing).
            let timeline = Timeline {
                ctx: guest_ctx,
                ring: hdr.ring(),
            };
            return self.share_fence().map(|id| (timeline, id));
        }
        let ctx = context.map(|c| c.renderer);
        let timeline = Self::renderer_timeline(hdr);
        if timeline.ring.is_some() && ctx.is_none() {
            // No such context: no timeline to order against, answer at once.
            return None;
        }
        let made = (self.renderer).create_fence(ctx.unwrap_or(RendererCtxId::NONE), timeline.ring);
        self.pending_fence(timeline, made)
    }

    /// The timeline a renderer's fence for `hdr` goes on: its context's ring, else the global one.
    fn renderer_timeline(hdr: &CtrlHeader) -> Timeline {
        match hdr.ring() {
            Some(ring) => Timeline {
                ctx: GuestCtxId(hdr.ctx_id),
                ring: Some(ring),
            },
            None => Timeline::GLOBAL,
        }
    }

    /// What the answer waits for, given the fence the renderer made.
    fn pending_fence(
        &self,
        timeline: Timeline,
        made: std::result::Result<Fence, RenderError>,
    ) -> Option<(Timeline, FenceId)> {
        match made {
            Ok(Fence::Pending(id)) => Some((timeline, id)),
            Ok(Fence::Signalled) => None,
            Err(e) => {
                self.log.warn(format_args!(
                    "cannot create a fence, answering at once: {e}"
                ));
                None
            }
        }
    }

    fn dispatch(
        &mut self,
        req: &Request,
        mem: &Arc<GuestMemoryMmap>,
        display: &mut Vec<DisplayCmd>,
        shmem: &mut Vec<ShmemRequest>,
    ) -> Result<Response> {
        let ctx = GuestCtxId(req.hdr.ctx_id);
        if is_3d(&req.cmd) && !self.has_3d() {
            return Err(Failure::new(ErrorCode::Unspec, "3D is not offered"));
        }
        if is_blob(&req.cmd) && !self.supports_blob() {
            return Err(Failure::new(ErrorCode::Unspec, "blobs are not offered"));
        }
        match &req.cmd {
            Command::GetDisplayInfo => {
                let shown = self.modes.iter().take(self.scanout_limit() as usize);
                Ok(Response::OkDisplayInfo(shown.copied().collect()))
            }
            Command::GetEdid { scanout } => self.get_edid(*scanout),
            Command::GetCapsetInfo { capset_index } => self.capset_info(*capset_index),
            Command::GetCapset {
                capset_id,
                capset_version,
            } => self.capset(*capset_id, *capset_version),
            Command::ResourceCreate2d {
                resource_id,
                format,
                width,
                height,
            } => self.create_2d(*resource_id, *format, *width, *height),
            Command::ResourceUnref { resource_id } => {
                // A freed blob never stays visible to the guest: it leaves the window first.
                shmem.extend(self.take_mapping(*resource_id)?);
                self.unref(*resource_id, display)
            }
            Command::ResourceAttachBacking {
                resource_id,
                entries,
            } => {
                let backing = resolve_backing(mem, entries)?;
                let res = self.resource_mut(*resource_id)?;
                if res.backing.is_some() {
                    return Err(invalid("the resource has a backing already"));
                }
                let renderer_id = res.renderer_id;
                self.renderer
                    .attach_backing(renderer_id, backing.ranges.clone())
                    .map_err(render_error)?;
                self.resource_mut(*resource_id)?.backing = Some(backing);
                Ok(Response::OkNodata)
            }
            Command::ResourceDetachBacking { resource_id } => {
                let res = self.resource_mut(*resource_id)?;
                let renderer_id = res.renderer_id;
                // Take the backing only after the renderer let go of the pages.
                if res.backing.is_none() {
                    return Err(invalid("the resource has no backing"));
                }
                self.renderer.detach_backing(renderer_id);
                self.resource_mut(*resource_id)?.backing = None;
                Ok(Response::OkNodata)
            }
            Command::TransferToHost2d {
                rect,
                offset,
                resource_id,
            } => self.transfer_to_host_2d(*resource_id, *rect, *offset),
            Command::SetScanout {
                rect,
                scanout_id,
                resource_id,
            } => self.set_scanout(*scanout_id, *resource_id, *rect, display),
            Command::ResourceFlush { rect, resource_id } => {
                self.flush(*resource_id, *rect, display)
            }
            Command::ResourceAssignUuid { resource_id } => {
                let res = self.resource_mut(*resource_id)?;
                let uuid = match res.uuid {
                    Some(uuid) => uuid,
                    None => *res.uuid.insert(resource::random_uuid().ok_or_else(|| {
                        Failure::new(ErrorCode::Unspec, "cannot read random bytes for a UUID")
                    })?),
                };
                Ok(Response::OkResourceUuid(uuid))
            }
            Command::CtxCreate {
                context_init,
                debug_name,
            } => self.ctx_create(ctx, *context_init, debug_name),
            Command::CtxDestroy => self.ctx_destroy(ctx),
            Command::CtxAttachResource { resource_id } => self.ctx_attach(ctx, *resource_id, true),
            Command::CtxDetachResource { resource_id } => self.ctx_attach(ctx, *resource_id, false),
            Command::ResourceCreate3d(args) => self.create_3d(args),
            Command::TransferToHost3d(t) | Command::TransferFromHost3d(t) => {
                let to_host = matches!(req.cmd, Command::TransferToHost3d(_));
                let fence_ring = req.hdr.is_fenced().then(|| req.hdr.ring());
                self.transfer_3d(ctx, t, to_host, fence_ring)
            }
            Command::Submit3d { commands } => {
                let fence_ring = req.hdr.is_fenced().then(|| req.hdr.ring());
                self.submit_3d(ctx, commands, fence_ring)
            }
            Command::UpdateCursor(_) | Command::MoveCursor(_) => Err(Failure::new(
                ErrorCode::Unspec,
                "a cursor command on the control queue",
            )),
            Command::ResourceCreateBlob(args) => self.create_blob(ctx, args, mem),
            Command::SetScanoutBlob(s) => self.set_scanout_blob(s, display),
            Command::ResourceMapBlob {
                resource_id,
                offset,
            } => {
                let (response, request) = self.map_blob(*resource_id, *offset)?;
                shmem.push(request);
                Ok(response)
            }
            Command::ResourceUnmapBlob { resource_id } => {
                let (response, request) = self.unmap_blob(*resource_id)?;
                shmem.extend(request);
                Ok(response)
            }
        }
    }

    /// Scanouts the guest may address: the configured ones when headless, all of them when a
    /// display (which owns the count) is attached.
    fn scanout_limit(&self) -> u32 {
        if self.display_attached {
            MAX_SCANOUTS as u32
        } else {
            self.cfg.num_scanouts
        }
    }

    fn get_edid(&self, scanout: u32) -> Result<Response> {
        if scanout >= self.scanout_limit() {
            return Err(no_scanout(scanout));
        }
        let mode = self
            .modes
            .get(scanout as usize)
            .ok_or_else(|| no_scanout(scanout))?;
        let edid = match self.edids.get(scanout as usize) {
            Some(Some(edid)) => edid.clone(),
            _ => edid_for_mode(mode.rect.width, mode.rect.height, b"vgpud").to_vec(),
        };
        Ok(Response::OkEdid(edid))
    }

    fn capset_info(&self, index: u32) -> Result<Response> {
        // The renderer's capsets, then the share context's if this VM shares.
        let info = self
            .capsets
            .get(index as usize)
            .copied()
            .ok_or_else(|| invalid(format!("no capset of index {index}")))?;
        Ok(Response::OkCapsetInfo {
            capset_id: info.id,
            capset_max_version: info.max_version,
            capset_max_size: info.max_size,
        })
    }

    /// Only capsets the renderer advertised, at a version it advertised, are answered.
    fn capset(&self, id: u32, version: u32) -> Result<Response> {
        if id == CAPSET_SHARE && self.share.is_some() {
            if version > SHARE_VERSION {
                return Err(invalid(format!("share capset version {version}")));
            }
            return Ok(Response::OkCapset(SHARE_VERSION.to_le_bytes().to_vec()));
        }
        let offered = self
            .renderer
            .capsets()
            .iter()
            .any(|c| c.id == id && version <= c.max_version);
        if !offered {
            return Err(invalid(format!(
                "capset {id} version {version} is not offered"
            )));
        }
        self.renderer
            .capset(id, version)
            .map(Response::OkCapset)
            .map_err(|e| invalid(format!("capset {id}: {}", bounded(&e))))
    }

    fn create_2d(&mut self, id: u32, fmt: u32, width: u32, height: u32) -> Result<Response> {
        self.check_new_id(id)?;
        let bpp =
            format::bytes_per_pixel(fmt).ok_or_else(|| invalid(format!("unknown format {fmt}")))?;
        if width == 0 || height == 0 {
            return Err(invalid(format!("a {width}x{height} resource")));
        }
        // The renderer computes width * 4 in 32 bits: keep the stride and the size representable.
        let stride = width
            .checked_mul(bpp)
            .ok_or_else(|| invalid(format!("a {width}-pixel-wide resource")))?;
        let size = u64::from(stride) * u64::from(height);
        self.add_resource(id, (width, height), size, |r, renderer_id| {
            r.create_2d(renderer_id, width, height, fmt)
        })
    }

    /// Charges a new resource of `size` bytes to the VM's quotas, has `create` make it in the
    /// renderer under its renderer id, and records it.
    fn add_resource(
        &mut self,
        id: u32,
        (width, height): (u32, u32),
        size: u64,
        create: impl FnOnce(&R, RendererResId) -> std::result::Result<(), RenderError>,
    ) -> Result<Response> {
        self.charge(size)?;
        let renderer_id = self.renderer_id_for(id)?;
        // Fenced, the creation must be done to be answered; a resource the renderer refused
        // is not kept.
        let created = create(&self.renderer, renderer_id).and_then(|()| {
            if self.fenced {
                self.renderer.settle()
            } else {
                Ok(())
            }
        });
        if let Err(e) = created {
            // Gives the renderer id back (a 2D renderer reuses it).
            self.renderer.unref(renderer_id);
            return Err(render_error(e));
        }
        self.resource_bytes += size;
        self.resources
            .insert(id, Resource::new(renderer_id, width, height, size));
        Ok(Response::OkNodata)
    }

    /// The renderer's id for a new resource `id`.
    fn renderer_id_for(&self, id: u32) -> Result<RendererResId> {
        self.renderer
            .resource_id_for(id)
            .ok_or_else(|| out_of_memory("the renderer has no resource id left"))
    }

    /// Checks that `id` may name a new resource.
    fn check_new_id(&self, id: u32) -> Result<()> {
        if id == 0 || self.resources.contains_key(&id) {
            return Err(Failure::new(
                ErrorCode::InvalidResourceId,
                format!("resource id {id} is 0 or in use"),
            ));
        }
        Ok(())
    }

    /// Checks that one more resource of `size` bytes fits the VM's quotas.
    fn charge(&self, size: u64) -> Result<()> {
        if self.resources.len() >= self.cfg.max_resources {
            return Err(out_of_memory(format!(
                "the VM has {} resources, its quota",
                self.resources.len()
            )));
        }
        let total = self.resource_bytes.checked_add(size);
        if total.is_none_or(|t| t > self.cfg.max_resource_bytes) || usize::try_from(size).is_err() {
            return Err(out_of_memory(format!(
                "{size} bytes more would pass the VM's quota of {} (it holds {})",
                self.cfg.max_resource_bytes, self.resource_bytes
            )));
        }
        Ok(())
    }

    fn unref(&mut self, id: u32, display: &mut Vec<DisplayCmd>) -> Result<Response> {
        self.resource(id)?;
        // A scanout never shows freed memory: it goes dark first.
        for (i, scanout) in self.scanouts.iter_mut().enumerate() {
            if scanout.resource_id == id {
                *scanout = Scanout::default();
                display.push(DisplayCmd::disable(i as u32));
            }
        }
        if let Some(res) = self.resources.remove(&id) {
            self.release(id, res);
        }
        Ok(Response::OkNodata)
    }

    /// Frees a resource in the renderer before dropping its backing (and so its memory view).
    fn release(&mut self, id: u32, res: Resource) {
        if let Some(uuid) = self.share_forget(id) {
            self.revoking.push(uuid);
        }
        if res.in_renderer() {
            self.renderer.unref(res.renderer_id);
        }
        self.resource_bytes = self.resource_bytes.saturating_sub(res.size);
        drop(res);
    }

    fn transfer_to_host_2d(&mut self, id: u32, rect: Rect, offset: u64) -> Result<Response> {
        let res = self.resource(id)?;
        let Some(backing_bytes) = res.backing.as_ref().map(|b| b.bytes) else {
            return Err(invalid(format!("resource {id} has no backing")));
        };
        if !rect_within(&rect, res.width, res.height) {
            return Err(outside(&rect, res));
        }
        if rect.width == 0 || rect.height == 0 {
            return Ok(Response::OkNodata);
        }
        // The guest names where the rect starts in its backing; it cannot start before the rect's
        // own position in a tightly packed image.
        let stride = u64::from(res.width) * 4;
        let implied = u64::from(rect.y) * stride + u64::from(rect.x) * 4;
        if offset < implied {
            return Err(invalid(format!(
                "offset {offset} lies before the rect's first pixel ({implied})"
            )));
        }
        // Copy what the backing holds, as the other virtio-gpu devices do: the guest kernel gives
        // a resource created without a size one page of backing and transfers the whole box.
        // Whole rows first, then the covered part of the next row; never a byte past the backing.
        let row_bytes = u64::from(rect.width) * 4;
        let held = backing_bytes.saturating_sub(offset);
        let full_rows = if held >= row_bytes {
            1 + (held - row_bytes) / stride
        } else {
            0
        };
        let full_rows = u32::try_from(full_rows)
            .unwrap_or(u32::MAX)
            .min(rect.height);
        let mut parts = Vec::with_capacity(2);
        if full_rows > 0 {
            parts.push((
                Rect {
                    height: full_rows,
                    ..rect
                },
                offset,
            ));
        }
        if full_rows < rect.height {
            let row_offset = offset + u64::from(full_rows) * stride;
            let pixels = backing_bytes.saturating_sub(row_offset) / 4;
            let pixels = u32::try_from(pixels).unwrap_or(u32::MAX).min(rect.width);
            if pixels > 0 {
                let part = Rect {
                    x: rect.x,
                    y: rect.y + full_rows,
                    width: pixels,
                    height: 1,
                };
                parts.push((part, row_offset));
            }
        }
        if full_rows < rect.height {
            self.log.info(format_args!(
                "TRANSFER_TO_HOST_2D of {}x{} rows past the {backing_bytes}-byte backing of \
                 resource {id}: copied the {full_rows} rows it holds",
                rect.width, rect.height
            ));
        }
        for (part, offset) in parts {
            self.renderer
                .transfer_to_host_2d(res.renderer_id, res.width, part, offset)
                .map_err(|e| invalid(format!("the renderer refused: {}", bounded(&e))))?;
        }
        Ok(Response::OkNodata)
    }

    fn set_scanout(
        &mut self,
        scanout_id: u32,
        id: u32,
        rect: Rect,
        display: &mut Vec<DisplayCmd>,
    ) -> Result<Response> {
        if scanout_id >= self.scanout_limit() {
            return Err(no_scanout(scanout_id));
        }
        if id == 0 {
            if let Some(s) = self.scanouts.get_mut(scanout_id as usize) {
                *s = Scanout::default();
            }
            display.push(DisplayCmd::disable(scanout_id));
            return Ok(Response::OkNodata);
        }
        let res = self.resource(id)?;
        if rect.width == 0 || rect.height == 0 || !rect_within(&rect, res.width, res.height) {
            return Err(outside(&rect, res));
        }
        let s = self
            .scanouts
            .get_mut(scanout_id as usize)
            .ok_or_else(|| no_scanout(scanout_id))?;
        *s = Scanout {
            resource_id: id,
            rect,
            layout: None,
        };
        display.push(DisplayCmd::Scanout {
            scanout: scanout_id,
            width: rect.width,
            height: rect.height,
        });
        Ok(Response::OkNodata)
    }

    fn flush(&mut self, id: u32, rect: Rect, display: &mut Vec<DisplayCmd>) -> Result<Response> {
        let res = self.resource(id)?;
        // A blob has no size of its own: its scanouts' rects, checked against its layout, bound
        // what is read.
        if res.blob.is_none() && !rect_within(&rect, res.width, res.height) {
            return Err(outside(&rect, res));
        }
        if !self.showing {
            return Ok(Response::OkNodata);
        }
        let shown: Vec<(usize, Scanout)> = self
            .scanouts
            .iter()
            .enumerate()
            .filter(|(_, s)| s.resource_id == id)
            .map(|(i, s)| (i, *s))
            .collect();
        for (i, scanout) in shown {
            let Some(area) = intersect(&rect, &scanout.rect) else {
                continue;
            };
            // Pixels are read when the update is sent, band by band (`update_pixels`).
            display.push(DisplayCmd::Update {
                scanout: i as u32,
                rect: Rect {
                    x: area.x - scanout.rect.x,
                    y: area.y - scanout.rect.y,
                    width: area.width,
                    height: area.height,
                },
                resource_id: id,
                area,
            });
        }
        Ok(Response::OkNodata)
    }

    /// The pixels of `band` (resource coordinates, rows packed, inside the update's area) of an
    /// `Update` being sent. Fails if the update went stale: its scanout no longer shows that
    /// area of that resource at the same place.
    pub fn update_pixels(&mut self, update: &DisplayCmd, band: Rect) -> Result<Vec<u8>> {
        let len = usize::try_from(band_bytes(band)).map_err(|_| invalid("band too large"))?;
        let mut pixels = Vec::new();
        (pixels.try_reserve_exact(len))
            .map_err(|_| out_of_memory(format!("no {len} bytes for pixels")))?;
        pixels.resize(len, 0);
        self.update_pixels_into(update, band, &mut pixels)?;
        Ok(pixels)
    }

    /// As `update_pixels`, into `out` (exactly the band's size): a display that keeps one buffer
    /// for its updates touches no fresh memory per frame.
    pub fn update_pixels_into(
        &mut self,
        update: &DisplayCmd,
        band: Rect,
        out: &mut [u8],
    ) -> Result<()> {
        if band_bytes(band) != out.len() as u64 {
            return Err(invalid("a buffer of another size than the band"));
        }
        let DisplayCmd::Update {
            scanout,
            rect,
            resource_id,
            area,
        } = *update
        else {
            return Err(invalid("not an update"));
        };
        let shown = self
            .scanouts
            .get(scanout as usize)
            .filter(|s| s.resource_id == resource_id && resource_id != 0)
            .copied()
            .ok_or_else(|| {
                let why = format!("scanout {scanout} no longer shows resource {resource_id}");
                Failure::new(ErrorCode::InvalidScanoutId, why)
            })?;
        // Only what the scanout shows, where it showed it when flushed: its rect was checked
        // against the resource (or the blob's layout) when it was set.
        let same_place = area.x.checked_sub(rect.x) == Some(shown.rect.x)
            && area.y.checked_sub(rect.y) == Some(shown.rect.y);
        let current = same_place
            && intersect(&area, &shown.rect) == Some(area)
            && intersect(&band, &area) == Some(band);
        if !current {
            return Err(invalid(format!(
                "scanout {scanout} no longer shows that area of resource {resource_id}"
            )));
        }
        match shown.layout {
            Some(layout) => {
                // The blob's memory is read here, not by the renderer: what the guest asked of
                // it before must be done first.
                if let Err(e) = self.renderer.settle() {
                    let e = bounded(&e);
                    self.log
                        .warn(format_args!("an earlier command was refused: {e}"));
                }
                self.read_blob_pixels(resource_id, layout, band, out)
            }
            None => {
                let renderer_id = self.resource(resource_id)?.renderer_id;
                self.renderer
                    .read_pixels_into(renderer_id, band, out)
                    .map_err(render_error)
            }
        }
    }

    /// Cursor-queue commands; they have no response, only display effects.
    pub fn handle_cursor(&mut self, cmd: &Command) -> Vec<DisplayCmd> {
        let result = match cmd {
            Command::UpdateCursor(c) => self.update_cursor(c),
            Command::MoveCursor(c) => self.move_cursor(c),
            _ => Err(Failure::new(
                ErrorCode::Unspec,
                "not a cursor command, on the cursor queue",
            )),
        };
        result.unwrap_or_else(|failure| {
            let what = cmd.type_code();
            self.log
                .warn(format_args!("cursor command {what:#x} failed: {failure}"));
            Vec::new()
        })
    }

    fn update_cursor(&mut self, c: &UpdateCursor) -> Result<Vec<DisplayCmd>> {
        let scanout = c.pos.scanout_id;
        if scanout >= self.scanout_limit() {
            return Err(no_scanout(scanout));
        }
        if c.resource_id == 0 {
            return Ok(vec![DisplayCmd::CursorHide { scanout }]);
        }
        let res = self.resource(c.resource_id)?;
        let (w, h) = (res.width.min(CURSOR_SIZE), res.height.min(CURSOR_SIZE));
        let pixels = self
            .renderer
            .read_pixels(
                res.renderer_id,
                Rect {
                    x: 0,
                    y: 0,
                    width: w,
                    height: h,
                },
            )
            .map_err(render_error)?;
        let image = CursorImage::from_rows(&pixels, w, h);
        Ok(vec![DisplayCmd::CursorUpdate {
            scanout,
            x: c.pos.x,
            y: c.pos.y,
            hot_x: c.hot_x,
            hot_y: c.hot_y,
            image,
        }])
    }

    fn move_cursor(&mut self, c: &UpdateCursor) -> Result<Vec<DisplayCmd>> {
        let scanout = c.pos.scanout_id;
        if scanout >= self.scanout_limit() {
            return Err(no_scanout(scanout));
        }
        Ok(vec![DisplayCmd::CursorMove {
            scanout,
            x: c.pos.x,
            y: c.pos.y,
        }])
    }

    /// Back to the state of a freshly plugged device: every resource freed, scanouts dark.
    pub fn reset(&mut self) {
        for scanout in &mut self.scanouts {
            *scanout = Scanout::default();
        }
        // The frontend still maps these; it is told with the next request's outcome.
        self.stale_mappings.extend(
            self.window
                .clear()
                .into_iter()
                .map(|(shm_offset, len)| ShmemRequest::Unmap { shm_offset, len }),
        );
        while let Some((_, ctx)) = self.contexts.pop_first() {
            self.renderer.destroy_context(ctx.renderer);
        }
        while let Some((id, res)) = self.resources.pop_first() {
            self.release(id, res);
        }
        // The transport revokes this VM's exports through the hub itself.
        self.revoking.clear();
        if let Some(share) = self.share.as_mut() {
            share.reset();
        }
    }

    /// The renderer, for what the transport tells it directly (memory tables, death notices).
    pub fn renderer(&self) -> &R {
        &self.renderer
    }

    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }

    /// What the device holds now, for the VM's counters.
    pub fn gauges(&self) -> Gauges {
        let (exports, imports, pins) = self.share.as_ref().map_or((0, 0, 0), |s| s.counts());
        Gauges {
            resources: self.resources.len(),
            resource_bytes: self.resource_bytes,
            blob_mappings: self.window.len(),
            exports,
            imports,
            pins,
        }
    }

    /// Host bytes charged to the VM's memory quota (`DeviceConfig::max_resource_bytes`).
    pub fn resource_bytes(&self) -> u64 {
        self.resource_bytes
    }

    fn resource(&self, id: u32) -> Result<&Resource> {
        self.resources.get(&id).ok_or_else(|| no_resource(id))
    }

    fn resource_mut(&mut self, id: u32) -> Result<&mut Resource> {
        self.resources.get_mut(&id).ok_or_else(|| no_resource(id))
    }
}

impl<R: Renderer> Drop for Device<R> {
    fn drop(&mut self) {
        self.reset();
    }
}

/// A renderer's error as the command's failure: the renderer's words are the cause (logged,
/// rate-limited, with the failed command by `handle`).
fn render_error(e: RenderError) -> Failure {
    let code = match e {
        RenderError::OutOfMemory => ErrorCode::OutOfMemory,
        RenderError::Rejected(_) | RenderError::Gone => ErrorCode::Unspec,
    };
    Failure::new(code, bounded(&e))
}

/// Longest cause a renderer may put in a log line (a worker is no more trusted than its guest).
const MAX_CAUSE: usize = 240;

/// `e`'s words on one line, cut to `MAX_CAUSE` bytes.
pub(crate) fn bounded(e: &RenderError) -> String {
    let mut s: String = (e.to_string().chars())
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > MAX_CAUSE {
        cut_to(&mut s, MAX_CAUSE);
        s.push_str("...");
    }
    s
}

/// Cuts `s` to at most `max` bytes, at a character boundary.
pub(crate) fn cut_to(s: &mut String, max: usize) {
    if s.len() > max {
        let end = (0..=max).rev().find(|&i| s.is_char_boundary(i));
        s.truncate(end.unwrap_or(0));
    }
}

/// ERR_INVALID_PARAMETER: `rect` does not lie inside resource `res`.
fn outside(rect: &Rect, res: &Resource) -> Failure {
    invalid(format!(
        "{}x{} at ({}, {}) does not lie inside the {}x{} resource",
        rect.width, rect.height, rect.x, rect.y, res.width, res.height
    ))
}

/// Commands of the RESOURCE_BLOB feature.
fn is_blob(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::ResourceCreateBlob(_)
            | Command::SetScanoutBlob(_)
            | Command::ResourceMapBlob { .. }
            | Command::ResourceUnmapBlob { .. }
    )
}

/// Commands that only a 3D renderer (the VIRGL feature) can serve.
fn is_3d(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::CtxCreate { .. }
            | Command::CtxDestroy
            | Command::CtxAttachResource { .. }
            | Command::CtxDetachResource { .. }
            | Command::ResourceCreate3d(_)
            | Command::TransferToHost3d(_)
            | Command::TransferFromHost3d(_)
            | Command::Submit3d { .. }
    )
}

fn command_name(hdr: &CtrlHeader, cmd: &Command) -> String {
    format!("command {:#x} (fence {})", cmd.type_code(), hdr.fence_id)
}
