//! A VMM handed over as an already-connected socket (libvirt starts a GPU backend with
//! `--fd=N`, one end of a socketpair whose other end is QEMU's).
//!
//! vhost-user-backend 0.24 serves a connection only from a listener it accepts on or a path it
//! connects to; the handler that could take a stream is private to the crate. So such a VMM is
//! relayed, one whole message at a time, to a private connection the daemon accepts as usual.
//! Whole messages, because descriptors travel with a message's header: a relay that copied
//! bytes could deliver one message's descriptors with another's. The relay carries only the
//! control socket (the rings' eventfds and the backend channel are handed over as descriptors
//! and used directly), so it costs nothing per virtqueue request.

use std::io;
use std::net::Shutdown;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread;

use log::warn;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// A vhost-user message header: request, flags, payload size (all u32, little-endian).
const HEADER: usize = 12;
/// Largest payload a vhost-user message may carry (the vhost crate's own limit).
const MAX_PAYLOAD: usize = vhost::vhost_user::message::MAX_MSG_SIZE;
/// Most descriptors one message may carry (the vhost crate's own limit).
const MAX_FDS: usize = vhost::vhost_user::message::MAX_ATTACHED_FD_ENTRIES;

/// Relays between `vmm` and `inner` in both directions on two threads, until either side
/// closes or breaks the protocol; then both are shut down, so each side sees the other leave.
pub fn spawn(name: &str, vmm: UnixStream, inner: UnixStream) -> io::Result<()> {
    let (vmm2, inner2) = (vmm.try_clone()?, inner.try_clone()?);
    let to_daemon = name.to_string();
    thread::Builder::new()
        .name(format!("{name}-relay-in"))
        .spawn(move || pump(&to_daemon, &vmm, &inner))?;
    let to_vmm = name.to_string();
    thread::Builder::new()
        .name(format!("{name}-relay-out"))
        .spawn(move || pump(&to_vmm, &inner2, &vmm2))?;
    Ok(())
}

fn pump(name: &str, from: &UnixStream, to: &UnixStream) {
    let mut payload = vec![0u8; MAX_PAYLOAD];
    loop {
        match relay_one(from, to, &mut payload) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                // Once per connection at most: the relay ends with it.
                warn!("{name}: vhost-user connection ended: {e}");
                break;
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Moves one message with its descriptors; false once `from` has closed between messages.
fn relay_one(from: &UnixStream, to: &UnixStream, payload: &mut [u8]) -> io::Result<bool> {
    let mut header = [0u8; HEADER];
    let mut fds = Vec::new();
    if !recv_exact(from, &mut header, &mut fds, true)? {
        return Ok(false);
    }
    let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    let body = payload
        .get_mut(..size)
        .ok_or_else(|| io::Error::other(format!("a {size}-byte message")))?;
    recv_exact(from, body, &mut fds, false)?;
    let raw: Vec<RawFd> = fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    let sent = to
        .send_with_fds(&[&header[..], &body[..]], &raw)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    if sent != HEADER + size {
        // A short send on a blocking stream socket only happens when the peer is gone.
        return Err(io::Error::other("the peer stopped reading"));
    }
    Ok(true)
}

/// Fills `buf`, keeping any descriptors that arrive (at most `MAX_FDS` in all). Returns false
/// when `from` closes before the first byte and `may_end` allows that.
fn recv_exact(
    from: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    may_end: bool,
) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        let mut iov = [libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        }];
        let mut raw = [-1 as RawFd; MAX_FDS];
        // SAFETY: the iovec covers `rest`, a live, writable slice that nothing else uses.
        let (n, count) = unsafe { from.recv_with_fds(&mut iov, &mut raw) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        for fd in raw.iter().take(count) {
            // SAFETY: recvmsg just gave us these descriptors; nothing else owns them.
            fds.push(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
        if fds.len() > MAX_FDS {
            return Err(io::Error::other("too many descriptors in one message"));
        }
        if n == 0 {
            if got == 0 && may_end {
                return Ok(false);
            }
            return Err(io::Error::other("closed in the middle of a message"));
        }
        got += n;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    fn message(request: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = request.to_le_bytes().to_vec();
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn messages_and_their_descriptors_arrive_together_and_in_order() {
        let (vmm, relay_outer) = UnixStream::pair().unwrap();
        let (relay_inner, daemon) = UnixStream::pair().unwrap();
        spawn("t", relay_outer, relay_inner).unwrap();
        // One message without descriptors, then one with two, written back to back.
        let (a, b) = UnixStream::pair().unwrap();
        let first = message(1, b"hello");
        let second = message(2, &[7u8; 8]);
        vmm.send_with_fds(&[&first[..]], &[]).unwrap();
        vmm.send_with_fds(&[&second[..]], &[a.as_raw_fd(), b.as_raw_fd()])
            .unwrap();
        let mut buf = [0u8; 64];
        let mut fds = Vec::new();
        assert!(recv_exact(&daemon, &mut buf[..first.len()], &mut fds, true).unwrap());
        assert_eq!(&buf[..first.len()], &first[..]);
        assert!(fds.is_empty(), "no descriptors with the first message");
        assert!(recv_exact(&daemon, &mut buf[..second.len()], &mut fds, true).unwrap());
        assert_eq!(&buf[..second.len()], &second[..]);
        assert_eq!(fds.len(), 2, "both with the second");
        // The daemon's answer goes back; then the VMM leaves and the daemon sees it.
        (&daemon).write_all(&message(3, b"ok")).unwrap();
        let mut answer = [0u8; HEADER + 2];
        assert!(recv_exact(&vmm, &mut answer, &mut fds, true).unwrap());
        assert_eq!(&answer[HEADER..], b"ok");
        drop(vmm);
        assert!(!recv_exact(&daemon, &mut buf[..1], &mut fds, true).unwrap());
    }

    #[test]
    fn an_oversized_message_ends_the_connection() {
        let (vmm, relay_outer) = UnixStream::pair().unwrap();
        let (relay_inner, daemon) = UnixStream::pair().unwrap();
        spawn("t", relay_outer, relay_inner).unwrap();
        let mut m = message(1, &[]);
        m[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        (&vmm).write_all(&m).unwrap();
        let mut fds = Vec::new();
        assert!(!recv_exact(&daemon, &mut [0u8; 1], &mut fds, true).unwrap());
    }
}
