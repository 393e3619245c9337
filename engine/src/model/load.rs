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
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: unknown architecture {found:?}: expected llama or qwen2")]
    UnknownArchitecture { path: PathBuf, found: String },
    #[error("{path} is not a valid safetensors file (truncated or corrupt?): {message}")]
    BadSafetensors { path: PathBuf, message: String },
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

/// Where each HF tensor name goes.
fn hf_expected(cfg: &ModelConfig) -> BTreeMap<String, Vec<usize>> {
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

fn assemble(
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
        layers.push(LayerWeights {
            input_norm: take(&format!("{p}.input_layernorm.weight")),
            post_attention_norm: take(&format!("{p}.post_attention_layernorm.weight")),
            proj,
        });
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
            let text = std::fs::read_to_string(&index).map_err(|source| LoadError::Io {
                path: index.clone(),
                source,
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
            let f = std::fs::File::open(file).map_err(|source| LoadError::Io {
                path: file.clone(),
                source,
            })?;
            // SAFETY: read-only map of a weights file; see GgufFile::open.
            let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|source| LoadError::Io {
                path: file.clone(),
                source,
            })?;
            let st = SafeTensors::deserialize(&map).map_err(|e| LoadError::BadSafetensors {
                path: file.clone(),
                message: e.to_string(),
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
            if info.name == "rope_freqs.weight" {
                continue;
            }
            let Some(hf) = map.get(&info.name).filter(|n| expected.contains_key(*n)) else {
                return Err(LoadError::UnknownTensor {
                    path: path.clone(),
                    tensor: info.name.clone(),
                    architecture: format!("{:?}", cfg.architecture).to_lowercase(),
                });
            };
            let want = &expected[hf];
            if &info.shape != want {
                return Err(LoadError::Shape {
                    path: path.clone(),
                    tensor: info.name.clone(),
                    expected: want.clone(),
                    found: info.shape.clone(),
                });
            }
            let (shape, values) = g.tensor_f32(&info.name)?;
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
                return Err(LoadError::MissingTensor {
                    path: path.clone(),
                    tensor: name.clone(),
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
