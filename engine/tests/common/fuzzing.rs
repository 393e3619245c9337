//! The machinery the two stable-Rust fuzzers share (engine/tests/fuzz.rs for model, tokenizer
//! and training files; actors/tests/spec_fuzz.rs for the spec TOML), included by both with
//! `#[path]` so that neither repeats it and no crate is needed for test code: the capped
//! allocator, the seeded generator, the byte-level mutations every format gets, and the loop
//! that runs the seeds, then mutations, under `catch_unwind` and saves each input that panics.
//!
//! Settings from the environment: PSPACE_FUZZ_SECS (seconds per target, default 12),
//! PSPACE_FUZZ_SEED (default 0), PSPACE_FUZZ_TRACE=1 (write each input to
//! target/fuzz-current-<target> before running it, to find one that aborts the process).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::time::{Duration, Instant};

/// The system allocator, refusing single allocations above 1 GiB (the process then aborts with
/// "memory allocation of N bytes failed"): no input file may size one, so an allocation sized
/// by an unchecked header field is a failure too.
pub struct Capped;

const ALLOCATION_CAP: usize = 1 << 30;

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_CAP {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_CAP {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOCATION_CAP {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

pub fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A format-specific byte change a fuzzer adds to the common ones of [`mutate_bytes`].
pub type ByteChange = fn(&mut Vec<u8>, &mut ChaCha8Rng);

/// A position inside `data` (0 when it is empty).
pub fn at(data: &[u8], rng: &mut ChaCha8Rng) -> usize {
    if data.is_empty() {
        0
    } else {
        rng.gen_range(0..data.len())
    }
}

/// One byte-level change: one of the format's own changes (`own`, each as likely as a common
/// one), or a bit flip, deletion, duplication, truncation or splicing with another seed.
pub fn mutate_bytes(data: &mut Vec<u8>, seeds: &[Vec<u8>], rng: &mut ChaCha8Rng, own: &[ByteChange]) {
    let len = data.len();
    match rng.gen_range(0..5 + own.len()) {
        0 if len > 0 => {
            let i = at(data, rng);
            data[i] ^= 1 << rng.gen_range(0..8);
        }
        1 if len > 0 => {
            let i = at(data, rng);
            let n = rng.gen_range(1..=(len - i).min(64));
            data.drain(i..i + n);
        }
        2 if len > 0 => {
            let i = at(data, rng);
            let n = rng.gen_range(1..=(len - i).min(200));
            let chunk = data[i..i + n].to_vec();
            let j = at(data, rng);
            data.splice(j..j, chunk);
        }
        3 if len > 0 => data.truncate(at(data, rng)),
        k if (4..4 + own.len()).contains(&k) => own[k - 4](data, rng),
        _ => {
            let other = &seeds[rng.gen_range(0..seeds.len())];
            if !other.is_empty() && len > 0 {
                let (i, j) = (at(data, rng), rng.gen_range(0..other.len()));
                data.truncate(i);
                data.extend_from_slice(&other[j..]);
            }
        }
    }
}

/// Runs `run` on each seed, then on `mutate` of a random seed until PSPACE_FUZZ_SECS pass.
/// A panic is caught and its input saved as `<target_dir>/fuzz-crashes/<target>-<n>.<ext>`.
/// Prints one line with the count of inputs and returns the saved crash files.
pub fn fuzz_loop(
    target: &str,
    ext: &str,
    seeds: &[Vec<u8>],
    target_dir: &Path,
    mut mutate: impl FnMut(&[u8], &mut ChaCha8Rng) -> Vec<u8>,
    mut run: impl FnMut(&[u8]),
) -> Vec<String> {
    let budget = Duration::from_secs(env_u64("PSPACE_FUZZ_SECS", 12));
    let mut rng = ChaCha8Rng::seed_from_u64(
        env_u64("PSPACE_FUZZ_SEED", 0) ^ target.bytes().fold(0u64, |h, b| h.wrapping_mul(31) ^ b as u64),
    );
    let trace = std::env::var("PSPACE_FUZZ_TRACE").is_ok_and(|v| v == "1");
    let start = Instant::now();
    let (mut tried, mut crashes) = (0usize, Vec::new());
    while tried < seeds.len() || start.elapsed() < budget {
        let input = if tried < seeds.len() {
            seeds[tried].clone()
        } else {
            let seed = &seeds[rng.gen_range(0..seeds.len())];
            mutate(seed, &mut rng)
        };
        if trace {
            let _ = std::fs::write(target_dir.join(format!("fuzz-current-{target}")), &input);
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&input)));
        if result.is_err() {
            let dir = target_dir.join("fuzz-crashes");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{target}-{tried}.{ext}"));
            let _ = std::fs::write(&file, &input);
            crashes.push(file.display().to_string());
        }
        tried += 1;
    }
    eprintln!(
        "fuzz {target}: {tried} inputs in {:.1} s, {} crashes",
        start.elapsed().as_secs_f64(),
        crashes.len()
    );
    crashes
}
