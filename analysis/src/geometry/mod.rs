//! Geometry of persona vectors: M1 (cosine collapse of persona centroids), M2 (projection on
//! the E0-anchored EM axis) and M3 (held-out shrinkage-LDA separability), each as a delta
//! against the base model with a `reference` and a `principled` p-value, plus question-level
//! bootstrap intervals. Reads the activations format of `activations.rs`.

pub mod activations;
pub mod lda;
pub mod m3;
pub mod paired;
pub mod pca;
