//! Renderers. The 2D one (`Soft2d`) is shared by the daemon's 2D VMs and called in place from each
//! VM's queue thread. A 3D VM's renderer lives in a render worker process of its own (`worker`),
//! reached from the broker through a `RemoteRenderer`. Inside the worker, rutabaga_gfx runs on
//! the worker's main thread, the one that reads the broker's requests: rutabaga (and
//! virglrenderer behind it) is not thread-safe and GL contexts belong to the thread that made
//! them, and calling it in place costs no thread hop per request. The `RenderHandle` refuses
//! calls from any other thread.

pub mod channel;
pub mod cpus;
pub(crate) mod fake;
mod maps;
pub mod remote;
mod rutabaga;
mod soft2d;
pub mod worker;

use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, ThreadId};

use ::rutabaga_gfx::Rutabaga;
use log::warn;

pub use self::rutabaga::RendererKind;
pub use self::soft2d::Soft2d;
use crate::device::Renderer;
use crate::fences::FenceSink;

/// The GPU render node 3D renderers use (--render-node), if one was named: set once at start,
/// by the broker for the workers it starts and by each worker for its renderer.
static RENDER_NODE: OnceLock<PathBuf> = OnceLock::new();

pub fn use_render_node(path: PathBuf) {
    let _ = RENDER_NODE.set(path);
}

fn render_node() -> Option<&'static Path> {
    RENDER_NODE.get().map(PathBuf::as_path)
}

/// The CPUs render workers run on (--worker-cpus), if named: set once at start by the broker.
static WORKER_CPUS: OnceLock<cpus::CpuList> = OnceLock::new();

pub fn use_worker_cpus(cpus: cpus::CpuList) {
    let _ = WORKER_CPUS.set(cpus);
}

fn worker_cpus() -> Option<&'static cpus::CpuList> {
    WORKER_CPUS.get()
}

/// A renderer the devices of several VMs share.
pub type SharedRenderer = Arc<dyn Renderer + Sync>;

/// Starts a renderer of `kind` (not `Auto`: see `RendererKind::candidates`) for one VM, reporting
/// its fences to `sink`. (The 2D renderer reports none: its fences are done at creation.) A 3D
/// renderer is bound to the calling thread; `Started::poll` says when to let it look at its work.
pub fn start(kind: RendererKind, sink: Arc<dyn FenceSink>) -> Result<Started, StartError> {
    match kind {
        RendererKind::TwoD => Ok(Started {
            renderer: Arc::new(Soft2d::default()),
            poll: None,
        }),
        RendererKind::Fake => Ok(Started {
            renderer: Arc::new(fake::Fake::new(sink)),
            poll: None,
        }),
        _ => {
            let (handle, fd) = RenderHandle::start(kind, sink)?;
            let poll = fd.map(|fd| Poll {
                fd,
                handle: handle.clone(),
            });
            Ok(Started {
                renderer: Arc::new(handle),
                poll,
            })
        }
    }
}

/// A started renderer, and what its owner must watch for it.
pub struct Started {
    pub renderer: SharedRenderer,
    pub poll: Option<Poll>,
}

/// A descriptor the renderer signals work through (virglrenderer's fence descriptor): when it is
/// readable, `run` lets the renderer poll (it stays readable until then).
pub struct Poll {
    pub fd: ::rutabaga_gfx::RutabagaDescriptor,
    handle: RenderHandle,
}

impl Poll {
    pub fn run(&self) {
        let _ = self.handle.call(|r| r.event_poll());
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the renderer: {0}")]
    Rutabaga(String),
}

#[derive(Clone)]
pub struct RenderHandle {
    kind: RendererKind,
    engine: Arc<InPlace>,
    next_ctx: Arc<AtomicU32>,
    next_fence: Arc<AtomicU64>,
}

/// Rutabaga on the thread that built it.
struct InPlace {
    owner: ThreadId,
    rutabaga: ManuallyDrop<RefCell<Rutabaga>>,
}

// SAFETY: the Rutabaga inside is only ever touched on `owner`, the thread that built it: `call`
// checks the calling thread first, and `drop` leaks it rather than tear it down elsewhere. So
// sharing the handle between threads never shares the renderer.
unsafe impl Send for InPlace {}
// SAFETY: as above.
unsafe impl Sync for InPlace {}

impl Drop for InPlace {
    fn drop(&mut self) {
        if thread::current().id() == self.owner {
            // SAFETY: dropped once, here, on its own thread; never used again.
            unsafe { ManuallyDrop::drop(&mut self.rutabaga) };
        }
    }
}

impl RenderHandle {
    /// Builds the renderer on the calling thread, which alone may use it from now on; returns
    /// the descriptor it signals work through, if any.
    pub fn start(
        kind: RendererKind,
        sink: Arc<dyn FenceSink>,
    ) -> Result<(RenderHandle, Option<::rutabaga_gfx::RutabagaDescriptor>), StartError> {
        let rutabaga = rutabaga::build(kind, sink).map_err(StartError::Rutabaga)?;
        let poll_fd = rutabaga.poll_descriptor();
        let handle = RenderHandle {
            kind,
            engine: Arc::new(InPlace {
                owner: thread::current().id(),
                rutabaga: ManuallyDrop::new(RefCell::new(rutabaga)),
            }),
            next_ctx: Arc::new(AtomicU32::new(1)),
            next_fence: Arc::new(AtomicU64::new(0)),
        };
        Ok((handle, poll_fd))
    }

    /// Runs `f` on the renderer; None when called from another thread than the renderer's (or
    /// from inside another call).
    pub fn call<T>(&self, f: impl FnOnce(&mut Rutabaga) -> T) -> Option<T> {
        if thread::current().id() != self.engine.owner {
            warn!("renderer called from a thread it does not belong to");
            return None;
        }
        let mut rutabaga = self.engine.rutabaga.try_borrow_mut().ok()?;
        Some(f(&mut rutabaga))
    }

    /// Ids are never reused, so a stale id held anywhere can never name a new object.
    fn fresh(counter: &AtomicU32) -> Option<u32> {
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |id| id.checked_add(1))
            .ok()
    }
}
