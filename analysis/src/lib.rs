//! pspace-analysis: the analyst's statistics, figures and report.
//!
//! Pure Rust (no libtorch): it reads activations and marker hits written by the engine and
//! actors, and writes `result.json`, figures and `report.md`.

pub mod behavior;
pub mod input;
pub mod stats;
