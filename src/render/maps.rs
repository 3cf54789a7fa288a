//! Where in its file a mapping of this process starts.
//!
//! A renderer maps a blob and exports a descriptor for it, but does not say at which offset of
//! that descriptor the blob begins (lavapipe's memory fds, for one, start with a header page). The
//! kernel knows: /proc/self/maps lists each mapping's file offset and inode. The inode is checked
//! against the exported descriptor, so a wrong file can never be handed out.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;

/// The offset in `file` of the byte mapped at `addr`, given that `len` bytes are mapped from
/// there on.
pub fn file_offset_of(addr: usize, len: u64, file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let entry = maps
        .lines()
        .filter_map(parse_line)
        .find(|m| m.start <= addr && addr < m.end)
        .ok_or_else(|| io::Error::other(format!("{addr:#x} is not mapped")))?;
    if entry.inode != meta.ino() || entry.dev != (major(meta.dev()), minor(meta.dev())) {
        return Err(io::Error::other("the mapping is not of the exported file"));
    }
    let offset = entry.offset + (addr - entry.start) as u64;
    let fits = offset
        .checked_add(len)
        .is_some_and(|end| end <= meta.size());
    if !fits {
        return Err(io::Error::other("the blob runs past the end of its file"));
    }
    Ok(offset)
}

struct MapsEntry {
    start: usize,
    end: usize,
    offset: u64,
    dev: (u64, u64),
    inode: u64,
}

/// One line: `start-end perms offset major:minor inode [path]`, numbers in hex but the inode.
fn parse_line(line: &str) -> Option<MapsEntry> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let _perms = fields.next()?;
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode = fields.next()?.parse().ok()?;
    Some(MapsEntry {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        offset,
        dev: (
            u64::from_str_radix(major, 16).ok()?,
            u64::from_str_radix(minor, 16).ok()?,
        ),
        inode,
    })
}

fn major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

fn minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd};

    fn memfd(size: u64) -> File {
        // SAFETY: a valid C string; the result is checked, then owned by the File.
        let fd = unsafe { libc::memfd_create(c"maps-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` is fresh and owned by nobody else.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(size).unwrap();
        f
    }

    #[test]
    fn finds_the_offset_of_a_mapping_past_a_header() {
        let f = memfd(4 * 4096);
        // SAFETY: a fresh shared mapping chosen by the kernel; unmapped below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * 4096,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                4096,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let addr = ptr as usize;
        assert_eq!(file_offset_of(addr, 2 * 4096, &f).unwrap(), 4096);
        assert_eq!(file_offset_of(addr + 4096, 4096, &f).unwrap(), 8192);
        assert!(file_offset_of(addr, 4 * 4096, &f).is_err(), "past the end");
        let other = memfd(4 * 4096);
        assert!(file_offset_of(addr, 4096, &other).is_err(), "another file");
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(ptr, 2 * 4096) };
        assert!(file_offset_of(addr, 4096, &f).is_err(), "unmapped");
    }
}
