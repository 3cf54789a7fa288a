//! Requests a driver places on the control and cursor queues.

mod codec;
#[cfg(test)]
mod tests;

use crate::consts::cmd;
use crate::header::CtrlHeader;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Box3d {
    pub x: u32,
    pub y: u32,
    pub z: u32,
    pub w: u32,
    pub h: u32,
    pub d: u32,
}

/// One guest memory range backing a resource (16 bytes on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemEntry {
    pub addr: u64,
    pub length: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CursorPos {
    pub scanout_id: u32,
    pub x: u32,
    pub y: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transfer3d {
    pub box_: Box3d,
    pub offset: u64,
    pub resource_id: u32,
    pub level: u32,
    pub stride: u32,
    pub layer_stride: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResourceCreate3d {
    pub resource_id: u32,
    pub target: u32,
    pub format: u32,
    pub bind: u32,
    pub width: u32,
    pub height: u32,
    pub depth: u32,
    pub array_size: u32,
    pub last_level: u32,
    pub nr_samples: u32,
    pub flags: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateBlob {
    pub resource_id: u32,
    pub blob_mem: u32,
    pub blob_flags: u32,
    pub blob_id: u64,
    pub size: u64,
    pub entries: Vec<MemEntry>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanoutBlob {
    pub rect: Rect,
    pub scanout_id: u32,
    pub resource_id: u32,
    pub width: u32,
    pub height: u32,
    pub format: u32,
    pub strides: [u32; 4],
    pub offsets: [u32; 4],
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateCursor {
    pub pos: CursorPos,
    pub resource_id: u32,
    pub hot_x: u32,
    pub hot_y: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    GetDisplayInfo,
    ResourceCreate2d {
        resource_id: u32,
        format: u32,
        width: u32,
        height: u32,
    },
    ResourceUnref {
        resource_id: u32,
    },
    SetScanout {
        rect: Rect,
        scanout_id: u32,
        resource_id: u32,
    },
    ResourceFlush {
        rect: Rect,
        resource_id: u32,
    },
    TransferToHost2d {
        rect: Rect,
        offset: u64,
        resource_id: u32,
    },
    ResourceAttachBacking {
        resource_id: u32,
        entries: Vec<MemEntry>,
    },
    ResourceDetachBacking {
        resource_id: u32,
    },
    GetCapsetInfo {
        capset_index: u32,
    },
    GetCapset {
        capset_id: u32,
        capset_version: u32,
    },
    GetEdid {
        scanout: u32,
    },
    ResourceAssignUuid {
        resource_id: u32,
    },
    ResourceCreateBlob(CreateBlob),
    SetScanoutBlob(ScanoutBlob),
    /// `debug_name` holds at most 64 bytes (the wire field's size).
    CtxCreate {
        context_init: u32,
        debug_name: Vec<u8>,
    },
    CtxDestroy,
    CtxAttachResource {
        resource_id: u32,
    },
    CtxDetachResource {
        resource_id: u32,
    },
    ResourceCreate3d(ResourceCreate3d),
    TransferToHost3d(Transfer3d),
    TransferFromHost3d(Transfer3d),
    Submit3d {
        commands: Vec<u8>,
    },
    ResourceMapBlob {
        resource_id: u32,
        offset: u64,
    },
    ResourceUnmapBlob {
        resource_id: u32,
    },
    UpdateCursor(UpdateCursor),
    MoveCursor(UpdateCursor),
}

impl Command {
    pub fn type_code(&self) -> u32 {
        match self {
            Command::GetDisplayInfo => cmd::GET_DISPLAY_INFO,
            Command::ResourceCreate2d { .. } => cmd::RESOURCE_CREATE_2D,
            Command::ResourceUnref { .. } => cmd::RESOURCE_UNREF,
            Command::SetScanout { .. } => cmd::SET_SCANOUT,
            Command::ResourceFlush { .. } => cmd::RESOURCE_FLUSH,
            Command::TransferToHost2d { .. } => cmd::TRANSFER_TO_HOST_2D,
            Command::ResourceAttachBacking { .. } => cmd::RESOURCE_ATTACH_BACKING,
            Command::ResourceDetachBacking { .. } => cmd::RESOURCE_DETACH_BACKING,
            Command::GetCapsetInfo { .. } => cmd::GET_CAPSET_INFO,
            Command::GetCapset { .. } => cmd::GET_CAPSET,
            Command::GetEdid { .. } => cmd::GET_EDID,
            Command::ResourceAssignUuid { .. } => cmd::RESOURCE_ASSIGN_UUID,
            Command::ResourceCreateBlob(_) => cmd::RESOURCE_CREATE_BLOB,
            Command::SetScanoutBlob(_) => cmd::SET_SCANOUT_BLOB,
            Command::CtxCreate { .. } => cmd::CTX_CREATE,
            Command::CtxDestroy => cmd::CTX_DESTROY,
            Command::CtxAttachResource { .. } => cmd::CTX_ATTACH_RESOURCE,
            Command::CtxDetachResource { .. } => cmd::CTX_DETACH_RESOURCE,
            Command::ResourceCreate3d(_) => cmd::RESOURCE_CREATE_3D,
            Command::TransferToHost3d(_) => cmd::TRANSFER_TO_HOST_3D,
            Command::TransferFromHost3d(_) => cmd::TRANSFER_FROM_HOST_3D,
            Command::Submit3d { .. } => cmd::SUBMIT_3D,
            Command::ResourceMapBlob { .. } => cmd::RESOURCE_MAP_BLOB,
            Command::ResourceUnmapBlob { .. } => cmd::RESOURCE_UNMAP_BLOB,
            Command::UpdateCursor(_) => cmd::UPDATE_CURSOR,
            Command::MoveCursor(_) => cmd::MOVE_CURSOR,
        }
    }
}

/// Caps on the variable-length parts of a request, so a guest cannot make
/// the decoder allocate arbitrary amounts of memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_entries: u32,
    pub max_submit_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // 1 GiB of 4 KiB pages.
            max_entries: 262_144,
            max_submit_bytes: 16 << 20,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub hdr: CtrlHeader,
    pub cmd: Command,
}
