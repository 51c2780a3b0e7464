//! BERT on the CPU with the runtime's fused kernels ([`expflow_models::kernels`]): the
//! query, key and value projections as one product, bias added inside the product's pass,
//! GELU, layer norm and the masked softmax each one parallel pass. Same weights and the same
//! arithmetic as candle-transformers' `BertModel` up to rounding; [`crate::TextEncoder`] uses
//! it for BERT checkpoints on the CPU while the kernels are on.

use candle_core::{D, Tensor};
use candle_nn::{Embedding, Module, VarBuilder, embedding, layer_norm, linear};
use candle_transformers::models::bert::{Config, HiddenAct};
use expflow_models::kernels;

struct Norm {
    w: Tensor,
    b: Tensor,
    eps: f32,
}

impl Norm {
    fn load(vb: VarBuilder, c: &Config) -> candle_core::Result<Norm> {
        let n = layer_norm(c.hidden_size, c.layer_norm_eps, vb)?;
        let b = match n.bias() {
            Some(b) => b.clone(),
            None => n.weight().zeros_like()?,
        };
        Ok(Norm {
            w: n.weight().clone(),
            b,
            eps: c.layer_norm_eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        kernels::layer_norm(x, &self.w, &self.b, self.eps)
    }
}

struct Dense {
    w: Tensor,
    b: Option<Tensor>,
}

impl Dense {
    fn load(vb: VarBuilder, i: usize, o: usize) -> candle_core::Result<Dense> {
        let l = linear(i, o, vb)?;
        Ok(Dense {
            w: l.weight().clone(),
            b: l.bias().cloned(),
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        kernels::linear(x, &self.w, self.b.as_ref(), None)
    }
}

struct Layer {
    qkv: Dense,
    out: Dense,
    attn_norm: Norm,
    inter: Dense,
    down: Dense,
    norm: Norm,
}

/// The BERT encoder (no pooler): hidden states of the last layer.
pub struct BertCpu {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    emb_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    act: HiddenAct,
}

impl BertCpu {
    /// Loads from the same tensor names (and `bert.` or `{model_type}.` prefixes) as
    /// candle-transformers' `BertModel::load`.
    pub fn load(vb: VarBuilder, c: &Config) -> candle_core::Result<BertCpu> {
        let vb = if vb.contains_tensor("bert") {
            vb.pp("bert")
        } else {
            vb
        };
        match Self::load_at(vb.clone(), c) {
            Ok(m) => Ok(m),
            Err(e) => match &c.model_type {
                Some(t) => Self::load_at(vb.pp(t), c).map_err(|_| e),
                None => Err(e),
            },
        }
    }

    fn load_at(vb: VarBuilder, c: &Config) -> candle_core::Result<BertCpu> {
        let h = c.hidden_size;
        let e = vb.pp("embeddings");
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let v = vb.pp(format!("encoder.layer.{l}"));
            let a = v.pp("attention");
            let parts = ["query", "key", "value"].map(|n| Dense::load(a.pp("self").pp(n), h, h));
            let [q, k, vv] = parts;
            let (q, k, vv) = (q?, k?, vv?);
            let bias = match (&q.b, &k.b, &vv.b) {
                (Some(qb), Some(kb), Some(vb)) => Some(Tensor::cat(&[qb, kb, vb], 0)?),
                _ => None,
            };
            layers.push(Layer {
                qkv: Dense {
                    w: Tensor::cat(&[&q.w, &k.w, &vv.w], 0)?,
                    b: bias,
                },
                out: Dense::load(a.pp("output.dense"), h, h)?,
                attn_norm: Norm::load(a.pp("output.LayerNorm"), c)?,
                inter: Dense::load(v.pp("intermediate.dense"), h, c.intermediate_size)?,
                down: Dense::load(v.pp("output.dense"), c.intermediate_size, h)?,
                norm: Norm::load(v.pp("output.LayerNorm"), c)?,
            });
        }
        Ok(BertCpu {
            word: embedding(c.vocab_size, h, e.pp("word_embeddings"))?,
            position: embedding(c.max_position_embeddings, h, e.pp("position_embeddings"))?,
            token_type: embedding(c.type_vocab_size, h, e.pp("token_type_embeddings"))?,
            emb_norm: Norm::load(e.pp("LayerNorm"), c)?,
            layers,
            heads: c.num_attention_heads,
            act: c.hidden_act,
        })
    }

    /// Hidden states `(b, t, hidden)` of `ids` `(b, t)` with token types and a `(b, t)` mask
    /// (1 for real tokens).
    pub fn forward(
        &self,
        ids: &Tensor,
        types: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let positions = Tensor::arange(0u32, t as u32, ids.device())?;
        let x = (self.word.forward(ids)? + self.token_type.forward(types)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        let mut x = self.emb_norm.forward(&x)?;
        // As transformers: (1 - mask) · the lowest f32, added to the scores.
        let mask =
            ((1.0 - mask.to_dtype(x.dtype())?)? * f64::from(f32::MIN))?.reshape((b, 1, 1, t))?;
        let hidden = x.dim(D::Minus1)?;
        let hd = hidden / self.heads;
        let scale = 1.0 / (hd as f32).sqrt();
        for l in &self.layers {
            let qkv = l
                .qkv
                .forward(&x)?
                .reshape((b, t, 3, self.heads, hd))?
                .permute((2, 0, 3, 1, 4))?;
            let q = qkv.get(0)?.contiguous()?;
            let k = qkv.get(1)?.contiguous()?;
            let v = qkv.get(2)?.contiguous()?;
            let probs = kernels::masked_softmax(&q.matmul(&k.t()?)?, Some(&mask), scale)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, hidden))?;
            x = l.attn_norm.forward(&(l.out.forward(&ctx)? + &x)?)?;
            let i = l.inter.forward(&x)?;
            let i = match self.act {
                HiddenAct::Gelu => kernels::gelu_erf(&i)?,
                HiddenAct::GeluApproximate => i.gelu()?,
                HiddenAct::Relu => i.relu()?,
            };
            x = l.norm.forward(&(l.down.forward(&i)? + &x)?)?;
        }
        Ok(x)
    }
}
