//! LoRA SFT benchmark: optimizer steps per second on a Qwen2.5-7B-shaped model with random bf16
//! weights built on the device (or the tiny Qwen2 on CPU with `--tiny`), LoRA r=32 alpha=64
//! dropout 0.05 on all 7 projections, one micro-batch of 4 x 512 tokens per step with every
//! token a label, AdamW lr 1e-4 wd 0.01, clip 1.0: the workload of `hf_baseline.py`'s training
//! part, so the two compare on one GPU.
//!
//! Each mode (without and with activation recomputation) runs in a fresh child process, so its
//! peak memory is its own. Peak memory is the device memory in use (cudaMemGetInfo: total - free)
//! after the timed steps; libtorch's caching allocator keeps what it reserved at the peak, so
//! this is the peak reserved memory plus the CUDA context (HF's figure, max_memory_allocated,
//! counts allocated tensors only and is a little lower for the same run). `peak_minus_context_gib`
//! subtracts what the process used before building the model (CUDA context).
//! Prints ONE JSON line on stdout.
//!
//! Besides the steps, each mode times one forward pass without a graph over the same batch
//! (`forward_s`), which splits a step into its forward and the rest.
//!
//! Usage: bench_train [--device cuda|cpu] [--tiny] [--steps N] [--batch B] [--seq T] [--dropout P]
//!                    [--packed] [--no-recompute] [--kernel-trace PATH]
//! `--kernel-trace PATH`: after the timed steps, three more steps under libtorch's profiler,
//! written to PATH as a Chrome trace (engine::kernel_trace; `bench/kernel_summary.py` totals it).

use pspace_engine::lora::{Lora, LoraConfig};
use pspace_engine::model::{ForwardOptions, Logits, Model, ModelConfig, Proj};
use pspace_engine::train::trainer::{Batch, TrainConfig, Trainer};
use pspace_engine::train::{AdamWConfig, ScheduleKind};
use pspace_engine::Device;
use std::process::Command;
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// LoRA dropout (`--dropout`, default 0.05 as in hf_baseline.py).
fn dropout() -> f64 {
    arg("--dropout").and_then(|v| v.parse().ok()).unwrap_or(0.05)
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// Device memory in use on the current CUDA device (bytes), through the CUDA runtime that
/// libtorch_cuda already loaded; None on CPU or when the symbol is missing.
fn cuda_used_bytes() -> Option<u64> {
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> libc::c_int;
    // SAFETY: cudaMemGetInfo(size_t*, size_t*) has this signature in every CUDA version; it is
    // only called after libtorch_cuda (which links the runtime) was loaded by `activate`.
    unsafe {
        let sym = libc::dlsym(libc::RTLD_DEFAULT, c"cudaMemGetInfo".as_ptr());
        if sym.is_null() {
            return None;
        }
        let get: MemGetInfo = std::mem::transmute(sym);
        let (mut free, mut total) = (0usize, 0usize);
        (get(&mut free, &mut total) == 0).then_some((total - free) as u64)
    }
}

/// The line of a child's stderr that says what failed, at most 300 characters.
fn first_error_line(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains("Err") || l.contains("panicked"))
        .or_else(|| stderr.lines().last())
        .unwrap_or("");
    line.chars().take(300).collect()
}

fn gib(bytes: Option<u64>) -> serde_json::Value {
    bytes
        .map_or(serde_json::Value::Null, |b| {
            ((b as f64 / (1u64 << 30) as f64) * 100.0).round().into()
        })
        .as_f64()
        .map_or(serde_json::Value::Null, |v| (v / 100.0).into())
}

/// One mode in this process: returns tokens/s, peak memory and the step losses.
fn run_mode(device: Device, tiny: bool, recompute: bool) -> serde_json::Value {
    let tdev = device.activate().expect("--device: an available device");
    let kind = device.compute_kind();
    let sync = || {
        if let tch::Device::Cuda(i) = tdev {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let cfg = if tiny {
        ModelConfig::tiny_qwen2()
    } else {
        ModelConfig::qwen2_5_7b()
    };
    // The CUDA context exists once a first tensor is on the device; what is used then is not
    // the training's.
    let _first = tch::Tensor::zeros([1], (kind, tdev));
    sync();
    let context_bytes = cuda_used_bytes();
    let t0 = Instant::now();
    let model = Model::random(&cfg, tdev, kind, 0);
    sync();
    let init_s = t0.elapsed().as_secs_f64();
    let weights_bytes = cuda_used_bytes();
    let lora_config = LoraConfig {
        rank: 32,
        alpha: 64.0,
        dropout: dropout(),
        targets: Proj::ALL.to_vec(),
        use_rslora: false,
    };
    let lora = Lora::init(&model, lora_config, 0).expect("LoRA r=32 on 7 projections");
    let (b, t) = (
        arg("--batch").and_then(|v| v.parse().ok()).unwrap_or(4usize),
        arg("--seq")
            .and_then(|v| v.parse().ok())
            .unwrap_or(if tiny { 64usize } else { 512 }),
    );
    let steps: usize = arg("--steps").and_then(|v| v.parse().ok()).unwrap_or(8);
    let warmup = 2usize;
    let config = TrainConfig {
        learning_rate: 1e-4,
        adamw: AdamWConfig {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        },
        schedule: ScheduleKind::Constant,
        warmup_ratio: 0.0,
        max_grad_norm: Some(1.0),
        micro_batch: b,
        grad_accum: 1,
        epochs: 1,
        max_steps: None,
        seed: 0,
        recompute,
        pad_multiple: 8,
        pack_tokens: None,
    };
    let mut trainer = Trainer::new(&model, &lora, config, warmup + steps + 3);
    let vocab = (cfg.vocab_size as i64).min(150_000);
    // Every token a label, as in hf_baseline.py (labels = input ids).
    let rows: Vec<Vec<i64>> = (0..b)
        .map(|r| {
            (0..t)
                .map(|j| ((r * 7919 + j * 104_729) as i64) % vocab)
                .collect()
        })
        .collect();
    let pairs: Vec<(&[i64], &[i64])> = rows.iter().map(|r| (r.as_slice(), r.as_slice())).collect();
    // --packed: the rows back to back without padding (the padding-free path), one pass.
    let batch = if flag("--packed") {
        Batch::packed(&pairs, tdev)
    } else {
        Batch::new(&pairs, 0, 8, tdev)
    };
    let mut losses = Vec::new();
    for _ in 0..warmup {
        losses.push(
            trainer
                .step(std::slice::from_ref(&batch), 1)
                .expect("warm-up step")
                .loss,
        );
    }
    sync();
    let start = Instant::now();
    for _ in 0..steps {
        losses.push(
            trainer
                .step(std::slice::from_ref(&batch), 1)
                .expect("timed step")
                .loss,
        );
    }
    sync();
    let dt = start.elapsed().as_secs_f64() / steps as f64;
    let peak = cuda_used_bytes();
    if let Some(path) = arg("--kernel-trace") {
        let trace =
            pspace_engine::kernel_trace::KernelTrace::start(tdev.is_cuda()).expect("start the profiler");
        for _ in 0..3 {
            trainer
                .step(std::slice::from_ref(&batch), 1)
                .expect("traced step");
        }
        sync();
        trace
            .finish(std::path::Path::new(&path))
            .expect("write the kernel trace");
        eprintln!("kernel trace of 3 steps: {path}");
    }
    let forward = || {
        let opts = ForwardOptions {
            logits: Logits::None,
            capture_layers: &[cfg.num_hidden_layers - 1],
            adapter: Some(&lora),
            train: false,
        };
        tch::no_grad(|| model.forward(&batch.input_ids, &batch.attention_mask, None, &opts));
    };
    forward();
    sync();
    let forward_start = Instant::now();
    for _ in 0..3 {
        forward();
    }
    sync();
    let forward_s = forward_start.elapsed().as_secs_f64() / 3.0;
    serde_json::json!({
        "tok_s": ((b * t) as f64 / dt).round(),
        "step_s": (dt * 1000.0).round() / 1000.0,
        "forward_s": (forward_s * 10000.0).round() / 10000.0,
        "peak_used_gib": gib(peak),
        "weights_used_gib": gib(weights_bytes),
        "context_used_gib": gib(context_bytes),
        "peak_minus_context_gib": gib(peak.zip(context_bytes).map(|(p, c)| p.saturating_sub(c))),
        "init_s": (init_s * 10.0).round() / 10.0,
        "batch": b,
        "seq": t,
        "steps_timed": steps,
        "losses": losses,
        "profile": trainer.profile_table(),
    })
}

fn main() {
    let tiny = flag("--tiny");
    let device_name = arg("--device").unwrap_or_else(|| "cuda".into());
    let device: Device = device_name.parse().expect("--device cpu|cuda");
    if let Some(mode) = arg("--child-mode") {
        let result = run_mode(device, tiny, mode == "recompute");
        println!("{result}");
        return;
    }
    // Parent: one child per mode, then one JSON line.
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let passthrough: Vec<String> = std::env::args().skip(1).filter(|a| a != "--child-mode").collect();
    // The GPU's name is asked for after the children ran: the query makes a CUDA context in
    // this process, which would count in the children's device-wide memory figures.
    let mut res = serde_json::json!({
        "device": device.to_string(),
        "model": if tiny { "tiny-qwen2" } else { "qwen2.5-7b-shaped" },
        "lora": format!("r=32 alpha=64 dropout={} q,k,v,o,gate,up,down", dropout()),
        "peak_memory": "cudaMemGetInfo total-free after the timed steps (caching allocator reserved + CUDA context)",
    });
    // --no-recompute: the plain mode only.
    let modes: &[(&str, &str)] = if flag("--no-recompute") {
        &[("plain", "nogc")]
    } else {
        &[("plain", "nogc"), ("recompute", "gc")]
    };
    for &(mode, key) in modes {
        let out = Command::new(&exe)
            .args(&passthrough)
            .args(["--child-mode", mode])
            .output()
            .expect("run the benchmark child");
        let text = String::from_utf8_lossy(&out.stdout);
        let parsed: serde_json::Value = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| {
                serde_json::json!({
                    "error": format!(
                        "child {mode} exited with {:?}: {}",
                        out.status.code(),
                        first_error_line(&String::from_utf8_lossy(&out.stderr))
                    )
                })
            });
        eprintln!("{mode}: {parsed}");
        res[format!("train_tok_s_{key}")] = parsed["tok_s"].clone();
        res[format!("train_peak_gib_{key}")] = parsed["peak_used_gib"].clone();
        res[format!("detail_{key}")] = parsed;
    }
    res["gpu"] = match device {
        Device::Cpu => serde_json::Value::Null,
        Device::Cuda(_) => pspace_engine::device::cuda_devices()
            .first()
            .map(|g| g.name.clone())
            .into(),
    };
    println!("{res}");
}
