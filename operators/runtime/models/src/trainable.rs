//! What a trainer needs from a model, whatever its architecture: conversations turned into
//! token ids with labels, differentiable logits for a batch of them, and the linear layers
//! that carry adapters. Implemented by [`crate::Generator`] (Qwen2 text models) and by the
//! vision-language model of `expflow-vlm`; `expflow-train` trains through this trait only.

use std::path::PathBuf;

use candle_core::{Device, Tensor};

use crate::api::ChatMessage;
use crate::error::Result;
use crate::qwen2::Linear;

/// The label of a position that is not trained on (the value PyTorch's cross-entropy skips).
pub const IGNORE: i64 = -100;

/// One tokenised training conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSequence {
    /// Token ids of the whole rendered conversation (chat template applied).
    pub ids: Vec<u32>,
    /// Same length as `ids`: `labels[t]` is `ids[t]` where position `t` belongs to an
    /// assistant turn (its content and its end-of-turn token), [`IGNORE`] elsewhere.
    /// Shifting (position `t` predicts `t + 1`) is the trainer's job.
    pub labels: Vec<i64>,
    /// Images the conversation refers to, in the order their placeholders appear.
    pub images: Vec<PathBuf>,
}

impl TrainSequence {
    /// Positions that carry a label.
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }
}

/// A model a trainer can fine-tune with adapters.
pub trait Trainable {
    /// Renders `messages` with the model's chat template and tokenises it; every assistant
    /// turn is labelled. Sequences longer than `max_len` tokens are cut at `max_len`.
    fn encode_chat(&self, messages: &[ChatMessage], max_len: usize) -> Result<TrainSequence>;

    /// Logits `(batch, max_len, vocab)` in f32 for the sequences right-padded to the longest:
    /// `logits[b, t]` is the prediction after `batch[b].ids[..=t]`; rows past a sequence's
    /// end are unspecified. Keeps the autograd graph through adapters (call
    /// [`Trainable::set_differentiable`] first).
    fn train_logits(&self, batch: &[&TrainSequence]) -> Result<Tensor>;

    /// Every linear layer that can take an adapter, by its Hugging Face module path without
    /// `.weight` (e.g. `model.layers.0.self_attn.q_proj`).
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)>;

    /// Composite, differentiable ops (training) instead of fused inference kernels.
    fn set_differentiable(&mut self, on: bool);

    fn device(&self) -> &Device;

    /// The log-probability that the token after the conversation's generation prompt is the
    /// first token of each candidate (choice-probability metrics while evaluating).
    fn next_token_logprobs(
        &self,
        _messages: &[ChatMessage],
        _candidates: &[&str],
    ) -> Result<Vec<f32>> {
        Err(crate::error::ModelError::Request(
            "this model cannot score next tokens during training evaluation".into(),
        ))
    }

    /// The greedy completion of a conversation, for task metrics while evaluating.
    fn complete(&self, _messages: &[ChatMessage], _max_new_tokens: usize) -> Result<String> {
        Err(crate::error::ModelError::Request(
            "this model cannot generate during training evaluation".into(),
        ))
    }
}
