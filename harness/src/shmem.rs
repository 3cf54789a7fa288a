//! The frontend's end of the backend request channel (SET_BACKEND_REQ_FD): config change
//! notifications and SHMEM_MAP / SHMEM_UNMAP, served by vhost's `FrontendReqHandler`.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{Frontend, HandlerResult, VhostUserFrontend, VhostUserFrontendReqHandler};
use vhost::VhostUserMemoryRegionInfo;

/// One live SHMEM_MAP, as the backend requested it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmemMapping {
    pub shmid: u8,
    pub shm_offset: u64,
    pub len: u64,
    pub fd_offset: u64,
    pub flags: u64,
}

struct Live {
    info: ShmemMapping,
    /// Address of our mmap of the backend's fd.
    ptr: usize,
}

#[derive(Default)]
struct State {
    maps: Vec<Live>,
    /// Shared memory region sizes from GET_SHMEM_CONFIG, if the backend offered SHMEM.
    region_sizes: Option<Vec<u64>>,
    map_count: u64,
    unmap_count: u64,
}

/// The frontend's view of the device's shared memory regions: each SHMEM_MAP mmaps the
/// passed fd here so tests can look at (and poke) what the backend exposed.
#[derive(Default)]
pub struct ShmemPeer {
    state: Mutex<State>,
    stall: crate::util::Stall,
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

impl ShmemPeer {
    pub fn mappings(&self) -> Vec<ShmemMapping> {
        self.state
            .lock()
            .unwrap()
            .maps
            .iter()
            .map(|m| m.info)
            .collect()
    }

    /// Copies `len` bytes at `shm_offset` of region `shmid`; None unless the range lies inside
    /// one live mapping.
    pub fn read(&self, shmid: u8, shm_offset: u64, len: usize) -> Option<Vec<u8>> {
        let st = self.state.lock().unwrap();
        let (m, off) = find(&st.maps, shmid, shm_offset, len as u64)?;
        let mut out = vec![0u8; len];
        // SAFETY: `find` checked that [off, off + len) lies inside the live mapping at `m.ptr`,
        // which stays mapped while the lock is held; `out` has room for `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping((m.ptr + off) as *const u8, out.as_mut_ptr(), len) };
        Some(out)
    }

    /// Writes into a live writable mapping; false if the range is not inside one.
    pub fn write(&self, shmid: u8, shm_offset: u64, data: &[u8]) -> bool {
        let st = self.state.lock().unwrap();
        let Some((m, off)) = find(&st.maps, shmid, shm_offset, data.len() as u64) else {
            return false;
        };
        if m.info.flags & VhostUserMMapFlags::WRITABLE.bits() == 0 {
            return false;
        }
        // SAFETY: as in `read`; the mapping was created with PROT_WRITE (WRITABLE flag).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), (m.ptr + off) as *mut u8, data.len())
        };
        true
    }

    /// SHMEM_MAP requests received (accepted or not).
    pub fn map_count(&self) -> u64 {
        self.state.lock().unwrap().map_count
    }

    /// SHMEM_UNMAP requests received (accepted or not).
    pub fn unmap_count(&self) -> u64 {
        self.state.lock().unwrap().unmap_count
    }

    /// Region sizes the backend reported in GET_SHMEM_CONFIG (None if not negotiated).
    pub fn region_sizes(&self) -> Option<Vec<u64>> {
        self.state.lock().unwrap().region_sizes.clone()
    }

    /// While on, SHMEM_MAP and SHMEM_UNMAP requests are left unanswered, as a wedged VMM would.
    pub fn stall(&self, on: bool) {
        self.stall.set(on);
    }

    pub(crate) fn set_region_sizes(&self, sizes: Vec<u64>) {
        self.state.lock().unwrap().region_sizes = Some(sizes);
    }

    /// Maps the backend's fd as asked; returns where it is mapped here.
    fn map(&self, req: &VhostUserMMap, fd: RawFd) -> io::Result<usize> {
        let mut st = self.state.lock().unwrap();
        st.map_count += 1;
        let info = ShmemMapping {
            shmid: req.shmid,
            shm_offset: req.shm_offset,
            len: req.len,
            fd_offset: req.fd_offset,
            flags: req.flags,
        };
        let end = info.shm_offset.checked_add(info.len).ok_or_else(einval)?;
        if info.len == 0 {
            return Err(einval());
        }
        if let Some(sizes) = &st.region_sizes {
            match sizes.get(info.shmid as usize) {
                Some(&size) if end <= size => {}
                _ => return Err(einval()),
            }
        }
        let overlaps = st.maps.iter().any(|m| {
            m.info.shmid == info.shmid
                && m.info.shm_offset < end
                && info.shm_offset < m.info.shm_offset + m.info.len
        });
        if overlaps {
            return Err(einval());
        }
        let writable = info.flags & VhostUserMMapFlags::WRITABLE.bits() != 0;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let len = usize::try_from(info.len).map_err(|_| einval())?;
        let off = libc::off_t::try_from(info.fd_offset).map_err(|_| einval())?;
        // SAFETY: a fresh shared mapping of the backend's fd at an address chosen by the
        // kernel; no existing memory is affected. The result is checked below.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, off) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        st.maps.push(Live {
            info,
            ptr: ptr as usize,
        });
        Ok(ptr as usize)
    }

    /// Where the mapping `req` names is mapped here, if it is live.
    fn live(&self, req: &VhostUserMMap) -> Option<usize> {
        let st = self.state.lock().unwrap();
        st.maps
            .iter()
            .find(|m| {
                m.info.shmid == req.shmid
                    && m.info.shm_offset == req.shm_offset
                    && m.info.len == req.len
            })
            .map(|m| m.ptr)
    }

    fn unmap(&self, req: &VhostUserMMap) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        st.unmap_count += 1;
        let i = st
            .maps
            .iter()
            .position(|m| {
                m.info.shmid == req.shmid
                    && m.info.shm_offset == req.shm_offset
                    && m.info.len == req.len
            })
            .ok_or_else(einval)?;
        let m = st.maps.swap_remove(i);
        unmap(&m);
        Ok(())
    }
}

fn find(maps: &[Live], shmid: u8, off: u64, len: u64) -> Option<(&Live, usize)> {
    let end = off.checked_add(len)?;
    maps.iter()
        .find(|m| {
            m.info.shmid == shmid
                && m.info.shm_offset <= off
                && end <= m.info.shm_offset + m.info.len
        })
        .map(|m| (m, (off - m.info.shm_offset) as usize))
}

fn unmap(m: &Live) {
    // SAFETY: `m.ptr`/`m.info.len` describe a mapping created by `ShmemPeer::map` that is
    // removed from the list at the same time, so nothing can use it afterwards.
    unsafe { libc::munmap(m.ptr as *mut libc::c_void, m.info.len as usize) };
}

impl Drop for ShmemPeer {
    fn drop(&mut self) {
        for m in &self.state.get_mut().unwrap().maps {
            unmap(m);
        }
    }
}

/// QEMU's way with window mappings (VmConfig::window_gpa): each one is also a RAM region of the
/// VM at the window's guest address, so it is added to the backend's memory table while the
/// SHMEM_MAP is handled (ADD_MEM_REG) and removed while the SHMEM_UNMAP is (REM_MEM_REG). As in
/// QEMU, a change that would take the table past the backend's slots is not sent and counts as
/// an error (QEMU logs "vhost_set_mem_table failed"), and the SHMEM_MAP is still answered.
pub(crate) struct TableModel {
    fe: Mutex<Frontend>,
    window_gpa: u64,
    max_slots: u64,
    /// Regions in the backend's table now, RAM included.
    regions: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl TableModel {
    pub(crate) fn new(fe: Frontend, window_gpa: u64, max_slots: u64, ram: u64) -> TableModel {
        TableModel {
            fe: Mutex::new(fe),
            window_gpa,
            max_slots,
            regions: AtomicU64::new(ram),
            errors: Mutex::new(Vec::new()),
        }
    }

    fn info(&self, req: &VhostUserMMap, fd: RawFd, ptr: usize) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: self.window_gpa + req.shm_offset,
            memory_size: req.len,
            userspace_addr: ptr as u64,
            mmap_offset: req.fd_offset,
            mmap_handle: fd,
        }
    }

    fn added(&self, req: &VhostUserMMap, fd: RawFd, ptr: usize) {
        if self.regions.load(Ordering::SeqCst) >= self.max_slots {
            self.error(format!(
                "no free memory slot for a mapping at {:#x} ({} of {} used)",
                { req.shm_offset },
                self.regions.load(Ordering::SeqCst),
                self.max_slots
            ));
            return;
        }
        let info = self.info(req, fd, ptr);
        match self.fe.lock().unwrap().add_mem_region(&info) {
            Ok(_) => {
                self.regions.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => self.error(format!("ADD_MEM_REG at {:#x}: {e}", { req.shm_offset })),
        }
    }

    fn removed(&self, req: &VhostUserMMap, ptr: usize) {
        let info = self.info(req, -1, ptr);
        match self.fe.lock().unwrap().remove_mem_region(&info) {
            Ok(()) => {
                self.regions.fetch_sub(1, Ordering::SeqCst);
            }
            Err(e) => self.error(format!("REM_MEM_REG at {:#x}: {e}", { req.shm_offset })),
        }
    }

    fn error(&self, e: String) {
        self.errors.lock().unwrap().push(e);
    }

    pub(crate) fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    pub(crate) fn regions(&self) -> u64 {
        self.regions.load(Ordering::SeqCst)
    }
}

/// Handler plugged into vhost's `FrontendReqHandler`.
pub(crate) struct BackendChannel {
    pub shmem: Arc<ShmemPeer>,
    pub config_changes: AtomicU64,
    pub table: Option<TableModel>,
    /// False while the device is stopped (`Vm::stop_queues`).
    pub active: AtomicBool,
    /// Requests refused, or sent while the device was stopped.
    pub refusals: Mutex<Vec<String>>,
}

impl BackendChannel {
    fn check_active(&self, what: &str) {
        if !self.active.load(Ordering::SeqCst) {
            self.refuse(format!("{what} while the device is stopped"));
        }
    }

    fn refuse(&self, why: String) {
        self.refusals.lock().unwrap().push(why);
    }
}

impl VhostUserFrontendReqHandler for BackendChannel {
    fn handle_config_change(&self) -> HandlerResult<u64> {
        self.check_active("CONFIG_CHANGE_MSG");
        self.config_changes.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }

    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> HandlerResult<u64> {
        self.shmem.stall.wait_while_on();
        self.check_active("SHMEM_MAP");
        let ptr = self
            .shmem
            .map(req, fd.as_raw_fd())
            .inspect_err(|e| self.refuse(format!("SHMEM_MAP: {e}")))?;
        if let Some(table) = &self.table {
            table.added(req, fd.as_raw_fd(), ptr);
        }
        Ok(0)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
        self.shmem.stall.wait_while_on();
        self.check_active("SHMEM_UNMAP");
        if let Some(table) = &self.table {
            if let Some(m) = self.shmem.live(req) {
                table.removed(req, m);
            }
        }
        self.shmem
            .unmap(req)
            .inspect_err(|e| self.refuse(format!("SHMEM_UNMAP: {e}")))
            .map(|_| 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::os::fd::FromRawFd;

    fn memfd(size: u64) -> std::fs::File {
        let name: &CStr = c"shmem-test";
        // SAFETY: valid C string; the fd is checked and then owned by the File.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fd is fresh and owned by nobody else.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        f.set_len(size).unwrap();
        f
    }

    fn req(shm_offset: u64, len: u64, fd_offset: u64, flags: u64) -> VhostUserMMap {
        VhostUserMMap {
            shmid: 0,
            padding: [0; 7],
            fd_offset,
            shm_offset,
            len,
            flags,
        }
    }

    #[test]
    fn map_read_write_unmap() {
        let peer = ShmemPeer::default();
        let f = memfd(0x4000);
        peer.map(&req(0x1000, 0x2000, 0x1000, 1), f.as_raw_fd())
            .unwrap();
        assert!(peer.write(0, 0x1800, b"abc"));
        assert_eq!(peer.read(0, 0x1800, 3).unwrap(), b"abc");
        assert!(peer.read(0, 0x2fff, 2).is_none());
        assert!(peer.read(1, 0x1800, 1).is_none());
        // Overlap is refused.
        assert!(peer.map(&req(0x2000, 0x1000, 0, 0), f.as_raw_fd()).is_err());
        assert!(peer.unmap(&req(0x1000, 0x1000, 0, 0)).is_err());
        peer.unmap(&req(0x1000, 0x2000, 0, 0)).unwrap();
        assert!(peer.mappings().is_empty());
        assert_eq!((peer.map_count(), peer.unmap_count()), (2, 2));
    }
}
