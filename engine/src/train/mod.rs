//! LoRA supervised fine-tuning: data and label masks, batching, AdamW, schedules, the training
//! loop with optional activation recomputation, and the JSON training log.

pub mod data;
pub mod log;
pub mod masks;
pub mod optim;
pub mod profile;
pub mod run;
pub mod schedule;
pub mod trainer;

/// Held by the tests that seed or draw from libtorch's process-wide generator (dropout masks):
/// the test harness runs tests on parallel threads, and `train` reseeds that generator.
#[cfg(test)]
pub(crate) static GLOBAL_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub use data::{ChatEncoder, DataReport, Example, LabelMode, Message, Row};
pub use log::{StepLog, TrainLog};
pub use optim::AdamWConfig;
pub use run::{run_sft, RunError, SftConfig, TrainReport};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{train, Batch, TrainConfig, TrainError, TrainOutcome, Trainer};
