//! What a model's own files say about generation: the end-of-sequence ids transformers'
//! `generate` stops on, and the sampling defaults its authors set.
//!
//! HF folder: `generation_config.json` (`eos_token_id` an int or a list, `do_sample`,
//! `temperature`, `top_p`, `top_k`, `repetition_penalty`); without that file, `config.json`'s
//! `eos_token_id`, as transformers' `GenerationConfig.from_model_config` does. GGUF: the
//! end-of-generation ids llama.cpp stops on (`tokenizer.ggml.eos_token_id`, `eot_token_id`,
//! `eom_token_id`) and the `general.sampling.*` defaults newer converters write.

use crate::gguf::GgufFile;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum GenerationConfigError {
    #[error("cannot read {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A model's generation settings; `None` where its files say nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GenerationConfig {
    /// Ids that end generation, in the file's order.
    pub eos_token_ids: Vec<i64>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    /// Reported only: pspace's sampler has no repetition penalty.
    pub repetition_penalty: Option<f64>,
    /// The file the values come from (generation_config.json, config.json or the GGUF).
    pub source: Option<String>,
}

/// Sampling values after filling: the request's own, else the model's, else pspace's defaults
/// (temperature 1, top_p 1, top_k off).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sampling {
    pub temperature: f64,
    pub top_p: f64,
    /// 0 = off.
    pub top_k: usize,
}

fn invalid(path: &Path, message: String) -> GenerationConfigError {
    GenerationConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    }
}

/// `eos_token_id` as transformers accepts it: null, an int or a list of ints.
fn eos_ids(v: Option<&Value>, path: &Path) -> Result<Vec<i64>, GenerationConfigError> {
    let bad = |found: &Value| {
        invalid(
            path,
            format!("key \"eos_token_id\": expected a token id or a list of token ids, found {found}"),
        )
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|i| i64::try_from(i).ok())
                    .ok_or_else(|| bad(x))
            })
            .collect(),
        Some(x) => x
            .as_u64()
            .and_then(|i| i64::try_from(i).ok())
            .map(|i| vec![i])
            .ok_or_else(|| bad(x)),
    }
}

impl GenerationConfig {
    /// From a model path: an HF folder or a GGUF file.
    pub fn load(model_path: &Path) -> Result<GenerationConfig, GenerationConfigError> {
        if model_path.is_dir() {
            return GenerationConfig::from_hf_dir(model_path);
        }
        let g = GgufFile::open(model_path).map_err(|e| invalid(model_path, e.to_string()))?;
        Ok(GenerationConfig::from_gguf(&g))
    }

    /// `generation_config.json`, else `config.json`'s end ids; neither file is an empty config.
    pub fn from_hf_dir(dir: &Path) -> Result<GenerationConfig, GenerationConfigError> {
        let gen_path = dir.join("generation_config.json");
        match std::fs::read_to_string(&gen_path) {
            Ok(text) => return GenerationConfig::from_json_str(&text, &gen_path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(GenerationConfigError::Io {
                    path: gen_path,
                    error,
                })
            }
        }
        let cfg_path = dir.join("config.json");
        let text = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(GenerationConfig::default()),
            Err(error) => {
                return Err(GenerationConfigError::Io {
                    path: cfg_path,
                    error,
                })
            }
        };
        let v: Value =
            serde_json::from_str(&text).map_err(|e| invalid(&cfg_path, format!("not valid JSON: {e}")))?;
        Ok(GenerationConfig {
            eos_token_ids: eos_ids(v.get("eos_token_id"), &cfg_path)?,
            source: Some(cfg_path.display().to_string()),
            ..GenerationConfig::default()
        })
    }

    /// Parses the text of a `generation_config.json` (`path` names it in errors).
    pub fn from_json_str(text: &str, path: &Path) -> Result<GenerationConfig, GenerationConfigError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| invalid(path, format!("not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err(invalid(path, format!("expected a JSON object, found {v}")));
        }
        let number = |key: &str| -> Result<Option<f64>, GenerationConfigError> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(Some)
                    .ok_or_else(|| {
                        invalid(
                            path,
                            format!("key {key:?}: expected a non-negative number, found {x}"),
                        )
                    }),
            }
        };
        let top_p = number("top_p")?;
        if let Some(p) = top_p.filter(|p| *p > 1.0) {
            return Err(invalid(
                path,
                format!("key \"top_p\": expected a number in [0, 1], found {p}"),
            ));
        }
        let top_k = match v.get("top_k") {
            None | Some(Value::Null) => None,
            Some(x) => Some(x.as_u64().and_then(|k| usize::try_from(k).ok()).ok_or_else(|| {
                invalid(
                    path,
                    format!("key \"top_k\": expected a non-negative integer, found {x}"),
                )
            })?),
        };
        let do_sample = match v.get("do_sample") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(x) => {
                return Err(invalid(
                    path,
                    format!("key \"do_sample\": expected true or false, found {x}"),
                ))
            }
        };
        Ok(GenerationConfig {
            eos_token_ids: eos_ids(v.get("eos_token_id"), path)?,
            do_sample,
            temperature: number("temperature")?,
            top_p,
            top_k,
            repetition_penalty: number("repetition_penalty")?,
            source: Some(path.display().to_string()),
        })
    }

    /// The end-of-generation ids and sampling defaults of a GGUF file.
    pub fn from_gguf(g: &GgufFile) -> GenerationConfig {
        let mut eos_token_ids = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(id) = g.get_u64(key).and_then(|i| i64::try_from(i).ok()) {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
        }
        let number = |key: &str| g.get_f64(key).filter(|f| f.is_finite() && *f >= 0.0);
        GenerationConfig {
            eos_token_ids,
            do_sample: None,
            temperature: number("general.sampling.temp"),
            top_p: number("general.sampling.top_p").filter(|p| *p <= 1.0),
            top_k: g
                .get_u64("general.sampling.top_k")
                .and_then(|k| usize::try_from(k).ok()),
            repetition_penalty: number("general.sampling.penalty_repeat"),
            source: Some(g.path().display().to_string()),
        }
    }

    /// Fills what a request leaves out (`None`) with the model's defaults, then pspace's. The
    /// request's values always win. A model that sets `do_sample: false` decodes greedily in
    /// transformers, so its temperature default is then 0 (greedy).
    pub fn sampling(&self, temperature: Option<f64>, top_p: Option<f64>, top_k: Option<usize>) -> Sampling {
        let model_temperature = match self.do_sample {
            Some(false) => Some(0.0),
            _ => self.temperature,
        };
        Sampling {
            temperature: temperature.or(model_temperature).unwrap_or(1.0),
            top_p: top_p.or(self.top_p).unwrap_or(1.0),
            top_k: top_k.or(self.top_k).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_config_json_as_transformers_reads_it() {
        // Qwen2.5-7B-Instruct's generation_config.json.
        let text = r#"{"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": true,
            "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 0.7,
            "top_p": 0.8, "top_k": 20, "transformers_version": "4.37.0"}"#;
        let g = GenerationConfig::from_json_str(text, Path::new("generation_config.json")).unwrap();
        assert_eq!(g.eos_token_ids, vec![151_645, 151_643]);
        assert_eq!(
            (g.temperature, g.top_p, g.top_k),
            (Some(0.7), Some(0.8), Some(20))
        );
        assert_eq!(g.repetition_penalty, Some(1.05));
        // The request's values win; what it leaves out comes from the model.
        assert_eq!(
            g.sampling(Some(1.0), None, None),
            Sampling {
                temperature: 1.0,
                top_p: 0.8,
                top_k: 20
            }
        );
        let single = GenerationConfig::from_json_str(r#"{"eos_token_id": 2}"#, Path::new("g.json")).unwrap();
        assert_eq!(single.eos_token_ids, vec![2]);
        assert_eq!(
            single.sampling(None, None, None),
            Sampling {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 0
            }
        );
        let greedy = GenerationConfig::from_json_str(
            r#"{"do_sample": false, "temperature": 0.6}"#,
            Path::new("g.json"),
        )
        .unwrap();
        assert_eq!(greedy.sampling(None, None, None).temperature, 0.0);
    }

    #[test]
    fn malformed_values_are_named() {
        for (text, key) in [
            (r#"{"eos_token_id": "</s>"}"#, "eos_token_id"),
            (r#"{"eos_token_id": [2, -1]}"#, "eos_token_id"),
            (r#"{"temperature": -1}"#, "temperature"),
            (r#"{"top_p": 1.5}"#, "top_p"),
            (r#"{"top_k": 2.5}"#, "top_k"),
            (r#"{"do_sample": "yes"}"#, "do_sample"),
            (r#"[1, 2]"#, "JSON object"),
            (r#"{"#, "not valid JSON"),
        ] {
            let e = GenerationConfig::from_json_str(text, Path::new("m/generation_config.json"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("generation_config.json") && e.contains(key),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn without_generation_config_json_the_model_config_end_ids_count() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            GenerationConfig::from_hf_dir(dir.path()).unwrap(),
            GenerationConfig::default()
        );
        std::fs::write(dir.path().join("config.json"), r#"{"eos_token_id": [7, 9]}"#).unwrap();
        let g = GenerationConfig::from_hf_dir(dir.path()).unwrap();
        assert_eq!(g.eos_token_ids, vec![7, 9]);
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"eos_token_id": 4}"#,
        )
        .unwrap();
        assert_eq!(
            GenerationConfig::from_hf_dir(dir.path()).unwrap().eos_token_ids,
            vec![4]
        );
    }
}
