//! expflow's native fine-tuning on candle, through `expflow_models::Trainable`:
//! - [`lora`]: LoRA adapters as PEFT builds them, attached to a model's linears;
//! - [`optim`]: AdamW (torch's formula, exact save/restore) and gradient clipping;
//! - [`schedule`]: constant / linear / cosine schedules with warmup (Hugging Face's);
//! - [`data`]: ms-swift and LLaMA-Factory rows → conversations and preference pairs;
//! - [`trainer`]: the loop (order, accumulation, logging, evaluation, best checkpoint,
//!   resumable checkpoints) and sequence log-probabilities;
//! - [`sft`], [`dpo`]: the two objectives (DPO: sigmoid/cDPO, IPO, hinge);
//! - [`peft`]: adapters in PEFT's layout, and merging into a full model directory;
//! - [`sizes`]: a tiny Qwen2's shape for a parameter budget.
//!
//! Dependencies: candle and `expflow-models` (through `Trainable`). No engine, no tables: the
//! `train.*` operators in `expflow-operators` wrap it, and only they may depend on it.

pub mod data;
pub mod dpo;
pub mod error;
pub mod llamafactory;
pub mod lora;
pub mod optim;
pub mod peft;
pub mod schedule;
pub mod sft;
pub mod sizes;
pub mod trainer;

pub use candle_core::Tensor;
pub use error::{Result, TrainError};
pub use lora::{Lora, LoraConfig};
pub use trainer::{Hooks, LoopConfig, MetricRow, Objective, Outcome, train};
