//! pspace-analysis: the analyst's statistics, figures and report.
//!
//! Pure Rust (no libtorch): it reads activations and marker hits written by the engine and
//! actors, and writes `result.json`, figures and `report.md`.

pub mod behavior;
pub mod families;
pub mod geometry;
pub mod input;
pub mod json_nan;
pub mod pipeline;
pub mod report;
pub mod result;
pub mod run_geometry;
pub mod seeds;
pub mod stats;
pub mod training;
pub mod verdict;
