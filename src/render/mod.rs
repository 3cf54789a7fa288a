//! The process's one renderer, rutabaga_gfx, on a thread of its own. Rutabaga (and virglrenderer
//! behind it) is not thread-safe and GL contexts belong to one thread, so each VM's device talks
//! to it through a cloneable `RenderHandle` that runs closures on that thread.

mod maps;
mod rutabaga;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use ::rutabaga_gfx::Rutabaga;
use log::warn;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

pub use self::rutabaga::RendererKind;
use crate::hub::fences::FenceRouter;

type Job = Box<dyn FnOnce(&mut Rutabaga) + Send>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the renderer: {0}")]
    Rutabaga(String),
    #[error("cannot spawn the renderer thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The 2D renderer's resource ids, shared by every VM of the daemon. Freed ids are handed out
/// again (oldest first), so no VM can use them up for the others by creating and freeing
/// resources in a loop; an id is freed only once the renderer let go of its resource, and VMs
/// name resources by their own ids, so a reused id is never reachable through a stale name.
#[derive(Default)]
pub(crate) struct IdPool {
    state: std::sync::Mutex<(u32, std::collections::VecDeque<u32>)>,
}

impl IdPool {
    /// A free id (ids start at 1); None only when every id is in use.
    fn alloc(&self) -> Option<u32> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = st.1.pop_front() {
            return Some(id);
        }
        let id = st.0.checked_add(1)?;
        st.0 = id;
        Some(id)
    }

    fn release(&self, id: u32) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.1.push_back(id);
    }
}

#[derive(Clone)]
pub struct RenderHandle {
    kind: RendererKind,
    jobs: mpsc::Sender<Job>,
    resource_ids: Arc<IdPool>,
    next_ctx: Arc<AtomicU32>,
    fences: Arc<FenceRouter>,
}

impl RenderHandle {
    /// Builds the renderer on its own thread and returns a handle to it. The thread ends when the
    /// last handle is dropped.
    pub fn start(kind: RendererKind) -> Result<RenderHandle, StartError> {
        let fences = Arc::new(FenceRouter::default());
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let router = fences.clone();
        thread::Builder::new()
            .name("renderer".into())
            .spawn(move || {
                let mut rutabaga = match rutabaga::build(kind, router) {
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
            resource_ids: Arc::new(IdPool::default()),
            next_ctx: Arc::new(AtomicU32::new(1)),
            fences,
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

#[cfg(test)]
mod tests {
    use super::IdPool;

    #[test]
    fn freed_ids_come_back_so_the_space_never_runs_out() {
        let pool = IdPool::default();
        assert_eq!(
            (pool.alloc(), pool.alloc(), pool.alloc()),
            (Some(1), Some(2), Some(3))
        );
        pool.release(2);
        pool.release(1);
        assert_eq!(
            (pool.alloc(), pool.alloc(), pool.alloc()),
            (Some(2), Some(1), Some(4))
        );
        // Near the end of the id space: freed ids still come back.
        pool.state.lock().unwrap().0 = u32::MAX - 1;
        assert_eq!(pool.alloc(), Some(u32::MAX));
        assert_eq!(pool.alloc(), None);
        pool.release(7);
        assert_eq!(pool.alloc(), Some(7));
    }
}
