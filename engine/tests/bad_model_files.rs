//! Broken model files through the public `Model::load`: each is made inside the test from the
//! tiny Qwen2 fixture (or as a minimal GGUF) and must be refused with an error that names the
//! file, the tensor or key at fault, what was expected and what was found, because a user who
//! points pspace at a bad download should learn from the message alone what is wrong.

use pspace_engine::model::Model;
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn tiny_qwen2_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2")
}

/// The fixture's tensors as (shape, dtype, bytes), by name.
fn fixture_tensors() -> BTreeMap<String, (Vec<usize>, safetensors::Dtype, Vec<u8>)> {
    let bytes = std::fs::read(tiny_qwen2_dir().join("model.safetensors")).expect("fixture weights");
    let file = SafeTensors::deserialize(&bytes).expect("fixture safetensors parses");
    file.tensors()
        .into_iter()
        .map(|(name, view)| (name, (view.shape().to_vec(), view.dtype(), view.data().to_vec())))
        .collect()
}

/// A copy of the tiny Qwen2 folder (config.json only) whose weights are `tensors`.
fn hf_dir_with(tensors: &BTreeMap<String, (Vec<usize>, safetensors::Dtype, Vec<u8>)>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(
        tiny_qwen2_dir().join("config.json"),
        dir.path().join("config.json"),
    )
    .expect("copy config.json");
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, (shape, dtype, data))| {
            let view = TensorView::new(*dtype, shape.clone(), data).expect("valid view");
            (name.clone(), view)
        })
        .collect();
    let bytes = safetensors::tensor::serialize(views, None).expect("serialize");
    std::fs::write(dir.path().join("model.safetensors"), bytes).expect("write weights");
    dir
}

fn load_error(path: &Path) -> String {
    match Model::load(path, tch::Device::Cpu, tch::Kind::Float) {
        Ok(_) => panic!("{} loaded but is broken", path.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_names_all(err: &str, parts: &[&str]) {
    for part in parts {
        assert!(err.contains(part), "error {err:?} does not mention {part:?}");
    }
}

#[test]
fn the_unmodified_fixture_loads() {
    let dir = hf_dir_with(&fixture_tensors());
    let model = Model::load(dir.path(), tch::Device::Cpu, tch::Kind::Float).expect("loads");
    assert_eq!(model.num_layers(), 4);
}

#[test]
fn a_truncated_safetensors_names_the_tensor_and_the_sizes() {
    let dir = hf_dir_with(&fixture_tensors());
    let weights = dir.path().join("model.safetensors");
    let full = std::fs::read(&weights).expect("read");
    let cut = full.len() - 1000;
    std::fs::write(&weights, &full[..cut]).expect("truncate");
    let err = load_error(dir.path());
    // The first tensor (in file order) whose bytes reach past the cut is the one to name, with
    // the file length it needs.
    let header_len = u64::from_le_bytes(full[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&full[8..8 + header_len]).expect("header JSON");
    let (needed, first_cut_tensor) = header
        .as_object()
        .expect("header object")
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .map(|(name, info)| {
            let end = info["data_offsets"][1].as_u64().expect("offset") as usize;
            (8 + header_len + end, name.clone())
        })
        .filter(|(end, _)| *end > cut)
        .min()
        .expect("some tensor is cut");
    assert_names_all(
        &err,
        &[
            "model.safetensors",
            &format!("{first_cut_tensor:?}"),
            &format!("at least {needed} bytes"),
            &format!("found {cut}"),
        ],
    );
}

#[test]
fn a_safetensors_cut_inside_its_header_is_named_as_corrupt() {
    let dir = hf_dir_with(&fixture_tensors());
    let weights = dir.path().join("model.safetensors");
    let full = std::fs::read(&weights).expect("read");
    std::fs::write(&weights, &full[..20]).expect("truncate");
    let err = load_error(dir.path());
    assert_names_all(&err, &["model.safetensors", "not a valid safetensors"]);
}

#[test]
fn an_unknown_tensor_name_is_named_with_the_architecture() {
    let mut tensors = fixture_tensors();
    let norm = tensors["model.norm.weight"].clone();
    tensors.insert("model.layers.2.self_attn.rotary_scale".into(), norm);
    let err = load_error(hf_dir_with(&tensors).path());
    assert_names_all(
        &err,
        &[
            "model.safetensors",
            "model.layers.2.self_attn.rotary_scale",
            "qwen2",
        ],
    );
}

#[test]
fn a_missing_tensor_is_named() {
    let mut tensors = fixture_tensors();
    tensors.remove("model.layers.3.mlp.down_proj.weight");
    let err = load_error(hf_dir_with(&tensors).path());
    assert_names_all(
        &err,
        &[
            "model.safetensors",
            "model.layers.3.mlp.down_proj.weight",
            "missing",
        ],
    );
}

#[test]
fn a_shape_mismatch_names_expected_and_found() {
    let mut tensors = fixture_tensors();
    // k_proj of the tiny model is [2 kv heads * 16, 64]; store a [64, 64] one instead.
    let name = "model.layers.1.self_attn.k_proj.weight";
    assert_eq!(tensors[name].0, vec![32, 64], "fixture changed");
    tensors.insert(
        name.into(),
        (vec![64, 64], safetensors::Dtype::F32, vec![0u8; 64 * 64 * 4]),
    );
    let err = load_error(hf_dir_with(&tensors).path());
    assert_names_all(&err, &["model.safetensors", name, "[32, 64]", "[64, 64]"]);
}

#[test]
fn an_unknown_hf_architecture_names_config_json_and_the_known_ones() {
    let dir = hf_dir_with(&fixture_tensors());
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).expect("read")).expect("json");
    config["model_type"] = "gpt_neox".into();
    std::fs::write(&config_path, config.to_string()).expect("write");
    let err = load_error(dir.path());
    assert_names_all(&err, &["config.json", "gpt_neox", "llama or qwen2"]);
}

/// A GGUF metadata value.
enum Meta {
    Str(&'static str),
    U32(u32),
}

/// A minimal GGUF v3 file: metadata, then tensors as (name, dims fastest-first, ggml type id,
/// raw bytes), each aligned to 32 bytes as the format requires.
fn write_gguf(path: &Path, meta: &[(&str, Meta)], tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        string(&mut out, key);
        match value {
            Meta::Str(s) => {
                out.extend(8u32.to_le_bytes());
                string(&mut out, s);
            }
            Meta::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
        }
    }
    let mut offset = 0u64;
    for (name, dims, type_id, data) in tensors {
        string(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(type_id.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    let pad = |out: &mut Vec<u8>| out.resize(out.len().div_ceil(32) * 32, 0);
    pad(&mut out);
    for (_, _, _, data) in tensors {
        out.extend(data);
        pad(&mut out);
    }
    std::fs::write(path, out).expect("write gguf");
}

fn llama_meta(architecture: &'static str) -> Vec<(&'static str, Meta)> {
    vec![
        ("general.architecture", Meta::Str(architecture)),
        ("llama.embedding_length", Meta::U32(256)),
        ("llama.attention.head_count", Meta::U32(4)),
        ("llama.attention.head_count_kv", Meta::U32(4)),
        ("llama.feed_forward_length", Meta::U32(512)),
        ("llama.block_count", Meta::U32(1)),
        ("llama.vocab_size", Meta::U32(16)),
    ]
}

#[test]
fn a_gguf_with_a_q4_k_tensor_names_the_tensor_and_the_supported_types() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("k-quant.gguf");
    // ggml type 12 is Q4_K: blocks of 256 values in 144 bytes; attn_q is [256, 256].
    let q4_k = ("blk.0.attn_q.weight", vec![256, 256], 12, vec![0u8; 256 * 144]);
    write_gguf(&path, &llama_meta("llama"), &[q4_k]);
    let err = load_error(&path);
    assert_names_all(
        &err,
        &[
            "k-quant.gguf",
            "blk.0.attn_q.weight",
            "Q4_K",
            "F32, F16, BF16, Q8_0, Q4_0, Q4_1",
        ],
    );
}

#[test]
fn a_gguf_shape_mismatch_names_expected_and_found() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shape.gguf");
    // attn_k must be [256 out, 256 in]; GGUF stores dims fastest-first, so [256, 128] is [128, 256].
    let floats = vec![0u8; 256 * 128 * 4];
    write_gguf(
        &path,
        &llama_meta("llama"),
        &[("blk.0.attn_k.weight", vec![256, 128], 0, floats)],
    );
    let err = load_error(&path);
    assert_names_all(
        &err,
        &["shape.gguf", "blk.0.attn_k.weight", "[256, 256]", "[128, 256]"],
    );
}

#[test]
fn an_unknown_gguf_architecture_names_the_file_and_the_known_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("falcon.gguf");
    write_gguf(&path, &llama_meta("falcon"), &[]);
    let err = load_error(&path);
    assert_names_all(&err, &["falcon.gguf", "\"falcon\"", "llama or qwen2"]);
}

#[test]
fn a_file_that_is_not_gguf_names_the_magic_it_found() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("not-really.gguf");
    std::fs::write(&path, b"{\"model_type\": \"llama\"}").expect("write");
    let err = load_error(&path);
    assert_names_all(&err, &["not-really.gguf", "GGUF"]);
}
