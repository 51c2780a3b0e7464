//! Fine-tuning operators, native on candle through `expflow-train` (docs/training.md):
//! - `train.tiny_model` ([`tiny_model`]): a small Qwen2 from scratch for CPU experiments;
//! - `train.sft` ([`sft`]): LoRA supervised fine-tuning;
//! - `train.reference_logprobs`, `train.dpo` ([`dpo`]): DPO against reference
//!   log-probabilities kept as their own artifact;
//! - [`common`]: the parameters, inputs and outputs they share.

pub mod checkpoints;
pub mod common;
pub mod dpo;
pub mod sft;
pub mod tiny_model;

pub use dpo::{Dpo, ReferenceLogprobs};
pub use sft::Sft;
pub use tiny_model::TinyModel;

#[cfg(test)]
mod tests;
