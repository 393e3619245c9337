//! The JSON training log: the run's settings, what the data held (and what was wrong with it),
//! and one record per optimizer step. Written atomically, so a reader never sees half a file.

use super::data::DataReport;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// 1-based optimizer step.
    pub step: usize,
    pub epoch: usize,
    /// Mean cross-entropy over the label tokens of the step's global batch.
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Label tokens of the step.
    pub label_tokens: i64,
    /// Real (non-padding) tokens of the step.
    pub tokens: i64,
    pub tokens_per_s: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainLog {
    pub settings: serde_json::Value,
    pub data: DataReport,
    pub steps: Vec<StepLog>,
    pub total_steps: usize,
    pub finished: bool,
    /// Why training stopped early, if it did.
    pub error: Option<String>,
    pub seconds: f64,
    pub peak_gpu_memory_bytes: Option<u64>,
    /// The attention kernel of padding-free passes at the end of training
    /// (`model::packed_attention_kernel`); None in logs written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed_attention: Option<String>,
}

impl TrainLog {
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        crate::peft::write_atomically(path, text.as_bytes())
    }
}
