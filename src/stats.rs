//! Daemon-wide counters for operators (the metrics endpoint): what no single VM's record holds.
//! Per-VM counters live in the VM's registry record (`hub::registry::VmCounters`).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct DaemonCounters {
    /// VMMs that connected, and that went away (their VM torn down).
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    /// Render workers started.
    pub worker_starts: AtomicU64,
    /// Render workers that died, broke their protocol or were killed for it.
    pub worker_failures: AtomicU64,
    /// Of those, workers killed because they stopped answering (the watchdog).
    pub watchdog_kills: AtomicU64,
    /// Posted requests (answered before the worker did them) that the renderer then refused.
    pub late_refusals: AtomicU64,
    /// Fences a render worker reported signalled in its reply (no second wakeup of the VM's
    /// queue thread for them).
    pub fences_in_reply: AtomicU64,
}

pub static DAEMON: DaemonCounters = DaemonCounters {
    connects: AtomicU64::new(0),
    disconnects: AtomicU64::new(0),
    worker_starts: AtomicU64::new(0),
    worker_failures: AtomicU64::new(0),
    watchdog_kills: AtomicU64::new(0),
    late_refusals: AtomicU64::new(0),
    fences_in_reply: AtomicU64::new(0),
};

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
