//! DeBERTa (v1, `model_type: deberta`), the architecture of `microsoft/deberta-large-mnli`
//! that ExpStar's BERTScore uses. candle-transformers has only DeBERTa-v2/v3; v1 differs in
//! its weights (one fused `in_proj` with per-head q/k/v blocks, `q_bias`/`v_bias`, separate
//! `pos_proj`/`pos_q_proj`) and in its relative positions (plain `q - k`, no log buckets, no
//! layer norm of the relative embeddings). Written from the DeBERTa paper (He et al. 2021)
//! and checked against transformers' `DebertaModel` (tests/bertscore_models.rs).
//!
//! Per layer: disentangled self-attention (content→content, content→position `c2p`,
//! position→content `p2c`, the query scaled by `sqrt(d · (1 + |pos_att_type|))`), then the
//! BERT feed-forward block. Inference only; no dropout; `talking_head` is refused.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Activation, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// The fields of a DeBERTa v1 `config.json` this model reads.
#[derive(Clone, Debug, Deserialize)]
pub struct DebertaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub relative_attention: bool,
    #[serde(default = "minus_one")]
    pub max_relative_positions: i64,
    #[serde(default, deserialize_with = "pos_att_type")]
    pub pos_att_type: Vec<String>,
    #[serde(default = "yes")]
    pub position_biased_input: bool,
    #[serde(default)]
    pub embedding_size: Option<usize>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub talking_head: bool,
}

fn gelu() -> Activation {
    Activation::Gelu
}
fn eps() -> f64 {
    1e-7
}
fn minus_one() -> i64 {
    -1
}
fn yes() -> bool {
    true
}

/// `pos_att_type` as a list (`["c2p", "p2c"]`), a `|`-separated string, or null.
fn pos_att_type<'de, De: serde::Deserializer<'de>>(
    d: De,
) -> std::result::Result<Vec<String>, De::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Option::<Form>::deserialize(d)? {
        None => Vec::new(),
        Some(Form::List(v)) => v.into_iter().map(|s| s.trim().to_lowercase()).collect(),
        Some(Form::Text(s)) => s
            .split('|')
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect(),
    })
}

impl DebertaConfig {
    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// `max_relative_positions`, or `max_position_embeddings` when it is below 1.
    fn max_rel(&self) -> usize {
        if self.max_relative_positions < 1 {
            self.max_position_embeddings
        } else {
            self.max_relative_positions as usize
        }
    }

    fn c2p(&self) -> bool {
        self.pos_att_type.iter().any(|p| p == "c2p")
    }

    fn p2c(&self) -> bool {
        self.pos_att_type.iter().any(|p| p == "p2c")
    }
}

fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
    candle_nn::layer_norm(size, eps, vb)
}

struct Embeddings {
    words: Embedding,
    positions: Option<Embedding>,
    token_type: Option<Embedding>,
    proj: Option<Linear>,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(vb: VarBuilder, c: &DebertaConfig) -> candle_core::Result<Embeddings> {
        let emb = c.embedding_size.unwrap_or(c.hidden_size);
        Ok(Embeddings {
            words: candle_nn::embedding(c.vocab_size, emb, vb.pp("word_embeddings"))?,
            positions: c
                .position_biased_input
                .then(|| {
                    candle_nn::embedding(
                        c.max_position_embeddings,
                        emb,
                        vb.pp("position_embeddings"),
                    )
                })
                .transpose()?,
            token_type: (c.type_vocab_size > 0)
                .then(|| {
                    candle_nn::embedding(c.type_vocab_size, emb, vb.pp("token_type_embeddings"))
                })
                .transpose()?,
            proj: (emb != c.hidden_size)
                .then(|| candle_nn::linear_no_bias(emb, c.hidden_size, vb.pp("embed_proj")))
                .transpose()?,
            norm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    /// `ids` `[b, t]`, `mask` `[b, t]` as f32.
    fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let mut x = self.words.forward(ids)?;
        if let Some(p) = &self.positions {
            let pos = Tensor::arange(0u32, t as u32, ids.device())?;
            x = x.broadcast_add(&p.forward(&pos)?)?;
        }
        if let Some(tt) = &self.token_type {
            // Token type 0 for every token, as bert-score and the MNLI checkpoints use it.
            let zero = Tensor::zeros(1, DType::U32, ids.device())?;
            x = x.broadcast_add(&tt.forward(&zero)?)?;
        }
        if let Some(p) = &self.proj {
            x = p.forward(&x)?;
        }
        self.norm.forward(&x)?.broadcast_mul(&mask.unsqueeze(2)?)
    }
}

struct Attention {
    in_proj: Linear,
    q_bias: Tensor,
    v_bias: Tensor,
    pos_proj: Option<Linear>,
    pos_q_proj: Option<Linear>,
    out: Linear,
    out_norm: LayerNorm,
    heads: usize,
    head_dim: usize,
    scale_factor: usize,
}

impl Attention {
    fn load(vb: VarBuilder, c: &DebertaConfig) -> candle_core::Result<Attention> {
        let s = vb.pp("self");
        let all = c.num_attention_heads * c.head_dim();
        let rel = c.relative_attention;
        Ok(Attention {
            in_proj: candle_nn::linear_no_bias(c.hidden_size, 3 * all, s.pp("in_proj"))?,
            q_bias: s.get(all, "q_bias")?,
            v_bias: s.get(all, "v_bias")?,
            pos_proj: (rel && c.c2p())
                .then(|| candle_nn::linear_no_bias(c.hidden_size, all, s.pp("pos_proj")))
                .transpose()?,
            pos_q_proj: (rel && c.p2c())
                .then(|| candle_nn::linear(c.hidden_size, all, s.pp("pos_q_proj")))
                .transpose()?,
            out: candle_nn::linear(all, c.hidden_size, vb.pp("output.dense"))?,
            out_norm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: c.num_attention_heads,
            head_dim: c.head_dim(),
            scale_factor: 1 + c.pos_att_type.len(),
        })
    }

    /// `[n, heads * d]` → `[heads, n, d]` (for the relative embeddings).
    fn rel_heads(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        x.reshape((n, self.heads, self.head_dim))?
            .transpose(0, 1)?
            .contiguous()
    }

    /// `h` `[b, t, hidden]`; `keep` `[b, 1, t, t]` (u8, 1 = attend); `rel` the relative
    /// embeddings cut to `[2 span, hidden]` with the c2p gather index `[t, t]` (u32), or None.
    fn forward(
        &self,
        h: &Tensor,
        keep: &Tensor,
        rel: Option<(&Tensor, &Tensor)>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = h.dims3()?;
        let (nh, d) = (self.heads, self.head_dim);
        // in_proj's output holds, per head, that head's q, k and v next to each other.
        let qkv = self
            .in_proj
            .forward(h)?
            .reshape((b, t, nh, 3 * d))?
            .transpose(1, 2)?;
        let bias = |v: &Tensor| v.reshape((1, nh, 1, d));
        let q = qkv.narrow(3, 0, d)?.broadcast_add(&bias(&self.q_bias)?)?;
        let k = qkv.narrow(3, d, d)?.contiguous()?;
        let v = qkv
            .narrow(3, 2 * d, d)?
            .broadcast_add(&bias(&self.v_bias)?)?
            .contiguous()?;
        let scale = ((d * self.scale_factor) as f32).sqrt() as f64;
        let q = (q / scale)?.contiguous()?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some((rel_emb, c2p_index)) = rel {
            let index = c2p_index
                .unsqueeze(0)?
                .unsqueeze(0)?
                .broadcast_as((b, nh, t, t))?;
            if let Some(pp) = &self.pos_proj {
                let pos_k = self.rel_heads(&pp.forward(rel_emb)?)?.unsqueeze(0)?;
                let c2p = q.broadcast_matmul(&pos_k.t()?)?.contiguous()?;
                scores = (scores + c2p.gather(&index.contiguous()?, 3)?)?;
            }
            if let Some(pq) = &self.pos_q_proj {
                let pos_q = (self.rel_heads(&pq.forward(rel_emb)?)? / scale)?.unsqueeze(0)?;
                let p2c = k.broadcast_matmul(&pos_q.t()?)?.contiguous()?;
                // p2c[q, k] = key_k · pos_q[clamp(q - k + span)]: gather along the key rows
                // with the transposed index, then transpose back.
                let index_t = c2p_index
                    .t()?
                    .unsqueeze(0)?
                    .unsqueeze(0)?
                    .broadcast_as((b, nh, t, t))?
                    .contiguous()?;
                scores = (scores + p2c.gather(&index_t, 3)?.transpose(2, 3)?)?;
            }
        }
        let floor = Tensor::new(f32::MIN, h.device())?.broadcast_as(scores.shape())?;
        let scores = keep
            .broadcast_as(scores.shape())?
            .where_cond(&scores, &floor)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, nh * d))?;
        self.out_norm.forward(&(self.out.forward(&ctx)? + h)?)
    }
}

struct Layer {
    attention: Attention,
    intermediate: Linear,
    act: Activation,
    output: Linear,
    norm: LayerNorm,
}

impl Layer {
    fn load(vb: VarBuilder, c: &DebertaConfig) -> candle_core::Result<Layer> {
        Ok(Layer {
            attention: Attention::load(vb.pp("attention"), c)?,
            intermediate: candle_nn::linear(
                c.hidden_size,
                c.intermediate_size,
                vb.pp("intermediate.dense"),
            )?,
            act: c.hidden_act,
            output: candle_nn::linear(c.intermediate_size, c.hidden_size, vb.pp("output.dense"))?,
            norm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("output.LayerNorm"))?,
        })
    }

    fn forward(
        &self,
        h: &Tensor,
        keep: &Tensor,
        rel: Option<(&Tensor, &Tensor)>,
    ) -> candle_core::Result<Tensor> {
        let a = self.attention.forward(h, keep, rel)?;
        let x = self.act.forward(&self.intermediate.forward(&a)?)?;
        self.norm.forward(&(self.output.forward(&x)? + a)?)
    }
}

/// A DeBERTa v1 encoder: embeddings and `num_hidden_layers` layers.
pub struct DebertaModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    rel_embeddings: Option<Tensor>,
    max_rel: usize,
    device: Device,
}

impl DebertaModel {
    /// Loads from `vb` (at the level that holds `embeddings` and `encoder`).
    pub fn load(vb: VarBuilder, c: &DebertaConfig) -> candle_core::Result<DebertaModel> {
        if c.talking_head {
            candle_core::bail!("DeBERTa with `talking_head: true` is not supported");
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            candle_core::bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden_size,
                c.num_attention_heads
            );
        }
        let enc = vb.pp("encoder");
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(enc.pp(format!("layer.{i}")), c))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let max_rel = c.max_rel();
        let rel_embeddings = c
            .relative_attention
            .then(|| enc.get((2 * max_rel, c.hidden_size), "rel_embeddings.weight"))
            .transpose()?;
        Ok(DebertaModel {
            embeddings: Embeddings::load(vb.pp("embeddings"), c)?,
            layers,
            rel_embeddings,
            max_rel,
            device: vb.device().clone(),
        })
    }

    /// Last-layer states `[b, t, hidden]` of `ids` `[b, t]` (u32) with `mask` `[b, t]` (u32,
    /// 1 for a token, 0 for padding).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let maskf = mask.to_dtype(DType::F32)?;
        let mut h = self.embeddings.forward(ids, &maskf)?;
        // Query i may attend to key j when both are tokens.
        let keep = maskf
            .unsqueeze(2)?
            .broadcast_mul(&maskf.unsqueeze(1)?)?
            .unsqueeze(1)?
            .ne(0f32)?;
        let rel = match &self.rel_embeddings {
            None => None,
            Some(table) => {
                let span = t.min(self.max_rel);
                let cut = table.narrow(0, self.max_rel - span, 2 * span)?;
                // c2p index [q, k] = clamp(q - k + span, 0, 2 span - 1).
                let mut index = Vec::with_capacity(t * t);
                for q in 0..t as i64 {
                    for k in 0..t as i64 {
                        index.push((q - k + span as i64).clamp(0, 2 * span as i64 - 1) as u32);
                    }
                }
                let index = Tensor::from_vec(index, (t, t), &self.device)?;
                Some((cut, index))
            }
        };
        for layer in &self.layers {
            h = layer.forward(&h, &keep, rel.as_ref().map(|(c, i)| (c, i)))?;
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pos_att_type_reads_lists_strings_and_null() {
        let parse = |v: &str| -> Vec<String> {
            let json = format!(
                r#"{{"vocab_size":5,"hidden_size":4,"num_hidden_layers":1,"num_attention_heads":2,
                   "intermediate_size":8,"max_position_embeddings":8,"pos_att_type":{v}}}"#
            );
            serde_json::from_str::<DebertaConfig>(&json)
                .unwrap()
                .pos_att_type
        };
        assert_eq!(parse(r#"["c2p","p2c"]"#), ["c2p", "p2c"]);
        assert_eq!(parse(r#""p2c|c2p""#), ["p2c", "c2p"]);
        assert!(parse("null").is_empty());
    }

    #[test]
    fn max_rel_falls_back_to_max_position_embeddings() {
        let c: DebertaConfig = serde_json::from_str(
            r#"{"vocab_size":5,"hidden_size":4,"num_hidden_layers":1,"num_attention_heads":2,
               "intermediate_size":8,"max_position_embeddings":12}"#,
        )
        .unwrap();
        assert_eq!(c.max_rel(), 12);
        assert!(c.position_biased_input && !c.relative_attention);
    }
}
