//! Small shared helpers: error conversion, poll(2) with a deadline, temp dirs.

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Turns a vhost crate error into an `io::Error`, keeping the OS error kind when there is one.
pub(crate) fn vhost_err(what: &str, e: vhost::Error) -> io::Error {
    use vhost::vhost_user::Error as U;
    let kind = match &e {
        vhost::Error::VhostUserProtocol(
            U::SocketError(ioe)
            | U::SocketBroken(ioe)
            | U::SocketRetry(ioe)
            | U::SocketConnect(ioe),
        ) => ioe.kind(),
        vhost::Error::VhostUserProtocol(U::Disconnected | U::PartialMessage) => {
            io::ErrorKind::UnexpectedEof
        }
        vhost::Error::VhostUserProtocol(U::InvalidMessage | U::BackendInternalError) => {
            io::ErrorKind::InvalidData
        }
        vhost::Error::IOError(ioe) => ioe.kind(),
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("{what}: {e}"))
}

pub(crate) fn err(kind: io::ErrorKind, msg: impl Into<String>) -> io::Error {
    io::Error::new(kind, msg.into())
}

/// What `poll_until` saw.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Polled {
    /// The first fd is readable.
    Ready,
    /// The second fd (if any) reported hang-up or error.
    Hangup,
    TimedOut,
}

/// Waits until `fd` is readable, `hup_fd` hangs up, or `deadline` passes.
pub(crate) fn poll_until(
    fd: RawFd,
    hup_fd: Option<RawFd>,
    deadline: Instant,
) -> io::Result<Polled> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(Polled::TimedOut);
        }
        // Round up so we never spin on a sub-millisecond remainder.
        let ms = (deadline - now)
            .as_micros()
            .div_ceil(1000)
            .min(i32::MAX as u128) as i32;
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: hup_fd.unwrap_or(-1),
                events: libc::POLLRDHUP,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs for the duration of the call;
        // a negative fd is ignored by poll(2).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 {
            return Ok(Polled::Hangup);
        }
        if fds[0].revents != 0 {
            return Ok(Polled::Ready);
        }
    }
}

/// Creates a fresh, empty directory under the system temp dir.
pub(crate) fn make_temp_dir(prefix: &str) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    for _ in 0..100 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .subsec_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{prefix}-{}-{n}-{nanos:x}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(err(
        io::ErrorKind::AlreadyExists,
        "could not create a unique temp dir",
    ))
}

/// A switch a peer thread checks before it serves its next message: while on, it stops reading
/// its socket, as a wedged VMM would. The wait is bounded (ten seconds, far past any limit the
/// daemon is given in tests) so a failing test never hangs its own teardown.
#[derive(Default)]
pub struct Stall {
    on: std::sync::Mutex<bool>,
    cond: std::sync::Condvar,
}

impl Stall {
    pub fn set(&self, on: bool) {
        *self.on.lock().unwrap() = on;
        self.cond.notify_all();
    }

    pub(crate) fn wait_while_on(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut on = self.on.lock().unwrap();
        while *on {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            on = self.cond.wait_timeout(on, deadline - now).unwrap().0;
        }
    }
}
