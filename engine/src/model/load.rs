//! Building a `Model` from files: an HF folder (config.json + memory-mapped safetensors, single
//! or sharded) or a GGUF file (dequantised to f32), and random weights for benchmarks.
//!
//! Every check names the file, the tensor, what was expected and what was found.

use super::{LayerWeights, Linear, Model, ModelConfig, Proj};
use crate::gguf::{GgufError, GgufFile};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: unknown architecture {found:?}: expected llama or qwen2")]
    UnknownArchitecture { path: PathBuf, found: String },
    #[error("{path} is not a valid safetensors file (truncated or corrupt?): {message}")]
    BadSafetensors { path: PathBuf, message: String },
    #[error("{path} is truncated: tensor {tensor:?} needs the file to be at least {expected} bytes, found {found}")]
    Truncated {
        path: PathBuf,
        tensor: String,
        expected: usize,
        found: usize,
    },
    #[error("{path}: tensor {tensor:?} is missing")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor {tensor:?} is not a weight of a {architecture} model")]
    UnknownTensor {
        path: PathBuf,
        tensor: String,
        architecture: String,
    },
    #[error("{path}: tensor {tensor:?} has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor {tensor:?} has dtype {found}: expected F32, F16 or BF16")]
    Dtype {
        path: PathBuf,
        tensor: String,
        found: String,
    },
    #[error("model path {path} is neither a folder with config.json nor a .gguf file")]
    UnknownFormat { path: PathBuf },
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// Every HF tensor name of a model of `cfg` and its shape.
pub(super) fn hf_expected(cfg: &ModelConfig) -> BTreeMap<String, Vec<usize>> {
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let (q_out, kv_out) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let mut m = BTreeMap::new();
    m.insert("model.embed_tokens.weight".to_string(), vec![v, h]);
    m.insert("model.norm.weight".to_string(), vec![h]);
    if !cfg.tie_word_embeddings {
        m.insert("lm_head.weight".to_string(), vec![v, h]);
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        m.insert(format!("{p}.input_layernorm.weight"), vec![h]);
        m.insert(format!("{p}.post_attention_layernorm.weight"), vec![h]);
        for proj in Proj::ALL {
            let (out, inp) = proj_shape(cfg, proj);
            m.insert(format!("{p}.{}.weight", proj.module_path()), vec![out, inp]);
        }
        if cfg.attention_bias {
            m.insert(format!("{p}.self_attn.q_proj.bias"), vec![q_out]);
            m.insert(format!("{p}.self_attn.k_proj.bias"), vec![kv_out]);
            m.insert(format!("{p}.self_attn.v_proj.bias"), vec![kv_out]);
        }
    }
    m
}

/// (out, in) of a projection.
pub fn proj_shape(cfg: &ModelConfig, proj: Proj) -> (usize, usize) {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q_out, kv_out) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    match proj {
        Proj::Q => (q_out, h),
        Proj::K | Proj::V => (kv_out, h),
        Proj::O => (h, q_out),
        Proj::Gate | Proj::Up => (i, h),
        Proj::Down => (h, i),
    }
}

/// A `Model` of `cfg` whose tensors `take` supplies by HF name.
pub(super) fn assemble(
    cfg: ModelConfig,
    device: tch::Device,
    kind: Kind,
    mut take: impl FnMut(&str) -> Tensor,
) -> Model {
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let mut proj = BTreeMap::new();
        for pr in Proj::ALL {
            let has_bias = cfg.attention_bias && matches!(pr, Proj::Q | Proj::K | Proj::V);
            proj.insert(
                pr,
                Linear {
                    weight: take(&format!("{p}.{}.weight", pr.module_path())),
                    bias: has_bias.then(|| take(&format!("{p}.{}.bias", pr.module_path()))),
                },
            );
        }
        layers.push(LayerWeights::new(
            take(&format!("{p}.input_layernorm.weight")),
            take(&format!("{p}.post_attention_layernorm.weight")),
            proj,
            None,
        ));
    }
    let embed = take("model.embed_tokens.weight");
    let final_norm = take("model.norm.weight");
    let lm_head = (!cfg.tie_word_embeddings).then(|| take("lm_head.weight"));
    Model::from_parts(cfg, device, kind, embed, layers, final_norm, lm_head)
}

impl Model {
    /// Loads an HF folder or a GGUF file onto `device`, computing in `kind`.
    pub fn load(path: &Path, device: tch::Device, kind: Kind) -> Result<Model, LoadError> {
        if path.is_dir() && path.join("config.json").exists() {
            Model::load_hf_dir(path, device, kind)
        } else if path.extension().is_some_and(|e| e == "gguf") && path.is_file() {
            Model::load_gguf(&GgufFile::open(path)?, device, kind)
        } else {
            Err(LoadError::UnknownFormat {
                path: path.to_path_buf(),
            })
        }
    }

    pub fn load_hf_dir(dir: &Path, device: tch::Device, kind: Kind) -> Result<Model, LoadError> {
        let cfg = ModelConfig::from_hf_json(&dir.join("config.json"))?;
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|error| LoadError::Io {
                path: index.clone(),
                error,
            })?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| LoadError::Config {
                path: index.clone(),
                message: format!("not valid JSON: {e}"),
            })?;
            let names: BTreeSet<String> = v["weight_map"]
                .as_object()
                .ok_or_else(|| LoadError::Config {
                    path: index.clone(),
                    message: "expected an object \"weight_map\"".into(),
                })?
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let expected = hf_expected(&cfg);
        let mut loaded: BTreeMap<String, Tensor> = BTreeMap::new();
        for file in &files {
            let f = std::fs::File::open(file).map_err(|error| LoadError::Io {
                path: file.clone(),
                error,
            })?;
            // SAFETY: read-only map of a weights file; see GgufFile::open.
            let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|error| LoadError::Io {
                path: file.clone(),
                error,
            })?;
            let st = SafeTensors::deserialize(&map).map_err(|e| {
                truncated_tensor(file, &map).unwrap_or_else(|| LoadError::BadSafetensors {
                    path: file.clone(),
                    message: e.to_string(),
                })
            })?;
            for (name, view) in st.tensors() {
                // Rotary caches some exporters save are recomputed, not loaded.
                if name.ends_with("rotary_emb.inv_freq") {
                    continue;
                }
                let Some(want) = expected.get(&name) else {
                    return Err(LoadError::UnknownTensor {
                        path: file.clone(),
                        tensor: name,
                        architecture: format!("{:?}", cfg.architecture).to_lowercase(),
                    });
                };
                if view.shape() != want.as_slice() {
                    return Err(LoadError::Shape {
                        path: file.clone(),
                        tensor: name,
                        expected: want.clone(),
                        found: view.shape().to_vec(),
                    });
                }
                let src_kind = match view.dtype() {
                    safetensors::Dtype::F32 => Kind::Float,
                    safetensors::Dtype::F16 => Kind::Half,
                    safetensors::Dtype::BF16 => Kind::BFloat16,
                    other => {
                        return Err(LoadError::Dtype {
                            path: file.clone(),
                            tensor: name,
                            found: format!("{other:?}"),
                        })
                    }
                };
                let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
                let t = Tensor::from_data_size(view.data(), &shape, src_kind)
                    .to_device(device)
                    .to_kind(kind);
                loaded.insert(name, t);
            }
        }
        let first = files[0].clone();
        for name in expected.keys() {
            if !loaded.contains_key(name) {
                return Err(LoadError::MissingTensor {
                    path: if files.len() == 1 {
                        first.clone()
                    } else {
                        index.clone()
                    },
                    tensor: name.clone(),
                });
            }
        }
        Ok(assemble(cfg, device, kind, |n| {
            loaded.remove(n).unwrap_or_default()
        }))
    }

    /// Loads a GGUF file; llama.cpp's converter permutes the rows of attn_q/attn_k of LLaMA-arch
    /// models for its interleaved rotary, which is undone here exactly as transformers does.
    pub fn load_gguf(g: &GgufFile, device: tch::Device, kind: Kind) -> Result<Model, LoadError> {
        let cfg = ModelConfig::from_gguf(g)?;
        let path = g.path().to_path_buf();
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        map.insert("token_embd.weight".into(), "model.embed_tokens.weight".into());
        map.insert("output_norm.weight".into(), "model.norm.weight".into());
        map.insert("output.weight".into(), "lm_head.weight".into());
        let gguf_proj = [
            (Proj::Q, "attn_q"),
            (Proj::K, "attn_k"),
            (Proj::V, "attn_v"),
            (Proj::O, "attn_output"),
            (Proj::Gate, "ffn_gate"),
            (Proj::Up, "ffn_up"),
            (Proj::Down, "ffn_down"),
        ];
        for l in 0..cfg.num_hidden_layers {
            map.insert(
                format!("blk.{l}.attn_norm.weight"),
                format!("model.layers.{l}.input_layernorm.weight"),
            );
            map.insert(
                format!("blk.{l}.ffn_norm.weight"),
                format!("model.layers.{l}.post_attention_layernorm.weight"),
            );
            for (p, short) in gguf_proj {
                map.insert(
                    format!("blk.{l}.{short}.weight"),
                    format!("model.layers.{l}.{}.weight", p.module_path()),
                );
                map.insert(
                    format!("blk.{l}.{short}.bias"),
                    format!("model.layers.{l}.{}.bias", p.module_path()),
                );
            }
        }
        let expected = hf_expected(&cfg);
        let mut loaded: BTreeMap<String, Tensor> = BTreeMap::new();
        for info in g.tensor_infos() {
            // Read into the config's rope settings (llama only; elsewhere it is an unknown tensor:
            // llama.cpp does not apply it there either).
            if info.name == "rope_freqs.weight" && cfg.rope_freq_factors.is_some() {
                continue;
            }
            let Some(hf) = map.get(&info.name).filter(|n| expected.contains_key(*n)) else {
                return Err(LoadError::UnknownTensor {
                    path: path.clone(),
                    tensor: info.name.clone(),
                    architecture: format!("{:?}", cfg.architecture).to_lowercase(),
                });
            };
            // Dequantising first reports an unsupported type before any shape question.
            let (shape, values) = g.tensor_f32(&info.name)?;
            let want = &expected[hf];
            if &info.shape != want {
                return Err(LoadError::Shape {
                    path: path.clone(),
                    tensor: info.name.clone(),
                    expected: want.clone(),
                    found: info.shape.clone(),
                });
            }
            let shape_i: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let mut t = Tensor::from_slice(&values).view(shape_i.as_slice());
            if cfg.architecture == super::Architecture::Llama {
                if info.name.ends_with("attn_q.weight") {
                    t = reverse_permute(&t, cfg.num_attention_heads);
                } else if info.name.ends_with("attn_k.weight") {
                    t = reverse_permute(&t, cfg.num_key_value_heads);
                }
            }
            loaded.insert(hf.clone(), t.to_device(device).to_kind(kind));
        }
        for name in expected.keys() {
            if !loaded.contains_key(name) {
                let gguf_name = map
                    .iter()
                    .find(|(_, hf)| *hf == name)
                    .map_or(name.clone(), |(g, _)| g.clone());
                return Err(LoadError::MissingTensor {
                    path: path.clone(),
                    tensor: gguf_name,
                });
            }
        }
        Ok(assemble(cfg, device, kind, |n| {
            loaded.remove(n).unwrap_or_default()
        }))
    }

    /// Random weights of the given shape built directly on `device` (benchmarks, tests).
    pub fn random(cfg: &ModelConfig, device: tch::Device, kind: Kind, seed: i64) -> Model {
        tch::manual_seed(seed);
        let _guard = tch::no_grad_guard();
        let expected = hf_expected(cfg);
        assemble(cfg.clone(), device, kind, |name| {
            let shape: Vec<i64> = expected[name].iter().map(|&d| d as i64).collect();
            if name.ends_with("norm.weight") {
                Tensor::ones(shape.as_slice(), (kind, device))
            } else {
                Tensor::randn(shape.as_slice(), (kind, device)) * 0.02
            }
        })
    }
}

/// When a safetensors file fails to parse because its data ends early, the first tensor whose
/// bytes lie past the end (the header is intact, so it can still be read).
fn truncated_tensor(path: &Path, bytes: &[u8]) -> Option<LoadError> {
    let header_len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header: serde_json::Value =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(header_len)?)?).ok()?;
    let mut ends: Vec<(usize, String)> = header
        .as_object()?
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .filter_map(|(name, info)| {
            let end = usize::try_from(info["data_offsets"].get(1)?.as_u64()?).ok()?;
            Some(((8 + header_len).checked_add(end)?, name.clone()))
        })
        .collect();
    ends.sort();
    let (expected, tensor) = ends.into_iter().find(|(end, _)| *end > bytes.len())?;
    Some(LoadError::Truncated {
        path: path.to_path_buf(),
        tensor,
        expected,
        found: bytes.len(),
    })
}

/// Undoes llama.cpp's q/k row permutation: [heads, 2, dim/2, in] -> [heads, dim/2, 2, in].
fn reverse_permute(w: &Tensor, heads: usize) -> Tensor {
    let size = w.size();
    let (rows, cols) = (size[0], size[1]);
    let heads = heads as i64;
    let half = rows / heads / 2;
    w.reshape([heads, half, 2, cols])
        .transpose(1, 2)
        .reshape([rows, cols])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::tests::{write_gguf, Meta};
    use crate::model::Architecture;

    fn tiny_llama() -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Llama,
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 12,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 4,
            rope_theta: 10_000.0,
            rope_scaling: crate::model::RopeScaling::Default,
            rope_freq_factors: None,
            rms_norm_eps: 1e-5,
            attention_bias: false,
            tie_word_embeddings: true,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }

    fn write_config(dir: &Path, model_type: &str) {
        let cfg = serde_json::json!({
            "model_type": model_type, "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": [2, 3],
            "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}
        });
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    }

    /// Deterministic f32 values for a tensor (its index times a small step).
    fn values(n: usize, salt: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7 + salt * 13) % 23) as f32 * 0.01 - 0.1)
            .collect()
    }

    fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Vec<usize>>) {
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .enumerate()
            .map(|(i, (name, shape))| {
                let n = shape.iter().product();
                let bytes = values(n, i).iter().flat_map(|x| x.to_le_bytes()).collect();
                (name.clone(), shape.clone(), bytes)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
            .iter()
            .map(|(name, shape, bytes)| {
                (
                    name.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                        .unwrap(),
                )
            })
            .collect();
        std::fs::write(path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
    }

    fn load_err(dir: &Path) -> String {
        match Model::load(dir, tch::Device::Cpu, Kind::Float) {
            Ok(_) => panic!("loading {} should fail", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_hf_folder_loads_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), "llama");
        let cfg = ModelConfig::from_hf_json(&dir.path().join("config.json")).unwrap();
        assert_eq!(cfg.rope_theta, 500_000.0);
        assert_eq!(cfg.eos_token_id, Some(2));
        assert_eq!(
            cfg,
            ModelConfig {
                rope_theta: 500_000.0,
                ..tiny_llama()
            }
        );
        let expected = hf_expected(&cfg);
        let st = dir.path().join("model.safetensors");
        write_safetensors(&st, &expected);
        let model = Model::load(dir.path(), tch::Device::Cpu, Kind::Float).unwrap();
        let w = model.projection_weight(1, Proj::Down);
        assert_eq!(w.size(), vec![8, 12]);
        assert_eq!(model.num_layers(), 2);

        // Truncated: the header survives, the data does not.
        let full = std::fs::read(&st).unwrap();
        std::fs::write(&st, &full[..full.len() - 40]).unwrap();
        let err = load_err(dir.path());
        assert!(
            err.contains("model.safetensors") && err.contains("needs the file to be at least"),
            "{err}"
        );
        std::fs::write(&st, &full[..5]).unwrap();
        let err = load_err(dir.path());
        assert!(
            err.contains("model.safetensors") && err.contains("not a valid safetensors"),
            "{err}"
        );

        // An unknown tensor name.
        let mut extra = expected.clone();
        extra.insert("model.layers.0.self_attn.rotary.weight".into(), vec![4]);
        write_safetensors(&st, &extra);
        let err = load_err(dir.path());
        assert!(
            err.contains("model.safetensors") && err.contains("model.layers.0.self_attn.rotary.weight"),
            "{err}"
        );

        // A missing tensor.
        let mut fewer = expected.clone();
        fewer.remove("model.layers.1.mlp.up_proj.weight");
        write_safetensors(&st, &fewer);
        let err = load_err(dir.path());
        assert!(
            err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("missing"),
            "{err}"
        );

        // A shape mismatch names expected and found.
        let mut wrong = expected.clone();
        wrong.insert("model.layers.0.self_attn.k_proj.weight".into(), vec![8, 8]);
        write_safetensors(&st, &wrong);
        let err = load_err(dir.path());
        assert!(
            err.contains("model.layers.0.self_attn.k_proj.weight")
                && err.contains("[4, 8]")
                && err.contains("[8, 8]"),
            "{err}"
        );

        // An unknown architecture.
        write_config(dir.path(), "mamba");
        let err = load_err(dir.path());
        assert!(
            err.contains("config.json") && err.contains("mamba") && err.contains("llama or qwen2"),
            "{err}"
        );
    }

    #[test]
    fn a_sharded_hf_folder_loads_from_its_index() {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), "llama");
        let cfg = ModelConfig::from_hf_json(&dir.path().join("config.json")).unwrap();
        let expected = hf_expected(&cfg);
        let (first, second): (BTreeMap<_, _>, BTreeMap<_, _>) = expected
            .clone()
            .into_iter()
            .partition(|(n, _)| n.contains("layers.0"));
        write_safetensors(&dir.path().join("a.safetensors"), &first);
        write_safetensors(&dir.path().join("b.safetensors"), &second);
        let weight_map: serde_json::Map<String, serde_json::Value> = expected
            .keys()
            .map(|n| {
                let file = if first.contains_key(n) {
                    "a.safetensors"
                } else {
                    "b.safetensors"
                };
                (n.clone(), file.into())
            })
            .collect();
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            serde_json::json!({ "weight_map": weight_map }).to_string(),
        )
        .unwrap();
        let model = Model::load(dir.path(), tch::Device::Cpu, Kind::Float).unwrap();
        assert_eq!(model.projection_weight(0, Proj::Q).size(), vec![8, 8]);
        std::fs::remove_file(dir.path().join("b.safetensors")).unwrap();
        let err = load_err(dir.path());
        assert!(err.contains("b.safetensors"), "{err}");
    }

    fn llama_meta() -> Vec<(&'static str, Meta)> {
        vec![
            ("general.architecture", Meta::Str("llama")),
            ("llama.embedding_length", Meta::U32(8)),
            ("llama.feed_forward_length", Meta::U32(12)),
            ("llama.block_count", Meta::U32(1)),
            ("llama.attention.head_count", Meta::U32(2)),
            ("llama.attention.head_count_kv", Meta::U32(1)),
            ("llama.rope.freq_base", Meta::F32(10_000.0)),
            ("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5)),
            ("llama.vocab_size", Meta::U32(10)),
        ]
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// llama.cpp's converter (`LlamaModel.permute`): rows [heads, 2, dim/2] -> [heads, dim/2, 2].
    fn llama_cpp_permute(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
        let half = rows / heads / 2;
        let mut out = vec![0f32; w.len()];
        for h in 0..heads {
            for two in 0..2 {
                for i in 0..half {
                    let src = h * 2 * half + two * half + i;
                    let dst = h * 2 * half + i * 2 + two;
                    out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn a_llama_gguf_loads_with_q_and_k_rows_unpermuted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let mut tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)> = Vec::new();
        let mut originals = BTreeMap::new();
        let shapes: [(&str, Vec<usize>); 10] = [
            ("token_embd.weight", vec![10, 8]),
            ("output_norm.weight", vec![8]),
            ("blk.0.attn_norm.weight", vec![8]),
            ("blk.0.ffn_norm.weight", vec![8]),
            ("blk.0.attn_q.weight", vec![8, 8]),
            ("blk.0.attn_k.weight", vec![4, 8]),
            ("blk.0.attn_v.weight", vec![4, 8]),
            ("blk.0.attn_output.weight", vec![8, 8]),
            ("blk.0.ffn_gate.weight", vec![12, 8]),
            ("blk.0.ffn_up.weight", vec![12, 8]),
        ];
        for (i, (name, shape)) in shapes
            .iter()
            .chain([("blk.0.ffn_down.weight", vec![8, 12])].iter())
            .enumerate()
        {
            let v = values(shape.iter().product(), i);
            originals.insert(name.to_string(), v.clone());
            let stored = match *name {
                "blk.0.attn_q.weight" => llama_cpp_permute(&v, 8, 8, 2),
                "blk.0.attn_k.weight" => llama_cpp_permute(&v, 4, 8, 1),
                _ => v,
            };
            let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
            tensors.push((name.to_string(), dims, 0, f32_bytes(&stored)));
        }
        write_gguf(&path, &llama_meta(), &tensors);
        let model = Model::load(&path, tch::Device::Cpu, Kind::Float).unwrap();
        assert!(model.config().tie_word_embeddings);
        for (proj, name) in [
            (Proj::Q, "blk.0.attn_q.weight"),
            (Proj::K, "blk.0.attn_k.weight"),
            (Proj::V, "blk.0.attn_v.weight"),
        ] {
            let got = Vec::<f32>::try_from(model.projection_weight(0, proj).reshape([-1])).unwrap();
            assert_eq!(got, originals[name], "{name}");
        }

        // A quantisation pspace cannot read is named with its tensor.
        let mut quant = tensors.clone();
        quant[5] = ("blk.0.attn_k.weight".into(), vec![256, 4], 12, vec![0u8; 4 * 144]);
        write_gguf(&path, &llama_meta(), &quant);
        let err = load_err(&path);
        assert!(
            err.contains("m.gguf") && err.contains("blk.0.attn_k.weight") && err.contains("Q4_K"),
            "{err}"
        );

        // Shape mismatch and unknown tensors.
        let mut wrong = tensors.clone();
        wrong[5].1 = vec![8, 8];
        wrong[5].3 = vec![0u8; 256];
        write_gguf(&path, &llama_meta(), &wrong);
        let err = load_err(&path);
        assert!(
            err.contains("blk.0.attn_k.weight") && err.contains("[4, 8]") && err.contains("[8, 8]"),
            "{err}"
        );
        let mut extra = tensors.clone();
        extra.push(("blk.0.attn_sinks.weight".into(), vec![2], 0, vec![0u8; 8]));
        write_gguf(&path, &llama_meta(), &extra);
        let err = load_err(&path);
        assert!(err.contains("blk.0.attn_sinks.weight"), "{err}");
        let mut missing = tensors.clone();
        missing.remove(1);
        write_gguf(&path, &llama_meta(), &missing);
        let err = load_err(&path);
        assert!(
            err.contains("output_norm.weight") && err.contains("missing"),
            "{err}"
        );

        // An architecture other than llama/qwen2.
        let mut meta = llama_meta();
        meta[0].1 = Meta::Str("gemma3");
        write_gguf(&path, &meta, &tensors);
        let err = load_err(&path);
        assert!(err.contains("m.gguf") && err.contains("gemma3"), "{err}");
    }
}
