//! The VM's host-visible window (virtio-gpu shared memory region 1): which ranges of it hold a
//! mapped blob. Every request is checked here, with overflow-safe arithmetic, before the frontend
//! is asked to map anything.

use std::collections::BTreeMap;

use super::{invalid, out_of_memory, Failure};

/// Mappings start on a page boundary and cover whole pages.
pub const PAGE_SIZE: u64 = 4096;

#[derive(Debug)]
pub struct HostWindow {
    size: u64,
    /// Live mappings: offset -> (length, guest resource id).
    live: BTreeMap<u64, (u64, u32)>,
    /// Most live mappings the frontend can take (see `Device::set_mapping_limit`).
    limit: usize,
}

impl HostWindow {
    pub fn new(size: u64, limit: usize) -> Self {
        HostWindow {
            size,
            live: BTreeMap::new(),
            limit,
        }
    }

    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reserves `[offset, offset + len)` for `resource`, rounding `len` up to whole pages.
    /// Returns the reserved length.
    pub fn reserve(&mut self, offset: u64, len: u64, resource: u32) -> Result<u64, Failure> {
        if len == 0 || !offset.is_multiple_of(PAGE_SIZE) {
            return Err(invalid(format!(
                "window offset {offset:#x} is not page-aligned, or the blob is empty"
            )));
        }
        let past = || {
            invalid(format!(
                "{len:#x} bytes at {offset:#x} run past the {:#x}-byte window",
                self.size
            ))
        };
        let len = len.checked_next_multiple_of(PAGE_SIZE).ok_or_else(past)?;
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= self.size)
            .ok_or_else(past)?;
        // The nearest mapping at or below `offset` must end by it; the next one must start at or
        // after `end`.
        let overlap = |other: u32| {
            invalid(format!(
                "{len:#x} bytes at {offset:#x} overlap the mapping of resource {other}"
            ))
        };
        if let Some((&start, &(l, other))) = self.live.range(..=offset).next_back() {
            if start + l > offset {
                return Err(overlap(other));
            }
        }
        if let Some((&start, &(_, other))) = self.live.range(offset..).next() {
            if start < end {
                return Err(overlap(other));
            }
        }
        if self.live.len() >= self.limit {
            return Err(out_of_memory(format!(
                "{} blobs are mapped already, as many as the VMM can take",
                self.live.len()
            )));
        }
        self.live.insert(offset, (len, resource));
        Ok(len)
    }

    /// Frees the mapping at `offset`; returns its length.
    pub fn release(&mut self, offset: u64) -> Option<u64> {
        self.live.remove(&offset).map(|(len, _)| len)
    }

    /// Empties the window; returns what was mapped as (offset, length).
    pub fn clear(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.live)
            .into_iter()
            .map(|(offset, (len, _))| (offset, len))
            .collect()
    }

    /// Mappings in the window now.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_alignment_and_overflow() {
        let mut w = HostWindow::new(1 << 20, usize::MAX);
        let bad = Err(vgpud_protocol::ErrorCode::InvalidParameter);
        let mut reserve = |offset, len| w.reserve(offset, len, 1).map_err(|f| f.code);
        assert_eq!(reserve(0, 0), bad, "empty");
        assert_eq!(reserve(100, 4096), bad, "unaligned");
        assert_eq!(reserve(1 << 20, 4096), bad, "past the end");
        assert_eq!(reserve((1 << 20) - 4096, 4097), bad, "crosses the end");
        assert_eq!(reserve(4096, u64::MAX), bad, "size overflows");
        assert_eq!(
            reserve(u64::MAX - 4095, 4096),
            bad,
            "offset + size overflows"
        );
        assert_eq!(
            w.reserve((1 << 20) - 4096, 1, 1),
            Ok(4096),
            "rounded up to a page"
        );
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn overlaps_are_refused_and_neighbours_fit() {
        let mut w = HostWindow::new(1 << 20, usize::MAX);
        assert_eq!(w.reserve(0x4000, 0x2000, 1), Ok(0x2000));
        for (offset, len) in [
            (0x4000, 0x1000),
            (0x3000, 0x2000),
            (0x5000, 0x1000),
            (0, 0x10000),
        ] {
            assert!(w.reserve(offset, len, 2).is_err(), "{offset:#x}+{len:#x}");
        }
        assert_eq!(w.reserve(0x2000, 0x2000, 3), Ok(0x2000));
        assert_eq!(w.reserve(0x6000, 0x1000, 4), Ok(0x1000));
        assert_eq!(w.release(0x4000), Some(0x2000));
        assert_eq!(w.release(0x4000), None, "already released");
        assert_eq!(w.reserve(0x4000, 0x2000, 5), Ok(0x2000));
        assert_eq!(w.clear().len(), 3);
        assert!(w.is_empty());
    }
}
