//! RMS-norm (with its backward pass) and layer norm, one pass per row, rows in parallel.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{data, rows_per_task};

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension; differentiable in `x` (not `w`).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

/// `(x - mean) / sqrt(var + eps) · w + b` over the last dimension (inference only).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3_no_bwd(&w.contiguous()?, &b.contiguous()?, &LayerNorm { eps })
}

struct RmsNorm {
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = data(x, xl, "rms_norm")?;
        let w = data(w, wl, "rms_norm weight")?;
        let d = w.len();
        let mut out = vec![0f32; x.len()];
        let chunk = d * rows_per_task(d);
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
                    let r = inv_rms(x, self.eps);
                    for ((o, x), w) in o.iter_mut().zip(x).zip(w) {
                        *o = x * r * w;
                    }
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gx = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormBack { eps: self.eps })?;
        Ok((Some(gx), None))
    }
}

/// `grad_x = r (g w) - x r³ Σ(g w x) / d`, `r = 1 / sqrt(mean(x²) + eps)`.
struct RmsNormBack {
    eps: f32,
}

impl CustomOp3 for RmsNormBack {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = data(x, xl, "rms_norm backward")?;
        let w = data(w, wl, "rms_norm backward")?;
        let g = data(g, gl, "rms_norm backward")?;
        let d = w.len();
        let mut out = vec![0f32; x.len()];
        let chunk = d * rows_per_task(d);
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .for_each(|(o, (x, g))| {
                for ((o, x), g) in o.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                    let r = inv_rms(x, self.eps);
                    let dot: f32 = x.iter().zip(g).zip(w).map(|((x, g), w)| g * w * x).sum();
                    let c = dot * r * r * r / d as f32;
                    for (((o, x), g), w) in o.iter_mut().zip(x).zip(g).zip(w) {
                        *o = r * g * w - x * c;
                    }
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = data(x, xl, "layer_norm")?;
        let w = data(w, wl, "layer_norm weight")?;
        let b = data(b, bl, "layer_norm bias")?;
        let d = w.len();
        let mut out = vec![0f32; x.len()];
        let chunk = d * rows_per_task(d);
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
                    let mean = x.iter().sum::<f32>() / d as f32;
                    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                    let r = 1.0 / (var + self.eps).sqrt();
                    for (((o, x), w), b) in o.iter_mut().zip(x).zip(w).zip(b) {
                        *o = (x - mean) * r * w + b;
                    }
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}
