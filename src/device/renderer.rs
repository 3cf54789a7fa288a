//! What the device model needs from a renderer. Ids here are the renderer's (`RendererResId`,
//! `RendererCtxId`), never a guest's: the device maps each VM's ids onto them.

use std::fs::File;
use std::os::fd::RawFd;
use std::sync::Arc;

use vgpud_protocol::{Rect, ResourceCreate3d, Transfer3d};
use vm_memory::GuestMemoryMmap;

use super::memory::HostRange;
use crate::fences::Fence;
use crate::ids::{RendererCtxId as Ctx, RendererResId as Res};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("renderer rejected the request: {0}")]
    Rejected(String),
    #[error("renderer is out of memory")]
    OutOfMemory,
    #[error("renderer thread is gone")]
    Gone,
}

/// One capset the renderer offers: (id, max version, max size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapsetInfo {
    pub id: u32,
    pub max_version: u32,
    pub max_size: u32,
}

/// RESOURCE_CREATE_BLOB's parameters, as the renderer needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobArgs {
    pub mem: u32,
    pub flags: u32,
    pub blob_id: u64,
    pub size: u64,
}

/// A renderer blob made mappable by another process: `size` bytes of `file` from `offset` on.
#[derive(Clone, Debug)]
pub struct ExportedBlob {
    pub file: Arc<File>,
    pub offset: u64,
    pub size: u64,
    /// virtio-gpu map_info: the cache type in the low bits.
    pub map_info: u32,
}

/// Called once when a renderer is gone for good (its worker died), with the reason.
pub type DeathNotice = Box<dyn Fn(&str) + Send + Sync>;

pub trait Renderer: Send {
    /// The renderer's id for the guest's resource `guest_id`. A 2D renderer hands out ids of its
    /// own (unique among live resources), so VMs cannot collide; `unref` gives them back. A 3D
    /// renderer must use the guest's own id: its command streams name resources by the ids the
    /// guest chose.
    fn resource_id_for(&self, guest_id: u32) -> Option<Res>;
    fn create_2d(&self, id: Res, width: u32, height: u32, format: u32) -> Result<(), RenderError>;
    fn unref(&self, id: Res);
    /// The ranges must stay mapped until `detach_backing` or `unref` of `id` returned.
    fn attach_backing(&self, id: Res, ranges: Vec<HostRange>) -> Result<(), RenderError>;
    fn detach_backing(&self, id: Res);
    /// Copies `rect` from the backing into a `width`-pixel-wide 2D resource; the rect's first
    /// pixel is at byte `offset` of the backing, rows `width * 4` bytes apart.
    fn transfer_to_host_2d(
        &self,
        id: Res,
        width: u32,
        rect: Rect,
        offset: u64,
    ) -> Result<(), RenderError>;
    /// The pixels of `rect`, rows packed (stride = width * 4).
    fn read_pixels(&self, id: Res, rect: Rect) -> Result<Vec<u8>, RenderError>;
    /// As `read_pixels`, into `out`, which is exactly that size. A renderer that reads straight
    /// into the caller's memory saves a frame-sized allocation and copy on every flush.
    fn read_pixels_into(&self, id: Res, rect: Rect, out: &mut [u8]) -> Result<(), RenderError> {
        let pixels = self.read_pixels(id, rect)?;
        if pixels.len() != out.len() {
            return Err(RenderError::Rejected("pixels of another size".into()));
        }
        out.copy_from_slice(&pixels);
        Ok(())
    }
    fn capsets(&self) -> Vec<CapsetInfo>;
    fn capset(&self, id: u32, version: u32) -> Result<Vec<u8>, RenderError>;

    /// A fresh context id, never handed out before by this renderer.
    fn alloc_ctx_id(&self) -> Option<Ctx>;
    fn create_3d(&self, id: Res, args: &ResourceCreate3d) -> Result<(), RenderError>;
    /// Creates context `ctx`.
    fn create_context(&self, ctx: Ctx, context_init: u32, name: &str) -> Result<(), RenderError>;
    fn destroy_context(&self, ctx: Ctx);
    fn attach_to_context(&self, ctx: Ctx, id: Res) -> Result<(), RenderError>;
    fn detach_from_context(&self, ctx: Ctx, id: Res);
    fn transfer_to_host_3d(&self, ctx: Ctx, id: Res, t: &Transfer3d) -> Result<(), RenderError>;
    fn transfer_from_host_3d(&self, ctx: Ctx, id: Res, t: &Transfer3d) -> Result<(), RenderError>;
    fn submit_3d(&self, ctx: Ctx, commands: Vec<u8>) -> Result<(), RenderError>;
    /// Creates blob `id` for context `ctx` (0: none). Guest-memory blobs come with their pages,
    /// which must stay mapped until `unref`.
    fn create_blob(
        &self,
        ctx: Ctx,
        id: Res,
        args: BlobArgs,
        backing: Option<Vec<HostRange>>,
    ) -> Result<(), RenderError>;
    /// Makes host blob `id` mappable by another process. The returned file keeps the memory
    /// alive on its own, after `unref` too.
    fn map_blob(&self, id: Res) -> Result<ExportedBlob, RenderError>;
    /// Creates a fence after all work submitted so far on `ring` of `ctx`, or with `ring` None,
    /// on the global timeline (`ctx` may then be `RendererCtxId::NONE`). A pending fence is reported to the fence sink the
    /// renderer was made with. A renderer either reports all its fences or none (all are
    /// `Signalled` at creation), so that a timeline's answers never overtake each other.
    fn create_fence(&self, ctx: Ctx, ring: Option<u8>) -> Result<Fence, RenderError>;

    /// `submit_3d`, then, if the stream was taken, `create_fence(ctx, ring)` (the inner result):
    /// one call, which a renderer in another process answers in one crossing.
    fn submit_3d_fenced(
        &self,
        ctx: Ctx,
        commands: Vec<u8>,
        ring: Option<u8>,
    ) -> Result<Result<Fence, RenderError>, RenderError> {
        self.submit_3d(ctx, commands)?;
        Ok(self.create_fence(ctx, ring))
    }

    /// A 3D transfer (to the host when `to_host`), then, if it was done, `create_fence(ctx,
    /// ring)` (the inner result), in one call as `submit_3d_fenced`.
    fn transfer_3d_fenced(
        &self,
        ctx: Ctx,
        id: Res,
        t: &Transfer3d,
        to_host: bool,
        ring: Option<u8>,
    ) -> Result<Result<Fence, RenderError>, RenderError> {
        if to_host {
            self.transfer_to_host_3d(ctx, id, t)?;
        } else {
            self.transfer_from_host_3d(ctx, id, t)?;
        }
        Ok(self.create_fence(ctx, ring))
    }

    /// Waits until the requests made so far are done, and returns the refusal of one that was
    /// answered before it was done (see `RemoteRenderer`), if any. A renderer that answers
    /// only when done has nothing to wait for.
    fn settle(&self) -> Result<(), RenderError> {
        Ok(())
    }

    /// Whether the memory of its host blobs (blob id 0) is plain memory the daemon may move out
    /// and back (the memory budget for shared buffers) while nobody maps it.
    fn host_blobs_movable(&self) -> bool {
        false
    }

    /// The VM's guest memory table changed: a renderer in another process maps it anew.
    fn memory_changed(&self, _mem: &GuestMemoryMmap) {}

    /// Asks to be told when this renderer is gone for good (a worker that died).
    fn on_death(&self, _notice: DeathNotice) {}

    /// A descriptor that turns readable when the renderer has work for `poll` (fences to
    /// report), which the VM's queue thread then calls; None when it needs no such help.
    fn poll_fd(&self) -> Option<RawFd> {
        None
    }
    fn poll(&self) {}
}

/// One renderer shared by several VMs' devices.
impl<T: Renderer + Sync + ?Sized> Renderer for Arc<T> {
    fn resource_id_for(&self, guest_id: u32) -> Option<Res> {
        (**self).resource_id_for(guest_id)
    }
    fn create_2d(&self, id: Res, width: u32, height: u32, format: u32) -> Result<(), RenderError> {
        (**self).create_2d(id, width, height, format)
    }
    fn unref(&self, id: Res) {
        (**self).unref(id)
    }
    fn attach_backing(&self, id: Res, ranges: Vec<HostRange>) -> Result<(), RenderError> {
        (**self).attach_backing(id, ranges)
    }
    fn detach_backing(&self, id: Res) {
        (**self).detach_backing(id)
    }
    fn transfer_to_host_2d(
        &self,
        id: Res,
        width: u32,
        rect: Rect,
        offset: u64,
    ) -> Result<(), RenderError> {
        (**self).transfer_to_host_2d(id, width, rect, offset)
    }
    fn read_pixels(&self, id: Res, rect: Rect) -> Result<Vec<u8>, RenderError> {
        (**self).read_pixels(id, rect)
    }
    fn read_pixels_into(&self, id: Res, rect: Rect, out: &mut [u8]) -> Result<(), RenderError> {
        (**self).read_pixels_into(id, rect, out)
    }
    fn capsets(&self) -> Vec<CapsetInfo> {
        (**self).capsets()
    }
    fn capset(&self, id: u32, version: u32) -> Result<Vec<u8>, RenderError> {
        (**self).capset(id, version)
    }
    fn alloc_ctx_id(&self) -> Option<Ctx> {
        (**self).alloc_ctx_id()
    }
    fn create_3d(&self, id: Res, args: &ResourceCreate3d) -> Result<(), RenderError> {
        (**self).create_3d(id, args)
    }
    fn create_context(&self, ctx: Ctx, context_init: u32, name: &str) -> Result<(), RenderError> {
        (**self).create_context(ctx, context_init, name)
    }
    fn destroy_context(&self, ctx: Ctx) {
        (**self).destroy_context(ctx)
    }
    fn attach_to_context(&self, ctx: Ctx, id: Res) -> Result<(), RenderError> {
        (**self).attach_to_context(ctx, id)
    }
    fn detach_from_context(&self, ctx: Ctx, id: Res) {
        (**self).detach_from_context(ctx, id)
    }
    fn transfer_to_host_3d(&self, ctx: Ctx, id: Res, t: &Transfer3d) -> Result<(), RenderError> {
        (**self).transfer_to_host_3d(ctx, id, t)
    }
    fn transfer_from_host_3d(&self, ctx: Ctx, id: Res, t: &Transfer3d) -> Result<(), RenderError> {
        (**self).transfer_from_host_3d(ctx, id, t)
    }
    fn submit_3d(&self, ctx: Ctx, commands: Vec<u8>) -> Result<(), RenderError> {
        (**self).submit_3d(ctx, commands)
    }
    fn create_blob(
        &self,
        ctx: Ctx,
        id: Res,
        args: BlobArgs,
        backing: Option<Vec<HostRange>>,
    ) -> Result<(), RenderError> {
        (**self).create_blob(ctx, id, args, backing)
    }
    fn map_blob(&self, id: Res) -> Result<ExportedBlob, RenderError> {
        (**self).map_blob(id)
    }
    fn create_fence(&self, ctx: Ctx, ring: Option<u8>) -> Result<Fence, RenderError> {
        (**self).create_fence(ctx, ring)
    }
    fn submit_3d_fenced(
        &self,
        ctx: Ctx,
        commands: Vec<u8>,
        ring: Option<u8>,
    ) -> Result<Result<Fence, RenderError>, RenderError> {
        (**self).submit_3d_fenced(ctx, commands, ring)
    }
    fn transfer_3d_fenced(
        &self,
        ctx: Ctx,
        id: Res,
        t: &Transfer3d,
        to_host: bool,
        ring: Option<u8>,
    ) -> Result<Result<Fence, RenderError>, RenderError> {
        (**self).transfer_3d_fenced(ctx, id, t, to_host, ring)
    }
    fn settle(&self) -> Result<(), RenderError> {
        (**self).settle()
    }
    fn host_blobs_movable(&self) -> bool {
        (**self).host_blobs_movable()
    }
    fn memory_changed(&self, mem: &GuestMemoryMmap) {
        (**self).memory_changed(mem)
    }
    fn on_death(&self, notice: DeathNotice) {
        (**self).on_death(notice)
    }
    fn poll_fd(&self) -> Option<RawFd> {
        (**self).poll_fd()
    }
    fn poll(&self) {
        (**self).poll()
    }
}
