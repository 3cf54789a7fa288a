//! Scanouts, the cursor, and the commands the device hands to a display.

use vgpud_protocol::Rect;

/// Cursor images are 64x64 BGRA, as virtio-gpu and the display protocol define them.
pub const CURSOR_SIZE: u32 = 64;
const CURSOR_BYTES: usize = (CURSOR_SIZE * CURSOR_SIZE * 4) as usize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scanout {
    /// 0 when the scanout is disabled.
    pub resource_id: u32,
    pub rect: Rect,
    /// Set for a blob scanout: where its pixels are in the blob.
    pub layout: Option<BlobLayout>,
}

/// A blob's image: row 0 at byte `offset`, rows `stride` bytes apart, 4 bytes per pixel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlobLayout {
    pub offset: u64,
    pub stride: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorImage(pub Box<[u8; CURSOR_BYTES]>);

impl CursorImage {
    /// Places `w`x`h` packed rows at the top-left of a transparent 64x64 image.
    pub fn from_rows(pixels: &[u8], w: u32, h: u32) -> Self {
        let mut img = Box::new([0u8; CURSOR_BYTES]);
        let row = (w.min(CURSOR_SIZE) * 4) as usize;
        for (y, src) in pixels
            .chunks_exact(row.max(1))
            .take(h.min(CURSOR_SIZE) as usize)
            .enumerate()
        {
            let start = y * (CURSOR_SIZE as usize) * 4;
            if let Some(dst) = img.get_mut(start..start + row) {
                dst.copy_from_slice(src);
            }
        }
        CursorImage(img)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisplayCmd {
    /// A scanout now shows a `width`x`height` image; 0x0 turns it off.
    Scanout {
        scanout: u32,
        width: u32,
        height: u32,
    },
    /// New pixels for `rect` (relative to the scanout): those of `area` of guest resource
    /// `resource_id`. They are read while the update is sent, a band at a time
    /// (`Device::update_pixels`), so a flush of a huge resource never holds the whole image.
    Update {
        scanout: u32,
        rect: Rect,
        resource_id: u32,
        area: Rect,
    },
    CursorUpdate {
        scanout: u32,
        x: u32,
        y: u32,
        hot_x: u32,
        hot_y: u32,
        image: CursorImage,
    },
    CursorMove {
        scanout: u32,
        x: u32,
        y: u32,
    },
    CursorHide {
        scanout: u32,
    },
}

impl DisplayCmd {
    pub fn disable(scanout: u32) -> Self {
        DisplayCmd::Scanout {
            scanout,
            width: 0,
            height: 0,
        }
    }
}

/// Bytes of the 4-byte pixels of `band` (any rect), rows packed.
pub fn band_bytes(band: Rect) -> u64 {
    u64::from(band.width) * 4 * u64::from(band.height)
}

/// Splits `area` into bands of whole rows, each at most `max_bytes` of 4-byte pixels (at least one
/// row). Yields (rows from the top of `area`, band).
pub fn bands(area: Rect, max_bytes: usize) -> impl Iterator<Item = (u32, Rect)> {
    let row = (area.width as usize).saturating_mul(4).max(1);
    let rows = u32::try_from(max_bytes / row).unwrap_or(u32::MAX).max(1);
    (0..area.height).step_by(rows as usize).map(move |top| {
        let band = Rect {
            x: area.x,
            y: area.y + top,
            width: area.width,
            height: rows.min(area.height - top),
        };
        (top, band)
    })
}

/// Whether `rect` lies inside a `width`x`height` image (overflow-safe).
pub fn rect_within(rect: &Rect, width: u32, height: u32) -> bool {
    matches!(rect.x.checked_add(rect.width), Some(r) if r <= width)
        && matches!(rect.y.checked_add(rect.height), Some(b) if b <= height)
}

/// Whether `inner` lies inside `outer` (same coordinates; overflow-safe).
pub fn inside(inner: &Rect, outer: &Rect) -> bool {
    inner.x >= outer.x
        && inner.y >= outer.y
        && u64::from(inner.x) + u64::from(inner.width)
            <= u64::from(outer.x) + u64::from(outer.width)
        && u64::from(inner.y) + u64::from(inner.height)
            <= u64::from(outer.y) + u64::from(outer.height)
}

/// The overlap of two rects that each lie inside a valid image, or None if empty.
pub fn intersect(a: &Rect, b: &Rect) -> Option<Rect> {
    let x0 = a.x.max(b.x);
    let y0 = a.y.max(b.y);
    let x1 = a.x.saturating_add(a.width).min(b.x.saturating_add(b.width));
    let y1 =
        a.y.saturating_add(a.height)
            .min(b.y.saturating_add(b.height));
    (x1 > x0 && y1 > y0).then(|| Rect {
        x: x0,
        y: y0,
        width: x1 - x0,
        height: y1 - y0,
    })
}
