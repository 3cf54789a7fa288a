//! The broker<->worker transport (protocol::worker): framed messages with descriptors over a
//! UNIX stream socket, and the shared-memory mailbox bulk bytes travel through.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use vgpud_protocol::worker::{self, MAILBOX_BYTES};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Most descriptors one message carries (a memory table's regions).
pub const MAX_FDS: usize = 32;

pub struct Channel {
    sock: UnixStream,
}

impl Channel {
    pub fn new(sock: UnixStream) -> Self {
        Channel { sock }
    }

    /// Bounds every later receive; None waits for ever.
    pub fn set_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(limit)
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    pub fn shutdown(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }

    /// Sends one message, with `fds` alongside its first byte.
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[RawFd]) -> io::Result<()> {
        let frame = worker::encode(msg).map_err(io::Error::other)?;
        let sent = if fds.is_empty() {
            0
        } else {
            self.sock
                .send_with_fds(&[&frame[..]], fds)
                .map_err(io::Error::from)?
        };
        (&self.sock).write_all(frame.get(sent..).unwrap_or_default())
    }

    /// Receives one message and the descriptors that came with it.
    pub fn recv<T: DeserializeOwned>(&self) -> io::Result<(T, Vec<File>)> {
        let mut header = [0u8; 4];
        let mut fds = [-1; MAX_FDS];
        let mut iov = [libc::iovec {
            iov_base: header.as_mut_ptr().cast(),
            iov_len: header.len(),
        }];
        // SAFETY: the iovec points at `header`, which is ours to write for its whole length.
        let (got, nfds) =
            unsafe { self.sock.recv_with_fds(&mut iov, &mut fds) }.map_err(io::Error::from)?;
        // SAFETY: the first `nfds` entries are descriptors we were just given and own.
        let files: Vec<File> = fds
            .iter()
            .take(nfds)
            .map(|&fd| unsafe { File::from_raw_fd(fd) })
            .collect();
        if got == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed"));
        }
        (&self.sock).read_exact(header.get_mut(got..).unwrap_or_default())?;
        let len = worker::frame_len(header).map_err(io::Error::other)?;
        let mut body = vec![0u8; len];
        (&self.sock).read_exact(&mut body)?;
        let msg = worker::decode(&body).map_err(io::Error::other)?;
        Ok((msg, files))
    }
}

/// The mailbox: `MAILBOX_BYTES` of a memfd both processes map. Only one request is in flight
/// per worker, so one mailbox serves both directions.
pub struct Mailbox {
    file: File,
    ptr: NonNull<u8>,
}

// SAFETY: the mapping is plain shared memory; `Mailbox` hands out copies only.
unsafe impl Send for Mailbox {}
// SAFETY: as above; concurrent copies race only with the other process, which the protocol
// rules out (the one request in flight owns the mailbox).
unsafe impl Sync for Mailbox {}

impl Mailbox {
    /// A fresh, zeroed mailbox, sealed at its size: a worker (trusted no more than a guest)
    /// that could shrink it would make the broker's next copy fault (SIGBUS, every VM).
    pub fn create() -> io::Result<Mailbox> {
        // SAFETY: a valid C string; the result is checked, then owned by the File.
        let fd = unsafe {
            libc::memfd_create(
                c"vgpud-mailbox".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(MAILBOX_BYTES)?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS on a memfd we own; no memory is passed.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map(file)
    }

    /// Maps a mailbox another process created (and must not shrink: it is ours too).
    pub fn map(file: File) -> io::Result<Mailbox> {
        if file.metadata()?.len() < MAILBOX_BYTES {
            return Err(io::Error::other("mailbox too small"));
        }
        // SAFETY: a fresh shared mapping of the file, at an address the kernel picks.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAILBOX_BYTES as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("null mapping"))?;
        Ok(Mailbox { file, ptr })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    fn slice(&self, len: u64) -> io::Result<vm_memory::VolatileSlice<'_>> {
        if len > MAILBOX_BYTES {
            return Err(io::Error::other(format!(
                "{len} bytes do not fit the {MAILBOX_BYTES}-byte mailbox"
            )));
        }
        // SAFETY: the mapping is MAILBOX_BYTES long and lives as long as `self`; the other
        // process may write it, hence volatile access.
        Ok(unsafe { vm_memory::VolatileSlice::new(self.ptr.as_ptr(), len as usize) })
    }

    pub fn write(&self, data: &[u8]) -> io::Result<u64> {
        self.slice(data.len() as u64)?.copy_from(data);
        Ok(data.len() as u64)
    }

    /// The first `len` bytes, copied out (the length comes from the other process: checked).
    pub fn read(&self, len: u64) -> io::Result<Vec<u8>> {
        let src = self.slice(len)?;
        let mut out = vec![0u8; src.len()];
        src.copy_to(&mut out[..]);
        Ok(out)
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; nothing refers to it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), MAILBOX_BYTES as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgpud_protocol::worker::{Reply, Request};

    #[test]
    fn messages_and_descriptors_cross() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Channel::new(a), Channel::new(b));
        let mailbox = Mailbox::create().unwrap();
        a.send(&Request::Capsets, &[mailbox.file().as_raw_fd()])
            .unwrap();
        let (msg, files): (Request, _) = b.recv().unwrap();
        assert_eq!(msg, Request::Capsets);
        let theirs = Mailbox::map(files.into_iter().next().unwrap()).unwrap();
        mailbox.write(b"hello").unwrap();
        assert_eq!(theirs.read(5).unwrap(), b"hello");
        assert!(theirs.read(MAILBOX_BYTES + 1).is_err());
        b.send(&Reply::Data { len: 5 }, &[]).unwrap();
        assert_eq!(a.recv::<Reply>().unwrap().0, Reply::Data { len: 5 });
    }

    #[test]
    fn the_worker_cannot_resize_the_mailbox() {
        let mailbox = Mailbox::create().unwrap();
        // What a worker gets: the same file, by descriptor.
        let theirs = mailbox.file().try_clone().unwrap();
        assert!(theirs.set_len(0).is_err(), "shrunk");
        assert!(theirs.set_len(MAILBOX_BYTES + 4096).is_err(), "grown");
        mailbox.write(b"still here").unwrap();
        assert_eq!(mailbox.read(10).unwrap(), b"still here");
    }

    #[test]
    fn a_silent_or_lying_peer_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let a = Channel::new(a);
        a.set_timeout(Some(Duration::from_millis(50))).unwrap();
        assert!(a.recv::<Reply>().is_err(), "timed out");
        (&b).write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert!(a.recv::<Reply>().is_err(), "frame too large");
        drop(b);
        assert!(a.recv::<Reply>().is_err(), "closed");
    }
}
