//! The one mutex helper every module uses.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, also after a thread panicked while holding it: every state kept behind these locks
/// stays usable for answering and tearing down, and a poisoned lock must not take the daemon down.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
