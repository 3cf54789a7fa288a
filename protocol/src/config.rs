//! The device configuration space.

/// events_read, events_clear, num_scanouts, num_capsets; all u32 little-endian.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuConfig {
    pub events_read: u32,
    pub events_clear: u32,
    pub num_scanouts: u32,
    pub num_capsets: u32,
}

pub const CONFIG_SIZE: usize = 16;

impl GpuConfig {
    pub fn to_bytes(&self) -> [u8; CONFIG_SIZE] {
        let fields = [
            self.events_read,
            self.events_clear,
            self.num_scanouts,
            self.num_capsets,
        ];
        let mut out = [0u8; CONFIG_SIZE];
        for (chunk, v) in out.chunks_exact_mut(4).zip(fields) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Parses the first CONFIG_SIZE bytes; `None` if `b` is shorter.
    pub fn from_bytes(b: &[u8]) -> Option<GpuConfig> {
        let mut words = b
            .get(..CONFIG_SIZE)?
            .chunks_exact(4)
            .map(|c| <[u8; 4]>::try_from(c).ok().map(u32::from_le_bytes));
        Some(GpuConfig {
            events_read: words.next()??,
            events_clear: words.next()??,
            num_scanouts: words.next()??,
            num_capsets: words.next()??,
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
        };
        #[rustfmt::skip]
        let bytes = [
            1, 0, 0, 0,  4, 3, 2, 1,  2, 0, 0, 0,  5, 0, 0, 0,
        ];
        assert_eq!(cfg.to_bytes(), bytes);
        assert_eq!(GpuConfig::from_bytes(&bytes), Some(cfg));
        assert_eq!(GpuConfig::from_bytes(&bytes[..15]), None);
        let mut longer = bytes.to_vec();
        longer.push(9);
        assert_eq!(GpuConfig::from_bytes(&longer), Some(cfg));
    }
}
