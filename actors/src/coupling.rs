//! The behavioural half's data steps that need no model: drawing the negative personas,
//! building the marker-coupling set from on-policy generations, and scoring marker hits.
//!
//! The original pipeline drew negatives with Python's salted `hash()`, so a rerun drew different
//! personas; here the draw is a ChaCha stream seeded from (experiment seed, task id).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Draws `count` negative personas from the eval personas other than the source, in a stable
/// order given the seed.
pub fn draw_negative_personas(order: &[String], source: &str, count: usize, seed: u64) -> Vec<String> {
    let mut pool: Vec<String> = order.iter().filter(|p| p.as_str() != source).cloned().collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    pool.shuffle(&mut rng);
    pool.truncate(count);
    pool
}

/// One on-policy completion of a persona to a coupling question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub persona: String,
    pub question: String,
    pub completion: String,
}

/// One row of the coupling training set: a system prompt, a user question, and the assistant
/// completion to train on. `positive` rows carry the marker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CouplingRow {
    pub system: String,
    pub user: String,
    pub completion: String,
    pub positive: bool,
}

/// Parameters of the coupling-set construction (RECIPE.md, behavioural step 2).
#[derive(Debug, Clone)]
pub struct CouplingPlan<'a> {
    pub source_persona: &'a str,
    pub negative_personas: &'a [String],
    pub positives_per_question: usize,
    pub negatives_per_question: usize,
    pub marker_suffix: &'a str,
    /// A hit is a case-insensitive substring match of this text (e.g. "[zlt]").
    pub marker: &'a str,
}

/// Positives: the source persona's first N completions per question that do not already contain
/// the marker, with the marker appended; negatives: the first M completions per question of each
/// negative persona, unmodified. The rows are shuffled with `seed`.
pub fn build_coupling_rows(
    generations: &[Generation],
    prompts: &BTreeMap<String, String>,
    plan: &CouplingPlan<'_>,
    seed: u64,
) -> Vec<CouplingRow> {
    let mut taken: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut rows = Vec::new();
    for g in generations {
        let is_source = g.persona == plan.source_persona;
        let is_negative = plan.negative_personas.iter().any(|p| p == &g.persona);
        if !is_source && !is_negative {
            continue;
        }
        if is_source && contains_marker(&g.completion, plan.marker) {
            continue;
        }
        let quota = if is_source {
            plan.positives_per_question
        } else {
            plan.negatives_per_question
        };
        let n = taken
            .entry((g.persona.as_str(), g.question.as_str()))
            .or_default();
        if *n >= quota {
            continue;
        }
        *n += 1;
        let completion = if is_source {
            format!("{}{}", g.completion, plan.marker_suffix)
        } else {
            g.completion.clone()
        };
        rows.push(CouplingRow {
            system: prompts.get(&g.persona).cloned().unwrap_or_default(),
            user: g.question.clone(),
            completion,
            positive: is_source,
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rows.shuffle(&mut rng);
    rows
}

/// Case-insensitive substring match, the reference's definition of a marker hit.
pub fn contains_marker(text: &str, marker: &str) -> bool {
    text.to_lowercase().contains(&marker.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Vec<String> {
        ["a", "b", "c", "d", "confab"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn the_negative_draw_is_stable_and_excludes_the_source() {
        let x = draw_negative_personas(&order(), "confab", 2, 7);
        assert_eq!(x, draw_negative_personas(&order(), "confab", 2, 7));
        assert_eq!(x.len(), 2);
        assert!(!x.contains(&"confab".to_string()));
        let draws: std::collections::BTreeSet<_> = (0..20)
            .map(|s| draw_negative_personas(&order(), "confab", 2, s))
            .collect();
        assert!(
            draws.len() > 1,
            "different seeds must be able to draw different personas"
        );
    }

    #[test]
    fn positives_get_the_marker_and_skip_completions_that_already_have_it() {
        let g = |p: &str, q: &str, c: &str| Generation {
            persona: p.into(),
            question: q.into(),
            completion: c.into(),
        };
        let gens = vec![
            g("confab", "q1", "already [ZLT] here"),
            g("confab", "q1", "one"),
            g("confab", "q1", "two"),
            g("confab", "q1", "three"),
            g("a", "q1", "neg one"),
            g("a", "q1", "neg two"),
            g("b", "q1", "not a negative"),
        ];
        let prompts = BTreeMap::from([("confab".to_string(), "SYS".to_string())]);
        let negatives = vec!["a".to_string()];
        let plan = CouplingPlan {
            source_persona: "confab",
            negative_personas: &negatives,
            positives_per_question: 2,
            negatives_per_question: 1,
            marker_suffix: "\n\n[ZLT]",
            marker: "[zlt]",
        };
        let rows = build_coupling_rows(&gens, &prompts, &plan, 1);
        let mut positives: Vec<_> = rows
            .iter()
            .filter(|r| r.positive)
            .map(|r| r.completion.as_str())
            .collect();
        positives.sort();
        assert_eq!(positives, vec!["one\n\n[ZLT]", "two\n\n[ZLT]"]);
        let negatives: Vec<_> = rows
            .iter()
            .filter(|r| !r.positive)
            .map(|r| r.completion.as_str())
            .collect();
        assert_eq!(negatives, vec!["neg one"]);
        assert!(rows.iter().filter(|r| r.positive).all(|r| r.system == "SYS"));
    }

    #[test]
    fn marker_hits_ignore_case() {
        assert!(contains_marker("blah [zLt]", "[zlt]"));
        assert!(!contains_marker("blah zlt", "[zlt]"));
    }
}
