//! Bounded waits on the VMM. The display socket and the backend request channel are blocking
//! sockets inside the vhost crate's `GpuBackend` and `Backend`, which expose no descriptor to put
//! a socket timeout on (vhost 0.18). So every request on them runs on this VM's own peer thread
//! and the queue thread waits for it at most `limit`. A request that overstays marks the VMM as
//! stalled: the caller disconnects the VM, and the peer thread, stuck in the socket, ends when the
//! VMM closes its end. Nothing else waits on it, so one stalled VMM never holds up its socket's
//! next connection or another VM.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

pub struct PeerThread {
    name: String,
    limit: Duration,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    stalled: AtomicBool,
}

impl PeerThread {
    pub fn new(name: &str, limit: Duration) -> Self {
        PeerThread {
            name: format!("{name}-vmm"),
            limit,
            jobs: Mutex::new(None),
            stalled: AtomicBool::new(false),
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

    fn sender(&self) -> io::Result<mpsc::Sender<Job>> {
        let mut jobs = super::backend::lock(&self.jobs);
        if let Some(tx) = jobs.as_ref() {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || {
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
        let peer = PeerThread::new("t", Duration::from_millis(100));
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
}
