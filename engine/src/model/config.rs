//! The hyper-parameters of a Llama/Qwen2-family decoder, read from an HF `config.json` or from a
//! GGUF file's metadata, and checked before anything is sized by them (a hostile or broken file
//! gives an error naming the key, never a panic or a huge allocation).

use super::rope::{RopeError, RopeScaling};
use crate::gguf::GgufFile;
use serde::{Deserialize, Serialize};
use std::path::Path;

use super::LoadError;

/// The model families one `Model` implements; they differ only in config values (Qwen2 has
/// q/k/v biases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Qwen2,
}

/// Largest vocabulary, hidden, intermediate or head size accepted from a file (2^24); larger
/// values are corrupt headers, not models.
const MAX_WIDTH: usize = 1 << 24;
/// Largest layer or head count accepted from a file.
const MAX_COUNT: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    /// How the rotary frequencies are scaled (`rope_scaling` / `rope_parameters`, or the GGUF's
    /// `rope.scaling.*` keys).
    #[serde(default)]
    pub rope_scaling: RopeScaling,
    /// llama.cpp's per-pair frequency divisors (a GGUF's `rope_freqs.weight`, [head_dim / 2]).
    #[serde(default)]
    pub rope_freq_factors: Option<Vec<f32>>,
    pub rms_norm_eps: f64,
    pub attention_bias: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<i64>,
    pub eos_token_id: Option<i64>,
}

impl ModelConfig {
    /// Parses an HF `config.json` (`model_type` llama or qwen2), with the rope settings resolved
    /// as transformers 5 resolves them (`RopeScaling::from_hf_config`).
    pub fn from_hf_json(path: &Path) -> Result<ModelConfig, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|error| LoadError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        ModelConfig::from_hf_str(&text, path)
    }

    /// As `from_hf_json`, from the file's text (`path` names it in errors).
    pub fn from_hf_str(text: &str, path: &Path) -> Result<ModelConfig, LoadError> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| LoadError::Config {
            path: path.to_path_buf(),
            message: format!("not valid JSON: {e}"),
        })?;
        let config_err = |message: String| LoadError::Config {
            path: path.to_path_buf(),
            message,
        };
        let bad = |key: &str, what: &str| {
            config_err(format!(
                "key {key:?}: expected {what}, found {}",
                v.get(key).map_or("nothing".to_string(), |x| x.to_string())
            ))
        };
        let model_type = v
            .get("model_type")
            .and_then(|t| t.as_str())
            .ok_or_else(|| bad("model_type", "a string"))?;
        let (architecture, default_max_positions) = match model_type {
            "llama" => (Architecture::Llama, 2048.0),
            "qwen2" => (Architecture::Qwen2, 32768.0),
            other => {
                return Err(LoadError::UnknownArchitecture {
                    path: path.to_path_buf(),
                    found: other.to_string(),
                })
            }
        };
        let int = |key: &str| {
            v.get(key)
                .and_then(|x| x.as_u64())
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| bad(key, "an integer"))
        };
        let hidden_size = int("hidden_size")?;
        let heads = int("num_attention_heads")?;
        if heads == 0 {
            return Err(bad("num_attention_heads", "at least 1"));
        }
        let (rope_theta, rope_scaling) = RopeScaling::from_hf_config(&v, default_max_positions)
            .map_err(|e: RopeError| config_err(format!("key {:?}: {}", e.key, e.message)))?;
        // Settings that change the computation and that this engine does not implement.
        if v.get("use_sliding_window").and_then(|x| x.as_bool()) == Some(true) {
            return Err(config_err(
                "key \"use_sliding_window\": sliding-window attention is not supported: expected false"
                    .into(),
            ));
        }
        if v.get("mlp_bias").and_then(|x| x.as_bool()) == Some(true) {
            return Err(config_err(
                "key \"mlp_bias\": biases on the MLP projections are not supported: expected false".into(),
            ));
        }
        if let Some(act) = v.get("hidden_act").filter(|a| !a.is_null()) {
            if act.as_str() != Some("silu") {
                return Err(bad(
                    "hidden_act",
                    "\"silu\" (the only activation of Llama/Qwen2 models pspace runs)",
                ));
            }
        }
        let optional_int = |key: &str| -> Result<Option<usize>, LoadError> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(_) => int(key).map(Some),
            }
        };
        let first_id = |key: &str| match v.get(key) {
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_i64()),
            _ => None,
        };
        let rms_norm_eps = match v.get("rms_norm_eps") {
            None | Some(serde_json::Value::Null) => 1e-6,
            Some(x) => x.as_f64().ok_or_else(|| bad("rms_norm_eps", "a number"))?,
        };
        let cfg = ModelConfig {
            architecture,
            vocab_size: int("vocab_size")?,
            hidden_size,
            intermediate_size: int("intermediate_size")?,
            num_hidden_layers: int("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: optional_int("num_key_value_heads")?.unwrap_or(heads),
            head_dim: optional_int("head_dim")?.unwrap_or(hidden_size / heads),
            rope_theta,
            rope_scaling,
            rope_freq_factors: None,
            rms_norm_eps,
            attention_bias: match architecture {
                Architecture::Qwen2 => true,
                Architecture::Llama => v.get("attention_bias").and_then(|x| x.as_bool()).unwrap_or(false),
            },
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
            bos_token_id: first_id("bos_token_id"),
            eos_token_id: first_id("eos_token_id"),
        };
        cfg.validate()
            .map_err(|(key, message)| config_err(format!("key {key:?}: {message}")))?;
        Ok(cfg)
    }

    /// Checks that the sizes describe a model this engine can build: positive, within
    /// `MAX_WIDTH` / `MAX_COUNT`, heads divisible into key/value groups, an even head size, a
    /// positive norm epsilon. Returns (key, problem) for the first violation.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let widths = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("head_dim", self.head_dim),
        ];
        for (key, value) in widths {
            if value == 0 || value > MAX_WIDTH {
                return Err((key, format!("expected 1..={MAX_WIDTH}, found {value}")));
            }
        }
        let counts = [
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
        ];
        for (key, value) in counts {
            if value == 0 || value > MAX_COUNT {
                return Err((key, format!("expected 1..={MAX_COUNT}, found {value}")));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err((
                "num_key_value_heads",
                format!(
                    "expected a divisor of num_attention_heads ({}), found {}",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err((
                "head_dim",
                format!("expected an even size (rotary pairs), found {}", self.head_dim),
            ));
        }
        if self.num_attention_heads.saturating_mul(self.head_dim) > MAX_WIDTH {
            return Err((
                "head_dim",
                format!(
                    "num_attention_heads x head_dim = {} x {} exceeds {MAX_WIDTH}",
                    self.num_attention_heads, self.head_dim
                ),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err((
                "rms_norm_eps",
                format!(
                    "expected a small non-negative number, found {}",
                    self.rms_norm_eps
                ),
            ));
        }
        if let Some(factors) = &self.rope_freq_factors {
            if factors.len() != self.head_dim / 2 {
                return Err((
                    "rope_freqs.weight",
                    format!(
                        "expected {} per-pair factors (head_dim / 2), found {}",
                        self.head_dim / 2,
                        factors.len()
                    ),
                ));
            }
            if let Some(bad) = factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
                return Err((
                    "rope_freqs.weight",
                    format!("expected positive factors, found {bad}"),
                ));
            }
        }
        Ok(())
    }

    /// Reads the `<arch>.*` hyper-parameters of a GGUF file, with its rope scaling as llama.cpp
    /// applies it (`rope.scaling.*` keys and the tensor `rope_freqs.weight`).
    pub fn from_gguf(g: &GgufFile) -> Result<ModelConfig, LoadError> {
        let config_err = |message: String| LoadError::Config {
            path: g.path().to_path_buf(),
            message,
        };
        let arch_name = g
            .get_str("general.architecture")
            .ok_or_else(|| config_err("metadata key \"general.architecture\" is missing".into()))?;
        let architecture = match arch_name {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(LoadError::UnknownArchitecture {
                    path: g.path().to_path_buf(),
                    found: other.to_string(),
                })
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let int = |k: &str| {
            g.require_u64(&key(k)).map_err(LoadError::from).and_then(|x| {
                usize::try_from(x)
                    .map_err(|_| config_err(format!("metadata key {:?}: {x} is too large", key(k))))
            })
        };
        let optional = |k: &str| {
            g.get_u64(&key(k))
                .map(|x| usize::try_from(x).unwrap_or(usize::MAX))
        };
        let hidden_size = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        if heads == 0 {
            return Err(config_err(format!(
                "metadata key {:?}: expected at least 1, found 0",
                key("attention.head_count")
            )));
        }
        let head_dim = optional("attention.key_length").unwrap_or(hidden_size / heads);
        if let Some(n_rot) = optional("rope.dimension_count") {
            if n_rot != head_dim {
                return Err(config_err(format!(
                    "metadata key {:?}: partial rotary embeddings are not supported: expected the head size {head_dim}, found {n_rot}",
                    key("rope.dimension_count")
                )));
            }
        }
        let rope_scaling = RopeScaling::from_gguf(g, arch_name)
            .map_err(|e| config_err(format!("metadata key {:?}: {}", e.key, e.message)))?;
        let rope_freq_factors = match g.tensor_info("rope_freqs.weight") {
            Some(info) if architecture == Architecture::Llama => {
                if info.shape.len() != 1 {
                    return Err(LoadError::Shape {
                        path: g.path().to_path_buf(),
                        tensor: info.name.clone(),
                        expected: vec![head_dim / 2],
                        found: info.shape.clone(),
                    });
                }
                Some(g.tensor_f32("rope_freqs.weight")?.1)
            }
            _ => None,
        };
        let vocab_size = match optional("vocab_size") {
            Some(v) => v,
            None => g
                .get_str_array("tokenizer.ggml.tokens")
                .map(|t| t.len())
                .or_else(|| {
                    g.tensor_info("token_embd.weight")
                        .and_then(|t| t.shape.first().copied())
                })
                .unwrap_or(0),
        };
        let cfg = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: optional("attention.head_count_kv").unwrap_or(heads),
            head_dim,
            rope_theta: g.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
            rope_scaling,
            rope_freq_factors,
            rms_norm_eps: g
                .get_f64(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-6),
            attention_bias: g.tensor_info("blk.0.attn_q.bias").is_some(),
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
            bos_token_id: g
                .get_u64("tokenizer.ggml.bos_token_id")
                .and_then(|x| i64::try_from(x).ok()),
            eos_token_id: g
                .get_u64("tokenizer.ggml.eos_token_id")
                .and_then(|x| i64::try_from(x).ok()),
        };
        if !(cfg.rope_theta.is_finite() && cfg.rope_theta > 0.0) {
            return Err(config_err(format!(
                "metadata key {:?}: expected a positive number, found {}",
                key("rope.freq_base"),
                cfg.rope_theta
            )));
        }
        cfg.validate().map_err(|(k, message)| {
            let gguf_key = match k {
                "vocab_size" => "tokenizer.ggml.tokens / vocab_size".to_string(),
                "hidden_size" => key("embedding_length"),
                "intermediate_size" => key("feed_forward_length"),
                "head_dim" => key("attention.key_length"),
                "num_hidden_layers" => key("block_count"),
                "num_attention_heads" => key("attention.head_count"),
                "num_key_value_heads" => key("attention.head_count_kv"),
                "rms_norm_eps" => key("attention.layer_norm_rms_epsilon"),
                other => other.to_string(),
            };
            config_err(format!("{gguf_key:?}: {message}"))
        })?;
        Ok(cfg)
    }

    /// Qwen2.5-7B's shape, for benchmarks with random weights.
    pub fn qwen2_5_7b() -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Qwen2,
            vocab_size: 152_064,
            hidden_size: 3584,
            intermediate_size: 18_944,
            num_hidden_layers: 28,
            num_attention_heads: 28,
            num_key_value_heads: 4,
            head_dim: 128,
            rope_theta: 1e6,
            rope_scaling: RopeScaling::Default,
            rope_freq_factors: None,
            rms_norm_eps: 1e-6,
            attention_bias: true,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_id: Some(151_645),
        }
    }

    /// A tiny Qwen2 shape for tests on CPU.
    pub fn tiny_qwen2() -> ModelConfig {
        ModelConfig {
            vocab_size: 1024,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            rope_theta: 10_000.0,
            ..ModelConfig::qwen2_5_7b()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, extra: serde_json::Value) -> std::path::PathBuf {
        let mut cfg = serde_json::json!({
            "model_type": "qwen2", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": false,
            "eos_token_id": 151645, "rope_scaling": null, "use_sliding_window": false
        });
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let path = dir.join("config.json");
        std::fs::write(&path, cfg.to_string()).unwrap();
        path
    }

    #[test]
    fn a_qwen2_config_reads_and_unsupported_variants_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ModelConfig::from_hf_json(&write(dir.path(), serde_json::json!({}))).unwrap();
        assert_eq!(
            cfg,
            ModelConfig {
                rope_theta: 1e6,
                bos_token_id: None,
                ..ModelConfig::tiny_qwen2()
            }
        );
        assert!(cfg.attention_bias);
        let path = write(
            dir.path(),
            serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}),
        );
        let err = ModelConfig::from_hf_json(&path).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("llama3"), "{err}");
        let path = write(dir.path(), serde_json::json!({"use_sliding_window": true}));
        let err = ModelConfig::from_hf_json(&path).unwrap_err().to_string();
        assert!(err.contains("use_sliding_window"), "{err}");
        let path = write(dir.path(), serde_json::json!({"hidden_size": "big"}));
        let err = ModelConfig::from_hf_json(&path).unwrap_err().to_string();
        assert!(err.contains("hidden_size") && err.contains("\"big\""), "{err}");
    }
}
