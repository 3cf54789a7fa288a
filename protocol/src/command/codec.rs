//! Wire encoding and decoding of requests.

use super::{
    Box3d, Command, CreateBlob, CursorPos, Limits, MemEntry, Rect, Request, ResourceCreate3d,
    ScanoutBlob, Transfer3d, UpdateCursor,
};
use crate::consts::cmd;
use crate::header::{CtrlHeader, HEADER_SIZE};
use crate::wire::{DecodeError, Reader, Writer};

const MEM_ENTRY_SIZE: usize = 16;
const DEBUG_NAME_SIZE: usize = 64;

impl Request {
    /// Decodes one request from the device-readable bytes of a descriptor
    /// chain. Fixed parts must be fully present (trailing extra bytes are
    /// ignored); variable parts must be fully present and within `limits`.
    pub fn decode(buf: &[u8], limits: &Limits) -> Result<Request, DecodeError> {
        let hdr = CtrlHeader::decode(buf)?;
        let mut r = Reader::at(buf, HEADER_SIZE);
        let cmd = decode_body(hdr.type_, &mut r, limits)?;
        Ok(Request { hdr, cmd })
    }

    /// Encodes the request, taking the header type from `cmd`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let hdr = CtrlHeader {
            type_: self.cmd.type_code(),
            ..self.hdr
        };
        hdr.encode(&mut out);
        encode_body(&self.cmd, &mut out);
        out
    }
}

// Struct literal fields are evaluated in source order, which is wire order.
fn decode_body(type_: u32, r: &mut Reader, limits: &Limits) -> Result<Command, DecodeError> {
    let cmd = match type_ {
        cmd::GET_DISPLAY_INFO => Command::GetDisplayInfo,
        cmd::RESOURCE_CREATE_2D => Command::ResourceCreate2d {
            resource_id: r.u32()?,
            format: r.u32()?,
            width: r.u32()?,
            height: r.u32()?,
        },
        cmd::RESOURCE_UNREF => Command::ResourceUnref {
            resource_id: u32_pad(r)?,
        },
        cmd::SET_SCANOUT => Command::SetScanout {
            rect: read_rect(r)?,
            scanout_id: r.u32()?,
            resource_id: r.u32()?,
        },
        cmd::RESOURCE_FLUSH => Command::ResourceFlush {
            rect: read_rect(r)?,
            resource_id: u32_pad(r)?,
        },
        cmd::TRANSFER_TO_HOST_2D => Command::TransferToHost2d {
            rect: read_rect(r)?,
            offset: r.u64()?,
            resource_id: u32_pad(r)?,
        },
        cmd::RESOURCE_ATTACH_BACKING => {
            let resource_id = r.u32()?;
            let count = r.u32()?;
            Command::ResourceAttachBacking {
                resource_id,
                entries: read_entries(r, count, limits)?,
            }
        }
        cmd::RESOURCE_DETACH_BACKING => Command::ResourceDetachBacking {
            resource_id: u32_pad(r)?,
        },
        cmd::GET_CAPSET_INFO => Command::GetCapsetInfo {
            capset_index: u32_pad(r)?,
        },
        cmd::GET_CAPSET => Command::GetCapset {
            capset_id: r.u32()?,
            capset_version: r.u32()?,
        },
        cmd::GET_EDID => Command::GetEdid {
            scanout: u32_pad(r)?,
        },
        cmd::RESOURCE_ASSIGN_UUID => Command::ResourceAssignUuid {
            resource_id: u32_pad(r)?,
        },
        cmd::RESOURCE_CREATE_BLOB => Command::ResourceCreateBlob(read_create_blob(r, limits)?),
        cmd::SET_SCANOUT_BLOB => Command::SetScanoutBlob(read_scanout_blob(r)?),
        cmd::CTX_CREATE => read_ctx_create(r)?,
        cmd::CTX_DESTROY => Command::CtxDestroy,
        cmd::CTX_ATTACH_RESOURCE => Command::CtxAttachResource {
            resource_id: u32_pad(r)?,
        },
        cmd::CTX_DETACH_RESOURCE => Command::CtxDetachResource {
            resource_id: u32_pad(r)?,
        },
        cmd::RESOURCE_CREATE_3D => Command::ResourceCreate3d(read_create_3d(r)?),
        cmd::TRANSFER_TO_HOST_3D => Command::TransferToHost3d(read_transfer_3d(r)?),
        cmd::TRANSFER_FROM_HOST_3D => Command::TransferFromHost3d(read_transfer_3d(r)?),
        cmd::SUBMIT_3D => Command::Submit3d {
            commands: read_submit(r, limits)?,
        },
        cmd::RESOURCE_MAP_BLOB => Command::ResourceMapBlob {
            resource_id: u32_pad(r)?,
            offset: r.u64()?,
        },
        cmd::RESOURCE_UNMAP_BLOB => Command::ResourceUnmapBlob {
            resource_id: u32_pad(r)?,
        },
        cmd::UPDATE_CURSOR => Command::UpdateCursor(read_cursor(r)?),
        cmd::MOVE_CURSOR => Command::MoveCursor(read_cursor(r)?),
        other => return Err(DecodeError::UnknownType(other)),
    };
    Ok(cmd)
}

fn encode_body(cmd: &Command, out: &mut Vec<u8>) {
    match cmd {
        Command::GetDisplayInfo | Command::CtxDestroy => {}
        Command::ResourceCreate2d {
            resource_id,
            format,
            width,
            height,
        } => {
            for v in [resource_id, format, width, height] {
                out.put_u32(*v);
            }
        }
        Command::ResourceUnref { resource_id }
        | Command::ResourceDetachBacking { resource_id }
        | Command::ResourceAssignUuid { resource_id }
        | Command::CtxAttachResource { resource_id }
        | Command::CtxDetachResource { resource_id }
        | Command::ResourceUnmapBlob { resource_id } => write_u32_pad(out, *resource_id),
        Command::GetCapsetInfo { capset_index } => write_u32_pad(out, *capset_index),
        Command::GetEdid { scanout } => write_u32_pad(out, *scanout),
        Command::SetScanout {
            rect,
            scanout_id,
            resource_id,
        } => {
            write_rect(out, rect);
            out.put_u32(*scanout_id);
            out.put_u32(*resource_id);
        }
        Command::ResourceFlush { rect, resource_id } => {
            write_rect(out, rect);
            write_u32_pad(out, *resource_id);
        }
        Command::TransferToHost2d {
            rect,
            offset,
            resource_id,
        } => {
            write_rect(out, rect);
            out.put_u64(*offset);
            write_u32_pad(out, *resource_id);
        }
        Command::ResourceAttachBacking {
            resource_id,
            entries,
        } => {
            let entries = clamp_len(entries);
            out.put_u32(*resource_id);
            out.put_u32(len_u32(entries));
            write_entries(out, entries);
        }
        Command::GetCapset {
            capset_id,
            capset_version,
        } => {
            out.put_u32(*capset_id);
            out.put_u32(*capset_version);
        }
        Command::ResourceCreateBlob(blob) => write_create_blob(out, blob),
        Command::SetScanoutBlob(blob) => write_scanout_blob(out, blob),
        Command::CtxCreate {
            context_init,
            debug_name,
        } => {
            let name = debug_name.get(..DEBUG_NAME_SIZE).unwrap_or(debug_name);
            out.put_u32(len_u32(name));
            out.put_u32(*context_init);
            out.extend_from_slice(name);
            out.put_zeros(DEBUG_NAME_SIZE.saturating_sub(name.len()));
        }
        Command::ResourceCreate3d(c) => write_create_3d(out, c),
        Command::TransferToHost3d(t) | Command::TransferFromHost3d(t) => write_transfer_3d(out, t),
        Command::Submit3d { commands } => {
            let commands = clamp_len(commands);
            out.put_u32(len_u32(commands));
            out.put_zeros(4);
            out.extend_from_slice(commands);
        }
        Command::ResourceMapBlob {
            resource_id,
            offset,
        } => {
            write_u32_pad(out, *resource_id);
            out.put_u64(*offset);
        }
        Command::UpdateCursor(c) | Command::MoveCursor(c) => write_cursor(out, c),
    }
}

/// Slices longer than a u32 count can describe are cut so count and data agree.
fn clamp_len<T>(items: &[T]) -> &[T] {
    let max = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
    items.get(..max).unwrap_or(items)
}

fn len_u32<T>(items: &[T]) -> u32 {
    u32::try_from(items.len()).unwrap_or(u32::MAX)
}

fn u32_pad(r: &mut Reader) -> Result<u32, DecodeError> {
    let v = r.u32()?;
    r.skip(4)?;
    Ok(v)
}

fn write_u32_pad(out: &mut Vec<u8>, v: u32) {
    out.put_u32(v);
    out.put_zeros(4);
}

fn read_rect(r: &mut Reader) -> Result<Rect, DecodeError> {
    Ok(Rect {
        x: r.u32()?,
        y: r.u32()?,
        width: r.u32()?,
        height: r.u32()?,
    })
}

fn write_rect(out: &mut Vec<u8>, rect: &Rect) {
    for v in [rect.x, rect.y, rect.width, rect.height] {
        out.put_u32(v);
    }
}

/// Checks the count and that the bytes are present before allocating.
fn read_entries(r: &mut Reader, count: u32, limits: &Limits) -> Result<Vec<MemEntry>, DecodeError> {
    let too_many = DecodeError::TooManyEntries {
        count,
        max: limits.max_entries,
    };
    if count > limits.max_entries {
        return Err(too_many);
    }
    let n = usize::try_from(count).map_err(|_| too_many.clone())?;
    r.ensure(n.checked_mul(MEM_ENTRY_SIZE).ok_or(too_many)?)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let addr = r.u64()?;
        let length = u32_pad(r)?;
        entries.push(MemEntry { addr, length });
    }
    Ok(entries)
}

fn write_entries(out: &mut Vec<u8>, entries: &[MemEntry]) {
    for e in entries {
        out.put_u64(e.addr);
        write_u32_pad(out, e.length);
    }
}

fn read_ctx_create(r: &mut Reader) -> Result<Command, DecodeError> {
    let nlen = r.u32()?;
    let context_init = r.u32()?;
    let name = r.bytes(DEBUG_NAME_SIZE)?;
    let keep = usize::try_from(nlen).map_or(DEBUG_NAME_SIZE, |n| n.min(DEBUG_NAME_SIZE));
    Ok(Command::CtxCreate {
        context_init,
        debug_name: name.get(..keep).unwrap_or(name).to_vec(),
    })
}

/// Checks the size against the limit before copying.
fn read_submit(r: &mut Reader, limits: &Limits) -> Result<Vec<u8>, DecodeError> {
    let size = r.u32()?;
    r.skip(4)?;
    let too_large = DecodeError::SubmitTooLarge {
        size,
        max: limits.max_submit_bytes,
    };
    if size > limits.max_submit_bytes {
        return Err(too_large);
    }
    let len = usize::try_from(size).map_err(|_| too_large)?;
    Ok(r.bytes(len)?.to_vec())
}

fn read_create_blob(r: &mut Reader, limits: &Limits) -> Result<CreateBlob, DecodeError> {
    let resource_id = r.u32()?;
    let blob_mem = r.u32()?;
    let blob_flags = r.u32()?;
    let count = r.u32()?;
    let blob_id = r.u64()?;
    let size = r.u64()?;
    Ok(CreateBlob {
        resource_id,
        blob_mem,
        blob_flags,
        blob_id,
        size,
        entries: read_entries(r, count, limits)?,
    })
}

fn write_create_blob(out: &mut Vec<u8>, b: &CreateBlob) {
    let entries = clamp_len(&b.entries);
    out.put_u32(b.resource_id);
    out.put_u32(b.blob_mem);
    out.put_u32(b.blob_flags);
    out.put_u32(len_u32(entries));
    out.put_u64(b.blob_id);
    out.put_u64(b.size);
    write_entries(out, entries);
}

fn read_scanout_blob(r: &mut Reader) -> Result<ScanoutBlob, DecodeError> {
    let mut b = ScanoutBlob {
        rect: read_rect(r)?,
        scanout_id: r.u32()?,
        resource_id: r.u32()?,
        width: r.u32()?,
        height: r.u32()?,
        format: r.u32()?,
        ..Default::default()
    };
    r.skip(4)?;
    for s in &mut b.strides {
        *s = r.u32()?;
    }
    for o in &mut b.offsets {
        *o = r.u32()?;
    }
    Ok(b)
}

fn write_scanout_blob(out: &mut Vec<u8>, b: &ScanoutBlob) {
    write_rect(out, &b.rect);
    for v in [b.scanout_id, b.resource_id, b.width, b.height, b.format] {
        out.put_u32(v);
    }
    out.put_zeros(4);
    for v in b.strides.iter().chain(&b.offsets) {
        out.put_u32(*v);
    }
}

fn read_create_3d(r: &mut Reader) -> Result<ResourceCreate3d, DecodeError> {
    let c = ResourceCreate3d {
        resource_id: r.u32()?,
        target: r.u32()?,
        format: r.u32()?,
        bind: r.u32()?,
        width: r.u32()?,
        height: r.u32()?,
        depth: r.u32()?,
        array_size: r.u32()?,
        last_level: r.u32()?,
        nr_samples: r.u32()?,
        flags: r.u32()?,
    };
    r.skip(4)?;
    Ok(c)
}

fn write_create_3d(out: &mut Vec<u8>, c: &ResourceCreate3d) {
    let fields = [
        c.resource_id,
        c.target,
        c.format,
        c.bind,
        c.width,
        c.height,
        c.depth,
        c.array_size,
        c.last_level,
        c.nr_samples,
        c.flags,
    ];
    for v in fields {
        out.put_u32(v);
    }
    out.put_zeros(4);
}

fn read_transfer_3d(r: &mut Reader) -> Result<Transfer3d, DecodeError> {
    Ok(Transfer3d {
        box_: Box3d {
            x: r.u32()?,
            y: r.u32()?,
            z: r.u32()?,
            w: r.u32()?,
            h: r.u32()?,
            d: r.u32()?,
        },
        offset: r.u64()?,
        resource_id: r.u32()?,
        level: r.u32()?,
        stride: r.u32()?,
        layer_stride: r.u32()?,
    })
}

fn write_transfer_3d(out: &mut Vec<u8>, t: &Transfer3d) {
    let b = &t.box_;
    for v in [b.x, b.y, b.z, b.w, b.h, b.d] {
        out.put_u32(v);
    }
    out.put_u64(t.offset);
    for v in [t.resource_id, t.level, t.stride, t.layer_stride] {
        out.put_u32(v);
    }
}

fn read_cursor(r: &mut Reader) -> Result<UpdateCursor, DecodeError> {
    let pos = CursorPos {
        scanout_id: r.u32()?,
        x: r.u32()?,
        y: r.u32()?,
    };
    r.skip(4)?;
    let c = UpdateCursor {
        pos,
        resource_id: r.u32()?,
        hot_x: r.u32()?,
        hot_y: r.u32()?,
    };
    r.skip(4)?;
    Ok(c)
}

fn write_cursor(out: &mut Vec<u8>, c: &UpdateCursor) {
    for v in [c.pos.scanout_id, c.pos.x, c.pos.y] {
        out.put_u32(v);
    }
    out.put_zeros(4);
    for v in [c.resource_id, c.hot_x, c.hot_y] {
        out.put_u32(v);
    }
    out.put_zeros(4);
}
