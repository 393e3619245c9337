//! Where the geometry's time goes: CPU seconds of each phase of each (method, layer) job, for
//! the speed benchmark (`examples/bench_geometry.rs`). The box the analysis runs on is often
//! shared, so wall time says little; a thread's own CPU time (the scheduler's run time in
//! /proc/thread-self/schedstat, in nanoseconds) does not grow when other processes compete.
//! Phases that fan out over rayon add up the CPU time of every piece on its own thread.

use serde::Serialize;

/// CPU seconds the calling thread has run, or None where the kernel does not say (not Linux,
/// or scheduler statistics compiled out): the timings are then absent, nothing else changes.
pub fn thread_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanoseconds: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(nanoseconds as f64 * 1e-9)
}

/// CPU seconds of the calling thread since `start` (a `thread_cpu_seconds` reading).
pub fn since(start: Option<f64>) -> Option<f64> {
    start.zip(thread_cpu_seconds()).map(|(a, b)| b - a)
}

/// CPU seconds of each phase of one (method, layer) job; None where unmeasured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseSeconds {
    /// Centroids, M1 and M2 of every checkpoint (observed values).
    pub observed: Option<f64>,
    /// Question-level bootstrap of M1 and M2.
    pub bootstrap: Option<f64>,
    /// M3's per-fold PCA bases and projections.
    pub pca: Option<f64>,
    /// M3's observed held-out accuracies.
    pub m3_observed: Option<f64>,
    /// M3's joint-shuffle null (summed over the threads it ran on).
    pub m3_null: Option<f64>,
    /// Bootstrap intervals of M3 from the per-question hit counts.
    pub m3_bootstrap: Option<f64>,
}

/// The phases of one job.
#[derive(Debug, Clone, Serialize)]
pub struct LayerTiming {
    pub method: String,
    pub layer: usize,
    pub cpu_seconds: PhaseSeconds,
}
