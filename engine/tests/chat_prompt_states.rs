//! The whole prompt path of the library on the demo model, against Python transformers: a chat
//! (with and without a system message) rendered by `ChatTokenizer` from the GGUF's own template,
//! encoded from the GGUF's own vocabulary, run through `Model::load` + `last_token_states`, must
//! give transformers' text, ids and residual-stream vector at the last prompt token (within 1e-4
//! of the vector's norm). The numbers are in tests/fixtures/model_probe.json, written by
//! scripts/fixtures/make_model_fixtures.py; `pspace probe` is tested on the same fixture, this
//! test pins the library calls behind it so a failure says which stage broke.

use pspace_engine::extract::last_token_states;
use pspace_engine::model::Model;
use pspace_engine::tokenizer::{ChatMessage, ChatTokenizer};
use serde_json::Value;
use std::path::PathBuf;

fn demo_model() -> PathBuf {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "the demo model {} is missing: run `make setup`",
        path.display()
    );
    path
}

fn probe_fixture() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model_probe.json");
    let text = std::fs::read_to_string(&path).expect("model_probe.json");
    serde_json::from_str(&text).expect("model_probe.json is JSON")
}

/// max |got - want| / |want| (L2 norm of the expected vector).
fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "hidden size");
    let norm = want.iter().map(|x| x * x).sum::<f64>().sqrt();
    let worst = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max);
    worst / norm
}

#[test]
fn a_templated_smollm2_prompt_gives_transformers_last_token_states() {
    let path = demo_model();
    let tokenizer = ChatTokenizer::load(&path).expect("tokenizer from the GGUF");
    let model = Model::load(&path, tch::Device::Cpu, tch::Kind::Float).expect("model");
    let fixture = probe_fixture();
    let layers: Vec<usize> = fixture["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l.as_u64().expect("layer index") as usize)
        .collect();
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(
        cases.iter().any(|c| c["system"].is_string()) && cases.iter().any(|c| c["system"].is_null()),
        "the fixture should hold prompts with and without a system message"
    );
    for case in cases {
        let user = case["user"].as_str().expect("user");
        let label: String = user.chars().take(30).collect();
        let mut messages = Vec::new();
        if let Some(system) = case["system"].as_str() {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", user));

        let text = tokenizer.render(&messages, true).expect("render");
        assert_eq!(text, case["prompt_text"].as_str().expect("text"), "{user}");
        let ids = tokenizer.encode_chat(&messages, true).expect("encode").ids;
        let want_ids: Vec<i64> = serde_json::from_value(case["prompt_ids"].clone()).expect("ids");
        assert_eq!(ids, want_ids, "{user}");

        let states =
            last_token_states(&model, std::slice::from_ref(&ids), &layers, 1 << 16).expect("forward pass");
        for (layer, state) in layers.iter().zip(&states) {
            let got = Vec::<f32>::try_from(state.get(0)).expect("f32 vector");
            let want: Vec<f64> =
                serde_json::from_value(case["hidden"][layer.to_string()].clone()).expect("hidden");
            let err = relative_error(&got, &want);
            eprintln!("{label:?} layer {layer}: relative error {err:e}");
            assert!(err < 1e-4, "{label:?} layer {layer}: relative error {err:e}");
        }
    }
}
