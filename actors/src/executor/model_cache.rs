//! The model a worker keeps resident: the base model and tokenizer are loaded once per worker
//! (from files, or built as `random:` weights: `ModelSource`) and shared by every task it runs; a checkpoint (base + EM adapter, + coupling adapter) is the
//! base with its adapters merged in memory, sharing every untouched tensor with the base.

use super::StageError;
use pspace_engine::model::{Model, ModelSource};
use pspace_engine::tokenizer::ChatTokenizer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which weights a task runs on.
#[derive(Debug, Clone)]
pub enum Checkpoint {
    Base,
    /// Base + a PEFT adapter folder, merged.
    Adapter(PathBuf),
    /// A checkpoint with one more PEFT adapter merged on top (coupling on EM).
    Stacked(Box<Checkpoint>, PathBuf),
}

/// The base model and tokenizer of one device, loaded on first use and kept.
pub struct ModelCache {
    pub source: ModelSource,
    /// The spec's name for the model (recorded in outputs).
    pub model_name: String,
    pub device: pspace_engine::Device,
    /// The spec's `[experiment] dtype` (None: the device's default).
    pub dtype: Option<pspace_engine::Dtype>,
    base: Option<Arc<Model>>,
    tokenizer: Option<Arc<ChatTokenizer>>,
    /// Token budget of one extraction batch.
    pub max_batch_tokens: usize,
    /// Rows decoded together.
    pub max_batch_rows: usize,
}

impl ModelCache {
    /// Nothing is loaded until a task needs it. Batch sizes: GPU 65,536 tokens / 512 rows, CPU
    /// 8,192 / 64 (GPU.md).
    pub fn new(
        source: ModelSource,
        model_name: String,
        device: pspace_engine::Device,
        dtype: Option<pspace_engine::Dtype>,
    ) -> ModelCache {
        let gpu = matches!(device, pspace_engine::Device::Cuda(_));
        ModelCache {
            source,
            model_name,
            device,
            dtype,
            base: None,
            tokenizer: None,
            max_batch_tokens: if gpu { 65_536 } else { 8_192 },
            max_batch_rows: if gpu { 512 } else { 64 },
        }
    }

    pub fn base(&mut self) -> Result<Arc<Model>, StageError> {
        if let Some(m) = &self.base {
            return Ok(m.clone());
        }
        let _span = tracing::info_span!(
            "load_model",
            model = %self.source,
            device = %self.device,
            kind = ?self.device.kind_for(self.dtype)
        )
        .entered();
        let tdev = self.device.activate()?;
        let model = Arc::new(self.source.load(tdev, self.device.kind_for(self.dtype))?);
        self.base = Some(model.clone());
        Ok(model)
    }

    pub fn tokenizer(&mut self) -> Result<Arc<ChatTokenizer>, StageError> {
        if let Some(t) = &self.tokenizer {
            return Ok(t.clone());
        }
        let _span = tracing::info_span!("load_tokenizer", model = %self.source).entered();
        let t = Arc::new(self.source.tokenizer()?);
        self.tokenizer = Some(t.clone());
        Ok(t)
    }

    /// The weights of a checkpoint, adapters merged in memory (untouched tensors are shared
    /// with the base model).
    pub fn load(&mut self, checkpoint: &Checkpoint) -> Result<Arc<Model>, StageError> {
        match checkpoint {
            Checkpoint::Base => self.base(),
            Checkpoint::Adapter(dir) => {
                let base = self.base()?;
                Ok(Arc::new(merge_adapter(&base, dir)?))
            }
            Checkpoint::Stacked(inner, dir) => {
                let under = self.load(inner)?;
                Ok(Arc::new(merge_adapter(&under, dir)?))
            }
        }
    }
}

fn merge_adapter(model: &Model, dir: &Path) -> Result<Model, StageError> {
    let _span = tracing::info_span!("merge_adapter", adapter = %dir.display()).entered();
    let (lora, _meta) =
        pspace_engine::peft::load(dir, model).map_err(|e| StageError::Adapter(e.to_string()))?;
    Ok(lora.merged_into(model))
}
