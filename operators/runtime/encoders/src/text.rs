//! BERT-family text encoders (MiniLM, Contriever, bge, e5) on candle-transformers' `bert`,
//! RoBERTa/XLM-R on its `xlm_roberta`, DeBERTa-v2/v3 on its `debertav2`, and DeBERTa v1
//! (`microsoft/deberta-large-mnli`) on [`crate::deberta`]; the `model_type` of `config.json`
//! picks one.
//!
//! Texts are tokenised with the directory's `tokenizer.json` (truncated to `max_len` tokens,
//! special tokens kept), sorted by length and run in batches padded on the right, so that
//! short texts do not pay for long ones; results come back in the caller's order.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use candle_transformers::models::debertav2::{Config as DebertaV2Config, DebertaV2Model};
use candle_transformers::models::xlm_roberta::{Config as RobertaConfig, XLMRobertaModel};
use expflow_models::{ModelDir, Pooling, kernels};
use serde_json::Value;
use tokenizers::{Tokenizer, TruncationParams};

use crate::bert_cpu::BertCpu;
use crate::deberta::{DebertaConfig, DebertaModel};
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

/// The transformer under a [`TextEncoder`].
enum Backbone {
    Bert(BertModel),
    /// BERT on the fused CPU kernels.
    BertCpu(BertCpu),
    Roberta(XLMRobertaModel),
    Deberta(DebertaModel),
    DebertaV2(Box<DebertaV2Model>),
}

/// The architectures [`TextEncoder`] runs, by `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Bert,
    /// `roberta`, `xlm-roberta`, `camembert`: BERT with positions counted from
    /// `pad_token_id + 1` and padding skipped.
    Roberta,
    /// DeBERTa v1 (`deberta`).
    Deberta,
    /// DeBERTa v2 and v3 (`deberta-v2`).
    DebertaV2,
}

impl Architecture {
    /// The architecture of `dir` from its `model_type` (none means BERT).
    pub fn of(dir: &ModelDir) -> Result<Architecture> {
        Ok(match dir.model_type() {
            None | Some("bert") => Architecture::Bert,
            Some("roberta" | "xlm-roberta" | "camembert") => Architecture::Roberta,
            Some("deberta") => Architecture::Deberta,
            Some("deberta-v2") => Architecture::DebertaV2,
            Some(other) => {
                return Err(EncoderError::config(
                    dir.root.join("config.json"),
                    format!(
                        "model_type `{other}` is not a text encoder this runtime has; it runs `bert`, \
                         `roberta` (also `xlm-roberta`, `camembert`), `deberta` and `deberta-v2` checkpoints"
                    ),
                ));
            }
        })
    }

    /// Positions a sequence may use: `max_position_embeddings`, less `pad_token_id + 1` for
    /// RoBERTa (whose positions start after the padding index: 512 of roberta-large's 514).
    pub fn positions(self, dir: &ModelDir) -> usize {
        let get = |k: &str| dir.config.get(k).and_then(Value::as_u64);
        let max_pos = get("max_position_embeddings").unwrap_or(512) as usize;
        match self {
            Architecture::Roberta => {
                max_pos.saturating_sub(get("pad_token_id").unwrap_or(1) as usize + 1)
            }
            _ => max_pos,
        }
    }

    /// The prefix of the weights in a checkpoint saved from a task model
    /// (`roberta.embeddings...`, `deberta.embeddings...`), or none.
    fn weight_prefix(self, dir: &ModelDir) -> Option<&'static str> {
        let name = match self {
            Architecture::Bert => return None,
            Architecture::Roberta => "roberta",
            Architecture::Deberta | Architecture::DebertaV2 => "deberta",
        };
        dir.tensors
            .contains_key(&format!("{name}.embeddings.word_embeddings.weight"))
            .then_some(name)
    }
}

/// `config.json` with the defaults transformers applies to keys a saved config may omit.
fn config_with_defaults(dir: &ModelDir, defaults: &[(&str, Value)]) -> Value {
    let mut config = dir.config.clone();
    if let Some(map) = config.as_object_mut() {
        for (k, v) in defaults {
            if map.get(*k).is_none_or(Value::is_null) {
                map.insert((*k).to_string(), v.clone());
            }
        }
    }
    config
}

fn parse_config<T: serde::de::DeserializeOwned>(dir: &ModelDir, value: Value) -> Result<T> {
    serde_json::from_value(value)
        .map_err(|e| EncoderError::config(dir.root.join("config.json"), e.to_string()))
}

/// Sets the layer count `n` to `layers` when given, refusing more layers than the model has.
fn cut_layers(dir: &ModelDir, n: &mut usize, layers: Option<usize>) -> Result<()> {
    if let Some(l) = layers {
        if l > *n {
            return Err(EncoderError::Param(format!(
                "layer {l} asked for, but {} has {} layers",
                dir.root.join("config.json").display(),
                n
            )));
        }
        *n = l;
    }
    Ok(())
}

/// Loads the backbone of `dir`: (model, hidden size, layers, padding id).
fn load_backbone(
    dir: &ModelDir,
    arch: Architecture,
    vb: VarBuilder,
    layers: Option<usize>,
) -> Result<(Backbone, usize, usize, u32)> {
    let vb = match arch.weight_prefix(dir) {
        Some(p) => vb.pp(p),
        None => vb,
    };
    let common = [
        ("hidden_act", Value::from("gelu")),
        ("hidden_dropout_prob", Value::from(0.1)),
        ("attention_probs_dropout_prob", Value::from(0.1)),
        ("initializer_range", Value::from(0.02)),
    ];
    Ok(match arch {
        Architecture::Bert => {
            let mut c: BertConfig = dir.config_as()?;
            cut_layers(dir, &mut c.num_hidden_layers, layers)?;
            let out = (c.hidden_size, c.num_hidden_layers, c.pad_token_id as u32);
            let model = if vb.device().is_cpu() && vb.dtype() == DType::F32 && kernels::enabled() {
                Backbone::BertCpu(BertCpu::load(vb, &c)?)
            } else {
                Backbone::Bert(BertModel::load(vb, &c)?)
            };
            (model, out.0, out.1, out.2)
        }
        Architecture::Roberta => {
            let mut defaults = common.to_vec();
            defaults.extend([
                ("position_embedding_type", Value::from("absolute")),
                ("layer_norm_eps", Value::from(1e-5)),
                ("type_vocab_size", Value::from(1)),
                ("pad_token_id", Value::from(1)),
            ]);
            let mut c: RobertaConfig = parse_config(dir, config_with_defaults(dir, &defaults))?;
            if c.position_embedding_type != "absolute" {
                return Err(EncoderError::config(
                    dir.root.join("config.json"),
                    format!(
                        "position_embedding_type `{}` is not supported; only `absolute`",
                        c.position_embedding_type
                    ),
                ));
            }
            cut_layers(dir, &mut c.num_hidden_layers, layers)?;
            let out = (c.hidden_size, c.num_hidden_layers, c.pad_token_id);
            (
                Backbone::Roberta(XLMRobertaModel::new(&c, vb)?),
                out.0,
                out.1,
                out.2,
            )
        }
        Architecture::Deberta => {
            let mut c: DebertaConfig = parse_config(dir, dir.config.clone())?;
            cut_layers(dir, &mut c.num_hidden_layers, layers)?;
            let out = (
                c.hidden_size,
                c.num_hidden_layers,
                c.pad_token_id.unwrap_or(0),
            );
            (
                Backbone::Deberta(DebertaModel::load(vb, &c)?),
                out.0,
                out.1,
                out.2,
            )
        }
        Architecture::DebertaV2 => {
            let mut defaults = common.to_vec();
            defaults.extend([
                ("type_vocab_size", Value::from(0)),
                ("layer_norm_eps", Value::from(1e-7)),
                ("relative_attention", Value::from(false)),
                ("max_relative_positions", Value::from(-1)),
                ("position_biased_input", Value::from(true)),
                ("pos_att_type", Value::Array(Vec::new())),
                ("pad_token_id", Value::from(0)),
            ]);
            let mut c: DebertaV2Config = parse_config(dir, config_with_defaults(dir, &defaults))?;
            cut_layers(dir, &mut c.num_hidden_layers, layers)?;
            let out = (
                c.hidden_size,
                c.num_hidden_layers,
                c.pad_token_id.unwrap_or(0) as u32,
            );
            (
                Backbone::DebertaV2(Box::new(DebertaV2Model::load(vb, &c)?)),
                out.0,
                out.1,
                out.2,
            )
        }
    })
}

/// A loaded text encoder.
pub struct TextEncoder {
    model: Backbone,
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
        let arch = Architecture::of(dir)?;
        let positions = arch.positions(dir);
        if max_len == 0 || max_len > positions {
            let less = if arch == Architecture::Roberta {
                ", less pad_token_id + 1"
            } else {
                ""
            };
            return Err(EncoderError::Param(format!(
                "max_len {max_len} must be between 1 and max_position_embeddings ({positions}{less}) of {}",
                config_path.display()
            )));
        }
        let vb = dir.var_builder(DType::F32, device)?;
        let (model, dim, num_layers, pad_id) = load_backbone(dir, arch, vb, layers)?;
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
            ?arch,
            layers = num_layers,
            dim,
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
            dim,
            pad_id,
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
        let hidden = match &self.model {
            Backbone::Bert(m) => m.forward(&ids, &types, Some(&mask))?,
            Backbone::BertCpu(m) => m.forward(&ids, &types, &mask)?,
            Backbone::Roberta(m) => m.forward(&ids, &mask, &types, None, None, None)?,
            Backbone::Deberta(m) => m.forward(&ids, &mask)?,
            Backbone::DebertaV2(m) => m.forward(&ids, Some(types), Some(mask.clone()))?,
        };
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
