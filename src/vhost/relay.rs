//! Every VMM connection is relayed, one whole message at a time, to a private connection the
//! daemon accepts as usual, for two reasons:
//! - vhost-user-backend 0.24 serves a connection only from a listener it accepts on or a path
//!   it connects to (the handler that could take a stream is private to the crate), and libvirt
//!   hands a GPU backend a socket already connected to QEMU (`--fd=N`);
//! - vhost 0.18's `Backend` cannot send CONFIG_CHANGE_MSG (its `handle_config_change` is the
//!   trait's default, which fails locally) and exposes no descriptor, so the relay keeps a
//!   duplicate of the backend channel the VMM hands over (SET_BACKEND_REQ_FD) and the daemon
//!   writes that message itself (see `BackendChannel`).
//!
//! Whole messages, because descriptors travel with a message's header: a relay that copied
//! bytes could deliver one message's descriptors with another's. The relay carries only the
//! control socket (the rings' eventfds and the backend channel are handed over as descriptors
//! and used directly), so it costs nothing per virtqueue request.

use std::io;
use std::io::Write;
use std::net::Shutdown;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;

use log::warn;
use vhost::vhost_user::message::{BackendReq, FrontendReq};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::sync::lock;

/// A vhost-user message header: request, flags, payload size (all u32, little-endian).
const HEADER: usize = 12;
/// The protocol version in a header's flags (no reply asked for).
const VERSION: u32 = 1;
/// Largest payload a vhost-user message may carry (the vhost crate's own limit).
const MAX_PAYLOAD: usize = vhost::vhost_user::message::MAX_MSG_SIZE;
/// Most descriptors one message may carry (the vhost crate's own limit).
const MAX_FDS: usize = vhost::vhost_user::message::MAX_ATTACHED_FD_ENTRIES;

/// The backend channel a VMM handed over (SET_BACKEND_REQ_FD), duplicated from the message
/// the relay passed on: the same socket the vhost crate's `Backend` writes its requests to.
#[derive(Clone, Default)]
pub struct BackendChannel(Arc<Mutex<Option<UnixStream>>>);

impl BackendChannel {
    /// The channel, once the VMM has handed one over.
    pub fn stream(&self) -> io::Result<Option<UnixStream>> {
        lock(&self.0)
            .as_ref()
            .map(UnixStream::try_clone)
            .transpose()
    }

    fn set(&self, channel: UnixStream) {
        *lock(&self.0) = Some(channel);
    }
}

/// Tells the VMM to read the device's config space again (CONFIG_CHANGE_MSG). Sent without
/// NEED_REPLY, so no answer comes back on a socket whose answers the vhost crate reads; a
/// header-only message goes out in one write, which stream sockets do not interleave with the
/// crate's own (each of its messages is one write too). Blocks while the VMM does not read:
/// callers bound it (`PeerWatch`).
pub fn notify_config_change(channel: &UnixStream) -> io::Result<()> {
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(&u32::from(BackendReq::CONFIG_CHANGE_MSG).to_le_bytes());
    header[4..8].copy_from_slice(&VERSION.to_le_bytes());
    let mut writer = channel;
    writer.write_all(&header)
}

/// Relays between `vmm` and `inner` in both directions on two threads, until either side
/// closes or breaks the protocol; then both are shut down, so each side sees the other leave.
/// A backend channel the VMM hands over is kept in `channel` before the daemon receives it.
pub fn spawn(
    name: &str,
    vmm: UnixStream,
    inner: UnixStream,
    channel: BackendChannel,
) -> io::Result<()> {
    let (vmm2, inner2) = (vmm.try_clone()?, inner.try_clone()?);
    let to_daemon = name.to_string();
    thread::Builder::new()
        .name(format!("{name}-relay-in"))
        .spawn(move || pump(&to_daemon, &vmm, &inner, Some(&channel)))?;
    let to_vmm = name.to_string();
    thread::Builder::new()
        .name(format!("{name}-relay-out"))
        .spawn(move || pump(&to_vmm, &inner2, &vmm2, None))?;
    Ok(())
}

fn pump(name: &str, from: &UnixStream, to: &UnixStream, channel: Option<&BackendChannel>) {
    let mut payload = vec![0u8; MAX_PAYLOAD];
    loop {
        match relay_one(from, to, &mut payload, channel) {
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
fn relay_one(
    from: &UnixStream,
    to: &UnixStream,
    payload: &mut [u8],
    channel: Option<&BackendChannel>,
) -> io::Result<bool> {
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
    let request = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if let (Some(channel), [fd]) = (channel, &fds[..]) {
        if request == u32::from(FrontendReq::SET_BACKEND_REQ_FD) {
            channel.set(UnixStream::from(fd.try_clone()?));
        }
    }
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
        spawn("t", relay_outer, relay_inner, BackendChannel::default()).unwrap();
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
    fn a_config_change_reaches_the_frontends_handler_as_one() {
        use std::os::fd::FromRawFd;
        use std::sync::atomic::{AtomicU32, Ordering};
        use vhost::vhost_user::{FrontendReqHandler, HandlerResult, VhostUserFrontendReqHandler};

        #[derive(Default)]
        struct Frontend(AtomicU32);
        impl VhostUserFrontendReqHandler for Frontend {
            fn handle_config_change(&self) -> HandlerResult<u64> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Ok(0)
            }
        }
        let frontend = Arc::new(Frontend::default());
        let mut handler = FrontendReqHandler::new(frontend.clone()).unwrap();
        // SAFETY: a duplicate of the handler's backend end, owned by this stream alone.
        let channel = unsafe { UnixStream::from_raw_fd(libc::dup(handler.get_tx_raw_fd())) };
        notify_config_change(&channel).unwrap();
        notify_config_change(&channel).unwrap();
        handler.handle_request().unwrap();
        handler.handle_request().unwrap();
        assert_eq!(frontend.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn an_oversized_message_ends_the_connection() {
        let (vmm, relay_outer) = UnixStream::pair().unwrap();
        let (relay_inner, daemon) = UnixStream::pair().unwrap();
        spawn("t", relay_outer, relay_inner, BackendChannel::default()).unwrap();
        let mut m = message(1, &[]);
        m[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        (&vmm).write_all(&m).unwrap();
        let mut fds = Vec::new();
        assert!(!recv_exact(&daemon, &mut [0u8; 1], &mut fds, true).unwrap());
    }
}
