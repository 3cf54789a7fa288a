//! Deadline for blocking calls on the vhost-user socket.
//!
//! The vhost crate's `Frontend` reads replies with blocking recvmsg and retries on EAGAIN, so a
//! socket receive timeout would just loop. Instead a helper thread shuts the socket down when
//! a call overruns; the blocked read then sees EOF and the call fails. The connection is dead
//! after that, which is fine: the backend broke the protocol.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::util::{err, vhost_err};

#[derive(Default)]
struct State {
    deadline: Option<Instant>,
    fired: bool,
    quit: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// `sock` is a handle to the socket to shut down on expiry.
    pub fn new(sock: UnixStream) -> io::Result<Watchdog> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vu-watchdog".into())
            .spawn(move || run(&s, &sock))?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// Runs `f` (a blocking exchange on the socket) under a deadline of `timeout`.
    pub fn run_io<T>(
        &self,
        timeout: Duration,
        what: &str,
        f: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        {
            let mut st = self.shared.state.lock().unwrap();
            if st.fired {
                return Err(err(
                    io::ErrorKind::NotConnected,
                    format!("{what}: connection already closed after an earlier timeout"),
                ));
            }
            st.deadline = Some(Instant::now() + timeout);
            self.shared.cond.notify_one();
        }
        let res = f();
        let fired = {
            let mut st = self.shared.state.lock().unwrap();
            st.deadline = None;
            st.fired
        };
        match res {
            _ if fired => Err(err(
                io::ErrorKind::TimedOut,
                format!("{what}: backend did not answer within {timeout:?}"),
            )),
            r => r.map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}"))),
        }
    }

    /// Same as `run_io` for calls into the vhost crate.
    pub fn run<T>(
        &self,
        timeout: Duration,
        what: &str,
        f: impl FnOnce() -> vhost::Result<T>,
    ) -> io::Result<T> {
        self.run_io(timeout, what, || f().map_err(|e| vhost_err("vhost", e)))
    }
}

fn run(shared: &Shared, sock: &UnixStream) {
    let mut st = shared.state.lock().unwrap();
    loop {
        if st.quit {
            return;
        }
        match st.deadline {
            None => st = shared.cond.wait(st).unwrap(),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    st.fired = true;
                    st.deadline = None;
                    let _ = sock.shutdown(Shutdown::Both);
                } else {
                    st = shared.cond.wait_timeout(st, d - now).unwrap().0;
                }
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().quit = true;
        self.shared.cond.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
