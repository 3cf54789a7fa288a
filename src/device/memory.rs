//! Guest memory seen by the device: backing entries turned into host address ranges.

use std::sync::Arc;

use vgpud_protocol::{ErrorCode, MemEntry};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// One contiguous piece of host memory that mirrors guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostRange {
    pub addr: usize,
    pub len: usize,
}

/// The guest pages behind a resource. Holding `_mem` keeps every region mapped for as long as the
/// renderer may touch `ranges`, even if the frontend replaces the memory table meanwhile.
pub struct Backing {
    pub ranges: Vec<HostRange>,
    pub bytes: u64,
    _mem: Arc<GuestMemoryMmap>,
}

/// Resolves backing entries against guest memory. Every entry must lie inside one guest region;
/// zero-length entries are skipped.
pub fn resolve_backing(
    mem: &Arc<GuestMemoryMmap>,
    entries: &[MemEntry],
) -> Result<Backing, ErrorCode> {
    let mut ranges = Vec::new();
    ranges
        .try_reserve_exact(entries.len())
        .map_err(|_| ErrorCode::OutOfMemory)?;
    let mut bytes = 0u64;
    for entry in entries.iter().filter(|e| e.length > 0) {
        let slice = mem
            .get_slice(GuestAddress(entry.addr), entry.length as usize)
            .map_err(|_| ErrorCode::InvalidParameter)?;
        ranges.push(HostRange {
            addr: slice.ptr_guard_mut().as_ptr() as usize,
            len: slice.len(),
        });
        bytes = bytes
            .checked_add(u64::from(entry.length))
            .ok_or(ErrorCode::InvalidParameter)?;
    }
    if ranges.is_empty() {
        return Err(ErrorCode::InvalidParameter);
    }
    Ok(Backing {
        ranges,
        bytes,
        _mem: mem.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_regions() -> Arc<GuestMemoryMmap> {
        Arc::new(
            GuestMemoryMmap::from_ranges(&[
                (GuestAddress(0), 0x10000),
                (GuestAddress(0x100000), 0x10000),
            ])
            .unwrap(),
        )
    }

    #[test]
    fn entries_in_two_regions_resolve() {
        let mem = two_regions();
        let b = resolve_backing(
            &mem,
            &[
                MemEntry {
                    addr: 0x1000,
                    length: 0x2000,
                },
                MemEntry {
                    addr: 0x100000,
                    length: 0x10000,
                },
            ],
        )
        .unwrap();
        assert_eq!(b.ranges.len(), 2);
        assert_eq!(b.bytes, 0x12000);
        assert_eq!(b.ranges[1].len, 0x10000);
    }

    #[test]
    fn entry_outside_or_across_regions_is_rejected() {
        let mem = two_regions();
        for bad in [
            MemEntry {
                addr: 0x20000,
                length: 16,
            },
            MemEntry {
                addr: 0xf000,
                length: 0x2000,
            },
            MemEntry {
                addr: u64::MAX - 4,
                length: 16,
            },
        ] {
            assert_eq!(
                resolve_backing(&mem, &[bad]).err(),
                Some(ErrorCode::InvalidParameter)
            );
        }
        assert_eq!(
            resolve_backing(&mem, &[]).err(),
            Some(ErrorCode::InvalidParameter)
        );
    }
}
