//! What a running stage reports and what it is told: a progress sink (bars, heartbeats) and a
//! cancellation flag. A leaf module, so stages depend on it and nothing here depends back on a
//! runner, a worker or a coordinator.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where a stage reports how far it is: `done` of `total` units (steps, prompts, rows) of the
/// step named by `message`. Implementations must be cheap: stages call this often (once per
/// training step, once per decoding step).
pub trait Progress {
    fn stage_progress(&mut self, message: &str, done: usize, total: usize);

    /// Whether the stage's engine loops (training steps, decoding steps) should go on: `Break`
    /// once the task is cancelled. The engine's progress callbacks return it.
    fn keep_going(&self) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// A progress sink that also carries the task's cancellation: what a stage's `progress` is, so
/// that a lost lease stops the engine's loops within a step instead of after the whole
/// training or generation (the worker's grace then ends the process only for work that does
/// not stop).
pub struct Cancellable<'a> {
    inner: &'a mut dyn Progress,
    cancel: &'a CancelToken,
}

impl<'a> Cancellable<'a> {
    pub fn new(inner: &'a mut dyn Progress, cancel: &'a CancelToken) -> Cancellable<'a> {
        Cancellable { inner, cancel }
    }
}

impl Progress for Cancellable<'_> {
    fn stage_progress(&mut self, message: &str, done: usize, total: usize) {
        self.inner.stage_progress(message, done, total);
    }

    fn keep_going(&self) -> ControlFlow<()> {
        if self.cancel.is_cancelled() {
            ControlFlow::Break(())
        } else {
            self.inner.keep_going()
        }
    }
}

/// A progress sink that drops everything (tests, tools).
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage_progress(&mut self, _message: &str, _done: usize, _total: usize) {}
}

/// Cooperative cancellation: set by whoever learns that the task's lease is gone (the heartbeat
/// thread, a shutdown); stages check it between units of work and before they upload outputs,
/// and the engine's training and decoding loops ask at every step (`Cancellable`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_token_stops_the_loops_and_progress_still_arrives() {
        struct Last(usize);
        impl Progress for Last {
            fn stage_progress(&mut self, _message: &str, done: usize, _total: usize) {
                self.0 = done;
            }
        }
        let cancel = CancelToken::new();
        let mut last = Last(0);
        {
            let mut p = Cancellable::new(&mut last, &cancel);
            p.stage_progress("step", 3, 9);
            assert_eq!(p.keep_going(), ControlFlow::Continue(()));
            cancel.cancel();
            assert_eq!(p.keep_going(), ControlFlow::Break(()));
        }
        assert_eq!(last.0, 3);
    }
}
