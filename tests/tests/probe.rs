//! `pspace probe` on the demo model against Python transformers (engine/tests/fixtures/
//! model_probe.json, made by scripts/fixtures/make_model_fixtures.py): the chat template's text
//! and ids, the last prompt token's state at each asked layer, and the greedy continuation.

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
