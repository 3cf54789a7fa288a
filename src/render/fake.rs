//! A scripted 3D renderer for tests of the worker machinery without a GPU stack: resources are
//! byte buffers, and command streams are scripts. Never a stand-in for evidence that rendering
//! works: that is what virglrenderer in the testbed is for.
//!
//! Script lines (one per line of a SUBMIT_3D stream):
//! - `delay MS`: the next fence created on this context signals MS milliseconds later. Fences
//!   of one ring complete in order (as a GPU ring does); other rings and contexts overtake them.
//! - `early`: the next fence created on this context signals while it is made, ahead of the
//!   earlier fences of its ring (a renderer that breaks ring order);
//! - `crash`: the process dies at once (SIGKILL: no core dump);
//! - `hang`: the renderer stops answering, for good;
//! - `spurious N`: N fence signals nobody asked for (a worker gone rogue).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vgpud_protocol::{Rect, ResourceCreate3d, Transfer3d, BLOB_MEM_GUEST};

use crate::device::memory::HostRange;
use crate::device::{BlobArgs, CapsetInfo, ExportedBlob, RenderError, Renderer};
use crate::fences::{Fence, FenceSink};
use crate::ids::{FenceId, RendererCtxId as Ctx, RendererResId as Res};
use crate::sync::lock;

/// A format the fake does not know: RESOURCE_CREATE_3D with it is refused, as a renderer
/// refuses what it cannot make (the device cannot tell beforehand).
pub const UNKNOWN_FORMAT: u32 = u32::MAX;

/// The capset the fake offers, so that the device offers 3D: VIRGL's id.
const CAPSET: CapsetInfo = CapsetInfo {
    id: 1,
    max_version: 1,
    max_size: 16,
};

#[derive(Default)]
struct Resource {
    bytes: Vec<u8>,
    backing: Vec<HostRange>,
}

type Timer = (Instant, FenceId);

/// A context's next fence: its delay in ms, or signalled while it is made (`early`).
#[derive(Default)]
struct NextFence {
    delay: u64,
    early: bool,
}

pub struct Fake {
    resources: Mutex<HashMap<Res, Resource>>,
    /// What each context's next fence does.
    contexts: Mutex<HashMap<Ctx, NextFence>>,
    /// When the last fence of each (context, ring) is due: a later one is never due earlier.
    rings: Mutex<HashMap<(Ctx, Option<u8>), Instant>>,
    next_fence: AtomicU64,
    next_ctx: AtomicU32,
    timers: Mutex<mpsc::Sender<Timer>>,
    /// Where fences are reported.
    sink: Arc<dyn FenceSink>,
}

fn rejected(why: &str) -> RenderError {
    RenderError::Rejected(why.to_string())
}

impl Fake {
    /// A fake renderer reporting its fences to `sink`.
    pub fn new(sink: Arc<dyn FenceSink>) -> Self {
        let (tx, rx) = mpsc::channel::<Timer>();
        let signals = sink.clone();
        // Signals each fence at its time, whatever order they were created in.
        let _ = thread::Builder::new()
            .name("fake-fences".into())
            .spawn(move || {
                let mut due: Vec<Timer> = Vec::new();
                loop {
                    let next = due.iter().map(|t| t.0).min();
                    let wait = next.map(|t| t.saturating_duration_since(Instant::now()));
                    let got = match wait {
                        Some(w) => rx.recv_timeout(w),
                        None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                    };
                    match got {
                        Ok(t) => due.push(t),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    let now = Instant::now();
                    let (ready, later): (Vec<Timer>, Vec<Timer>) =
                        due.drain(..).partition(|t| t.0 <= now);
                    due = later;
                    for (_, id) in ready {
                        signals.signalled(id);
                    }
                }
            });
        Fake {
            resources: Mutex::default(),
            contexts: Mutex::default(),
            rings: Mutex::default(),
            next_ctx: AtomicU32::new(1),
            next_fence: AtomicU64::new(0),
            timers: Mutex::new(tx),
            sink,
        }
    }
}

/// Copies between a resource's bytes and its guest pages: `to_host` reads the pages.
fn copy(res: &mut Resource, to_host: bool) {
    let total: usize = res.backing.iter().map(|r| r.len).sum();
    res.bytes.resize(total.min(64 << 20), 0);
    let mut at = 0;
    for r in &res.backing {
        let n = r.len.min(res.bytes.len().saturating_sub(at));
        // SAFETY: the device keeps attached ranges mapped until detach or unref, which take
        // the resource table's lock, held by our caller.
        let guest = unsafe { vm_memory::VolatileSlice::new(r.addr as *mut u8, n) };
        if let Some(bytes) = res.bytes.get_mut(at..at + n) {
            if to_host {
                guest.copy_to(bytes);
            } else {
                guest.copy_from(bytes);
            }
        }
        at += n;
    }
}

impl Fake {
    fn with<T>(&self, id: Res, f: impl FnOnce(&mut Resource) -> T) -> Result<T, RenderError> {
        lock(&self.resources)
            .get_mut(&id)
            .map(f)
            .ok_or_else(|| rejected("no such resource"))
    }
}

impl Renderer for Fake {
    fn resource_id_for(&self, guest_id: u32) -> Option<Res> {
        Some(Res(guest_id))
    }

    fn create_2d(&self, id: Res, _w: u32, _h: u32, _format: u32) -> Result<(), RenderError> {
        lock(&self.resources).insert(id, Resource::default());
        Ok(())
    }

    fn unref(&self, id: Res) {
        lock(&self.resources).remove(&id);
    }

    fn attach_backing(&self, id: Res, ranges: Vec<HostRange>) -> Result<(), RenderError> {
        self.with(id, |r| r.backing = ranges)
    }

    fn detach_backing(&self, id: Res) {
        let _ = self.with(id, |r| r.backing.clear());
    }

    fn transfer_to_host_2d(&self, id: Res, _w: u32, _r: Rect, _o: u64) -> Result<(), RenderError> {
        self.with(id, |r| copy(r, true))
    }

    fn read_pixels(&self, id: Res, rect: Rect) -> Result<Vec<u8>, RenderError> {
        let len = rect.width as usize * rect.height as usize * 4;
        self.with(id, |r| {
            let mut out = r.bytes.clone();
            out.resize(len, 0);
            out
        })
    }

    fn capsets(&self) -> Vec<CapsetInfo> {
        vec![CAPSET]
    }

    fn capset(&self, id: u32, _version: u32) -> Result<Vec<u8>, RenderError> {
        if id == CAPSET.id {
            Ok(vec![0xfa; CAPSET.max_size as usize])
        } else {
            Err(rejected("no such capset"))
        }
    }

    /// Ids are never reused (the broker allocates its own when the fake is in a worker; this
    /// serves the fake called in place, benches/workers.rs's peer).
    fn alloc_ctx_id(&self) -> Option<Ctx> {
        self.next_ctx
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |id| id.checked_add(1))
            .ok()
            .map(Ctx)
    }

    fn create_3d(&self, id: Res, args: &ResourceCreate3d) -> Result<(), RenderError> {
        if args.format == UNKNOWN_FORMAT {
            return Err(rejected("unknown format"));
        }
        lock(&self.resources).insert(id, Resource::default());
        Ok(())
    }

    fn create_context(&self, ctx: Ctx, _init: u32, _name: &str) -> Result<(), RenderError> {
        lock(&self.contexts).insert(ctx, NextFence::default());
        Ok(())
    }

    fn destroy_context(&self, ctx: Ctx) {
        lock(&self.contexts).remove(&ctx);
    }

    fn attach_to_context(&self, _ctx: Ctx, id: Res) -> Result<(), RenderError> {
        self.with(id, |_| ())
    }

    fn detach_from_context(&self, _ctx: Ctx, _id: Res) {}

    fn transfer_to_host_3d(&self, _ctx: Ctx, id: Res, _t: &Transfer3d) -> Result<(), RenderError> {
        self.with(id, |r| copy(r, true))
    }

    fn transfer_from_host_3d(
        &self,
        _ctx: Ctx,
        id: Res,
        _t: &Transfer3d,
    ) -> Result<(), RenderError> {
        self.with(id, |r| copy(r, false))
    }

    fn submit_3d(&self, ctx: Ctx, commands: Vec<u8>) -> Result<(), RenderError> {
        let script = String::from_utf8_lossy(&commands);
        for line in script.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("delay"), Some(ms)) => {
                    let ms = ms.parse().map_err(|_| rejected("bad delay"))?;
                    if let Some(next) = lock(&self.contexts).get_mut(&ctx) {
                        next.delay = ms;
                    }
                }
                (Some("early"), _) => {
                    if let Some(next) = lock(&self.contexts).get_mut(&ctx) {
                        next.early = true;
                    }
                }
                (Some("crash"), _) => {
                    // SAFETY: raise has no preconditions; SIGKILL ends the process here.
                    unsafe { libc::raise(libc::SIGKILL) };
                }
                (Some("hang"), _) => loop {
                    thread::park();
                },
                (Some("spurious"), Some(n)) => {
                    let n: u64 = n.parse().map_err(|_| rejected("bad count"))?;
                    (0..n).for_each(|i| self.sink.signalled(FenceId(u64::MAX - i)));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn create_blob(
        &self,
        ctx: Ctx,
        id: Res,
        args: BlobArgs,
        backing: Option<Vec<HostRange>>,
    ) -> Result<(), RenderError> {
        // As virglrenderer: a host blob is an object of one of the renderer's contexts.
        if args.mem != BLOB_MEM_GUEST && !lock(&self.contexts).contains_key(&ctx) {
            return Err(rejected("a host blob needs a context of the renderer"));
        }
        let res = Resource {
            bytes: Vec::new(),
            backing: backing.unwrap_or_default(),
        };
        lock(&self.resources).insert(id, res);
        Ok(())
    }

    fn map_blob(&self, _id: Res) -> Result<ExportedBlob, RenderError> {
        Err(rejected("the fake renderer has no host blobs"))
    }

    fn create_fence(&self, ctx: Ctx, ring: Option<u8>) -> Result<Fence, RenderError> {
        let id = FenceId(self.next_fence.fetch_add(1, Ordering::Relaxed) + 1);
        let next = lock(&self.contexts).get_mut(&ctx).map(std::mem::take);
        let NextFence { delay, early } = next.unwrap_or_default();
        if early {
            self.sink.signalled(id);
            return Ok(Fence::Pending(id));
        }
        let mut rings = lock(&self.rings);
        let last = rings.entry((ctx, ring)).or_insert_with(Instant::now);
        let due = (Instant::now() + Duration::from_millis(delay)).max(*last);
        *last = due;
        drop(rings);
        lock(&self.timers)
            .send((due, id))
            .map_err(|_| RenderError::Gone)?;
        Ok(Fence::Pending(id))
    }
}
