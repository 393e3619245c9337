//! The hyper-parameters of a Llama/Qwen2-family decoder, read from an HF `config.json` or from a
//! GGUF file's metadata.

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
    pub rms_norm_eps: f64,
    pub attention_bias: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<i64>,
    pub eos_token_id: Option<i64>,
}

impl ModelConfig {
    /// Parses an HF `config.json` (`model_type` llama or qwen2).
    pub fn from_hf_json(path: &Path) -> Result<ModelConfig, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| LoadError::Config {
            path: path.to_path_buf(),
            message: format!("not valid JSON: {e}"),
        })?;
        let bad = |key: &str, what: &str| LoadError::Config {
            path: path.to_path_buf(),
            message: format!(
                "key {key:?}: expected {what}, found {}",
                v.get(key).map_or("nothing".to_string(), |x| x.to_string())
            ),
        };
        let model_type = v["model_type"]
            .as_str()
            .ok_or_else(|| bad("model_type", "a string"))?;
        let architecture = match model_type {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(LoadError::UnknownArchitecture {
                    path: path.to_path_buf(),
                    found: other.to_string(),
                })
            }
        };
        let int = |key: &str| {
            v[key]
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| bad(key, "an integer"))
        };
        let hidden_size = int("hidden_size")?;
        let heads = int("num_attention_heads")?;
        // Rotary variants (llama3, yarn, dynamic, ...) change the frequencies; computing plain
        // RoPE for them would give silently wrong states, so they are refused.
        for (key, scaling) in [
            ("rope_scaling", &v["rope_scaling"]),
            ("rope_parameters", &v["rope_parameters"]),
        ] {
            let kind = scaling["rope_type"].as_str().or_else(|| scaling["type"].as_str());
            if !scaling.is_null() && kind.is_some_and(|k| k != "default") {
                return Err(LoadError::Config {
                    path: path.to_path_buf(),
                    message: format!(
                        "key {key:?}: rope type {kind:?} is not supported: expected plain RoPE (\"default\")"
                    ),
                });
            }
        }
        if v["use_sliding_window"].as_bool() == Some(true) {
            return Err(LoadError::Config {
                path: path.to_path_buf(),
                message:
                    "key \"use_sliding_window\": sliding-window attention is not supported: expected false"
                        .into(),
            });
        }
        let first_id = |key: &str| match &v[key] {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::Array(a) => a.first().and_then(|x| x.as_i64()),
            _ => None,
        };
        Ok(ModelConfig {
            architecture,
            vocab_size: int("vocab_size")?,
            hidden_size,
            intermediate_size: int("intermediate_size")?,
            num_hidden_layers: int("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: v["num_key_value_heads"].as_u64().map_or(heads, |x| x as usize),
            head_dim: v["head_dim"].as_u64().map_or(hidden_size / heads, |x| x as usize),
            // transformers 5 nests it under rope_parameters; older configs have it at the top.
            rope_theta: v["rope_theta"]
                .as_f64()
                .or_else(|| v["rope_parameters"]["rope_theta"].as_f64())
                .unwrap_or(10_000.0),
            rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            attention_bias: match architecture {
                Architecture::Qwen2 => true,
                Architecture::Llama => v["attention_bias"].as_bool().unwrap_or(false),
            },
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            bos_token_id: first_id("bos_token_id"),
            eos_token_id: first_id("eos_token_id"),
        })
    }

    /// Reads the `<arch>.*` hyper-parameters of a GGUF file.
    pub fn from_gguf(g: &GgufFile) -> Result<ModelConfig, LoadError> {
        let arch_name = g
            .get_str("general.architecture")
            .ok_or_else(|| LoadError::Config {
                path: g.path().to_path_buf(),
                message: "metadata key \"general.architecture\" is missing".into(),
            })?;
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
            g.require_u64(&key(k))
                .map(|x| x as usize)
                .map_err(LoadError::from)
        };
        let hidden_size = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        if let Some(scaling) = g.get_str(&key("rope.scaling.type")).filter(|t| *t != "none") {
            return Err(LoadError::Config {
                path: g.path().to_path_buf(),
                message: format!(
                    "metadata key {:?}: rope scaling {scaling:?} is not supported: expected none",
                    key("rope.scaling.type")
                ),
            });
        }
        let vocab_size = match g.get_u64(&key("vocab_size")) {
            Some(v) => v as usize,
            None => g
                .get_str_array("tokenizer.ggml.tokens")
                .map(|t| t.len())
                .or_else(|| g.tensor_info("token_embd.weight").map(|t| t.shape[0]))
                .unwrap_or(0),
        };
        Ok(ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: g
                .get_u64(&key("attention.head_count_kv"))
                .map_or(heads, |x| x as usize),
            head_dim: g
                .get_u64(&key("attention.key_length"))
                .map_or(hidden_size / heads, |x| x as usize),
            rope_theta: g.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
            rms_norm_eps: g
                .get_f64(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-6),
            attention_bias: g.tensor_info("blk.0.attn_q.bias").is_some(),
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
            bos_token_id: g.get_u64("tokenizer.ggml.bos_token_id").map(|x| x as i64),
            eos_token_id: g.get_u64("tokenizer.ggml.eos_token_id").map(|x| x as i64),
        })
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
