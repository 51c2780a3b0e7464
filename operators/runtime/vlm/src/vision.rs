//! The Qwen2.5-VL vision tower (`Qwen2_5_VisionTransformerPretrainedModel`): a Conv3d patch
//! embedding (a matmul, since stride equals kernel), 2-D rotary embeddings, blocks with
//! windowed or full attention over the window-permuted sequence, and the patch merger.

use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::config::VisionConfig;
use crate::error::{Result, VlmError};

#[derive(Clone, Debug)]
struct Block {
    norm1: Tensor,
    norm2: Tensor,
    qkv: Linear,
    proj: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The vision encoder with its weights.
#[derive(Clone, Debug)]
pub struct VisionTower {
    pub config: VisionConfig,
    /// `(hidden, C·T·p·p)`: the Conv3d kernel, flattened.
    patch_embed: Tensor,
    blocks: Vec<Block>,
    ln_q: Tensor,
    mlp0: Linear,
    mlp2: Linear,
    inv_freq: Vec<f32>,
}

/// Which tokens attend together, and in which order, for a set of grids.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowLayout {
    /// Merged-token permutation into window order (`window_index` in transformers).
    pub window_index: Vec<u32>,
    /// Window boundaries in patches, in permuted order, empty windows dropped.
    pub window_bounds: Vec<usize>,
    /// Frame boundaries in patches (full attention).
    pub frame_bounds: Vec<usize>,
}

/// Window permutation and attention segments for `grids`, as transformers'
/// `get_vision_window_index` and `get_vision_cu_seqlens` compute them.
pub fn window_layout(
    grids: &[[usize; 3]],
    merge: usize,
    window_size: usize,
    patch_size: usize,
) -> WindowLayout {
    let ws = window_size / merge / patch_size;
    let unit = merge * merge;
    let mut window_index = Vec::new();
    let mut window_bounds = vec![0usize];
    let mut frame_bounds = vec![0usize];
    let mut offset = 0usize;
    for &[t, h, w] in grids {
        let (lh, lw) = (h / merge, w / merge);
        let (nh, nw) = (lh.div_ceil(ws), lw.div_ceil(ws));
        for f in 0..t {
            for wy in 0..nh {
                for wx in 0..nw {
                    let mut n = 0;
                    for y in wy * ws..((wy + 1) * ws).min(lh) {
                        for x in wx * ws..((wx + 1) * ws).min(lw) {
                            window_index.push((offset + f * lh * lw + y * lw + x) as u32);
                            n += 1;
                        }
                    }
                    if n > 0 {
                        let last = *window_bounds.last().unwrap_or(&0);
                        window_bounds.push(last + n * unit);
                    }
                }
            }
            let last = *frame_bounds.last().unwrap_or(&0);
            frame_bounds.push(last + h * w);
        }
        offset += t * lh * lw;
    }
    WindowLayout {
        window_index,
        window_bounds,
        frame_bounds,
    }
}

/// `(h, w)` patch coordinates of every patch, in the processor's block-major order.
fn patch_positions(grids: &[[usize; 3]], merge: usize) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for &[t, h, w] in grids {
        for _ in 0..t {
            for bh in 0..h / merge {
                for bw in 0..w / merge {
                    for mh in 0..merge {
                        for mw in 0..merge {
                            out.push(((bh * merge + mh) as u32, (bw * merge + mw) as u32));
                        }
                    }
                }
            }
        }
    }
    out
}

fn rotate_half(x: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// `x · cos + rotate_half(x) · sin`, in f32 as transformers does for the vision tower.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    (x.broadcast_mul(cos)? + rotate_half(&x)?.broadcast_mul(sin)?)?.to_dtype(dtype)
}

impl VisionTower {
    /// Loads the tower from `vb` (its prefix: `visual` or `model.visual`).
    pub fn load(config: &VisionConfig, vb: VarBuilder) -> Result<VisionTower> {
        let c = config;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let patch_dim = c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size;
        let patch_embed = vb
            .get(
                (
                    h,
                    c.in_channels,
                    c.temporal_patch_size,
                    c.patch_size,
                    c.patch_size,
                ),
                "patch_embed.proj.weight",
            )?
            .reshape((h, patch_dim))?;
        let mut blocks = Vec::with_capacity(c.depth);
        for b in 0..c.depth {
            let bv = vb.pp(format!("blocks.{b}"));
            blocks.push(Block {
                norm1: bv.get(h, "norm1.weight")?,
                norm2: bv.get(h, "norm2.weight")?,
                qkv: candle_nn::linear(h, 3 * h, bv.pp("attn.qkv"))?,
                proj: candle_nn::linear(h, h, bv.pp("attn.proj"))?,
                gate: candle_nn::linear(h, i, bv.pp("mlp.gate_proj"))?,
                up: candle_nn::linear(h, i, bv.pp("mlp.up_proj"))?,
                down: candle_nn::linear(i, h, bv.pp("mlp.down_proj"))?,
            });
        }
        let merged = h * c.merge_unit();
        let m = vb.pp("merger");
        let ln_q = m.get(h, "ln_q.weight")?;
        let mlp0 = candle_nn::linear(merged, merged, m.pp("mlp.0"))?;
        let mlp2 = candle_nn::linear(merged, c.out_hidden_size, m.pp("mlp.2"))?;
        // 1 / theta^(2j / (head_dim/2)) for j < head_dim/4, in f32 as transformers.
        let half = c.head_dim() / 2;
        let inv_freq = (0..half / 2)
            .map(|j| 1.0 / (c.rope_theta as f32).powf((2 * j) as f32 / half as f32))
            .collect();
        Ok(VisionTower {
            config: c.clone(),
            patch_embed,
            blocks,
            ln_q,
            mlp0,
            mlp2,
            inv_freq,
        })
    }

    /// Merged features `(Σ t·h·w / merge², out_hidden_size)` for `pixels`
    /// `(Σ t·h·w, C·T·p·p)` holding the patches of `grids` one after another.
    pub fn forward(&self, pixels: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        let c = &self.config;
        let n: usize = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
        let (rows, dim) = pixels.dims2()?;
        if rows != n || dim != self.patch_embed.dim(1)? {
            return Err(VlmError::Request(format!(
                "pixel values have shape ({rows}, {dim}); the grids {grids:?} need ({n}, {})",
                self.patch_embed.dim(1)?
            )));
        }
        if let Some(g) = grids
            .iter()
            .find(|g| g[1] % c.spatial_merge_size != 0 || g[2] % c.spatial_merge_size != 0)
        {
            return Err(VlmError::Request(format!(
                "grid {g:?}: height and width must be multiples of spatial_merge_size {}",
                c.spatial_merge_size
            )));
        }
        let device = pixels.device();
        let dtype = self.patch_embed.dtype();
        let unit = c.merge_unit();
        let layout = window_layout(grids, c.spatial_merge_size, c.window_size, c.patch_size);
        let order = Tensor::from_slice(&layout.window_index, layout.window_index.len(), device)?;
        let permute = |x: &Tensor| -> candle_core::Result<Tensor> {
            let d = x.dim(1)?;
            x.reshape((n / unit, unit, d))?
                .index_select(&order, 0)?
                .reshape((n, d))
        };

        let x = pixels.to_dtype(dtype)?.matmul(&self.patch_embed.t()?)?;
        let mut x = permute(&x)?;
        let (cos, sin) = self.rope_tables(grids, device)?;
        let (cos, sin) = (permute(&cos)?, permute(&sin)?);
        for (i, block) in self.blocks.iter().enumerate() {
            let bounds = if c.fullatt_block_indexes.contains(&i) {
                &layout.frame_bounds
            } else {
                &layout.window_bounds
            };
            x = self.block(block, &x, &cos, &sin, bounds)?;
        }
        let x = candle_nn::ops::rms_norm(&x.contiguous()?, &self.ln_q, 1e-6)?;
        let x = x.reshape((n / unit, unit * c.hidden_size))?;
        let x = self.mlp2.forward(&self.mlp0.forward(&x)?.gelu_erf()?)?;
        let mut reverse = vec![0u32; layout.window_index.len()];
        for (pos, &idx) in layout.window_index.iter().enumerate() {
            reverse[idx as usize] = pos as u32;
        }
        let reverse = Tensor::from_vec(reverse, n / unit, device)?;
        Ok(x.index_select(&reverse, 0)?)
    }

    /// `cos`, `sin` `(n, head_dim)` in f32: `[h·inv, w·inv]` twice, per patch.
    fn rope_tables(&self, grids: &[[usize; 3]], device: &Device) -> Result<(Tensor, Tensor)> {
        let pos = patch_positions(grids, self.config.spatial_merge_size);
        let q = self.inv_freq.len();
        let mut freqs = Vec::with_capacity(pos.len() * 4 * q);
        for &(h, w) in &pos {
            for _ in 0..2 {
                freqs.extend(self.inv_freq.iter().map(|f| h as f32 * f));
                freqs.extend(self.inv_freq.iter().map(|f| w as f32 * f));
            }
        }
        let freqs = Tensor::from_vec(freqs, (pos.len(), 4 * q), device)?;
        Ok((freqs.cos()?, freqs.sin()?))
    }

    fn block(
        &self,
        b: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        bounds: &[usize],
    ) -> Result<Tensor> {
        let normed = candle_nn::ops::rms_norm(&x.contiguous()?, &b.norm1, 1e-6)?;
        let x = (x + self.attention(b, &normed, cos, sin, bounds)?)?;
        let normed = candle_nn::ops::rms_norm(&x.contiguous()?, &b.norm2, 1e-6)?;
        let mlp = b
            .down
            .forward(&(b.gate.forward(&normed)?.silu()? * b.up.forward(&normed)?)?)?;
        Ok((x + mlp)?)
    }

    fn attention(
        &self,
        b: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        bounds: &[usize],
    ) -> Result<Tensor> {
        let (n, h) = x.dims2()?;
        let heads = self.config.num_heads;
        let hd = h / heads;
        let qkv = b.qkv.forward(x)?.reshape((n, 3, heads, hd))?;
        let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
        let q = rope(&qkv.i((.., 0))?, &cos, &sin)?;
        let k = rope(&qkv.i((.., 1))?, &cos, &sin)?;
        let v = qkv.i((.., 2))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut outs = Vec::with_capacity(bounds.len());
        for seg in bounds.windows(2) {
            let (s, len) = (seg[0], seg[1] - seg[0]);
            let part = |t: &Tensor| t.narrow(0, s, len)?.transpose(0, 1)?.contiguous();
            let (q, k, v) = (part(&q)?, part(&k)?, part(&v)?);
            let scores = (q.matmul(&k.t()?)? * scale)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
                .to_dtype(v.dtype())?;
            let o = probs.matmul(&v)?.transpose(0, 1)?.reshape((len, h))?;
            outs.push(o);
        }
        let out = Tensor::cat(&outs, 0)?;
        Ok(b.proj.forward(&out)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_layout_matches_a_hand_computed_case() {
        // One image of 4x6 patches = 2x3 merged tokens; windows of 2 merged tokens a side.
        let l = window_layout(&[[1, 4, 6]], 2, 56, 14);
        // Windows: rows 0-1 x cols 0-1 -> tokens 0,1,3,4; then cols 2 -> tokens 2,5.
        assert_eq!(l.window_index, vec![0, 1, 3, 4, 2, 5]);
        assert_eq!(l.window_bounds, vec![0, 16, 24]);
        assert_eq!(l.frame_bounds, vec![0, 24]);
        // A second image is offset and gets its own windows and frames.
        let l = window_layout(&[[1, 4, 6], [2, 2, 2]], 2, 56, 14);
        assert_eq!(l.window_index, vec![0, 1, 3, 4, 2, 5, 6, 7]);
        assert_eq!(l.window_bounds, vec![0, 16, 24, 28, 32]);
        assert_eq!(l.frame_bounds, vec![0, 24, 28, 32]);
    }
}
