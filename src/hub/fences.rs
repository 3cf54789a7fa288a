//! Routes the renderer's fence signals to the VMs that created the fences.
//!
//! Context fences are routed by the renderer's context id. Global-timeline fences are different:
//! the renderer has one global timeline shared by every VM, and it may report only the newest
//! finished fence, which means every fence created before it (by any VM) is done too.
//!
//! Sinks are called after the routing lock is released.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::device::FenceSink;

/// Global-timeline fence ids travel through a signed 32-bit field of virglrenderer.
const GLOBAL_ID_MASK: u64 = 0x7fff_ffff;

#[derive(Default)]
pub struct FenceRouter {
    routes: Mutex<Routes>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Routes {
    /// Global-timeline fences of all VMs, oldest first.
    global: VecDeque<(u64, Weak<dyn FenceSink>)>,
    contexts: HashMap<u32, Weak<dyn FenceSink>>,
}

impl FenceRouter {
    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh fence id. Context fences use the full 64 bits; global ones wrap within 31 bits,
    /// which is safe because routing matches ids exactly among the ones still outstanding.
    pub fn next_id(&self, global: bool) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        if global {
            (id & GLOBAL_ID_MASK).max(1)
        } else {
            id
        }
    }

    /// Registers a global-timeline fence before the renderer can signal it.
    pub fn expect_global(&self, id: u64, sink: &Arc<dyn FenceSink>) {
        self.routes().global.push_back((id, Arc::downgrade(sink)));
    }

    pub fn add_context(&self, ctx: u32, sink: &Arc<dyn FenceSink>) {
        self.routes().contexts.insert(ctx, Arc::downgrade(sink));
    }

    pub fn remove_context(&self, ctx: u32) {
        self.routes().contexts.remove(&ctx);
    }

    /// The renderer finished fence `id` of context `ctx` (0: the global timeline).
    pub fn signal(&self, ctx: u32, ring: Option<u8>, id: u64) {
        let targets: Vec<(Weak<dyn FenceSink>, u64)> = {
            let mut routes = self.routes();
            if ring.is_some() {
                routes
                    .contexts
                    .get(&ctx)
                    .map(|s| (s.clone(), id))
                    .into_iter()
                    .collect()
            } else if routes.global.iter().any(|(g, _)| *g == id) {
                let mut done = Vec::new();
                while let Some((g, sink)) = routes.global.pop_front() {
                    done.push((sink, g));
                    if g == id {
                        break;
                    }
                }
                done
            } else {
                Vec::new()
            }
        };
        for (sink, id) in targets {
            if let Some(sink) = sink.upgrade() {
                sink.signalled(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Record(Mutex<Vec<u64>>);

    impl FenceSink for Record {
        fn signalled(&self, fence: u64) {
            self.0.lock().unwrap().push(fence);
        }
    }

    /// A recording sink and the same sink as the router sees it.
    fn sink() -> (Arc<Record>, Arc<dyn FenceSink>) {
        let r = Arc::new(Record::default());
        let d: Arc<dyn FenceSink> = r.clone();
        (r, d)
    }

    #[test]
    fn a_global_report_retires_every_older_fence_of_every_vm() {
        let router = FenceRouter::default();
        let ((a, da), (b, db)) = (sink(), sink());
        let ids: Vec<u64> = (0..4).map(|_| router.next_id(true)).collect();
        router.expect_global(ids[0], &da);
        router.expect_global(ids[1], &db);
        router.expect_global(ids[2], &da);
        router.expect_global(ids[3], &db);
        router.signal(0, None, ids[2]);
        assert_eq!(*a.0.lock().unwrap(), vec![ids[0], ids[2]]);
        assert_eq!(*b.0.lock().unwrap(), vec![ids[1]]);
        router.signal(0, None, ids[2]);
        assert_eq!(
            a.0.lock().unwrap().len(),
            2,
            "a repeated report releases nothing"
        );
        router.signal(0, None, ids[3]);
        assert_eq!(*b.0.lock().unwrap(), vec![ids[1], ids[3]]);
    }

    #[test]
    fn context_fences_go_to_their_context_only() {
        let router = FenceRouter::default();
        let ((a, da), (b, db)) = (sink(), sink());
        router.add_context(7, &da);
        router.add_context(8, &db);
        router.signal(8, Some(1), 42);
        router.signal(9, Some(0), 43);
        assert!(a.0.lock().unwrap().is_empty());
        assert_eq!(*b.0.lock().unwrap(), vec![42]);
        router.remove_context(8);
        router.signal(8, Some(1), 44);
        assert_eq!(b.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn global_ids_stay_in_31_bits_and_skip_zero() {
        let router = FenceRouter {
            next_id: AtomicU64::new(GLOBAL_ID_MASK),
            ..Default::default()
        };
        assert_eq!(router.next_id(true), 1);
        assert!(router.next_id(false) > GLOBAL_ID_MASK);
    }
}
