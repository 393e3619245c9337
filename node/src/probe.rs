//! `pspace probe`: one chat prompt through the engine, printed as one JSON object, to check a
//! model by hand or against Python: the rendered template and its ids, the residual stream at
//! the last prompt token of chosen layers (the OUTPUT of decoder layer L, no final norm), and
//! optionally a greedy continuation up to the end of the turn.

use anyhow::{bail, Context, Result};
use clap::Args;
use pspace_engine::extract::last_token_states;
use pspace_engine::generate::{generate, FinishReason, SamplingParams};
use pspace_engine::model::Model;
use pspace_engine::tokenizer::{ChatMessage, ChatTokenizer};
use pspace_engine::Device;
use serde_json::{json, Map, Value};

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// `demo` (the bundled SmolLM2 GGUF), an HF model folder or a .gguf file.
    #[arg(long, default_value = "demo")]
    pub model: String,
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
    /// Also generate up to N tokens greedily (stopping at EOS or the end-of-turn token).
    #[arg(long)]
    pub generate: Option<usize>,
    /// cpu, cuda or cuda:N (f32 on CPU, bf16 on CUDA).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: ProbeArgs) -> Result<()> {
    let path = crate::paths::resolve_model(&args.model)?;
    let device: Device = args.device.parse()?;
    let tch_device = device.activate()?;
    let tokenizer =
        ChatTokenizer::load(&path).with_context(|| format!("loading the tokenizer of {}", path.display()))?;
    let model = Model::load(&path, tch_device, device.compute_kind())
        .with_context(|| format!("loading the model {}", path.display()))?;
    let layers = model.num_layers();
    if let Some(&bad) = args.layers.iter().find(|&&l| l >= layers) {
        bail!(
            "--layers asks for layer {bad} but {} has {layers} layers (0..{})",
            path.display(),
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
    let mut out = json!({
        "model": path.display().to_string(),
        "device": device.to_string(),
        "prompt_text": prompt_text,
        "prompt_ids": prompt_ids,
        "hidden": hidden,
    });
    if let Some(max_new_tokens) = args.generate {
        let params = SamplingParams {
            max_new_tokens,
            temperature: 0.0,
            stop_ids: tokenizer.stop_token_ids(),
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
