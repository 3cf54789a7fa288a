//! The device model's `Renderer` trait implemented over rutabaga_gfx.

use std::io::IoSliceMut;

use rutabaga_gfx::{
    ResourceCreate3D, Rutabaga, RutabagaBuilder, RutabagaComponentType, RutabagaError,
    RutabagaFenceHandler, RutabagaIovec, Transfer3D,
};
use vgpud_protocol::Rect;

use super::RenderHandle;
use crate::device::memory::HostRange;
use crate::device::{CapsetInfo, RenderError, Renderer};

/// Which rutabaga component renders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RendererKind {
    /// Software 2D only: no capsets, no 3D.
    #[value(name = "2d")]
    TwoD,
}

// Gallium's PIPE_TEXTURE_2D and PIPE_BIND_RENDER_TARGET, what a 2D resource is to rutabaga.
const PIPE_TEXTURE_2D: u32 = 2;
const PIPE_BIND_RENDER_TARGET: u32 = 2;

pub(super) fn build(kind: RendererKind) -> Result<Rutabaga, String> {
    match kind {
        RendererKind::TwoD => {
            // 2D completes every request synchronously; it has no fences to report.
            let fences = RutabagaFenceHandler::new(|_| {});
            RutabagaBuilder::new(0, fences)
                .set_default_component(RutabagaComponentType::Rutabaga2D)
                .build()
                .map_err(|e| e.to_string())
        }
    }
}

fn rejected(e: RutabagaError) -> RenderError {
    RenderError::Rejected(e.to_string())
}

impl Renderer for RenderHandle {
    fn alloc_id(&self) -> Option<u32> {
        self.fresh_id()
    }

    fn create_2d(&self, id: u32, width: u32, height: u32, format: u32) -> Result<(), RenderError> {
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
        self.call(move |r| r.resource_create_3d(id, create))
            .ok_or(RenderError::Gone)?
            .map_err(rejected)
    }

    fn unref(&self, id: u32) {
        let _ = self.call(move |r| r.unref_resource(id));
    }

    fn attach_backing(&self, id: u32, ranges: Vec<HostRange>) -> Result<(), RenderError> {
        let iovecs = ranges
            .into_iter()
            .map(|r| RutabagaIovec {
                base: r.addr as *mut _,
                len: r.len,
            })
            .collect();
        self.call(move |r| r.attach_backing(id, iovecs))
            .ok_or(RenderError::Gone)?
            .map_err(rejected)
    }

    fn detach_backing(&self, id: u32) {
        let _ = self.call(move |r| r.detach_backing(id));
    }

    fn transfer_to_host_2d(&self, id: u32, rect: Rect, extra: u64) -> Result<(), RenderError> {
        let t = Transfer3D::new_2d(rect.x, rect.y, rect.width, rect.height, extra);
        self.call(move |r| r.transfer_write(0, id, t, None))
            .ok_or(RenderError::Gone)?
            .map_err(rejected)
    }

    fn read_pixels(&self, id: u32, rect: Rect) -> Result<Vec<u8>, RenderError> {
        let stride = u64::from(rect.width) * 4;
        // Rutabaga writes the rect at (y * stride + x * 4) of the destination: size the buffer for
        // that, then drop the unused prefix so the rows come out packed.
        let prefix = u64::from(rect.y) * stride + u64::from(rect.x) * 4;
        let total = prefix + stride * u64::from(rect.height);
        let prefix = usize::try_from(prefix).map_err(|_| RenderError::OutOfMemory)?;
        let total = usize::try_from(total).map_err(|_| RenderError::OutOfMemory)?;
        let stride = u32::try_from(stride).map_err(|_| RenderError::OutOfMemory)?;
        self.call(move |r| {
            let mut buf = vec![0u8; total];
            let mut t = Transfer3D::new_2d(rect.x, rect.y, rect.width, rect.height, 0);
            t.stride = stride;
            r.transfer_read(0, id, t, Some(IoSliceMut::new(&mut buf)))?;
            buf.drain(..prefix);
            Ok(buf)
        })
        .ok_or(RenderError::Gone)?
        .map_err(rejected)
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
        self.call(move |r| r.get_capset(id, version))
            .ok_or(RenderError::Gone)?
            .map_err(rejected)
    }
}
