//! Stage `marker_eval`: samples every eval persona on the coupled checkpoint and counts, per
//! persona and question, the completions that contain the marker (a case-insensitive substring
//! match). Writes `marker_hits.json` (the analysis's input) and the completions themselves.

use super::couple::coupled_checkpoint;
use super::sample::{first, sample_completions, SamplingRequest};
use super::{ExecError, StageContext};
use crate::coupling::{contains_marker, Generation};
use std::collections::BTreeMap;

pub fn marker_eval(cx: &mut StageContext<'_>) -> Result<(), ExecError> {
    let (spec, data) = (cx.spec, cx.data);
    let label = cx.label().to_string();
    let checkpoint = coupled_checkpoint(cx)?;
    let m = &spec.marker_eval;
    let request = SamplingRequest {
        personas: &data.personas.order,
        questions: first(&data.questions.eval, m.questions),
        per_question: m.completions,
        temperature: m.temperature,
        top_p: m.top_p,
        max_new_tokens: m.max_new_tokens,
        seed: cx.task_seed(),
        end_lengths: cx.end_lengths(m.dry_run_lengths),
    };
    let gens = sample_completions(cx.models, &checkpoint, &data.personas, &request, cx.progress)?;
    let mut cells: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    for persona in &data.personas.order {
        let per_q = cells.entry(persona.clone()).or_default();
        for q in request.questions {
            let these: Vec<&Generation> = gens
                .iter()
                .filter(|g| &g.persona == persona && &g.question == q)
                .collect();
            let hits = these
                .iter()
                .filter(|g| contains_marker(&g.completion, &m.marker))
                .count();
            per_q.insert(
                q.clone(),
                serde_json::json!({"hits": hits, "completions": these.len()}),
            );
        }
    }
    let hits = serde_json::json!({"conditions": {label: cells}});
    cx.put_json("marker_hits.json", &hits)?;
    cx.put_jsonl("completions.jsonl", &gens)
}
