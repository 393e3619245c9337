//! Task keys, lease ids and the nonce generator.
//!
//! A lease id names one acquisition of one task, never a worker: (coordinator epoch, task,
//! attempt, nonce). A worker that was paused past its lease and wakes up still holds its old id,
//! which differs from its replacement's in attempt and nonce, so it can neither extend nor
//! complete the replacement's lease; after a coordinator restart the epoch differs as well.
//! The wire form is one compact string, `epoch:task:attempt:nonce` with the nonce as 16 hex
//! digits, e.g. `3:42/extract/base:2:9f3c5a01d2e4b786`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Globally unique key of a planned task: `<seed>/<kind>/<label>` or `all/summarise/seeds`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskRef(pub String);

impl TaskRef {
    pub fn new(key: impl Into<String>) -> TaskRef {
        TaskRef(key.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One acquisition of a task. Per acquisition, never per worker: a stale worker can neither
/// extend nor complete its replacement's lease.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseId {
    /// The coordinator's epoch (one per coordinator start); leases of older epochs are refused.
    pub epoch: u64,
    pub task: TaskRef,
    /// 1 for the first lease of the task, +1 for every later one (across epochs).
    pub attempt: u32,
    /// From the scheduler's seeded generator: tells apart two ids that agree on the rest.
    pub nonce: u64,
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{:016x}",
            self.epoch, self.task, self.attempt, self.nonce
        )
    }
}

/// A string that is not `epoch:task:attempt:nonce`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease id `{input}` is not `epoch:task:attempt:nonce` (e.g. `3:42/extract/base:2:9f3c5a01d2e4b786`): {reason}")]
pub struct ParseLeaseIdError {
    /// The offending input, cut to 80 characters.
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for LeaseId {
    type Err = ParseLeaseIdError;

    /// The epoch is everything before the first `:`, attempt and nonce the last two fields, and
    /// the task whatever lies between, so any task key (colons included) round-trips.
    fn from_str(s: &str) -> Result<LeaseId, ParseLeaseIdError> {
        let fail = |reason| ParseLeaseIdError {
            input: s.chars().take(80).collect(),
            reason,
        };
        let (epoch, rest) = s.split_once(':').ok_or_else(|| fail("no `:` separator"))?;
        let mut tail = rest.rsplitn(3, ':');
        let (nonce, attempt, task) = match (tail.next(), tail.next(), tail.next()) {
            (Some(n), Some(a), Some(t)) => (n, a, t),
            _ => return Err(fail("expected four `:`-separated fields")),
        };
        let epoch = decimal(epoch).ok_or_else(|| fail("the epoch is not a decimal u64"))?;
        let attempt = decimal(attempt)
            .and_then(|a| u32::try_from(a).ok())
            .ok_or_else(|| fail("the attempt is not a decimal u32"))?;
        if nonce.len() != 16
            || !nonce
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(fail("the nonce is not 16 lowercase hex digits"));
        }
        let nonce = u64::from_str_radix(nonce, 16).map_err(|_| fail("the nonce is not hex"))?;
        Ok(LeaseId {
            epoch,
            task: TaskRef(task.to_string()),
            attempt,
            nonce,
        })
    }
}

/// Digits only: `u64::from_str` also takes a leading `+`, which would break the round trip.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
/// OOPSLA 2014; the constants of Vigna's reference implementation): a deterministic nonce
/// stream, so tests are reproducible; the coordinator seeds it from the time.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
