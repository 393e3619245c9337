//! The model against Python transformers (fixtures from scripts/fixtures/make_model_fixtures.py):
//! hidden states at every decoder layer's output within 1e-4 of the vector's norm, greedy
//! continuations identical for 32 tokens, and a padded batch equal to one prompt at a time.
//! Both the tiny random Qwen2 (HF folder, q/k/v bias) and SmolLM2 (the demo GGUF, Q4_1).

use pspace_engine::generate::{generate, SamplingParams};
use pspace_engine::model::{ForwardOptions, Logits, Model};
use serde_json::Value;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> Value {
    let text = std::fs::read_to_string(root().join("engine/tests/fixtures/model_parity.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn check_model(model: &Model, cases: &Value) {
    let layers: Vec<usize> = (0..model.num_layers()).collect();
    for case in cases.as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let input = Tensor::from_slice(&prompt).view([1, -1]);
        let mask = Tensor::ones([1, prompt.len() as i64], (Kind::Int64, Device::Cpu));
        let out = tch::no_grad(|| {
            model.forward(
                &input,
                &mask,
                None,
                &ForwardOptions {
                    capture_layers: &layers,
                    logits: Logits::None,
                    ..Default::default()
                },
            )
        });
        for (layer, want) in case["hidden_last"].as_object().unwrap() {
            let want: Vec<f32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let got = out.hidden[&layer.parse::<usize>().unwrap()].get(0).get(-1);
            let got: Vec<f32> = Vec::<f32>::try_from(&got).unwrap();
            let norm = want.iter().map(|x| x * x).sum::<f32>().sqrt();
            let err = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt();
            assert!(
                err / norm < 1e-4,
                "layer {layer}, prompt of {} tokens: relative error {}",
                prompt.len(),
                err / norm
            );
        }
        let greedy = generate(
            model,
            std::slice::from_ref(&prompt),
            &SamplingParams {
                max_new_tokens: 32,
                temperature: 0.0,
                stop_ids: vec![],
                ..Default::default()
            },
            None,
        );
        assert_eq!(
            greedy[0][0].tokens,
            ids(&case["greedy_ids"]),
            "greedy continuation of a {}-token prompt",
            prompt.len()
        );
    }
}

#[test]
fn tiny_qwen2_matches_transformers() {
    let model = Model::load(
        &root().join("engine/tests/fixtures/tiny-qwen2"),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    check_model(&model, &fixtures()["tiny_qwen2"]);
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let path = root().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let model = Model::load(&path, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(model.num_layers(), 30);
    check_model(&model, &fixtures()["smollm2"]);
}

#[test]
fn a_padded_batch_equals_one_prompt_at_a_time() {
    let model = Model::load(
        &root().join("engine/tests/fixtures/tiny-qwen2"),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let prompts: Vec<Vec<i64>> = fixtures()["tiny_qwen2"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ids(&c["prompt_ids"]))
        .collect();
    let layers = [0usize, 3];
    let singles: Vec<Vec<Tensor>> = prompts
        .iter()
        .map(|p| {
            let vecs =
                pspace_engine::extract::last_token_states(&model, std::slice::from_ref(p), &layers, 1024)
                    .unwrap();
            vecs.into_iter().map(|t| t.get(0)).collect()
        })
        .collect();
    let batched = pspace_engine::extract::last_token_states(&model, &prompts, &layers, 1024).unwrap();
    for (li, layer_batch) in batched.iter().enumerate() {
        for (pi, single) in singles.iter().enumerate() {
            let diff = (layer_batch.get(pi as i64) - &single[li])
                .abs()
                .max()
                .double_value(&[]);
            assert!(
                diff < 1e-4,
                "layer {} prompt {pi}: batched differs by {diff}",
                layers[li]
            );
        }
    }
    // Generation: batched greedy = one at a time.
    let params = SamplingParams {
        max_new_tokens: 12,
        temperature: 0.0,
        stop_ids: vec![],
        ..Default::default()
    };
    let batched = generate(&model, &prompts, &params, None);
    for (i, p) in prompts.iter().enumerate() {
        let single = generate(&model, std::slice::from_ref(p), &params, None);
        assert_eq!(batched[i][0].tokens, single[0][0].tokens, "prompt {i}");
    }
}

#[test]
fn refilling_a_small_batch_gives_the_same_greedy_continuations() {
    // Five prompts of different lengths through a batch of two rows: rows finish at different
    // steps (a stop id), queued prompts are prefilled and merged into the running cache.
    let model = Model::load(
        &root().join("engine/tests/fixtures/tiny-qwen2"),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let prompts: Vec<Vec<i64>> = vec![
        vec![5, 6, 7],
        (10..40).collect(),
        vec![99; 9],
        (200..217).collect(),
        vec![3],
    ];
    let solo = SamplingParams {
        max_new_tokens: 10,
        temperature: 0.0,
        stop_ids: vec![],
        ..Default::default()
    };
    let expected: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| {
            generate(&model, std::slice::from_ref(p), &solo, None)[0][0]
                .tokens
                .clone()
        })
        .collect();
    // A stop id taken from one expected continuation makes that row finish early.
    let stop = expected[1][4];
    let refill = SamplingParams {
        max_batch: 2,
        stop_ids: vec![stop],
        ..solo.clone()
    };
    let got = generate(&model, &prompts, &refill, None);
    for (i, want) in expected.iter().enumerate() {
        let cut: Vec<i64> = want.iter().copied().take_while(|&t| t != stop).collect();
        assert_eq!(got[i][0].tokens, cut, "prompt {i}");
    }
}
