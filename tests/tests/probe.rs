//! `pspace probe` on the demo model against Python transformers (engine/tests/fixtures/
//! model_probe.json, made by scripts/fixtures/make_model_fixtures.py): the chat template's text
//! and ids, the last prompt token's state at each asked layer, and the greedy continuation; the
//! three field cases (engine/tests/fixtures/field-cases) run as their expected.json commands;
//! `--adapter` (stacked in order) and `--logits-out`.

use pspace_tests::{pspace_bin, repo_root};
use serde_json::Value;
use std::process::Command;

fn probe(args: &[&str]) -> std::process::Output {
    Command::new(pspace_bin())
        .arg("probe")
        .args(args)
        .output()
        .expect("run pspace probe")
}

#[test]
fn probe_prints_what_transformers_computes_for_the_demo_model() {
    let text = std::fs::read_to_string(repo_root().join("engine/tests/fixtures/model_probe.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let layers: Vec<String> = fixture["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.to_string())
        .collect();
    let layer_arg = layers.join(",");
    let generate = fixture["generate"].to_string();
    for case in fixture["cases"].as_array().unwrap() {
        let mut args = vec!["--model", "demo", "--layers", &layer_arg, "--generate", &generate];
        args.extend(["--user", case["user"].as_str().unwrap()]);
        if let Some(system) = case["system"].as_str() {
            args.extend(["--system", system]);
        }
        let out = probe(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
        let what = case["user"]
            .as_str()
            .unwrap()
            .chars()
            .take(30)
            .collect::<String>();
        assert_eq!(got["prompt_text"], case["prompt_text"], "{what}");
        assert_eq!(got["prompt_ids"], case["prompt_ids"], "{what}");
        for layer in &layers {
            let want: Vec<f64> = case["hidden"][layer]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let have: Vec<f64> = got["hidden"][layer]
                .as_array()
                .unwrap_or_else(|| panic!("no hidden state for layer {layer}: {got}"))
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert_eq!(have.len(), want.len(), "layer {layer}");
            let norm = want.iter().map(|x| x * x).sum::<f64>().sqrt();
            let err = want
                .iter()
                .zip(&have)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
                .sqrt();
            assert!(
                err / norm < 1e-4,
                "{what}: layer {layer}: relative error {}",
                err / norm
            );
        }
        assert_eq!(got["greedy_ids"], case["greedy_ids"], "{what}");
        assert_eq!(got["greedy_text"], case["greedy_text"], "{what}");
    }
}

#[test]
fn probe_without_generate_prints_no_continuation() {
    let out = probe(&["--model", "demo", "--user", "Hi", "--layers", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["hidden"]["3"].as_array().map(Vec::len), Some(576));
    assert!(got.get("greedy_ids").is_none(), "{got}");
}

#[test]
fn probe_names_a_layer_the_model_does_not_have() {
    let out = probe(&["--model", "demo", "--user", "Hi", "--layers", "0,30"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("30") && err.contains("30 layers"), "{err}");
    let out = probe(&[
        "--model",
        "/nonexistent/model.gguf",
        "--user",
        "Hi",
        "--layers",
        "0",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
}

fn field_case(name: &str) -> (std::path::PathBuf, Value) {
    let dir = repo_root().join("engine/tests/fixtures/field-cases").join(name);
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    (dir, serde_json::from_str(&text).unwrap())
}

fn probe_json(args: &[&str]) -> Value {
    let out = probe(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn field_case_rope_freqs_gguf() {
    let (dir, exp) = field_case("rope_freqs_gguf");
    let model = dir.join("llama_rope_freqs.gguf");
    let user =
        "The quick brown fox jumps over the lazy dog while the five boxing wizards jump quickly past it.";
    let got = probe_json(&[
        "--model",
        model.to_str().unwrap(),
        "--user",
        user,
        "--layers",
        "0,1",
    ]);
    assert_eq!(got["prompt_ids"], exp["prompt_ids"]);
    let tolerance = exp["tolerance_relative"].as_f64().unwrap();
    for layer in ["0", "1"] {
        let (want, have) = (
            floats(&exp["expected_hidden"][layer]),
            floats(&got["hidden"][layer]),
        );
        let err = want
            .iter()
            .zip(&have)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = want.iter().map(|a| a * a).sum::<f64>().sqrt();
        assert!(
            err / norm < tolerance,
            "layer {layer}: relative error {}",
            err / norm
        );
    }
}

#[test]
fn field_case_eos_list() {
    let (dir, exp) = field_case("eos_list");
    let model = dir.join("model");
    let got = probe_json(&[
        "--model",
        model.to_str().unwrap(),
        "--user",
        "Hi",
        "--layers",
        "0",
        "--generate",
        "8",
    ]);
    assert_eq!(got["greedy_ids"], exp["expected"]["greedy_ids"]);
    assert_eq!(got["finish"], exp["expected"]["finish"]);
    assert_eq!(
        got["generation_config"]["eos_token_ids"],
        serde_json::json!([2, 1000])
    );
}

#[test]
fn field_case_template_file_precedence() {
    let (dir, exp) = field_case("template_file_precedence");
    let model = dir.join("model");
    let got = probe_json(&[
        "--model",
        model.to_str().unwrap(),
        "--user",
        "Hi",
        "--layers",
        "0",
    ]);
    assert_eq!(got["prompt_text"], exp["expected"]["prompt_text"]);
    assert_eq!(got["prompt_ids"], exp["expected"]["prompt_ids"]);
}

#[test]
fn adapters_stack_in_order_and_logits_are_written() {
    let model = repo_root().join("engine/tests/fixtures/tiny-qwen2");
    let adapter = repo_root().join("engine/tests/fixtures/train_ours_adapter");
    let (model, adapter) = (model.to_str().unwrap(), adapter.to_str().unwrap());
    let out = tempfile::tempdir().unwrap();
    let logits = out.path().join("logits.safetensors");
    let base = probe_json(&["--model", model, "--user", "Hi", "--layers", "3"]);
    let once = probe_json(&[
        "--model",
        model,
        "--adapter",
        adapter,
        "--user",
        "Hi",
        "--layers",
        "3",
        "--logits-out",
        logits.to_str().unwrap(),
    ]);
    let twice = probe_json(&[
        "--model",
        model,
        "--adapter",
        adapter,
        "--adapter",
        adapter,
        "--user",
        "Hi",
        "--layers",
        "3",
    ]);
    assert_eq!(once["adapters"], serde_json::json!([adapter]));
    let state = |v: &Value| floats(&v["hidden"]["3"]);
    assert_ne!(state(&base), state(&once));
    assert_ne!(state(&once), state(&twice));
    // The logits file: [T, V] f32 and the prompt ids, as a safetensors header states them.
    let bytes = std::fs::read(&logits).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let prompt_len = once["prompt_ids"].as_array().unwrap().len();
    assert_eq!(header["logits"]["shape"], serde_json::json!([prompt_len, 1024]));
    assert_eq!(header["logits"]["dtype"], "F32");
    assert_eq!(header["input_ids"]["shape"], serde_json::json!([prompt_len]));

    // An adapter setting pspace does not implement is refused by name.
    let dora = out.path().join("dora");
    std::fs::create_dir(&dora).unwrap();
    std::fs::copy(
        format!("{adapter}/adapter_model.safetensors"),
        dora.join("adapter_model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(format!("{adapter}/adapter_config.json")).unwrap();
    std::fs::write(
        dora.join("adapter_config.json"),
        config.replace("\"use_dora\": false", "\"use_dora\": true"),
    )
    .unwrap();
    let result = probe(&[
        "--model",
        model,
        "--adapter",
        dora.to_str().unwrap(),
        "--user",
        "Hi",
        "--layers",
        "0",
    ]);
    assert!(!result.status.success());
    let err = String::from_utf8_lossy(&result.stderr);
    assert!(err.contains("use_dora") && err.contains("dora"), "{err}");
}
