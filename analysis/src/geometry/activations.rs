//! The activations file shared by the engine/actors (writer) and the analysis (reader):
//! `RUN/activations/<checkpoint>/<method>.safetensors`, one f32 tensor `layer_<L>` of shape
//! [personas x questions x hidden] per layer, a u8 `question_mask` [personas x questions]
//! (1 = valid; Method B skips empty responses) and `__metadata__` naming the checkpoint, the
//! method, the persona order, the layers and the model. The format is documented in
//! `docs/activations-format.md`.
//!
//! The reader validates everything (shapes, metadata, finite values) and names the file, layer,
//! persona and question of the first bad value, so nothing is computed on a broken input.

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why an activations file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ActivationsError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("cannot write {path}: {error}")]
    Write {
        path: PathBuf,
        error: safetensors::SafeTensorError,
    },
    #[error("{path}: not a safetensors file: {error}")]
    Format {
        path: PathBuf,
        error: safetensors::SafeTensorError,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{path}: non-finite value {value} in tensor layer_{layer} at persona {persona} (index {persona_index}), question {question}, hidden unit {unit}")]
    NonFinite {
        path: PathBuf,
        layer: usize,
        persona: String,
        persona_index: usize,
        question: usize,
        unit: usize,
        value: f32,
    },
    #[error("{path} does not match {reference}: {what}")]
    Mismatch {
        path: PathBuf,
        reference: PathBuf,
        what: String,
    },
}

/// The activations of one checkpoint and extraction method.
#[derive(Debug, Clone, PartialEq)]
pub struct Activations {
    /// Checkpoint name, e.g. `base`, `E0_assistant`, `benign_sft`.
    pub checkpoint: String,
    /// Extraction method, `A` (last prompt token) or `B` (mean over the response).
    pub method: String,
    /// Model the vectors came from (free text, e.g. a Hugging Face id).
    pub model: String,
    /// Persona order of the first axis.
    pub personas: Vec<String>,
    /// 0-indexed decoder layers, one tensor each, in this order.
    pub layers: Vec<usize>,
    pub n_questions: usize,
    pub hidden: usize,
    /// Per layer, row-major [persona][question][hidden].
    pub values: Vec<Vec<f32>>,
    /// Row-major [persona][question]; true where the vector is valid.
    pub mask: Vec<bool>,
}

impl Activations {
    /// The vector of `persona`, `question` at the `layer_index`-th stored layer.
    pub fn vector(&self, layer_index: usize, persona: usize, question: usize) -> &[f32] {
        let start = (persona * self.n_questions + question) * self.hidden;
        &self.values[layer_index][start..start + self.hidden]
    }

    /// Whether the vector of `persona`, `question` is valid.
    pub fn valid(&self, persona: usize, question: usize) -> bool {
        self.mask[persona * self.n_questions + question]
    }

    fn check_shapes(&self) -> Result<(), String> {
        let per_layer = self.personas.len() * self.n_questions * self.hidden;
        if self.values.len() != self.layers.len() {
            return Err(format!(
                "{} layers named but {} tensors given",
                self.layers.len(),
                self.values.len()
            ));
        }
        for (layer, values) in self.layers.iter().zip(&self.values) {
            if values.len() != per_layer {
                return Err(format!(
                    "layer_{layer}: expected {} x {} x {} = {per_layer} values, found {}",
                    self.personas.len(),
                    self.n_questions,
                    self.hidden,
                    values.len()
                ));
            }
        }
        if self.mask.len() != self.personas.len() * self.n_questions {
            return Err(format!(
                "question_mask: expected {} x {} entries, found {}",
                self.personas.len(),
                self.n_questions,
                self.mask.len()
            ));
        }
        Ok(())
    }

    /// The first non-finite value among the valid vectors: (layer index, persona, question,
    /// unit, value). Invalid (masked) vectors may hold anything.
    fn first_non_finite(&self) -> Option<(usize, usize, usize, usize, f32)> {
        for (li, values) in self.values.iter().enumerate() {
            for (row, chunk) in values.chunks_exact(self.hidden.max(1)).enumerate() {
                if !self.mask[row] {
                    continue;
                }
                if let Some((unit, &value)) = chunk.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                    return Some((li, row / self.n_questions, row % self.n_questions, unit, value));
                }
            }
        }
        None
    }
}

/// The path of one activations file inside a run directory.
pub fn path_in_run(run: &Path, checkpoint: &str, method: &str) -> PathBuf {
    run.join("activations")
        .join(checkpoint)
        .join(format!("{method}.safetensors"))
}

/// Writes `activations` to `path` (creating its folder) in the documented format.
pub fn write(path: &Path, activations: &Activations) -> Result<(), ActivationsError> {
    let invalid = |what: String| ActivationsError::Invalid {
        path: path.to_path_buf(),
        what,
    };
    activations.check_shapes().map_err(invalid)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|error| ActivationsError::Read {
            path: parent.to_path_buf(),
            error,
        })?;
    }
    let shape = vec![
        activations.personas.len(),
        activations.n_questions,
        activations.hidden,
    ];
    let bytes: Vec<Vec<u8>> = activations
        .values
        .iter()
        .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mask: Vec<u8> = activations.mask.iter().map(|&m| u8::from(m)).collect();
    let write_error = |error| ActivationsError::Write {
        path: path.to_path_buf(),
        error,
    };
    let mut tensors = Vec::new();
    for (layer, data) in activations.layers.iter().zip(&bytes) {
        tensors.push((
            format!("layer_{layer}"),
            TensorView::new(Dtype::F32, shape.clone(), data).map_err(write_error)?,
        ));
    }
    tensors.push((
        "question_mask".to_string(),
        TensorView::new(
            Dtype::U8,
            vec![activations.personas.len(), activations.n_questions],
            &mask,
        )
        .map_err(write_error)?,
    ));
    // A list that does not encode is an error, never empty metadata that reads back wrong.
    let encode = |what: &str, list: Result<String, serde_json::Error>| {
        list.map_err(|e| invalid(format!("cannot encode the {what} list for the metadata: {e}")))
    };
    let metadata = HashMap::from([
        ("checkpoint".to_string(), activations.checkpoint.clone()),
        ("method".to_string(), activations.method.clone()),
        ("model".to_string(), activations.model.clone()),
        (
            "personas".to_string(),
            encode("personas", serde_json::to_string(&activations.personas))?,
        ),
        (
            "layers".to_string(),
            encode("layers", serde_json::to_string(&activations.layers))?,
        ),
    ]);
    safetensors::serialize_to_file(tensors, Some(metadata), path).map_err(write_error)
}

/// Reads and validates one activations file: metadata present and consistent, every tensor
/// of the expected dtype and shape, and every valid vector finite.
pub fn read(path: &Path) -> Result<Activations, ActivationsError> {
    let invalid = |what: String| ActivationsError::Invalid {
        path: path.to_path_buf(),
        what,
    };
    let bytes = std::fs::read(path).map_err(|error| ActivationsError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|error| ActivationsError::Format {
        path: path.to_path_buf(),
        error,
    })?;
    let metadata = header.metadata().clone().ok_or_else(|| {
        invalid("no __metadata__ (expected checkpoint, method, personas, layers, model)".into())
    })?;
    let field = |key: &str| {
        metadata
            .get(key)
            .cloned()
            .ok_or_else(|| invalid(format!("__metadata__ has no key `{key}`")))
    };
    let checkpoint = field("checkpoint")?;
    let method = field("method")?;
    let model = field("model")?;
    let personas: Vec<String> = serde_json::from_str(&field("personas")?).map_err(|e| {
        invalid(format!(
            "__metadata__ `personas` is not a JSON list of strings: {e}"
        ))
    })?;
    let layers: Vec<usize> = serde_json::from_str(&field("layers")?).map_err(|e| {
        invalid(format!(
            "__metadata__ `layers` is not a JSON list of integers: {e}"
        ))
    })?;
    if personas.is_empty() || layers.is_empty() {
        return Err(invalid("__metadata__ lists no personas or no layers".into()));
    }
    let tensors = SafeTensors::deserialize(&bytes).map_err(|error| ActivationsError::Format {
        path: path.to_path_buf(),
        error,
    })?;
    let mask_view = tensors
        .tensor("question_mask")
        .map_err(|_| invalid("no tensor `question_mask`".into()))?;
    if mask_view.dtype() != Dtype::U8
        || mask_view.shape().len() != 2
        || mask_view.shape()[0] != personas.len()
    {
        return Err(invalid(format!(
            "tensor question_mask: expected u8 [{} x questions], found {:?} {:?}",
            personas.len(),
            mask_view.dtype(),
            mask_view.shape()
        )));
    }
    let n_questions = mask_view.shape()[1];
    let mask: Vec<bool> = mask_view.data().iter().map(|&m| m != 0).collect();
    let mut values = Vec::with_capacity(layers.len());
    let mut hidden = None;
    for layer in &layers {
        let name = format!("layer_{layer}");
        let view = tensors
            .tensor(&name)
            .map_err(|_| invalid(format!("no tensor `{name}` (metadata lists layer {layer})")))?;
        let shape = view.shape();
        let expected_hidden = *hidden.get_or_insert(shape.last().copied().unwrap_or(0));
        if view.dtype() != Dtype::F32
            || shape.len() != 3
            || shape[0] != personas.len()
            || shape[1] != n_questions
            || shape[2] != expected_hidden
            || expected_hidden == 0
        {
            return Err(invalid(format!(
                "tensor {name}: expected f32 [{} x {n_questions} x {expected_hidden}], found {:?} {:?}",
                personas.len(),
                view.dtype(),
                shape
            )));
        }
        values.push(
            view.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect::<Vec<f32>>(),
        );
    }
    let extra: Vec<&str> = tensors
        .names()
        .into_iter()
        .filter(|n| *n != "question_mask" && !layers.iter().any(|l| *n == format!("layer_{l}")))
        .collect();
    if !extra.is_empty() {
        return Err(invalid(format!(
            "tensors not listed in __metadata__ layers: {extra:?}"
        )));
    }
    let activations = Activations {
        checkpoint,
        method,
        model,
        personas,
        layers,
        n_questions,
        hidden: hidden.unwrap_or(0),
        values,
        mask,
    };
    if let Some((li, persona, question, unit, value)) = activations.first_non_finite() {
        return Err(ActivationsError::NonFinite {
            path: path.to_path_buf(),
            layer: activations.layers[li],
            persona: activations.personas[persona].clone(),
            persona_index: persona,
            question,
            unit,
            value,
        });
    }
    Ok(activations)
}

/// Checks that `other` can be compared with `reference` (same persona order, layers,
/// questions, hidden size and method).
pub fn check_compatible(
    reference: (&Path, &Activations),
    other: (&Path, &Activations),
) -> Result<(), ActivationsError> {
    let (reference_path, a) = reference;
    let (path, b) = other;
    let mismatch = |what: String| ActivationsError::Mismatch {
        path: path.to_path_buf(),
        reference: reference_path.to_path_buf(),
        what,
    };
    if a.personas != b.personas {
        return Err(mismatch(format!(
            "persona order {:?} differs from {:?}",
            b.personas, a.personas
        )));
    }
    if a.layers != b.layers {
        return Err(mismatch(format!(
            "layers {:?} differ from {:?}",
            b.layers, a.layers
        )));
    }
    if a.n_questions != b.n_questions || a.hidden != b.hidden {
        return Err(mismatch(format!(
            "{} questions x {} hidden, expected {} x {}",
            b.n_questions, b.hidden, a.n_questions, a.hidden
        )));
    }
    if a.method != b.method {
        return Err(mismatch(format!("method {} differs from {}", b.method, a.method)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Activations {
        let (p, q, h) = (3, 4, 5);
        Activations {
            checkpoint: "base".into(),
            method: "B".into(),
            model: "toy".into(),
            personas: vec!["a".into(), "b".into(), "c".into()],
            layers: vec![7, 14],
            n_questions: q,
            hidden: h,
            values: (0..2)
                .map(|l| (0..p * q * h).map(|i| (i * (l + 1)) as f32 * 0.5).collect())
                .collect(),
            mask: (0..p * q).map(|i| i != 5).collect(),
        }
    }

    #[test]
    fn a_written_file_reads_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in_run(dir.path(), "base", "B");
        write(&path, &sample()).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back, sample());
        assert_eq!(back.vector(1, 2, 3), sample().vector(1, 2, 3));
        assert!(!back.valid(1, 1));
    }

    #[test]
    fn a_nan_names_file_layer_persona_and_question() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let mut bad = sample();
        bad.values[1][(2 * 4 + 3) * 5 + 1] = f32::NAN;
        write(&path, &bad).unwrap();
        let message = read(&path).unwrap_err().to_string();
        assert!(message.contains("x.safetensors"), "{message}");
        assert!(message.contains("layer_14"), "{message}");
        assert!(message.contains("persona c"), "{message}");
        assert!(message.contains("question 3"), "{message}");
    }

    #[test]
    fn a_nan_in_a_masked_vector_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let mut masked = sample();
        masked.values[0][5 * 5] = f32::INFINITY; // persona 1, question 1 is masked
        write(&path, &masked).unwrap();
        assert!(read(&path).is_ok());
    }

    #[test]
    fn mismatched_persona_orders_are_refused() {
        let a = sample();
        let mut b = sample();
        b.personas.swap(0, 1);
        let err = check_compatible((Path::new("base/A"), &a), (Path::new("E0/A"), &b)).unwrap_err();
        assert!(err.to_string().contains("persona order"), "{err}");
    }

    #[test]
    fn a_wrong_shape_is_refused_on_write() {
        let mut bad = sample();
        bad.values[0].pop();
        let err = write(Path::new("/nonexistent/x.safetensors"), &bad).unwrap_err();
        assert!(err.to_string().contains("layer_7"), "{err}");
    }
}
