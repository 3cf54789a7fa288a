//! The 2D renderer: resources are plain images in host memory, shared by every VM of the daemon
//! and worked on directly by each VM's queue thread, with no renderer thread and no hop.
//!
//! Why not rutabaga_gfx's 2D component: `Rutabaga` is not `Send` (its components are trait
//! objects without that bound), so it can only be used from the thread that built it, which is
//! the hop this renderer exists to avoid. 2D needs little: copying rows from guest pages into
//! an image, and reading rows back.

use std::alloc::{alloc_zeroed, Layout};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::fs::File;

use vgpud_protocol::{
    Rect, ResourceCreate3d, Transfer3d, BLOB_MEM_GUEST, BLOB_MEM_HOST3D, MAP_CACHE_CACHED,
};
use vm_memory::VolatileSlice;

use crate::device::memory::HostRange;
use crate::device::{band_bytes, BlobArgs, CapsetInfo, ExportedBlob, RenderError, Renderer};
use crate::fences::Fence;
use crate::hostmem::sealed_memfd;
use crate::ids::{RendererCtxId as Ctx, RendererResId as Res};
use crate::sync::lock;

/// The 2D renderer's resource ids, shared by every VM of the daemon. Freed ids are handed out
/// again (oldest first), so no VM can use them up for the others by creating and freeing
/// resources in a loop; an id is freed only once the renderer let go of its resource, and VMs
/// name resources by their own ids, so a reused id is never reachable through a stale name.
#[derive(Default)]
struct IdPool {
    state: std::sync::Mutex<(u32, std::collections::VecDeque<u32>)>,
}

impl IdPool {
    /// A free id (ids start at 1); None only when every id is in use.
    fn alloc(&self) -> Option<Res> {
        let mut st = lock(&self.state);
        if let Some(id) = st.1.pop_front() {
            return Some(Res(id));
        }
        let id = st.0.checked_add(1)?;
        st.0 = id;
        Some(Res(id))
    }

    fn release(&self, id: Res) {
        lock(&self.state).1.push_back(id.0);
    }
}

struct Image {
    width: u32,
    height: u32,
    /// width * 4 bytes a row.
    pixels: Vec<u8>,
    /// The guest pages transfers read from; the device keeps them mapped while attached.
    backing: Vec<HostRange>,
}

#[derive(Default)]
pub struct Soft2d {
    /// Each image has its own lock, so VMs copying at once only meet on the short map lookup.
    images: Mutex<HashMap<Res, Arc<Mutex<Image>>>>,
    /// Host blobs: memory of the daemon's own (`hostmem`), so that handing one to a VMM (to map
    /// it, or to another VM that imports it) hands over that blob and nothing else.
    host_blobs: Mutex<HashMap<Res, Arc<File>>>,
    ids: IdPool,
}

fn rejected(why: &str) -> RenderError {
    RenderError::Rejected(why.to_string())
}

/// A zero-filled buffer, allocated fallibly; its pages are only touched when written.
fn zeroed(len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = Layout::array::<u8>(len).ok()?;
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { alloc_zeroed(layout) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` is a fresh allocation of exactly `len` initialised (zero) bytes with u8's
    // alignment, from the global allocator: what Vec::from_raw_parts needs with capacity `len`.
    Some(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// Copies `buf.len()` bytes from byte `offset` of the guest pages `ranges`; false if that runs
/// past them.
fn read_ranges(ranges: &[HostRange], mut offset: usize, mut buf: &mut [u8]) -> bool {
    for r in ranges {
        if buf.is_empty() {
            break;
        }
        if offset >= r.len {
            offset -= r.len;
            continue;
        }
        let n = buf.len().min(r.len - offset);
        let (now, rest) = buf.split_at_mut(n);
        // SAFETY: the device keeps every attached range mapped until detach_backing or unref
        // (the Renderer contract) and both take this image's lock; [offset, offset + n) lies
        // inside the range. Guest memory may change under us, hence a volatile copy.
        let src = unsafe { VolatileSlice::new((r.addr + offset) as *mut u8, n) };
        src.copy_to(now);
        buf = rest;
        offset = 0;
    }
    buf.is_empty()
}

impl Soft2d {
    fn image(&self, id: Res) -> Result<Arc<Mutex<Image>>, RenderError> {
        lock(&self.images)
            .get(&id)
            .cloned()
            .ok_or_else(|| rejected("no such resource"))
    }
}

impl Renderer for Soft2d {
    fn resource_id_for(&self, _guest_id: u32) -> Option<Res> {
        self.ids.alloc()
    }

    fn create_2d(&self, id: Res, width: u32, height: u32, _format: u32) -> Result<(), RenderError> {
        // Every virtio-gpu 2D format has 4 bytes a pixel; the device checked the size.
        let len = (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(4))
            .ok_or(RenderError::OutOfMemory)?;
        let pixels = zeroed(len).ok_or(RenderError::OutOfMemory)?;
        let image = Image {
            width,
            height,
            pixels,
            backing: Vec::new(),
        };
        lock(&self.images).insert(id, Arc::new(Mutex::new(image)));
        Ok(())
    }

    fn unref(&self, id: Res) {
        let gone = lock(&self.images).remove(&id);
        if let Some(image) = gone {
            // Any transfer still holding the image ends before the id can be handed out again.
            drop(lock(&image));
        }
        lock(&self.host_blobs).remove(&id);
        self.ids.release(id);
    }

    fn attach_backing(&self, id: Res, ranges: Vec<HostRange>) -> Result<(), RenderError> {
        let image = self.image(id)?;
        lock(&image).backing = ranges;
        Ok(())
    }

    fn detach_backing(&self, id: Res) {
        if let Ok(image) = self.image(id) {
            lock(&image).backing = Vec::new();
        }
    }

    fn transfer_to_host_2d(
        &self,
        id: Res,
        width: u32,
        rect: Rect,
        offset: u64,
    ) -> Result<(), RenderError> {
        let image = self.image(id)?;
        let mut image = lock(&image);
        let inside = rect
            .x
            .checked_add(rect.width)
            .is_some_and(|r| r <= image.width)
            && rect
                .y
                .checked_add(rect.height)
                .is_some_and(|b| b <= image.height)
            && width == image.width;
        if !inside {
            return Err(rejected("transfer outside the resource"));
        }
        let stride = image.width as usize * 4;
        let row = rect.width as usize * 4;
        let offset = usize::try_from(offset).map_err(|_| rejected("offset"))?;
        let Image {
            pixels, backing, ..
        } = &mut *image;
        for y in 0..rect.height as usize {
            let src = y
                .checked_mul(stride)
                .and_then(|o| o.checked_add(offset))
                .ok_or_else(|| rejected("offset"))?;
            let dst = (rect.y as usize + y) * stride + rect.x as usize * 4;
            let line = pixels
                .get_mut(dst..dst + row)
                .ok_or_else(|| rejected("transfer outside the resource"))?;
            if !read_ranges(backing, src, line) {
                return Err(rejected("transfer past the backing"));
            }
        }
        Ok(())
    }

    fn read_pixels(&self, id: Res, rect: Rect) -> Result<Vec<u8>, RenderError> {
        let len = usize::try_from(band_bytes(rect)).map_err(|_| RenderError::OutOfMemory)?;
        let mut out = Vec::new();
        out.try_reserve_exact(len)
            .map_err(|_| RenderError::OutOfMemory)?;
        out.resize(len, 0);
        self.read_pixels_into(id, rect, &mut out)?;
        Ok(out)
    }

    fn read_pixels_into(&self, id: Res, rect: Rect, out: &mut [u8]) -> Result<(), RenderError> {
        let image = self.image(id)?;
        let image = lock(&image);
        let inside = rect
            .x
            .checked_add(rect.width)
            .is_some_and(|r| r <= image.width)
            && rect
                .y
                .checked_add(rect.height)
                .is_some_and(|b| b <= image.height);
        if !inside {
            return Err(rejected("read outside the resource"));
        }
        let stride = image.width as usize * 4;
        let row = rect.width as usize * 4;
        if out.len() != row * rect.height as usize {
            return Err(rejected("pixels of another size"));
        }
        let rows = (rect.y as usize..).zip(out.chunks_exact_mut(row.max(1)));
        for (y, dst) in rows {
            let at = y * stride + rect.x as usize * 4;
            let line = image
                .pixels
                .get(at..at + row)
                .ok_or_else(|| rejected("read outside the resource"))?;
            dst.copy_from_slice(line);
        }
        Ok(())
    }

    fn capsets(&self) -> Vec<CapsetInfo> {
        Vec::new()
    }

    fn capset(&self, _id: u32, _version: u32) -> Result<Vec<u8>, RenderError> {
        Err(rejected("the 2D renderer has no capsets"))
    }

    fn alloc_ctx_id(&self) -> Option<Ctx> {
        None
    }

    fn create_3d(&self, _id: Res, _args: &ResourceCreate3d) -> Result<(), RenderError> {
        Err(rejected("3D needs a 3D renderer"))
    }

    fn create_context(
        &self,
        _ctx: Ctx,
        _context_init: u32,
        _name: &str,
    ) -> Result<(), RenderError> {
        Err(rejected("3D needs a 3D renderer"))
    }

    fn destroy_context(&self, _ctx: Ctx) {}

    fn attach_to_context(&self, _ctx: Ctx, _id: Res) -> Result<(), RenderError> {
        Err(rejected("3D needs a 3D renderer"))
    }

    fn detach_from_context(&self, _ctx: Ctx, _id: Res) {}

    fn transfer_to_host_3d(&self, _ctx: Ctx, _id: Res, _t: &Transfer3d) -> Result<(), RenderError> {
        Err(rejected("3D needs a 3D renderer"))
    }

    fn transfer_from_host_3d(
        &self,
        _ctx: Ctx,
        _id: Res,
        _t: &Transfer3d,
    ) -> Result<(), RenderError> {
        Err(rejected("3D needs a 3D renderer"))
    }

    fn submit_3d(&self, _ctx: Ctx, _commands: Vec<u8>) -> Result<(), RenderError> {
        Err(rejected("3D needs a 3D renderer"))
    }

    fn create_blob(
        &self,
        _ctx: Ctx,
        id: Res,
        args: BlobArgs,
        _backing: Option<Vec<HostRange>>,
    ) -> Result<(), RenderError> {
        // Guest blobs are read from guest memory by the device. A host blob of blob id 0 is
        // plain memory (the device charged it to the VM's quota); others name 3D objects.
        match (args.mem, args.blob_id) {
            (BLOB_MEM_GUEST, _) => Ok(()),
            (BLOB_MEM_HOST3D, 0) => {
                let file = sealed_memfd(args.size).map_err(|_| RenderError::OutOfMemory)?;
                lock(&self.host_blobs).insert(id, Arc::new(file));
                Ok(())
            }
            _ => Err(rejected("host blobs with a blob id need a 3D renderer")),
        }
    }

    fn map_blob(&self, id: Res) -> Result<ExportedBlob, RenderError> {
        let file = lock(&self.host_blobs)
            .get(&id)
            .cloned()
            .ok_or_else(|| rejected("not a host blob"))?;
        let size = file.metadata().map_err(|_| rejected("host blob"))?.len();
        Ok(ExportedBlob {
            file,
            offset: 0,
            size,
            map_info: MAP_CACHE_CACHED,
        })
    }

    /// Host blobs are memfds of the daemon's, touched by no renderer work.
    fn host_blobs_movable(&self) -> bool {
        true
    }

    /// 2D work is done when its command returns: the fence signals at once.
    fn create_fence(&self, _ctx: Ctx, _ring: Option<u8>) -> Result<Fence, RenderError> {
        Ok(Fence::Signalled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_span_ranges_and_stop_at_their_end() {
        let a: Vec<u8> = (0..8).collect();
        let b: Vec<u8> = (8..16).collect();
        let ranges = [
            HostRange {
                gpa: 0,
                addr: a.as_ptr() as usize,
                len: a.len(),
            },
            HostRange {
                gpa: 8,
                addr: b.as_ptr() as usize,
                len: b.len(),
            },
        ];
        let mut buf = [0u8; 6];
        assert!(read_ranges(&ranges, 5, &mut buf));
        assert_eq!(buf, [5, 6, 7, 8, 9, 10]);
        assert!(
            !read_ranges(&ranges, 11, &mut buf),
            "runs past the last range"
        );
    }

    #[test]
    fn freed_ids_come_back_so_the_space_never_runs_out() {
        let pool = IdPool::default();
        let some = |id| Some(Res(id));
        assert_eq!(
            (pool.alloc(), pool.alloc(), pool.alloc()),
            (some(1), some(2), some(3))
        );
        pool.release(Res(2));
        pool.release(Res(1));
        assert_eq!(
            (pool.alloc(), pool.alloc(), pool.alloc()),
            (some(2), some(1), some(4))
        );
        // Near the end of the id space: freed ids still come back.
        pool.state.lock().unwrap().0 = u32::MAX - 1;
        assert_eq!(pool.alloc(), some(u32::MAX));
        assert_eq!(pool.alloc(), None);
        pool.release(Res(7));
        assert_eq!(pool.alloc(), some(7));
    }
}
