//! Runtimes of their own for long-lived work that should not wait behind HTTP requests.
//!
//! actix-web's HTTP workers are single-threaded runtimes: a task spawned from a handler runs on
//! that handler's thread, taking turns with every request the worker serves. Work that many
//! requests wait on (group commit, collaborative documents) runs here instead.

use std::future::Future;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// A multi-threaded runtime, stopped (without waiting for its tasks) when dropped.
pub struct Threads(Option<Runtime>);

impl Threads {
    /// Starts `threads` threads named `name` (0: one per core).
    pub fn start(name: &str, threads: usize) -> std::io::Result<Self> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let runtime = Builder::new_multi_thread().worker_threads(threads).thread_name(name).enable_all().build()?;
        Ok(Self(Some(runtime)))
    }

    /// Runs `task` on these threads.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.as_ref().expect("the runtime is only taken when dropped").spawn(task)
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
