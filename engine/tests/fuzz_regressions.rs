//! Hostile inputs that crashed (or would crash) a parser, each now an error naming the file and
//! what is wrong. The first was found by engine/tests/fuzz.rs on the GGUF reader as it was
//! (an allocation of 1 GiB sized by the tensor count of a damaged header, which aborted the
//! process); the others are the classes found reviewing the same code for the fuzzer, written as
//! the smallest input that reaches each.

use pspace_engine::gguf::GgufFile;
use pspace_engine::model::{Model, ModelConfig};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A GGUF v3 header with the given counts, then `rest`.
fn gguf(tensors: u64, kvs: u64, rest: &[u8]) -> Vec<u8> {
    let mut f = b"GGUF".to_vec();
    f.extend(3u32.to_le_bytes());
    f.extend(tensors.to_le_bytes());
    f.extend(kvs.to_le_bytes());
    f.extend(rest);
    f
}

fn string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s.as_bytes());
    b
}

fn open_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    let err = GgufFile::open(&path).unwrap_err().to_string();
    assert!(err.contains("bad.gguf"), "{err}");
    err
}

#[test]
fn gguf_tensor_count_beyond_the_file_is_an_error_not_an_allocation() {
    // Found by the fuzzer: a seed with the tensor count 16777229 (0x0100000d); the reader
    // reserved room for that many entries (1 GiB) before reading any.
    let bytes = std::fs::read(fixtures().join("fuzz-regressions/gguf_tensor_count_16777229.gguf")).unwrap();
    let err = open_err(&bytes);
    assert!(err.contains("16777229 tensors"), "{err}");
    assert!(open_err(&gguf(u64::MAX, 0, &[])).contains("tensors"));
}

#[test]
fn gguf_array_count_beyond_the_file_is_an_error() {
    let mut kv = string("tokenizer.ggml.tokens");
    kv.extend(9u32.to_le_bytes()); // array
    kv.extend(8u32.to_le_bytes()); // of strings
    kv.extend(u64::MAX.to_le_bytes());
    let err = open_err(&gguf(0, 1, &kv));
    assert!(
        err.contains("tokenizer.ggml.tokens") && err.contains("array elements"),
        "{err}"
    );
}

#[test]
fn gguf_deeply_nested_arrays_are_an_error_not_a_stack_overflow() {
    let mut kv = string("x");
    kv.extend(9u32.to_le_bytes());
    for _ in 0..200_000 {
        kv.extend(9u32.to_le_bytes());
        kv.extend(1u64.to_le_bytes());
    }
    let err = open_err(&gguf(0, 1, &kv));
    assert!(err.contains("nests arrays"), "{err}");
}

#[test]
fn gguf_tensor_with_too_many_dimensions_is_an_error() {
    let mut t = string("w");
    t.extend(u32::MAX.to_le_bytes());
    t.extend([0u8; 64]);
    let err = open_err(&gguf(1, 0, &t));
    assert!(err.contains("\"w\"") && err.contains("dimensions"), "{err}");
}

/// A file with one tensor entry of the given dims, type F32 and offset.
fn one_tensor(dims: &[u64], offset: u64, alignment: Option<u32>) -> Vec<u8> {
    let mut rest = Vec::new();
    if let Some(a) = alignment {
        rest.extend(string("general.alignment"));
        rest.extend(4u32.to_le_bytes());
        rest.extend(a.to_le_bytes());
    }
    rest.extend(string("w"));
    rest.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        rest.extend(d.to_le_bytes());
    }
    rest.extend(0u32.to_le_bytes());
    rest.extend(offset.to_le_bytes());
    rest.extend([0u8; 64]);
    gguf(1, alignment.is_some() as u64, &rest)
}

#[test]
fn gguf_tensor_sizes_and_offsets_that_overflow_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    let tensor_err = |bytes: Vec<u8>| {
        std::fs::write(&path, bytes).unwrap();
        let g = GgufFile::open(&path).unwrap();
        g.tensor_f32("w").unwrap_err().to_string()
    };
    // Dimensions whose product overflows, and ones that fit but ask for more than the file.
    let err = tensor_err(one_tensor(&[1 << 40, 1 << 40], 0, None));
    assert!(err.contains("overflows"), "{err}");
    let err = tensor_err(one_tensor(&[1 << 30, 4], 0, None));
    assert!(err.contains("needs") && err.contains("the file has"), "{err}");
    // An offset near the end of the address space.
    let err = open_err(&one_tensor(&[4], u64::MAX - 8, None));
    assert!(err.contains("offset"), "{err}");
    // An alignment that is not a power of two.
    let err = open_err(&one_tensor(&[4], 0, Some(0)));
    assert!(err.contains("general.alignment"), "{err}");
}

fn write_config(dir: &Path, changes: serde_json::Value) -> PathBuf {
    let text = std::fs::read_to_string(fixtures().join("fuzz-corpus/config_json/llama31.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (k, x) in changes.as_object().unwrap() {
        v[k] = x.clone();
    }
    let path = dir.join("config.json");
    std::fs::write(&path, v.to_string()).unwrap();
    path
}

#[test]
fn config_sizes_that_would_divide_by_zero_or_overflow_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (changes, key) in [
        (
            serde_json::json!({"num_attention_heads": 0}),
            "num_attention_heads",
        ),
        (
            serde_json::json!({"num_key_value_heads": 0}),
            "num_key_value_heads",
        ),
        (
            serde_json::json!({"num_key_value_heads": 3}),
            "num_key_value_heads",
        ),
        (serde_json::json!({"hidden_size": 0}), "hidden_size"),
        (serde_json::json!({"head_dim": 7}), "head_dim"),
        (
            serde_json::json!({"num_hidden_layers": 1u64 << 40}),
            "num_hidden_layers",
        ),
        (serde_json::json!({"vocab_size": u64::MAX}), "vocab_size"),
        (serde_json::json!({"rms_norm_eps": -1.0}), "rms_norm_eps"),
        (
            serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fast": -1}}),
            "beta_fast",
        ),
        (serde_json::json!({"rope_theta": 0}), "rope_theta"),
    ] {
        let path = write_config(dir.path(), changes.clone());
        let err = ModelConfig::from_hf_json(&path).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains(key),
            "{changes}: {err}"
        );
    }
}

#[test]
fn safetensors_offsets_near_the_end_of_the_address_space_are_errors() {
    // A header whose data offsets overflow when added to the header length (the truncation
    // report added them unchecked).
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("fuzz-corpus/safetensors/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let header = format!(
        r#"{{"model.norm.weight":{{"dtype":"F32","shape":[8],"data_offsets":[0,{}]}}}}"#,
        u64::MAX - 4
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 32]);
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    let err = match Model::load(dir.path(), Device::Cpu, Kind::Float) {
        Ok(_) => panic!("a corrupt file loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("model.safetensors"), "{err}");
}
