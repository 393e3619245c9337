//! Statistical building blocks shared by every test of the analysis.

pub mod correlation;
pub mod multiple;
pub mod permutation;
pub mod rng;
