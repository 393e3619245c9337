//! Engine benchmark: forward throughput with hidden-state capture and batched sampling, on a
//! Qwen2.5-7B-shaped model with random bf16 weights built on the device (or a tiny model on CPU
//! with `--tiny`). Prints one JSON line. The workloads mirror `hf_baseline.py` so the two can be
//! compared side by side on one GPU (`bench/gpu.sh`).
//!
//! Usage: bench_engine [--device cuda|cpu] [--tiny | --model PATH] [--gen-batches 64,256]
//!        [--new-tokens 256] [--kernel-trace PATH]
//! `--kernel-trace PATH`: after the timed generations, 32 greedy new tokens at the last batch
//! size under libtorch's profiler, written to PATH as a Chrome trace (engine::kernel_trace;
//! `bench/kernel_summary.py` totals it).
//! `--model` loads a real model (e.g. the demo GGUF) and uses the small workloads of `--tiny`.

use pspace_engine::generate::{generate, SamplingParams};
use pspace_engine::model::{ForwardOptions, Logits, Model, ModelConfig};
use pspace_engine::Device;
use std::time::Instant;
use tch::{Kind, Tensor};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let tiny = std::env::args().any(|a| a == "--tiny");
    let device: Device = arg("--device")
        .unwrap_or_else(|| "cuda".into())
        .parse()
        .expect("--device cpu|cuda");
    let tdev = device.activate().expect("device");
    let kind = device.compute_kind();
    let model_path = arg("--model").map(std::path::PathBuf::from);
    let sync = || {
        if let tch::Device::Cuda(i) = tdev {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let t0 = Instant::now();
    let model = match &model_path {
        Some(path) => Model::load(path, tdev, kind).expect("--model: a loadable HF folder or GGUF file"),
        None if tiny => Model::random(&ModelConfig::tiny_qwen2(), tdev, kind, 0),
        None => Model::random(&ModelConfig::qwen2_5_7b(), tdev, kind, 0),
    };
    let cfg = model.config().clone();
    let tiny = tiny || model_path.is_some();
    sync();
    let mut res = serde_json::json!({
        "device": device.to_string(),
        "gpu": pspace_engine::device::cuda_devices().first().map(|g| g.name.clone()),
        "model": match &model_path {
            Some(path) => path.display().to_string(),
            None if tiny => "tiny-qwen2".to_string(),
            None => "qwen2.5-7b-shaped".to_string(),
        },
        "init_s": (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    eprintln!("{res}");
    let _guard = tch::no_grad_guard();
    let vocab = cfg.vocab_size as i64;
    let all_layers: Vec<usize> = (0..cfg.num_hidden_layers).collect();

    // 1) Forward with hidden states of every layer, batch 32 x 256 (extraction).
    let (b, t) = if tiny { (8, 64) } else { (32, 256) };
    let ids = Tensor::randint(vocab.min(150_000), [b, t], (Kind::Int64, tdev));
    let mask = Tensor::ones([b, t], (Kind::Int64, tdev));
    for (key, logits) in [
        ("extract_tok_s", Logits::None),
        ("forward_with_logits_tok_s", Logits::All),
    ] {
        let opts = ForwardOptions {
            capture_layers: &all_layers,
            logits,
            ..Default::default()
        };
        let _ = model.forward(&ids, &mask, None, &opts);
        sync();
        let n = 5;
        let start = Instant::now();
        for _ in 0..n {
            let _ = model.forward(&ids, &mask, None, &opts);
        }
        sync();
        let dt = start.elapsed().as_secs_f64() / n as f64;
        res[key] = ((b * t) as f64 / dt).round().into();
        eprintln!("{key} {}", res[key]);
    }

    // 0) Correctness on this device: the tiny fixture model in the device's precision against
    // f32 on the CPU (hidden states of every layer at the last token, relative to the norm).
    let fixture = std::path::Path::new("engine/tests/fixtures/tiny-qwen2");
    if fixture.exists() && tdev != tch::Device::Cpu {
        let cpu = Model::load(fixture, tch::Device::Cpu, Kind::Float).expect("tiny fixture");
        let dev = Model::load(fixture, tdev, kind).expect("tiny fixture on device");
        let prompts: Vec<Vec<i64>> = vec![(5..45).collect(), (300..317).collect(), vec![7, 8, 9]];
        let layers: Vec<usize> = (0..cpu.num_layers()).collect();
        let a = pspace_engine::extract::last_token_states(&cpu, &prompts, &layers, 4096).expect("cpu");
        let b = pspace_engine::extract::last_token_states(&dev, &prompts, &layers, 4096).expect("device");
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| {
                let err = (x - y).norm_scalaropt_dim(2, [1], false);
                (err / x.norm_scalaropt_dim(2, [1], false))
                    .max()
                    .double_value(&[])
            })
            .fold(0.0f64, f64::max);
        res["tiny_device_vs_cpu_f32_max_rel_err"] = worst.into();
        eprintln!("tiny fixture on {device} ({kind:?}) vs CPU f32: max relative error {worst:.2e}");
    }

    // 1b) Where a decode step's time goes: the forward alone, then the sampling alone.
    if std::env::args().any(|a| a == "--profile-decode") {
        let b = 64i64;
        let ids = Tensor::randint(vocab.min(150_000), [b, 128], (Kind::Int64, tdev));
        let mut mask = Tensor::ones([b, 128], (Kind::Int64, tdev));
        let mut cache = pspace_engine::model::KvCache::with_reserve(64);
        let opts = ForwardOptions::default();
        let out = model.forward(&ids, &mask, Some(&mut cache), &opts);
        let mut next = out.logits.unwrap().squeeze_dim(1).argmax(-1, false).unsqueeze(1);
        sync();
        let start = Instant::now();
        let steps = 20;
        let mut last_logits = None;
        for _ in 0..steps {
            mask = Tensor::cat(&[&mask, &Tensor::ones([b, 1], (Kind::Int64, tdev))], 1);
            let out = model.forward(&next, &mask, Some(&mut cache), &opts);
            let logits = out.logits.unwrap().squeeze_dim(1);
            next = logits.argmax(-1, false).unsqueeze(1);
            last_logits = Some(logits);
        }
        sync();
        res["decode_step_ms_b64"] = (start.elapsed().as_secs_f64() * 1000.0 / steps as f64).into();
        let logits = last_logits.unwrap();
        let start = Instant::now();
        for _ in 0..steps {
            let p = (logits.to_kind(Kind::Float) / 1.0).softmax(-1, Kind::Float);
            let _ = p.multinomial(1, false);
        }
        sync();
        res["sample_ms_b64"] = (start.elapsed().as_secs_f64() * 1000.0 / steps as f64).into();
        let start = Instant::now();
        for _ in 0..steps {
            let _ = Vec::<i64>::try_from(next.view([-1]).to_device(tch::Device::Cpu));
        }
        res["host_copy_ms"] = (start.elapsed().as_secs_f64() * 1000.0 / steps as f64).into();
        // The same forward without a mask (no padding, plain causal path over the whole prefix).
        let start = Instant::now();
        for _ in 0..3 {
            let _ = model.forward(
                &ids.narrow(1, 0, 1),
                &Tensor::ones([b, 1], (Kind::Int64, tdev)),
                None,
                &opts,
            );
        }
        sync();
        res["one_token_no_cache_ms"] = (start.elapsed().as_secs_f64() * 1000.0 / 3.0).into();
        eprintln!("{res}");
    }

    // 2) Batched sampling: B prompts x 128 tokens, N new tokens forced (no stop tokens).
    let new_tokens: usize = arg("--new-tokens")
        .and_then(|s| s.parse().ok())
        .unwrap_or(if tiny { 32 } else { 256 });
    let batches: Vec<usize> = arg("--gen-batches")
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| if tiny { vec![8] } else { vec![64, 256] });
    let prompt_len = if tiny { 16 } else { 128 };
    let mut gen = serde_json::Map::new();
    for &gb in &batches {
        let prompts: Vec<Vec<i64>> = (0..gb)
            .map(|_| {
                Vec::<i64>::try_from(Tensor::randint(
                    vocab.min(150_000),
                    [prompt_len],
                    (Kind::Int64, tch::Device::Cpu),
                ))
                .unwrap_or_default()
            })
            .collect();
        let params = SamplingParams {
            max_new_tokens: new_tokens,
            temperature: 1.0,
            top_p: 1.0,
            n: 1,
            seed: 1,
            stop_ids: vec![],
            max_batch: gb,
            ..Default::default()
        };
        let warm = SamplingParams {
            max_new_tokens: 8,
            ..params.clone()
        };
        let _ = generate(&model, &prompts, &warm, None);
        sync();
        let start = Instant::now();
        let out = generate(&model, &prompts, &params, None);
        sync();
        let dt = start.elapsed().as_secs_f64();
        let produced: usize = out.iter().map(|g| g[0].tokens.len()).sum();
        gen.insert(gb.to_string(), (produced as f64 / dt).round().into());
        eprintln!(
            "generate batch {gb}: {} new tokens/s",
            (produced as f64 / dt).round()
        );
    }
    if let (Some(path), Some(&gb)) = (arg("--kernel-trace"), batches.last()) {
        let prompts: Vec<Vec<i64>> = (0..gb)
            .map(|i| {
                (0..prompt_len as i64)
                    .map(|j| (i as i64 * 7919 + j * 104_729) % vocab.min(150_000))
                    .collect()
            })
            .collect();
        let params = SamplingParams {
            max_new_tokens: 32,
            temperature: 0.0,
            n: 1,
            stop_ids: vec![],
            max_batch: gb,
            ..Default::default()
        };
        let trace =
            pspace_engine::kernel_trace::KernelTrace::start(tdev.is_cuda()).expect("start the profiler");
        let _ = generate(&model, &prompts, &params, None);
        sync();
        trace
            .finish(std::path::Path::new(&path))
            .expect("write the kernel trace");
        eprintln!("kernel trace of a greedy generation, batch {gb}, 32 new tokens: {path}");
    }
    res["gen_tok_s"] = gen.into();
    res["gen_prompt_len"] = prompt_len.into();
    res["gen_new_tokens"] = new_tokens.into();
    println!("{res}");
}
