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
use crate::few_rows;
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
        // A decode step's few rows take `few_rows` below; everything else in f32 on the CPU
        // takes the fused linear (with the LoRA product inside and its own backward).
        if kernels::applies(x) && !few_rows::applies(x, &self.weight) {
            let parts = self.adapter.as_ref().and_then(|a| a.lora());
            let y = kernels::linear(x, &self.weight, self.bias.as_ref(), parts.as_ref())?;
            return match (&self.adapter, parts) {
                (Some(a), None) => y + a.delta(x)?,
                _ => Ok(y),
            };
        }
        let w = self.weight.t()?;
        let y = match x.dims() {
            // A decode step's few rows: no gemm packing of the weight (see `few_rows`).
            dims if few_rows::applies(x, &self.weight) => {
                let i = dims[dims.len() - 1];
                let mut out = dims.to_vec();
                *out.last_mut().expect("rank >= 1") = self.out_dim();
                few_rows::matmul_t(&x.reshape((x.elem_count() / i, i))?, &self.weight)?
                    .reshape(out)?
            }
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

/// Keys and values of earlier positions, one entry per layer, each `(batch, kv_heads,
/// positions, head_dim)`. Owned by the caller; one per sequence batch.
///
/// Each layer's keys and values live in buffers with room for more positions, written in
/// place as positions arrive (a decode step copies only its own keys, not the whole cache);
/// a buffer that fills up is replaced by one twice as long.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    /// Positions to make room for when a layer's buffers are first allocated.
    capacity: usize,
}

/// One layer's buffers `(batch, kv_heads, capacity, head_dim)`; the first `len` positions
/// hold data.
#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl Clone for KvCache {
    /// A deep copy: the buffers are written in place, so a clone must not share them.
    fn clone(&self) -> KvCache {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref().map(|l| LayerKv {
                    k: l.k.copy().expect("copy of a CPU or GPU tensor"),
                    v: l.v.copy().expect("copy of a CPU or GPU tensor"),
                    len: l.len,
                })
            })
            .collect();
        KvCache {
            layers,
            capacity: self.capacity,
        }
    }
}

impl KvCache {
    pub fn new(num_layers: usize) -> KvCache {
        KvCache::with_capacity(num_layers, 0)
    }

    /// A cache whose buffers first hold `positions` positions (prompt plus new tokens), so
    /// a generation that stays within them never reallocates.
    pub fn with_capacity(num_layers: usize, positions: usize) -> KvCache {
        KvCache {
            layers: (0..num_layers).map(|_| None).collect(),
            capacity: positions,
        }
    }

    /// Positions held (0 when empty).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|l| l.len)
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The caches of single sequences (batch 1 each) as one batch cache, each left-padded
    /// to the longest: row `i` holds its positions at the end of the first `len` slots, the
    /// slots before them zero (the key mask must mark them as padding). Room for
    /// `capacity` positions.
    pub fn stack_left_padded(rows: &[KvCache], capacity: usize) -> Result<KvCache> {
        let len = rows.iter().map(KvCache::len).max().unwrap_or(0);
        let layers = rows.first().map(|r| r.layers.len()).unwrap_or(0);
        let cap = capacity.max(len);
        let mut out = KvCache::with_capacity(layers, capacity);
        for l in 0..layers {
            let mut ks = Vec::with_capacity(rows.len());
            let mut vs = Vec::with_capacity(rows.len());
            for (i, r) in rows.iter().enumerate() {
                let Some(Some(layer)) = r.layers.get(l) else {
                    return Err(ModelError::Request(format!(
                        "stack_left_padded: row {i} has no keys for layer {l}; run the prompt through every layer first"
                    )));
                };
                let (b, kv, _, d) = layer.k.dims4()?;
                if b != 1 {
                    return Err(ModelError::Request(format!(
                        "stack_left_padded: row {i} holds a batch of {b}; expected 1"
                    )));
                }
                for (src, dst) in [(&layer.k, &mut ks), (&layer.v, &mut vs)] {
                    let buf = Tensor::zeros((1, kv, cap, d), src.dtype(), src.device())?;
                    buf.slice_set(
                        &src.narrow(2, 0, layer.len)?.contiguous()?,
                        2,
                        len - layer.len,
                    )?;
                    dst.push(buf);
                }
            }
            out.layers[l] = Some(LayerKv {
                k: Tensor::cat(&ks, 0)?,
                v: Tensor::cat(&vs, 0)?,
                len,
            });
        }
        Ok(out)
    }
}

impl LayerKv {
    /// Buffers holding `k` and `v` `(b, kv, s, d)` with room for `capacity` positions.
    fn new(k: &Tensor, v: &Tensor, capacity: usize) -> candle_core::Result<LayerKv> {
        let (b, kv, s, d) = k.dims4()?;
        let cap = capacity.max(s);
        let kb = Tensor::zeros((b, kv, cap, d), k.dtype(), k.device())?;
        let vb = Tensor::zeros((b, kv, cap, d), v.dtype(), v.device())?;
        kb.slice_set(&k.contiguous()?, 2, 0)?;
        vb.slice_set(&v.contiguous()?, 2, 0)?;
        Ok(LayerKv {
            k: kb,
            v: vb,
            len: s,
        })
    }

    /// Appends `k` and `v` `(b, kv, s, d)`; returns views of every position held.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let s = k.dim(2)?;
        let cap = self.k.dim(2)?;
        if self.len + s > cap {
            let grown = LayerKv::new(
                &self.k.narrow(2, 0, self.len)?,
                &self.v.narrow(2, 0, self.len)?,
                (2 * cap).max(self.len + s),
            )?;
            *self = grown;
        }
        self.k.slice_set(&k.contiguous()?, 2, self.len)?;
        self.v.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len += s;
        Ok((
            self.k.narrow(2, 0, self.len)?,
            self.v.narrow(2, 0, self.len)?,
        ))
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

    /// A cache with room for `positions` positions per sequence before it reallocates.
    pub fn new_cache_with_capacity(&self, positions: usize) -> KvCache {
        KvCache::with_capacity(self.layers.len(), positions)
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
    /// caller (the vision-language model's M-RoPE), each the concatenation of two equal
    /// halves (`cat(freqs, freqs)`, as every rotary table).
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
        let rope = if self.differentiable {
            Rope::Composite { cos, sin }
        } else {
            Rope::fused(cos, sin)?
        };
        let mut x = embeds.clone();
        for (l, layer) in self.layers.iter().enumerate() {
            let normed = self.rms_norm(&x, &layer.input_norm)?;
            let slot = cache.as_deref_mut().map(|c| (&mut c.layers[l], c.capacity));
            let a = layer
                .attn
                .forward(&normed, &rope, &mask, slot, self.differentiable)?;
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

/// Rotary tables as the attention applies them.
enum Rope<'a> {
    /// `(batch or 1, 1, seq, head_dim)`, applied with element-wise ops (keeps autograd).
    Composite { cos: &'a Tensor, sin: &'a Tensor },
    /// The first halves, `(batch, seq, head_dim / 2)` or `(seq, head_dim / 2)`, for candle's
    /// fused kernel, which computes the same products and sums as the composite form.
    Fused { cos: Tensor, sin: Tensor },
}

impl<'a> Rope<'a> {
    fn fused(cos: &Tensor, sin: &Tensor) -> candle_core::Result<Rope<'a>> {
        let (b, _, _, d) = cos.dims4()?;
        let half = |t: &Tensor| -> candle_core::Result<Tensor> {
            let t = t.narrow(D::Minus1, 0, d / 2)?.squeeze(1)?;
            let t = if b == 1 { t.squeeze(0)? } else { t };
            t.contiguous()
        };
        Ok(Rope::Fused {
            cos: half(cos)?,
            sin: half(sin)?,
        })
    }

    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Rope::Composite { cos, sin } => apply_rope(x, cos, sin),
            Rope::Fused { cos, sin } => candle_nn::rotary_emb::rope(x, cos, sin),
        }
    }
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        mask: &Tensor,
        slot: Option<(&mut Option<LayerKv>, usize)>,
        differentiable: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let split = |t: Tensor, heads: usize| -> candle_core::Result<Tensor> {
            t.reshape((b, s, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = match few_rows_concat(x, &[&self.q_proj, &self.k_proj, &self.v_proj])? {
            Some(mut qkv) => {
                let v = qkv.pop().expect("three products");
                let k = qkv.pop().expect("three products");
                let q = qkv.pop().expect("three products");
                (q, k, v)
            }
            None => (
                self.q_proj.forward(x)?,
                self.k_proj.forward(x)?,
                self.v_proj.forward(x)?,
            ),
        };
        let q = split(q, self.heads)?;
        let k = split(k, self.kv_heads)?;
        let v = split(v, self.kv_heads)?;
        // Training on the CPU in f32 takes the fused kernels (with their own backward).
        let fused = differentiable && kernels::applies(x);
        let (q, k) = match rope {
            Rope::Composite { cos, sin } if fused => {
                (kernels::rope(&q, cos, sin)?, kernels::rope(&k, cos, sin)?)
            }
            _ => (rope.apply(&q)?, rope.apply(&k)?),
        };
        let (k, v) = match slot {
            Some((slot, capacity)) => match slot {
                Some(layer) => layer.append(&k, &v)?,
                None => {
                    let layer = LayerKv::new(&k, &v, capacity)?;
                    let kv = (
                        layer.k.narrow(2, 0, layer.len)?,
                        layer.v.narrow(2, 0, layer.len)?,
                    );
                    *slot = Some(layer);
                    kv
                }
            },
            None => (k, v),
        };
        let rep = self.heads / self.kv_heads;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // Grouped-query attention without copying keys: the `rep` query heads that share a
        // key head are stacked as `rep * s` query rows against it, (b, kv, rep * s, t), which
        // has the memory order of (b, heads, s, t).
        if !differentiable && kernels::applies(x) {
            // Inference on the CPU in f32: one pass per (sequence, head).
            let out = kernels::attention(&q, &k, &v, mask, scale as f32)?;
            return self.o_proj.forward(&out);
        }
        let t = k.dim(2)?;
        let qg = q.reshape((b, self.kv_heads, rep * s, self.head_dim))?;
        let raw = qg.matmul(&k.t()?)?.reshape((b, self.heads, s, t))?;
        if fused {
            let probs = kernels::masked_softmax(&raw, Some(mask), scale as f32)?;
            let out = probs
                .reshape((b, self.kv_heads, rep * s, t))?
                .matmul(&v)?
                .reshape((b, self.heads, s, self.head_dim))?
                .transpose(1, 2)?;
            return self
                .o_proj
                .forward(&out.reshape((b, s, self.heads * self.head_dim))?);
        }
        let scores = (raw * scale)?.broadcast_add(mask)?;
        // Softmax in f32 whatever the weights' dtype (as transformers does).
        let dtype = scores.dtype();
        let scores = scores.to_dtype(DType::F32)?;
        let probs = if differentiable {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        }
        .to_dtype(dtype)?;
        let out = probs
            .reshape((b, self.kv_heads, rep * s, t))?
            .matmul(&v)?
            .reshape((b, self.heads, s, self.head_dim))?;
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
        let (g, u) = match few_rows_concat(x, &[&self.gate_proj, &self.up_proj])? {
            Some(mut gu) => {
                let u = gu.pop().expect("two products");
                (gu.pop().expect("two products"), u)
            }
            None => (self.gate_proj.forward(x)?, self.up_proj.forward(x)?),
        };
        self.down_proj.forward(&(g.silu()? * u)?)
    }
}

/// The outputs of `linears` on the same `x`, computed in one few-rows pass, when a decode
/// step allows it: few rows, nothing tracked for gradients, no adapter. The same bits as
/// each [`Linear::forward`] (see [`few_rows::matmul_t_concat`]); `None` elsewhere.
fn few_rows_concat(x: &Tensor, linears: &[&Linear]) -> candle_core::Result<Option<Vec<Tensor>>> {
    if linears
        .iter()
        .any(|l| l.adapter.is_some() || !few_rows::applies(x, &l.weight))
    {
        return Ok(None);
    }
    let dims = x.dims();
    let i = dims[dims.len() - 1];
    let weights: Vec<&Tensor> = linears.iter().map(|l| &l.weight).collect();
    let biases: Vec<Option<&Tensor>> = linears.iter().map(|l| l.bias.as_ref()).collect();
    let y = few_rows::matmul_t_concat(&x.reshape((x.elem_count() / i, i))?, &weights, &biases)?;
    let mut out = Vec::with_capacity(linears.len());
    let mut at = 0;
    for l in linears {
        let n = l.out_dim();
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank >= 1") = n;
        out.push(y.narrow(1, at, n)?.contiguous()?.reshape(shape)?);
        at += n;
    }
    Ok(Some(out))
}
