//! Each cause said once: an error of the engine either says its cause in its own text or returns
//! it from `source()`, never both, so a chain printed as `{:#}` (anyhow) or walked by
//! `pspace_actors::error_chain` names each thing once. Every error here is made through the
//! public API the way a user meets it (a missing file, a folder where a file should be).

use pspace_engine::generation_config::GenerationConfig;
use pspace_engine::gguf::GgufFile;
use pspace_engine::model::{Model, ModelConfig};
use pspace_engine::tokenizer::ChatTokenizer;
use std::error::Error;

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

/// No message of the chain contains a later one (the cause would be printed twice), and the
/// OS's own words for the fault (`want`) appear exactly once in the chain joined as `{:#}` would.
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

#[test]
fn the_engines_io_errors_say_their_cause_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing");
    let e = GgufFile::open(&missing.with_extension("gguf")).expect_err("GgufError::Open");
    says_each_thing_once(&e, "No such file or directory");

    let e = ModelConfig::from_hf_json(&missing.join("config.json")).expect_err("LoadError::Io");
    says_each_thing_once(&e, "No such file or directory");

    let e = ChatTokenizer::from_hf_dir(&missing).expect_err("TokenizerError::Io");
    says_each_thing_once(&e, "No such file or directory");

    // A folder where generation_config.json should be: a read error other than "not found"
    // (a missing file is an empty config, not an error).
    std::fs::create_dir(dir.path().join("generation_config.json")).expect("mkdir");
    let e = GenerationConfig::from_hf_dir(dir.path()).expect_err("GenerationConfigError::Io");
    says_each_thing_once(&e, "Is a directory");

    // A model folder whose config.json is a folder: LoadError::Io through `Model::load`.
    let model = dir.path().join("model");
    std::fs::create_dir_all(model.join("config.json")).expect("mkdir");
    let e = Model::load(&model, tch::Device::Cpu, tch::Kind::Float)
        .err()
        .expect("Model::load of a folder whose config.json is a folder fails");
    says_each_thing_once(&e, "Is a directory");
}
