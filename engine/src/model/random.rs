//! The model source `random:<preset>[@seed]`: random weights of a named architecture, built
//! directly on the device, for benchmarks and dry runs at full size where the real weights
//! cannot be downloaded. Its outputs mean nothing about personas: only the shapes, the sizes
//! and therefore the compute are real.
//!
//! Presets: `qwen2.5-7b` (Qwen2.5-7B-Instruct's `config.json`: hidden 3584, 28 layers, 28 heads,
//! 4 KV heads, intermediate 18944, vocabulary 152064, rope theta 1e6, untied embeddings, q/k/v
//! biases) and `tiny` (the engine's tiny Qwen2 test fixture, `tests/fixtures/tiny-qwen2`).
//! Both come with the tiny fixture's tokenizer, which is compiled into the binary so the source
//! needs no file: a byte-level BPE of 1,000 ids (the fixture's embeddings have 1,024 rows) with
//! Qwen2's ChatML template. A model's ids beyond those 1,000 decode as in-vocabulary tokens
//! (`ChatTokenizer::fold_ids_beyond_vocab`), one token of text per generated id, so decoded
//! completions keep their length.
//!
//! Weights: every matrix is normal with standard deviation 0.02 (transformers'
//! `initializer_range`), norms are 1 and biases 0, which keeps activations finite through 28
//! layers in bf16. The values come from a counter-based hash of (tensor name, element index)
//! evaluated with integer tensor ops on the device: no host generator, no libtorch global RNG
//! (which other threads may be using), the same values on every run, thread and device (up to
//! the last bit of `log`/`cos`), built in about the time of writing the weights once.

use super::{load, Model, ModelConfig};
use crate::tokenizer::{ChatTokenizer, TokenizerError};
use sha2::{Digest, Sha256};
use std::fmt;
use tch::{Kind, Tensor};

/// Qwen2.5-7B-Instruct's `config.json` as published (transformers 4.43 layout).
const QWEN25_7B_CONFIG: &str = r#"{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "hidden_act": "silu",
  "hidden_size": 3584,
  "initializer_range": 0.02,
  "intermediate_size": 18944,
  "max_position_embeddings": 32768,
  "max_window_layers": 28,
  "model_type": "qwen2",
  "num_attention_heads": 28,
  "num_hidden_layers": 28,
  "num_key_value_heads": 4,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 131072,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 152064
}"#;

const TINY_CONFIG: &str = include_str!("../../tests/fixtures/tiny-qwen2/config.json");
const TOKENIZER_JSON: &str = include_str!("../../tests/fixtures/tiny-qwen2/tokenizer.json");
const TOKENIZER_CONFIG: &str = include_str!("../../tests/fixtures/tiny-qwen2/tokenizer_config.json");
const GENERATION_CONFIG: &str = include_str!("../../tests/fixtures/tiny-qwen2/generation_config.json");

/// The prefix that names this source in `--model` and a spec's `experiment.model`.
pub const PREFIX: &str = "random:";

/// Standard deviation of every random matrix (transformers' `initializer_range`).
const INIT_STD: f64 = 0.02;

/// Elements hashed per step: bounds the transient memory (a few int64 buffers of this size,
/// about 1 GiB) whatever the tensor's size.
const CHUNK: i64 = 1 << 25;

/// An architecture `random:` can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// Qwen2.5-7B-Instruct's shape.
    Qwen25_7b,
    /// The tiny Qwen2 of the engine's test fixtures (4 layers, 64 wide, 1,024 embedding rows).
    Tiny,
}

impl Preset {
    pub const ALL: [Preset; 2] = [Preset::Qwen25_7b, Preset::Tiny];

    /// The name after `random:`.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Qwen25_7b => "qwen2.5-7b",
            Preset::Tiny => "tiny",
        }
    }

    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The preset's HF `config.json` text.
    pub fn config_json(self) -> &'static str {
        match self {
            Preset::Qwen25_7b => QWEN25_7B_CONFIG,
            Preset::Tiny => TINY_CONFIG,
        }
    }

    /// The architecture, read from `config_json` by the same parser as a model folder's.
    pub fn config(self) -> Result<ModelConfig, load::LoadError> {
        ModelConfig::from_hf_str(self.config_json(), &self.origin())
    }

    /// The context length (`max_position_embeddings` of the config).
    pub fn context_length(self) -> usize {
        serde_json::from_str::<serde_json::Value>(self.config_json())
            .ok()
            .and_then(|v| v["max_position_embeddings"].as_u64())
            .map_or(0, |n| n as usize)
    }

    /// How errors name the preset's built-in files.
    fn origin(self) -> std::path::PathBuf {
        format!("{PREFIX}{} (built in)", self.name()).into()
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `random:<preset>[@seed]` model: which architecture and which weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RandomModel {
    pub preset: Preset,
    /// Picks the weights (default 0).
    pub seed: u64,
}

/// Why a `random:` name is not one pspace can build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model {name:?}: {message}")]
pub struct RandomNameError {
    pub name: String,
    pub message: String,
}

impl RandomModel {
    /// Parses `random:<preset>[@seed]`; `None` when `name` does not start with `random:`.
    pub fn parse(name: &str) -> Option<Result<RandomModel, RandomNameError>> {
        let rest = name.strip_prefix(PREFIX)?;
        let err = |message: String| RandomNameError {
            name: name.to_string(),
            message,
        };
        let (preset, seed) = match rest.split_once('@') {
            Some((p, s)) => (p, Some(s)),
            None => (rest, None),
        };
        let known = || {
            Preset::ALL
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(preset) = Preset::from_name(preset) else {
            return Some(Err(err(format!(
                "unknown preset {preset:?}: expected random:<preset>[@seed] with a preset of {}",
                known()
            ))));
        };
        let seed = match seed {
            None => 0,
            Some(s) => match s.parse::<u64>() {
                Ok(n) => n,
                Err(_) => {
                    return Some(Err(err(format!(
                        "expected a whole number >= 0 after '@' (the weights' seed), found {s:?}"
                    ))))
                }
            },
        };
        Some(Ok(RandomModel { preset, seed }))
    }

    /// The seed of the weights: a stable hash (SHA-256) of the preset and the seed, so two
    /// presets with one seed share no values and the weights never depend on the platform.
    pub fn weight_seed(&self) -> u64 {
        let d = Sha256::digest(format!("pspace random weights {}@{}", self.preset, self.seed).as_bytes());
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }

    pub fn config(&self) -> Result<ModelConfig, load::LoadError> {
        self.preset.config()
    }

    /// Builds the weights on `device` in `kind` (see the module doc for their values).
    pub fn build(&self, device: tch::Device, kind: Kind) -> Result<Model, load::LoadError> {
        let cfg = self.config()?;
        let _guard = tch::no_grad_guard();
        let base = self.weight_seed();
        let expected = load::hf_expected(&cfg);
        Ok(load::assemble(cfg, device, kind, |name| {
            let shape: Vec<i64> = expected
                .get(name)
                .map(|s| s.iter().map(|&d| d as i64).collect())
                .unwrap_or_default();
            if name.ends_with("norm.weight") {
                Tensor::ones(shape.as_slice(), (kind, device))
            } else if name.ends_with(".bias") {
                Tensor::zeros(shape.as_slice(), (kind, device))
            } else {
                hashed_normal(&shape, tensor_salt(base, name), device, kind) * INIT_STD
            }
        }))
    }

    /// The tokenizer that travels with every preset (see the module doc).
    pub fn tokenizer(&self) -> Result<ChatTokenizer, TokenizerError> {
        let origin = format!("{self} (the tiny fixture's tokenizer, built in)");
        let tok =
            ChatTokenizer::from_hf_texts(&origin, TOKENIZER_JSON, TOKENIZER_CONFIG, Some(GENERATION_CONFIG))?;
        Ok(tok.fold_ids_beyond_vocab())
    }
}

impl fmt::Display for RandomModel {
    /// The canonical name, seed included: `random:qwen2.5-7b@0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}@{}", self.preset, self.seed)
    }
}

/// Two 32-bit salts of one tensor, from the weights' seed and the tensor's name.
fn tensor_salt(base: u64, name: &str) -> (i64, i64) {
    let mut h = Sha256::new();
    h.update(base.to_le_bytes());
    h.update(name.as_bytes());
    let d = h.finalize();
    (
        i64::from(u32::from_le_bytes([d[0], d[1], d[2], d[3]])),
        i64::from(u32::from_le_bytes([d[4], d[5], d[6], d[7]])),
    )
}

const MASK32: i64 = 0xffff_ffff;

/// `x * c mod 2^32` for int64 tensors holding values in [0, 2^32): split so that no product
/// exceeds 2^49 (int64 never overflows).
fn mul32(x: &Tensor, c: i64) -> Tensor {
    let lo = x * (c & 0xffff);
    let hi = (x * (c >> 16))
        .bitwise_and(0xffff)
        .bitwise_left_shift_tensor_scalar(16);
    (lo + hi).bitwise_and(MASK32)
}

/// `x ^ (x >> s)`.
fn xorshift(x: &Tensor, s: i64) -> Tensor {
    x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(s))
}

/// A 32-bit integer hash (C. Wellons' "lowbias32"), a bijection of [0, 2^32), element-wise.
fn hash32(x: &Tensor) -> Tensor {
    let x = xorshift(x, 16);
    let x = mul32(&x, 0x7feb_352d);
    let x = xorshift(&x, 15);
    let x = mul32(&x, 0x846c_a68b);
    xorshift(&x, 16)
}

/// Standard normal values of a tensor of `shape`, element i from (hash(i ^ s1), hash(i ^ s2))
/// by Box-Muller, in chunks of `CHUNK` elements.
fn hashed_normal(shape: &[i64], (s1, s2): (i64, i64), device: tch::Device, kind: Kind) -> Tensor {
    let numel: i64 = shape.iter().product();
    let out = Tensor::empty([numel], (kind, device));
    let two_pow_32 = 4_294_967_296.0;
    let mut start = 0;
    while start < numel {
        let len = CHUNK.min(numel - start);
        let idx = Tensor::arange_start(start, start + len, (Kind::Int64, device));
        let h1 = hash32(&idx.bitwise_xor(s1));
        let h2 = hash32(&idx.bitwise_xor(s2));
        // u1 in (0, 1]: never 0, so the log is finite; rounding may reach 1 (z = 0).
        let u1 = ((h1.to_kind(Kind::Float) + 0.5) / two_pow_32).clamp_max(1.0);
        let u2 = h2.to_kind(Kind::Float) / two_pow_32;
        let z = (u1.log() * -2.0).sqrt() * (u2 * (2.0 * std::f64::consts::PI)).cos();
        out.narrow(0, start, len).copy_(&z.to_kind(kind));
        start += len;
    }
    out.view(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ForwardOptions, Logits, Proj};
    use std::path::Path;

    #[test]
    fn names_parse_with_and_without_a_seed_and_bad_ones_say_why() {
        assert_eq!(RandomModel::parse("models/x"), None);
        let m = RandomModel::parse("random:qwen2.5-7b").unwrap().unwrap();
        assert_eq!(
            (m.preset, m.seed, m.to_string()),
            (Preset::Qwen25_7b, 0, "random:qwen2.5-7b@0".to_string())
        );
        let m = RandomModel::parse("random:tiny@17").unwrap().unwrap();
        assert_eq!((m.preset, m.seed), (Preset::Tiny, 17));
        assert_eq!(RandomModel::parse(&m.to_string()), Some(Ok(m)));
        let e = RandomModel::parse("random:llama-70b").unwrap().unwrap_err();
        assert!(
            e.to_string().contains("unknown preset \"llama-70b\"")
                && e.to_string().contains("qwen2.5-7b, tiny"),
            "{e}"
        );
        let e = RandomModel::parse("random:tiny@x").unwrap().unwrap_err();
        assert!(e.to_string().contains("after '@'"), "{e}");
    }

    #[test]
    fn presets_have_the_published_shapes() {
        let q = Preset::Qwen25_7b.config().unwrap();
        // The benchmarks' hand-written shape, but for the end ids the published config names.
        assert_eq!(
            q,
            ModelConfig {
                bos_token_id: Some(151_643),
                ..ModelConfig::qwen2_5_7b()
            }
        );
        assert_eq!(
            (
                q.hidden_size,
                q.num_hidden_layers,
                q.num_attention_heads,
                q.num_key_value_heads
            ),
            (3584, 28, 28, 4)
        );
        assert_eq!(
            (q.intermediate_size, q.vocab_size, q.rope_theta),
            (18_944, 152_064, 1e6)
        );
        assert!(q.attention_bias && !q.tie_word_embeddings);
        assert_eq!(Preset::Qwen25_7b.context_length(), 32_768);
        let t = Preset::Tiny.config().unwrap();
        let fixture = ModelConfig::from_hf_json(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2/config.json"),
        )
        .unwrap();
        assert_eq!(t, fixture);
        assert_eq!((t.num_hidden_layers, t.vocab_size), (4, 1024));
        assert_eq!(Preset::Tiny.context_length(), 2048);
    }

    #[test]
    fn the_hash_is_a_known_function() {
        // lowbias32 reference values (computed with u32 wrapping arithmetic).
        let reference = |mut x: u32| {
            x ^= x >> 16;
            x = x.wrapping_mul(0x7feb_352d);
            x ^= x >> 15;
            x = x.wrapping_mul(0x846c_a68b);
            x ^= x >> 16;
            x
        };
        let inputs: Vec<i64> = vec![0, 1, 2, 12_345, 0xffff_ffff, 0x8000_0000, 0xdead_beef];
        let got = Vec::<i64>::try_from(hash32(&Tensor::from_slice(&inputs))).unwrap();
        let want: Vec<i64> = inputs.iter().map(|&x| i64::from(reference(x as u32))).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn hashed_values_are_standard_normal() {
        let z = hashed_normal(&[200_000], (7, 99), tch::Device::Cpu, Kind::Float);
        let v = Vec::<f32>::try_from(&z).unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        assert!(v.iter().all(|x| x.is_finite()));
        let within_1 = v.iter().filter(|x| x.abs() < 1.0).count() as f64 / n;
        assert!((within_1 - 0.6827).abs() < 0.01, "P(|z| < 1) = {within_1}");
    }

    #[test]
    fn tiny_weights_are_deterministic_per_seed_and_give_finite_logits() {
        let a = RandomModel::parse("random:tiny@3").unwrap().unwrap();
        let m1 = a.build(tch::Device::Cpu, Kind::Float).unwrap();
        let m2 = a.build(tch::Device::Cpu, Kind::Float).unwrap();
        let other = RandomModel { seed: 4, ..a }
            .build(tch::Device::Cpu, Kind::Float)
            .unwrap();
        for (l, p) in [(0, Proj::Q), (3, Proj::Down)] {
            assert!(m1.projection_weight(l, p).equal(m2.projection_weight(l, p)));
            assert!(!m1.projection_weight(l, p).equal(other.projection_weight(l, p)));
        }
        assert!(!m1
            .projection_weight(0, Proj::Q)
            .equal(m1.projection_weight(1, Proj::Q)));
        let cfg = m1.config().clone();
        assert_eq!(m1.projection_weight(0, Proj::Q).size(), vec![64, 64]);
        assert_eq!(m1.projection_weight(0, Proj::K).size(), vec![32, 64]);
        assert_eq!(m1.projection_weight(2, Proj::Gate).size(), vec![128, 64]);
        let std = f64::try_from(m1.projection_weight(1, Proj::Up).std(true)).unwrap();
        assert!((std - INIT_STD).abs() < 0.002, "std {std}");

        let ids = Tensor::from_slice(&[5i64, 17, 300, 1023, 2, 9, 44, 100]).view([2, 4]);
        let mask = ids.ones_like();
        let out = tch::no_grad(|| {
            m1.forward(
                &ids,
                &mask,
                None,
                &ForwardOptions {
                    logits: Logits::All,
                    capture_layers: &[0, 3],
                    ..Default::default()
                },
            )
        });
        let logits = out.logits.unwrap();
        assert_eq!(logits.size(), vec![2, 4, cfg.vocab_size as i64]);
        assert!(bool::try_from(logits.isfinite().all()).unwrap());
        assert!(f64::try_from(logits.abs().max()).unwrap() > 0.0);
    }

    #[test]
    fn the_7b_preset_builds_deep_and_finite_in_bf16() {
        // 28 layers of the real width would take 15 GB: the real depth, head size, KV heads and
        // init at a fourteenth of the width and a small vocabulary, through the same functions.
        let mut cfg = Preset::Qwen25_7b.config().unwrap();
        cfg.hidden_size = 256;
        cfg.intermediate_size = 1024;
        cfg.num_attention_heads = 2;
        cfg.num_key_value_heads = 2;
        cfg.vocab_size = 4096;
        let expected = load::hf_expected(&cfg);
        let model = load::assemble(cfg.clone(), tch::Device::Cpu, Kind::BFloat16, |name| {
            let shape: Vec<i64> = expected[name].iter().map(|&d| d as i64).collect();
            if name.ends_with("norm.weight") {
                Tensor::ones(shape.as_slice(), (Kind::BFloat16, tch::Device::Cpu))
            } else if name.ends_with(".bias") {
                Tensor::zeros(shape.as_slice(), (Kind::BFloat16, tch::Device::Cpu))
            } else {
                hashed_normal(&shape, tensor_salt(1, name), tch::Device::Cpu, Kind::BFloat16) * INIT_STD
            }
        });
        let ids = Tensor::arange(32, (Kind::Int64, tch::Device::Cpu)).view([1, 32]);
        let out = tch::no_grad(|| {
            model.forward(
                &ids,
                &ids.ones_like(),
                None,
                &ForwardOptions {
                    logits: Logits::Last,
                    capture_layers: &[27],
                    ..Default::default()
                },
            )
        });
        let last = &out.hidden[&27];
        assert!(bool::try_from(last.isfinite().all()).unwrap());
        assert!(bool::try_from(out.logits.unwrap().isfinite().all()).unwrap());
    }

    #[test]
    fn the_tokenizer_travels_and_folds_ids_beyond_its_vocabulary() {
        let m = RandomModel::parse("random:qwen2.5-7b").unwrap().unwrap();
        let tok = m.tokenizer().unwrap();
        assert_eq!(tok.vocab_size(), 1000);
        let ids = tok.encode("Hello world").unwrap().ids;
        assert_eq!(tok.decode(&ids, true).unwrap(), "Hello world");
        // Ids of the 7B vocabulary decode to one in-vocabulary token each.
        let far: Vec<i64> = (0..20).map(|i| 151_000 + i * 37).collect();
        let text = tok.decode(&far, true).unwrap();
        assert!(!text.is_empty());
        assert!(tok.stop_token_ids().contains(&2));
        let rendered = tok
            .render(&[crate::tokenizer::ChatMessage::new("user", "Hi")], true)
            .unwrap();
        assert!(rendered.ends_with("<|im_start|>assistant\n"), "{rendered}");
    }
}
