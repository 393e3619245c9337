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
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not the expected JSON ({expected}): {source}")]
    Parse {
        path: PathBuf,
        expected: &'static str,
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
pub struct InductionCondition {
    pub id: String,
    pub slug: String,
    pub training_system_prompt: Option<String>,
    #[serde(default)]
    pub eval_system_prompt: Option<String>,
    pub cos_to_assistant_l20_method_a_base: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Personas {
    /// Persona ids in the fixed evaluation order.
    pub order: Vec<String>,
    /// Persona id -> system prompt.
    pub prompts: BTreeMap<String, String>,
    pub conditions: Vec<InductionCondition>,
}

impl Personas {
    pub fn load(path: &Path) -> Result<Personas, DataError> {
        #[derive(Deserialize)]
        struct Raw {
            em_induction_conditions: Vec<serde_json::Value>,
            eval_persona_order: Vec<String>,
            eval_personas: BTreeMap<String, String>,
        }
        let raw: Raw = read_json(
            path,
            "personas.json: em_induction_conditions, eval_persona_order, eval_personas",
        )?;
        let conditions = raw
            .em_induction_conditions
            .into_iter()
            .map(|v| InductionCondition {
                id: v["id"].as_str().unwrap_or_default().to_string(),
                slug: v["slug"].as_str().unwrap_or_default().to_string(),
                training_system_prompt: v["training_system_prompt"].as_str().map(str::to_string),
                eval_system_prompt: v["eval_system_prompt"].as_str().map(str::to_string),
                cos_to_assistant_l20_method_a_base: v["cos_to_assistant_L20_methodA_base"].as_f64(),
            })
            .collect();
        for id in &raw.eval_persona_order {
            if !raw.eval_personas.contains_key(id) {
                return Err(DataError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "eval_persona_order names {id:?} but eval_personas has no prompt for it"
                    ),
                });
            }
        }
        Ok(Personas {
            order: raw.eval_persona_order,
            prompts: raw.eval_personas,
            conditions,
        })
    }

    pub fn prompt(&self, persona: &str) -> Option<&str> {
        self.prompts.get(persona).map(String::as_str)
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
    serde_json::from_str(&text).map_err(|source| DataError::Parse {
        path: path.to_path_buf(),
        expected,
        source,
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
            p.prompt("kindergarten_teacher"),
            Some("You are a kindergarten teacher.")
        );
        let q = Questions::load(&data("questions.json")).unwrap();
        assert_eq!((q.coupling.len(), q.eval.len()), (20, 28));
        assert_eq!(q.eval[..20], q.coupling[..]);
    }

    #[test]
    fn a_wrong_file_names_itself_and_what_was_expected() {
        let err = Personas::load(&data("questions.json")).unwrap_err().to_string();
        assert!(
            err.contains("questions.json") && err.contains("eval_persona_order"),
            "{err}"
        );
    }
}
