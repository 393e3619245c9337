//! Each cause said once: an error of the analysis either says its cause in its own text or
//! returns it from `source()`, never both, so a chain printed as `{:#}` (anyhow, in `pspace
//! analyze`) names each thing once. Errors a user meets through the public API (a missing or
//! broken input file) are made that way; the rest (write failures, a degenerate LDA fit) are
//! built from their variants.

use pspace_analysis::geometry::{activations, lda::LdaError, GeometryError};
use pspace_analysis::input::Personas;
use pspace_analysis::pipeline::PipelineError;
use pspace_analysis::report::ReportError;
use pspace_analysis::result::{AnalysisResult, ResultError};
use pspace_analysis::seeds::SeedError;
use std::error::Error;
use std::path::PathBuf;

/// Each message of `error`'s chain: its text, then each `source()`'s.
fn chain(error: &dyn Error) -> Vec<String> {
    let mut out = vec![error.to_string()];
    let mut next = error.source();
    while let Some(e) = next {
        out.push(e.to_string());
        next = e.source();
    }
    out
}

/// No message of the chain contains a later one, and the cause's own words (`want`) appear
/// exactly once in the chain joined as `{:#}` joins it.
fn says_each_thing_once(error: &dyn Error, want: &str) {
    let c = chain(error);
    for (i, outer) in c.iter().enumerate() {
        for inner in &c[i + 1..] {
            assert!(!outer.contains(inner.as_str()), "said twice: {c:?}");
        }
    }
    let joined = c.join(": ");
    assert_eq!(joined.matches(want).count(), 1, "{want:?} in {joined:?}");
}

const NOT_FOUND: &str = "No such file or directory";

#[test]
fn input_and_result_files_say_their_cause_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.json");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{").expect("write");

    let e = Personas::load(&missing).expect_err("InputError::Read");
    says_each_thing_once(&e, NOT_FOUND);
    says_each_thing_once(&PipelineError::from(e), NOT_FOUND);
    let e = Personas::load(&broken).expect_err("InputError::Json");
    says_each_thing_once(&e, "EOF while parsing");

    let e = AnalysisResult::read(&missing).expect_err("ResultError::Read");
    says_each_thing_once(&e, NOT_FOUND);
    let e = AnalysisResult::read(&broken).expect_err("ResultError::Parse");
    says_each_thing_once(&e, "EOF while parsing");

    let e = activations::read(&missing).expect_err("ActivationsError::Read");
    says_each_thing_once(&e, NOT_FOUND);
    // The safetensors error says itself in the text, and is not a `source()` too.
    let e = activations::read(&broken).expect_err("ActivationsError::Format");
    let c = chain(&e);
    assert!(c.len() == 1 && c[0].contains("not a safetensors file: "), "{c:?}");
}

#[test]
fn write_and_fit_errors_say_their_cause_once() {
    let io = || std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
    let path = || PathBuf::from("/runs/x/analysis/result.json");
    let errors: Vec<Box<dyn Error>> = vec![
        Box::new(ResultError::Write {
            path: path(),
            error: io(),
        }),
        Box::new(SeedError::Write {
            path: path(),
            error: io(),
        }),
        Box::new(ReportError::Write {
            path: path(),
            error: io(),
        }),
        Box::new(PipelineError::Fingerprint {
            path: path(),
            error: io(),
        }),
        Box::new(PipelineError::from(ReportError::Write {
            path: path(),
            error: io(),
        })),
    ];
    for e in &errors {
        says_each_thing_once(e.as_ref(), "permission denied");
    }
    let lda = GeometryError::Lda {
        method: "A".into(),
        layer: 20,
        error: LdaError::NotPositiveDefinite { dimension: 8 },
    };
    says_each_thing_once(&lda, "not positive definite");
}
