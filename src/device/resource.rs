//! A guest-visible resource and what the device keeps about it.

use std::fs::File;
use std::io::Read;

use super::memory::Backing;
use super::renderer::ExportedBlob;
use crate::ids::RendererResId;

/// What a blob resource keeps besides the common fields.
pub struct Blob {
    pub mem: u32,
    pub flags: u32,
    /// Its place in the host-visible window while mapped: (offset, length).
    pub mapped: Option<(u64, u64)>,
    /// How the frontend can map it: guest blobs in a file-backed region, host blobs once the
    /// renderer exported them (some renderers export a blob only once, so it is kept).
    pub export: Option<ExportedBlob>,
}

pub struct Resource {
    /// The renderer's id for it; the guest never sees this.
    pub renderer_id: RendererResId,
    pub width: u32,
    pub height: u32,
    /// Host bytes it costs, counted against the VM's quota.
    pub size: u64,
    pub backing: Option<Backing>,
    pub uuid: Option<[u8; 16]>,
    pub blob: Option<Blob>,
    /// Made from another VM's export (the share context): the renderer knows nothing of it.
    pub imported: bool,
    /// A host blob of memory of the daemon's own, made on a share context: the renderer knows
    /// nothing of it either, and the daemon may move it out under the share budget.
    pub daemon_memory: bool,
}

impl Resource {
    /// Whether the renderer holds it (and must be told when it goes).
    pub fn in_renderer(&self) -> bool {
        !self.imported && !self.daemon_memory
    }

    pub fn new(renderer_id: RendererResId, width: u32, height: u32, size: u64) -> Self {
        Resource {
            renderer_id,
            width,
            height,
            size,
            backing: None,
            uuid: None,
            blob: None,
            imported: false,
            daemon_memory: false,
        }
    }
}

/// A random (version 4) UUID. Read from the kernel's CSPRNG: small enough not to need a crate.
pub fn random_uuid() -> Option<[u8; 16]> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom").ok()?.read_exact(&mut b).ok()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Some(b)
}
