//! `x Wᵀ + b`, optionally plus a LoRA branch `scale · (x Aᵀ) Bᵀ`, with a backward pass that
//! leaves the frozen `W` and `b` alone.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::{rows_per_task, with_data};

/// A LoRA branch without dropout: `a` is `r × in`, `b` is `out × r`.
#[derive(Clone, Debug)]
pub struct LoraParts {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

/// `x Wᵀ + b (+ scale · x Aᵀ Bᵀ)` for `x` of shape `(..., in)`; gradients flow to `x` and to
/// the LoRA factors, never to `w` or `bias`.
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    lora: Option<&LoraParts>,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims.last().unwrap_or(&0);
    let rows = x.elem_count() / k.max(1);
    let x2 = x.contiguous()?.reshape((rows, k))?;
    let y = match lora {
        None => x2.apply_op1(Frozen {
            w: w.clone(),
            bias: bias.cloned(),
        })?,
        Some(l) => x2.apply_op3(
            &l.a,
            &l.b,
            WithLora {
                w: w.clone(),
                bias: bias.cloned(),
                scale: l.scale,
            },
        )?,
    };
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = w.dim(0)?;
    }
    y.reshape(out)
}

fn cpu(s: &Storage) -> Result<&CpuStorage> {
    match s {
        Storage::Cpu(c) => Ok(c),
        _ => candle_core::bail!("kernel linear: expected a CPU tensor"),
    }
}

/// `x Wᵀ + b` as a `(m, n)` f32 vector.
fn base(
    x: &CpuStorage,
    xl: &Layout,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Result<(Vec<f32>, usize)> {
    let (m, k) = xl.shape().dims2()?;
    let (guard, wl) = w.storage_and_layout();
    let n = wl.dims()[0];
    let y = x.matmul(cpu(&guard)?, (1, m, n, k), xl, &wl.transpose(0, 1)?)?;
    drop(guard);
    let CpuStorage::F32(mut y) = y else {
        candle_core::bail!("kernel linear: expected f32 data")
    };
    if let Some(b) = bias {
        with_data(b, "linear bias", |b| {
            y.par_chunks_mut(n * rows_per_task(n)).for_each(|rows| {
                for row in rows.chunks_mut(n) {
                    for (v, b) in row.iter_mut().zip(b) {
                        *v += b;
                    }
                }
            });
            Ok(())
        })?;
    }
    Ok((y, n))
}

struct Frozen {
    w: Tensor,
    bias: Option<Tensor>,
}

impl CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let m = xl.dims()[0];
        let (y, n) = base(x, xl, &self.w, self.bias.as_ref())?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

struct WithLora {
    w: Tensor,
    bias: Option<Tensor>,
    scale: f64,
}

impl CustomOp3 for WithLora {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let r = al.dims()[0];
        let (mut y, n) = base(x, xl, &self.w, self.bias.as_ref())?;
        let t = x.matmul(a, (1, m, r, k), xl, &al.transpose(0, 1)?)?;
        let u = t.matmul(
            b,
            (1, m, n, r),
            &Layout::contiguous((m, r)),
            &bl.transpose(0, 1)?,
        )?;
        let CpuStorage::F32(u) = u else {
            candle_core::bail!("kernel linear: expected f32 data")
        };
        let s = self.scale as f32;
        let chunk = n * rows_per_task(n);
        y.par_chunks_mut(chunk)
            .zip(u.par_chunks(chunk))
            .for_each(|(y, u)| {
                for (y, u) in y.iter_mut().zip(u) {
                    *y += u * s;
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gb = (grad.matmul(b)? * self.scale)?;
        let t = (x.matmul(&a.t()?)? * self.scale)?;
        let grad_x = (grad.matmul(&self.w)? + gb.matmul(a)?)?;
        let grad_a = gb.t()?.matmul(x)?;
        let grad_b = grad.t()?.matmul(&t)?;
        Ok((Some(grad_x), Some(grad_a), Some(grad_b)))
    }
}
