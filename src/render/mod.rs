//! The process's one renderer, rutabaga_gfx, on a thread of its own. Rutabaga (and virglrenderer
//! behind it) is not thread-safe and GL contexts belong to one thread, so each VM's device talks
//! to it through a cloneable `RenderHandle` that runs closures on that thread.

mod rutabaga;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use ::rutabaga_gfx::Rutabaga;

pub use self::rutabaga::RendererKind;

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
    jobs: mpsc::Sender<Job>,
    next_id: Arc<AtomicU32>,
}

impl RenderHandle {
    /// Builds the renderer on its own thread and returns a handle to it. The thread ends when the
    /// last handle is dropped.
    pub fn start(kind: RendererKind) -> Result<RenderHandle, StartError> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        thread::Builder::new()
            .name("renderer".into())
            .spawn(move || {
                let mut rutabaga = match rutabaga::build(kind) {
                    Ok(r) => {
                        let _ = ready_tx.send(Ok(()));
                        r
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = inbox.recv() {
                    job(&mut rutabaga);
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(RenderHandle {
                jobs,
                next_id: Arc::new(AtomicU32::new(1)),
            }),
            Ok(Err(e)) => Err(StartError::Rutabaga(e)),
            Err(_) => Err(StartError::Rutabaga(
                "renderer thread died while starting".into(),
            )),
        }
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

    fn fresh_id(&self) -> Option<u32> {
        // Ids are never reused, so a stale id held anywhere can never name a new resource.
        self.next_id
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |id| id.checked_add(1))
            .ok()
    }
}
