//! Seeded random streams: every random draw of the analysis comes from a ChaCha20 stream whose
//! seed is derived from the experiment seed and the name of the test that draws it.
//!
//! The derivation is SHA-256 (not `std::hash`, whose output may change between Rust releases),
//! so a result file names everything needed to redraw exactly the same permutations on any
//! machine, and two tests never share a stream by accident.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};

/// The 32-byte ChaCha seed of the stream called `name` under `experiment_seed`.
pub fn stream_seed(experiment_seed: u64, name: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"pspace-analysis/rng/v1\0");
    hasher.update(experiment_seed.to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.finalize().into()
}

/// The random stream called `name` under `experiment_seed`.
pub fn seeded_rng(experiment_seed: u64, name: &str) -> ChaCha20Rng {
    ChaCha20Rng::from_seed(stream_seed(experiment_seed, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn the_same_name_and_seed_give_the_same_stream() {
        let mut first = seeded_rng(42, "H2");
        let mut second = seeded_rng(42, "H2");
        let a: Vec<u64> = (0..8).map(|_| first.gen()).collect();
        let b: Vec<u64> = (0..8).map(|_| second.gen()).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn names_and_seeds_separate_streams() {
        assert_ne!(stream_seed(42, "H2"), stream_seed(42, "H3"));
        assert_ne!(stream_seed(42, "H2"), stream_seed(43, "H2"));
    }

    #[test]
    fn the_derivation_is_pinned() {
        // A change of derivation would silently change every published Monte Carlo p-value;
        // the expected digest was computed independently with Python's hashlib.
        let seed = stream_seed(42, "behavior/H2/reference");
        let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "8d6d9da594f1f029bd7332e898147633e64c0ac0d241a033a241ecbfdca80cf9"
        );
    }
}
