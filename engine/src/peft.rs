//! Adapter files in Hugging Face PEFT's layout, so that Python PEFT loads adapters trained here
//! and this engine loads adapters trained by PEFT: `adapter_config.json` and
//! `adapter_model.safetensors` with keys
//! `base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}.weight`.
//! Files are written to a temporary name in the target folder and renamed into place, so a crash
//! never leaves a half-written adapter behind.

use crate::lora::{Lora, LoraConfig, LoraError, LoraPair};
use crate::model::{Model, Proj};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.model.layers.";

#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    /// The wrapped errors of `Io` and `Lora` are said in the text and not returned as
    /// `source()` (an error chain says each thing once).
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: tensor {tensor:?}: {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("{path}: not a safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: {error}")]
    Lora { path: PathBuf, error: LoraError },
}

/// What an adapter folder says about itself besides the tensors.
#[derive(Debug, Clone)]
pub struct AdapterMeta {
    pub config: LoraConfig,
    pub base_model_name_or_path: Option<String>,
    /// `layers_to_transform`: the only decoder layers the adapter may touch (None = all).
    pub layers: Option<Vec<usize>>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PeftError + '_ {
    move |error| PeftError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), std::io::Error> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn key(layer: usize, proj: Proj, which: char) -> String {
    format!("{KEY_PREFIX}{layer}.{}.lora_{which}.weight", proj.module_path())
}

/// Saves `lora` to `dir` (created if missing) as PEFT would with `save_pretrained`.
pub fn save(lora: &Lora, dir: &Path, base_model_name_or_path: &str) -> Result<(), PeftError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let cfg = lora.config();
    let targets: Vec<&str> = cfg.targets.iter().map(|p| p.peft_name()).collect();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "use_rslora": cfg.use_rslora,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": false,
        "revision": null,
    });
    let config_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config).map_err(|e| PeftError::Config {
        path: config_path.clone(),
        message: format!("cannot encode: {e}"),
    })?;
    write_atomically(&config_path, text.as_bytes()).map_err(io_err(&config_path))?;

    let weights_path = dir.join(WEIGHTS_FILE);
    let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (layer, proj, pair) in lora.pairs() {
        for (which, t) in [('A', &pair.a), ('B', &pair.b)] {
            let flat = t
                .detach()
                .to_device(tch::Device::Cpu)
                .to_kind(Kind::Float)
                .flatten(0, -1);
            let values = Vec::<f32>::try_from(&flat).map_err(|e| PeftError::Tensor {
                path: weights_path.clone(),
                tensor: key(layer, proj, which),
                message: e.to_string(),
            })?;
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let shape = t.size().iter().map(|&d| d as usize).collect();
            blobs.push((key(layer, proj, which), shape, bytes));
        }
    }
    let views = blobs
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| PeftError::Tensor {
                    path: weights_path.clone(),
                    tensor: name.clone(),
                    message: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| PeftError::Safetensors {
        path: weights_path.clone(),
        message: e.to_string(),
    })?;
    write_atomically(&weights_path, &bytes).map_err(io_err(&weights_path))
}

/// Keys of adapter_config.json that describe the adapter without changing what it computes
/// once loaded (training settings, provenance, initialisation).
const INFORMATIONAL_KEYS: [&str; 19] = [
    "task_type",
    "peft_type",
    "auto_mapping",
    "peft_version",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "init_lora_weights",
    "lora_dropout",
    "megatron_core",
    "qalora_group_size",
    "loftq_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
    "ensure_weight_tying",
    "runtime_config",
    "exclude_modules",
    "use_rslora",
];

/// Keys whose non-neutral values change the model in ways this engine does not implement, with
/// what they mean; an adapter that sets one is refused by name.
const REFUSED_KEYS: [(&str, &str); 17] = [
    (
        "modules_to_save",
        "whole modules trained and saved next to the adapter",
    ),
    ("use_dora", "DoRA (weight-decomposed LoRA)"),
    ("fan_in_fan_out", "weights stored transposed (Conv1D layers)"),
    ("lora_bias", "a trained bias on lora_B"),
    ("megatron_config", "Megatron-sharded layers"),
    ("trainable_token_indices", "trained rows of the embedding matrix"),
    ("target_parameters", "LoRA on parameters instead of modules"),
    ("layer_replication", "layers duplicated before adaptation"),
    (
        "alora_invocation_tokens",
        "activated LoRA (applied only after invocation tokens)",
    ),
    ("use_qalora", "QA-LoRA (quantization-aware pooling of inputs)"),
    ("velora_config", "VeLoRA"),
    ("monteclora_config", "MonteCLoRA"),
    ("use_bdlora", "block-diagonal LoRA"),
    ("arrow_config", "Arrow routing between adapters"),
    ("kasa_config", "KaSA"),
    ("rank_pattern", "per-module ranks"),
    ("alpha_pattern", "per-module alphas"),
];

/// null, false, "", an empty list or map, or "none".
fn is_neutral(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Bool(b) => !b,
        serde_json::Value::String(s) => s.is_empty() || s == "none",
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        serde_json::Value::Number(_) => false,
    }
}

/// Reads `adapter_config.json`. Every key that changes what the adapter computes is honoured
/// (`r`, `lora_alpha`, `use_rslora`, `target_modules` as names or "all-linear",
/// `layers_to_transform`, `layers_pattern` = "layers") or refused by name (`modules_to_save`,
/// DoRA, biases, per-module ranks and alphas, ...); an unknown key with a value other than
/// null/false/empty is refused too, since its effect cannot be known.
pub fn read_meta(dir: &Path) -> Result<AdapterMeta, PeftError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    parse_meta(&text, &path)
}

/// As `read_meta`, from the file's text (`path` names it in errors).
pub fn parse_meta(text: &str, path: &Path) -> Result<AdapterMeta, PeftError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| PeftError::Config {
        path: path.to_path_buf(),
        message: format!("not valid JSON: {e}"),
    })?;
    let obj = v.as_object().ok_or_else(|| PeftError::Config {
        path: path.to_path_buf(),
        message: format!("expected a JSON object, found {v}"),
    })?;
    let bad = |key: &str, what: &str| PeftError::Config {
        path: path.to_path_buf(),
        message: format!(
            "key {key:?}: expected {what}, found {}",
            v.get(key).map_or("nothing".to_string(), |x| x.to_string())
        ),
    };
    if let Some(t) = v.get("peft_type").filter(|t| !t.is_null()) {
        if t.as_str() != Some("LORA") {
            return Err(bad("peft_type", "\"LORA\""));
        }
    }
    let rank = v
        .get("r")
        .and_then(|r| r.as_i64())
        .ok_or_else(|| bad("r", "an integer"))?;
    let alpha = v
        .get("lora_alpha")
        .and_then(|a| a.as_f64())
        .ok_or_else(|| bad("lora_alpha", "a number"))?;
    for (key, meaning) in REFUSED_KEYS {
        let Some(value) = v.get(key).filter(|x| !is_neutral(x)) else {
            continue;
        };
        // A pattern that repeats the global value changes nothing.
        let global = if key == "rank_pattern" { rank as f64 } else { alpha };
        let trivial = matches!(key, "rank_pattern" | "alpha_pattern")
            && value
                .as_object()
                .is_some_and(|m| m.values().all(|x| x.as_f64() == Some(global)));
        if !trivial {
            return Err(bad(
                key,
                &format!("null/false/empty: {meaning} is not supported by pspace"),
            ));
        }
    }
    if let Some(b) = v.get("bias").filter(|b| !b.is_null()) {
        if b.as_str() != Some("none") {
            return Err(bad(
                "bias",
                "\"none\" (trained biases are not supported by pspace)",
            ));
        }
    }
    let handled = [
        "r",
        "lora_alpha",
        "bias",
        "target_modules",
        "layers_to_transform",
        "layers_pattern",
    ];
    for (key, value) in obj {
        let known = INFORMATIONAL_KEYS.contains(&key.as_str())
            || handled.contains(&key.as_str())
            || REFUSED_KEYS.iter().any(|(k, _)| k == key);
        if !known && !is_neutral(value) {
            return Err(bad(
                key,
                "null/false/empty (pspace does not know this setting, so it cannot tell whether it changes the model)",
            ));
        }
    }
    let dropout = v.get("lora_dropout").and_then(|d| d.as_f64()).unwrap_or(0.0);
    let use_rslora = v.get("use_rslora").and_then(|d| d.as_bool()).unwrap_or(false);
    let targets = parse_targets(&v, &bad)?;
    let layers = parse_layers(&v, &bad)?;
    Ok(AdapterMeta {
        config: LoraConfig {
            rank,
            alpha,
            dropout,
            targets,
            use_rslora,
        },
        base_model_name_or_path: v
            .get("base_model_name_or_path")
            .and_then(|b| b.as_str())
            .map(str::to_string),
        layers,
    })
}

/// `target_modules`: a list of projection names, or "all-linear" (every linear layer but the
/// output head, which for these models is all seven projections).
fn parse_targets(
    v: &serde_json::Value,
    bad: &impl Fn(&str, &str) -> PeftError,
) -> Result<Vec<Proj>, PeftError> {
    const NAMES: &str =
        "names among q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj, or \"all-linear\"";
    let mut targets = match v.get("target_modules") {
        Some(serde_json::Value::String(s)) if s == "all-linear" => Proj::ALL.to_vec(),
        Some(serde_json::Value::Array(names)) => names
            .iter()
            .map(|n| {
                n.as_str()
                    .and_then(Proj::from_peft_name)
                    .ok_or_else(|| bad("target_modules", NAMES))
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(bad("target_modules", NAMES)),
    };
    targets.sort();
    targets.dedup();
    Ok(targets)
}

/// `layers_to_transform` (an index or a list; None = every layer), with `layers_pattern` null or
/// "layers" (the only layer list of these models).
fn parse_layers(
    v: &serde_json::Value,
    bad: &impl Fn(&str, &str) -> PeftError,
) -> Result<Option<Vec<usize>>, PeftError> {
    match v.get("layers_pattern") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(s)) if s == "layers" => {}
        Some(serde_json::Value::Array(a)) if a.iter().all(|x| x.as_str() == Some("layers")) => {}
        Some(_) => return Err(bad("layers_pattern", "null or \"layers\"")),
    }
    let index = |x: &serde_json::Value| x.as_u64().and_then(|i| usize::try_from(i).ok());
    let layers = match v.get("layers_to_transform") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| index(x).ok_or_else(|| bad("layers_to_transform", "a layer index or a list of them")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(x) => {
            vec![index(x).ok_or_else(|| bad("layers_to_transform", "a layer index or a list of them"))?]
        }
    };
    Ok(Some(layers))
}

/// Parses `base_model.model.model.layers.{i}.{module}.lora_{A|B}.weight`.
fn parse_key(name: &str) -> Option<(usize, Proj, char)> {
    let rest = name.strip_prefix(KEY_PREFIX)?;
    let (layer, rest) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    let (module, which) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        (m, 'A')
    } else {
        (rest.strip_suffix(".lora_B.weight")?, 'B')
    };
    let proj = Proj::ALL.into_iter().find(|p| p.module_path() == module)?;
    Some((layer, proj, which))
}

fn view_to_tensor(view: &TensorView<'_>) -> Result<Tensor, String> {
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => return Err(format!("expected F32, BF16 or F16, found {other:?}")),
    };
    Ok(Tensor::from_slice(&values).view(shape.as_slice()))
}

/// `model` with the adapter folder `dir` merged into its weights (PEFT's `merge_and_unload`);
/// calling it once per folder stacks adapters in order, as the runner stacks EM and coupling.
pub fn merged(dir: &Path, model: &Model) -> Result<Model, PeftError> {
    let (lora, _) = load(dir, model)?;
    Ok(lora.merged_into(model))
}

/// Loads an adapter folder for `model`. Tensors of projections the config does not target, or
/// anything that is not a LoRA A/B weight, are errors (they would be silently ignored otherwise).
pub fn load(dir: &Path, model: &Model) -> Result<(Lora, AdapterMeta), PeftError> {
    let meta = read_meta(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| PeftError::Safetensors {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mut halves: BTreeMap<(usize, Proj), (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (name, view) in st.tensors() {
        let tensor_err = |message: String| PeftError::Tensor {
            path: path.clone(),
            tensor: name.clone(),
            message,
        };
        let (layer, proj, which) = parse_key(&name).ok_or_else(|| {
            tensor_err(format!(
                "expected a name like {KEY_PREFIX}<layer>.self_attn.q_proj.lora_A.weight"
            ))
        })?;
        if let Some(allowed) = meta.layers.as_ref().filter(|l| !l.contains(&layer)) {
            return Err(tensor_err(format!(
                "layer {layer} is not among layers_to_transform {allowed:?}"
            )));
        }
        if !meta.config.targets.contains(&proj) {
            return Err(tensor_err(format!(
                "{} is not among target_modules {:?}",
                proj.peft_name(),
                meta.config
                    .targets
                    .iter()
                    .map(|p| p.peft_name())
                    .collect::<Vec<_>>()
            )));
        }
        let t = view_to_tensor(&view).map_err(tensor_err)?;
        let entry = halves.entry((layer, proj)).or_default();
        if which == 'A' {
            entry.0 = Some(t);
        } else {
            entry.1 = Some(t);
        }
    }
    let mut pairs = BTreeMap::new();
    for ((layer, proj), (a, b)) in halves {
        match (a, b) {
            (Some(a), Some(b)) => {
                pairs.insert((layer, proj), LoraPair { a, b });
            }
            (a, _) => {
                let missing = if a.is_none() { 'A' } else { 'B' };
                return Err(PeftError::Tensor {
                    path: path.clone(),
                    tensor: key(layer, proj, missing),
                    message: "missing: every adapted projection needs both lora_A and lora_B".into(),
                });
            }
        }
    }
    if pairs.is_empty() {
        return Err(PeftError::Tensor {
            path: path.clone(),
            tensor: String::new(),
            message: "expected LoRA tensors, found none".into(),
        });
    }
    let lora = Lora::from_pairs(model, meta.config.clone(), pairs).map_err(|error| PeftError::Lora {
        path: path.clone(),
        error,
    })?;
    Ok((lora, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    fn tiny() -> Model {
        Model::random(&ModelConfig::tiny_qwen2(), tch::Device::Cpu, Kind::Float, 3)
    }

    fn lora(model: &Model) -> Lora {
        let cfg = LoraConfig {
            rank: 2,
            alpha: 4.0,
            dropout: 0.05,
            targets: vec![Proj::K, Proj::Gate],
            use_rslora: true,
        };
        let l = Lora::init(model, cfg, 9).unwrap();
        let _guard = tch::no_grad_guard();
        for mut p in l.parameters() {
            p.copy_(&(Tensor::randn_like(&p) * 0.3));
        }
        l
    }

    #[test]
    fn save_then_load_round_trips_bit_exact() {
        let model = tiny();
        let original = lora(&model);
        let dir = tempfile::tempdir().unwrap();
        save(&original, dir.path(), "tiny").unwrap();
        let (loaded, meta) = load(dir.path(), &model).unwrap();
        assert_eq!(meta.config, *original.config());
        assert_eq!(meta.base_model_name_or_path.as_deref(), Some("tiny"));
        let (a, b) = (original.parameters(), loaded.parameters());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!(x.equal(y));
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    }

    /// PEFT 0.21's adapter_config.json for a LoRA (every key it writes), with changes.
    fn peft_config(changes: serde_json::Value) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/train_peft_trained/adapter_config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for (k, x) in changes.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string()
    }

    fn meta(changes: serde_json::Value) -> Result<AdapterMeta, String> {
        parse_meta(&peft_config(changes), Path::new("a/adapter_config.json")).map_err(|e| e.to_string())
    }

    #[test]
    fn every_peft_key_is_honoured_or_refused_by_name() {
        let m = meta(serde_json::json!({})).unwrap();
        assert_eq!((m.config.rank, m.config.alpha, m.layers.clone()), (4, 8.0, None));
        assert_eq!(m.config.targets.len(), 7);
        let m = meta(serde_json::json!({"target_modules": "all-linear", "layers_to_transform": 1})).unwrap();
        assert_eq!((m.config.targets, m.layers), (Proj::ALL.to_vec(), Some(vec![1])));
        // Patterns that repeat the global rank and alpha change nothing.
        assert!(
            meta(serde_json::json!({"rank_pattern": {"q_proj": 4}, "alpha_pattern": {"k_proj": 8.0}}))
                .is_ok()
        );
        for (key, value) in [
            ("modules_to_save", serde_json::json!(["lm_head"])),
            ("use_dora", serde_json::json!(true)),
            ("fan_in_fan_out", serde_json::json!(true)),
            ("lora_bias", serde_json::json!(true)),
            ("rank_pattern", serde_json::json!({"q_proj": 8})),
            ("alpha_pattern", serde_json::json!({"q_proj": 2.0})),
            ("trainable_token_indices", serde_json::json!([1, 2])),
            ("layer_replication", serde_json::json!([[0, 2]])),
            ("bias", serde_json::json!("lora_only")),
            ("layers_pattern", serde_json::json!("h")),
            ("target_modules", serde_json::json!(".*q_proj")),
            ("target_modules", serde_json::json!(["c_attn"])),
            ("peft_type", serde_json::json!("IA3")),
            ("some_future_setting", serde_json::json!(0.5)),
        ] {
            let err = meta(serde_json::json!({ key: value })).unwrap_err();
            assert!(
                err.contains("adapter_config.json") && err.contains(key),
                "{key}: {err}"
            );
        }
        // An unknown key left at a neutral value is fine.
        assert!(meta(serde_json::json!({"some_future_setting": null, "other": false})).is_ok());
    }

    #[test]
    fn layers_to_transform_limits_the_layers_an_adapter_may_touch() {
        let model = tiny();
        let dir = tempfile::tempdir().unwrap();
        save(&lora(&model), dir.path(), "tiny").unwrap();
        let cfg_path = dir.path().join(CONFIG_FILE);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
        v["layers_to_transform"] = serde_json::json!([0, 1, 2, 3]);
        std::fs::write(&cfg_path, v.to_string()).unwrap();
        assert!(load(dir.path(), &model).is_ok());
        v["layers_to_transform"] = serde_json::json!([1, 2, 3]);
        std::fs::write(&cfg_path, v.to_string()).unwrap();
        let err = load(dir.path(), &model).err().unwrap().to_string();
        assert!(
            err.contains("layer 0") && err.contains("layers_to_transform"),
            "{err}"
        );
    }

    #[test]
    fn keys_follow_peft() {
        assert_eq!(
            key(3, Proj::Down, 'B'),
            "base_model.model.model.layers.3.mlp.down_proj.lora_B.weight"
        );
        assert_eq!(
            parse_key("base_model.model.model.layers.12.self_attn.o_proj.lora_A.weight"),
            Some((12, Proj::O, 'A'))
        );
        assert_eq!(parse_key("base_model.model.lm_head.weight"), None);
    }

    #[test]
    fn bad_adapters_name_the_problem() {
        let model = tiny();
        let dir = tempfile::tempdir().unwrap();
        save(&lora(&model), dir.path(), "tiny").unwrap();
        let cfg_path = dir.path().join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).unwrap();
        // Config that no longer targets gate_proj: the gate tensors are unexpected.
        std::fs::write(&cfg_path, text.replace("\"gate_proj\"", "\"up_proj\"")).unwrap();
        let err = load(dir.path(), &model).err().unwrap().to_string();
        assert!(
            err.contains("gate_proj") && err.contains("target_modules"),
            "{err}"
        );
        std::fs::write(&cfg_path, text.replace("\"r\": 2", "\"r\": 3")).unwrap();
        let err = load(dir.path(), &model).err().unwrap().to_string();
        assert!(err.contains("expected lora_A [3,"), "{err}");
        std::fs::write(&cfg_path, "{").unwrap();
        let err = load(dir.path(), &model).err().unwrap().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }
}
