//! BERT-family text encoders (MiniLM, Contriever, bge, e5) on candle-transformers' `bert`.
//!
//! Texts are tokenised with the directory's `tokenizer.json` (truncated to `max_len` tokens,
//! special tokens kept), sorted by length and run in batches padded on the right, so that
//! short texts do not pay for long ones; results come back in the caller's order.

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use expflow_models::{ModelDir, Pooling};
use tokenizers::{Tokenizer, TruncationParams};

use crate::defaults::EncoderDefaults;
use crate::error::{EncoderError, Result};
use crate::pooling::{l2_normalize, pool_tokens};

/// Texts per forward pass unless changed with [`TextEncoder::with_batch_size`].
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// One text's token ids and the hidden states of its tokens (`[len, dim]`).
#[derive(Clone, Debug)]
pub struct TokenStates {
    pub ids: Vec<u32>,
    pub states: Tensor,
}

/// A loaded BERT-family encoder.
pub struct TextEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    pooling: Pooling,
    normalize: bool,
    max_len: usize,
    dim: usize,
    pad_id: u32,
    batch_size: usize,
}

impl TextEncoder {
    /// Loads the encoder in `dir` (which must hold `tokenizer.json`). `max_len` counts tokens
    /// including `[CLS]`/`[SEP]` and must not exceed `max_position_embeddings`.
    pub fn load(
        dir: &ModelDir,
        device: &Device,
        pooling: Pooling,
        normalize: bool,
        max_len: usize,
    ) -> Result<TextEncoder> {
        Self::load_layers(dir, device, pooling, normalize, max_len, None)
    }

    /// Loads with the pooling, normalisation and length the directory's sentence-transformers
    /// files ask for (see [`EncoderDefaults`]).
    pub fn load_default(dir: &ModelDir, device: &Device) -> Result<TextEncoder> {
        let d = EncoderDefaults::read(dir)?;
        Self::load(dir, device, d.pooling, d.normalize, d.max_len)
    }

    /// Loads only the first `layers` transformer layers when given (the states of layer L, as
    /// BERTScore uses them); `Some(0)` gives the embedding output.
    pub(crate) fn load_layers(
        dir: &ModelDir,
        device: &Device,
        pooling: Pooling,
        normalize: bool,
        max_len: usize,
        layers: Option<usize>,
    ) -> Result<TextEncoder> {
        let config_path = dir.root.join("config.json");
        match dir.model_type() {
            None | Some("bert") => {}
            Some(other) => {
                return Err(EncoderError::config(
                    config_path,
                    format!(
                        "model_type `{other}` is not a BERT model; the text encoder runs `bert` \
                         checkpoints only (RoBERTa/XLM-R position ids differ and would give wrong vectors)"
                    ),
                ));
            }
        }
        let mut config: BertConfig = dir.config_as()?;
        if let Some(l) = layers {
            if l > config.num_hidden_layers {
                return Err(EncoderError::Param(format!(
                    "layer {l} asked for, but {} has {} layers",
                    config_path.display(),
                    config.num_hidden_layers
                )));
            }
            config.num_hidden_layers = l;
        }
        if max_len == 0 || max_len > config.max_position_embeddings {
            return Err(EncoderError::Param(format!(
                "max_len {max_len} must be between 1 and max_position_embeddings ({}) of {}",
                config.max_position_embeddings,
                config_path.display()
            )));
        }
        let vb = dir.var_builder(DType::F32, device)?;
        let model = BertModel::load(vb, &config)?;
        let mut tokenizer = dir.tokenizer()?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| {
                EncoderError::Tokenizer(format!("cannot set truncation to {max_len}: {e}"))
            })?;
        tracing::debug!(
            dir = %dir.root.display(),
            layers = config.num_hidden_layers,
            dim = config.hidden_size,
            ?pooling,
            normalize,
            max_len,
            "text encoder loaded"
        );
        Ok(TextEncoder {
            model,
            tokenizer,
            device: device.clone(),
            pooling,
            normalize,
            max_len,
            dim: config.hidden_size,
            pad_id: config.pad_token_id as u32,
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// Sets the number of texts per forward pass (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> TextEncoder {
        self.batch_size = batch_size.max(1);
        self
    }

    /// The embedding size.
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    pub fn normalize(&self) -> bool {
        self.normalize
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The id of `token` in the tokenizer's vocabulary (special tokens included).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The token ids of each text: truncated to `max_len`, special tokens added.
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    /// One vector per text, in the order given.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenize(texts)?;
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in length_sorted_batches(&ids, self.batch_size) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let (hidden, mask, lens) = self.forward(&batch)?;
            let mut pooled = pool_tokens(&hidden, &mask, &lens, self.pooling)?;
            if self.normalize {
                pooled = l2_normalize(&pooled)?;
            }
            let rows = pooled.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            for (row, &i) in rows.into_iter().zip(&chunk) {
                out[i] = row;
            }
        }
        Ok(out)
    }

    /// Each text's token ids and last-layer token states, in the order given.
    pub fn token_states(&self, texts: &[String]) -> Result<Vec<TokenStates>> {
        let ids = self.tokenize(texts)?;
        let mut out: Vec<Option<TokenStates>> = vec![None; texts.len()];
        for chunk in length_sorted_batches(&ids, self.batch_size) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let (hidden, _, lens) = self.forward(&batch)?;
            for (k, &i) in chunk.iter().enumerate() {
                let states = hidden.get(k)?.narrow(0, 0, lens[k])?.contiguous()?;
                out[i] = Some(TokenStates {
                    ids: ids[i].clone(),
                    states,
                });
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Runs one right-padded batch: hidden states `[b, t, dim]`, mask `[b, t]`, lengths.
    fn forward(&self, batch: &[&[u32]]) -> Result<(Tensor, Tensor, Vec<usize>)> {
        let lens: Vec<usize> = batch.iter().map(|ids| ids.len()).collect();
        let t = lens.iter().copied().max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(batch.len() * t);
        let mut mask = Vec::with_capacity(batch.len() * t);
        for row in batch {
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(self.pad_id, t - row.len()));
            mask.extend(std::iter::repeat_n(1u32, row.len()));
            mask.extend(std::iter::repeat_n(0u32, t - row.len()));
        }
        let ids = Tensor::from_vec(ids, (batch.len(), t), &self.device)?;
        let mask = Tensor::from_vec(mask, (batch.len(), t), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        Ok((hidden, mask, lens))
    }
}

/// Indices of `ids` sorted by length (longest first, ties in input order), cut into batches.
pub(crate) fn length_sorted_batches(ids: &[Vec<u32>], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::length_sorted_batches;

    #[test]
    fn batches_are_sorted_by_length_and_stable() {
        let ids = vec![vec![1], vec![1, 2, 3], vec![1, 2], vec![4, 5, 6], vec![]];
        assert_eq!(
            length_sorted_batches(&ids, 2),
            vec![vec![1, 3], vec![2, 0], vec![4]]
        );
    }
}
