//! Fenced responses: parked until the renderer signals their fence, then answered in timeline
//! order from the queue worker (the only thread that touches the control ring).

use std::io;
use std::sync::Mutex;

use vhost_user_backend::VringRwLock;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{lock, VmBackend};
use super::queue::Ring;
use crate::device::fences::Timeline;
use crate::device::FenceSink;

/// A descriptor chain's head and the bytes written into it, to be put on the used ring.
pub type Answer = (u16, u32);

/// Where the renderer drops this VM's signalled fences; the eventfd wakes the queue worker.
pub struct FenceInbox {
    signalled: Mutex<Vec<u64>>,
    pub event: EventFd,
}

impl FenceInbox {
    pub fn new() -> io::Result<Self> {
        Ok(FenceInbox {
            signalled: Mutex::new(Vec::new()),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.signalled))
    }
}

impl FenceSink for FenceInbox {
    fn signalled(&self, fence: u64) {
        lock(&self.signalled).push(fence);
        let _ = self.event.write(1);
    }
}

impl VmBackend {
    pub(super) fn park(&self, timeline: Timeline, fence: u64, answer: Answer) {
        lock(&self.parked).park(timeline, fence, answer);
    }

    /// Answers every parked response whose fence (or a later one on its timeline) has signalled.
    pub(super) fn answer_signalled(&self, control: &VringRwLock) -> io::Result<()> {
        let _ = self.fence_inbox.event.read();
        let signalled = self.fence_inbox.take();
        if signalled.is_empty() {
            return Ok(());
        }
        let ready: Vec<Answer> = {
            let mut parked = lock(&self.parked);
            signalled
                .into_iter()
                .flat_map(|id| parked.retire_through(id))
                .collect()
        };
        self.answer(control, &ready)
    }

    /// A destroyed context's fences will never signal: answer what waited on them now.
    pub(super) fn answer_closed_context(&self, control: &VringRwLock, ctx: u32) -> io::Result<()> {
        let ready = lock(&self.parked).drain_context(ctx);
        self.answer(control, &ready)
    }

    fn answer(&self, control: &VringRwLock, ready: &[Answer]) -> io::Result<()> {
        if ready.is_empty() {
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
