//! Memory of the daemon's own that is handed to VMMs to map: one sealed memfd per buffer, so that
//! handing one over hands over that buffer and nothing else.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

/// A zero-filled memfd of `size` bytes that nobody can resize: a VMM that maps it can never
/// make a reader of it fault.
pub fn sealed_memfd(size: u64) -> std::io::Result<File> {
    // SAFETY: memfd_create reads a NUL-terminated name; the descriptor it returns is ours.
    let fd = unsafe {
        libc::memfd_create(
            c"vgpud-host-blob".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on a memfd we own; no memory is passed.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}
