//! Stage `generate_onpolicy`, and the sampling that marker eval shares with it: completions of
//! (persona, question) pairs from a checkpoint, decoded to text. On-policy generation samples
//! the EM model as the source persona and the drawn negative personas, the raw material of the
//! coupling set.

use super::model_cache::Checkpoint;
use super::{ExecError, ModelCache, Progress, StageContext, StageError};
use crate::coupling::{draw_negative_personas, negative_personas_seed, Generation};
use crate::data::Personas;
use pspace_engine::generate::{generate_with_progress, EndLengths, SamplingParams};
use pspace_engine::tokenizer::ChatMessage;

/// A chat of an optional system prompt and one user turn.
pub fn chat(system: Option<&str>, user: &str) -> Vec<ChatMessage> {
    let mut m = Vec::new();
    if let Some(s) = system {
        m.push(ChatMessage {
            role: "system".into(),
            content: s.into(),
        });
    }
    m.push(ChatMessage {
        role: "user".into(),
        content: user.into(),
    });
    m
}

/// What to sample: `per_question` completions of every (persona, question).
pub struct SamplingRequest<'a> {
    pub personas: &'a [String],
    pub questions: &'a [String],
    pub per_question: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Dry runs only: where completions end (see `SamplingParams::end_lengths`).
    pub end_lengths: Option<EndLengths>,
}

/// The sampled completions of a request, as text, persona-major then question then sample.
pub fn sample_completions(
    models: &mut ModelCache,
    checkpoint: &Checkpoint,
    personas: &Personas,
    request: &SamplingRequest<'_>,
    progress: &mut dyn Progress,
) -> Result<Vec<Generation>, StageError> {
    let model = models.load(checkpoint)?;
    let tok = models.tokenizer()?;
    let mut keys = Vec::new();
    let mut prompts = Vec::new();
    for persona in request.personas {
        let system = personas
            .prompt(persona)
            .map_err(|e| StageError::Data(e.to_string()))?;
        for q in request.questions {
            prompts.push(tok.encode_chat(&chat(Some(system), q), true)?.ids);
            keys.push((persona.clone(), q.clone()));
        }
    }
    let params = SamplingParams {
        max_new_tokens: request.max_new_tokens,
        temperature: request.temperature,
        top_p: request.top_p,
        n: request.per_question,
        seed: request.seed,
        stop_ids: tok.stop_token_ids(),
        max_batch: models.max_batch_rows,
        end_lengths: request.end_lengths,
        ..Default::default()
    };
    let total = prompts.len() * request.per_question;
    let span = tracing::info_span!(
        "generate",
        prompts = prompts.len(),
        per_prompt = request.per_question,
        max_new_tokens = request.max_new_tokens
    );
    let out = span
        .in_scope(|| {
            generate_with_progress(&model, &prompts, &params, None, &mut |done| {
                progress.stage_progress("sampling completions", done, total);
                progress.keep_going()
            })
        })
        .map_err(|e| StageError::Interrupted(e.to_string()))?;
    let mut gens = Vec::with_capacity(total);
    for ((persona, question), samples) in keys.into_iter().zip(out) {
        for g in samples {
            gens.push(Generation {
                persona: persona.clone(),
                question: question.clone(),
                completion: tok.decode(&g.tokens, true)?,
                finish: g.finish,
            });
        }
    }
    Ok(gens)
}

/// The first `limit` items (all of them without a limit).
pub fn first<T>(items: &[T], limit: Option<usize>) -> &[T] {
    &items[..limit.map_or(items.len(), |n| n.min(items.len()))]
}

pub fn generate_onpolicy(cx: &mut StageContext<'_>) -> Result<(), ExecError> {
    let (spec, data) = (cx.spec, cx.data);
    let label = cx.label().to_string();
    let checkpoint = cx.checkpoint_of(&label)?;
    let c = &spec.coupling;
    // Seeded from (experiment seed, condition) alone, so the draw cannot move with anything
    // upstream (issue 11 item 2).
    let negatives = draw_negative_personas(
        &data.personas.order,
        &c.source_persona,
        c.negative_personas,
        negative_personas_seed(cx.job.seed, &label),
    );
    let mut who = vec![c.source_persona.clone()];
    who.extend(negatives.iter().cloned());
    let request = SamplingRequest {
        personas: &who,
        questions: first(&data.questions.coupling, c.questions),
        per_question: c.completions_per_question,
        temperature: c.temperature,
        top_p: c.top_p,
        max_new_tokens: c.max_new_tokens,
        seed: cx.task_seed(),
        end_lengths: cx.end_lengths(c.dry_run_lengths),
    };
    let gens = sample_completions(cx.models, &checkpoint, &data.personas, &request, cx.progress)?;
    cx.put_jsonl("generations.jsonl", &gens)?;
    cx.put_json("negative_personas.json", &negatives)
}
