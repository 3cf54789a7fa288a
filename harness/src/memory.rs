//! Guest memory: memfd-backed regions mapped here and shared with the backend, plus a bump
//! allocator over them.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::sync::atomic::Ordering;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    AtomicAccess, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion, GuestRegionMmap,
};

pub(crate) struct GuestMem {
    mem: GuestMemoryMmap,
    /// Regions in the order the user gave them: (gpa, size).
    regions: Vec<(u64, u64)>,
    /// Next free guest address in each region.
    next: Vec<u64>,
}

fn memfd(name: &CStr, size: u64) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string; memfd_create has no other inputs.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

impl GuestMem {
    pub fn new(regions: &[(u64, u64)]) -> io::Result<GuestMem> {
        if regions.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no memory regions",
            ));
        }
        let mut mmaps = Vec::with_capacity(regions.len());
        for &(gpa, size) in regions {
            let file = memfd(c"vgpud-harness-guest", size)?;
            let region = GuestRegionMmap::from_range(
                GuestAddress(gpa),
                size as usize,
                Some(FileOffset::new(file, 0)),
            )
            .map_err(|e| io::Error::other(format!("mapping guest region {gpa:#x}: {e}")))?;
            mmaps.push(region);
        }
        mmaps.sort_by_key(|r| r.start_addr());
        let mem = GuestMemoryMmap::from_regions(mmaps)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("regions: {e}")))?;
        Ok(GuestMem {
            mem,
            regions: regions.to_vec(),
            next: regions.iter().map(|r| r.0).collect(),
        })
    }

    /// What SET_MEM_TABLE needs; the fds stay owned by `self`.
    pub fn region_infos(&self) -> io::Result<Vec<VhostUserMemoryRegionInfo>> {
        self.mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r)
                    .map_err(|e| io::Error::other(format!("region info: {e}")))
            })
            .collect()
    }

    /// Hostile VMM: shrinks the file behind region `i` to `len` bytes, as a VMM whose guest
    /// memory is an unsealed file can at any time. This process must not touch the region past
    /// `len` afterwards (it would fault here too).
    pub fn shrink_region(&self, i: usize, len: u64) -> io::Result<()> {
        let gpa = self.regions.get(i).map(|r| r.0);
        let file = gpa
            .and_then(|gpa| self.mem.find_region(GuestAddress(gpa)))
            .and_then(|r| r.file_offset())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such region"))?;
        file.file().set_len(len)
    }

    /// Bytes not yet allocated in region `i`.
    pub fn free_in(&self, i: usize) -> u64 {
        let (start, len) = self.regions[i];
        start + len - self.next[i]
    }

    pub fn num_regions(&self) -> usize {
        self.regions.len()
    }

    /// Bump-allocates `size` bytes in region `i`; None if it does not fit.
    pub fn try_alloc_in(&mut self, i: usize, size: u64, align: u64) -> Option<u64> {
        let align = align.max(1);
        assert!(
            align.is_power_of_two(),
            "alignment {align} is not a power of two"
        );
        let (start, len) = self.regions[i];
        let at = self.next[i].checked_add(align - 1)? & !(align - 1);
        let end = at.checked_add(size)?;
        if end > start + len {
            return None;
        }
        self.next[i] = end;
        Some(at)
    }

    /// Userspace address of a guest address in this process (what SET_VRING_ADDR carries).
    pub fn host_addr(&self, gpa: u64) -> u64 {
        let region = self
            .mem
            .find_region(GuestAddress(gpa))
            .expect("gpa not in guest memory");
        let offset = gpa - region.start_addr().0;
        region.as_ptr() as u64 + offset
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .unwrap_or_else(|e| panic!("write_mem {gpa:#x}+{}: {e}", data.len()));
    }

    pub fn read_into(&self, gpa: u64, buf: &mut [u8]) {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .unwrap_or_else(|e| panic!("read_mem {gpa:#x}+{}: {e}", buf.len()));
    }

    pub fn write_u16(&self, gpa: u64, v: u16) {
        self.mem
            .write_obj(v.to_le(), GuestAddress(gpa))
            .expect("ring write");
    }

    pub fn read_u32(&self, gpa: u64) -> u32 {
        u32::from_le(self.mem.read_obj(GuestAddress(gpa)).expect("ring read"))
    }

    pub fn store<T: AtomicAccess>(&self, v: T, gpa: u64, order: Ordering) {
        self.mem
            .store(v, GuestAddress(gpa), order)
            .expect("ring store");
    }

    pub fn load<T: AtomicAccess>(&self, gpa: u64, order: Ordering) -> T {
        self.mem.load(GuestAddress(gpa), order).expect("ring load")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_allocation_respects_alignment_and_bounds() {
        let mut m = GuestMem::new(&[(0x1000, 0x4000), (0x10_0000, 0x2000)]).unwrap();
        assert_eq!(m.try_alloc_in(0, 3, 1), Some(0x1000));
        assert_eq!(m.try_alloc_in(0, 16, 16), Some(0x1010));
        assert_eq!(m.try_alloc_in(1, 0x2000, 4096), Some(0x10_0000));
        assert_eq!(m.try_alloc_in(1, 1, 1), None);
        m.write(0x10_0000, b"hello");
        let mut buf = [0u8; 5];
        m.read_into(0x10_0000, &mut buf);
        assert_eq!(&buf, b"hello");
        assert_eq!(m.region_infos().unwrap().len(), 2);
    }
}
