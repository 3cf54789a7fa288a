//! What the device model needs from a renderer. Ids here are the renderer's global resource ids,
//! never a guest's: the device maps each VM's ids onto them.

use vgpud_protocol::Rect;

use super::memory::HostRange;

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

pub trait Renderer: Send {
    /// A fresh global resource id, never handed out before in this process.
    fn alloc_id(&self) -> Option<u32>;
    fn create_2d(&self, id: u32, width: u32, height: u32, format: u32) -> Result<(), RenderError>;
    fn unref(&self, id: u32);
    /// The ranges must stay mapped until `detach_backing` or `unref` of `id` returned.
    fn attach_backing(&self, id: u32, ranges: Vec<HostRange>) -> Result<(), RenderError>;
    fn detach_backing(&self, id: u32);
    /// Copies `rect` from the backing into the resource; the rect's first pixel is at byte
    /// `y * stride + x * 4 + extra_offset` of the backing.
    fn transfer_to_host_2d(
        &self,
        id: u32,
        rect: Rect,
        extra_offset: u64,
    ) -> Result<(), RenderError>;
    /// The pixels of `rect`, rows packed (stride = width * 4).
    fn read_pixels(&self, id: u32, rect: Rect) -> Result<Vec<u8>, RenderError>;
    fn capsets(&self) -> Vec<CapsetInfo>;
    fn capset(&self, id: u32, version: u32) -> Result<Vec<u8>, RenderError>;
}
