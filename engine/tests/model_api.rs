//! The model's contract with its callers, on the tiny Qwen2 fixture (f32, CPU): the adapter hook
//! equals merging the same delta into the weights, gradients reach adapter parameters through
//! the frozen base, left padding (generation) and right padding (training, extraction) leave
//! real tokens' states unchanged, Method B is the mean over response positions, and generation
//! honours stop ids, token budgets, seeds, n and top-p.

use pspace_engine::extract::{last_token_states, response_mean_states};
use pspace_engine::generate::{generate, generate_with_states, FinishReason, SamplingParams};
use pspace_engine::model::{Adapter, ForwardOptions, LayerAdapter, Logits, Model, Proj};
use std::ops::ControlFlow;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn tiny() -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2");
    Model::load(&dir, Device::Cpu, Kind::Float).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn forward_hidden(model: &Model, ids: &[i64], layers: &[usize]) -> Vec<Tensor> {
    let input = Tensor::from_slice(ids).view([1, -1]);
    let mask = Tensor::ones([1, ids.len() as i64], (Kind::Int64, Device::Cpu));
    let out = tch::no_grad(|| {
        model.forward(
            &input,
            &mask,
            None,
            &ForwardOptions {
                capture_layers: layers,
                logits: Logits::None,
                ..Default::default()
            },
        )
    });
    layers.iter().map(|l| out.hidden[l].get(0)).collect()
}

/// A rank-2 adapter on one projection of one layer: delta = x A^T B^T.
struct LowRank {
    layer: usize,
    proj: Proj,
    a: Tensor,
    b: Tensor,
}

// SAFETY: the adapter's tensors are only read during forward passes (tch's Tensor is Send but
// not Sync; the `Adapter` bound asks for both, as the model itself provides).
unsafe impl Sync for LowRank {}

impl Adapter for LowRank {
    fn layer(&self, layer: usize, _kind: Kind, _train: bool) -> Option<Box<dyn LayerAdapter + '_>> {
        (layer == self.layer).then(|| Box::new(self) as Box<dyn LayerAdapter>)
    }
}

impl LayerAdapter for &LowRank {
    fn add(&self, group: &[Proj], widths: &[i64], input: &Tensor, base: Tensor) -> Tensor {
        let Some(i) = group.iter().position(|&p| p == self.proj) else {
            return base;
        };
        let mut parts = base.split_with_sizes(widths, -1);
        parts[i] = &parts[i] + input.matmul(&self.a.tr()).matmul(&self.b.tr());
        Tensor::cat(&parts, -1)
    }
}

fn low_rank(model: &Model, layer: usize, proj: Proj) -> LowRank {
    tch::manual_seed(11);
    let w = model.projection_weight(layer, proj);
    let (out_dim, in_dim) = (w.size()[0], w.size()[1]);
    LowRank {
        layer,
        proj,
        a: Tensor::randn([2, in_dim], (Kind::Float, Device::Cpu)) * 0.3,
        b: Tensor::randn([out_dim, 2], (Kind::Float, Device::Cpu)) * 0.3,
    }
}

#[test]
fn the_model_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
    let model = std::sync::Arc::new(tiny());
    let ids: Vec<i64> = (40..60).collect();
    let here = forward_hidden(&model, &ids, &[3]);
    let there = {
        let model = model.clone();
        let ids = ids.clone();
        std::thread::spawn(move || forward_hidden(&model, &ids, &[3]))
            .join()
            .unwrap()
    };
    assert_eq!(max_abs_diff(&here[0], &there[0]), 0.0);
}

#[test]
fn an_adapter_delta_equals_merging_it_into_the_weight() {
    let model = tiny();
    let ids: Vec<i64> = (100..130).collect();
    let input = Tensor::from_slice(&ids).view([1, -1]);
    let mask = Tensor::ones([1, 30], (Kind::Int64, Device::Cpu));
    for (layer, proj) in [(1, Proj::Q), (2, Proj::V), (0, Proj::Down), (3, Proj::Gate)] {
        let adapter = low_rank(&model, layer, proj);
        let with_adapter = tch::no_grad(|| {
            model.forward(
                &input,
                &mask,
                None,
                &ForwardOptions {
                    capture_layers: &[3],
                    logits: Logits::All,
                    adapter: Some(&adapter),
                    train: false,
                },
            )
        });
        let merged =
            model.with_merged_deltas(|l, p| (l == layer && p == proj).then(|| adapter.b.matmul(&adapter.a)));
        let base_logits = tch::no_grad(|| {
            model
                .forward(
                    &input,
                    &mask,
                    None,
                    &ForwardOptions {
                        logits: Logits::All,
                        ..Default::default()
                    },
                )
                .logits
                .unwrap()
        });
        let merged_out = tch::no_grad(|| {
            merged.forward(
                &input,
                &mask,
                None,
                &ForwardOptions {
                    capture_layers: &[3],
                    logits: Logits::All,
                    ..Default::default()
                },
            )
        });
        let (a, m) = (with_adapter.logits.unwrap(), merged_out.logits.unwrap());
        assert!(
            max_abs_diff(&a, &m) < 1e-4,
            "{proj:?}@{layer}: adapter vs merged logits"
        );
        assert!(
            max_abs_diff(&a, &base_logits) > 1e-3,
            "{proj:?}@{layer}: the adapter changed nothing"
        );
        assert!(max_abs_diff(&with_adapter.hidden[&3], &merged_out.hidden[&3]) < 1e-4);
        // Weights outside the touched group are shared, the touched one is new.
        // (Q/K/V and Gate/Up are fused, so a touched projection's partners are copied too.)
        let other = if matches!(proj, Proj::Gate | Proj::Up | Proj::Down) {
            Proj::Q
        } else {
            Proj::Down
        };
        assert_eq!(
            merged.projection_weight(layer, other).data_ptr(),
            model.projection_weight(layer, other).data_ptr()
        );
        assert_ne!(
            merged.projection_weight(layer, proj).data_ptr(),
            model.projection_weight(layer, proj).data_ptr()
        );
    }
}

#[test]
fn gradients_reach_adapter_parameters_through_the_frozen_base() {
    let model = tiny();
    for layer in 0..model.num_layers() {
        for proj in Proj::ALL {
            assert!(!model.projection_weight(layer, proj).requires_grad());
        }
    }
    let mut adapter = low_rank(&model, 0, Proj::K);
    adapter.a = adapter.a.set_requires_grad(true);
    adapter.b = adapter.b.set_requires_grad(true);
    // Right-padded batch of two, as training sees it.
    let ids = Tensor::from_slice(&[5i64, 6, 7, 8, 9, 10, 11, 12, 0, 0]).view([2, 5]);
    let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 0, 0]).view([2, 5]);
    let out = model.forward(
        &ids,
        &mask,
        None,
        &ForwardOptions {
            logits: Logits::All,
            adapter: Some(&adapter),
            train: true,
            ..Default::default()
        },
    );
    let logits = out.logits.unwrap();
    let loss = logits
        .narrow(1, 0, 2)
        .reshape([-1, 1024])
        .cross_entropy_for_logits(&Tensor::from_slice(&[6i64, 7, 11, 12]));
    loss.backward();
    for (name, t) in [("A", &adapter.a), ("B", &adapter.b)] {
        let g = t.grad();
        assert!(g.defined(), "{name} got no gradient");
        assert!(
            g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "{name}'s gradient is zero"
        );
    }
    assert!(!model.projection_weight(0, Proj::K).grad().defined());
}

#[test]
fn padding_on_either_side_leaves_real_tokens_unchanged() {
    let model = tiny();
    let short: Vec<i64> = vec![17, 300, 4, 999, 52];
    let long: Vec<i64> = (200..209).collect();
    let layers = [0usize, 2, 3];
    let single_short = forward_hidden(&model, &short, &layers);
    let single_long = forward_hidden(&model, &long, &layers);
    let pad = long.len() - short.len();
    for left in [true, false] {
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        if left {
            ids.extend(std::iter::repeat_n(0i64, pad));
            mask.extend(std::iter::repeat_n(0i64, pad));
        }
        ids.extend(&short);
        mask.extend(std::iter::repeat_n(1i64, short.len()));
        if !left {
            ids.extend(std::iter::repeat_n(0i64, pad));
            mask.extend(std::iter::repeat_n(0i64, pad));
        }
        ids.extend(&long);
        mask.extend(std::iter::repeat_n(1i64, long.len()));
        let t = long.len() as i64;
        let out = tch::no_grad(|| {
            model.forward(
                &Tensor::from_slice(&ids).view([2, t]),
                &Tensor::from_slice(&mask).view([2, t]),
                None,
                &ForwardOptions {
                    capture_layers: &layers,
                    logits: Logits::None,
                    ..Default::default()
                },
            )
        });
        let offset = if left { pad as i64 } else { 0 };
        for (i, layer) in layers.iter().enumerate() {
            let got_short = out.hidden[layer].get(0).narrow(0, offset, short.len() as i64);
            let got_long = out.hidden[layer].get(1);
            let side = if left { "left" } else { "right" };
            assert!(
                max_abs_diff(&got_short, &single_short[i]) < 1e-5,
                "{side} padding, layer {layer}"
            );
            assert!(
                max_abs_diff(&got_long, &single_long[i]) < 1e-5,
                "{side} padding, layer {layer}"
            );
        }
    }
}

#[test]
fn method_b_is_the_mean_over_response_positions_batched_or_not() {
    let model = tiny();
    let prompts: Vec<Vec<i64>> = vec![
        (10..25).collect(),
        vec![7, 8, 9],
        (500..540).collect(),
        vec![1, 2],
    ];
    let responses: Vec<Vec<i64>> = vec![(30..36).collect(), (600..620).collect(), vec![44], vec![]];
    let layers = [1usize, 3];
    let (batched, valid) = response_mean_states(&model, &prompts, &responses, &layers, 64).unwrap();
    assert_eq!(valid, vec![true, true, true, false]);
    for (i, (p, r)) in prompts.iter().zip(&responses).enumerate() {
        let (single, _) = response_mean_states(
            &model,
            std::slice::from_ref(p),
            std::slice::from_ref(r),
            &layers,
            64,
        )
        .unwrap();
        for li in 0..layers.len() {
            let diff = max_abs_diff(&batched[li].get(i as i64), &single[li].get(0));
            assert!(
                diff < 1e-5,
                "pair {i}, layer {}: batched differs by {diff}",
                layers[li]
            );
        }
        if r.is_empty() {
            assert_eq!(
                batched[0].get(i as i64).abs().sum(Kind::Float).double_value(&[]),
                0.0
            );
            continue;
        }
        let full = [p.as_slice(), r.as_slice()].concat();
        let states = forward_hidden(&model, &full, &layers);
        for li in 0..layers.len() {
            let want = states[li]
                .narrow(0, p.len() as i64, r.len() as i64)
                .mean_dim(0, false, Kind::Float);
            let diff = max_abs_diff(&batched[li].get(i as i64), &want);
            assert!(
                diff < 1e-5,
                "pair {i}, layer {}: not the response mean ({diff})",
                layers[li]
            );
        }
    }
    // Method A on the same prompts is the last prompt position.
    let a = last_token_states(&model, &prompts, &layers, 64).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let states = forward_hidden(&model, p, &layers);
        assert!(
            max_abs_diff(&a[1].get(i as i64), &states[1].get(-1)) < 1e-5,
            "prompt {i}"
        );
    }
    let err = last_token_states(&model, &prompts, &[4], 64)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer 4") && err.contains("4 layers"), "{err}");
}

fn greedy(max_new_tokens: usize, stop_ids: Vec<i64>) -> SamplingParams {
    SamplingParams {
        max_new_tokens,
        temperature: 0.0,
        stop_ids,
        ..Default::default()
    }
}

#[test]
fn generation_stops_on_stop_ids_and_budgets() {
    let model = tiny();
    let prompt: Vec<i64> = (70..82).collect();
    let free = generate(&model, std::slice::from_ref(&prompt), &greedy(16, vec![]), None);
    let continuation = &free[0][0];
    assert_eq!(continuation.tokens.len(), 16);
    assert_eq!(continuation.finish, FinishReason::Length);
    let stop = continuation.tokens[5];
    let cut = continuation.tokens.iter().position(|&t| t == stop).unwrap();
    let stopped = generate(
        &model,
        std::slice::from_ref(&prompt),
        &greedy(16, vec![999_999, stop]),
        None,
    );
    assert_eq!(stopped[0][0].tokens, continuation.tokens[..cut].to_vec());
    assert_eq!(stopped[0][0].finish, FinishReason::Stop);
    let none = generate(&model, std::slice::from_ref(&prompt), &greedy(0, vec![]), None);
    assert!(none[0][0].tokens.is_empty());
}

#[test]
fn sampling_is_seeded_and_gives_n_samples_per_prompt() {
    let model = tiny();
    let prompts: Vec<Vec<i64>> = vec![(70..82).collect(), vec![3, 4], (800..830).collect()];
    let params = SamplingParams {
        max_new_tokens: 10,
        temperature: 1.0,
        top_p: 0.95,
        n: 3,
        seed: 5,
        max_batch: 4,
        ..Default::default()
    };
    let first = generate(&model, &prompts, &params, None);
    let again = generate(&model, &prompts, &params, None);
    assert_eq!(first, again, "same seed, same samples");
    let other = generate(
        &model,
        &prompts,
        &SamplingParams {
            seed: 6,
            ..params.clone()
        },
        None,
    );
    assert_ne!(first, other, "another seed, other samples");
    assert_eq!(first.len(), 3);
    for samples in &first {
        assert_eq!(samples.len(), 3);
        assert!(samples
            .iter()
            .all(|s| s.tokens.len() == 10 && s.finish == FinishReason::Length));
        assert!(
            samples[0] != samples[1] || samples[1] != samples[2],
            "n samples are all identical"
        );
    }
    // Each sequence has its own random stream: the batch it runs in does not matter.
    let one_row = generate(
        &model,
        &prompts,
        &SamplingParams {
            max_batch: 1,
            ..params.clone()
        },
        None,
    );
    assert_eq!(first, one_row, "max_batch 1 vs 4");
    // A top-p so small that only the most likely token survives is greedy decoding.
    let nucleus = SamplingParams {
        top_p: 1e-6,
        n: 1,
        ..params.clone()
    };
    let greedy_out = generate(&model, &prompts, &greedy(10, vec![]), None);
    assert_eq!(generate(&model, &prompts, &nucleus, None), greedy_out);
    // So is top-k 1; top-k 2 samples among two tokens and so differs from greedy somewhere.
    let top1 = SamplingParams {
        top_k: 1,
        n: 1,
        ..params.clone()
    };
    assert_eq!(generate(&model, &prompts, &top1, None), greedy_out);
    let top2 = SamplingParams {
        top_k: 2,
        n: 1,
        temperature: 5.0,
        ..params.clone()
    };
    assert_ne!(generate(&model, &prompts, &top2, None), greedy_out);
}

#[test]
fn a_refilled_batch_gives_every_prompt_its_own_greedy_continuation() {
    // Forty prompts of varied length through 16 rows; a common stop id ends rows at different
    // steps, so rows leave and queued prompts join the running cache many times.
    let model = tiny();
    let prompts: Vec<Vec<i64>> = (0..40)
        .map(|i| {
            (0..(1 + (i * 7) % 23))
                .map(|j| 3 + (i * 31 + j * 17) % 1000)
                .collect()
        })
        .collect();
    let solo = greedy(12, vec![]);
    let alone: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| {
            generate(&model, std::slice::from_ref(p), &solo, None)[0][0]
                .tokens
                .clone()
        })
        .collect();
    // The most common token among the continuations is the stop id.
    let mut counts = std::collections::BTreeMap::new();
    alone
        .iter()
        .flatten()
        .for_each(|&t| *counts.entry(t).or_insert(0) += 1);
    let stop = *counts.iter().max_by_key(|(_, &c)| c).unwrap().0;
    let params = SamplingParams {
        max_batch: 16,
        ..greedy(12, vec![stop])
    };
    let together = generate(&model, &prompts, &params, None);
    let mut stopped = 0;
    for (i, want) in alone.iter().enumerate() {
        let cut: Vec<i64> = want.iter().copied().take_while(|&t| t != stop).collect();
        stopped += usize::from(cut.len() < want.len());
        assert_eq!(together[i][0].tokens, cut, "prompt {i}");
    }
    assert!(
        stopped >= 5,
        "only {stopped} rows stopped early: the test does not exercise refills"
    );
}

#[test]
fn states_read_while_decoding_are_the_states_of_separate_forward_passes() {
    // Method A and B from the decode itself must equal last_token_states and
    // response_mean_states on the generated responses: rows end by a stop id (not fed), by
    // the budget (the last token fed once more) and with an empty response, and refill.
    let model = tiny();
    let prompts: Vec<Vec<i64>> = (0..24)
        .map(|i| {
            (0..(1 + (i * 5) % 19))
                .map(|j| 3 + (i * 37 + j * 13) % 1000)
                .collect()
        })
        .collect();
    let free = generate(&model, &prompts, &greedy(10, vec![]), None);
    let mut counts = std::collections::BTreeMap::new();
    free.iter()
        .flat_map(|g| g[0].tokens.iter())
        .for_each(|&t| *counts.entry(t).or_insert(0) += 1);
    // The three most common tokens stop a row.
    let mut common: Vec<(i64, usize)> = counts.into_iter().collect();
    common.sort_by_key(|&(t, c)| (std::cmp::Reverse(c), t));
    let params = SamplingParams {
        max_batch: 6,
        ..greedy(10, common.iter().take(3).map(|&(t, _)| t).collect())
    };
    let layers = [0usize, 2, 3];
    let (gens, states) = generate_with_states(&model, &prompts, &params, &layers, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let plain = generate(&model, &prompts, &params, None);
    let responses: Vec<Vec<i64>> = gens.iter().map(|g| g.tokens.clone()).collect();
    assert_eq!(
        responses,
        plain.iter().map(|g| g[0].tokens.clone()).collect::<Vec<_>>(),
        "capturing changes no token"
    );
    let ends = |f: FinishReason| gens.iter().filter(|g| g.finish == f).count();
    assert!(
        ends(FinishReason::Stop) >= 3 && ends(FinishReason::Length) >= 3,
        "{gens:?}"
    );
    assert!(
        responses.iter().any(Vec::is_empty),
        "no empty response: {responses:?}"
    );
    let a = last_token_states(&model, &prompts, &layers, 256).unwrap();
    let (b, valid) = response_mean_states(&model, &prompts, &responses, &layers, 256).unwrap();
    for li in 0..layers.len() {
        let da = max_abs_diff(&states.last_prompt[li], &a[li]);
        let db = max_abs_diff(&states.response_mean[li], &b[li]);
        assert!(da < 1e-4, "layer {}: Method A differs by {da}", layers[li]);
        assert!(db < 1e-4, "layer {}: Method B differs by {db}", layers[li]);
    }
    for (i, v) in valid.iter().enumerate() {
        if !v {
            let row = states.response_mean[0].get(i as i64);
            assert_eq!(
                row.abs().sum(Kind::Float).double_value(&[]),
                0.0,
                "empty response {i}"
            );
        }
    }
    // A bad layer is refused before any work.
    let err = generate_with_states(
        &model,
        &prompts,
        &params,
        &[4],
        &mut |_| ControlFlow::Continue(()),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("layer 4"), "{err}");
}

#[test]
fn prompts_sharing_a_system_prompt_decode_as_they_do_alone() {
    // Three "system prompts" (20 to 40 tokens) under five "questions" each: the refill runs
    // each shared head once and the questions on top of it. Every continuation and state must
    // be what the prompt gives alone.
    let model = tiny();
    let mut prompts: Vec<Vec<i64>> = Vec::new();
    for (s, len) in [(0i64, 40i64), (1, 20), (2, 33)] {
        let head: Vec<i64> = (0..len).map(|j| 5 + (s * 211 + j * 7) % 900).collect();
        for q in 0..5i64 {
            let mut p = head.clone();
            p.extend((0..(1 + q % 4)).map(|j| 40 + (q * 53 + j * 11) % 900));
            prompts.push(p);
        }
    }
    let params = SamplingParams {
        max_batch: 7,
        ..greedy(6, vec![])
    };
    let layers = [1usize, 3];
    let (together, states) = generate_with_states(&model, &prompts, &params, &layers, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let alone = &generate(&model, std::slice::from_ref(p), &params, None)[0][0];
        assert_eq!(together[i].tokens, alone.tokens, "prompt {i}");
    }
    let a = last_token_states(&model, &prompts, &layers, 256).unwrap();
    let responses: Vec<Vec<i64>> = together.iter().map(|g| g.tokens.clone()).collect();
    let (b, _) = response_mean_states(&model, &prompts, &responses, &layers, 256).unwrap();
    for li in 0..layers.len() {
        let da = max_abs_diff(&states.last_prompt[li], &a[li]);
        let db = max_abs_diff(&states.response_mean[li], &b[li]);
        assert!(da < 1e-4 && db < 1e-4, "layer {}: A {da}, B {db}", layers[li]);
    }
    // Sampled (n = 3): the same samples whatever the batch, so sharing changes nothing.
    let sampled = SamplingParams {
        temperature: 1.0,
        n: 3,
        seed: 9,
        max_batch: 16,
        ..params.clone()
    };
    let one_row = SamplingParams {
        max_batch: 1,
        ..sampled.clone()
    };
    assert_eq!(
        generate(&model, &prompts, &sampled, None),
        generate(&model, &prompts, &one_row, None)
    );
}
