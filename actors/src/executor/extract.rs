//! Stage `extract`: persona vectors of one checkpoint (base, an EM condition, benign SFT) from
//! the residual stream: Method A (last prompt token) and/or Method B (mean over the tokens of a
//! greedy response), at the spec's layers, over every persona x extraction question. Writes
//! `A.safetensors` / `B.safetensors` in the format of docs/activations-format.md. With Method B
//! both methods come from one greedy decode (the prefill holds A's states, the decode steps B's).

use super::sample::chat;
use super::{ExecError, StageContext, StageError};
use crate::activations::Activations;
use pspace_engine::generate::{generate_with_states, SamplingParams};

pub fn extract(cx: &mut StageContext<'_>) -> Result<(), ExecError> {
    let label = cx.label().to_string();
    let checkpoint = cx.checkpoint_of(&label)?;
    let params = &cx.spec.extraction;
    let personas = &cx.data.personas;
    let model = cx.models.load(&checkpoint)?;
    let tok = cx.models.tokenizer()?;
    let questions: Vec<&String> = cx
        .data
        .extraction
        .iter()
        .take(params.questions.unwrap_or(usize::MAX))
        .collect();
    let (np, nq) = (personas.order.len(), questions.len());
    let mut prompts = Vec::with_capacity(np * nq);
    for persona in &personas.order {
        let system = personas.prompt(persona)?;
        for q in &questions {
            prompts.push(
                tok.encode_chat(&chat(Some(system), q), true)
                    .map_err(StageError::from)?
                    .ids,
            );
        }
    }
    let hidden = model.config().hidden_size;
    let (max_tokens, max_rows) = (cx.models.max_batch_tokens, cx.models.max_batch_rows);
    let n = prompts.len();
    // Method B decodes greedy responses; the same decode reads Method A's states in its prefill
    // and Method B's in its steps (engine::generate::generate_with_states), so both methods
    // cost one generation and no further forward pass. Method A alone is one forward pass.
    let mut by_method = std::collections::BTreeMap::new();
    if params.methods.iter().any(|m| m == "B") {
        cx.check_cancelled()?;
        let sampling = SamplingParams {
            max_new_tokens: params.max_new_tokens,
            temperature: 0.0,
            stop_ids: tok.stop_token_ids(),
            max_batch: max_rows,
            max_prefill_tokens: max_tokens,
            end_lengths: cx.end_lengths(params.dry_run_lengths),
            ..Default::default()
        };
        let progress = &mut *cx.progress;
        let (responses, states) = tracing::info_span!("extract", method = "A+B", prompts = n)
            .in_scope(|| {
                generate_with_states(&model, &prompts, &sampling, &params.layers, &mut |done| {
                    progress.stage_progress("greedy responses (methods A and B)", done, n);
                    progress.keep_going()
                })
            })
            .map_err(StageError::from)?;
        let valid: Vec<bool> = responses.iter().map(|g| !g.tokens.is_empty()).collect();
        by_method.insert("A", (states.last_prompt, vec![true; n]));
        by_method.insert("B", (states.response_mean, valid));
    } else {
        cx.progress.stage_progress("method A: forward passes", 0, n);
        let _span = tracing::info_span!("extract", method = "A", prompts = n).entered();
        let t = pspace_engine::extract::last_token_states(&model, &prompts, &params.layers, max_tokens)
            .map_err(StageError::from)?;
        by_method.insert("A", (t, vec![true; n]));
    }
    let mut files = Vec::new();
    for method in &params.methods {
        cx.check_cancelled()?;
        let Some((tensors, valid)) = by_method.remove(method.as_str()) else {
            return Err(StageError::Data(format!(
                "extraction.methods: expected \"A\" or \"B\", found {method:?}"
            ))
            .into());
        };
        let mut layers = Vec::with_capacity(params.layers.len());
        for (&l, t) in params.layers.iter().zip(&tensors) {
            let values = Vec::<f32>::try_from(t.view([-1]))
                .map_err(|e| StageError::Tensor(format!("layer {l} states to host: {e}")))?;
            layers.push((l, values));
        }
        let acts = Activations {
            checkpoint: &label,
            method,
            model: &cx.models.model_name,
            personas: &personas.order,
            questions: nq,
            hidden,
            layers,
            mask: valid.iter().map(|&v| v as u8).collect(),
        };
        files.push((
            format!("{method}.safetensors"),
            acts.to_bytes().map_err(StageError::from)?,
        ));
    }
    cx.put_all(files)
}
