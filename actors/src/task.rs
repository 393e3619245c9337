//! Tasks as values: canonical encoding, stable ids and per-task seeds.
//!
//! The id must be the same on every machine and every run, so it is a SHA-256 over a canonical
//! JSON encoding (object keys sorted, no whitespace) of kind, parameters and input hashes, never
//! `std::hash` with its random state.
//!
//! A task's random draws are seeded from its parameters alone ([`task_seed`]), never from its
//! inputs' digests: an input is often a float output (an adapter's weights) that a GPU rerun
//! does not reproduce bit for bit, and a draw seeded from it would change with it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The stages of the experiment DAG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    TrainEm,
    TrainBenign,
    Extract,
    GenerateOnpolicy,
    BuildCoupling,
    TrainCoupling,
    MarkerEval,
    Analyse,
    /// The cross-seed summary: reads every seed's `analyse` result (only in multi-seed runs).
    Summarise,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::TrainEm => "train_em",
            TaskKind::TrainBenign => "train_benign",
            TaskKind::Extract => "extract",
            TaskKind::GenerateOnpolicy => "generate_onpolicy",
            TaskKind::BuildCoupling => "build_coupling",
            TaskKind::TrainCoupling => "train_coupling",
            TaskKind::MarkerEval => "marker_eval",
            TaskKind::Analyse => "analyse",
            TaskKind::Summarise => "summarise",
        }
    }

    /// Every kind, in DAG order.
    pub const ALL: [TaskKind; 9] = [
        TaskKind::TrainEm,
        TaskKind::TrainBenign,
        TaskKind::Extract,
        TaskKind::GenerateOnpolicy,
        TaskKind::BuildCoupling,
        TaskKind::TrainCoupling,
        TaskKind::MarkerEval,
        TaskKind::Analyse,
        TaskKind::Summarise,
    ];

    /// The kind named `name` (as `as_str` writes it), if any.
    pub fn parse(name: &str) -> Option<TaskKind> {
        TaskKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One unit of work: what to do, with which parameters, on which inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub kind: TaskKind,
    /// A short human label, e.g. `E3_french_person`; part of the id so two conditions with
    /// equal parameters stay distinct.
    pub label: String,
    pub params: Value,
    /// Content hashes (sha256 hex) of the artifacts this task reads, by role.
    pub inputs: BTreeMap<String, String>,
}

impl Task {
    /// Canonical bytes: the same value always encodes to the same bytes.
    pub fn canonical_json(&self) -> String {
        // Built by hand (the same value serde would give) so no fallible serialiser sits in the
        // path of the id.
        let inputs = self
            .inputs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut map = serde_json::Map::new();
        map.insert("inputs".into(), Value::Object(inputs));
        map.insert("kind".into(), Value::String(self.kind.as_str().into()));
        map.insert("label".into(), Value::String(self.label.clone()));
        map.insert("params".into(), self.params.clone());
        canonical(&Value::Object(map))
    }

    /// The task's stable id: the first 16 hex digits of SHA-256 of its canonical JSON.
    pub fn id(&self) -> String {
        let digest = Sha256::digest(self.canonical_json().as_bytes());
        hex::encode(&digest[..8])
    }

    /// The id of the task's kind, label and parameters without its inputs' digests.
    pub fn params_id(&self) -> String {
        Task {
            inputs: BTreeMap::new(),
            ..self.clone()
        }
        .id()
    }
}

/// The parameter naming the floating-point type a task computes in (`[experiment] dtype`): part
/// of the id, not of the seed.
pub const COMPUTE_DTYPE: &str = "compute_dtype";

/// The seed of every random draw a task makes: the experiment seed and the task's kind, label
/// and parameters ([`Task::params_id`]), not its inputs' digests (see the module doc), and not
/// its compute type ([`COMPUTE_DTYPE`]): an f32 and a bf16 run of one spec draw the same data
/// order, initial LoRA weights and samples, so that they differ by precision alone.
pub fn task_seed(experiment_seed: u64, task: &Task) -> u64 {
    let mut params = task.params.clone();
    if let Some(map) = params.as_object_mut() {
        map.remove(COMPUTE_DTYPE);
    }
    let seeded = Task {
        params,
        ..task.clone()
    };
    stable_seed(experiment_seed, &seeded.params_id())
}

/// A 64-bit seed derived from a base seed and a name through SHA-256 (stable across platforms,
/// Rust versions and runs, unlike `std::hash`).
pub fn stable_seed(base: u64, name: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(base.to_le_bytes());
    h.update(name.as_bytes());
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// JSON with object keys sorted and no insignificant whitespace.
pub fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let body: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&map[*k])))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(items) => {
            let body: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", body.join(","))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PINNED_NEG_PERSONAS_SEED: u64 = 17691125058500443281;

    fn task(params: Value) -> Task {
        Task {
            kind: TaskKind::Extract,
            label: "base".into(),
            params,
            inputs: BTreeMap::from([("model".into(), "ab12".into())]),
        }
    }

    #[test]
    fn id_ignores_key_order_but_not_values() {
        let a = task(json!({"layers": [7, 14], "method": "A"}));
        let b = task(json!({"method": "A", "layers": [7, 14]}));
        let c = task(json!({"method": "B", "layers": [7, 14]}));
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_eq!(a.id().len(), 16);
    }

    #[test]
    fn ids_and_seeds_are_pinned_across_versions() {
        // A change of either value silently re-runs every cached task: pin them.
        let t = task(json!({"layers": [7]}));
        assert_eq!(
            t.canonical_json(),
            r#"{"inputs":{"model":"ab12"},"kind":"extract","label":"base","params":{"layers":[7]}}"#
        );
        assert_eq!(task_seed(42, &t), task_seed(42, &t));
        assert_ne!(task_seed(42, &t), task_seed(43, &t));
        assert_eq!(stable_seed(42, "neg_personas"), PINNED_NEG_PERSONAS_SEED);
    }

    /// Issue 11 item 2: an input digest is a float output upstream (an adapter's bytes, which a
    /// GPU rerun does not reproduce bit for bit); the seed must not move with it. The old seed,
    /// `stable_seed(seed, task.id())`, hashed the inputs.
    #[test]
    fn the_seed_follows_the_parameters_and_not_the_inputs() {
        let mut a = task(json!({"layers": [7]}));
        let mut b = a.clone();
        a.inputs
            .insert("train_em/E1".into(), "adapter bytes of one GPU run".into());
        b.inputs
            .insert("train_em/E1".into(), "adapter bytes of a rerun".into());
        assert_ne!(a.id(), b.id(), "the id still hashes the inputs");
        assert_eq!(task_seed(42, &a), task_seed(42, &b));
        let c = task(json!({"layers": [8]}));
        assert_ne!(task_seed(42, &a), task_seed(42, &c), "a parameter moves the seed");
    }

    /// The compute type is in the id (an f32 result is not reused by a bf16 run) but not in the
    /// seed: the seed once hashed it, and f32, bf16 and unset runs of one spec drew different
    /// data orders, LoRA initialisations and samples.
    #[test]
    fn the_compute_type_moves_the_id_and_not_the_seed() {
        let plain = task(json!({"layers": [7]}));
        let typed = |d: &str| task(json!({"layers": [7], COMPUTE_DTYPE: d}));
        let (f32, bf16) = (typed("f32"), typed("bf16"));
        assert!(plain.id() != f32.id() && f32.id() != bf16.id() && plain.id() != bf16.id());
        assert_eq!(task_seed(42, &plain), task_seed(42, &f32));
        assert_eq!(task_seed(42, &f32), task_seed(42, &bf16));
    }
}
