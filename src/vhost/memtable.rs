//! The guest memory the queues use, made from the table the VMM sends.
//!
//! QEMU makes each window mapping (SHMEM_MAP) a RAM region of the VM backed by the file the
//! daemon handed over, and so sends it back as guest memory (one ADD_MEM_REG per mapping with
//! memory slots, or in a whole table without). Those regions are left out of the guest memory the
//! daemon serves requests from, because through them a guest could make the daemon read or write
//! a buffer by guest address (as a resource's backing, say) after that buffer was revoked or
//! moved out: until the VMM removes the region, or forever if it never does. They are also
//! replaced, in the vhost library's own table, by an anonymous placeholder of the same place and
//! size: the library then holds no mapping of the buffer either, and still finds a region there
//! when the VMM removes it (REM_MEM_REG must match a region exactly).
//!
//! A region is a window mapping when it is exactly a range this VM's window maps now: the same
//! file (device and inode), file offset and length (`WindowFiles`, kept from before each
//! SHMEM_MAP is sent until its SHMEM_UNMAP was answered; QEMU adds the region while it handles
//! the SHMEM_MAP). The range matters, not only the file: a mapped guest blob is a range of the
//! VM's own RAM file. The registry keeps each file open so that its inode cannot be reused by
//! another file meanwhile. A VMM that adds a buffer's file as RAM after the unmap was answered
//! still has the descriptor it was handed, so it could show the buffer to its guest anyway.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};

use crate::sync::lock;

/// Memory regions a vhost-user-backend 0.24 backend takes (its GET_MAX_MEM_SLOTS answer, which
/// the crate does not let a backend change). QEMU uses at most this many for RAM and window
/// mappings together, and fails every table change past it.
pub const MAX_MEM_SLOTS: usize = 509;

/// A file by identity: device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileId(u64, u64);

impl FileId {
    fn of(file: &File) -> std::io::Result<FileId> {
        let meta = file.metadata()?;
        Ok(FileId(meta.dev(), meta.ino()))
    }
}

/// A file range: the file, where the range starts in it and its length.
type Range = (FileId, u64, u64);

/// The file ranges behind this VM's live window mappings, by window offset.
#[derive(Default)]
pub struct WindowFiles(Mutex<HashMap<u64, (Range, Arc<File>)>>);

impl WindowFiles {
    /// `len` bytes of `file` from `file_offset` are about to be mapped at `shm_offset`.
    pub fn mapping(
        &self,
        shm_offset: u64,
        file: &Arc<File>,
        file_offset: u64,
        len: u64,
    ) -> std::io::Result<()> {
        let range = (FileId::of(file)?, file_offset, len);
        lock(&self.0).insert(shm_offset, (range, file.clone()));
        Ok(())
    }

    /// The mapping at `shm_offset` is gone (or was refused).
    pub fn unmapped(&self, shm_offset: u64) {
        lock(&self.0).remove(&shm_offset);
    }

    fn ranges(&self) -> HashSet<Range> {
        lock(&self.0).values().map(|(range, _)| *range).collect()
    }
}

/// A table from the VMM, split.
pub struct Split {
    /// The guest's RAM: what the queues may read and write.
    pub guest: GuestMemoryMmap,
    /// The library's table with window mappings replaced by placeholders, when there were any
    /// left to replace.
    pub library: Option<GuestMemoryMmap>,
}

/// Leaves the window mappings out of `table`. A region without a file is a placeholder made
/// here before (the library maps every region it is sent from a file).
pub fn split(table: &GuestMemoryMmap, window: &WindowFiles) -> Result<Split, String> {
    // The library takes every ADD_MEM_REG (each holds a descriptor and a mapping here) and
    // answers GET_MAX_MEM_SLOTS with this number: a VMM that goes past it is refused.
    if table.num_regions() > MAX_MEM_SLOTS {
        return Err(format!(
            "{} memory regions, more than the {MAX_MEM_SLOTS} slots offered",
            table.num_regions()
        ));
    }
    let ranges = window.ranges();
    let mut guest = Vec::new();
    let mut library = Vec::new();
    let mut replaced = false;
    for region in table.iter() {
        let same = || GuestRegionMmap::with_arc(region.get_mmap(), region.start_addr());
        let is_window = match region.file_offset() {
            None => true,
            Some(fo) => FileId::of(fo.file())
                .is_ok_and(|id| ranges.contains(&(id, fo.start(), region.len()))),
        };
        if !is_window {
            guest.push(Arc::new(same().ok_or("a region wraps around")?));
            library.push(Arc::new(same().ok_or("a region wraps around")?));
            continue;
        }
        if region.file_offset().is_some() {
            replaced = true;
            let len = usize::try_from(region.len()).map_err(|_| "a region is too large")?;
            let placeholder = GuestRegionMmap::from_range(region.start_addr(), len, None)
                .map_err(|e| format!("placeholder at {:#x}: {e}", region.start_addr().0))?;
            library.push(Arc::new(placeholder));
        } else {
            library.push(Arc::new(same().ok_or("a region wraps around")?));
        }
    }
    let guest = collection(guest)?;
    let library = if replaced {
        Some(collection(library)?)
    } else {
        None
    };
    Ok(Split { guest, library })
}

/// Whether two tables are the same mappings at the same places.
pub fn same_regions(a: &GuestMemoryMmap, b: &GuestMemoryMmap) -> bool {
    a.num_regions() == b.num_regions()
        && a.iter().zip(b.iter()).all(|(x, y)| {
            x.start_addr() == y.start_addr() && Arc::ptr_eq(&x.get_mmap(), &y.get_mmap())
        })
}

fn collection(regions: Vec<Arc<GuestRegionMmap>>) -> Result<GuestMemoryMmap, String> {
    if regions.is_empty() {
        return Ok(GuestMemoryMmap::new());
    }
    GuestMemoryMmap::from_arc_regions(regions).map_err(|e| format!("memory table: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{FileOffset, GuestAddress};

    fn memfd(size: u64) -> File {
        crate::hostmem::sealed_memfd(size).unwrap()
    }

    fn region(gpa: u64, file: &File, offset: u64, len: usize) -> Arc<GuestRegionMmap> {
        let fo = FileOffset::new(file.try_clone().unwrap(), offset);
        Arc::new(GuestRegionMmap::from_range(GuestAddress(gpa), len, Some(fo)).unwrap())
    }

    #[test]
    fn window_mappings_leave_the_guests_memory_and_the_librarys_table_keeps_a_placeholder() {
        let ram = Arc::new(memfd(1 << 20));
        let blob = Arc::new(memfd(8192));
        let window = WindowFiles::default();
        window.mapping(0x2000, &blob, 0, 8192).unwrap();
        // A guest blob: a range of the RAM file. The RAM region itself stays guest memory.
        window.mapping(0x8000, &ram, 0x1000, 4096).unwrap();
        let table = GuestMemoryMmap::from_arc_regions(vec![
            region(0, &ram, 0, 1 << 20),
            region(0x8000_0000, &blob, 0, 8192),
            region(0x8000_8000, &ram, 0x1000, 4096),
        ])
        .unwrap();
        let s = split(&table, &window).unwrap();
        assert_eq!(s.guest.num_regions(), 1, "only the RAM is guest memory");
        let library = s.library.expect("the mapping is replaced");
        assert_eq!(library.num_regions(), 3);
        let placeholder = library.find_region(GuestAddress(0x8000_0000)).unwrap();
        assert!(placeholder.file_offset().is_none());
        assert_eq!(placeholder.len(), 8192);
        // The next table still has the placeholder: nothing to replace, still not guest memory.
        let again = split(&library, &window).unwrap();
        assert!(again.library.is_none());
        assert!(
            same_regions(&again.guest, &s.guest),
            "the same RAM, not a new table"
        );
        // Once unmapped, the same file is guest memory like any other (a VMM's own choice).
        window.unmapped(0x2000);
        let after = split(&table, &window).unwrap();
        assert_eq!(
            after.guest.num_regions(),
            2,
            "the guest blob's range is still left out"
        );
    }

    #[test]
    fn a_table_past_the_slots_offered_is_refused() {
        let file = memfd(4096 * (MAX_MEM_SLOTS as u64 + 1));
        let regions = |n: u64| -> Vec<_> {
            (0..n)
                .map(|i| region(i * 0x10_0000, &file, i * 4096, 4096))
                .collect()
        };
        let window = WindowFiles::default();
        let full = GuestMemoryMmap::from_arc_regions(regions(MAX_MEM_SLOTS as u64)).unwrap();
        assert!(split(&full, &window).is_ok());
        let over = GuestMemoryMmap::from_arc_regions(regions(MAX_MEM_SLOTS as u64 + 1)).unwrap();
        assert!(split(&over, &window).is_err());
    }
}
