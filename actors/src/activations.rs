//! Writing persona-vector activations in the format the analysis reads
//! (`docs/activations-format.md`): one safetensors file per checkpoint and method, a tensor
//! `layer_<L>` of f32 [personas x questions x hidden] per captured layer, a `question_mask` u8
//! [personas x questions] (0 = empty Method B response), and metadata naming the checkpoint,
//! method, persona order, layers and model.

use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum ActivationsError {
    #[error("layer {layer}: expected {expected} values ({personas} personas x {questions} questions x {hidden} dims), found {found}")]
    Size {
        layer: usize,
        personas: usize,
        questions: usize,
        hidden: usize,
        expected: usize,
        found: usize,
    },
    #[error("cannot encode activations: {0}")]
    Encode(String),
}

/// The activations of one checkpoint and method.
pub struct Activations<'a> {
    pub checkpoint: &'a str,
    pub method: &'a str,
    pub model: &'a str,
    pub personas: &'a [String],
    pub questions: usize,
    pub hidden: usize,
    /// (layer, values in [persona][question][dim] order)
    pub layers: Vec<(usize, Vec<f32>)>,
    /// [persona][question], 1 = valid
    pub mask: Vec<u8>,
}

impl Activations<'_> {
    /// The safetensors bytes of this checkpoint/method.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ActivationsError> {
        let p = self.personas.len();
        let expected = p * self.questions * self.hidden;
        let mut raw: Vec<(String, Vec<u8>, Vec<usize>, Dtype)> = Vec::new();
        for (layer, values) in &self.layers {
            if values.len() != expected {
                return Err(ActivationsError::Size {
                    layer: *layer,
                    personas: p,
                    questions: self.questions,
                    hidden: self.hidden,
                    expected,
                    found: values.len(),
                });
            }
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            raw.push((
                format!("layer_{layer}"),
                bytes,
                vec![p, self.questions, self.hidden],
                Dtype::F32,
            ));
        }
        raw.push((
            "question_mask".into(),
            self.mask.clone(),
            vec![p, self.questions],
            Dtype::U8,
        ));
        let views: Vec<(String, TensorView<'_>)> = raw
            .iter()
            .map(|(name, bytes, shape, dtype)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| ActivationsError::Encode(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let layers: Vec<usize> = self.layers.iter().map(|(l, _)| *l).collect();
        let encode =
            |what: &str, e: serde_json::Error| ActivationsError::Encode(format!("the {what} metadata: {e}"));
        let metadata: HashMap<String, String> = HashMap::from([
            ("checkpoint".to_string(), self.checkpoint.to_string()),
            ("method".to_string(), self.method.to_string()),
            ("model".to_string(), self.model.to_string()),
            (
                "personas".to_string(),
                serde_json::to_string(self.personas).map_err(|e| encode("personas", e))?,
            ),
            (
                "layers".to_string(),
                serde_json::to_string(&layers).map_err(|e| encode("layers", e))?,
            ),
            ("questions".to_string(), self.questions.to_string()),
        ]);
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| ActivationsError::Encode(e.to_string()))?;
        canonical_header(bytes)
    }
}

/// The safetensors crate writes `__metadata__` from a HashMap, in an order that changes from
/// run to run: the same activations would get other bytes, another sha256, and every downstream
/// task another id. The header is written again with its keys sorted (the data is untouched:
/// offsets count from the end of the header).
fn canonical_header(bytes: Vec<u8>) -> Result<Vec<u8>, ActivationsError> {
    use serde_json::Value;
    use std::collections::BTreeMap;
    let bad = |what: &str| ActivationsError::Encode(format!("safetensors header: {what}"));
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("too short"))?;
    let end = 8 + u64::from_le_bytes(len_bytes) as usize;
    let header = bytes.get(8..end).ok_or_else(|| bad("length beyond the file"))?;
    let parsed: BTreeMap<String, Value> = serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
    let sorted: BTreeMap<String, Value> = parsed
        .into_iter()
        .map(|(key, value)| {
            // Rebuilt from a sorted map: serde_json's map keeps that order whether it is a
            // BTreeMap or (with `preserve_order`) an insertion-ordered one.
            let value = match value {
                Value::Object(map) => {
                    let inner: BTreeMap<String, Value> = map.into_iter().collect();
                    Value::Object(inner.into_iter().collect())
                }
                other => other,
            };
            (key, value)
        })
        .collect();
    // serde_json writes a BTreeMap in key order whatever its features.
    let mut text = serde_json::to_vec(&sorted).map_err(|e| bad(&e.to_string()))?;
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - end);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_safetensors_with_metadata() {
        let personas = vec!["a".to_string(), "b".to_string()];
        let acts = Activations {
            checkpoint: "base",
            method: "A",
            model: "demo",
            personas: &personas,
            questions: 3,
            hidden: 2,
            layers: vec![(7, (0..12).map(|x| x as f32).collect())],
            mask: vec![1, 1, 0, 1, 1, 1],
        };
        let bytes = acts.to_bytes().unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["personas"], r#"["a","b"]"#);
        assert_eq!(meta["layers"], "[7]");
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let l7 = st.tensor("layer_7").unwrap();
        assert_eq!(l7.shape(), &[2, 3, 2]);
        assert_eq!(st.tensor("question_mask").unwrap().data(), &[1, 1, 0, 1, 1, 1]);
        let bad = Activations {
            layers: vec![(7, vec![0.0; 5])],
            ..acts
        };
        let err = bad.to_bytes().unwrap_err().to_string();
        assert!(err.contains("layer 7") && err.contains("found 5"), "{err}");
    }

    /// The same activations are the same bytes every time (their sha256 names downstream tasks).
    #[test]
    fn encoding_is_byte_for_byte_stable() {
        let personas = vec!["a".to_string(), "b".to_string()];
        let acts = |mask: Vec<u8>| Activations {
            checkpoint: "base",
            method: "B",
            model: "demo",
            personas: &personas,
            questions: 1,
            hidden: 2,
            layers: vec![(3, vec![0.5, 1.0, 1.5, 2.0]), (1, vec![0.0; 4])],
            mask,
        };
        let first = acts(vec![1, 0]).to_bytes().unwrap();
        for _ in 0..20 {
            assert_eq!(acts(vec![1, 0]).to_bytes().unwrap(), first);
        }
        let header_len = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        assert_eq!(header_len % 8, 0);
        let st = safetensors::SafeTensors::deserialize(&first).unwrap();
        assert_eq!(st.tensor("layer_3").unwrap().data().len(), 16);
    }
}
