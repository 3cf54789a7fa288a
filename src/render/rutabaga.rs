//! The device model's `Renderer` trait implemented over rutabaga_gfx.

use std::io::IoSliceMut;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::fs::File;
use std::os::fd::AsFd;

use rutabaga_gfx::{
    ResourceCreate3D, ResourceCreateBlob, Rutabaga, RutabagaError, RutabagaFence,
    RutabagaFenceHandler, RutabagaHandle, RutabagaIovec, Transfer3D, RUTABAGA_FLAG_FENCE,
    RUTABAGA_FLAG_INFO_RING_IDX,
};
use vgpud_protocol::{Rect, ResourceCreate3d, Transfer3d, MAP_CACHE_CACHED};

use super::{maps, RenderHandle};
use crate::device::memory::HostRange;
use crate::device::{band_bytes, BlobArgs, CapsetInfo, ExportedBlob, RenderError, Renderer};
use crate::fences::{Fence, FenceSink};
use crate::ids::{FenceId, RendererCtxId as Ctx, RendererResId as Res};

/// Which rutabaga component renders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum RendererKind {
    /// Software 2D only: no capsets, no 3D.
    #[value(name = "2d")]
    TwoD,
    /// OpenGL through virglrenderer (capsets VIRGL and VIRGL2), on surfaceless EGL.
    #[cfg(feature = "virgl")]
    Virgl,
    /// Vulkan through virglrenderer's Venus (capset VENUS), in its render server; needs a
    /// host-visible window (--hostmem).
    #[cfg(feature = "virgl")]
    Venus,
    /// The best one that starts: Venus when there is a host-visible window, then virgl, then 2D.
    Auto,
    /// A scripted stand-in for a 3D renderer, in render workers, for tests of the worker
    /// machinery (src/render/fake.rs). Never for guests.
    #[value(hide = true)]
    Fake,
}

impl RendererKind {
    /// Renderers that run in a worker process per VM: everything but 2D, which the broker draws
    /// itself (it runs no GPU driver code).
    pub fn in_worker(self) -> bool {
        !matches!(self, RendererKind::TwoD | RendererKind::Auto)
    }

    /// Renderers whose guests cannot work without a host-visible window.
    pub fn needs_hostmem(self) -> bool {
        #[cfg(feature = "virgl")]
        if self == RendererKind::Venus {
            return true;
        }
        false
    }

    /// What `Auto` tries, best first, with a window of `hostmem` bytes.
    pub fn candidates(self, hostmem: u64) -> Vec<RendererKind> {
        if self != RendererKind::Auto {
            return vec![self];
        }
        let mut kinds = Vec::new();
        #[cfg(feature = "virgl")]
        {
            if hostmem > 0 {
                kinds.push(RendererKind::Venus);
            }
            kinds.push(RendererKind::Virgl);
        }
        #[cfg(not(feature = "virgl"))]
        let _ = hostmem;
        kinds.push(RendererKind::TwoD);
        kinds
    }
}

// Gallium's PIPE_TEXTURE_2D and PIPE_BIND_RENDER_TARGET, what a 2D resource is to a 3D renderer.
const PIPE_TEXTURE_2D: u32 = 2;
const PIPE_BIND_RENDER_TARGET: u32 = 2;

/// Builds the renderer; every fence it signals goes to `sink` (it serves one VM).
pub(super) fn build(kind: RendererKind, sink: Arc<dyn FenceSink>) -> Result<Rutabaga, String> {
    let fences = RutabagaFenceHandler::new(move |f: RutabagaFence| {
        sink.signalled(FenceId(f.fence_id));
    });
    match kind {
        #[cfg(feature = "virgl")]
        RendererKind::Virgl => virglrenderer(false, fences),
        #[cfg(feature = "virgl")]
        RendererKind::Venus => virglrenderer(true, fences),
        // 2D is drawn in place by Soft2d; Auto is resolved by RendererKind::candidates.
        RendererKind::TwoD | RendererKind::Auto | RendererKind::Fake => {
            drop(fences);
            Err(format!("no rutabaga renderer for {kind:?}"))
        }
    }
}

/// virglrenderer with GL (capsets VIRGL and VIRGL2) on surfaceless EGL, and with `venus` also
/// Vulkan (capset VENUS) in its render server (virgl_render_server, started by virglrenderer).
/// A Venus guest needs GL too: its console and KMS buffers are 2D resources, which only virgl
/// can hold.
#[cfg(feature = "virgl")]
fn virglrenderer(venus: bool, fences: RutabagaFenceHandler) -> Result<Rutabaga, String> {
    use rutabaga_gfx::{
        RutabagaBuilder, RUTABAGA_CAPSET_VENUS, RUTABAGA_CAPSET_VIRGL, RUTABAGA_CAPSET_VIRGL2,
    };
    let mut capsets = (1 << RUTABAGA_CAPSET_VIRGL) | (1 << RUTABAGA_CAPSET_VIRGL2);
    if venus {
        capsets |= 1 << RUTABAGA_CAPSET_VENUS;
    }
    // virglrenderer opens the render node it is given, or finds one (or none: software).
    let paths = super::render_node().map(|path| {
        vec![rutabaga_gfx::RutabagaPath {
            path: path.to_path_buf(),
            path_type: rutabaga_gfx::RUTABAGA_PATH_TYPE_GPU,
        }]
    });
    let r = RutabagaBuilder::new(capsets, fences)
        .set_rutabaga_paths(paths)
        .set_use_egl(true)
        .set_use_gles(true)
        .set_use_surfaceless(true)
        .set_use_render_server(venus)
        .build()
        .map_err(|e| e.to_string())?;
    // Rutabaga falls back to 2D quietly when virglrenderer does not start.
    let wanted = if venus { 3 } else { 2 };
    if r.get_num_capsets() < wanted {
        return Err("virglrenderer did not start all its capsets (see its log above)".into());
    }
    Ok(r)
}

fn iovecs(ranges: Vec<HostRange>) -> Vec<RutabagaIovec> {
    ranges
        .into_iter()
        .map(|r| RutabagaIovec {
            base: r.addr as *mut _,
            len: r.len,
        })
        .collect()
}

/// Exports blob `id` with the offset where it starts in the exported file. The renderer maps it
/// here only to learn that offset (see `maps`), then lets go: the file keeps the memory alive.
fn export_mapped(r: &mut Rutabaga, id: u32) -> Result<ExportedBlob, String> {
    let mapping = r.map(id).map_err(|e| format!("map: {e}"))?;
    let found = (|| {
        let handle = r.export_blob(id).map_err(|e| format!("export: {e}"))?;
        let fd = match &handle {
            RutabagaHandle::MagmaGpuHandle(h) => h.os_handle.as_fd().try_clone_to_owned(),
            RutabagaHandle::AhbInfo(_) => return Err("not a memory descriptor".to_string()),
        }
        .map_err(|e| format!("dup: {e}"))?;
        let file = File::from(fd);
        let offset = maps::file_offset_of(mapping.ptr as usize, mapping.size, &file)
            .map_err(|e| format!("locating the mapping: {e}"))?;
        Ok(ExportedBlob {
            file: Arc::new(file),
            offset,
            size: mapping.size,
            map_info: r.map_info(id).unwrap_or(MAP_CACHE_CACHED),
        })
    })();
    let _ = r.unmap(id);
    found
}

fn rejected(e: RutabagaError) -> RenderError {
    RenderError::Rejected(e.to_string())
}

fn transfer(t: &Transfer3d) -> Transfer3D {
    Transfer3D {
        x: t.box_.x,
        y: t.box_.y,
        z: t.box_.z,
        w: t.box_.w,
        h: t.box_.h,
        d: t.box_.d,
        level: t.level,
        stride: t.stride,
        layer_stride: t.layer_stride,
        offset: t.offset,
    }
}

/// Global-timeline fence ids travel through a signed 32-bit field of virglrenderer.
const GLOBAL_FENCE_ID_MASK: u64 = 0x7fff_ffff;

impl RenderHandle {
    /// A fresh fence id. Context fences use the full 64 bits; global ones wrap within 31 bits,
    /// which is safe because fences are matched exactly among the outstanding ones.
    fn next_fence_id(&self, global: bool) -> FenceId {
        let id = self.next_fence.fetch_add(1, Ordering::Relaxed) + 1;
        FenceId(if global {
            (id & GLOBAL_FENCE_ID_MASK).max(1)
        } else {
            id
        })
    }

    fn run<T>(
        &self,
        f: impl FnOnce(&mut Rutabaga) -> Result<T, RutabagaError>,
    ) -> Result<T, RenderError> {
        self.call(f).ok_or(RenderError::Gone)?.map_err(rejected)
    }
}

impl Renderer for RenderHandle {
    #[cfg_attr(not(feature = "virgl"), allow(unused_variables))]
    fn resource_id_for(&self, guest_id: u32) -> Option<Res> {
        match self.kind {
            #[cfg(feature = "virgl")]
            RendererKind::Virgl | RendererKind::Venus => Some(Res(guest_id)),
            RendererKind::TwoD | RendererKind::Auto | RendererKind::Fake => None,
        }
    }

    fn alloc_ctx_id(&self) -> Option<Ctx> {
        Self::fresh(&self.next_ctx).map(Ctx)
    }

    fn create_2d(&self, id: Res, width: u32, height: u32, format: u32) -> Result<(), RenderError> {
        let create = ResourceCreate3D {
            target: PIPE_TEXTURE_2D,
            format,
            bind: PIPE_BIND_RENDER_TARGET,
            width,
            height,
            depth: 1,
            array_size: 1,
            last_level: 0,
            nr_samples: 0,
            flags: 0,
        };
        self.run(move |r| r.resource_create_3d(id.0, create))
    }

    fn create_3d(&self, id: Res, a: &ResourceCreate3d) -> Result<(), RenderError> {
        let create = ResourceCreate3D {
            target: a.target,
            format: a.format,
            bind: a.bind,
            width: a.width,
            height: a.height,
            depth: a.depth,
            array_size: a.array_size,
            last_level: a.last_level,
            nr_samples: a.nr_samples,
            flags: a.flags,
        };
        self.run(move |r| r.resource_create_3d(id.0, create))
    }

    fn unref(&self, id: Res) {
        let _ = self.call(move |r| r.unref_resource(id.0));
    }

    fn attach_backing(&self, id: Res, ranges: Vec<HostRange>) -> Result<(), RenderError> {
        let iovecs = iovecs(ranges);
        self.run(move |r| r.attach_backing(id.0, iovecs))
    }

    fn detach_backing(&self, id: Res) {
        let _ = self.call(move |r| r.detach_backing(id.0));
    }

    fn transfer_to_host_2d(
        &self,
        id: Res,
        _width: u32,
        rect: Rect,
        offset: u64,
    ) -> Result<(), RenderError> {
        // 3D renderers take the offset as where the rect starts, like the guest.
        let t = Transfer3D::new_2d(rect.x, rect.y, rect.width, rect.height, offset);
        self.run(move |r| r.transfer_write(0, id.0, t, None))
    }

    fn read_pixels(&self, id: Res, rect: Rect) -> Result<Vec<u8>, RenderError> {
        let total = usize::try_from(band_bytes(rect)).map_err(|_| RenderError::OutOfMemory)?;
        let mut buf = vec![0u8; total];
        self.read_pixels_into(id, rect, &mut buf)?;
        Ok(buf)
    }

    fn read_pixels_into(&self, id: Res, rect: Rect, out: &mut [u8]) -> Result<(), RenderError> {
        let stride = u64::from(rect.width) * 4;
        if Some(out.len() as u64) != stride.checked_mul(u64::from(rect.height)) {
            return Err(RenderError::Rejected("pixels of another size".into()));
        }
        let stride = u32::try_from(stride).map_err(|_| RenderError::OutOfMemory)?;
        self.run(move |r| {
            // 3D renderers write the rect at the start of the destination.
            let mut t = Transfer3D::new_2d(rect.x, rect.y, rect.width, rect.height, 0);
            t.stride = stride;
            r.transfer_read(0, id.0, t, Some(IoSliceMut::new(out)))
        })
    }

    fn capsets(&self) -> Vec<CapsetInfo> {
        self.call(|r| {
            (0..r.get_num_capsets())
                .filter_map(|i| r.get_capset_info(i).ok())
                .map(|(id, max_version, max_size)| CapsetInfo {
                    id,
                    max_version,
                    max_size,
                })
                .collect()
        })
        .unwrap_or_default()
    }

    fn capset(&self, id: u32, version: u32) -> Result<Vec<u8>, RenderError> {
        self.run(move |r| r.get_capset(id, version))
    }

    fn create_context(&self, ctx: Ctx, context_init: u32, name: &str) -> Result<(), RenderError> {
        let name = name.to_string();
        self.run(move |r| r.create_context(ctx.0, context_init, Some(&name)))
    }

    fn destroy_context(&self, ctx: Ctx) {
        let _ = self.call(move |r| r.destroy_context(ctx.0));
    }

    fn attach_to_context(&self, ctx: Ctx, id: Res) -> Result<(), RenderError> {
        self.run(move |r| r.context_attach_resource(ctx.0, id.0))
    }

    fn detach_from_context(&self, ctx: Ctx, id: Res) {
        let _ = self.call(move |r| r.context_detach_resource(ctx.0, id.0));
    }

    fn transfer_to_host_3d(&self, ctx: Ctx, id: Res, t: &Transfer3d) -> Result<(), RenderError> {
        let t = transfer(t);
        self.run(move |r| r.transfer_write(ctx.0, id.0, t, None))
    }

    fn transfer_from_host_3d(&self, ctx: Ctx, id: Res, t: &Transfer3d) -> Result<(), RenderError> {
        let t = transfer(t);
        self.run(move |r| r.transfer_read(ctx.0, id.0, t, None))
    }

    fn submit_3d(&self, ctx: Ctx, mut commands: Vec<u8>) -> Result<(), RenderError> {
        self.run(move |r| r.submit_command(ctx.0, &mut commands, &[]))
    }

    fn create_blob(
        &self,
        ctx: Ctx,
        id: Res,
        args: BlobArgs,
        backing: Option<Vec<HostRange>>,
    ) -> Result<(), RenderError> {
        let create = ResourceCreateBlob {
            blob_mem: args.mem,
            blob_flags: args.flags,
            blob_id: args.blob_id,
            size: args.size,
        };
        let iovecs = backing.map(iovecs);
        self.run(move |r| r.resource_create_blob(ctx.0, id.0, create, iovecs, None))
    }

    fn map_blob(&self, id: Res) -> Result<ExportedBlob, RenderError> {
        self.call(move |r| export_mapped(r, id.0))
            .ok_or(RenderError::Gone)?
            .map_err(RenderError::Rejected)
    }

    fn create_fence(&self, ctx: Ctx, ring: Option<u8>) -> Result<Fence, RenderError> {
        let id = self.next_fence_id(ring.is_none());
        let fence = RutabagaFence {
            flags: RUTABAGA_FLAG_FENCE | ring.map_or(0, |_| RUTABAGA_FLAG_INFO_RING_IDX),
            fence_id: id.0,
            ctx_id: ctx.0,
            ring_idx: ring.unwrap_or(0),
        };
        self.run(move |r| r.create_fence(fence))?;
        Ok(Fence::Pending(id))
    }
}
