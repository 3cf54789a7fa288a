//! Fences, in one place: what a renderer reports (`FenceSink`), where a VM's signals wait for its
//! queue thread (`FenceInbox`), and the responses parked per timeline until their fence and every
//! earlier one of the same timeline are done (`Timelines`).
//!
//! A timeline is (context, ring) of one VM, named by the guest's context id; (0, None) is the VM's
//! global timeline. Every renderer serves one VM (3D renderers run in a worker per VM; the shared
//! 2D renderer has no asynchronous work and reports its fences done at creation), so a renderer's
//! fence ids need no routing between VMs. Renderers may report only the newest finished fence of
//! a timeline: that retires it and everything parked before it on the same timeline, in order.
//! Other timelines are untouched.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::ids::{FenceId, GuestCtxId};
use crate::sync::lock;

/// Told when a fence its renderer created has signalled. Called from any thread, possibly with
/// the renderer's own locks held (a render worker's signals are taken while a call waits on
/// it): it must not call back into the renderer.
pub trait FenceSink: Send + Sync {
    fn signalled(&self, fence: FenceId);
}

/// What creating a fence gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// The renderer has no work outstanding that the fence could wait for.
    Signalled,
    /// Reported to the renderer's sink once done.
    Pending(FenceId),
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timeline {
    /// The guest's context id; 0 for the global timeline.
    pub ctx: GuestCtxId,
    pub ring: Option<u8>,
}

impl Timeline {
    pub const GLOBAL: Timeline = Timeline {
        ctx: GuestCtxId(0),
        ring: None,
    };
}

/// Where a VM's renderer drops signalled fences; the eventfd wakes the VM's queue thread, the only
/// one that answers on the control ring.
pub struct FenceInbox {
    signalled: Mutex<Vec<FenceId>>,
    pub event: EventFd,
}

impl FenceInbox {
    pub fn new() -> io::Result<Self> {
        Ok(FenceInbox {
            signalled: Mutex::new(Vec::new()),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The fences signalled since the last call.
    pub fn take(&self) -> Vec<FenceId> {
        let _ = self.event.read();
        std::mem::take(&mut *lock(&self.signalled))
    }
}

impl FenceSink for FenceInbox {
    fn signalled(&self, fence: FenceId) {
        lock(&self.signalled).push(fence);
        let _ = self.event.write(1);
    }
}

/// A response waiting for its fence: `token` is whatever the transport needs to complete it.
#[derive(Debug)]
struct Parked<T> {
    fence: FenceId,
    token: T,
}

#[derive(Debug)]
pub struct Timelines<T> {
    parked: HashMap<Timeline, VecDeque<Parked<T>>>,
    /// Which timeline each parked fence id is on.
    index: HashMap<FenceId, Timeline>,
}

impl<T> Default for Timelines<T> {
    fn default() -> Self {
        Timelines {
            parked: HashMap::new(),
            index: HashMap::new(),
        }
    }
}

impl<T> Timelines<T> {
    /// Parks `token` behind renderer fence `fence` on `timeline`. Fence ids are unique among
    /// parked ones.
    pub fn park(&mut self, timeline: Timeline, fence: FenceId, token: T) {
        self.index.insert(fence, timeline);
        self.parked
            .entry(timeline)
            .or_default()
            .push_back(Parked { fence, token });
    }

    /// The renderer finished `fence`: returns the tokens it releases, oldest first. Unknown or
    /// already retired ids release nothing.
    pub fn retire_through(&mut self, fence: FenceId) -> Vec<T> {
        self.retire_with_ids(fence)
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// As `retire_through`, with the fence each token waited for.
    pub fn retire_with_ids(&mut self, fence: FenceId) -> Vec<(FenceId, T)> {
        let Some(timeline) = self.index.get(&fence).copied() else {
            return Vec::new();
        };
        let mut done = Vec::new();
        if let Some(queue) = self.parked.get_mut(&timeline) {
            while let Some(p) = queue.pop_front() {
                self.index.remove(&p.fence);
                let last = p.fence == fence;
                done.push((p.fence, p.token));
                if last {
                    break;
                }
            }
            if queue.is_empty() {
                self.parked.remove(&timeline);
            }
        }
        done
    }

    /// The newest fence parked on `timeline`, if any: once it retires, so has everything
    /// submitted on that timeline so far.
    pub fn last_on(&self, timeline: Timeline) -> Option<FenceId> {
        self.parked.get(&timeline)?.back().map(|p| p.fence)
    }

    /// The newest fence parked on each timeline.
    pub fn last_of_each(&self) -> Vec<(Timeline, FenceId)> {
        let mut all: Vec<(Timeline, FenceId)> = (self.parked.iter())
            .filter_map(|(t, q)| q.back().map(|p| (*t, p.fence)))
            .collect();
        all.sort_unstable();
        all
    }

    /// Drops every parked response of a context (it was destroyed) and returns them.
    pub fn drain_context(&mut self, ctx: GuestCtxId) -> Vec<T> {
        let timelines: Vec<Timeline> = self
            .parked
            .keys()
            .filter(|t| t.ctx == ctx)
            .copied()
            .collect();
        timelines.into_iter().flat_map(|t| self.take(t)).collect()
    }

    /// Everything still parked, in no particular order across timelines.
    pub fn drain_all(&mut self) -> Vec<T> {
        let timelines: Vec<Timeline> = self.parked.keys().copied().collect();
        timelines.into_iter().flat_map(|t| self.take(t)).collect()
    }

    fn take(&mut self, t: Timeline) -> Vec<T> {
        let queue = self.parked.remove(&t).unwrap_or_default();
        queue
            .into_iter()
            .map(|p| {
                self.index.remove(&p.fence);
                p.token
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ctx: u32, ring: u8) -> Timeline {
        Timeline {
            ctx: GuestCtxId(ctx),
            ring: Some(ring),
        }
    }

    #[test]
    fn out_of_order_signals_answer_in_order_per_timeline() {
        let mut t = Timelines::default();
        t.park(ring(1, 0), FenceId(10), "a");
        t.park(ring(1, 0), FenceId(11), "b");
        t.park(ring(1, 1), FenceId(12), "x");
        t.park(ring(1, 0), FenceId(13), "c");
        // The newest fence of ring 0 retires everything before it on ring 0 only.
        assert_eq!(t.last_on(ring(1, 0)), Some(FenceId(13)));
        assert_eq!(t.last_on(ring(1, 2)), None);
        assert_eq!(
            t.retire_with_ids(FenceId(13)),
            vec![(FenceId(10), "a"), (FenceId(11), "b"), (FenceId(13), "c")]
        );
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.retire_through(FenceId(11)),
            Vec::<&str>::new(),
            "already retired"
        );
        assert_eq!(t.retire_through(FenceId(12)), vec!["x"]);
        assert!(t.is_empty());
    }

    #[test]
    fn a_middle_fence_releases_only_up_to_itself() {
        let mut t = Timelines::default();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            t.park(Timeline::GLOBAL, FenceId(i as u64), name);
        }
        assert_eq!(t.retire_through(FenceId(1)), vec!["a", "b"]);
        assert_eq!(t.retire_through(FenceId(2)), vec!["c"]);
        assert_eq!(t.retire_through(FenceId(99)), Vec::<&str>::new());
    }

    #[test]
    fn timelines_never_wait_on_each_other() {
        let mut t = Timelines::default();
        t.park(ring(1, 0), FenceId(1), 1);
        t.park(ring(2, 0), FenceId(2), 2);
        t.park(Timeline::GLOBAL, FenceId(3), 3);
        assert_eq!(t.retire_through(FenceId(3)), vec![3]);
        assert_eq!(t.retire_through(FenceId(2)), vec![2]);
        assert_eq!(t.drain_context(GuestCtxId(1)), vec![1]);
        assert!(t.is_empty());
    }

    #[test]
    fn the_inbox_hands_over_each_signal_once_and_wakes_its_reader() {
        let inbox = FenceInbox::new().unwrap();
        inbox.signalled(FenceId(4));
        inbox.signalled(FenceId(5));
        assert_eq!(inbox.take(), vec![FenceId(4), FenceId(5)]);
        assert!(inbox.take().is_empty());
        assert!(inbox.event.read().is_err(), "the wakeup was consumed");
    }
}
