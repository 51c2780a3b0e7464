//! A Qwen2 / Qwen2.5 decoder written for this runtime (not candle-transformers' copy):
//! left-padded batches with a key mask and per-row positions, a KV cache owned by the caller,
//! hidden states or logits for every position, and every projection going through
//! [`Linear`], which can carry an [`Adapter`] (LoRA) added to its output.

use std::fmt;
use std::sync::Arc;

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use crate::dir::ModelDir;
use crate::error::{ModelError, Result};
use crate::kernels;

/// The fields of a Qwen2 `config.json` this decoder uses, with transformers' defaults.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Qwen2Config {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    /// Grouped-query attention; defaults to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "d_act")]
    pub hidden_act: String,
}

fn d_vocab() -> usize {
    151936
}
fn d_hidden() -> usize {
    4096
}
fn d_intermediate() -> usize {
    22016
}
fn d_layers() -> usize {
    32
}
fn d_heads() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-6
}
fn d_theta() -> f64 {
    10000.0
}
fn d_max_pos() -> usize {
    32768
}
fn d_act() -> String {
    "silu".into()
}

impl Qwen2Config {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Reads and checks the config of `dir`.
    pub fn from_dir(dir: &ModelDir) -> Result<Qwen2Config> {
        let cfg: Qwen2Config = dir.config_as()?;
        let bad = |problem: String| ModelError::Config {
            path: dir.root.join("config.json"),
            problem,
        };
        if cfg.hidden_act != "silu" {
            return Err(bad(format!(
                "hidden_act `{}` is not supported by the Qwen2 decoder (only `silu`)",
                cfg.hidden_act
            )));
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        if cfg.kv_heads() == 0 || !cfg.num_attention_heads.is_multiple_of(cfg.kv_heads()) {
            return Err(bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                cfg.num_attention_heads,
                cfg.kv_heads()
            )));
        }
        if !cfg.head_dim().is_multiple_of(2) {
            return Err(bad(format!(
                "head dimension {} is odd; rotary embeddings need it even",
                cfg.head_dim()
            )));
        }
        Ok(cfg)
    }

    /// Every tensor name this config needs, with its shape.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let kv = self.kv_heads() * self.head_dim();
        let mut out = vec![
            ("model.embed_tokens.weight".to_string(), vec![v, h]),
            ("model.norm.weight".to_string(), vec![h]),
        ];
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            for (name, shape) in [
                ("self_attn.q_proj.weight", vec![h, h]),
                ("self_attn.q_proj.bias", vec![h]),
                ("self_attn.k_proj.weight", vec![kv, h]),
                ("self_attn.k_proj.bias", vec![kv]),
                ("self_attn.v_proj.weight", vec![kv, h]),
                ("self_attn.v_proj.bias", vec![kv]),
                ("self_attn.o_proj.weight", vec![h, h]),
                ("mlp.gate_proj.weight", vec![i, h]),
                ("mlp.up_proj.weight", vec![i, h]),
                ("mlp.down_proj.weight", vec![h, i]),
                ("input_layernorm.weight", vec![h]),
                ("post_attention_layernorm.weight", vec![h]),
            ] {
                out.push((format!("{p}.{name}"), shape));
            }
        }
        out
    }
}

/// Something added to a [`Linear`]'s output, computed from its input (a LoRA branch).
pub trait Adapter: Send + Sync + fmt::Debug {
    /// The term added to `x W^T + b`; same shape as the layer's output.
    fn delta(&self, x: &Tensor) -> candle_core::Result<Tensor>;

    /// The branch as `scale · x Aᵀ Bᵀ` when it is exactly that (no dropout now), for the fused
    /// [`kernels::linear`]; `None` makes [`Linear`] call [`Adapter::delta`].
    fn lora(&self) -> Option<kernels::LoraParts> {
        None
    }
}

/// A linear projection `x W^T + b`, optionally plus an [`Adapter`]'s output.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub adapter: Option<Arc<dyn Adapter>>,
}

impl Linear {
    fn load(
        vb: &VarBuilder,
        name: &str,
        out_dim: usize,
        in_dim: usize,
        bias: bool,
    ) -> Result<Linear> {
        let vb = vb.pp(name);
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            adapter: None,
        })
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if kernels::applies(x) {
            let parts = self.adapter.as_ref().and_then(|a| a.lora());
            let y = kernels::linear(x, &self.weight, self.bias.as_ref(), parts.as_ref())?;
            return match (&self.adapter, parts) {
                (Some(a), None) => y + a.delta(x)?,
                _ => Ok(y),
            };
        }
        let w = self.weight.t()?;
        let y = match x.dims() {
            [b, s, i] => x
                .reshape((b * s, *i))?
                .matmul(&w)?
                .reshape((*b, *s, self.out_dim()))?,
            _ => x.matmul(&w)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        match &self.adapter {
            Some(a) => y + a.delta(x)?,
            None => Ok(y),
        }
    }
}

/// Keys and values of earlier positions, one entry per layer, shape
/// `(batch, kv_heads, positions, head_dim)`. Owned by the caller; one per sequence batch.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> KvCache {
        KvCache {
            layers: vec![None; num_layers],
        }
    }

    /// Positions held (0 when empty).
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

#[derive(Clone, Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

#[derive(Clone, Debug)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

#[derive(Clone, Debug)]
struct Layer {
    attn: Attention,
    mlp: Mlp,
    input_norm: Tensor,
    post_norm: Tensor,
}

/// The Qwen2 causal language model.
#[derive(Clone, Debug)]
pub struct Qwen2 {
    pub config: Qwen2Config,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    /// Module-name prefixes of the decoder (`model`) and of `lm_head` (empty at the root).
    prefix: (String, String),
    /// Use composite ops that keep autograd (for training) instead of fused kernels.
    pub differentiable: bool,
}

impl Qwen2 {
    /// Loads the model of a checked directory, checking every tensor's shape first.
    pub fn load(dir: &ModelDir, dtype: DType, device: &Device) -> Result<Qwen2> {
        let config = Qwen2Config::from_dir(dir)?;
        for (name, shape) in config.expected_tensors() {
            dir.expect_tensor(&name, &shape)?;
        }
        let vb = dir.var_builder(dtype, device)?;
        Qwen2::from_var_builder(config, vb)
    }

    /// Builds the model from a `VarBuilder` with Hugging Face's tensor names.
    pub fn from_var_builder(config: Qwen2Config, vb: VarBuilder) -> Result<Qwen2> {
        Qwen2::from_parts(config, vb.pp("model"), vb)
    }

    /// Builds the decoder from `m`, rooted where `embed_tokens`, `layers` and `norm` live
    /// (`model`, or `model.language_model` in a vision-language checkpoint), and `head`,
    /// rooted where `lm_head` lives.
    pub fn from_parts(config: Qwen2Config, m: VarBuilder, head: VarBuilder) -> Result<Qwen2> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let (heads, kv_heads, hd) = (
            config.num_attention_heads,
            config.kv_heads(),
            config.head_dim(),
        );
        let embed_w = m.get((config.vocab_size, h), "embed_tokens.weight")?;
        let embed = Embedding::new(embed_w.clone(), h);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let lv = m.pp(format!("layers.{l}"));
            let a = lv.pp("self_attn");
            let f = lv.pp("mlp");
            layers.push(Layer {
                attn: Attention {
                    q_proj: Linear::load(&a, "q_proj", heads * hd, h, true)?,
                    k_proj: Linear::load(&a, "k_proj", kv_heads * hd, h, true)?,
                    v_proj: Linear::load(&a, "v_proj", kv_heads * hd, h, true)?,
                    o_proj: Linear::load(&a, "o_proj", h, heads * hd, false)?,
                    heads,
                    kv_heads,
                    head_dim: hd,
                },
                mlp: Mlp {
                    gate_proj: Linear::load(&f, "gate_proj", i, h, false)?,
                    up_proj: Linear::load(&f, "up_proj", i, h, false)?,
                    down_proj: Linear::load(&f, "down_proj", h, i, false)?,
                },
                input_norm: lv.get(h, "input_layernorm.weight")?,
                post_norm: lv.get(h, "post_attention_layernorm.weight")?,
            });
        }
        let norm = m.get(h, "norm.weight")?;
        let lm_head = if config.tie_word_embeddings {
            Linear {
                weight: embed_w,
                bias: None,
                adapter: None,
            }
        } else {
            Linear::load(&head, "lm_head", config.vocab_size, h, false)?
        };
        // As transformers: 1 / theta^(2j/d), in f32.
        let inv_freq = (0..hd / 2)
            .map(|j| 1.0 / (config.rope_theta as f32).powf((2 * j) as f32 / hd as f32))
            .collect();
        Ok(Qwen2 {
            config,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            prefix: (m.prefix(), head.prefix()),
            differentiable: false,
        })
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Every projection by its Hugging Face module name (`model.layers.0.self_attn.q_proj`,
    /// `lm_head`, ...; the prefixes the model was loaded from), for attaching adapters.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        let (m, head) = &self.prefix;
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("{m}.layers.{l}");
            let a = &mut layer.attn;
            out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            let f = &mut layer.mlp;
            out.push((format!("{p}.mlp.gate_proj"), &mut f.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut f.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut f.down_proj));
        }
        let head = if head.is_empty() {
            "lm_head".to_string()
        } else {
            format!("{head}.lm_head")
        };
        out.push((head, &mut self.lm_head));
        out
    }

    /// Final (normed) hidden states `(batch, seq, hidden)`.
    ///
    /// - `ids`: `(batch, seq)` u32 token ids (padding ids are arbitrary);
    /// - `positions`: `(batch, seq)` u32 rotary positions (0 at each row's first real token);
    /// - `key_mask`: `(batch, cached + seq)`, 1 for real tokens and 0 for padding, any dtype;
    /// - `cache`: earlier keys/values, extended in place; `None` for a single full pass.
    ///
    /// Each query attends to real keys at or before its own index. Rows of padding queries
    /// produce values that mean nothing; ignore them.
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        if positions.dims2()? != (b, s) {
            return Err(ModelError::Request(format!(
                "positions have shape {:?}; expected ({b}, {s})",
                positions.dims()
            )));
        }
        let dtype = self.norm.dtype();
        let (cos, sin) = self.rope_tables(positions, dtype)?;
        let x = self.embed.forward(ids)?;
        self.forward_embeds(&x, &cos, &sin, key_mask, cache)
    }

    /// Token embeddings `(batch, seq, hidden)` of `ids` `(batch, seq)`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed.forward(ids)?)
    }

    /// Like [`Qwen2::forward_hidden`], from input embeddings `(batch, seq, hidden)` and
    /// rotary tables `cos`/`sin` of shape `(batch or 1, 1, seq, head_dim)` computed by the
    /// caller (the vision-language model's M-RoPE).
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        key_mask: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, s, _) = embeds.dims3()?;
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let (mb, mt) = key_mask.dims2()?;
        if mb != b || mt != past + s {
            return Err(ModelError::Request(format!(
                "key_mask has shape ({mb}, {mt}); expected ({b}, {}) for {past} cached and {s} new positions",
                past + s
            )));
        }
        let dtype = self.norm.dtype();
        let mask = additive_mask(key_mask, s, past)?.to_dtype(dtype)?;
        let mut x = embeds.clone();
        for (l, layer) in self.layers.iter().enumerate() {
            let normed = self.rms_norm(&x, &layer.input_norm)?;
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            let a = layer
                .attn
                .forward(&normed, cos, sin, &mask, slot, self.differentiable)?;
            x = (x + a)?;
            let normed = self.rms_norm(&x, &layer.post_norm)?;
            let m = layer.mlp.forward(&normed, self.differentiable)?;
            x = (x + m)?;
        }
        Ok(self.rms_norm(&x, &self.norm)?)
    }

    pub fn dtype(&self) -> DType {
        self.norm.dtype()
    }

    pub fn device(&self) -> &Device {
        self.norm.device()
    }

    /// Logits of hidden states: `(..., hidden)` to `(..., vocab)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?)
    }

    /// Logits for every position, `(batch, seq, vocab)`; see [`Qwen2::forward_hidden`].
    pub fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(ids, positions, key_mask, cache)?;
        self.logits(&h)
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        let eps = self.config.rms_norm_eps as f32;
        if self.differentiable && kernels::applies(x) {
            kernels::rms_norm(x, w, eps)
        } else if self.differentiable {
            candle_nn::ops::rms_norm_slow(x, w, eps)
        } else {
            candle_nn::ops::rms_norm(&x.contiguous()?, w, eps)
        }
    }

    /// `cos` and `sin` of shape `(batch, 1, seq, head_dim)` for the given positions.
    fn rope_tables(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let (b, s) = positions.dims2()?;
        let half = self.inv_freq.len();
        let inv = Tensor::from_slice(&self.inv_freq, (1, 1, half), positions.device())?;
        let pos = positions.to_dtype(DType::F32)?.reshape((b, s, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?.unsqueeze(1)?;
        Ok((emb.cos()?.to_dtype(dtype)?, emb.sin()?.to_dtype(dtype)?))
    }
}

/// `(batch, 1, seq, past + seq)`: 0 where query `i` (at index `past + i`) may see key `j`
/// (`j <= past + i` and the key is real), a large negative number elsewhere. A finite value
/// keeps all-padding rows free of NaN.
fn additive_mask(key_mask: &Tensor, s: usize, past: usize) -> Result<Tensor> {
    let km = key_mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let b = km.len();
    let t = past + s;
    let mut out = Vec::with_capacity(b * s * t);
    for row in &km {
        for i in 0..s {
            for (j, &k) in row.iter().enumerate() {
                out.push(if j <= past + i && k > 0.5 { 0.0 } else { -1e30 });
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, 1, s, t), key_mask.device())?)
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

/// `(b, kv, t, d)` to `(b, kv * rep, t, d)`, each key head repeated `rep` times in place.
fn repeat_kv(x: Tensor, rep: usize) -> candle_core::Result<Tensor> {
    if rep == 1 {
        return Ok(x);
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, rep, t, d))?
        .reshape((b, kv * rep, t, d))
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        slot: Option<&mut Option<(Tensor, Tensor)>>,
        differentiable: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let split = |t: Tensor, heads: usize| -> candle_core::Result<Tensor> {
            t.reshape((b, s, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q_proj.forward(x)?, self.heads)?;
        let k = split(self.k_proj.forward(x)?, self.kv_heads)?;
        let v = split(self.v_proj.forward(x)?, self.kv_heads)?;
        let fused = differentiable && kernels::applies(x);
        let (q, k) = if fused {
            (kernels::rope(&q, cos, sin)?, kernels::rope(&k, cos, sin)?)
        } else {
            (apply_rope(&q, cos, sin)?, apply_rope(&k, cos, sin)?)
        };
        let (k, v) = match slot {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let rep = self.heads / self.kv_heads;
        let k = repeat_kv(k, rep)?.contiguous()?;
        let v = repeat_kv(v, rep)?.contiguous()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        if fused {
            let probs = kernels::masked_softmax(&q.matmul(&k.t()?)?, Some(mask), scale as f32)?;
            let out = probs.matmul(&v)?.transpose(1, 2)?;
            return self
                .o_proj
                .forward(&out.reshape((b, s, self.heads * self.head_dim))?);
        }
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        // Softmax in f32 whatever the weights' dtype (as transformers does).
        let dtype = scores.dtype();
        let scores = scores.to_dtype(DType::F32)?;
        let probs = if differentiable {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        }
        .to_dtype(dtype)?;
        let out = probs.matmul(&v)?;
        let out = out
            .transpose(1, 2)?
            .reshape((b, s, self.heads * self.head_dim))?;
        self.o_proj.forward(&out)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor, differentiable: bool) -> candle_core::Result<Tensor> {
        if differentiable && kernels::applies(x) {
            let g = self.gate_proj.forward(x)?;
            let u = self.up_proj.forward(x)?;
            return self.down_proj.forward(&kernels::silu_mul(&g, &u)?);
        }
        let g = self.gate_proj.forward(x)?.silu()?;
        let u = self.up_proj.forward(x)?;
        self.down_proj.forward(&(g * u)?)
    }
}
