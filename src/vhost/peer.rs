//! Bounded waits on the VMM. The display socket and the backend request channel are blocking
//! sockets inside the vhost crate's `GpuBackend` and `Backend`, which expose no descriptor to put
//! a socket timeout on (vhost 0.18). So every request on them runs on this VM's own peer thread
//! and the queue thread waits for it at most `limit`. A request that overstays marks the VMM as
//! stalled: the caller disconnects the VM; when the VM is torn down, the socket the thread is
//! stuck in is shut down (`unblock`), so the thread ends even if the VMM keeps its end open.
//! Nothing else waits on it, so one stalled VMM never holds up its socket's next connection or
//! another VM.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

pub struct PeerThread {
    limit: Duration,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    stalled: AtomicBool,
    /// The thread's kernel id, once it runs (0 before).
    tid: Arc<AtomicI32>,
}

impl PeerThread {
    pub fn new(limit: Duration) -> Self {
        PeerThread {
            limit,
            jobs: Mutex::new(None),
            stalled: AtomicBool::new(false),
            tid: Arc::new(AtomicI32::new(0)),
        }
    }

    /// Runs `f` on the peer thread and waits at most the limit for its result. After one call
    /// overstayed, every later call fails at once: the thread may still be stuck in that one.
    pub fn call<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        if self.stalled.load(Ordering::Acquire) {
            return Err(stalled(what, self.limit));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.sender()?
            .send(job)
            .map_err(|_| io::Error::other("the VMM peer thread is gone"))?;
        match rx.recv_timeout(self.limit) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.stalled.store(true, Ordering::Release);
                // Later jobs would queue behind the stuck one: let the thread end after it.
                *super::backend::lock(&self.jobs) = None;
                Err(stalled(what, self.limit))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(io::Error::other("the VMM peer thread is gone"))
            }
        }
    }

    /// Whether a request overstayed: the VMM is not answering.
    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }

    /// Lets the thread end once its current request (if any) returns.
    pub fn stop(&self) {
        *super::backend::lock(&self.jobs) = None;
    }

    /// After a stall: shuts down the socket the thread is stuck in, so it returns. The vhost
    /// crate keeps that socket's fd to itself, but the kernel names the fd a blocked thread
    /// waits on (/proc/self/task/TID/syscall, first argument). Call it while the channels are
    /// still held, so the fd cannot have been closed and reused for something else meanwhile.
    pub fn unblock(&self) {
        let tid = self.tid.load(Ordering::Acquire);
        if !self.is_stalled() || tid == 0 {
            return;
        }
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
        // Only a socket: blocked anywhere else (a lock), the first argument is not an fd.
        let is_socket = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|m| m.file_type().is_socket());
        if is_socket {
            // SAFETY: shutdown only changes the state of the socket `fd` names, which is this
            // VM's own display socket or backend channel, still held open by the caller.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }

    fn sender(&self) -> io::Result<mpsc::Sender<Job>> {
        let mut jobs = super::backend::lock(&self.jobs);
        if let Some(tx) = jobs.as_ref() {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let tid = self.tid.clone();
        thread::Builder::new()
            .name("vmm-peer".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid.store(unsafe { libc::gettid() }, Ordering::Release);
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        *jobs = Some(tx.clone());
        Ok(tx)
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
    use std::time::Instant;

    #[test]
    fn answers_come_back_and_a_stall_is_bounded() {
        let peer = PeerThread::new(Duration::from_millis(100));
        assert_eq!(peer.call("one", || Ok(1)).unwrap(), 1);
        let start = Instant::now();
        let err = peer
            .call("stuck", || {
                thread::sleep(Duration::from_secs(2));
                Ok(())
            })
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(peer.is_stalled());
        // Refused at once from now on, without queueing behind the stuck request.
        let start = Instant::now();
        assert!(peer.call("after", || Ok(())).is_err());
        assert!(start.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn unblock_ends_a_read_the_peer_never_answers() {
        use std::io::Read;
        use std::os::unix::net::UnixStream;
        let peer = PeerThread::new(Duration::from_millis(100));
        let (mut ours, _theirs) = UnixStream::pair().unwrap();
        let mut reader = ours.try_clone().unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        let stuck = peer.call("read", move || {
            let n = reader.read(&mut [0u8; 8]);
            let _ = done_tx.send(());
            n
        });
        assert!(stuck.is_err() && peer.is_stalled());
        peer.unblock();
        done_rx
            .recv_timeout(Duration::from_secs(2))
            .expect("the stuck read returned");
        // Our end is shut down, the other is still open: nothing else was touched.
        assert_eq!(ours.read(&mut [0u8; 8]).unwrap(), 0);
    }
}
