//! Softmax of attention scores with scale and additive mask, and the log-probabilities of
//! target tokens (the SFT loss), each in one pass per row with its own backward pass.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{data, rows_per_task, with_data};

/// `softmax(scores · scale + mask)` over the last dimension. `scores` is `(b, h, s, t)`;
/// `mask`, when given, is `(b or 1, 1, s or 1, t)` and broadcast over heads (and queries).
/// Differentiable in `scores`.
pub fn masked_softmax(scores: &Tensor, mask: Option<&Tensor>, scale: f32) -> Result<Tensor> {
    let (b, h, s, t) = scores.dims4()?;
    let mask = match mask {
        Some(m) => {
            let (mb, mh, ms, mt) = m.dims4()?;
            if !(mb == 1 || mb == b) || mh != 1 || !(ms == 1 || ms == s) || mt != t {
                candle_core::bail!(
                    "kernel masked_softmax: mask of shape {:?} does not broadcast to scores {:?}",
                    m.dims(),
                    scores.dims()
                );
            }
            Some((m.contiguous()?, mb, ms))
        }
        None => None,
    };
    scores.contiguous()?.apply_op1(MaskedSoftmax {
        mask,
        heads: h,
        queries: s,
        batch: b,
        scale,
    })
}

struct MaskedSoftmax {
    /// The mask and its batch and query sizes (1 where broadcast).
    mask: Option<(Tensor, usize, usize)>,
    batch: usize,
    heads: usize,
    queries: usize,
    scale: f32,
}

/// `e^d`, and 0 below -104, where the f32 result rounds to 0 anyway (the same bits): a
/// masked score (the mask adds f32::MIN) would otherwise take libm's slow underflow path,
/// which a causal mask sends half of a training step's attention scores down.
#[inline(always)]
fn exp_or_zero(d: f32) -> f32 {
    if d < -104.0 { 0.0 } else { d.exp() }
}

/// `softmax(x · scale + m)` of one row into `o`.
#[inline(always)]
pub(super) fn softmax_row(o: &mut [f32], x: &[f32], m: Option<&[f32]>, scale: f32) {
    match m {
        Some(m) => {
            for ((o, x), m) in o.iter_mut().zip(x).zip(m) {
                *o = x * scale + m;
            }
        }
        None => {
            for (o, x) in o.iter_mut().zip(x) {
                *o = x * scale;
            }
        }
    }
    let max = o.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for o in o.iter_mut() {
        *o = exp_or_zero(*o - max);
        sum += *o;
    }
    for o in o.iter_mut() {
        *o /= sum;
    }
}

/// Softmax of each row of `x` (rows of `t`) into `out`; `m`: the mask with its batch and
/// query sizes.
fn softmax_rows(
    out: &mut [f32],
    x: &[f32],
    t: usize,
    m: Option<(&[f32], usize, usize)>,
    heads: usize,
    queries: usize,
    scale: f32,
) {
    let per = rows_per_task(t);
    out.par_chunks_mut(t * per)
        .zip(x.par_chunks(t * per))
        .enumerate()
        .for_each(|(c, (o, x))| {
            for (j, (o, x)) in o.chunks_mut(t).zip(x.chunks(t)).enumerate() {
                let row = c * per + j;
                let mrow = m.map(|(m, mb, ms)| {
                    let bi = if mb == 1 { 0 } else { row / (heads * queries) };
                    let qi = if ms == 1 { 0 } else { row % queries };
                    let off = (bi * ms + qi) * t;
                    &m[off..off + t]
                });
                softmax_row(o, x, mrow, scale);
            }
        });
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(x, xl, "masked_softmax")?;
        let t = xl.dims()[3];
        let mut out = vec![0f32; x.len()];
        let (h, q, scale) = (self.heads, self.queries, self.scale);
        match &self.mask {
            Some((m, mb, ms)) => with_data(m, "masked_softmax mask", |m| {
                softmax_rows(&mut out, x, t, Some((m, *mb, *ms)), h, q, scale);
                Ok(())
            })?,
            None => softmax_rows(&mut out, x, t, None, h, q, scale),
        }
        debug_assert_eq!(x.len(), self.batch * self.heads * self.queries * t);
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBack { scale: self.scale })?;
        Ok(Some(g))
    }
}

/// `scale · p (g - Σ g p)` per row.
struct SoftmaxBack {
    scale: f32,
}

impl CustomOp2 for SoftmaxBack {
    fn name(&self) -> &'static str {
        "masked-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        p: &CpuStorage,
        pl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = data(p, pl, "softmax backward")?;
        let g = data(g, gl, "softmax backward")?;
        let t = *pl.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; p.len()];
        let chunk = t * rows_per_task(t);
        out.par_chunks_mut(chunk)
            .zip(p.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .for_each(|(o, (p, g))| {
                for ((o, p), g) in o.chunks_mut(t).zip(p.chunks(t)).zip(g.chunks(t)) {
                    let dot: f32 = p.iter().zip(g).map(|(p, g)| p * g).sum();
                    for ((o, p), g) in o.iter_mut().zip(p).zip(g) {
                        *o = self.scale * p * (g - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(out), pl.shape().clone()))
    }
}

/// `log softmax(logits[rows[k]])[targets[k]]` for each k, from `logits` `(n, vocab)`:
/// a `(k,)` tensor, differentiable in `logits`.
pub fn token_logps(logits: &Tensor, rows: &[u32], targets: &[u32]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if rows.len() != targets.len() {
        candle_core::bail!(
            "kernel token_logps: {} rows but {} targets",
            rows.len(),
            targets.len()
        );
    }
    if let Some(r) = rows.iter().find(|&&r| r as usize >= n) {
        candle_core::bail!("kernel token_logps: row {r} out of {n}");
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("kernel token_logps: target {t} out of a vocabulary of {v}");
    }
    logits.contiguous()?.apply_op1(TokenLogps {
        rows: rows.to_vec(),
        targets: targets.to_vec(),
    })
}

struct TokenLogps {
    rows: Vec<u32>,
    targets: Vec<u32>,
}

/// `(max, ln Σ exp(x - max))` of a row.
fn log_sum_exp(x: &[f32]) -> (f32, f32) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = x.iter().map(|v| (v - max).exp()).sum();
    (max, sum.ln())
}

impl CustomOp1 for TokenLogps {
    fn name(&self) -> &'static str {
        "token-logps"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(x, xl, "token_logps")?;
        let v = xl.dims()[1];
        let out: Vec<f32> = self
            .rows
            .par_iter()
            .zip(&self.targets)
            .map(|(&r, &t)| {
                let row = &x[r as usize * v..(r as usize + 1) * v];
                let (max, lse) = log_sum_exp(row);
                (row[t as usize] - max) - lse
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(self.rows.len())))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.to_vec1::<f32>()?;
        let (n, v) = x.dims2()?;
        let mut by_row: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (k, &r) in self.rows.iter().enumerate() {
            by_row[r as usize].push(k);
        }
        let mut out = vec![0f32; n * v];
        with_data(x, "token_logps backward", |x| {
            out.par_chunks_mut(v)
                .zip(x.par_chunks(v))
                .zip(&by_row)
                .for_each(|((o, x), ks)| {
                    if ks.is_empty() {
                        return;
                    }
                    let (max, lse) = log_sum_exp(x);
                    let total: f32 = ks.iter().map(|&k| g[k]).sum();
                    for (o, x) in o.iter_mut().zip(x) {
                        *o = -total * ((x - max) - lse).exp();
                    }
                    for &k in ks {
                        o[self.targets[k] as usize] += g[k];
                    }
                });
            Ok(())
        })?;
        Ok(Some(Tensor::from_vec(out, (n, v), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_or_zero_is_exp_to_the_bit() {
        let mut d = -120.0f32;
        while d < 1.0 {
            assert_eq!(super::exp_or_zero(d).to_bits(), d.exp().to_bits(), "at {d}");
            d += 0.0137;
        }
        for d in [f32::MIN, f32::NEG_INFINITY, -104.0, -103.97, 0.0] {
            assert_eq!(super::exp_or_zero(d).to_bits(), d.exp().to_bits(), "at {d}");
        }
    }
}
