//! LoRA (Hu et al. 2021) as PEFT builds it: for a target linear `W` (out × in), trainable
//! `A` (r × in, Kaiming-uniform with a = √5, i.e. uniform in ±1/√in) and `B` (out × r, zeros),
//! output `x Wᵀ + b + (α / r) · dropout(x) Aᵀ Bᵀ`. Initial outputs equal the base model's.
//! Dropout masks are a pure function of (seed, layer, micro-batch key), so a resumed run
//! draws the masks an uninterrupted one would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use candle_core::{DType, Tensor, Var};
use expflow_models::kernels::LoraParts;
use expflow_models::sampling::Rng;
use expflow_models::{Adapter, Trainable};

use crate::error::{Result, TrainError};

/// Which linears get adapters, and their shape.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names (`q_proj`, `v_proj`, ...) or `all-linear` (every linear but `lm_head`).
    pub targets: Vec<String>,
    pub seed: u64,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether the linear at `path` (`model.layers.0.self_attn.q_proj`) is a target.
    pub fn targets(&self, path: &str) -> bool {
        let leaf = path.rsplit('.').next().unwrap_or(path);
        self.targets
            .iter()
            .any(|t| (t == "all-linear" && leaf != "lm_head") || t == leaf || t == path)
    }
}

/// State shared by the adapters of one model: training mode and the dropout key.
#[derive(Debug, Default)]
pub struct Switches {
    training: AtomicBool,
    key: AtomicU64,
}

/// One LoRA branch.
#[derive(Debug)]
pub struct LoraLinear {
    pub name: String,
    pub a: Var,
    pub b: Var,
    scale: f64,
    dropout: f64,
    seed: u64,
    switches: Arc<Switches>,
}

/// FNV-1a: a stable 64-bit hash of a module name (not for security).
fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

impl LoraLinear {
    /// A branch with given weights (`a`: r × in, `b`: out × r) and scale, no dropout: an
    /// adapter read from disk.
    pub(crate) fn loaded(
        name: String,
        a: Tensor,
        b: Tensor,
        scale: f64,
        switches: Arc<Switches>,
    ) -> Result<LoraLinear> {
        Ok(LoraLinear {
            name,
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
            scale,
            dropout: 0.0,
            seed: 0,
            switches,
        })
    }
}

impl Adapter for LoraLinear {
    fn lora(&self) -> Option<LoraParts> {
        if self.dropout > 0.0 && self.switches.training.load(Ordering::Relaxed) {
            return None;
        }
        Some(LoraParts {
            a: self.a.as_tensor().clone(),
            b: self.b.as_tensor().clone(),
            scale: self.scale,
        })
    }

    fn delta(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let inner = *dims.last().unwrap_or(&0);
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let mut x2 = x.reshape((rows, inner))?;
        if self.dropout > 0.0 && self.switches.training.load(Ordering::Relaxed) {
            let key = self.switches.key.load(Ordering::Relaxed);
            let mut rng = Rng::for_sample(self.seed ^ name_hash(&self.name), key);
            let keep = 1.0 - self.dropout;
            let mask: Vec<f32> = (0..rows * inner)
                .map(|_| {
                    if rng.next_f64() < keep {
                        (1.0 / keep) as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::from_vec(mask, (rows, inner), x.device())?.to_dtype(x.dtype())?;
            x2 = (x2 * mask)?;
        }
        let a = self.a.as_tensor().to_dtype(x.dtype())?;
        let b = self.b.as_tensor().to_dtype(x.dtype())?;
        let y = (x2.matmul(&a.t()?)?.matmul(&b.t()?)? * self.scale)?;
        let mut out = dims;
        *out.last_mut().unwrap() = self.b.dims()[0];
        y.reshape(out)
    }
}

/// The adapters attached to a model, in module order.
#[derive(Debug)]
pub struct Lora {
    pub config: LoraConfig,
    pub layers: Vec<Arc<LoraLinear>>,
    switches: Arc<Switches>,
}

impl Lora {
    /// Attaches fresh adapters to every target linear of `model`. Errors list the linears
    /// there are when no target matches.
    pub fn attach(model: &mut dyn Trainable, config: &LoraConfig) -> Result<Lora> {
        if config.rank == 0 {
            return Err(TrainError::Config(
                "lora_rank is 0; use a rank of at least 1 (ExpStar: 16 for SFT, 4 for DPO)".into(),
            ));
        }
        let switches = Arc::new(Switches::default());
        let mut layers = Vec::new();
        let mut names = Vec::new();
        let device = model.device().clone();
        for (k, (name, linear)) in model.linears_mut().into_iter().enumerate() {
            names.push(name.rsplit('.').next().unwrap_or(&name).to_string());
            if !config.targets(&name) {
                continue;
            }
            let (out_dim, in_dim) = (linear.out_dim(), linear.in_dim());
            let bound = 1.0 / (in_dim as f64).sqrt();
            let mut rng = Rng::for_sample(config.seed, k as u64);
            let a: Vec<f32> = (0..config.rank * in_dim)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (config.rank, in_dim), &device)?)?;
            let b = Var::zeros((out_dim, config.rank), DType::F32, &device)?;
            let layer = Arc::new(LoraLinear {
                name: name.clone(),
                a,
                b,
                scale: config.scale(),
                dropout: config.dropout,
                seed: config.seed,
                switches: switches.clone(),
            });
            linear.adapter = Some(layer.clone());
            layers.push(layer);
        }
        if layers.is_empty() {
            names.sort();
            names.dedup();
            return Err(TrainError::Config(format!(
                "target_modules {:?} match no linear layer; this model has: {} (or use all-linear)",
                config.targets,
                names.join(", ")
            )));
        }
        Ok(Lora {
            config: config.clone(),
            layers,
            switches,
        })
    }

    /// Adapters already attached (see [`crate::peft::load_adapter`]).
    pub(crate) fn from_layers(
        config: LoraConfig,
        layers: Vec<Arc<LoraLinear>>,
        switches: Arc<Switches>,
    ) -> Lora {
        Lora {
            config,
            layers,
            switches,
        }
    }

    /// Removes every adapter from `model` (the base model again).
    pub fn detach(model: &mut dyn Trainable) {
        for (_, linear) in model.linears_mut() {
            linear.adapter = None;
        }
    }

    /// Trainable variables: A then B of each layer, in module order.
    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|l| [l.a.clone(), l.b.clone()])
            .collect()
    }

    /// Dropout on (training) or off (evaluation, generation).
    pub fn set_training(&self, on: bool) {
        self.switches.training.store(on, Ordering::Relaxed);
    }

    /// The key dropout masks are drawn from (one per micro-batch).
    pub fn set_dropout_key(&self, key: u64) {
        self.switches.key.store(key, Ordering::Relaxed);
    }

    /// Parameter count of the adapters.
    pub fn parameters(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.a.elem_count() + l.b.elem_count())
            .sum()
    }
}
