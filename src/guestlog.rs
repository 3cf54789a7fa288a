//! Rate-limited warnings for what a guest (or its VMM) can trigger at will: a hostile guest must not
//! be able to fill the host's disk or drown other VMs' lines. Each VM has its own budget, so one
//! noisy VM never silences another.
//!
//! A token bucket of a few lines is all this needs; the log crates on offer that rate-limit do it
//! per call site, not per VM, so it is written here.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Lines a VM may log in a burst.
const BURST: f64 = 20.0;
/// Lines per second a VM may log once its burst is spent.
const PER_SECOND: f64 = 2.0;

struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

/// One VM's warning channel: lines carry the VM's name; past the budget they are counted, and the
/// count is reported with the next line that gets through. Clones share the budget: a socket
/// keeps one for all the VMs it serves in turn.
#[derive(Clone)]
pub struct GuestLog {
    name: Arc<str>,
    bucket: Arc<Mutex<Bucket>>,
}

impl GuestLog {
    pub fn new(name: &str) -> Self {
        GuestLog {
            name: name.into(),
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: BURST,
                last: Instant::now(),
                suppressed: 0,
            })),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Logs `args` at warn level if the VM's budget allows.
    pub fn warn(&self, args: fmt::Arguments) {
        if let Some(suppressed) = self.take() {
            if suppressed > 0 {
                log::warn!("{}: {suppressed} earlier warnings suppressed", self.name);
            }
            log::warn!("{}: {args}", self.name);
        }
    }

    /// Logs `args` at info level, from the same budget.
    pub fn info(&self, args: fmt::Arguments) {
        if let Some(suppressed) = self.take() {
            if suppressed > 0 {
                log::warn!("{}: {suppressed} earlier warnings suppressed", self.name);
            }
            log::info!("{}: {args}", self.name);
        }
    }

    /// One lifecycle line, `vm=NAME event=EVENT DETAILS`, at info level from the same budget
    /// (a VMM can connect and go as often as it likes).
    pub fn event(&self, event: &str, details: fmt::Arguments) {
        if let Some(suppressed) = self.take() {
            if suppressed > 0 {
                log::warn!("{}: {suppressed} earlier warnings suppressed", self.name);
            }
            log::info!("vm={} event={event} {details}", self.name);
        }
    }

    /// Spends a token: Some(lines suppressed since the last one that got through), or None.
    fn take(&self) -> Option<u64> {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * PER_SECOND;
        b.tokens = (b.tokens + refill).min(BURST);
        b.last = now;
        if b.tokens < 1.0 {
            b.suppressed += 1;
            return None;
        }
        b.tokens -= 1.0;
        Some(std::mem::take(&mut b.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_silence_then_the_count() {
        let log = GuestLog::new("vm");
        let passed = (0..1000).filter(|_| log.take().is_some()).count();
        assert_eq!(passed, BURST as usize);
        // Half a second later one more line gets through and carries the count.
        log.bucket.lock().unwrap().last -= std::time::Duration::from_millis(600);
        assert_eq!(log.take(), Some(1000 - BURST as u64));
        assert_eq!(log.take(), None);
    }

    #[test]
    fn each_vm_has_its_own_budget() {
        let a = GuestLog::new("a");
        let b = GuestLog::new("b");
        while a.take().is_some() {}
        assert!(b.take().is_some());
    }
}
