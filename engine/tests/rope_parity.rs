//! Every rope type against Python transformers (fixtures from
//! scripts/fixtures/make_rope_fixtures.py): llama3 (Llama-3.1-8B-Instruct's config keys), linear
//! (transformers 5 `rope_parameters`), dynamic, YaRN (old `type` key on Qwen2.5's config, new
//! `rope_type` on Llama, explicit attention factor and betas), each as an HF folder and, where
//! llama.cpp's converter writes one, as the GGUF of the same weights (`rope_freqs.weight` for
//! llama3, `rope.scaling.*` for linear and YaRN). Decoder-layer outputs at four positions of
//! prompts of 20, 50 and 100 tokens within 1e-4 of the row norm, last-token logits within 1e-4
//! of their largest magnitude, and 24 greedy tokens identical. Plain RoPE on the same weights
//! must miss the expectations, so every case shows its rope type matters.

use pspace_engine::generate::{generate, SamplingParams};
use pspace_engine::model::{ForwardOptions, Logits, Model, RopeScaling};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rope")
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// The HF folder of a case: its weights file and config.json.
fn hf_folder(case: &Value, config: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join(case["weights"].as_str().unwrap()),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

/// Worst differences of a model against a case's expectations: (largest state error relative
/// to its row norm, largest logit error relative to the largest logit, largest absolute state
/// error), and whether greedy decoding gave the same ids.
struct Diff {
    state_rel: f64,
    logits_rel: f64,
    state_abs: f64,
    greedy_equal: bool,
}

fn compare(model: &Model, name: &str, case: &Value, expected: &BTreeMap<String, Tensor>) -> Diff {
    let layers: Vec<usize> = (0..model.num_layers()).collect();
    let mut diff = Diff {
        state_rel: 0.0,
        logits_rel: 0.0,
        state_abs: 0.0,
        greedy_equal: true,
    };
    for (p, prompt) in case["prompts"].as_array().unwrap().iter().enumerate() {
        let prompt_ids = ids(&prompt["prompt_ids"]);
        let positions = ids(&prompt["positions"]);
        let input = Tensor::from_slice(&prompt_ids).view([1, -1]);
        let mask = Tensor::ones([1, prompt_ids.len() as i64], (Kind::Int64, Device::Cpu));
        let out = tch::no_grad(|| {
            model.forward(
                &input,
                &mask,
                None,
                &ForwardOptions {
                    capture_layers: &layers,
                    logits: Logits::Last,
                    ..Default::default()
                },
            )
        });
        let index = Tensor::from_slice(&positions);
        let states = Tensor::stack(
            &layers
                .iter()
                .map(|l| out.hidden[l].get(0).index_select(0, &index))
                .collect::<Vec<_>>(),
            0,
        );
        let want = &expected[&format!("{name}.{p}.states")];
        let err = (&states - want).norm_scalaropt_dim(2, [-1], false);
        let rel = (err / want.norm_scalaropt_dim(2, [-1], false))
            .max()
            .double_value(&[]);
        diff.state_rel = diff.state_rel.max(rel);
        diff.state_abs = diff.state_abs.max((&states - want).abs().max().double_value(&[]));
        let logits = out.logits.unwrap().view([-1]);
        let want = &expected[&format!("{name}.{p}.logits")];
        let rel = (&logits - want).abs().max().double_value(&[]) / want.abs().max().double_value(&[]);
        diff.logits_rel = diff.logits_rel.max(rel);
        if let Some(greedy) = prompt.get("greedy_ids") {
            let params = SamplingParams {
                max_new_tokens: greedy.as_array().unwrap().len(),
                temperature: 0.0,
                max_batch: 1,
                ..Default::default()
            };
            let got = &generate(model, std::slice::from_ref(&prompt_ids), &params, None)[0][0].tokens;
            diff.greedy_equal &= *got == ids(greedy);
        }
    }
    diff
}

fn check(label: &str, diff: &Diff) {
    eprintln!(
        "{label}: states max abs diff {:.3e} (relative {:.3e}), logits relative {:.3e}, greedy equal {}",
        diff.state_abs, diff.state_rel, diff.logits_rel, diff.greedy_equal
    );
    assert!(
        diff.state_rel < 1e-4,
        "{label}: states relative error {}",
        diff.state_rel
    );
    assert!(
        diff.logits_rel < 1e-4,
        "{label}: logits relative error {}",
        diff.logits_rel
    );
    assert!(diff.greedy_equal, "{label}: greedy ids differ");
}

#[test]
fn every_rope_type_matches_transformers_as_hf_folder_and_gguf() {
    let cases: BTreeMap<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("rope_parity.json")).unwrap()).unwrap();
    let expected: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("rope_parity.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(cases.len(), 6);
    let mut kinds = std::collections::BTreeSet::new();
    for (name, case) in &cases {
        let dir = hf_folder(case, &case["config"]);
        let model = Model::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        kinds.insert(
            serde_json::to_value(&model.config().rope_scaling).unwrap()["rope_type"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        check(
            &format!("{name} (HF folder)"),
            &compare(&model, name, case, &expected),
        );

        if let Some(gguf) = case["gguf"].as_str() {
            let model = Model::load(&fixtures().join(gguf), Device::Cpu, Kind::Float).unwrap();
            check(&format!("{name} (GGUF)"), &compare(&model, name, case, &expected));
        }

        // The same weights with plain RoPE miss: the fixture tells the rope types apart.
        let mut plain = case["config"].clone();
        let obj = plain.as_object_mut().unwrap();
        obj.remove("rope_scaling");
        obj.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": rope_theta(&case["config"])}),
        );
        let dir = hf_folder(case, &plain);
        let model = Model::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        assert_eq!(model.config().rope_scaling, RopeScaling::Default);
        let miss = compare(&model, name, case, &expected);
        assert!(
            miss.state_rel > 1e-3,
            "{name}: plain RoPE is within {} of the expectations",
            miss.state_rel
        );
    }
    let want: std::collections::BTreeSet<String> = ["dynamic", "linear", "llama3", "yarn"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(kinds, want);
}

/// The theta a case's config means (inside its rope section, else top level, else 10000).
fn rope_theta(config: &Value) -> f64 {
    config["rope_parameters"]["rope_theta"]
        .as_f64()
        .or_else(|| config["rope_theta"].as_f64())
        .unwrap_or(10_000.0)
}

#[test]
fn llama_3_1_8b_instruct_config_loads_with_its_real_sizes() {
    // The published config.json of meta-llama/Llama-3.1-8B-Instruct, unchanged.
    let text = r#"{
      "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
      "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
      "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
      "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
      "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
      "pretraining_tp": 1, "rms_norm_eps": 1e-05,
      "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
      "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256
    }"#;
    let cfg =
        pspace_engine::model::ModelConfig::from_hf_str(text, Path::new("Llama-3.1-8B-Instruct/config.json"))
            .unwrap();
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.vocab_size
        ),
        (4096, 32, 8, 128, 128_256)
    );
    assert_eq!(cfg.rope_theta, 500_000.0);
    assert_eq!(
        cfg.rope_scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0
        }
    );
    assert_eq!(
        (cfg.bos_token_id, cfg.eos_token_id),
        (Some(128_000), Some(128_001))
    );
}
