//! AdamW as `torch.optim.AdamW` computes it (decoupled weight decay, bias correction), with
//! its state saved and restored exactly, and global-norm gradient clipping as
//! `torch.nn.utils.clip_grad_norm_`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use crate::error::{Result, TrainError};

#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// torch's defaults, with Hugging Face Trainer's weight decay of 0.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW over a fixed list of variables.
pub struct AdamW {
    pub config: AdamWConfig,
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Steps taken.
    pub t: u64,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, config: AdamWConfig) -> Result<AdamW> {
        let m = vars
            .iter()
            .map(|v| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(AdamW {
            config,
            vars,
            m,
            v,
            t: 0,
        })
    }

    /// One update with learning rate `lr` from `grads` (one per variable, in order; `None`
    /// for a variable the loss did not reach, which is then only decayed).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        let c = &self.config;
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (i, var) in self.vars.iter().enumerate() {
            let mut p = var.as_tensor().detach();
            if c.weight_decay != 0.0 {
                p = (&p * (1.0 - lr * c.weight_decay))?;
            }
            if let Some(g) = &grads[i] {
                self.m[i] = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
                self.v[i] = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                let denom = ((&self.v[i] / bc2)?.sqrt()? + c.eps)?;
                let update = ((&self.m[i] / bc1)? / denom)?;
                p = (p - (update * lr)?)?;
            }
            var.set(&p)?;
        }
        Ok(())
    }

    /// Writes `m.{i}`, `v.{i}` and the step count.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for i in 0..self.vars.len() {
            map.insert(format!("m.{i}"), self.m[i].clone());
            map.insert(format!("v.{i}"), self.v[i].clone());
        }
        map.insert("t".into(), Tensor::new(&[self.t as f64], &Device::Cpu)?);
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }

    /// Restores what [`AdamW::save`] wrote for the same variables.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let device = self
            .vars
            .first()
            .map(|v| v.device().clone())
            .unwrap_or(Device::Cpu);
        let map = candle_core::safetensors::load(path, &device)?;
        let get = |k: &str| {
            map.get(k).cloned().ok_or_else(|| TrainError::File {
                path: path.to_path_buf(),
                problem: format!("optimizer state has no `{k}`"),
            })
        };
        for i in 0..self.vars.len() {
            self.m[i] = get(&format!("m.{i}"))?;
            self.v[i] = get(&format!("v.{i}"))?;
        }
        self.t = get("t")?.to_vec1::<f64>()?[0] as u64;
        Ok(())
    }
}

/// The gradients of `vars` in `grads` (`None` where a variable got none).
pub fn collect_grads(grads: &GradStore, vars: &[Var]) -> Vec<Option<Tensor>> {
    vars.iter()
        .map(|v| grads.get(v.as_tensor()).map(Tensor::detach))
        .collect()
}

/// Adds `b` into `a`, element by element.
pub fn accumulate(a: &mut [Option<Tensor>], b: Vec<Option<Tensor>>) -> Result<()> {
    for (x, y) in a.iter_mut().zip(b) {
        *x = match (x.take(), y) {
            (Some(p), Some(q)) => Some((p + q)?),
            (p, q) => p.or(q),
        };
    }
    Ok(())
}

/// Scales gradients so that their global L2 norm is at most `max_norm` (0: no clipping);
/// returns the norm before clipping, as torch does.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter().flatten() {
        total += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut().flatten() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_adamw_steps_follow_the_formula() {
        // One scalar parameter p0 = 1.0, gradients 0.5 then -0.25, lr 0.1, wd 0.01.
        let var = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let cfg = AdamWConfig {
            weight_decay: 0.01,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(vec![var.clone()], cfg.clone()).unwrap();
        let (lr, b1, b2, eps, wd) = (0.1f64, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay);
        let (mut p, mut m, mut v) = (1.0f64, 0.0f64, 0.0f64);
        for (t, g) in [0.5f64, -0.25].into_iter().enumerate() {
            let grad = Tensor::new(&[g as f32], &Device::Cpu).unwrap();
            opt.step(&[Some(grad)], lr).unwrap();
            let t = (t + 1) as i32;
            p *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let (mh, vh) = (m / (1.0 - b1.powi(t)), v / (1.0 - b2.powi(t)));
            p -= lr * mh / (vh.sqrt() + eps);
            let got = var.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
            assert!((got - p).abs() < 1e-6, "step {t}: {got} vs {p}");
        }
    }

    #[test]
    fn state_round_trips_and_clipping_caps_the_global_norm() {
        let dir = tempfile::tempdir().unwrap();
        let var = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![var.clone()], AdamWConfig::default()).unwrap();
        let g = Tensor::new(&[0.3f32, -0.4], &Device::Cpu).unwrap();
        opt.step(&[Some(g.clone())], 0.01).unwrap();
        opt.save(&dir.path().join("o.safetensors")).unwrap();
        let mut other = AdamW::new(vec![var.clone()], AdamWConfig::default()).unwrap();
        other.load(&dir.path().join("o.safetensors")).unwrap();
        assert_eq!(other.t, 1);
        assert_eq!(
            other.m[0].to_vec1::<f32>().unwrap(),
            opt.m[0].to_vec1::<f32>().unwrap()
        );
        let mut grads = vec![Some(g)];
        let norm = clip_grad_norm(&mut grads, 0.25).unwrap();
        assert!((norm - 0.5).abs() < 1e-6);
        let clipped = grads[0].as_ref().unwrap().sqr().unwrap().sum_all().unwrap();
        let clipped = clipped.to_scalar::<f32>().unwrap().sqrt();
        assert!((clipped - 0.25).abs() < 1e-5, "{clipped}");
    }
}
