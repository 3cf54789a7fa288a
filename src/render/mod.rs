//! Renderers. The 2D one (`Soft2d`) is shared by the daemon's 2D VMs and called in place from each
//! VM's queue thread. A 3D VM's renderer lives in a render worker process of its own (`worker`),
//! reached from the broker through a `RemoteRenderer`. Inside the worker, rutabaga_gfx runs on a
//! thread of its own: rutabaga (and virglrenderer behind it) is not thread-safe and GL contexts
//! belong to one thread, so the worker talks to it through a `RenderHandle` that runs closures
//! on that thread.

pub mod channel;
pub(crate) mod fake;
mod maps;
pub mod remote;
mod rutabaga;
mod soft2d;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread;

use ::rutabaga_gfx::Rutabaga;
use log::warn;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

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

/// A renderer the devices of several VMs share.
pub type SharedRenderer = Arc<dyn Renderer + Sync>;

/// Starts a renderer of `kind` (not `Auto`: see `RendererKind::candidates`) for one VM, reporting
/// its fences to `sink`. (The 2D renderer reports none: its fences are done at creation.)
pub fn start(kind: RendererKind, sink: Arc<dyn FenceSink>) -> Result<SharedRenderer, StartError> {
    match kind {
        RendererKind::TwoD => Ok(Arc::new(Soft2d::default())),
        RendererKind::Fake => Ok(Arc::new(fake::Fake::new(sink))),
        _ => Ok(Arc::new(RenderHandle::start(kind, sink)?)),
    }
}

type Job = Box<dyn FnOnce(&mut Rutabaga) + Send>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the renderer: {0}")]
    Rutabaga(String),
    #[error("cannot spawn the renderer thread: {0}")]
    Thread(#[from] std::io::Error),
}

#[derive(Clone)]
pub struct RenderHandle {
    kind: RendererKind,
    jobs: mpsc::Sender<Job>,
    next_ctx: Arc<AtomicU32>,
    next_fence: Arc<AtomicU64>,
}

impl RenderHandle {
    /// Builds the renderer on its own thread and returns a handle to it. The thread ends when the
    /// last handle is dropped.
    pub fn start(kind: RendererKind, sink: Arc<dyn FenceSink>) -> Result<RenderHandle, StartError> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        thread::Builder::new()
            .name("renderer".into())
            .spawn(move || {
                let mut rutabaga = match rutabaga::build(kind, sink) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(rutabaga.poll_descriptor()));
                while let Ok(job) = inbox.recv() {
                    job(&mut rutabaga);
                }
            })?;
        let poll_fd = match ready_rx.recv() {
            Ok(Ok(fd)) => fd,
            Ok(Err(e)) => return Err(StartError::Rutabaga(e)),
            Err(_) => {
                return Err(StartError::Rutabaga(
                    "renderer thread died while starting".into(),
                ))
            }
        };
        let handle = RenderHandle {
            kind,
            jobs,
            next_ctx: Arc::new(AtomicU32::new(1)),
            next_fence: Arc::new(AtomicU64::new(0)),
        };
        if let Some(fd) = poll_fd {
            handle.watch_poll_fd(fd)?;
        }
        Ok(handle)
    }

    /// Some renderers signal work through a descriptor: when it is readable, let the renderer
    /// thread poll, and wait for that before looking again (the descriptor stays readable until then).
    fn watch_poll_fd(&self, fd: ::rutabaga_gfx::RutabagaDescriptor) -> std::io::Result<()> {
        use std::os::fd::{AsFd, AsRawFd};
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            fd.as_fd().as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )?;
        let handle = self.clone();
        thread::Builder::new()
            .name("renderer-poll".into())
            .spawn(move || {
                let _keep_open = fd;
                let mut events = [EpollEvent::default(); 1];
                loop {
                    match epoll.wait(-1, &mut events) {
                        Ok(_) => {
                            if handle.call(|r| r.event_poll()).is_none() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            warn!("renderer poll: {e}");
                            return;
                        }
                    }
                }
            })?;
        Ok(())
    }

    /// Runs `f` on the renderer thread and returns its result; None if that thread is gone.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Rutabaga) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |r| {
                let _ = tx.send(f(r));
            }))
            .ok()?;
        rx.recv().ok()
    }

    /// Ids are never reused, so a stale id held anywhere can never name a new object.
    fn fresh(counter: &AtomicU32) -> Option<u32> {
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |id| id.checked_add(1))
            .ok()
    }
}
