//! Statistical building blocks shared by every test of the analysis.

pub mod multiple;
