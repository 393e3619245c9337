//! The model against Python transformers (fixtures from scripts/fixtures/make_model_fixtures.py):
//! hidden states at every decoder layer's output (last token and a few other positions) within
//! 1e-4 of the vector's norm, alone and in a padded batch; greedy continuations identical for 32
//! tokens, alone and in a batch; and a padded batch equal to one prompt at a time.
//! Both the tiny random Qwen2 (HF folder, q/k/v bias) and SmolLM2 (the demo GGUF, Q4_1).

use pspace_engine::extract::last_token_states;
use pspace_engine::generate::{generate, SamplingParams};
use pspace_engine::model::{ForwardOptions, Logits, Model};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> Value {
    let text = std::fs::read_to_string(root().join("engine/tests/fixtures/model_parity.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The hidden-state expectations, by name (`<model>.<case>.last|positions`).
fn expected_states() -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(root().join("engine/tests/fixtures/model_parity.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// Largest error of any row of `got` against `want` ([.., H]), relative to the row's norm.
fn worst_relative_error(got: &Tensor, want: &Tensor) -> f64 {
    let h = *want.size().last().unwrap();
    let (got, want) = (got.reshape([-1, h]), want.reshape([-1, h]));
    let err = (&got - &want).norm_scalaropt_dim(2, [1], false);
    (err / want.norm_scalaropt_dim(2, [1], false))
        .max()
        .double_value(&[])
}

fn check_model(model: &Model, name: &str, cases: &Value) {
    let expected = expected_states();
    let layers: Vec<usize> = (0..model.num_layers()).collect();
    let cases = cases.as_array().unwrap();
    let prompts: Vec<Vec<i64>> = cases.iter().map(|c| ids(&c["prompt_ids"])).collect();
    for (c, (case, prompt)) in cases.iter().zip(&prompts).enumerate() {
        let input = Tensor::from_slice(prompt).view([1, -1]);
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
        // [L, T, H]: every layer's output at every position of this prompt.
        let states = Tensor::stack(
            &layers.iter().map(|l| out.hidden[l].get(0)).collect::<Vec<_>>(),
            0,
        );
        let last = states.select(1, -1);
        let err = worst_relative_error(&last, &expected[&format!("{name}.{c}.last")]);
        assert!(
            err < 1e-4,
            "{name} prompt {c} ({} tokens), last token: relative error {err}",
            prompt.len()
        );
        let positions = Tensor::from_slice(&ids(&case["positions"]));
        let err = worst_relative_error(
            &states.index_select(1, &positions),
            &expected[&format!("{name}.{c}.positions")],
        );
        assert!(
            err < 1e-4,
            "{name} prompt {c}, positions {}: relative error {err}",
            case["positions"]
        );
    }
    // The same prompts in one right-padded batch (Method A) against transformers.
    let batched = last_token_states(model, &prompts, &layers, 1 << 20).unwrap();
    for c in 0..prompts.len() {
        let got = Tensor::stack(&batched.iter().map(|t| t.get(c as i64)).collect::<Vec<_>>(), 0);
        let err = worst_relative_error(&got, &expected[&format!("{name}.{c}.last")]);
        assert!(err < 1e-4, "{name} prompt {c} in a batch: relative error {err}");
    }
    // Greedy continuations, one prompt at a time and all in one left-padded batch.
    let params = SamplingParams {
        max_new_tokens: 32,
        temperature: 0.0,
        stop_ids: vec![],
        ..Default::default()
    };
    let together = generate(model, &prompts, &params, None);
    for (c, (case, prompt)) in cases.iter().zip(&prompts).enumerate() {
        let alone = generate(model, std::slice::from_ref(prompt), &params, None);
        let want = ids(&case["greedy_ids"]);
        assert_eq!(
            alone[0][0].tokens,
            want,
            "{name}: greedy continuation of prompt {c} ({} tokens)",
            prompt.len()
        );
        assert_eq!(
            together[c][0].tokens, want,
            "{name}: greedy continuation of prompt {c} in a batch"
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
    check_model(&model, "tiny_qwen2", &fixtures()["tiny_qwen2"]);
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let path = root().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let model = Model::load(&path, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(model.num_layers(), 30);
    check_model(&model, "smollm2", &fixtures()["smollm2"]);
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
