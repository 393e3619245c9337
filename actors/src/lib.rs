//! pspace-actors: what turns an experiment spec into work, and the actors that do it.
//!
//! A spec expands into tasks; a task is a value whose id is a stable hash of its kind, its
//! parameters and the content hashes of its inputs. Every random draw of a task is seeded from
//! (experiment seed, task id), so a rerun draws the same numbers on any machine.

pub mod activations;
pub mod coupling;
pub mod data;
pub mod local;
pub mod spec;
pub mod stages;
pub mod store;
pub mod task;
pub mod training;
