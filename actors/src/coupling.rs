//! The behavioural half's data steps that need no model: drawing the negative personas,
//! building the marker-coupling set from on-policy generations (and counting it against the
//! plan), and scoring marker hits.
//!
//! The original pipeline drew negatives with Python's salted `hash()`, so a rerun drew different
//! personas. Here the draw is a ChaCha stream seeded from (experiment seed, condition) alone
//! ([`negative_personas_seed`]): not from a task id, which hashes the EM adapter's bytes, which a
//! GPU rerun does not reproduce bit for bit.

pub use pspace_engine::generate::FinishReason;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The seed of a condition's negative-persona draw: the experiment seed and the condition.
pub fn negative_personas_seed(experiment_seed: u64, condition: &str) -> u64 {
    crate::task::stable_seed(experiment_seed, &format!("negative_personas/{condition}"))
}

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
    /// `stop`: the model ended its turn; `length`: the token budget cut it.
    pub finish: FinishReason,
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
    /// Skip completions the token budget cut (`[coupling] skip_cut_completions`).
    pub skip_cut: bool,
}

/// One (persona, question) cell of the coupling set with fewer rows than planned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShortCell {
    pub persona: String,
    pub question: String,
    pub planned: usize,
    pub found: usize,
}

/// What a coupling set holds against its plan (`coupling_counts.json` of `build_coupling`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CouplingCounts {
    pub questions: usize,
    pub planned_positives: usize,
    pub positives: usize,
    pub planned_negatives: usize,
    pub negatives: usize,
    /// Source completions left out because they already carried the marker.
    pub skipped_with_marker: usize,
    /// Completions left out because the token budget cut them (`skip_cut_completions`).
    #[serde(default)]
    pub skipped_cut: usize,
    /// Completions left out because they are empty (the model ended its turn at once): an
    /// empty assistant turn teaches nothing and the trainer refuses it; the cell's next
    /// completion takes its place.
    #[serde(default)]
    pub skipped_empty: usize,
    /// Every cell short of its quota.
    pub short: Vec<ShortCell>,
}

impl CouplingCounts {
    /// Whether every cell got its planned rows.
    pub fn complete(&self) -> bool {
        self.short.is_empty()
    }

    /// One line: the counts and the first short cells.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} of {} planned positives and {} of {} planned negatives over {} questions",
            self.positives, self.planned_positives, self.negatives, self.planned_negatives, self.questions
        );
        if self.skipped_cut > 0 {
            text.push_str(&format!(
                " ({} completions cut by the token budget left out)",
                self.skipped_cut
            ));
        }
        if self.skipped_empty > 0 {
            text.push_str(&format!(" ({} empty completions left out)", self.skipped_empty));
        }
        if self.skipped_with_marker > 0 {
            text.push_str(&format!(
                " ({} source completions already carried the marker)",
                self.skipped_with_marker
            ));
        }
        if !self.short.is_empty() {
            const SHOWN: usize = 3;
            let cells: Vec<String> = self
                .short
                .iter()
                .take(SHOWN)
                .map(|c| format!("{} on {:?}: {} of {}", c.persona, c.question, c.found, c.planned))
                .collect();
            text.push_str(&format!("; short: {}", cells.join(", ")));
            if self.short.len() > SHOWN {
                text.push_str(&format!(" and {} more cells", self.short.len() - SHOWN));
            }
        }
        text
    }
}

/// Positives: the source persona's first N completions per question that do not already contain
/// the marker, with the marker appended; negatives: the first M completions per question of each
/// negative persona, unmodified; empty completions do not count, nor, with `skip_cut`, those the
/// token budget cut.
/// Every row carries its persona's system prompt from `prompts` (a persona without one is an
/// error naming it, never an empty prompt). The rows are shuffled
/// with `seed`; the counts compare them with the plan over `questions` (the coupling questions
/// the generations answer).
pub fn build_coupling_rows(
    generations: &[Generation],
    prompts: &BTreeMap<String, String>,
    plan: &CouplingPlan<'_>,
    questions: &[String],
    seed: u64,
) -> Result<(Vec<CouplingRow>, CouplingCounts), String> {
    let prompt = |persona: &str| -> Result<String, String> {
        match prompts.get(persona) {
            Some(p) if !p.trim().is_empty() => Ok(p.clone()),
            _ => Err(format!(
                "persona {persona:?} has no system prompt in the personas file: a coupling row needs one"
            )),
        }
    };
    let mut taken: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut rows = Vec::new();
    let mut skipped_with_marker = 0;
    let mut skipped_cut = 0;
    let mut skipped_empty = 0;
    for g in generations {
        let is_source = g.persona == plan.source_persona;
        let is_negative = plan.negative_personas.iter().any(|p| p == &g.persona);
        if !is_source && !is_negative {
            continue;
        }
        if g.completion.trim().is_empty() {
            skipped_empty += 1;
            continue;
        }
        if plan.skip_cut && g.finish == FinishReason::Length {
            skipped_cut += 1;
            continue;
        }
        if is_source && contains_marker(&g.completion, plan.marker) {
            skipped_with_marker += 1;
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
            system: prompt(&g.persona)?,
            user: g.question.clone(),
            completion,
            positive: is_source,
        });
    }
    let mut short = Vec::new();
    let cells = std::iter::once((plan.source_persona, plan.positives_per_question)).chain(
        plan.negative_personas
            .iter()
            .map(|p| (p.as_str(), plan.negatives_per_question)),
    );
    for (persona, planned) in cells {
        for q in questions {
            let found = taken.get(&(persona, q.as_str())).copied().unwrap_or(0);
            if found < planned {
                short.push(ShortCell {
                    persona: persona.to_string(),
                    question: q.clone(),
                    planned,
                    found,
                });
            }
        }
    }
    let positives = rows.iter().filter(|r| r.positive).count();
    let counts = CouplingCounts {
        questions: questions.len(),
        planned_positives: questions.len() * plan.positives_per_question,
        positives,
        planned_negatives: questions.len() * plan.negative_personas.len() * plan.negatives_per_question,
        negatives: rows.len() - positives,
        skipped_with_marker,
        skipped_cut,
        skipped_empty,
        short,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rows.shuffle(&mut rng);
    Ok((rows, counts))
}

/// Case-insensitive substring match, the reference's definition of a marker hit.
pub fn contains_marker(text: &str, marker: &str) -> bool {
    text.to_lowercase().contains(&marker.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A completion the model ended itself.
    fn g(persona: &str, question: &str, completion: &str) -> Generation {
        Generation {
            persona: persona.into(),
            question: question.into(),
            completion: completion.into(),
            finish: FinishReason::Stop,
        }
    }

    /// The plan every test builds from: source "confab", negative persona "a", the reference's
    /// marker; `positives` and `negatives` per question.
    fn plan(negatives: &[String], positives: usize, per_question: usize) -> CouplingPlan<'_> {
        CouplingPlan {
            source_persona: "confab",
            negative_personas: negatives,
            positives_per_question: positives,
            negatives_per_question: per_question,
            marker_suffix: "\n\n[ZLT]",
            marker: "[zlt]",
            skip_cut: false,
        }
    }

    /// System prompts of "confab" and "a".
    fn prompts() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("confab".to_string(), "SYS".to_string()),
            ("a".to_string(), "A".to_string()),
        ])
    }

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
        let gens = vec![
            g("confab", "q1", "already [ZLT] here"),
            g("confab", "q1", "one"),
            g("confab", "q1", "two"),
            g("confab", "q1", "three"),
            g("a", "q1", "neg one"),
            g("a", "q1", "neg two"),
            g("b", "q1", "not a negative"),
        ];
        let negatives = vec!["a".to_string()];
        let plan = plan(&negatives, 2, 1);
        let prompts = prompts();
        let questions = vec!["q1".to_string()];
        let (rows, counts) = build_coupling_rows(&gens, &prompts, &plan, &questions, 1).unwrap();
        assert!(counts.complete(), "{}", counts.describe());
        assert_eq!(
            (counts.positives, counts.negatives, counts.skipped_with_marker),
            (2, 1, 1)
        );
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
        assert!(rows.iter().filter(|r| !r.positive).all(|r| r.system == "A"));
    }

    /// Issue 15: with skip_cut, a completion the budget cut is neither a positive nor a
    /// negative (the model never ended it), and the cell takes the next completion instead.
    #[test]
    fn completions_cut_by_the_budget_are_skipped_when_asked() {
        let g = |p: &str, c: &str, finish: FinishReason| Generation {
            persona: p.into(),
            question: "q1".into(),
            completion: c.into(),
            finish,
        };
        let gens = vec![
            g("confab", "cut off mid", FinishReason::Length),
            g("confab", "ended", FinishReason::Stop),
            g("a", "cut too", FinishReason::Length),
            g("a", "neg ended", FinishReason::Stop),
        ];
        let negatives = vec!["a".to_string()];
        let prompts = prompts();
        let questions = vec!["q1".to_string()];
        let mut plan = CouplingPlan {
            skip_cut: true,
            ..plan(&negatives, 1, 1)
        };
        let (rows, counts) = build_coupling_rows(&gens, &prompts, &plan, &questions, 1).unwrap();
        let mut texts: Vec<&str> = rows.iter().map(|r| r.completion.as_str()).collect();
        texts.sort();
        assert_eq!(texts, vec!["ended\n\n[ZLT]", "neg ended"]);
        assert!(counts.complete());
        assert_eq!(counts.skipped_cut, 2);
        assert!(
            counts
                .describe()
                .contains("2 completions cut by the token budget"),
            "{}",
            counts.describe()
        );
        // Off (the reference): the first completions count, cut or not.
        plan.skip_cut = false;
        let (rows, counts) = build_coupling_rows(&gens, &prompts, &plan, &questions, 1).unwrap();
        let mut texts: Vec<&str> = rows.iter().map(|r| r.completion.as_str()).collect();
        texts.sort();
        assert_eq!(texts, vec!["cut off mid\n\n[ZLT]", "cut too"]);
        assert_eq!(counts.skipped_cut, 0);
    }

    /// Issue 10 item 4: a negative persona without a prompt became the empty prompt.
    #[test]
    fn a_persona_without_a_prompt_is_an_error_not_an_empty_prompt() {
        let gens = vec![Generation {
            persona: "a".into(),
            question: "q1".into(),
            completion: "neg".into(),
            finish: FinishReason::Stop,
        }];
        let negatives = vec!["a".to_string()];
        let plan = CouplingPlan {
            source_persona: "confab",
            negative_personas: &negatives,
            positives_per_question: 0,
            negatives_per_question: 1,
            marker_suffix: "[ZLT]",
            marker: "[zlt]",
            skip_cut: false,
        };
        let prompts = BTreeMap::from([("confab".to_string(), "SYS".to_string())]);
        let err = build_coupling_rows(&gens, &prompts, &plan, &["q1".to_string()], 1).unwrap_err();
        assert!(err.contains("persona \"a\" has no system prompt"), "{err}");
    }

    /// Issue 11 item 7: a coupling set short of its plan is counted cell by cell (a source
    /// completion that already carries the marker is not a positive; a question with too few
    /// completions leaves its cell short).
    #[test]
    fn a_short_coupling_set_is_counted_against_the_plan() {
        let gens = vec![
            g("confab", "q1", "one"),
            g("confab", "q1", "has [ZLT] already"),
            g("confab", "q2", "two"),
            g("confab", "q2", "three"),
            g("a", "q1", "neg"),
            g("a", "q2", "neg"),
        ];
        let negatives = vec!["a".to_string()];
        let plan = plan(&negatives, 2, 1);
        let prompts = prompts();
        let questions = vec!["q1".to_string(), "q2".to_string()];
        let (rows, counts) = build_coupling_rows(&gens, &prompts, &plan, &questions, 1).unwrap();
        assert_eq!(rows.len(), 5);
        assert!(!counts.complete());
        assert_eq!(
            counts.short,
            vec![ShortCell {
                persona: "confab".into(),
                question: "q1".into(),
                planned: 2,
                found: 1
            }]
        );
        assert_eq!(
            counts.describe(),
            "3 of 4 planned positives and 2 of 2 planned negatives over 2 questions (1 source \
             completions already carried the marker); short: confab on \"q1\": 1 of 2"
        );
    }

    /// An empty completion (the model ended its turn at once; a dry run's drawn length of 0)
    /// became an empty assistant turn the trainer refuses, failing the 7B dry run's coupling
    /// training; it is left out and the cell's next completion takes its place.
    #[test]
    fn empty_completions_are_left_out_and_replaced() {
        let gens = vec![
            g("confab", "q1", ""),
            g("confab", "q1", "one"),
            g("a", "q1", "  \n"),
            g("a", "q1", "neg"),
        ];
        let negatives = vec!["a".to_string()];
        let plan = plan(&negatives, 1, 1);
        let prompts = prompts();
        let (rows, counts) = build_coupling_rows(&gens, &prompts, &plan, &["q1".to_string()], 1).unwrap();
        assert!(counts.complete(), "{}", counts.describe());
        assert_eq!(counts.skipped_empty, 2);
        let mut completions: Vec<&str> = rows.iter().map(|r| r.completion.as_str()).collect();
        completions.sort();
        assert_eq!(completions, vec!["neg", "one\n\n[ZLT]"]);
        assert!(counts.describe().contains("(2 empty completions left out)"));
    }

    /// Issue 11 item 2: the draw depends on (experiment seed, condition) and nothing else.
    #[test]
    fn the_negative_draw_is_seeded_by_seed_and_condition() {
        assert_eq!(
            negative_personas_seed(42, "E1_paramedic"),
            crate::task::stable_seed(42, "negative_personas/E1_paramedic")
        );
        assert_ne!(
            negative_personas_seed(42, "E1_paramedic"),
            negative_personas_seed(42, "E2_kindergarten_teacher")
        );
        assert_ne!(
            negative_personas_seed(42, "E1_paramedic"),
            negative_personas_seed(43, "E1_paramedic")
        );
    }

    #[test]
    fn marker_hits_ignore_case() {
        assert!(contains_marker("blah [zLt]", "[zlt]"));
        assert!(!contains_marker("blah zlt", "[zlt]"));
    }
}
