//! Bounded waits on the VMM, without a thread hop. The display socket and the backend request
//! channel are blocking sockets inside the vhost crate's `GpuBackend` and `Backend`, which
//! expose no descriptor to put a socket timeout on (vhost 0.18). So the queue thread calls them
//! directly and registers each call here; this VM's watchdog thread looks every quarter of the
//! limit, and a call that overstays has its socket shut down, which makes it return. The kernel
//! names the descriptor a blocked thread waits on (/proc/self/task/TID/syscall, first
//! argument); it is shut down only while the call is still registered, and the registration
//! holds a clone of the channel, so that descriptor cannot have been closed and reused for
//! anything else. The caller then disconnects the VM. One stalled VMM never holds up its
//! socket's next connection or another VM.

use std::any::Any;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// The call in flight, if any.
struct InFlight {
    since: Instant,
    tid: i32,
    /// The channel the call uses, kept alive (and so its descriptor) while it is registered.
    _channel: Box<dyn Any + Send>,
}

struct Shared {
    limit: Duration,
    call: Mutex<Option<InFlight>>,
    stalled: AtomicBool,
    stop: Mutex<bool>,
    wake: Condvar,
}

pub struct PeerWatch {
    shared: Arc<Shared>,
    started: Mutex<bool>,
    /// One call at a time: the queue thread's, or another VM's thread revoking a mapping here.
    /// A second caller waits for the first, which the watchdog bounds.
    serial: Mutex<()>,
}

impl PeerWatch {
    pub fn new(limit: Duration) -> Self {
        PeerWatch {
            shared: Arc::new(Shared {
                limit,
                call: Mutex::new(None),
                stalled: AtomicBool::new(false),
                stop: Mutex::new(false),
                wake: Condvar::new(),
            }),
            started: Mutex::new(false),
            serial: Mutex::new(()),
        }
    }

    /// Runs `f`, a request to the VMM over `channel`, on this thread; if it overstays the limit,
    /// its socket is shut down and it fails. After one stall every later call fails at once.
    pub fn call<T>(
        &self,
        what: &str,
        channel: impl Any + Send,
        f: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let _one_at_a_time = lock(&self.serial);
        if self.is_stalled() {
            return Err(stalled(what, self.shared.limit));
        }
        self.start_watchdog()?;
        *lock(&self.shared.call) = Some(InFlight {
            since: Instant::now(),
            // SAFETY: gettid has no preconditions.
            tid: unsafe { libc::gettid() },
            _channel: Box::new(channel),
        });
        let result = f();
        *lock(&self.shared.call) = None;
        if self.is_stalled() {
            return Err(stalled(what, self.shared.limit));
        }
        result
    }

    /// Whether a request overstayed: the VMM is not answering.
    pub fn is_stalled(&self) -> bool {
        self.shared.stalled.load(Ordering::Acquire)
    }

    /// Ends the watchdog thread (the VM is gone).
    pub fn stop(&self) {
        *lock(&self.shared.stop) = true;
        self.shared.wake.notify_all();
    }

    fn start_watchdog(&self) -> io::Result<()> {
        let mut started = lock(&self.started);
        if !*started {
            let shared = self.shared.clone();
            thread::Builder::new()
                .name("vmm-watchdog".into())
                .spawn(move || watch(&shared))?;
            *started = true;
        }
        Ok(())
    }
}

impl Drop for PeerWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

fn watch(shared: &Shared) {
    let period = (shared.limit / 4).max(Duration::from_millis(10));
    let mut stop = lock(&shared.stop);
    while !*stop {
        stop = shared
            .wake
            .wait_timeout(stop, period)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|e| e.into_inner().0);
        // Held while shutting down: the call cannot end and drop its channel meanwhile.
        let call = lock(&shared.call);
        if let Some(c) = call.as_ref().filter(|c| c.since.elapsed() > shared.limit) {
            shared.stalled.store(true, Ordering::Release);
            shut_down_socket_of(c.tid);
        }
    }
}

/// Shuts down the socket thread `tid` is blocked on, if it is blocked on one.
fn shut_down_socket_of(tid: i32) {
    let Ok(call) = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")) else {
        return;
    };
    let Some(fd) = call
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.strip_prefix("0x"))
        .and_then(|a| i32::from_str_radix(a, 16).ok())
    else {
        return;
    };
    // Only a socket: blocked anywhere else (a lock), the first argument is not a descriptor.
    let is_socket =
        std::fs::metadata(format!("/proc/self/fd/{fd}")).is_ok_and(|m| m.file_type().is_socket());
    if is_socket {
        // SAFETY: shutdown only changes the state of the socket `fd` names: the VMM channel
        // of the registered call, whose clone the registration holds open.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
}

fn stalled(what: &str, limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what}: the VMM did not answer within {limit:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_call_the_peer_never_answers_is_ended_and_later_ones_refused() {
        let peer = PeerWatch::new(Duration::from_millis(100));
        assert_eq!(peer.call("one", (), || Ok(1)).unwrap(), 1);
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut reader = ours.try_clone().unwrap();
        let start = Instant::now();
        let err = peer
            .call("read", ours, || reader.read(&mut [0u8; 8]))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(peer.is_stalled());
        let start = Instant::now();
        assert!(peer.call("after", (), || Ok(())).is_err());
        assert!(start.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn slow_but_answered_calls_within_the_limit_pass() {
        let peer = PeerWatch::new(Duration::from_millis(300));
        let slept = peer.call("slow", (), || {
            thread::sleep(Duration::from_millis(100));
            Ok(7)
        });
        assert_eq!(slept.unwrap(), 7);
        assert!(!peer.is_stalled());
    }
}
