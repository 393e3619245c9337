//! Statistical building blocks shared by every test of the analysis.

pub mod blocks;
pub mod correlation;
pub mod distributions;
pub mod multiple;
pub mod permutation;
pub mod rng;
