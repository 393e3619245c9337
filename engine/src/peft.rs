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
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
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
    #[error("{path}: {source}")]
    Lora { path: PathBuf, source: LoraError },
}

/// What an adapter folder says about itself besides the tensors.
#[derive(Debug, Clone)]
pub struct AdapterMeta {
    pub config: LoraConfig,
    pub base_model_name_or_path: Option<String>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PeftError + '_ {
    move |source| PeftError::Io {
        path: path.to_path_buf(),
        source,
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
    let text = serde_json::to_string_pretty(&config).unwrap_or_default();
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

/// Reads `adapter_config.json`.
pub fn read_meta(dir: &Path) -> Result<AdapterMeta, PeftError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| PeftError::Config {
        path: path.clone(),
        message: format!("not valid JSON: {e}"),
    })?;
    let bad = |key: &str, what: &str| PeftError::Config {
        path: path.clone(),
        message: format!(
            "key {key:?}: expected {what}, found {}",
            v.get(key).map_or("nothing".to_string(), |x| x.to_string())
        ),
    };
    if let Some(t) = v.get("peft_type").and_then(|t| t.as_str()) {
        if t != "LORA" {
            return Err(bad("peft_type", "\"LORA\""));
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if v.get(key)
            .and_then(|p| p.as_object())
            .is_some_and(|m| !m.is_empty())
        {
            return Err(bad(key, "an empty map (per-module ranks are not supported)"));
        }
    }
    if v.get("use_dora").and_then(|d| d.as_bool()) == Some(true) {
        return Err(bad("use_dora", "false (DoRA is not supported)"));
    }
    if v.get("bias")
        .and_then(|b| b.as_str())
        .is_some_and(|b| b != "none")
    {
        return Err(bad("bias", "\"none\""));
    }
    let rank = v["r"].as_i64().ok_or_else(|| bad("r", "an integer"))?;
    let alpha = v["lora_alpha"]
        .as_f64()
        .ok_or_else(|| bad("lora_alpha", "a number"))?;
    let dropout = v.get("lora_dropout").and_then(|d| d.as_f64()).unwrap_or(0.0);
    let use_rslora = v.get("use_rslora").and_then(|d| d.as_bool()).unwrap_or(false);
    let names = v["target_modules"]
        .as_array()
        .ok_or_else(|| bad("target_modules", "a list of projection names"))?;
    let mut targets = Vec::new();
    for name in names {
        let proj = name.as_str().and_then(Proj::from_peft_name).ok_or_else(|| {
            bad(
                "target_modules",
                "names among q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
            )
        })?;
        targets.push(proj);
    }
    targets.sort();
    targets.dedup();
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
    })
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
    let lora = Lora::from_pairs(model, meta.config.clone(), pairs).map_err(|source| PeftError::Lora {
        path: path.clone(),
        source,
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
