//! expflow's native model runtime on candle (CPU; the `cuda` feature for GPUs).
//!
//! Dependencies: candle, tokenizers, minijinja, and `expflow-cache` for weight digests only.
//! It must not depend on the engine or the operators: it is the runtime they drive.
//! `expflow-encoders`, `expflow-vlm`, `expflow-train`, `expflow-serve` and `expflow-operators`
//! depend on it.
//!
//! - [`dir`]: Hugging-Face-style model directories, checked before any weight is read;
//! - [`api`]: request and result types shared with the server and the operators;
//! - [`kernels`]: fused CPU kernels (custom ops with their own backward passes);
//! - [`qwen2`]: the Qwen2/Qwen2.5 decoder (batched, caller-owned KV cache, adapter hooks);
//! - [`chat`]: chat templates (Jinja via minijinja, ChatML fallback);
//! - [`few_rows`]: `x W^T` for a decode step's few rows (no gemm packing);
//! - [`generate`]: [`Generator`]: batched generation, sampling, log-probabilities;
//! - [`sampling`]: token selection and log-softmax on plain slices;
//! - [`tiny`]: tiny random-weight Qwen2 directories for tests and benches;
//! - [`trainable`]: what a trainer needs from a model ([`Trainable`]).

pub mod api;
pub mod chat;
pub mod decoding;
pub mod dir;
pub mod error;
pub mod few_rows;
pub mod generate;
pub mod gguf;
pub mod kernels;
pub mod qwen2;
pub mod resize;
pub mod sampling;
pub mod special;
pub mod tiny;
pub mod train_impl;
pub mod trainable;

pub use api::{
    ChatMessage, Completion, ContentPart, FinishReason, GenRequest, Generation, Pooling, Sampling,
    TokenLogprob, place_media,
};
pub use chat::ChatTemplate;
pub use dir::{ModelDir, Needs};
pub use error::{ModelError, Result};
pub use generate::Generator;
pub use qwen2::{Adapter, KvCache, Linear, Qwen2, Qwen2Config};
pub use tiny::{TinySpec, write_tiny_qwen2};
pub use trainable::{IGNORE, TrainSequence, Trainable};

/// The device to run on: CPU, or the first CUDA device when built with `cuda` and one is
/// visible (respecting `CUDA_VISIBLE_DEVICES`, which the engine sets per node).
pub fn default_device() -> Result<candle_core::Device> {
    #[cfg(feature = "cuda")]
    {
        if candle_core::utils::cuda_is_available() {
            return Ok(candle_core::Device::new_cuda(0)?);
        }
    }
    Ok(candle_core::Device::Cpu)
}
