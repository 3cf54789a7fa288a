//! Numeric constants of the virtio-gpu device.

/// Feature bits (bit numbers, not masks).
pub const F_VIRGL: u32 = 0;
pub const F_EDID: u32 = 1;
pub const F_RESOURCE_UUID: u32 = 2;
pub const F_RESOURCE_BLOB: u32 = 3;
pub const F_CONTEXT_INIT: u32 = 4;
/// The config space's blob_alignment is valid, and blob sizes and map offsets follow it.
pub const F_BLOB_ALIGNMENT: u32 = 5;

/// Header flags.
pub const FLAG_FENCE: u32 = 1;
pub const FLAG_INFO_RING_IDX: u32 = 2;

/// Bit in `events_read` / `events_clear` of the config space.
pub const EVENT_DISPLAY: u32 = 1;

pub const MAX_SCANOUTS: usize = 16;

/// Command type codes.
pub mod cmd {
    pub const GET_DISPLAY_INFO: u32 = 0x100;
    pub const RESOURCE_CREATE_2D: u32 = 0x101;
    pub const RESOURCE_UNREF: u32 = 0x102;
    pub const SET_SCANOUT: u32 = 0x103;
    pub const RESOURCE_FLUSH: u32 = 0x104;
    pub const TRANSFER_TO_HOST_2D: u32 = 0x105;
    pub const RESOURCE_ATTACH_BACKING: u32 = 0x106;
    pub const RESOURCE_DETACH_BACKING: u32 = 0x107;
    pub const GET_CAPSET_INFO: u32 = 0x108;
    pub const GET_CAPSET: u32 = 0x109;
    pub const GET_EDID: u32 = 0x10a;
    pub const RESOURCE_ASSIGN_UUID: u32 = 0x10b;
    pub const RESOURCE_CREATE_BLOB: u32 = 0x10c;
    pub const SET_SCANOUT_BLOB: u32 = 0x10d;

    pub const CTX_CREATE: u32 = 0x200;
    pub const CTX_DESTROY: u32 = 0x201;
    pub const CTX_ATTACH_RESOURCE: u32 = 0x202;
    pub const CTX_DETACH_RESOURCE: u32 = 0x203;
    pub const RESOURCE_CREATE_3D: u32 = 0x204;
    pub const TRANSFER_TO_HOST_3D: u32 = 0x205;
    pub const TRANSFER_FROM_HOST_3D: u32 = 0x206;
    pub const SUBMIT_3D: u32 = 0x207;
    pub const RESOURCE_MAP_BLOB: u32 = 0x208;
    pub const RESOURCE_UNMAP_BLOB: u32 = 0x209;

    pub const UPDATE_CURSOR: u32 = 0x300;
    pub const MOVE_CURSOR: u32 = 0x301;
}

/// Every command type with a name for metrics and logs, in a fixed order: a command's index
/// here (`command_index`) is where per-command counters keep it.
pub const COMMAND_NAMES: [(u32, &str); 26] = [
    (cmd::GET_DISPLAY_INFO, "get_display_info"),
    (cmd::RESOURCE_CREATE_2D, "resource_create_2d"),
    (cmd::RESOURCE_UNREF, "resource_unref"),
    (cmd::SET_SCANOUT, "set_scanout"),
    (cmd::RESOURCE_FLUSH, "resource_flush"),
    (cmd::TRANSFER_TO_HOST_2D, "transfer_to_host_2d"),
    (cmd::RESOURCE_ATTACH_BACKING, "resource_attach_backing"),
    (cmd::RESOURCE_DETACH_BACKING, "resource_detach_backing"),
    (cmd::GET_CAPSET_INFO, "get_capset_info"),
    (cmd::GET_CAPSET, "get_capset"),
    (cmd::GET_EDID, "get_edid"),
    (cmd::RESOURCE_ASSIGN_UUID, "resource_assign_uuid"),
    (cmd::RESOURCE_CREATE_BLOB, "resource_create_blob"),
    (cmd::SET_SCANOUT_BLOB, "set_scanout_blob"),
    (cmd::CTX_CREATE, "ctx_create"),
    (cmd::CTX_DESTROY, "ctx_destroy"),
    (cmd::CTX_ATTACH_RESOURCE, "ctx_attach_resource"),
    (cmd::CTX_DETACH_RESOURCE, "ctx_detach_resource"),
    (cmd::RESOURCE_CREATE_3D, "resource_create_3d"),
    (cmd::TRANSFER_TO_HOST_3D, "transfer_to_host_3d"),
    (cmd::TRANSFER_FROM_HOST_3D, "transfer_from_host_3d"),
    (cmd::SUBMIT_3D, "submit_3d"),
    (cmd::RESOURCE_MAP_BLOB, "resource_map_blob"),
    (cmd::RESOURCE_UNMAP_BLOB, "resource_unmap_blob"),
    (cmd::UPDATE_CURSOR, "update_cursor"),
    (cmd::MOVE_CURSOR, "move_cursor"),
];

/// Where `code` is in `COMMAND_NAMES`.
pub fn command_index(code: u32) -> Option<usize> {
    COMMAND_NAMES.iter().position(|(c, _)| *c == code)
}

/// Response type codes.
pub mod resp {
    pub const OK_NODATA: u32 = 0x1100;
    pub const OK_DISPLAY_INFO: u32 = 0x1101;
    pub const OK_CAPSET_INFO: u32 = 0x1102;
    pub const OK_CAPSET: u32 = 0x1103;
    pub const OK_EDID: u32 = 0x1104;
    pub const OK_RESOURCE_UUID: u32 = 0x1105;
    pub const OK_MAP_INFO: u32 = 0x1106;

    pub const ERR_UNSPEC: u32 = 0x1200;
    pub const ERR_OUT_OF_MEMORY: u32 = 0x1201;
    pub const ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
    pub const ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
    pub const ERR_INVALID_CONTEXT_ID: u32 = 0x1204;
    pub const ERR_INVALID_PARAMETER: u32 = 0x1205;
}

/// 2D resource pixel formats.
pub mod format {
    pub const B8G8R8A8_UNORM: u32 = 1;
    pub const B8G8R8X8_UNORM: u32 = 2;
    pub const A8R8G8B8_UNORM: u32 = 3;
    pub const X8R8G8B8_UNORM: u32 = 4;
    pub const R8G8B8A8_UNORM: u32 = 67;
    pub const X8B8G8R8_UNORM: u32 = 68;
    pub const A8B8G8R8_UNORM: u32 = 121;
    pub const R8G8B8X8_UNORM: u32 = 134;

    /// Bytes per pixel of a known 2D format, `None` for anything else.
    pub fn bytes_per_pixel(format: u32) -> Option<u32> {
        match format {
            B8G8R8A8_UNORM | B8G8R8X8_UNORM | A8R8G8B8_UNORM | X8R8G8B8_UNORM | R8G8B8A8_UNORM
            | X8B8G8R8_UNORM | A8B8G8R8_UNORM | R8G8B8X8_UNORM => Some(4),
            _ => None,
        }
    }
}

/// `blob_mem` values of RESOURCE_CREATE_BLOB.
pub const BLOB_MEM_GUEST: u32 = 1;
pub const BLOB_MEM_HOST3D: u32 = 2;
pub const BLOB_MEM_HOST3D_GUEST: u32 = 3;

/// `blob_flags` bits of RESOURCE_CREATE_BLOB.
pub const BLOB_FLAG_USE_MAPPABLE: u32 = 1;
pub const BLOB_FLAG_USE_SHAREABLE: u32 = 2;
pub const BLOB_FLAG_USE_CROSS_DEVICE: u32 = 4;

/// Caching type in the `map_info` of OK_MAP_INFO.
pub const MAP_CACHE_MASK: u32 = 0x0f;
pub const MAP_CACHE_NONE: u32 = 0;
pub const MAP_CACHE_CACHED: u32 = 1;
pub const MAP_CACHE_UNCACHED: u32 = 2;
pub const MAP_CACHE_WC: u32 = 3;

/// Shared memory region ids.
pub const SHM_ID_UNDEFINED: u8 = 0;
pub const SHM_ID_HOST_VISIBLE: u8 = 1;

/// Capability set ids.
pub mod capset {
    pub const VIRGL: u32 = 1;
    pub const VIRGL2: u32 = 2;
    pub const GFXSTREAM_VULKAN: u32 = 3;
    pub const VENUS: u32 = 4;
    pub const CROSS_DOMAIN: u32 = 5;
    pub const DRM: u32 = 6;
    pub const GFXSTREAM_MAGMA: u32 = 7;
    pub const GFXSTREAM_GLES: u32 = 8;
    pub const GFXSTREAM_COMPOSER: u32 = 9;
}

/// Low bits of CTX_CREATE's `context_init` naming the capset.
pub const CONTEXT_INIT_CAPSET_ID_MASK: u32 = 0xff;

pub const EDID_BLOB_SIZE: usize = 1024;
