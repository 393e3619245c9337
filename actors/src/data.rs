//! The experiment's fixed data: eval personas (their order, system prompts, cos-to-assistant)
//! and the coupling / eval / extraction question lists, read from the files a spec names.
//!
//! The persona and question files are byte-exact copies of the original experiment's; this
//! module only reads them and checks that they hang together.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `line` and `column` are 1-based; `message` is serde_json's, without its position.
    #[error("{path}:{line}:{column}: expected {expected}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        expected: &'static str,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// One entry of personas.json's `em_induction_conditions` (other keys, such as `note`, are
/// documentation and not read).
#[derive(Debug, Clone, Deserialize)]
pub struct InductionCondition {
    pub id: String,
    pub slug: String,
    pub training_system_prompt: Option<String>,
    #[serde(default)]
    pub eval_system_prompt: Option<String>,
    #[serde(rename = "cos_to_assistant_L20_methodA_base")]
    pub cos_to_assistant_l20_method_a_base: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Personas {
    /// The file they were read from (named in errors).
    pub path: PathBuf,
    /// Persona ids in the fixed evaluation order.
    pub order: Vec<String>,
    /// Persona id -> system prompt.
    pub prompts: BTreeMap<String, String>,
    pub conditions: Vec<InductionCondition>,
}

impl Personas {
    /// Reads personas.json; every persona of the order must have a non-empty prompt and appear
    /// once.
    pub fn load(path: &Path) -> Result<Personas, DataError> {
        #[derive(Deserialize)]
        struct Raw {
            em_induction_conditions: Vec<InductionCondition>,
            eval_persona_order: Vec<String>,
            eval_personas: BTreeMap<String, String>,
        }
        let raw: Raw = read_json(
            path,
            "personas.json: em_induction_conditions, eval_persona_order, eval_personas",
        )?;
        let invalid = |message: String| DataError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if raw.eval_persona_order.is_empty() {
            return Err(invalid(
                "eval_persona_order is empty: expected at least one persona".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for id in &raw.eval_persona_order {
            if !seen.insert(id) {
                return Err(invalid(format!("eval_persona_order names {id:?} twice")));
            }
            match raw.eval_personas.get(id) {
                None => {
                    return Err(invalid(format!(
                        "eval_persona_order names {id:?} but eval_personas has no prompt for it"
                    )))
                }
                Some(prompt) if prompt.trim().is_empty() => {
                    return Err(invalid(format!(
                        "eval_personas[{id:?}] is empty: expected the persona's system prompt"
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(Personas {
            path: path.to_path_buf(),
            order: raw.eval_persona_order,
            prompts: raw.eval_personas,
            conditions: raw.em_induction_conditions,
        })
    }

    /// The system prompt of `persona`; an error naming it when the file has none (a persona is
    /// never sampled or trained on without its prompt: no empty prompt, no template default).
    pub fn prompt(&self, persona: &str) -> Result<&str, DataError> {
        match self.prompts.get(persona) {
            Some(p) if !p.trim().is_empty() => Ok(p),
            Some(_) => Err(DataError::Invalid {
                path: self.path.clone(),
                message: format!("eval_personas[{persona:?}] is empty: expected the persona's system prompt"),
            }),
            None => Err(DataError::Invalid {
                path: self.path.clone(),
                message: format!("eval_personas has no prompt for persona {persona:?}"),
            }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Questions {
    pub coupling: Vec<String>,
    pub eval: Vec<String>,
}

impl Questions {
    pub fn load(path: &Path) -> Result<Questions, DataError> {
        #[derive(Deserialize)]
        struct Raw {
            coupling_questions: Vec<String>,
            eval_questions: Vec<String>,
        }
        let raw: Raw = read_json(path, "questions.json: coupling_questions, eval_questions")?;
        Ok(Questions {
            coupling: raw.coupling_questions,
            eval: raw.eval_questions,
        })
    }
}

/// A JSON list of extraction questions.
pub fn load_question_list(path: &Path) -> Result<Vec<String>, DataError> {
    let list: Vec<String> = read_json(path, "a JSON list of question strings")?;
    if list.is_empty() {
        return Err(DataError::Invalid {
            path: path.to_path_buf(),
            message: "the question list is empty: expected at least one question".into(),
        });
    }
    Ok(list)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, expected: &'static str) -> Result<T, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| {
        // serde_json ends its message with " at line L column C": said once, in front.
        let message = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        DataError::Parse {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            expected,
            message: message.strip_suffix(&suffix).unwrap_or(&message).to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../experiments/data")
            .join(name)
    }

    #[test]
    fn the_bundled_personas_and_questions_load() {
        let p = Personas::load(&data("personas.json")).unwrap();
        assert_eq!(p.order.len(), 12);
        assert_eq!(p.order.last().map(String::as_str), Some("confab"));
        assert_eq!(p.conditions.len(), 5);
        assert!(p.conditions[0].training_system_prompt.is_none());
        assert_eq!(p.conditions[4].cos_to_assistant_l20_method_a_base, Some(0.7828));
        assert_eq!(
            p.prompt("kindergarten_teacher").unwrap(),
            "You are a kindergarten teacher."
        );
        let err = p.prompt("pirate").unwrap_err().to_string();
        assert!(
            err.ends_with("personas.json: eval_personas has no prompt for persona \"pirate\""),
            "{err}"
        );
        let q = Questions::load(&data("questions.json")).unwrap();
        assert_eq!((q.coupling.len(), q.eval.len()), (20, 28));
        assert_eq!(q.eval[..20], q.coupling[..]);
    }

    #[test]
    fn a_wrong_file_names_itself_and_what_was_expected() {
        let err = Personas::load(&data("questions.json")).unwrap_err().to_string();
        assert!(
            err.contains("questions.json:") && err.contains("eval_persona_order"),
            "{err}"
        );
        assert!(!err.contains(" at line "), "the position is said once: {err}");
    }

    #[test]
    fn a_persona_without_a_prompt_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(data("personas.json")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["eval_personas"]["confab"] = serde_json::json!("");
        let path = dir.path().join("p.json");
        std::fs::write(&path, v.to_string()).unwrap();
        let err = Personas::load(&path).unwrap_err().to_string();
        assert!(err.contains("eval_personas[\"confab\"] is empty"), "{err}");
        v["em_induction_conditions"][0]
            .as_object_mut()
            .unwrap()
            .remove("slug");
        std::fs::write(&path, v.to_string()).unwrap();
        let err = Personas::load(&path).unwrap_err().to_string();
        assert!(err.contains("missing field `slug`"), "{err}");
    }
}
