//! The device configuration space.

/// events_read, events_clear, num_scanouts, num_capsets, blob_alignment; all u32
/// little-endian. blob_alignment is meaningful only with F_BLOB_ALIGNMENT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuConfig {
    pub events_read: u32,
    pub events_clear: u32,
    pub num_scanouts: u32,
    pub num_capsets: u32,
    pub blob_alignment: u32,
}

pub const CONFIG_SIZE: usize = 20;

impl GpuConfig {
    pub fn to_bytes(&self) -> [u8; CONFIG_SIZE] {
        let fields = [
            self.events_read,
            self.events_clear,
            self.num_scanouts,
            self.num_capsets,
            self.blob_alignment,
        ];
        let mut out = [0u8; CONFIG_SIZE];
        for (chunk, v) in out.chunks_exact_mut(4).zip(fields) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Parses the first 16 bytes, and blob_alignment if present (0 otherwise, as from a device
    /// of the spec before it); `None` if `b` is shorter than 16 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<GpuConfig> {
        let word = |i: usize| -> Option<u32> {
            let bytes = b.get(i * 4..i * 4 + 4)?;
            <[u8; 4]>::try_from(bytes).ok().map(u32::from_le_bytes)
        };
        Some(GpuConfig {
            events_read: word(0)?,
            events_clear: word(1)?,
            num_scanouts: word(2)?,
            num_capsets: word(3)?,
            blob_alignment: word(4).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let cfg = GpuConfig {
            events_read: 1,
            events_clear: 0x0102_0304,
            num_scanouts: 2,
            num_capsets: 5,
            blob_alignment: 4096,
        };
        #[rustfmt::skip]
        let bytes = [
            1, 0, 0, 0,  4, 3, 2, 1,  2, 0, 0, 0,  5, 0, 0, 0,  0, 16, 0, 0,
        ];
        assert_eq!(cfg.to_bytes(), bytes);
        assert_eq!(GpuConfig::from_bytes(&bytes), Some(cfg));
        assert_eq!(GpuConfig::from_bytes(&bytes[..15]), None);
        let old = GpuConfig::from_bytes(&bytes[..16]).unwrap();
        assert_eq!(old.blob_alignment, 0, "a device of the older spec");
        let mut longer = bytes.to_vec();
        longer.push(9);
        assert_eq!(GpuConfig::from_bytes(&longer), Some(cfg));
    }
}
