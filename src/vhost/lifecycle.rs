//! A frontend's reset told from its sleep when it sends no RESET_DEVICE.
//!
//! crosvm never sends RESET_DEVICE: both a reset and a sleep are ENABLE(0) and GET_VRING_BASE on
//! each queue, and re-activation sets the rings up again without SET_FEATURES
//! (devices/src/virtio/vhost_user_frontend/mod.rs: reset, virtio_sleep, virtio_wake). They
//! differ only in the rings that come back: after a wake the same ring addresses with the base
//! GET_VRING_BASE gave; after a reset the driver's fresh rings, at base 0. So each queue's place
//! (ring addresses and next available index) is kept after it was served, and compared once the
//! control queue is ready again, before anything is served: any difference is a reset. A queue never served holds no
//! state, so it cannot tell either way; a sleep before any command comes back the same, and
//! with nothing served there is nothing to keep or drop.

use std::sync::Mutex;

use crate::sync::lock;

/// Where a queue's rings are and how far the device has read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingPlace {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub next_avail: u16,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Resumed {
    /// No queue was stopped, or some still are.
    NotNow,
    /// The same rings at the same place: the device's state stays.
    Woke,
    /// Other rings: the driver started over, and so does the device.
    WasReset,
}

#[derive(Default)]
struct State {
    served: [Option<RingPlace>; 2],
    stopped: [bool; 2],
}

#[derive(Default)]
pub struct Lifecycle(Mutex<State>);

impl Lifecycle {
    /// GET_VRING_BASE on `queue`.
    pub fn stopped(&self, queue: usize) {
        if let Some(s) = lock(&self.0).stopped.get_mut(queue) {
            *s = true;
        }
    }

    /// `queue` was served up to `place`.
    pub fn served(&self, queue: usize, place: RingPlace) {
        if let Some(s) = lock(&self.0).served.get_mut(queue) {
            *s = Some(place);
        }
    }

    /// RESET_DEVICE: the state is gone already, nothing to compare.
    pub fn reset(&self) {
        *lock(&self.0) = State::default();
    }

    /// Called before an event is handled, with each queue's place now (None: not ready).
    pub fn resumed(&self, now: [Option<RingPlace>; 2]) -> Resumed {
        let mut st = lock(&self.0);
        // The control queue decides (all state comes from it): once it is ready, compare what
        // can be compared. A queue not ready yet, or never served, tells nothing.
        if !st.stopped.iter().any(|&s| s) || now[0].is_none() {
            return Resumed::NotNow;
        }
        let same = (st.served.iter().zip(&now))
            .all(|(was, is)| was.is_none() || is.is_none() || was == is);
        st.stopped = [false; 2];
        if same {
            Resumed::Woke
        } else {
            st.served = [None; 2];
            Resumed::WasReset
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(desc: u64, next_avail: u16) -> RingPlace {
        RingPlace {
            desc,
            avail: desc + 0x1000,
            used: desc + 0x2000,
            next_avail,
        }
    }

    #[test]
    fn a_wake_keeps_and_a_reset_starts_over() {
        let l = Lifecycle::default();
        assert_eq!(l.resumed([Some(place(0x1000, 0)); 2]), Resumed::NotNow);
        l.served(0, place(0x1000, 7));
        l.stopped(0);
        l.stopped(1);
        // Still asleep: the control queue is not ready.
        assert_eq!(l.resumed([None, Some(place(0x9000, 0))]), Resumed::NotNow);
        assert_eq!(
            l.resumed([Some(place(0x1000, 7)), Some(place(0x9000, 0))]),
            Resumed::Woke,
            "the cursor queue was never served: it tells nothing"
        );
        l.served(0, place(0x1000, 9));
        l.stopped(0);
        l.stopped(1);
        // Fresh rings at the same addresses, base 0: a reset.
        assert_eq!(
            l.resumed([Some(place(0x1000, 0)), Some(place(0x9000, 0))]),
            Resumed::WasReset
        );
        assert_eq!(l.resumed([Some(place(0x1000, 0)); 2]), Resumed::NotNow);
    }
}
