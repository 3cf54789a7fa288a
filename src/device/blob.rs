//! Blob resources: creation (guest memory, host memory, or both), mapping into the host-visible
//! window, and blob scanouts.
//!
//! Mapping needs the frontend (SHMEM_MAP), which must never be called with the device lock held:
//! the device reserves the window range and returns a `ShmemRequest`; the transport sends it after
//! unlocking and calls `map_failed` if the frontend refused.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use vgpud_protocol::{
    format, CreateBlob, Rect, Response, ScanoutBlob, BLOB_FLAG_USE_MAPPABLE, BLOB_MEM_GUEST,
    BLOB_MEM_HOST3D, BLOB_MEM_HOST3D_GUEST, MAP_CACHE_CACHED, MAP_CACHE_MASK,
};
use vm_memory::GuestMemoryMmap;

use super::memory::{file_range, resolve_backing};
use super::renderer::{BlobArgs, ExportedBlob};
use super::resource::{Blob, Resource};
use super::scanout::{rect_within, BlobLayout, Scanout};
use super::{
    invalid, no_scanout, out_of_memory, render_error, Device, DisplayCmd, Failure, Renderer, Result,
};
use crate::hostmem::sealed_memfd;
use crate::ids::{GuestCtxId, RendererCtxId, RendererResId};

/// What the transport must ask of the frontend, after releasing the device lock.
#[derive(Clone, Debug)]
pub enum ShmemRequest {
    Map {
        resource_id: u32,
        file: Arc<File>,
        file_offset: u64,
        shm_offset: u64,
        len: u64,
        writable: bool,
    },
    Unmap {
        shm_offset: u64,
        len: u64,
    },
}

/// Largest blob scanout, in pixels either way (what the display protocol can carry).
const MAX_SCANOUT_EXTENT: u32 = 16384;

/// Virtio-gpu access bits in map_info (read 0x10, write 0x20); none given means read-write.
const MAP_ACCESS_MASK: u32 = 0xf0;
const MAP_ACCESS_WRITE: u32 = 0x20;

impl<R: Renderer> Device<R> {
    pub(super) fn create_blob(
        &mut self,
        guest_ctx: GuestCtxId,
        args: &CreateBlob,
        mem: &Arc<GuestMemoryMmap>,
    ) -> Result<Response> {
        let id = args.resource_id;
        self.check_new_id(id)?;
        if args.size == 0 {
            return Err(invalid("a blob of 0 bytes"));
        }
        let uses_guest_pages = match args.blob_mem {
            BLOB_MEM_GUEST => true,
            BLOB_MEM_HOST3D_GUEST => true,
            BLOB_MEM_HOST3D => false,
            other => return Err(invalid(format!("unknown blob_mem {other}"))),
        };
        let share_ctx = self.is_share_ctx(guest_ctx);
        // On a share context, a blob id names an import (IMPORT answered it).
        if share_ctx && args.blob_mem != BLOB_MEM_GUEST && args.blob_id != 0 {
            return self.create_imported_blob(
                id,
                args.blob_mem,
                args.blob_flags,
                args.blob_id,
                args.size,
            );
        }
        // A host blob of blob id 0 made on a share context (a buffer to export) is memory of the
        // daemon's own, whatever the VM's renderer: a 3D renderer makes host blobs only for a
        // context of its own, and the share context is none of its.
        if share_ctx && args.blob_mem == BLOB_MEM_HOST3D && args.blob_id == 0 {
            return self.create_daemon_blob(id, args);
        }
        if args.blob_mem != BLOB_MEM_GUEST && !self.has_3d() {
            return Err(invalid("a host blob needs a 3D renderer"));
        }
        // A blob made on a share context (a reply blob) belongs to no renderer context.
        let ctx = if guest_ctx.0 == 0 || share_ctx {
            RendererCtxId::NONE
        } else {
            self.renderer_ctx(guest_ctx)?
        };
        let backing = if uses_guest_pages {
            let b = resolve_backing(mem, &args.entries)?;
            if b.bytes < args.size {
                return Err(invalid(format!(
                    "{} bytes of pages for a {}-byte blob",
                    b.bytes, args.size
                )));
            }
            Some(b)
        } else {
            if !args.entries.is_empty() {
                return Err(invalid("guest pages for a host blob"));
            }
            None
        };
        // Guest pages are the guest's own memory; host blobs cost the host.
        let charged = if args.blob_mem == BLOB_MEM_HOST3D {
            args.size
        } else {
            0
        };
        self.charge(charged)?;
        let renderer_id = self.renderer_id_for(id)?;
        let blob_args = BlobArgs {
            mem: args.blob_mem,
            flags: args.blob_flags,
            blob_id: args.blob_id,
            size: args.size,
        };
        let created = self.renderer.create_blob(
            ctx,
            renderer_id,
            blob_args,
            backing.as_ref().map(|b| b.ranges.clone()),
        );
        if let Err(e) = created {
            // Gives the renderer id back (a 2D renderer reuses it).
            self.renderer.unref(renderer_id);
            return Err(render_error(e));
        }
        // A guest blob in a file-backed region can be mapped by the frontend straight from it.
        let export = if args.blob_mem == BLOB_MEM_GUEST {
            file_range(mem, &args.entries).map(|(file, offset)| ExportedBlob {
                file,
                offset,
                size: args.size,
                map_info: MAP_CACHE_CACHED,
            })
        } else {
            None
        };
        let mut res = Resource::new(renderer_id, 0, 0, charged);
        res.backing = backing;
        res.blob = Some(Blob {
            mem: args.blob_mem,
            flags: args.blob_flags,
            mapped: None,
            export,
        });
        self.resource_bytes += charged;
        self.resources.insert(id, res);
        Ok(Response::OkNodata)
    }

    /// A host blob backed by a sealed memfd of the daemon's (`hostmem`), charged to the VM like
    /// any host blob; the renderer never sees it.
    fn create_daemon_blob(&mut self, id: u32, args: &CreateBlob) -> Result<Response> {
        if !args.entries.is_empty() {
            return Err(invalid("guest pages for a host blob"));
        }
        self.charge(args.size)?;
        let file = sealed_memfd(args.size)
            .map_err(|e| out_of_memory(format!("no memfd of {} bytes: {e}", args.size)))?;
        let mut res = Resource::new(RendererResId(0), 0, 0, args.size);
        res.daemon_memory = true;
        res.blob = Some(Blob {
            mem: args.blob_mem,
            flags: args.blob_flags,
            mapped: None,
            export: Some(ExportedBlob {
                file: Arc::new(file),
                offset: 0,
                size: args.size,
                map_info: MAP_CACHE_CACHED,
            }),
        });
        self.resource_bytes += args.size;
        self.resources.insert(id, res);
        Ok(Response::OkNodata)
    }

    /// Reserves the window range and finds what to map; the transport sends the request.
    pub(super) fn map_blob(&mut self, id: u32, offset: u64) -> Result<(Response, ShmemRequest)> {
        let blob = self
            .resource(id)?
            .blob
            .as_ref()
            .ok_or_else(|| not_a_blob(id))?;
        if blob.flags & BLOB_FLAG_USE_MAPPABLE == 0 {
            return Err(invalid(format!("blob {id} was not made MAPPABLE")));
        }
        if blob.mapped.is_some() {
            return Err(invalid(format!("blob {id} is mapped already")));
        }
        self.forget_moved_mapping(id);
        self.bring_back(id)?;
        let export = self.export(id)?;
        let len = self.window.reserve(offset, export.size, id)?;
        let access = export.map_info & MAP_ACCESS_MASK;
        let request = ShmemRequest::Map {
            resource_id: id,
            file: export.file,
            file_offset: export.offset,
            shm_offset: offset,
            len,
            writable: access == 0 || access & MAP_ACCESS_WRITE != 0,
        };
        if let Some(blob) = self.resource_mut(id)?.blob.as_mut() {
            blob.mapped = Some((offset, len));
        }
        Ok((
            Response::OkMapInfo {
                map_info: export.map_info & MAP_CACHE_MASK,
            },
            request,
        ))
    }

    /// How the frontend can map blob `id`; asks the renderer the first time.
    pub(super) fn export(&mut self, id: u32) -> Result<ExportedBlob> {
        let res = self.resource(id)?;
        let blob = res.blob.as_ref().ok_or_else(|| not_a_blob(id))?;
        if let Some(export) = &blob.export {
            return Ok(export.clone());
        }
        // Guest pages outside one file-backed region cannot be handed to the frontend; a
        // revoked import has nothing left to map.
        if blob.mem == BLOB_MEM_GUEST {
            return Err(invalid(format!(
                "the pages of guest blob {id} are not in one file-backed region"
            )));
        }
        if res.imported {
            return Err(invalid(format!("import {id} was revoked")));
        }
        let export = self
            .renderer
            .map_blob(res.renderer_id)
            .map_err(render_error)?;
        if let Some(blob) = self.resource_mut(id)?.blob.as_mut() {
            blob.export = Some(export.clone());
        }
        Ok(export)
    }

    /// The frontend refused a mapping `map_blob` prepared: forget it.
    pub fn map_failed(&mut self, id: u32) {
        let _ = self.take_mapping(id);
    }

    pub(super) fn unmap_blob(&mut self, id: u32) -> Result<(Response, Option<ShmemRequest>)> {
        match self.take_mapping(id)? {
            Some(request) => Ok((Response::OkNodata, Some(request))),
            // Its mapping went when the buffer was moved out: the guest did not know yet.
            None if self.forget_moved_mapping(id) => Ok((Response::OkNodata, None)),
            None => Err(invalid(format!("blob {id} is not mapped"))),
        }
    }

    /// Removes `id`'s mapping from the window, if it has one, and says what to unmap.
    pub(super) fn take_mapping(&mut self, id: u32) -> Result<Option<ShmemRequest>> {
        let res = self.resource_mut(id)?;
        let Some((offset, len)) = res.blob.as_mut().and_then(|b| b.mapped.take()) else {
            return Ok(None);
        };
        self.window.release(offset);
        Ok(Some(ShmemRequest::Unmap {
            shm_offset: offset,
            len,
        }))
    }

    pub(super) fn set_scanout_blob(
        &mut self,
        s: &ScanoutBlob,
        display: &mut Vec<DisplayCmd>,
    ) -> Result<Response> {
        if s.scanout_id >= self.scanout_limit() {
            return Err(no_scanout(s.scanout_id));
        }
        if s.resource_id == 0 {
            return self.set_scanout(s.scanout_id, 0, s.rect, display);
        }
        let res = self.resource(s.resource_id)?;
        if res.blob.is_none() {
            return Err(not_a_blob(s.resource_id));
        }
        let extent = 1..=MAX_SCANOUT_EXTENT;
        if format::bytes_per_pixel(s.format) != Some(4) {
            return Err(invalid(format!("format {} for a blob scanout", s.format)));
        }
        if !extent.contains(&s.width) || !extent.contains(&s.height) {
            return Err(invalid(format!("a {}x{} blob scanout", s.width, s.height)));
        }
        let rect = s.rect;
        if rect.width == 0 || rect.height == 0 || !rect_within(&rect, s.width, s.height) {
            return Err(invalid(format!(
                "{}x{} at ({}, {}) does not lie inside the {}x{} scanout",
                rect.width, rect.height, rect.x, rect.y, s.width, s.height
            )));
        }
        // The last row's last pixel must lie inside the blob.
        let stride = u64::from(s.strides[0]);
        let offset = u64::from(s.offsets[0]);
        let row = u64::from(s.width) * 4;
        let end = (u64::from(s.height) - 1)
            .checked_mul(stride)
            .and_then(|rows| rows.checked_add(row + offset));
        if stride < row {
            return Err(invalid(format!(
                "stride {stride} under a row of {row} bytes"
            )));
        }
        if end.is_none_or(|end| end > blob_size(res)) {
            return Err(invalid(format!(
                "the scanout runs past the {}-byte blob",
                blob_size(res)
            )));
        }
        // Shown, the buffer is busy and stays; it must be back before it is shown.
        self.bring_back(s.resource_id)?;
        let slot = self
            .scanouts
            .get_mut(s.scanout_id as usize)
            .ok_or_else(|| no_scanout(s.scanout_id))?;
        *slot = Scanout {
            resource_id: s.resource_id,
            rect,
            layout: Some(BlobLayout { offset, stride }),
        };
        display.push(DisplayCmd::Scanout {
            scanout: s.scanout_id,
            width: rect.width,
            height: rect.height,
        });
        Ok(Response::OkNodata)
    }

    /// A shared buffer moved out under the memory budget comes back before anything uses it.
    fn bring_back(&self, id: u32) -> Result<()> {
        if let (Some(uuid), Some(share)) = (self.shared_uuid(id), self.share_hub()) {
            share.ensure_resident(&uuid).map_err(|status| {
                out_of_memory(format!(
                    "the shared buffer cannot be brought back ({status:?})"
                ))
            })?;
        }
        Ok(())
    }

    /// The pixels of `area` of a blob scanout, rows packed: read from guest pages, or from the
    /// host blob's export.
    pub(super) fn read_blob_pixels(
        &mut self,
        id: u32,
        layout: BlobLayout,
        area: Rect,
        pixels: &mut [u8],
    ) -> Result<()> {
        let export = match self.resource(id)?.backing {
            Some(_) => None,
            None => Some(self.export(id)?),
        };
        let res = self.resource(id)?;
        // The area lies in a scanout of at most MAX_SCANOUT_EXTENT pixels either way.
        let row = area.width as usize * 4;
        if pixels.len() != row * area.height as usize {
            return Err(invalid("a buffer of another size than the area"));
        }
        for (y, dst) in pixels.chunks_exact_mut(row.max(1)).enumerate() {
            let at = layout.offset
                + (u64::from(area.y) + y as u64) * layout.stride
                + u64::from(area.x) * 4;
            let read = match (&res.backing, &export) {
                (Some(backing), _) => backing.read_at(at, dst),
                (None, Some(e)) => e.file.read_exact_at(dst, e.offset + at).is_ok(),
                (None, None) => false,
            };
            if !read {
                return Err(invalid(format!("cannot read row {y} of blob {id}")));
            }
        }
        Ok(())
    }
}

fn not_a_blob(id: u32) -> Failure {
    invalid(format!("resource {id} is not a blob"))
}

fn blob_size(res: &Resource) -> u64 {
    match (
        &res.backing,
        res.blob.as_ref().and_then(|b| b.export.as_ref()),
    ) {
        (Some(b), _) => b.bytes,
        (None, Some(e)) => e.size,
        // A host blob not yet exported: its size is what it was charged.
        (None, None) => res.size,
    }
}
