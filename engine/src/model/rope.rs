//! Rotary position embedding frequencies for every rope type a Llama/Qwen2 checkpoint can carry.
//!
//! From an HF `config.json`, the types transformers 5 computes in `modeling_rope_utils.py`
//! (`default`, `linear`, `dynamic`, `yarn`, `llama3`), with the precedence transformers applies
//! when keys disagree (`RopeScaling::from_hf_config`). From a GGUF file, what llama.cpp applies:
//! the `<arch>.rope.scaling.*` keys (linear and YaRN) and the per-pair divisors of the tensor
//! `rope_freqs.weight`, which is how llama.cpp's converter stores Llama 3.x's `llama3` scaling
//! (`RopeScaling::from_gguf`). Any other type is refused with its name: computing plain RoPE for
//! it would give silently wrong states.
//!
//! The frequencies are computed in f32 in transformers' order of operations, so the states match
//! transformers' to rounding.

use crate::gguf::GgufFile;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// How the rotary frequencies are scaled. Positions and lengths are in tokens.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// 1 / theta^(2i/d).
    #[default]
    Default,
    /// Every frequency divided by `factor` (position interpolation).
    Linear { factor: f64 },
    /// Dynamic NTK: when a forward pass reaches position `seq_len - 1 >= max_position_embeddings`,
    /// the base becomes `theta * (factor * seq_len / max_position_embeddings - (factor - 1))^(d / (d - 2))`
    /// (transformers' `_compute_dynamic_ntk_parameters`, `seq_len = max(position) + 1`).
    Dynamic {
        factor: f64,
        max_position_embeddings: f64,
    },
    /// YaRN (Peng et al. 2023): frequencies blended between interpolated (`/ factor`) and original
    /// along a linear ramp over the pair index between the correction dims of `beta_fast` and
    /// `beta_slow`; cos and sin multiplied by `attention_factor`. `ext_factor` scales the ramp
    /// (llama.cpp's `yarn_ext_factor`; 1 in transformers).
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        /// Floor/ceil the correction range (transformers' `truncate`, always on in llama.cpp).
        truncate: bool,
        ext_factor: f64,
    },
    /// Llama 3.1: wavelengths above `original / low_freq_factor` divided by `factor`, below
    /// `original / high_freq_factor` kept, smoothly interpolated between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

type JsonObject = serde_json::Map<String, Value>;

/// A rope setting pspace cannot compute or a value it cannot use; `key` names where it was
/// found (a config.json key or a GGUF metadata key / tensor).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeError {
    pub key: String,
    pub message: String,
}

/// The rope types this module computes, for error messages.
const SUPPORTED: &str = "default, linear, dynamic, yarn or llama3";

fn err(key: &str, message: String) -> RopeError {
    RopeError {
        key: key.to_string(),
        message,
    }
}

/// transformers' `get_mscale` (YaRN's attention temperature).
fn get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// A positive, finite number, or an error naming the key.
fn positive(key: &str, value: f64) -> Result<f64, RopeError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(err(key, format!("expected a positive number, found {value}")))
    }
}

/// The rope section of an HF config as transformers 5 reads it, and the type it names.
struct HfRope<'a> {
    params: serde_json::Map<String, Value>,
    /// `rope_scaling` or `rope_parameters` (or the nested entry), for messages.
    source: String,
    config: &'a Value,
}

impl HfRope<'_> {
    fn number(&self, key: &str) -> Result<Option<f64>, RopeError> {
        match self.params.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                err(
                    &format!("{}.{key}", self.source),
                    format!("expected a number, found {v}"),
                )
            }),
        }
    }

    fn required(&self, key: &str, rope_type: &str) -> Result<f64, RopeError> {
        let full = format!("{}.{key}", self.source);
        let value = self
            .number(key)?
            .ok_or_else(|| err(&full, format!("rope type {rope_type:?} needs it, found nothing")))?;
        positive(&full, value)
    }

    /// `original_max_position_embeddings`: a top-level key wins over the rope section's (as
    /// transformers' `standardize_rope_params` does for Phi-3-style configs), which wins over
    /// `max_position_embeddings`.
    fn original_max(&self, max_position_embeddings: f64) -> Result<f64, RopeError> {
        if let Some(v) = self.config.get("original_max_position_embeddings") {
            let value = v.as_f64().ok_or_else(|| {
                err(
                    "original_max_position_embeddings",
                    format!("expected a number, found {v}"),
                )
            })?;
            return positive("original_max_position_embeddings", value);
        }
        let key = format!("{}.original_max_position_embeddings", self.source);
        positive(
            &key,
            self.number("original_max_position_embeddings")?
                .unwrap_or(max_position_embeddings),
        )
    }
}

impl RopeScaling {
    /// Reads `rope_theta` and the scaling of an HF `config.json` (already parsed), as
    /// transformers 5 resolves them:
    /// - a non-empty `rope_scaling` replaces `rope_parameters` whole;
    /// - `rope_theta` inside that section wins over the top-level `rope_theta` (default 10000);
    /// - `rope_type` wins over the old `type` key (default `"default"`);
    /// - a `rope_parameters` nested by layer type (`{"full_attention": {...}}`) is read from the
    ///   entry of the config's layer types, which must all agree;
    /// - `max_position_embeddings` defaults to `default_max_positions` (the architecture's
    ///   default in transformers: 2048 for Llama, 32768 for Qwen2).
    ///
    /// Returns (theta, scaling). Errors name the key.
    pub fn from_hf_config(
        config: &Value,
        default_max_positions: f64,
    ) -> Result<(f64, RopeScaling), RopeError> {
        let truthy = |v: &Value| match v {
            Value::Null => false,
            Value::Object(o) => !o.is_empty(),
            _ => true,
        };
        let (section, source) = match config.get("rope_scaling").filter(|v| truthy(v)) {
            Some(v) => (v, "rope_scaling"),
            None => match config.get("rope_parameters").filter(|v| truthy(v)) {
                Some(v) => (v, "rope_parameters"),
                None => (&Value::Null, "rope_parameters"),
            },
        };
        let mut params = match section {
            Value::Null => serde_json::Map::new(),
            Value::Object(o) => o.clone(),
            other => return Err(err(source, format!("expected an object, found {other}"))),
        };
        let mut source = source.to_string();
        if let Some((label, entry)) = nested_entry(config, &params, &source)? {
            params = entry;
            source = format!("{source}.{label}");
        }
        let rope = HfRope {
            params,
            source,
            config,
        };
        let theta = match rope.number("rope_theta")? {
            Some(t) => positive(&format!("{}.rope_theta", rope.source), t)?,
            None => match config.get("rope_theta") {
                None | Some(Value::Null) => 10_000.0,
                Some(v) => positive(
                    "rope_theta",
                    v.as_f64()
                        .ok_or_else(|| err("rope_theta", format!("expected a number, found {v}")))?,
                )?,
            },
        };
        for (key, value) in [
            (
                "partial_rotary_factor".to_string(),
                config.get("partial_rotary_factor"),
            ),
            (
                format!("{}.partial_rotary_factor", rope.source),
                rope.params.get("partial_rotary_factor"),
            ),
        ] {
            if let Some(v) = value.filter(|v| !v.is_null()) {
                if v.as_f64() != Some(1.0) {
                    return Err(err(
                        &key,
                        format!("partial rotary embeddings are not supported by Llama/Qwen2: expected 1.0, found {v}"),
                    ));
                }
            }
        }
        let type_key = if rope.params.contains_key("rope_type") {
            "rope_type"
        } else {
            "type"
        };
        let rope_type = match rope.params.get(type_key) {
            None | Some(Value::Null) => "default".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(err(
                    &format!("{}.{type_key}", rope.source),
                    format!("expected a string, found {other}"),
                ))
            }
        };
        let max_positions = match config.get("max_position_embeddings") {
            None | Some(Value::Null) => default_max_positions,
            Some(v) => positive(
                "max_position_embeddings",
                v.as_f64()
                    .ok_or_else(|| err("max_position_embeddings", format!("expected a number, found {v}")))?,
            )?,
        };
        let scaling = match rope_type.as_str() {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: rope.required("factor", "linear")?,
            },
            "dynamic" => RopeScaling::Dynamic {
                factor: rope.required("factor", "dynamic")?,
                max_position_embeddings: max_positions,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: rope.required("factor", "llama3")?,
                low_freq_factor: rope.required("low_freq_factor", "llama3")?,
                high_freq_factor: rope.required("high_freq_factor", "llama3")?,
                original_max_position_embeddings: rope.original_max(max_positions)?,
            },
            "yarn" => hf_yarn(&rope, max_positions)?,
            other => {
                return Err(err(
                    &format!("{}.{type_key}", rope.source),
                    format!("rope type {other:?} is not supported: expected {SUPPORTED}"),
                ))
            }
        };
        if let RopeScaling::Llama3 {
            low_freq_factor,
            high_freq_factor,
            ..
        } = scaling
        {
            if low_freq_factor == high_freq_factor {
                return Err(err(
                    &format!("{}.high_freq_factor", rope.source),
                    format!("must differ from low_freq_factor ({low_freq_factor}): the smoothing divides by their difference"),
                ));
            }
        }
        Ok((theta, scaling))
    }

    /// Reads the rope scaling of a GGUF file as llama.cpp applies it (`llama-model.cpp`,
    /// `llama-context.cpp`): `<arch>.rope.scaling.type` (absent = "linear"), the factor from
    /// `rope.scaling.factor` or the older `rope.scale_linear`, YaRN's original context length,
    /// betas, `ext_factor` and attention factor (`get_mscale(factor)` times
    /// `rope.scaling.attn_factor`).
    pub fn from_gguf(g: &GgufFile, arch: &str) -> Result<RopeScaling, RopeError> {
        let key = |k: &str| format!("{arch}.{k}");
        let number = |k: &str| -> Result<Option<f64>, RopeError> {
            match g.get(&key(k)) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| err(&key(k), format!("expected a number, found {v:?}"))),
            }
        };
        let type_key = key("rope.scaling.type");
        let kind = match g.get(&type_key) {
            None => "linear".to_string(),
            Some(v) => v
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| err(&type_key, format!("expected a string, found {v:?}")))?,
        };
        let factor = match number("rope.scaling.factor")? {
            Some(f) => Some((f, key("rope.scaling.factor"))),
            None => number("rope.scale_linear")?.map(|f| (f, key("rope.scale_linear"))),
        };
        // llama.cpp: a factor of 0 (or none) means no scaling.
        let factor = match factor {
            Some((0.0, _)) => 1.0,
            Some((f, k)) => positive(&k, f)?,
            None => 1.0,
        };
        match kind.as_str() {
            "none" => Ok(RopeScaling::Default),
            "linear" if factor == 1.0 => Ok(RopeScaling::Default),
            "linear" => Ok(RopeScaling::Linear { factor }),
            "yarn" => {
                if number("rope.scaling.yarn_log_multiplier")?.is_some_and(|m| m != 0.0) {
                    return Err(err(
                        &key("rope.scaling.yarn_log_multiplier"),
                        "YaRN with a log multiplier (DeepSeek-style mscale) is not supported for llama/qwen2: expected 0".into(),
                    ));
                }
                let original = match number("rope.scaling.original_context_length")? {
                    Some(n) => positive(&key("rope.scaling.original_context_length"), n)?,
                    None => positive(
                        &key("context_length"),
                        number("context_length")?.ok_or_else(|| {
                            err(
                                &key("rope.scaling.original_context_length"),
                                "YaRN needs the original context length, found neither it nor context_length".into(),
                            )
                        })?,
                    )?,
                };
                let ext_factor = number("rope.scaling.yarn_ext_factor")?
                    .filter(|e| *e >= 0.0)
                    .unwrap_or(1.0);
                let rope_attn_factor = number("rope.scaling.attn_factor")?.unwrap_or(1.0);
                let attention_factor = if ext_factor != 0.0 {
                    get_mscale(factor, 1.0) * rope_attn_factor
                } else {
                    number("rope.scaling.yarn_attn_factor")?.unwrap_or(1.0) * rope_attn_factor
                };
                Ok(RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: original,
                    beta_fast: positive(
                        &key("rope.scaling.yarn_beta_fast"),
                        number("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                    )?,
                    beta_slow: positive(
                        &key("rope.scaling.yarn_beta_slow"),
                        number("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
                    )?,
                    attention_factor: positive(&key("rope.scaling.attn_factor"), attention_factor)?,
                    truncate: true,
                    ext_factor,
                })
            }
            other => Err(err(
                &type_key,
                format!("rope scaling {other:?} is not supported: expected none, linear or yarn (llama3 comes as the tensor rope_freqs.weight)"),
            )),
        }
    }

    /// The frequencies depend on the positions of each forward pass (dynamic NTK).
    pub fn is_dynamic(&self) -> bool {
        matches!(self, RopeScaling::Dynamic { .. })
    }
}

/// The entry of a `rope_parameters` nested by layer type, when it is nested: its label and
/// contents. Every layer type the config declares must have the same entry.
fn nested_entry(
    config: &Value,
    params: &serde_json::Map<String, Value>,
    source: &str,
) -> Result<Option<(String, JsonObject)>, RopeError> {
    let labels: Vec<&str> = config
        .get("layer_types")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let nested: Vec<&String> = params.keys().filter(|k| labels.contains(&k.as_str())).collect();
    let Some(first) = nested.first() else {
        return Ok(None);
    };
    let entry = &params[first.as_str()];
    for other in &nested[1..] {
        if &params[other.as_str()] != entry {
            return Err(err(
                &format!("{source}.{other}"),
                format!("differs from {source}.{first}: per-layer rope types are not supported"),
            ));
        }
    }
    match entry {
        Value::Object(o) => Ok(Some((first.to_string(), o.clone()))),
        other => Err(err(
            &format!("{source}.{first}"),
            format!("expected an object, found {other}"),
        )),
    }
}

/// transformers' `_compute_yarn_parameters` settings.
fn hf_yarn(rope: &HfRope<'_>, max_positions: f64) -> Result<RopeScaling, RopeError> {
    let original = rope.original_max(max_positions)?;
    let factor = match rope.number("factor")? {
        Some(f) => positive(&format!("{}.factor", rope.source), f)?,
        None => max_positions / original,
    };
    let attention_factor = match rope.number("attention_factor")? {
        Some(a) => positive(&format!("{}.attention_factor", rope.source), a)?,
        None => {
            let mscale = rope.number("mscale")?.unwrap_or(0.0);
            let mscale_all_dim = rope.number("mscale_all_dim")?.unwrap_or(0.0);
            if mscale != 0.0 && mscale_all_dim != 0.0 {
                get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
            } else {
                get_mscale(factor, 1.0)
            }
        }
    };
    // Python's `x or default`: 0 and null both take the default.
    let or = |v: Option<f64>, d: f64| v.filter(|x| *x != 0.0).unwrap_or(d);
    let truncate = match rope.params.get("truncate") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(err(
                &format!("{}.truncate", rope.source),
                format!("expected true or false, found {other}"),
            ))
        }
    };
    let beta = |key: &str, default: f64| -> Result<f64, RopeError> {
        positive(&format!("{}.{key}", rope.source), or(rope.number(key)?, default))
    };
    Ok(RopeScaling::Yarn {
        factor,
        original_max_position_embeddings: original,
        beta_fast: beta("beta_fast", 32.0)?,
        beta_slow: beta("beta_slow", 1.0)?,
        attention_factor,
        truncate,
        ext_factor: 1.0,
    })
}

/// Inverse frequencies [head_dim / 2] (f32) and the factor cos and sin are multiplied by.
/// `seq_len` (max position + 1 of the forward pass) matters only for `Dynamic`.
/// `freq_factors` are llama.cpp's per-pair divisors (`rope_freqs.weight`).
pub fn frequencies(
    theta: f64,
    scaling: &RopeScaling,
    freq_factors: Option<&[f32]>,
    head_dim: usize,
    seq_len: Option<i64>,
    device: Device,
) -> (Tensor, f64) {
    let dim = head_dim as f64;
    let exponents =
        Tensor::arange_start_step(0, head_dim as i64, 2, (Kind::Int64, device)).to_kind(Kind::Float) / dim;
    let base_inv = |base: f64| Tensor::pow_scalar(base as f32 as f64, &exponents).reciprocal();
    let mut inv_freq = match scaling {
        RopeScaling::Dynamic {
            factor,
            max_position_embeddings,
        } => {
            let seq = seq_len.unwrap_or(0) as f64;
            if seq <= *max_position_embeddings {
                // transformers keeps the frequencies of its initialisation (seq_len =
                // max_position_embeddings, which leaves the base as it is).
                base_inv(theta)
            } else {
                // In f32, as transformers computes it from the tensor max(position_ids) + 1.
                let (seq, factor, max_pos) = (seq as f32, *factor as f32, *max_position_embeddings as f32);
                let base = theta as f32
                    * ((factor * seq / max_pos) - (factor - 1.0)).powf((dim / (dim - 2.0)) as f32);
                base_inv(base as f64)
            }
        }
        _ => base_inv(theta),
    };
    if let Some(factors) = freq_factors {
        inv_freq /= Tensor::from_slice(factors).to_device(device);
    }
    match scaling {
        RopeScaling::Default | RopeScaling::Dynamic { .. } => (inv_freq, 1.0),
        RopeScaling::Linear { factor } => (inv_freq / *factor, 1.0),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let low_freq_wavelen = old / low_freq_factor;
            let high_freq_wavelen = old / high_freq_factor;
            let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
            let scaled = (&inv_freq / *factor).where_self(&wavelen.gt(low_freq_wavelen), &inv_freq);
            let smooth =
                (wavelen.reciprocal() * *old - *low_freq_factor) / (high_freq_factor - low_freq_factor);
            let smoothed = (smooth.ones_like() - &smooth) * &scaled / *factor + &smooth * &scaled;
            let medium = wavelen
                .ge(high_freq_wavelen)
                .logical_and(&wavelen.le(low_freq_wavelen));
            (smoothed.where_self(&medium, &scaled), 1.0)
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: original,
            beta_fast,
            beta_slow,
            attention_factor,
            truncate,
            ext_factor,
        } => {
            let correction_dim = |rotations: f64| {
                (dim * (original / (rotations * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * theta.ln())
            };
            let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
            if *truncate {
                low = low.floor();
                high = high.ceil();
            }
            let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
            if low == high {
                high += 0.001;
            }
            let ramp = ((Tensor::arange(head_dim as i64 / 2, (Kind::Float, device)) - low) / (high - low))
                .clamp(0.0, 1.0);
            let extrapolation = (ramp.ones_like() - ramp) * *ext_factor;
            let interpolation = &inv_freq / *factor;
            let blended =
                &interpolation * (extrapolation.ones_like() - &extrapolation) + &inv_freq * &extrapolation;
            (blended, *attention_factor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hf(v: Value) -> Result<(f64, RopeScaling), RopeError> {
        RopeScaling::from_hf_config(&v, 2048.0)
    }

    #[test]
    fn transformers_precedence_between_keys() {
        // rope_theta inside the section wins over the top-level key.
        let (theta, s) =
            hf(json!({"rope_theta": 5.0, "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}}))
                .unwrap();
        assert_eq!((theta, s), (7.0, RopeScaling::Default));
        // A non-empty rope_scaling replaces rope_parameters whole (its theta is lost).
        let (theta, s) = hf(json!({"rope_scaling": {"type": "linear", "factor": 2.0},
                                    "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}}))
        .unwrap();
        assert_eq!((theta, s), (10_000.0, RopeScaling::Linear { factor: 2.0 }));
        // rope_type wins over type; an empty rope_scaling defers to rope_parameters.
        let (_, s) =
            hf(json!({"rope_scaling": {"type": "linear", "rope_type": "dynamic", "factor": 2.0}})).unwrap();
        assert_eq!(
            s,
            RopeScaling::Dynamic {
                factor: 2.0,
                max_position_embeddings: 2048.0
            }
        );
        let (theta, s) = hf(json!({"rope_scaling": {}, "rope_parameters": {"rope_type": "linear", "factor": 3.0}, "rope_theta": 9.0})).unwrap();
        assert_eq!((theta, s), (9.0, RopeScaling::Linear { factor: 3.0 }));
        // original_max_position_embeddings: top level, then the section, then max_position_embeddings.
        let orig = |v: Value| match hf(v).unwrap().1 {
            RopeScaling::Yarn {
                original_max_position_embeddings,
                ..
            } => original_max_position_embeddings,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            orig(
                json!({"max_position_embeddings": 64, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
            ),
            64.0
        );
        assert_eq!(
            orig(
                json!({"max_position_embeddings": 64, "rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32}})
            ),
            32.0
        );
        assert_eq!(
            orig(
                json!({"max_position_embeddings": 64, "original_max_position_embeddings": 16,
                        "rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32}})
            ),
            16.0
        );
    }

    #[test]
    fn unsupported_or_broken_settings_are_named() {
        let e = hf(json!({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0]}})).unwrap_err();
        assert!(
            e.key == "rope_scaling.rope_type" && e.message.contains("longrope"),
            "{e:?}"
        );
        let e = hf(json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}}))
            .unwrap_err();
        assert_eq!(e.key, "rope_scaling.high_freq_factor");
        let e = hf(json!({"partial_rotary_factor": 0.5})).unwrap_err();
        assert_eq!(e.key, "partial_rotary_factor");
        let e = hf(json!({"rope_scaling": "linear"})).unwrap_err();
        assert_eq!(e.key, "rope_scaling");
        let e = hf(json!({"rope_scaling": {"rope_type": "linear", "factor": -1.0}})).unwrap_err();
        assert!(e.message.contains("positive"), "{e:?}");
        let e = hf(json!({"layer_types": ["full_attention", "sliding_attention"],
                          "rope_parameters": {"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "linear", "factor": 2.0}}}))
        .unwrap_err();
        assert!(e.message.contains("per-layer"), "{e:?}");
        let (_, s) = hf(json!({"layer_types": ["full_attention"],
                               "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 4.0}}}))
        .unwrap();
        assert_eq!(s, RopeScaling::Linear { factor: 4.0 });
    }

    #[test]
    fn llama3_frequencies_match_llama_cpps_divisors() {
        // Llama 3.1's settings on a head of 128: llama.cpp's converter writes the divisors
        // 1 / ((1 - s) / factor + s) (or 1, or factor); dividing the plain frequencies by them
        // must give the llama3 frequencies.
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let (llama3, scale) = frequencies(500_000.0, &scaling, None, 128, None, Device::Cpu);
        assert_eq!(scale, 1.0);
        let (plain, _) = frequencies(500_000.0, &RopeScaling::Default, None, 128, None, Device::Cpu);
        let plain = Vec::<f32>::try_from(&plain).unwrap();
        let divisors: Vec<f32> = plain
            .iter()
            .map(|&f| {
                let wavelen = 2.0 * std::f64::consts::PI / f as f64;
                if wavelen < 8192.0 / 4.0 {
                    1.0
                } else if wavelen > 8192.0 {
                    8.0
                } else {
                    let s = (8192.0 / wavelen - 1.0) / 3.0;
                    (1.0 / ((1.0 - s) / 8.0 + s)) as f32
                }
            })
            .collect();
        let (via_divisors, _) = frequencies(
            500_000.0,
            &RopeScaling::Default,
            Some(&divisors),
            128,
            None,
            Device::Cpu,
        );
        let diff = (&llama3 - &via_divisors).abs().max().double_value(&[]);
        let rel = diff / llama3.abs().max().double_value(&[]);
        assert!(rel < 1e-6, "{rel}");
        assert!(divisors.contains(&1.0) && divisors.contains(&8.0));
    }

    #[test]
    fn dynamic_changes_only_beyond_the_trained_length() {
        let scaling = RopeScaling::Dynamic {
            factor: 2.0,
            max_position_embeddings: 32.0,
        };
        let plain = frequencies(10_000.0, &RopeScaling::Default, None, 16, None, Device::Cpu).0;
        let short = frequencies(10_000.0, &scaling, None, 16, Some(20), Device::Cpu).0;
        assert!(plain.equal(&short));
        let long = frequencies(10_000.0, &scaling, None, 16, Some(64), Device::Cpu).0;
        // base * (2 * 64 / 32 - 1)^(16 / 14) = base * 3^(8/7)
        let base = 10_000.0f64 * 3f64.powf(16.0 / 14.0);
        let want = 1.0 / base.powf(2.0 / 16.0);
        let got = long.double_value(&[1]);
        assert!((got - want).abs() / want < 1e-5, "{got} vs {want}");
    }
}
