//! Training parity with Python PEFT + PyTorch on the tiny Qwen2 fixture (f32, CPU), against the
//! fixtures of `scripts/fixtures/make_train_fixtures.py`:
//! - from PEFT's own initial adapter and the same batches, 10 optimizer steps (with and without
//!   activation recomputation) give the reference
//!   run's losses, learning rates and gradient norms (1e-4 relative), and its final adapter;
//! - we load PEFT's trained adapter and get PEFT's logits;
//! - PEFT loads an adapter written by this code (`train_ours_adapter/`) and gets our logits.
//!
//! `PSPACE_WRITE_FIXTURES=1` rewrites `train_ours_adapter/` (step 1 of the regeneration order in
//! the script's docstring) instead of checking it.

use pspace_engine::lora::{Lora, LoraConfig};
use pspace_engine::model::{Adapter, ForwardOptions, Logits, Model, Proj};
use pspace_engine::peft;
use pspace_engine::train::{AdamWConfig, Batch, ScheduleKind, TrainConfig, Trainer};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tiny() -> Model {
    Model::load(&fixtures().join("tiny-qwen2"), Device::Cpu, Kind::Float).unwrap()
}

fn tensor(st: &SafeTensors<'_>, name: &str) -> Tensor {
    let view = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    let data = view.data();
    match view.dtype() {
        Dtype::I64 => {
            let v: Vec<i64> = data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            Tensor::from_slice(&v).view(shape.as_slice())
        }
        Dtype::F32 => {
            let v: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            Tensor::from_slice(&v).view(shape.as_slice())
        }
        other => panic!("fixture tensor {name}: unexpected dtype {other:?}"),
    }
}

fn rows_of(ids: &Tensor, mask: &Tensor, labels: &Tensor) -> Vec<(Vec<i64>, Vec<i64>)> {
    (0..ids.size()[0])
        .map(|r| {
            let n = mask.get(r).sum(Kind::Int64).int64_value(&[]);
            let take = |t: &Tensor| Vec::<i64>::try_from(&t.get(r).narrow(0, 0, n)).unwrap();
            (take(ids), take(labels))
        })
        .collect()
}

fn logits(model: &Model, adapter: Option<&dyn Adapter>, ids: &Tensor, mask: &Tensor) -> Tensor {
    let opts = ForwardOptions {
        logits: Logits::All,
        adapter,
        ..Default::default()
    };
    tch::no_grad(|| model.forward(ids, mask, None, &opts).logits.unwrap())
}

/// Max |a - b| over the real (unpadded) positions of [B, T, V] logits.
fn max_diff_real(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let keep = mask.to_kind(Kind::Float).unsqueeze(-1);
    ((a - b) * keep).abs().max().double_value(&[])
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn ten_steps_match_peft_and_pytorch_adamw() {
    parity_run(false, None);
}

#[test]
fn ten_steps_with_activation_recomputation_match_too() {
    parity_run(true, None);
}

/// Padding-free steps: each step's rows packed into one pass, or into passes of at most 24
/// tokens (so most steps take several), give PEFT's padded run.
#[test]
fn ten_padding_free_steps_match_too() {
    parity_run(false, Some(100_000));
    parity_run(false, Some(24));
}

#[test]
fn ten_padding_free_steps_with_recomputation_match_too() {
    parity_run(true, Some(24));
}

fn parity_run(recompute: bool, pack_tokens: Option<usize>) {
    let fx = fixtures();
    let meta = read_json(&fx.join("train_parity.json"));
    let hp = &meta["hyper"];
    let bytes = std::fs::read(fx.join("train_parity.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let model = tiny();
    let (lora, adapter_meta) = peft::load(&fx.join("train_peft_init"), &model).unwrap();
    assert_eq!(adapter_meta.config.rank, hp["rank"].as_i64().unwrap());
    assert_eq!(adapter_meta.config.targets, Proj::ALL.to_vec());
    let steps = hp["steps"].as_u64().unwrap() as usize;
    let config = TrainConfig {
        learning_rate: hp["lr"].as_f64().unwrap(),
        adamw: AdamWConfig {
            betas: (hp["betas"][0].as_f64().unwrap(), hp["betas"][1].as_f64().unwrap()),
            eps: hp["eps"].as_f64().unwrap(),
            weight_decay: hp["weight_decay"].as_f64().unwrap(),
        },
        schedule: ScheduleKind::Linear,
        warmup_ratio: hp["warmup_ratio"].as_f64().unwrap(),
        max_grad_norm: hp["max_grad_norm"].as_f64(),
        micro_batch: hp["micro_batch"].as_u64().unwrap() as usize,
        grad_accum: hp["grad_accum"].as_u64().unwrap() as usize,
        epochs: 1,
        max_steps: Some(steps),
        seed: 0,
        recompute,
        pad_multiple: hp["pad_multiple"].as_u64().unwrap() as usize,
        pack_tokens,
    };
    let mut trainer = Trainer::new(&model, &lora, config, steps);
    assert_eq!(
        trainer.schedule().warmup_steps as u64,
        meta["warmup_steps"].as_u64().unwrap()
    );
    let reference = meta["reference"].as_array().unwrap();
    assert_eq!(reference.len(), steps);
    let (mut worst_loss, mut worst_norm) = (0.0f64, 0.0f64);
    let mut passes = 0;
    for (s, expected) in reference.iter().enumerate() {
        let mut step_rows = Vec::new();
        let mut batches: Vec<Batch> = (0..hp["grad_accum"].as_u64().unwrap())
            .map(|m| {
                let name = |what: &str| format!("step{s}.micro{m}.{what}");
                let ids = tensor(&st, &name("input_ids"));
                let mask = tensor(&st, &name("attention_mask"));
                let labels = tensor(&st, &name("labels"));
                let rows = rows_of(&ids, &mask, &labels);
                let refs: Vec<(&[i64], &[i64])> =
                    rows.iter().map(|(i, l)| (i.as_slice(), l.as_slice())).collect();
                let batch = Batch::new(&refs, 0, 8, Device::Cpu);
                step_rows.extend(rows);
                assert!(
                    batch.input_ids.equal(&ids),
                    "step {s} micro {m}: our padding differs"
                );
                assert!(batch.attention_mask.equal(&mask));
                batch
            })
            .collect();
        if let Some(max_tokens) = pack_tokens {
            let refs: Vec<(&[i64], &[i64])> = step_rows
                .iter()
                .map(|(i, l)| (i.as_slice(), l.as_slice()))
                .collect();
            batches = Batch::pack_step(&refs, max_tokens, Device::Cpu);
            assert!(batches.iter().all(|b| b.input_ids.size()[0] == 1));
        }
        passes += batches.len();
        let log = trainer.step(&batches, 1).unwrap();
        let rel = |ours: f64, key: &str| {
            let theirs = expected[key].as_f64().unwrap();
            (ours - theirs).abs() / theirs.abs().max(1e-12)
        };
        assert_eq!(log.label_tokens, expected["label_tokens"].as_i64().unwrap());
        worst_loss = worst_loss.max(rel(log.loss, "loss"));
        worst_norm = worst_norm.max(rel(log.grad_norm, "grad_norm"));
        assert!(
            rel(log.loss, "loss") < 1e-4,
            "step {}: loss {} vs {}",
            s + 1,
            log.loss,
            expected["loss"]
        );
        assert!(
            rel(log.grad_norm, "grad_norm") < 1e-4,
            "step {}: grad norm {} vs {}",
            s + 1,
            log.grad_norm,
            expected["grad_norm"]
        );
        assert!(
            (log.lr - expected["lr"].as_f64().unwrap()).abs() < 1e-12,
            "step {}: lr",
            s + 1
        );
    }
    eprintln!(
        "{steps} steps ({passes} passes, recompute {recompute}, pack_tokens {pack_tokens:?}) vs PEFT + torch AdamW: worst relative difference of the loss {worst_loss:.1e}, of the gradient norm {worst_norm:.1e}"
    );
    // The trained adapter equals PEFT's and gives its logits.
    let (peft_trained, _) = peft::load(&fx.join("train_peft_trained"), &model).unwrap();
    for (ours, theirs) in lora.parameters().iter().zip(peft_trained.parameters()) {
        let diff = (ours - &theirs).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "trained weights differ by {diff}");
    }
    let ids = tensor(&st, "eval.input_ids");
    let mask = tensor(&st, "eval.attention_mask");
    let expected = tensor(&st, "eval.logits_peft_trained");
    let ours = logits(&model, Some(&lora), &ids, &mask);
    let diff = max_diff_real(&ours, &expected, &mask);
    assert!(diff < 1e-4, "logits after our training vs PEFT's: {diff}");
    let loaded = logits(&model, Some(&peft_trained), &ids, &mask);
    let diff = max_diff_real(&loaded, &expected, &mask);
    assert!(diff < 1e-4, "PEFT's adapter loaded here vs PEFT's logits: {diff}");
    let base = logits(&model, None, &ids, &mask);
    assert!(
        max_diff_real(&base, &expected, &mask) > 1e-3,
        "training must have moved the logits"
    );
}

/// A deterministic adapter made by this code: rsLoRA, three targets, nonzero B.
fn our_adapter(model: &Model) -> Lora {
    let cfg = LoraConfig {
        rank: 2,
        alpha: 6.0,
        dropout: 0.05,
        targets: vec![Proj::Q, Proj::V, Proj::Down],
        use_rslora: true,
    };
    let lora = Lora::init(model, cfg, 2024).unwrap();
    let _guard = tch::no_grad_guard();
    for (layer, _, pair) in lora.pairs() {
        let n = pair.b.numel() as i64;
        let values = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.7 + layer as f64).sin() * 0.05;
        let mut b = pair.b.shallow_clone();
        b.copy_(&values.view(pair.b.size().as_slice()));
    }
    lora
}

#[test]
fn peft_loads_our_adapter_and_gets_our_logits() {
    let fx = fixtures();
    let model = tiny();
    let lora = our_adapter(&model);
    let dir = fx.join("train_ours_adapter");
    if std::env::var("PSPACE_WRITE_FIXTURES").as_deref() == Ok("1") {
        peft::save(&lora, &dir, "tiny-qwen2").unwrap();
        return;
    }
    let (committed, meta) = peft::load(&dir, &model).unwrap();
    assert_eq!(meta.config, *lora.config());
    for (a, b) in lora.parameters().iter().zip(committed.parameters()) {
        assert!(
            a.equal(&b),
            "the committed adapter is no longer what this code writes"
        );
    }
    // A fresh save is byte-identical to the committed one.
    let tmp = tempfile::tempdir().unwrap();
    peft::save(&lora, tmp.path(), "tiny-qwen2").unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join(peft::WEIGHTS_FILE)).unwrap(),
        std::fs::read(dir.join(peft::WEIGHTS_FILE)).unwrap()
    );
    let bytes = std::fs::read(fx.join("train_parity.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = tensor(&st, "eval.input_ids");
    let mask = tensor(&st, "eval.attention_mask");
    let theirs = tensor(&st, "eval.logits_ours");
    let ours = logits(&model, Some(&lora), &ids, &mask);
    let diff = max_diff_real(&ours, &theirs, &mask);
    eprintln!("PEFT loading our adapter: logits within {diff:.1e} of ours");
    assert!(diff < 1e-4, "PEFT's logits of our adapter vs ours: {diff}");
    let merged = logits(&lora.merged_into(&model), None, &ids, &mask);
    assert!(max_diff_real(&merged, &theirs, &mask) < 1e-4, "merged weights");
}
