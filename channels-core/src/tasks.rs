//! The tasks an application's connections run in, and the signal that ends them: what a
//! graceful shutdown cancels and then waits for.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where connections' tasks are spawned, so that shutdown can tell them to end and wait for
/// them. Cheap to clone; every clone is the same set of tasks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Tasks {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Spawns a connection's task so that shutdown can wait for it.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    /// Cancelled when shutdown begins: every connection's task watches it.
    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Tells every task to end and waits for them up to `timeout`; returns how many were still
    /// running when it gave up.
    pub(crate) async fn shut_down(&self, timeout: Duration) -> usize {
        self.shutdown.cancel();
        self.tracker.close();
        let waited = tokio::time::timeout(timeout, self.tracker.wait()).await;
        if waited.is_err() { self.tracker.len() } else { 0 }
    }
}
