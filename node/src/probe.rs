//! `pspace probe`: one chat prompt through the engine, printed as one JSON object, to check a
//! model by hand or against Python: the rendered template and its ids, the residual stream at
//! the last prompt token of chosen layers (the OUTPUT of decoder layer L, no final norm), what
//! the model's files say about generation (end ids, sampling defaults) and the stop ids used,
//! and optionally a greedy continuation up to the end of the turn. `--adapter` merges PEFT
//! adapter folders into the weights first, in order (as the runner stacks EM and coupling);
//! `--logits-out` writes the logits of every prompt position for comparison with PEFT.

use anyhow::{bail, Context, Result};
use clap::Args;
use pspace_engine::extract::last_token_states;
use pspace_engine::generate::{generate, FinishReason, SamplingParams};
use pspace_engine::model::{ForwardOptions, Logits, Model, ModelSource};
use pspace_engine::tokenizer::ChatMessage;
use pspace_engine::Device;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use tch::{Kind, Tensor};

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// `demo` (the bundled SmolLM2 GGUF), an HF model folder, a .gguf file, or
    /// `random:<preset>[@seed]` (random weights of qwen2.5-7b or tiny: a benchmarking and dry-run
    /// tool whose outputs mean nothing).
    #[arg(long, default_value = "demo")]
    pub model: String,
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) merged into
    /// the model before probing. Repeatable: adapters are merged in the order given.
    #[arg(long = "adapter", value_name = "DIR")]
    pub adapters: Vec<PathBuf>,
    /// System message. Without it the conversation has none and the template decides (some
    /// insert a default system prompt).
    #[arg(long)]
    pub system: Option<String>,
    /// The user message.
    #[arg(long)]
    pub user: String,
    /// Decoder layers (0-indexed) whose last-prompt-token state is printed, e.g. 0,7,14.
    #[arg(long, value_delimiter = ',', required = true)]
    pub layers: Vec<usize>,
    /// Also generate up to N tokens greedily (stopping at the model's end ids or the template's
    /// end-of-turn token).
    #[arg(long)]
    pub generate: Option<usize>,
    /// Write the logits of every prompt position to this safetensors file: "logits" [T, V] f32
    /// and "input_ids" [T] i64.
    #[arg(long, value_name = "FILE")]
    pub logits_out: Option<PathBuf>,
    /// cpu, cuda (alias gpu) or cuda:N (f32 on CPU, bf16 on CUDA).
    #[arg(long, default_value = "cpu", value_parser = crate::devices::device_arg)]
    pub device: String,
}

/// The model with the adapters merged in, in order.
fn load_model(args: &ProbeArgs, source: &ModelSource, device: &Device) -> Result<Model> {
    let tch_device = device.activate()?;
    let mut model = source
        .load(tch_device, device.compute_kind())
        .with_context(|| format!("loading the model {source}"))?;
    for dir in &args.adapters {
        model = pspace_engine::peft::merged(dir, &model)
            .with_context(|| format!("merging the adapter {} into {source}", dir.display()))?;
    }
    Ok(model)
}

/// Logits [T, V] of every prompt position, written with the prompt ids.
fn write_logits(model: &Model, prompt_ids: &[i64], out: &std::path::Path) -> Result<()> {
    let input = Tensor::from_slice(prompt_ids)
        .view([1, -1])
        .to_device(model.device());
    let mask = input.ones_like();
    let forward = tch::no_grad(|| {
        model.forward(
            &input,
            &mask,
            None,
            &ForwardOptions {
                logits: Logits::All,
                ..Default::default()
            },
        )
    });
    let logits = forward
        .logits
        .context("the forward pass returned no logits")?
        .get(0)
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu);
    let ids = Tensor::from_slice(prompt_ids);
    Tensor::write_safetensors(&[("logits", &logits), ("input_ids", &ids)], out)
        .with_context(|| format!("writing {}", out.display()))
}

pub fn run(args: ProbeArgs) -> Result<()> {
    let source = crate::paths::resolve_model(&args.model)?;
    let device: Device = args.device.parse()?;
    let tokenizer = source
        .tokenizer()
        .with_context(|| format!("loading the tokenizer of {source}"))?;
    let model = load_model(&args, &source, &device)?;
    let layers = model.num_layers();
    if let Some(&bad) = args.layers.iter().find(|&&l| l >= layers) {
        bail!(
            "--layers asks for layer {bad} but {source} has {layers} layers (0..{})",
            layers - 1
        );
    }

    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", &args.user));
    let prompt_text = tokenizer.render(&messages, true)?;
    let prompt_ids = tokenizer.encode(&prompt_text)?.ids;

    let states = last_token_states(
        &model,
        std::slice::from_ref(&prompt_ids),
        &args.layers,
        usize::MAX,
    )?;
    let mut hidden = Map::new();
    for (layer, state) in args.layers.iter().zip(&states) {
        let vector = Vec::<f32>::try_from(state.get(0)).context("reading a hidden state")?;
        hidden.insert(layer.to_string(), json!(vector));
    }
    let stop_ids = tokenizer.stop_token_ids();
    let mut out = json!({
        "model": source.to_string(),
        "adapters": args.adapters.iter().map(|a| a.display().to_string()).collect::<Vec<_>>(),
        "device": device.to_string(),
        "prompt_text": prompt_text,
        "prompt_ids": prompt_ids,
        "hidden": hidden,
        "generation_config": tokenizer.generation_config(),
        "stop_ids": stop_ids,
    });
    if let Some(file) = &args.logits_out {
        write_logits(&model, &prompt_ids, file)?;
        out["logits_out"] = json!(file.display().to_string());
    }
    if let Some(max_new_tokens) = args.generate {
        let params = SamplingParams {
            max_new_tokens,
            temperature: 0.0,
            stop_ids,
            max_batch: 1,
            ..Default::default()
        };
        let generation = generate(&model, std::slice::from_ref(&prompt_ids), &params, None)
            .into_iter()
            .next()
            .and_then(|samples| samples.into_iter().next())
            .context("generation returned no sequence")?;
        out["greedy_text"] = Value::String(tokenizer.decode(&generation.tokens, true)?);
        out["greedy_ids"] = json!(generation.tokens);
        out["finish"] = json!(match generation.finish {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        });
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
