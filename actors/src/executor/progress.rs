//! What a running stage reports and what it is told: a progress sink (bars, heartbeats) and a
//! cancellation flag. A leaf module, so stages depend on it and nothing here depends back on a
//! runner, a worker or a coordinator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where a stage reports how far it is: `done` of `total` units (steps, prompts, rows) of the
/// step named by `message`. Implementations must be cheap: stages call this often.
pub trait Progress {
    fn stage_progress(&mut self, message: &str, done: usize, total: usize);
}

/// A progress sink that drops everything (tests, tools).
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage_progress(&mut self, _message: &str, _done: usize, _total: usize) {}
}

/// Cooperative cancellation: set by whoever learns that the task's lease is gone (the heartbeat
/// thread, a shutdown); stages check it between units of work and before they upload outputs.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
