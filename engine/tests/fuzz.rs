//! Fuzzing of every parser that reads a user's file, inside `cargo test` on stable Rust: seeded
//! mutation of the committed seed files (tests/fixtures/fuzz-corpus, made by
//! scripts/fixtures/make_fuzz_corpus.py), structure-aware for JSON (values replaced by hostile
//! ones, keys dropped or added) and byte-level for binaries (bit flips, header fields set to
//! boundary values, truncation, splicing). Targets: GGUF (header, metadata, tensor directory,
//! dequantisation, model config, tokenizer, generation settings, the whole model load),
//! safetensors (an HF folder's weights), config.json, tokenizer_config.json (chat template
//! choice, compilation and rendering), tokenizer.json, generation_config.json,
//! adapter_config.json and adapter weights, and training JSONL (parsing, templating, label
//! masks). The spec TOML is parsed in pspace-actors and fuzzed there, not here.
//!
//! Every input runs under `catch_unwind`: a panic is a failure, and the input is saved under
//! target/fuzz-crashes/. Allocations above 1 GiB abort the process (this binary's allocator),
//! so an allocation sized by an unchecked header field is a failure too. Each target runs for
//! PSPACE_FUZZ_SECS seconds (default 12) from the seed PSPACE_FUZZ_SEED (default 0);
//! PSPACE_FUZZ_TRACE=1 writes each input to target/fuzz-current-<target> before running it, to
//! find one that aborts. Crashes found are kept as named tests in fuzz_regressions.rs.

use pspace_engine::generation_config::GenerationConfig;
use pspace_engine::gguf::GgufFile;
use pspace_engine::model::{Model, ModelConfig};
use pspace_engine::peft;
use pspace_engine::tokenizer::{ChatMessage, ChatTokenizer};
use pspace_engine::train::data::{build_examples, parse_jsonl, DataReport, LabelMode};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

// The capped allocator, the seeded loop and the byte mutations shared with
// actors/tests/spec_fuzz.rs.
#[path = "common/fuzzing.rs"]
mod fuzzing;

use fuzzing::{at, fuzz_loop};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = fixtures().join("fuzz-corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

// ---------------------------------------------------------------------------------------------
// Mutation

const INTERESTING_U64: [u64; 16] = [
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    16,
    255,
    256,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 40,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// One byte-level change: the common ones (`fuzzing::mutate_bytes`) or a byte set to a
/// boundary value, a 4- or 8-byte field set to a boundary value (twice as likely: aligned
/// positions hit GGUF and safetensors header fields) or random bytes inserted.
fn mutate_bytes(data: &mut Vec<u8>, seeds: &[Vec<u8>], rng: &mut ChaCha8Rng) {
    fuzzing::mutate_bytes(data, seeds, rng, &[set_byte, set_field, set_field, insert_random]);
}

// A `fuzzing::ByteChange`, whose other instances grow the input.
#[allow(clippy::ptr_arg)]
fn set_byte(data: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    if !data.is_empty() {
        let i = at(data, rng);
        data[i] = [0u8, 0xff, 0x7f, 0x80, b'{', b'"', b'9'][rng.gen_range(0..7)];
    }
}

// A `fuzzing::ByteChange`, whose other instances grow the input.
#[allow(clippy::ptr_arg)]
fn set_field(data: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    let len = data.len();
    if len >= 8 {
        let value = INTERESTING_U64[rng.gen_range(0..INTERESTING_U64.len())];
        let width = if rng.gen_bool(0.5) { 4 } else { 8 };
        let i = if rng.gen_bool(0.6) {
            at(data, rng) / 4 * 4
        } else {
            at(data, rng)
        }
        .min(len - width);
        data[i..i + width].copy_from_slice(&value.to_le_bytes()[..width]);
    }
}

fn insert_random(data: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    let i = at(data, rng);
    let n = rng.gen_range(1..16);
    let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
    data.splice(i..i, bytes);
}

/// Keys a JSON mutation may add: every key the engine reads somewhere.
const KEYS: [&str; 30] = [
    "model_type",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "num_hidden_layers",
    "rope_scaling",
    "rope_parameters",
    "rope_type",
    "type",
    "factor",
    "original_max_position_embeddings",
    "max_position_embeddings",
    "beta_fast",
    "attention_factor",
    "layer_types",
    "eos_token_id",
    "chat_template",
    "eos_token",
    "bos_token",
    "r",
    "lora_alpha",
    "target_modules",
    "layers_to_transform",
    "rank_pattern",
    "messages",
    "content",
    "positive",
    "top_k",
];

fn hostile_value(rng: &mut ChaCha8Rng) -> Value {
    use serde_json::json;
    match rng.gen_range(0..26) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(0),
        3 => json!(-1),
        4 => json!(1),
        5 => json!(3),
        6 => json!(u64::MAX),
        7 => json!(i64::MIN),
        8 => json!(1e300),
        9 => json!(-1e300),
        10 => json!(0.5),
        11 => json!(1e-300),
        12 => json!(""),
        13 => json!("llama3"),
        14 => json!("yarn"),
        15 => json!("all-linear"),
        16 => json!("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"),
        17 => json!("{{ raise_exception('x') }}{% generation %}"),
        18 => json!("x".repeat(rng.gen_range(0..5000))),
        19 => json!([]),
        20 => json!([1, 2, 1u64 << 40]),
        21 => json!({}),
        22 => json!({"rope_type": "yarn", "factor": 4.0, "beta_fast": -1}),
        23 => json!([{"role": "assistant", "content": "{{"}]),
        24 => (0..rng.gen_range(1..300)).fold(json!(0), |v, _| json!([v])),
        _ => json!(4096),
    }
}

/// Replaces the `n`-th node (pre-order) of `v`; returns how many nodes were visited.
fn replace_node(v: &mut Value, n: &mut usize, rng: &mut ChaCha8Rng) -> bool {
    if *n == 0 {
        *v = hostile_value(rng);
        return true;
    }
    *n -= 1;
    match v {
        Value::Array(items) => items.iter_mut().any(|x| replace_node(x, n, rng)),
        Value::Object(map) => map.values_mut().any(|x| replace_node(x, n, rng)),
        _ => false,
    }
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// A random object inside `v`, to add or drop keys.
fn some_object<'a>(v: &'a mut Value, rng: &mut ChaCha8Rng) -> Option<&'a mut serde_json::Map<String, Value>> {
    let descend = rng.gen_bool(0.5);
    match v {
        Value::Object(map) => {
            let child = if descend && !map.is_empty() {
                let key = map.keys().nth(rng.gen_range(0..map.len())).cloned();
                key.filter(|k| map[k].is_object())
            } else {
                None
            };
            match child {
                Some(k) => some_object(map.get_mut(&k).unwrap(), rng),
                None => Some(map),
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = rng.gen_range(0..items.len());
            some_object(&mut items[i], rng)
        }
        _ => None,
    }
}

/// Structure-aware mutation of a JSON text (values replaced, keys dropped or added), then now
/// and then byte-level damage to the text itself.
fn mutate_json(seed: &[u8], seeds: &[Vec<u8>], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<Value>(seed) else {
        let mut data = seed.to_vec();
        mutate_bytes(&mut data, seeds, rng);
        return data;
    };
    for _ in 0..rng.gen_range(1..4) {
        match rng.gen_range(0..4) {
            0 | 1 => {
                let mut n = rng.gen_range(0..count_nodes(&v));
                replace_node(&mut v, &mut n, rng);
            }
            2 => {
                if let Some(map) = some_object(&mut v, rng) {
                    if !map.is_empty() {
                        let key = map.keys().nth(rng.gen_range(0..map.len())).cloned().unwrap();
                        map.remove(&key);
                    }
                }
            }
            _ => {
                let value = hostile_value(rng);
                if let Some(map) = some_object(&mut v, rng) {
                    map.insert(KEYS[rng.gen_range(0..KEYS.len())].to_string(), value);
                }
            }
        }
    }
    let mut data = serde_json::to_vec(&v).unwrap_or_default();
    if rng.gen_bool(0.2) {
        mutate_bytes(&mut data, seeds, rng);
    }
    data
}

// ---------------------------------------------------------------------------------------------
// The loop

#[derive(Clone, Copy)]
enum Shape {
    Bytes,
    Json,
    JsonLines,
}

/// Runs `run` on the seeds, then on mutations of them (of the file's shape) until the time
/// budget is spent. Panics are collected (and their inputs saved), then reported together.
fn fuzz(target: &str, shape: Shape, seeds: Vec<Vec<u8>>, run: impl FnMut(&[u8])) {
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let mutate = |seed: &[u8], rng: &mut ChaCha8Rng| match shape {
        Shape::Bytes => {
            let mut data = seed.to_vec();
            for _ in 0..rng.gen_range(1..5) {
                mutate_bytes(&mut data, &seeds, rng);
            }
            data
        }
        Shape::Json => mutate_json(seed, &seeds, rng),
        Shape::JsonLines => {
            let text = String::from_utf8_lossy(seed).into_owned();
            let mut lines: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
            if !lines.is_empty() {
                let i = rng.gen_range(0..lines.len());
                lines[i] = mutate_json(&lines[i], &seeds, rng);
            }
            lines.join(&b'\n')
        }
    };
    let crashes = fuzz_loop(target, "bin", &seeds, &out, mutate, run);
    assert!(crashes.is_empty(), "fuzz {target}: panics on {crashes:?}");
}

/// A scratch folder where each input is written under the name a loader expects.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new(files: &[(&str, &[u8])]) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        Scratch(dir)
    }
    fn put(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "S"),
        ChatMessage::new("user", "hi {{ x }}"),
        ChatMessage::new("assistant", "ab"),
    ]
}

/// Everything pspace does with a tokenizer it loaded: render, encode, decode, stop ids.
fn exercise(tok: &ChatTokenizer) {
    let text = tok.render(&conversation(), true).unwrap_or_default();
    if let Ok(enc) = tok.encode(&text) {
        let _ = tok.decode(&enc.ids, true);
        let _ = tok.tokens_overlapping(&enc, 0..text.len());
    }
    let _ = (tok.stop_token_ids(), tok.end_of_turn_id(), tok.pad_token_id());
    let _ = tok.generation_config().sampling(None, None, None);
}

// ---------------------------------------------------------------------------------------------
// Targets

#[test]
fn fuzz_gguf() {
    let scratch = Scratch::new(&[]);
    fuzz("gguf", Shape::Bytes, corpus("gguf"), |bytes| {
        let path = scratch.put("m.gguf", bytes);
        let Ok(g) = GgufFile::open(&path) else { return };
        for info in g.tensor_infos() {
            let _ = g.tensor_f32(&info.name);
        }
        let _ = GenerationConfig::from_gguf(&g);
        if let Ok(tok) = ChatTokenizer::from_gguf(&g) {
            exercise(&tok);
        }
        if ModelConfig::from_gguf(&g).is_ok() {
            let _ = Model::load_gguf(&g, Device::Cpu, Kind::Float);
        }
    });
}

#[test]
fn fuzz_safetensors() {
    let seeds = corpus("safetensors");
    let config = seeds.iter().find(|s| s.starts_with(b"{")).unwrap().clone();
    let weights: Vec<Vec<u8>> = seeds.into_iter().filter(|s| !s.starts_with(b"{")).collect();
    let scratch = Scratch::new(&[("config.json", &config)]);
    fuzz("safetensors", Shape::Bytes, weights, |bytes| {
        scratch.put("model.safetensors", bytes);
        let _ = Model::load_hf_dir(scratch.path(), Device::Cpu, Kind::Float);
    });
}

#[test]
fn fuzz_config_json() {
    let weights = std::fs::read(fixtures().join("fuzz-corpus/safetensors/model.safetensors")).unwrap();
    let scratch = Scratch::new(&[("model.safetensors", &weights)]);
    fuzz("config_json", Shape::Json, corpus("config_json"), |bytes| {
        let path = scratch.put("config.json", bytes);
        let Ok(cfg) = ModelConfig::from_hf_json(&path) else {
            return;
        };
        // The rope tables of any config that parses (the loader builds them), and the whole
        // load where the seed's weights can fit.
        if cfg.head_dim <= 1024 {
            let _ = pspace_engine::model::rope::frequencies(
                cfg.rope_theta,
                &cfg.rope_scaling,
                None,
                cfg.head_dim,
                Some(100_000),
                Device::Cpu,
            );
        }
        let _ = Model::load_hf_dir(scratch.path(), Device::Cpu, Kind::Float);
        let _ = GenerationConfig::from_hf_dir(scratch.path());
    });
}

#[test]
fn fuzz_tokenizer_config() {
    let tokenizer = std::fs::read(fixtures().join("field-cases/eos_list/model/tokenizer.json")).unwrap();
    let scratch = Scratch::new(&[("tokenizer.json", &tokenizer)]);
    fuzz(
        "tokenizer_config",
        Shape::Json,
        corpus("tokenizer_config"),
        |bytes| {
            scratch.put("tokenizer_config.json", bytes);
            if let Ok(tok) = ChatTokenizer::from_hf_dir(scratch.path()) {
                exercise(&tok);
            }
        },
    );
}

#[test]
fn fuzz_tokenizer_json() {
    let seed = std::fs::read(fixtures().join("field-cases/eos_list/model/tokenizer.json")).unwrap();
    let config = corpus("tokenizer_config").remove(0);
    let scratch = Scratch::new(&[("tokenizer_config.json", &config)]);
    fuzz("tokenizer_json", Shape::Json, vec![seed], |bytes| {
        scratch.put("tokenizer.json", bytes);
        if let Ok(tok) = ChatTokenizer::from_hf_dir(scratch.path()) {
            exercise(&tok);
        }
    });
}

#[test]
fn fuzz_generation_config() {
    fuzz(
        "generation_config",
        Shape::Json,
        corpus("generation_config"),
        |bytes| {
            let text = String::from_utf8_lossy(bytes);
            if let Ok(g) = GenerationConfig::from_json_str(&text, Path::new("generation_config.json")) {
                let _ = g.sampling(None, Some(0.5), None);
            }
        },
    );
}

#[test]
fn fuzz_adapter() {
    // Adapter configs against real adapter weights, and damaged weights under a valid config.
    let model = Model::load(&fixtures().join("tiny-qwen2"), Device::Cpu, Kind::Float).unwrap();
    let weights = std::fs::read(fixtures().join("train_peft_trained/adapter_model.safetensors")).unwrap();
    let config = std::fs::read(fixtures().join("train_peft_trained/adapter_config.json")).unwrap();
    let scratch = Scratch::new(&[(peft::WEIGHTS_FILE, &weights), (peft::CONFIG_FILE, &config)]);
    fuzz("adapter_config", Shape::Json, corpus("adapter_config"), |bytes| {
        scratch.put(peft::CONFIG_FILE, bytes);
        if peft::read_meta(scratch.path()).is_ok() {
            let _ = peft::merged(scratch.path(), &model);
        }
    });
    scratch.put(peft::CONFIG_FILE, &config);
    fuzz("adapter_weights", Shape::Bytes, vec![weights], |bytes| {
        scratch.put(peft::WEIGHTS_FILE, bytes);
        let _ = peft::load(scratch.path(), &model);
    });
}

#[test]
fn fuzz_training_jsonl() {
    let tok = ChatTokenizer::load(&fixtures().join("tiny-qwen2")).unwrap();
    let marker = LabelMode::Marker {
        marker: "\n\n[ZLT]".into(),
    };
    fuzz("jsonl", Shape::JsonLines, corpus("jsonl"), |bytes| {
        let mut report = DataReport::default();
        let rows = parse_jsonl(&String::from_utf8_lossy(bytes), &mut report);
        for mode in [&LabelMode::LastTurn, &marker] {
            let _ = build_examples(&rows, &tok, mode, Some("sys"), 64, &mut report);
        }
        let _ = report.dropped();
    });
}
