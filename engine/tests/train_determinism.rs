//! A training run with dropout is the same bit for bit when run again with the same seed.
//!
//! Alone in its own test binary: libtorch's dropout draws from the process-wide generator, which
//! `train` seeds from the run's seed, so no other test may draw from it at the same time.

use pspace_engine::lora::{Lora, LoraConfig};
use pspace_engine::model::{Model, ModelConfig, Proj};
use pspace_engine::train::masks::IGNORE;
use pspace_engine::train::{train, AdamWConfig, Example, ScheduleKind, TrainConfig};
use std::ops::ControlFlow;
use tch::{Device, Kind};

fn examples() -> Vec<Example> {
    (0..8)
        .map(|i| {
            let ids: Vec<i64> = (0..5 + i * 3)
                .map(|j| ((i * 31 + j * 17) % 1000) as i64 + 1)
                .collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(j, &id)| if j < 3 { IGNORE } else { id })
                .collect();
            Example {
                line: i + 1,
                ids,
                labels,
            }
        })
        .collect()
}

fn trained(model: &Model, seed: u64, generator_state: i64) -> tch::Tensor {
    let lora = Lora::init(
        model,
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.3,
            targets: Proj::ALL.to_vec(),
            use_rslora: false,
        },
        1,
    )
    .unwrap();
    let config = TrainConfig {
        learning_rate: 1e-2,
        adamw: AdamWConfig::default(),
        schedule: ScheduleKind::Linear,
        warmup_ratio: 0.0,
        max_grad_norm: Some(1.0),
        micro_batch: 2,
        grad_accum: 2,
        epochs: 2,
        max_steps: None,
        seed,
        recompute: false,
        pad_multiple: 8,
        pack_tokens: None,
    };
    // Whatever state the generator was left in must not matter.
    tch::manual_seed(generator_state);
    let _ = tch::Tensor::rand([17], (Kind::Float, Device::Cpu));
    let out = train(model, &lora, &examples(), 0, &config, &mut |_, _| {
        ControlFlow::Continue(())
    });
    assert!(out.error.is_none(), "{:?}", out.error);
    lora.snapshot()
}

#[test]
fn dropout_runs_are_reproducible_from_the_seed() {
    let model = Model::random(&ModelConfig::tiny_qwen2(), Device::Cpu, Kind::Float, 11);
    let first = trained(&model, 7, 1);
    let again = trained(&model, 7, 2);
    let other = trained(&model, 8, 1);
    assert!(first.equal(&again), "same seed, same adapter");
    assert!(
        !first.equal(&other),
        "another seed draws other masks and another order"
    );
}
