//! pspace-actors: what turns an experiment spec into work, and the actors that do it.
//!
//! A spec expands into tasks; a task is a value whose id is a stable hash of its kind, its
//! parameters (with the digests of the files it reads) and the content hashes of its inputs.
//! Every random draw of a task is seeded from (experiment seed, task parameters), so a rerun
//! draws the same numbers on any machine, whatever floats its upstream tasks produced.

pub mod activations;
pub mod coordinator;
pub mod coupling;
pub mod data;
pub mod executor;
pub mod fingerprint;
pub mod plan;
pub mod scheduler;
pub mod spec;
pub mod store;
pub mod task;
pub mod training;
pub mod transport;
pub mod worker;

/// An error's text followed by each cause's that it does not already contain, joined by `: `:
/// what a failed task reports (a failure travels as text from worker to coordinator).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{ExecError, StageError};
    use crate::store::StoreError;
    use std::error::Error;
    use std::path::{Path, PathBuf};

    /// Each message of `error`'s chain (its text, then each `source()`).
    fn chain(error: &dyn Error) -> Vec<String> {
        let mut out = vec![error.to_string()];
        let mut next = error.source();
        while let Some(e) = next {
            out.push(e.to_string());
            next = e.source();
        }
        out
    }

    fn io() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")
    }

    /// Issue 10 item 2: an error chain says each thing once. A variant that said its cause in
    /// its text and also returned it as `source()` (`{source}` with a `source` field, or
    /// `"model: {0}"` with `#[from]`) printed the cause twice under `{:#}`, or three times when
    /// the cause did the same.
    #[test]
    fn an_error_chain_says_each_thing_once() {
        let p = || PathBuf::from("/data/x.json");
        let json = || serde_json::from_str::<u8>("x").unwrap_err();
        let errors: Vec<Box<dyn Error>> = vec![
            Box::new(StageError::io(Path::new("/scratch/a"), io())),
            Box::new(StageError::from(pspace_engine::model::LoadError::Io {
                path: p(),
                error: io(),
            })),
            Box::new(StageError::from(pspace_engine::tokenizer::TokenizerError::Io {
                path: p(),
                error: io(),
            })),
            Box::new(ExecError::from(StageError::io(Path::new("/scratch/a"), io()))),
            Box::new(StoreError::BadManifest {
                key: "k".into(),
                cause: json(),
            }),
            Box::new(StoreError::LocalFile {
                op: "read",
                path: p(),
                cause: io(),
            }),
            Box::new(pspace_engine::train::RunError::Log {
                path: p(),
                error: io(),
            }),
            Box::new(pspace_engine::train::RunError::Stopped {
                error: pspace_engine::train::TrainError::Torch {
                    step: 3,
                    error: tch::TchError::Torch("CUDA out of memory".into()),
                },
                adapter: p(),
                log: p(),
            }),
            Box::new(pspace_engine::peft::PeftError::Io {
                path: p(),
                error: io(),
            }),
            Box::new(pspace_engine::train::data::DataError::Io {
                path: p(),
                error: io(),
            }),
        ];
        for e in &errors {
            let c = chain(e.as_ref());
            for (i, outer) in c.iter().enumerate() {
                for inner in &c[i + 1..] {
                    assert!(!outer.contains(inner.as_str()), "said twice: {c:?}");
                }
            }
        }
        assert_eq!(
            error_chain(&StageError::from(pspace_engine::model::LoadError::Io {
                path: p(),
                error: io(),
            })),
            "model: cannot read /data/x.json: no such file"
        );
    }
}
