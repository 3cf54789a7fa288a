//! Guest memory seen by the device: backing entries turned into host address ranges.

use std::fs::File;
use std::sync::Arc;

use vgpud_protocol::MemEntry;

use super::window::PAGE_SIZE;
use super::{invalid, out_of_memory, Failure};
use std::os::unix::fs::FileTypeExt;

use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

/// One contiguous piece of guest memory: where the guest sees it, and where this process has it
/// mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostRange {
    pub gpa: u64,
    pub addr: usize,
    pub len: usize,
}

/// The guest pages behind a resource. Holding `_mem` keeps every region mapped for as long as the
/// renderer may touch `ranges`, even if the frontend replaces the memory table meanwhile.
pub struct Backing {
    pub ranges: Vec<HostRange>,
    pub bytes: u64,
    mem: Arc<GuestMemoryMmap>,
}

impl Backing {
    /// Copies `buf.len()` bytes from byte `offset` of the backing; false if that runs past it.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> bool {
        let mut done = 0;
        self.chunks(offset, buf.len(), |gpa, n| {
            let ok = buf
                .get_mut(done..done + n)
                .is_some_and(|b| self.mem.read_slice(b, GuestAddress(gpa)).is_ok());
            done += n;
            ok
        })
    }

    /// Copies `data` to byte `offset` of the backing; false (having written a prefix, maybe) if
    /// that runs past it.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> bool {
        let mut done = 0;
        self.chunks(offset, data.len(), |gpa, n| {
            let ok = data
                .get(done..done + n)
                .is_some_and(|d| self.mem.write_slice(d, GuestAddress(gpa)).is_ok());
            done += n;
            ok
        })
    }

    /// Calls `f(guest address, length)` for each piece of `len` bytes from byte `offset` of the
    /// backing, in order, while it returns true; false if a call failed or the range runs past
    /// the backing.
    fn chunks(
        &self,
        mut offset: u64,
        mut len: usize,
        mut f: impl FnMut(u64, usize) -> bool,
    ) -> bool {
        for r in &self.ranges {
            if len == 0 {
                break;
            }
            let range = r.len as u64;
            if offset >= range {
                offset -= range;
                continue;
            }
            let n = len.min((range - offset) as usize);
            if !f(r.gpa + offset, n) {
                return false;
            }
            len -= n;
            offset = 0;
        }
        len == 0
    }
}

/// Resolves backing entries against guest memory. Every entry must lie inside one guest region;
/// zero-length entries are skipped.
pub fn resolve_backing(
    mem: &Arc<GuestMemoryMmap>,
    entries: &[MemEntry],
) -> Result<Backing, Failure> {
    let mut ranges = Vec::new();
    ranges
        .try_reserve_exact(entries.len())
        .map_err(|_| out_of_memory(format!("no room for {} entries", entries.len())))?;
    let mut bytes = 0u64;
    for entry in entries.iter().filter(|e| e.length > 0) {
        let slice = mem
            .get_slice(GuestAddress(entry.addr), entry.length as usize)
            .map_err(|_| {
                invalid(format!(
                    "entry {:#x}+{:#x} does not lie inside one region of guest memory",
                    entry.addr, entry.length
                ))
            })?;
        ranges.push(HostRange {
            gpa: entry.addr,
            addr: slice.ptr_guard_mut().as_ptr() as usize,
            len: slice.len(),
        });
        bytes = bytes
            .checked_add(u64::from(entry.length))
            .ok_or_else(|| invalid("the entries' lengths overflow"))?;
    }
    if ranges.is_empty() {
        return Err(invalid("no guest pages"));
    }
    Ok(Backing {
        ranges,
        bytes,
        mem: mem.clone(),
    })
}

/// Where guest pages live in a file the frontend can map: entries that are contiguous in guest
/// memory and lie in one file-backed region, from a page-aligned file offset (mmap's rule: the
/// frontend could not map anything else), give (that file, offset of the first byte).
pub fn file_range(mem: &GuestMemoryMmap, entries: &[MemEntry]) -> Option<(Arc<File>, u64)> {
    let first = entries.first()?;
    let mut next = first.addr;
    for e in entries {
        if e.addr != next {
            return None;
        }
        next = next.checked_add(u64::from(e.length))?;
    }
    let (region, start) = mem.to_region_addr(GuestAddress(first.addr))?;
    let len = next - first.addr;
    // The whole run must be inside this one region.
    if start.0.checked_add(len)? > region.len() {
        return None;
    }
    let file = region.file_offset()?;
    let offset = file.start().checked_add(start.0)?;
    offset
        .is_multiple_of(PAGE_SIZE)
        .then(|| (file.arc().clone(), offset))
}

/// Why a memory table cannot be used: a region that runs past the end of its file would fault
/// (SIGBUS) on the first access there, so it is refused up front (a file shrunk later is
/// src/memfault.rs's); one without a file is not guest RAM.
pub fn check_region(region: &GuestRegionMmap) -> Result<(), String> {
    let at = region.start_addr().0;
    let fo = region
        .file_offset()
        .ok_or_else(|| format!("region at {at:#x} has no file"))?;
    let meta = fo
        .file()
        .metadata()
        .map_err(|e| format!("region at {at:#x}: {e}"))?;
    let ft = meta.file_type();
    if !ft.is_file() || ft.is_block_device() {
        return Err(format!("region at {at:#x}: not a regular file"));
    }
    let end = fo.start().checked_add(region.len());
    if !matches!(end, Some(end) if end <= meta.len()) {
        return Err(format!(
            "region at {at:#x}: {} bytes from file offset {:#x} run past the file's {} bytes",
            region.len(),
            fo.start(),
            meta.len()
        ));
    }
    Ok(())
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
        mem.write_slice(b"ab", GuestAddress(0x2fff)).unwrap();
        mem.write_slice(b"cd", GuestAddress(0x100000)).unwrap();
        let mut buf = [0u8; 3];
        assert!(b.read_at(0x1fff, &mut buf), "reads across entries");
        assert_eq!(&buf, b"acd");
        assert!(!b.read_at(0x11fff, &mut buf), "runs past the end");
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
                resolve_backing(&mem, &[bad]).err().map(|f| f.code),
                Some(vgpud_protocol::ErrorCode::InvalidParameter)
            );
        }
        assert_eq!(
            resolve_backing(&mem, &[]).err().map(|f| f.code),
            Some(vgpud_protocol::ErrorCode::InvalidParameter)
        );
    }

    #[test]
    fn only_page_aligned_file_ranges_are_mappable() {
        use vm_memory::{FileOffset, GuestRegionMmap};
        // SAFETY: memfd_create takes a valid C string; the fd is checked and then owned by the
        // File alone.
        let fd = unsafe { libc::memfd_create(c"file-range".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: see above.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(0x20000).unwrap();
        let region = GuestRegionMmap::from_range(
            GuestAddress(0x10000),
            0x10000,
            Some(FileOffset::new(file, 0x8000)),
        )
        .unwrap();
        let mem = GuestMemoryMmap::from_regions(vec![region]).unwrap();
        let at = |addr| file_range(&mem, &[MemEntry { addr, length: 4096 }]).map(|(_, o)| o);
        assert_eq!(at(0x11000), Some(0x9000));
        assert_eq!(
            at(0x11800),
            None,
            "unaligned in the file: the frontend cannot map it"
        );
    }
}
