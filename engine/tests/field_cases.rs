//! The field cases (copies of ../shared/field-cases in tests/fixtures/field-cases) against their
//! expected.json, through the engine calls `pspace probe` makes: a Llama 3.x GGUF whose rope
//! scaling is the tensor `rope_freqs.weight`, a model whose generation_config.json lists two end
//! ids, and a folder whose chat_template.jinja differs from its inline template.
//! (tests/tests/probe.rs runs the same inputs through the `pspace probe` binary.)

use pspace_engine::extract::last_token_states;
use pspace_engine::generate::{generate, FinishReason, SamplingParams};
use pspace_engine::model::Model;
use pspace_engine::tokenizer::{ChatMessage, ChatTokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

fn case_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/field-cases")
        .join(name)
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(case_dir(name).join("expected.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// Prompt ids of a user message as `pspace probe --user` builds them.
fn prompt(tok: &ChatTokenizer, user: &str) -> (String, Vec<i64>) {
    let text = tok.render(&[ChatMessage::new("user", user)], true).unwrap();
    let ids = tok.encode(&text).unwrap().ids;
    (text, ids)
}

/// The last prompt token's state at `layers`, and the largest error relative to the
/// expectation's norm.
fn worst_relative_error(model_path: &Path, prompt_ids: &[i64], want: &Value) -> f64 {
    let model = Model::load(model_path, Device::Cpu, Kind::Float).unwrap();
    let states = last_token_states(&model, &[prompt_ids.to_vec()], &[0, 1], usize::MAX).unwrap();
    let mut worst = 0f64;
    for (layer, state) in [0, 1].iter().zip(&states) {
        let got = Vec::<f32>::try_from(state.get(0)).unwrap();
        let want: Vec<f64> = want[layer.to_string()]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), want.len());
        let err = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (*g as f64 - w).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = want.iter().map(|w| w * w).sum::<f64>().sqrt();
        worst = worst.max(err / norm);
    }
    worst
}

#[test]
fn rope_freqs_gguf_applies_the_per_pair_divisors() {
    let exp = expected("rope_freqs_gguf");
    let user =
        "The quick brown fox jumps over the lazy dog while the five boxing wizards jump quickly past it.";
    let path = case_dir("rope_freqs_gguf").join("llama_rope_freqs.gguf");
    let tok = ChatTokenizer::load(&path).unwrap();
    let (_, prompt_ids) = prompt(&tok, user);
    assert_eq!(prompt_ids, ids(&exp["prompt_ids"]));
    let tolerance = exp["tolerance_relative"].as_f64().unwrap();
    let with_factors = worst_relative_error(&path, &prompt_ids, &exp["expected_hidden"]);
    eprintln!("rope_freqs_gguf: relative error {with_factors:.3e} (tolerance {tolerance})");
    assert!(with_factors < tolerance, "{with_factors}");
    // The plain file is the same model without the tensor: its own expectation holds, and the
    // two expectations differ by far more than the tolerance (the case tells them apart).
    let plain = case_dir("rope_freqs_gguf").join("llama_plain.gguf");
    assert!(worst_relative_error(&plain, &prompt_ids, &exp["expected_hidden_plain_file"]) < tolerance);
    assert!(worst_relative_error(&plain, &prompt_ids, &exp["expected_hidden"]) > 100.0 * tolerance);
}

#[test]
fn eos_list_stops_on_any_end_id_of_generation_config() {
    let exp = expected("eos_list");
    let dir = case_dir("eos_list").join("model");
    let tok = ChatTokenizer::load(&dir).unwrap();
    let stop = tok.stop_token_ids();
    assert!(stop.contains(&2) && stop.contains(&1000), "{stop:?}");
    let (_, prompt_ids) = prompt(&tok, "Hi");
    let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let params = SamplingParams {
        max_new_tokens: 8,
        temperature: 0.0,
        stop_ids: stop,
        max_batch: 1,
        ..Default::default()
    };
    let g = &generate(&model, std::slice::from_ref(&prompt_ids), &params, None)[0][0];
    assert_eq!(g.tokens, ids(&exp["expected"]["greedy_ids"]));
    assert_eq!(g.finish, FinishReason::Stop);
    assert_eq!(exp["expected"]["finish"], "stop");
    // Without the model's end ids the same model runs to the budget: the case discriminates.
    let params = SamplingParams {
        stop_ids: vec![2],
        ..params
    };
    assert_eq!(
        generate(&model, &[prompt_ids], &params, None)[0][0].finish,
        FinishReason::Length
    );
}

#[test]
fn template_file_precedence_prefers_chat_template_jinja() {
    let exp = expected("template_file_precedence");
    let dir = case_dir("template_file_precedence").join("model");
    let tok = ChatTokenizer::load(&dir).unwrap();
    let (text, prompt_ids) = prompt(&tok, "Hi");
    assert_eq!(text, exp["expected"]["prompt_text"].as_str().unwrap());
    assert_eq!(prompt_ids, ids(&exp["expected"]["prompt_ids"]));
}
