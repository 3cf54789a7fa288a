//! Fenced responses: parked until the renderer signals their fence, then answered in timeline
//! order from the queue worker (the only thread that touches the control ring). The fence logic
//! itself is in `crate::fences`; this is how answers reach the ring.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use vhost_user_backend::VringRwLock;

use super::backend::VmBackend;
use super::queue::Ring;
use crate::fences::Timeline;
use crate::ids::{FenceId, GuestCtxId};
use crate::sync::lock;

/// A descriptor chain's head and the bytes written into it, to be put on the used ring.
pub type Answer = (u16, u32);

impl VmBackend {
    pub(super) fn park(&self, timeline: Timeline, fence: FenceId, answer: Answer) {
        lock(&self.parked).park(timeline, fence, (answer, Instant::now()));
        self.record
            .counters
            .fences_pending
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Answers every parked response whose fence (or a later one on its timeline) has signalled.
    pub(super) fn answer_signalled(&self, control: &VringRwLock) -> io::Result<()> {
        let signalled = self.fence_inbox.take();
        if signalled.is_empty() {
            return Ok(());
        }
        let (retired, ready): (Vec<FenceId>, Vec<(Answer, Instant)>) = {
            let mut parked = lock(&self.parked);
            signalled
                .into_iter()
                .flat_map(|id| parked.retire_with_ids(id))
                .unzip()
        };
        let latency = &self.record.counters.fence_latency.0;
        for (_, parked_at) in &ready {
            latency.observe(parked_at.elapsed().as_secs_f64());
        }
        let ready: Vec<Answer> = ready.into_iter().map(|(answer, _)| answer).collect();
        let n = ready.len() as u64;
        self.record
            .counters
            .fences_signalled
            .fetch_add(n, Ordering::Relaxed);
        self.unpark(n);
        let answered = self.answer(control, &ready);
        // Other VMs waiting for these fences may go on now that this one saw them.
        if let Some(hub) = self.shares() {
            hub.fences_done(self.record.id, &retired);
        }
        answered
    }

    /// A destroyed context's fences will never signal: answer what waited on them now.
    pub(super) fn answer_closed_context(
        &self,
        control: &VringRwLock,
        ctx: GuestCtxId,
    ) -> io::Result<()> {
        let ready: Vec<Answer> = (lock(&self.parked).drain_context(ctx).into_iter())
            .map(|(answer, _)| answer)
            .collect();
        self.unpark(ready.len() as u64);
        if let Some(hub) = self.shares() {
            hub.fences_dropped(self.record.id, Some(ctx));
        }
        self.answer(control, &ready)
    }

    /// Drops every parked answer (the rings are being set up anew, or the VM is gone).
    pub(super) fn drop_parked(&self) {
        let dropped = lock(&self.parked).drain_all();
        self.unpark(dropped.len() as u64);
    }

    fn unpark(&self, n: u64) {
        let pending = &self.record.counters.fences_pending;
        let _ = pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
            Some(p.saturating_sub(n))
        });
    }

    /// Puts answers on the used ring; while the queues are stopped they wait (`held`), since
    /// the driver's rings may be gone or replaced by the time they would land.
    pub(super) fn answer(&self, control: &VringRwLock, ready: &[Answer]) -> io::Result<()> {
        if ready.is_empty() {
            return Ok(());
        }
        if self.is_asleep() {
            lock(&self.held).extend_from_slice(ready);
            self.poll_for_resume();
            return Ok(());
        }
        let mem = self.memory();
        let ring = Ring {
            vring: control,
            mem: mem.as_ref(),
        };
        // Heads were checked when the requests were taken; answer every one whatever happens.
        let mut failed = None;
        for &(head, len) in ready {
            if let Err(e) = ring.add_used(head, len) {
                failed = Some(e);
            }
        }
        ring.notify()?;
        failed.map_or(Ok(()), Err)
    }
}
