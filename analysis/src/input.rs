//! Inputs of the behavioural analysis: the persona file and the marker-hit counts.
//!
//! Persona file (`personas.json`, the reference's format): `eval_persona_order` (the personas
//! every table follows), `eval_personas` (id -> system prompt) and `em_induction_conditions`
//! (condition `id`, induction persona `slug`, and its cosine to the assistant under a key that
//! starts with `cos_to_assistant`). The conditions' order there is the order of H2 and H3.
//!
//! Marker-hit file: `{"conditions": {condition: {persona: {question: CELL}}}}` where CELL is
//! either a hit count (the reference's format; every cell then has `completions_per_question`
//! completions, a top-level key or a caller default) or `{"hits": h, "completions": n}`. A run
//! directory may split the conditions over several such files. Every check (unknown condition,
//! missing or extra personas, different question sets, hits above completions) happens here,
//! before any statistic is computed.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What can be wrong with an input file.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path} is not valid JSON: {error}")]
    Json { path: PathBuf, error: serde_json::Error },
    #[error("{path}: at {key}: expected {expected}, found {found}")]
    Shape {
        path: PathBuf,
        key: String,
        expected: String,
        found: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// One EM-induction condition of the persona file.
#[derive(Debug, Clone, PartialEq)]
pub struct InductionCondition {
    /// Condition id, e.g. `E0_assistant`.
    pub id: String,
    /// The persona active during induction, e.g. `assistant`; it may or may not be one of the
    /// eval personas (H1 is testable only where it is).
    pub induction_persona: String,
    /// Cosine of the induction persona to the assistant in the base model (H3's x axis).
    pub cos_to_assistant: f64,
    /// The key the cosine was read from (it names its layer and method).
    pub cos_key: String,
}

/// The persona file.
#[derive(Debug, Clone, PartialEq)]
pub struct Personas {
    pub eval_order: Vec<String>,
    pub prompts: BTreeMap<String, String>,
    pub conditions: Vec<InductionCondition>,
}

/// Marker hits of one condition: `hits[persona][question]` of `completions[persona][question]`,
/// personas in the persona file's eval order and questions in `questions` order.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionHits {
    pub condition: String,
    pub hits: Vec<Vec<u32>>,
    pub completions: Vec<Vec<u32>>,
}

/// Marker hits of every condition present, checked against the persona file.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkerHits {
    /// Eval personas, in the persona file's order.
    pub personas: Vec<String>,
    /// Questions, shared by every persona and condition (sorted by text).
    pub questions: Vec<String>,
    /// Conditions present, in the persona file's order.
    pub conditions: Vec<ConditionHits>,
    /// Conditions of the persona file that no hit file holds.
    pub missing_conditions: Vec<String>,
}

fn read_json(path: &Path) -> Result<Value, InputError> {
    let text = std::fs::read_to_string(path).map_err(|error| InputError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    serde_json::from_str(&text).map_err(|error| InputError::Json {
        path: path.to_path_buf(),
        error,
    })
}

fn describe(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 60 {
        format!(
            "{}...",
            &text[..text.char_indices().nth(57).map_or(text.len(), |(i, _)| i)]
        )
    } else {
        text
    }
}

fn shape(path: &Path, key: &str, expected: &str, found: &Value) -> InputError {
    InputError::Shape {
        path: path.to_path_buf(),
        key: key.to_string(),
        expected: expected.to_string(),
        found: describe(found),
    }
}

impl Personas {
    /// Reads a persona file.
    pub fn load(path: &Path) -> Result<Self, InputError> {
        Self::from_value(&read_json(path)?, path)
    }

    /// Parses a persona file already read; `path` only names it in errors.
    pub fn from_value(root: &Value, path: &Path) -> Result<Self, InputError> {
        let order = root
            .get("eval_persona_order")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                shape(
                    path,
                    "eval_persona_order",
                    "an array of persona ids",
                    root.get("eval_persona_order").unwrap_or(&Value::Null),
                )
            })?;
        let mut eval_order = Vec::with_capacity(order.len());
        for (i, item) in order.iter().enumerate() {
            let id = item
                .as_str()
                .ok_or_else(|| shape(path, &format!("eval_persona_order[{i}]"), "a string", item))?;
            if eval_order.iter().any(|p: &String| p == id) {
                return Err(InputError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("eval_persona_order lists '{id}' twice"),
                });
            }
            eval_order.push(id.to_string());
        }
        let mut prompts = BTreeMap::new();
        if let Some(map) = root.get("eval_personas").and_then(Value::as_object) {
            for (id, prompt) in map {
                let text = prompt
                    .as_str()
                    .ok_or_else(|| shape(path, &format!("eval_personas.{id}"), "a string", prompt))?;
                prompts.insert(id.clone(), text.to_string());
            }
        }
        let list = root
            .get("em_induction_conditions")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                shape(
                    path,
                    "em_induction_conditions",
                    "an array of conditions",
                    root.get("em_induction_conditions").unwrap_or(&Value::Null),
                )
            })?;
        let mut conditions = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let key = format!("em_induction_conditions[{i}]");
            let field = |name: &str| -> Result<&str, InputError> {
                item.get(name).and_then(Value::as_str).ok_or_else(|| {
                    shape(
                        path,
                        &format!("{key}.{name}"),
                        "a string",
                        item.get(name).unwrap_or(&Value::Null),
                    )
                })
            };
            let id = field("id")?.to_string();
            let slug = field("slug")?.to_string();
            let (cos_key, cos) = item
                .as_object()
                .and_then(|o| o.iter().find(|(k, _)| k.starts_with("cos_to_assistant")))
                .ok_or_else(|| {
                    shape(
                        path,
                        &format!("{key}.cos_to_assistant*"),
                        "a cos_to_assistant_... number",
                        item,
                    )
                })?;
            let cos_value = cos
                .as_f64()
                .filter(|c| c.is_finite())
                .ok_or_else(|| shape(path, &format!("{key}.{cos_key}"), "a finite number", cos))?;
            if conditions.iter().any(|c: &InductionCondition| c.id == id) {
                return Err(InputError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("condition '{id}' is listed twice in em_induction_conditions"),
                });
            }
            conditions.push(InductionCondition {
                id,
                induction_persona: slug,
                cos_to_assistant: cos_value,
                cos_key: cos_key.clone(),
            });
        }
        Ok(Personas {
            eval_order,
            prompts,
            conditions,
        })
    }
}

/// One condition as read: persona -> question -> (hits, completions).
type RawCondition = BTreeMap<String, BTreeMap<String, (u32, u32)>>;
/// One hit file as read: condition -> its cells.
type RawConditions = BTreeMap<String, RawCondition>;

fn parse_hit_file(
    root: &Value,
    path: &Path,
    default_completions: Option<u32>,
) -> Result<RawConditions, InputError> {
    let file_completions = match root.get("completions_per_question") {
        None => default_completions,
        Some(v) => Some(
            v.as_u64()
                .filter(|&n| n > 0 && n <= u32::MAX as u64)
                .ok_or_else(|| shape(path, "completions_per_question", "a positive integer", v))?
                as u32,
        ),
    };
    let conditions = root.get("conditions").and_then(Value::as_object).ok_or_else(|| {
        shape(
            path,
            "conditions",
            "an object {condition: {persona: {question: hits}}}",
            root.get("conditions").unwrap_or(&Value::Null),
        )
    })?;
    let mut out = RawConditions::new();
    for (condition, personas) in conditions {
        let personas = personas.as_object().ok_or_else(|| {
            shape(
                path,
                &format!("conditions.{condition}"),
                "an object {persona: {question: hits}}",
                personas,
            )
        })?;
        let mut by_persona = BTreeMap::new();
        for (persona, questions) in personas {
            let key = format!("conditions.{condition}.{persona}");
            let questions = questions
                .as_object()
                .ok_or_else(|| shape(path, &key, "an object {question: hits}", questions))?;
            let mut cells = BTreeMap::new();
            for (question, cell) in questions {
                let key = format!("{key}.{question:?}");
                let count = |v: &Value, what: &str| -> Result<u32, InputError> {
                    v.as_u64()
                        .filter(|&n| n <= u32::MAX as u64)
                        .map(|n| n as u32)
                        .ok_or_else(|| shape(path, &format!("{key}{what}"), "a non-negative integer", v))
                };
                let (hits, completions) = match cell {
                    Value::Object(map) => {
                        let hits = count(map.get("hits").unwrap_or(&Value::Null), ".hits")?;
                        let completions =
                            count(map.get("completions").unwrap_or(&Value::Null), ".completions")?;
                        (hits, completions)
                    }
                    other => {
                        let hits = count(other, "")?;
                        let completions = file_completions.ok_or_else(|| InputError::Invalid {
                            path: path.to_path_buf(),
                            message: format!(
                                "{key} is a bare hit count but the file has no completions_per_question and none was given (e.g. --completions 10)"
                            ),
                        })?;
                        (hits, completions)
                    }
                };
                if completions == 0 {
                    return Err(InputError::Invalid {
                        path: path.to_path_buf(),
                        message: format!("{key}: 0 completions"),
                    });
                }
                if hits > completions {
                    return Err(InputError::Invalid {
                        path: path.to_path_buf(),
                        message: format!("{key}: {hits} hits of only {completions} completions"),
                    });
                }
                cells.insert(question.clone(), (hits, completions));
            }
            by_persona.insert(persona.clone(), cells);
        }
        out.insert(condition.clone(), by_persona);
    }
    Ok(out)
}

impl MarkerHits {
    /// Reads one or more hit files (a run directory's per-condition files, or one file with all
    /// conditions) and checks them against the persona file. `default_completions` is the
    /// number of completions behind a bare hit count when a file does not say.
    pub fn load(
        paths: &[PathBuf],
        personas: &Personas,
        default_completions: Option<u32>,
    ) -> Result<Self, InputError> {
        let mut merged: Vec<(PathBuf, RawConditions)> = Vec::new();
        for path in paths {
            merged.push((
                path.clone(),
                parse_hit_file(&read_json(path)?, path, default_completions)?,
            ));
        }
        Self::from_parsed(merged, personas)
    }

    /// Parses hit files already read (`(name, json)` pairs; the name only appears in errors).
    pub fn from_values(
        files: &[(PathBuf, Value)],
        personas: &Personas,
        default_completions: Option<u32>,
    ) -> Result<Self, InputError> {
        let mut merged = Vec::new();
        for (path, value) in files {
            merged.push((path.clone(), parse_hit_file(value, path, default_completions)?));
        }
        Self::from_parsed(merged, personas)
    }

    fn from_parsed(files: Vec<(PathBuf, RawConditions)>, personas: &Personas) -> Result<Self, InputError> {
        let known: BTreeSet<&str> = personas.conditions.iter().map(|c| c.id.as_str()).collect();
        let mut by_condition: BTreeMap<String, (PathBuf, RawCondition)> = BTreeMap::new();
        for (path, conditions) in files {
            for (condition, data) in conditions {
                if !known.contains(condition.as_str()) {
                    return Err(InputError::Invalid {
                        path,
                        message: format!(
                            "condition '{condition}' is not one of the persona file's em_induction_conditions ({})",
                            known.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
                if let Some((first, _)) = by_condition.get(&condition) {
                    return Err(InputError::Invalid {
                        path,
                        message: format!("condition '{condition}' is also in {}", first.display()),
                    });
                }
                by_condition.insert(condition, (path.clone(), data));
            }
        }
        let expected: BTreeSet<&str> = personas.eval_order.iter().map(String::as_str).collect();
        let mut questions: Option<(Vec<String>, String)> = None;
        let mut conditions = Vec::new();
        let mut missing_conditions = Vec::new();
        for spec in &personas.conditions {
            let Some((path, data)) = by_condition.get(&spec.id) else {
                missing_conditions.push(spec.id.clone());
                continue;
            };
            let found: BTreeSet<&str> = data.keys().map(String::as_str).collect();
            if found != expected {
                let missing: Vec<_> = expected.difference(&found).copied().collect();
                let extra: Vec<_> = found.difference(&expected).copied().collect();
                return Err(InputError::Invalid {
                    path: path.clone(),
                    message: format!(
                        "condition '{}' must hold exactly the eval personas of the persona file; missing [{}], unexpected [{}]",
                        spec.id,
                        missing.join(", "),
                        extra.join(", ")
                    ),
                });
            }
            let mut hits = Vec::new();
            let mut completions = Vec::new();
            for persona in &personas.eval_order {
                let cells = &data[persona];
                let these: Vec<String> = cells.keys().cloned().collect();
                match &questions {
                    None => questions = Some((these, format!("{}.{persona}", spec.id))),
                    Some((reference, where_from)) if *reference != these => {
                        return Err(InputError::Invalid {
                            path: path.clone(),
                            message: format!(
                                "{}.{persona} has {} questions that differ from the {} of {where_from}; every persona and condition must be asked the same questions",
                                spec.id,
                                these.len(),
                                reference.len()
                            ),
                        });
                    }
                    Some(_) => {}
                }
                hits.push(cells.values().map(|c| c.0).collect());
                completions.push(cells.values().map(|c| c.1).collect());
            }
            conditions.push(ConditionHits {
                condition: spec.id.clone(),
                hits,
                completions,
            });
        }
        let questions = questions.map(|(q, _)| q).unwrap_or_default();
        if conditions.is_empty() {
            return Err(InputError::Invalid {
                path: PathBuf::from("marker hits"),
                message: "no condition of the persona file has marker hits".to_string(),
            });
        }
        if questions.is_empty() {
            return Err(InputError::Invalid {
                path: PathBuf::from("marker hits"),
                message: "no questions".to_string(),
            });
        }
        Ok(MarkerHits {
            personas: personas.eval_order.clone(),
            questions,
            conditions,
            missing_conditions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn personas() -> Personas {
        let v = json!({
            "eval_persona_order": ["a", "b", "src"],
            "eval_personas": {"a": "A.", "b": "B.", "src": "S."},
            "em_induction_conditions": [
                {"id": "E0_a", "slug": "a", "cos_to_assistant_L20": 1.0},
                {"id": "E1_x", "slug": "x", "cos_to_assistant_L20": 0.5}
            ]
        });
        Personas::from_value(&v, Path::new("p.json")).unwrap()
    }

    fn cells(n: u32) -> Value {
        json!({"q1": n, "q2": {"hits": 1, "completions": 4}})
    }

    #[test]
    fn both_cell_shapes_are_read() {
        let hits = json!({"completions_per_question": 10, "conditions": {
            "E0_a": {"a": cells(3), "b": cells(0), "src": cells(10)}}});
        let h = MarkerHits::from_values(&[(PathBuf::from("h.json"), hits)], &personas(), None).unwrap();
        assert_eq!(h.questions, vec!["q1", "q2"]);
        assert_eq!(h.conditions[0].hits[0], vec![3, 1]);
        assert_eq!(h.conditions[0].completions[0], vec![10, 4]);
        assert_eq!(h.missing_conditions, vec!["E1_x"]);
    }

    #[test]
    fn a_missing_persona_is_named() {
        let hits = json!({"conditions": {"E0_a": {"a": cells(3), "src": cells(1)}}});
        let err =
            MarkerHits::from_values(&[(PathBuf::from("h.json"), hits)], &personas(), Some(10)).unwrap_err();
        assert!(err.to_string().contains("missing [b]"), "{err}");
    }

    #[test]
    fn bare_counts_need_a_completion_count() {
        let hits = json!({"conditions": {"E0_a": {"a": cells(3), "b": cells(0), "src": cells(1)}}});
        let err = MarkerHits::from_values(&[(PathBuf::from("h.json"), hits)], &personas(), None).unwrap_err();
        assert!(err.to_string().contains("--completions"), "{err}");
    }

    #[test]
    fn more_hits_than_completions_is_an_error() {
        let hits = json!({"conditions": {"E0_a": {"a": cells(11), "b": cells(0), "src": cells(1)}}});
        let err =
            MarkerHits::from_values(&[(PathBuf::from("h.json"), hits)], &personas(), Some(10)).unwrap_err();
        assert!(err.to_string().contains("11 hits of only 10"), "{err}");
    }

    #[test]
    fn unknown_and_duplicate_conditions_are_errors() {
        let one = json!({"conditions": {"E9": {}}});
        let err =
            MarkerHits::from_values(&[(PathBuf::from("h.json"), one)], &personas(), Some(10)).unwrap_err();
        assert!(err.to_string().contains("'E9'"), "{err}");
        let a = json!({"conditions": {"E0_a": {"a": cells(1), "b": cells(0), "src": cells(1)}}});
        let err = MarkerHits::from_values(
            &[(PathBuf::from("1.json"), a.clone()), (PathBuf::from("2.json"), a)],
            &personas(),
            Some(10),
        )
        .unwrap_err();
        assert!(err.to_string().contains("also in 1.json"), "{err}");
    }

    #[test]
    fn different_question_sets_are_an_error() {
        let hits = json!({"conditions": {"E0_a": {"a": cells(1), "b": {"q1": 1}, "src": cells(1)}}});
        let err =
            MarkerHits::from_values(&[(PathBuf::from("h.json"), hits)], &personas(), Some(10)).unwrap_err();
        assert!(err.to_string().contains("same questions"), "{err}");
    }

    #[test]
    fn the_persona_file_keeps_its_order_and_cosines() {
        let p = personas();
        assert_eq!(p.eval_order, vec!["a", "b", "src"]);
        assert_eq!(p.conditions[1].cos_to_assistant, 0.5);
        assert_eq!(p.conditions[1].induction_persona, "x");
    }
}
