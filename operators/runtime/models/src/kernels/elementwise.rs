//! Element-wise kernels, in parallel: rotary embeddings (with their backward pass), SwiGLU's
//! `silu(g) · u` (with its backward pass) and the erf form of GELU (inference).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{data, rows_per_task, with_data};

/// Elements per parallel task of the plain element-wise kernels.
const CHUNK: usize = 16384;

/// Rotary embeddings, "rotate half" form: `x · cos + rotate_half(x) · sin` for `x`
/// `(b, h, s, d)` and `cos`/`sin` `(b or 1, 1, s, d)`. Differentiable in `x`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, _, s, d) = x.dims4()?;
    let (cb, ch, cs, cd) = cos.dims4()?;
    if !(cb == 1 || cb == b) || ch != 1 || cs != s || cd != d || sin.dims() != cos.dims() {
        candle_core::bail!(
            "kernel rope: cos {:?} / sin {:?} do not fit x {:?}",
            cos.dims(),
            sin.dims(),
            x.dims()
        );
    }
    x.contiguous()?.apply_op1(Rope {
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
        inverse: false,
    })
}

struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// The transpose (the backward pass): `sin` negated, rotation the other way.
    inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(x, xl, "rope")?;
        let (_, h, s, d) = xl.shape().dims4()?;
        let cb = self.cos.dim(0)?;
        let half = d / 2;
        let mut out = vec![0f32; x.len()];
        with_data(&self.cos, "rope cos", |cos| {
            with_data(&self.sin, "rope sin", |sin| {
                let per = rows_per_task(d);
                out.par_chunks_mut(d * per)
                    .zip(x.par_chunks(d * per))
                    .enumerate()
                    .for_each(|(c, (o, x))| {
                        for (j, (o, x)) in o.chunks_mut(d).zip(x.chunks(d)).enumerate() {
                            let row = c * per + j;
                            let bi = if cb == 1 { 0 } else { row / (h * s) };
                            let off = (bi * s + row % s) * d;
                            let (c, sn) = (&cos[off..off + d], &sin[off..off + d]);
                            if self.inverse {
                                for i in 0..half {
                                    o[i] = x[i] * c[i] + x[i + half] * sn[i + half];
                                    o[i + half] = x[i + half] * c[i + half] - x[i] * sn[i];
                                }
                            } else {
                                for i in 0..half {
                                    o[i] = x[i] * c[i] - x[i + half] * sn[i];
                                    o[i + half] = x[i + half] * c[i + half] + x[i] * sn[i + half];
                                }
                            }
                        }
                    });
                Ok(())
            })
        })?;
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?.apply_op1_no_bwd(&Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            inverse: !self.inverse,
        })?;
        Ok(Some(g))
    }
}

fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// `silu(g) · u`, differentiable in both.
pub fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if g.dims() != u.dims() {
        candle_core::bail!(
            "kernel silu_mul: shapes {:?} and {:?} differ",
            g.dims(),
            u.dims()
        );
    }
    g.contiguous()?.apply_op2(&u.contiguous()?, SiluMul)
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        u: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = data(g, gl, "silu_mul")?;
        let u = data(u, ul, "silu_mul")?;
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| {
                for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                    *o = silu(*g) * u;
                }
            });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dg = g.apply_op3_no_bwd(u, &grad, &SiluMulBack { wrt_gate: true })?;
        let du = g.apply_op3_no_bwd(u, &grad, &SiluMulBack { wrt_gate: false })?;
        Ok((Some(dg), Some(du)))
    }
}

/// The gradient of `silu(g) · u` with respect to `g` (`wrt_gate`) or `u`.
struct SiluMulBack {
    wrt_gate: bool,
}

impl CustomOp3 for SiluMulBack {
    fn name(&self) -> &'static str {
        "silu-mul-backward"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        u: &CpuStorage,
        ul: &Layout,
        d: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = data(g, gl, "silu_mul backward")?;
        let u = data(u, ul, "silu_mul backward")?;
        let d = data(d, dl, "silu_mul backward")?;
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(CHUNK)
            .zip(
                g.par_chunks(CHUNK)
                    .zip(u.par_chunks(CHUNK).zip(d.par_chunks(CHUNK))),
            )
            .for_each(|(o, (g, (u, d)))| {
                for (((o, g), u), d) in o.iter_mut().zip(g).zip(u).zip(d) {
                    *o = if self.wrt_gate {
                        let s = 1.0 / (1.0 + (-g).exp());
                        d * u * s * (1.0 + g * (1.0 - s))
                    } else {
                        d * silu(*g)
                    };
                }
            });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}

/// `erf(x)` in f32 by a rational approximation on `[-4, 4]` (the one XLA and Eigen use), outside of which erf is ±1 in f32. Branch-free, so it vectorises.
pub fn erf(x: f32) -> f32 {
    // Plain products and sums, not `mul_add`: without FMA in the target features that is a
    // call into libm per term.
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p - 2.101_024e-6;
    p = x2 * p - 5.692_506_4e-5;
    p = x2 * p - 7.349_906_3e-4;
    p = x2 * p - 2.954_6e-3;
    p = x2 * p - 1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 - 2.133_740_6e-4;
    q = x2 * q - 1.682_827e-3;
    q = x2 * q - 7.373_329_3e-3;
    q = x2 * q - 1.426_473_9e-2;
    x * p / q
}

/// GELU, erf form: `x · ½ (1 + erf(x / √2))` (inference).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&GeluErf)
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(x, xl, "gelu_erf")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| {
                for (o, x) in o.iter_mut().zip(x) {
                    *o = x * 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}
