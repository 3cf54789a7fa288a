//! Fences across VMs: points a VM exports on its renderer timelines, and share-context fences
//! of other VMs that wait for them (see the module docs of `share` for the semantics and the
//! lock order). Kept apart from the buffer registry, in the same lock.

use std::collections::HashMap;
use std::sync::Arc;

use vgpud_protocol::share::Status;

use super::share::{ShareClient, ShareRegistry, Shares};
use crate::fences::Timeline;
use crate::ids::{FenceId, GuestCtxId, VmId};
use crate::sync::lock;

/// Share-context fences are told apart from renderer fences by this bit.
pub const SHARE_FENCE_BIT: u64 = 1 << 63;
/// Fence points one VM may have exported and not yet seen forgotten, and waits one VM may have
/// pending.
const MAX_POINTS_PER_VM: usize = 1024;
const MAX_WAITS_PER_VM: usize = 256;
/// Failed points of VMs that are gone, kept so that a late wait on one still reads an error;
/// the oldest are forgotten past this.
const MAX_DEAD_POINTS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PointState {
    Pending,
    Done,
    Failed,
}

/// A point on the exporter's timelines: the newest fence of one timeline, or of each (EXPORT_FENCE
/// of every timeline). Parts leave as their fences retire; none left: done.
pub(super) struct Point {
    pub(super) exporter: VmId,
    /// For the policy, also once the exporter is gone.
    pub(super) exporter_name: String,
    pub(super) parts: Vec<(Timeline, FenceId)>,
    pub(super) state: PointState,
}

/// A share-context fence waiting for points, one per exporter timeline.
pub(super) struct Wait {
    pub(super) waiter: VmId,
    pub(super) fence: FenceId,
    pub(super) deps: Vec<u64>,
}

/// Share fences ready to signal: (waiter, fence, the handles among its deps that failed).
pub(super) type Ready = Vec<(Arc<dyn ShareClient>, FenceId, Vec<u64>)>;

impl Shares {
    /// Takes every wait none of whose points is pending any more.
    pub(super) fn take_ready(&mut self) -> Ready {
        let points = &self.points;
        let pending = |h: &u64| {
            points
                .get(h)
                .is_some_and(|p| p.state == PointState::Pending)
        };
        let (ready, waiting): (Vec<Wait>, Vec<Wait>) = std::mem::take(&mut self.waits)
            .into_iter()
            .partition(|w| !w.deps.iter().any(pending));
        self.waits = waiting;
        ready
            .into_iter()
            .filter_map(|w| {
                let failed = (w.deps.iter())
                    .filter(|h| points.get(h).is_some_and(|p| p.state == PointState::Failed))
                    .copied()
                    .collect();
                Some((self.client(w.waiter)?, w.fence, failed))
            })
            .collect()
    }

    /// Points of `vm` (of context `ctx`, if given) that are still pending will never signal.
    pub(super) fn fail_points(&mut self, vm: VmId, ctx: Option<GuestCtxId>) -> Ready {
        for p in self.points.values_mut() {
            if p.exporter == vm
                && p.state == PointState::Pending
                && ctx.is_none_or(|c| p.parts.iter().any(|(t, _)| t.ctx == c))
            {
                p.state = PointState::Failed;
            }
        }
        self.take_ready()
    }

    /// `vm` is gone: its own waits end, and its points (failed by now) are kept for late
    /// waiters, up to MAX_DEAD_POINTS of all gone VMs'.
    pub(super) fn forget_waits_of(&mut self, vm: VmId) {
        self.waits.retain(|w| w.waiter != vm);
        let members = &self.members;
        let dead: Vec<u64> = (self.points.iter())
            .filter(|(_, p)| !members.contains_key(&p.exporter))
            .map(|(h, _)| *h)
            .collect();
        for h in dead.iter().take(dead.len().saturating_sub(MAX_DEAD_POINTS)) {
            self.points.remove(h);
        }
    }
}

/// Tells waiters their fences may signal (outside the registry lock).
pub(super) fn signal(ready: Ready) {
    for (client, fence, failed) in ready {
        for handle in failed {
            client.fence_failed(handle);
        }
        client.share_fence_done(fence);
    }
}

impl ShareRegistry {
    /// The VM answered fences `retired` (each with every earlier one of its timeline): points
    /// they reach are done, and waits on them may signal.
    pub fn fences_done(&self, vm: VmId, retired: &[FenceId]) {
        let ready = {
            let mut shares = lock(&self.shares);
            let mut any = false;
            for p in shares.points.values_mut() {
                if p.exporter == vm && p.state == PointState::Pending {
                    let before = p.parts.len();
                    p.parts.retain(|(_, f)| !retired.contains(f));
                    if p.parts.len() != before && p.parts.is_empty() {
                        p.state = PointState::Done;
                        any = true;
                    }
                }
            }
            if !any {
                return;
            }
            shares.take_ready()
        };
        signal(ready);
    }

    /// Fences of `vm` (of context `ctx`, if given) were dropped unanswered (a reset, a destroyed
    /// context): points on them fail.
    pub fn fences_dropped(&self, vm: VmId, ctx: Option<GuestCtxId>) {
        let ready = lock(&self.shares).fail_points(vm, ctx);
        signal(ready);
    }

    /// A handle for the newest fence of `timeline` of `vm` (None: of each renderer timeline).
    pub(super) fn export_point(&self, vm: VmId, timeline: Option<Timeline>) -> Result<u64, Status> {
        let (client, name) = {
            let shares = lock(&self.shares);
            let name = shares.members.get(&vm).map(|m| m.name.clone());
            (shares.client(vm), name)
        };
        let (client, name) = client.zip(name).ok_or(Status::Unsupported)?;
        let mut result = Err(Status::NoSpace);
        client.last_fences(timeline, &mut |mut parts| {
            // Share-context fences wait on other VMs: never part of a point (no cycles).
            parts.retain(|(_, f)| f.0 & SHARE_FENCE_BIT == 0);
            let mut shares = lock(&self.shares);
            let mine: Vec<u64> = (shares.points.iter())
                .filter(|(_, p)| p.exporter == vm)
                .map(|(h, _)| *h)
                .collect();
            if mine.len() >= MAX_POINTS_PER_VM {
                // Forget the oldest point that is no longer pending; waiting on a forgotten
                // handle answers NO_SUCH.
                let done = mine.iter().find(|h| {
                    shares
                        .points
                        .get(h)
                        .is_some_and(|p| p.state != PointState::Pending)
                });
                match done.copied() {
                    Some(h) => {
                        shares.points.remove(&h);
                    }
                    None => return,
                }
            }
            shares.next_handle += 1;
            let handle = shares.next_handle;
            let state = if parts.is_empty() {
                PointState::Done
            } else {
                PointState::Pending
            };
            let point = Point {
                exporter: vm,
                exporter_name: name.clone(),
                parts,
                state,
            };
            shares.points.insert(handle, point);
            result = Ok(handle);
        });
        result
    }

    /// Whether `vm` may wait for every point of `handles` (WAIT_FENCES checks this when it
    /// runs). A handle never given out, or a point of a VM the policy does not let `vm` import
    /// from, answers NO_SUCH, alike, so that no VM learns of other VMs' points. A handle that
    /// was given out and is forgotten since is fine: only points that passed are forgotten.
    pub(super) fn usable_points(&self, vm: VmId, handles: &[u64]) -> Result<(), Status> {
        let policy = self.policy();
        let shares = lock(&self.shares);
        let waiter = shares.members.get(&vm).ok_or(Status::Unsupported)?;
        for h in handles {
            match shares.points.get(h) {
                Some(p) if p.exporter != vm && !policy.allows(&p.exporter_name, &waiter.name) => {
                    return Err(Status::NoSuch)
                }
                Some(_) => {}
                None if *h == 0 || *h > shares.next_handle => return Err(Status::NoSuch),
                None => {}
            }
        }
        Ok(())
    }

    /// A share-context fence of `vm` that signals once every point of `handles` has passed.
    /// Handles it cannot wait for (forgotten because they passed, or refused when WAIT_FENCES
    /// ran) are left out; the others are still waited for.
    pub(super) fn wait_points(
        &self,
        vm: VmId,
        handles: &[u64],
    ) -> Result<(FenceId, Vec<u64>), Status> {
        let policy = self.policy();
        let (client, fence, failed, waiting) = {
            let mut shares = lock(&self.shares);
            let client = shares.client(vm).ok_or(Status::Unsupported)?;
            let waiter = shares.members.get(&vm).map(|m| m.name.clone());
            // Flat: per exporter timeline, only its highest pending point.
            let mut highest: HashMap<(VmId, Timeline), (u64, FenceId)> = HashMap::new();
            let mut whole: Vec<u64> = Vec::new();
            let mut failed = Vec::new();
            for h in handles {
                let Some(p) = shares.points.get(h) else {
                    continue;
                };
                if p.exporter != vm {
                    let allowed =
                        (waiter.as_deref()).is_some_and(|w| policy.allows(&p.exporter_name, w));
                    if !allowed {
                        // The policy changed since WAIT_FENCES ran: not waited for.
                        continue;
                    }
                }
                match p.state {
                    PointState::Done => {}
                    PointState::Failed => failed.push(*h),
                    // One part: keep only the highest point per exporter timeline. A point of
                    // every timeline is an entry of its own (its parts are a flat list).
                    PointState::Pending => match p.parts.as_slice() {
                        [(timeline, fence)] => {
                            let entry = highest
                                .entry((p.exporter, *timeline))
                                .or_insert((*h, *fence));
                            if *fence > entry.1 {
                                *entry = (*h, *fence);
                            }
                        }
                        _ => whole.push(*h),
                    },
                }
            }
            failed.dedup();
            whole.sort_unstable();
            whole.dedup();
            let mut deps: Vec<u64> = highest.into_values().map(|(h, _)| h).collect();
            deps.extend(whole);
            if !deps.is_empty()
                && shares.waits.iter().filter(|w| w.waiter == vm).count() >= MAX_WAITS_PER_VM
            {
                return Err(Status::NoSpace);
            }
            shares.next_share_fence += 1;
            let fence = FenceId(SHARE_FENCE_BIT | shares.next_share_fence);
            let waiting = !deps.is_empty();
            if waiting {
                shares.waits.push(Wait {
                    waiter: vm,
                    fence,
                    deps,
                });
            }
            (client, fence, failed, waiting)
        };
        if !waiting {
            // Nothing to wait for: it signals through the VM's inbox, after this request parks.
            client.share_fence_done(fence);
        }
        Ok((fence, failed))
    }
}
