//! The Qwen2 decoder of Qwen2.5-VL, fed with input embeddings (text embeddings with vision
//! features merged in) and M-RoPE cos/sin tables. One sequence at a time, no padding; the
//! KV cache is owned by the caller.
//!
//! `expflow_models::Qwen2` computes its own 1-D rotary tables from token ids, so it cannot be
//! used here; see docs/vlm.md for the hook that would let it.

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use crate::config::TextConfig;
use crate::error::{Result, VlmError};

#[derive(Clone, Debug)]
struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
    input_norm: Tensor,
    post_norm: Tensor,
}

/// Keys and values of earlier positions per layer, `(1, kv_heads, positions, head_dim)`.
#[derive(Clone, Debug, Default)]
pub struct TextCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl TextCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dims()[2])
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The language model: embeddings, decoder layers, final norm and `lm_head`.
#[derive(Clone, Debug)]
pub struct TextModel {
    pub config: TextConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
}

impl TextModel {
    /// `vb` is rooted where `embed_tokens`, `layers` and `norm` live (`model` or
    /// `model.language_model`); `head` where `lm_head` does.
    pub fn load(config: &TextConfig, vb: VarBuilder, head: VarBuilder) -> Result<TextModel> {
        let c = config;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let (hd, kv) = (c.head_dim(), c.kv_heads());
        let embed_w = vb.get((c.vocab_size, h), "embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let lv = vb.pp(format!("layers.{l}"));
            let a = lv.pp("self_attn");
            let m = lv.pp("mlp");
            layers.push(Layer {
                q: candle_nn::linear(h, c.num_attention_heads * hd, a.pp("q_proj"))?,
                k: candle_nn::linear(h, kv * hd, a.pp("k_proj"))?,
                v: candle_nn::linear(h, kv * hd, a.pp("v_proj"))?,
                o: candle_nn::linear_no_bias(c.num_attention_heads * hd, h, a.pp("o_proj"))?,
                gate: candle_nn::linear_no_bias(h, i, m.pp("gate_proj"))?,
                up: candle_nn::linear_no_bias(h, i, m.pp("up_proj"))?,
                down: candle_nn::linear_no_bias(i, h, m.pp("down_proj"))?,
                input_norm: lv.get(h, "input_layernorm.weight")?,
                post_norm: lv.get(h, "post_attention_layernorm.weight")?,
            });
        }
        let norm = vb.get(h, "norm.weight")?;
        let lm_head = if c.tie_word_embeddings {
            Linear::new(embed_w.clone(), None)
        } else {
            candle_nn::linear_no_bias(h, c.vocab_size, head.pp("lm_head"))?
        };
        Ok(TextModel {
            config: c.clone(),
            embed: Embedding::new(embed_w, h),
            layers,
            norm,
            lm_head,
        })
    }

    pub fn new_cache(&self) -> TextCache {
        TextCache {
            layers: vec![None; self.layers.len()],
        }
    }

    pub fn dtype(&self) -> DType {
        self.norm.dtype()
    }

    pub fn device(&self) -> &Device {
        self.norm.device()
    }

    /// Token embeddings `(1, seq, hidden)` of `ids`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let t = Tensor::from_slice(ids, (1, ids.len()), self.device())?;
        Ok(self.embed.forward(&t)?)
    }

    /// Final normed hidden states `(1, seq, hidden)` for `embeds` `(1, seq, hidden)` with
    /// rotary tables `(1, 1, seq, head_dim)`; causal over the cache and the new positions.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: &mut TextCache,
    ) -> Result<Tensor> {
        let (b, s, _) = embeds.dims3()?;
        if b != 1 {
            return Err(VlmError::Request(format!(
                "the text model runs one sequence at a time; got a batch of {b}"
            )));
        }
        let past = cache.len();
        let mask = causal_mask(s, past, self.device())?.to_dtype(self.dtype())?;
        let eps = self.config.rms_norm_eps as f32;
        let mut x = embeds.clone();
        for (l, layer) in self.layers.iter().enumerate() {
            let normed = candle_nn::ops::rms_norm(&x.contiguous()?, &layer.input_norm, eps)?;
            let a = self.attention(layer, &normed, cos, sin, &mask, &mut cache.layers[l])?;
            x = (x + a)?;
            let normed = candle_nn::ops::rms_norm(&x.contiguous()?, &layer.post_norm, eps)?;
            let m = layer
                .down
                .forward(&(layer.gate.forward(&normed)?.silu()? * layer.up.forward(&normed)?)?)?;
            x = (x + m)?;
        }
        Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.norm, eps)?)
    }

    /// `(..., hidden)` to `(..., vocab)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?)
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        slot: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, s, _) = x.dims3()?;
        let (heads, kv, hd) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let split = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((b, s, n, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = split(layer.q.forward(x)?, heads)?;
        let k = split(layer.k.forward(x)?, kv)?;
        let v = split(layer.v.forward(x)?, kv)?;
        let q = apply_rope(&q, cos, sin)?;
        let k = apply_rope(&k, cos, sin)?;
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *slot = Some((k.clone(), v.clone()));
        let rep = heads / kv;
        let k = repeat_kv(&k, rep)?.contiguous()?;
        let v = repeat_kv(&v, rep)?.contiguous()?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let probs =
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, s, heads * hd))?;
        Ok(layer.o.forward(&out)?)
    }
}

/// `(1, 1, seq, past + seq)`: 0 where query `i` may see key `j` (`j <= past + i`), a large
/// negative number elsewhere.
fn causal_mask(s: usize, past: usize, device: &Device) -> Result<Tensor> {
    let t = past + s;
    let data: Vec<f32> = (0..s)
        .flat_map(|i| (0..t).map(move |j| if j <= past + i { 0.0 } else { -1e30 }))
        .collect();
    Ok(Tensor::from_vec(data, (1, 1, s, t), device)?)
}

fn rotate_half(x: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_mul(cos)? + rotate_half(x)?.broadcast_mul(sin)?
}

fn repeat_kv(x: &Tensor, rep: usize) -> candle_core::Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, rep, t, d))?
        .reshape((b, kv * rep, t, d))
}
