//! Where a model comes from, as `--model` and a spec's `experiment.model` name it: files (an HF
//! folder or a GGUF file) or `random:<preset>[@seed]` (random weights of a named architecture,
//! for benchmarks and dry runs; see `random`). Everything that loads a model or its tokenizer
//! goes through here, so a new source is one more arm, not a special case at every caller.

use super::random::{RandomModel, RandomNameError};
use super::{LoadError, Model, ModelConfig};
use crate::tokenizer::{ChatTokenizer, TokenizerError};
use std::fmt;
use std::path::{Path, PathBuf};
use tch::Kind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// An HF folder (config.json + safetensors + tokenizer files) or a GGUF file.
    Files(PathBuf),
    /// Random weights of a preset architecture with the tokenizer built into the binary.
    Random(RandomModel),
}

impl ModelSource {
    /// `random:<preset>[@seed]` is a random model (an unknown preset or a bad seed is an error);
    /// anything else is a path, which is not checked here.
    pub fn parse(name: &str) -> Result<ModelSource, RandomNameError> {
        match RandomModel::parse(name) {
            Some(random) => random.map(ModelSource::Random),
            None => Ok(ModelSource::Files(PathBuf::from(name))),
        }
    }

    /// The weights on `device`, computing in `kind`.
    pub fn load(&self, device: tch::Device, kind: Kind) -> Result<Model, LoadError> {
        match self {
            ModelSource::Files(path) => Model::load(path, device, kind),
            ModelSource::Random(random) => random.build(device, kind),
        }
    }

    /// The tokenizer and chat template that go with the weights.
    pub fn tokenizer(&self) -> Result<ChatTokenizer, TokenizerError> {
        match self {
            ModelSource::Files(path) => ChatTokenizer::load(path),
            ModelSource::Random(random) => random.tokenizer(),
        }
    }

    /// The architecture without loading weights, for random models (files are read by the
    /// caller's own checks, which also want their context length).
    pub fn random_config(&self) -> Option<Result<ModelConfig, LoadError>> {
        match self {
            ModelSource::Files(_) => None,
            ModelSource::Random(random) => Some(random.config()),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            ModelSource::Files(path) => Some(path),
            ModelSource::Random(_) => None,
        }
    }

    pub fn random(&self) -> Option<&RandomModel> {
        match self {
            ModelSource::Files(_) => None,
            ModelSource::Random(random) => Some(random),
        }
    }
}

impl fmt::Display for ModelSource {
    /// The path, or the canonical `random:<preset>@<seed>`; `ModelSource::parse` reads it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Files(path) => write!(f, "{}", path.display()),
            ModelSource::Random(random) => write!(f, "{random}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_files_are_paths() {
        for name in [
            "random:tiny@5",
            "random:qwen2.5-7b@0",
            "/models/Qwen2.5-7B-Instruct",
            "m.gguf",
        ] {
            let source = ModelSource::parse(name).unwrap();
            assert_eq!(source.to_string(), name);
            assert_eq!(ModelSource::parse(&source.to_string()).unwrap(), source);
        }
        assert!(ModelSource::parse("random:nope").is_err());
        assert!(ModelSource::parse("randomly/named/folder")
            .unwrap()
            .path()
            .is_some());
    }

    #[test]
    fn a_random_source_loads_through_the_same_calls_as_files() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2");
        let files = ModelSource::Files(fixture);
        let random = ModelSource::parse("random:tiny").unwrap();
        let a = files.load(tch::Device::Cpu, Kind::Float).unwrap();
        let b = random.load(tch::Device::Cpu, Kind::Float).unwrap();
        assert_eq!(a.config(), b.config());
        // The same tokenizer: the fixture's files and the built-in copy encode alike.
        let text = "<|im_start|>user\nWhat makes a good friend?<|im_end|>\n";
        assert_eq!(
            files.tokenizer().unwrap().encode(text).unwrap(),
            random.tokenizer().unwrap().encode(text).unwrap()
        );
        assert_eq!(random.random_config().unwrap().unwrap(), *b.config());
    }
}
