//! pspace-engine: the only crate that links libtorch.
//!
//! It holds everything that turns weights and text into numbers: device selection (CUDA is
//! loaded at run time so one binary serves CPU-only and GPU machines), the decoder-only model,
//! tokenizers and chat templates, batched extraction and generation, and LoRA training.

pub mod device;
pub mod extract;
pub mod generate;
pub mod generation_config;
pub mod gguf;
pub mod kernel_trace;
pub mod lora;
pub mod model;
pub mod peft;
pub mod tokenizer;
pub mod train;

pub use device::{Device, DeviceError, Dtype};
