//! The training loop SFT and DPO share: seeded data order per epoch, micro-batches with
//! gradient accumulation, global-norm clipping, AdamW with a schedule, logging, evaluation
//! with best-checkpoint selection, and checkpoints a later run resumes from exactly.
//!
//! Accumulation: an objective returns the *sum* of its loss over a micro-batch's units
//! (trained tokens for SFT, pairs for DPO); the accumulated gradients are divided by the
//! units of the whole optimizer step, so a step's loss is the mean over all its units
//! whatever the split into micro-batches (Hugging Face's `num_items_in_batch` behaviour).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use expflow_models::Trainable;
use expflow_models::sampling::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::lora::Lora;
use crate::optim::{AdamW, AdamWConfig, accumulate, clip_grad_norm, collect_grads};
use crate::schedule::{Scheduler, factor, warmup_steps};

/// What a training objective computes for the loop.
pub trait Objective {
    /// Items (rows or pairs) in the training set.
    fn items(&self) -> usize;
    /// Loss summed over the units of the micro-batch `items`, the unit count, and sums of
    /// logged statistics over the same units.
    fn micro(
        &mut self,
        model: &dyn Trainable,
        items: &[usize],
    ) -> Result<(Tensor, f64, BTreeMap<String, f64>)>;
    /// Evaluation metrics (`eval_loss`, ...); empty when there is nothing to evaluate on.
    fn evaluate(&mut self, model: &mut dyn Trainable) -> Result<BTreeMap<String, f64>>;
}

/// Settings of the loop.
#[derive(Clone, Debug, PartialEq)]
pub struct LoopConfig {
    pub epochs: usize,
    /// When above 0, the number of optimizer steps (epochs are ignored).
    pub max_steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub learning_rate: f64,
    pub scheduler: Scheduler,
    pub warmup_ratio: f64,
    pub max_grad_norm: f64,
    pub adamw: AdamWConfig,
    pub logging_steps: usize,
    /// Evaluate every this many steps and after the last (0: never).
    pub eval_steps: usize,
    /// Metric that picks the best evaluated adapter (e.g. `eval_loss`); `None` keeps the last.
    pub best_metric: Option<String>,
    pub greater_is_better: bool,
    /// With `best_metric`: stop after this many evaluations in a row without a better value
    /// (0: never stop early).
    pub early_stopping_patience: usize,
    /// Save resumable state every this many steps (0: never).
    pub checkpoint_steps: usize,
    pub seed: u64,
}

/// One logged row of the metrics table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    pub step: usize,
    pub epoch: f64,
    pub lr: f64,
    pub loss: Option<f64>,
    pub grad_norm: Option<f64>,
    /// Logged statistics (DPO rewards) and evaluation metrics (`eval_loss`, ...).
    pub values: BTreeMap<String, f64>,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub rows: Vec<MetricRow>,
    pub total_steps: usize,
    /// Step the run resumed from (0: started fresh).
    pub resumed_from: usize,
    /// Step and value of the best evaluation when `best_metric` chose the weights.
    pub best: Option<(usize, f64)>,
    /// The step at which early stopping ended the run (`None`: it ran to the end).
    pub stopped_early: Option<usize>,
}

/// Callbacks the loop calls; all optional.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Asked before each step; `true` stops the run (after saving a checkpoint).
    pub cancel: Option<&'a (dyn Fn(usize) -> bool + Sync)>,
    pub progress: Option<&'a (dyn Fn(usize, usize) + Sync)>,
    pub log: Option<&'a (dyn Fn(&str) + Sync)>,
}

impl Hooks<'_> {
    fn say(&self, msg: &str) {
        tracing::info!("{msg}");
        if let Some(f) = self.log {
            f(msg);
        }
    }
}

#[derive(Serialize, Deserialize)]
struct State {
    step: usize,
    rows: Vec<MetricRow>,
    window_loss: f64,
    window_steps: usize,
    best: Option<(usize, f64)>,
    /// Evaluations since the best one (early stopping).
    #[serde(default)]
    stale: usize,
}

/// Optimizer steps for `n` items.
pub fn total_steps(cfg: &LoopConfig, n: usize) -> usize {
    if cfg.max_steps > 0 {
        return cfg.max_steps;
    }
    cfg.epochs * steps_per_epoch(cfg, n)
}

fn steps_per_epoch(cfg: &LoopConfig, n: usize) -> usize {
    n.div_ceil(cfg.batch_size).div_ceil(cfg.grad_accum).max(1)
}

/// The item order of epoch `e`: a Fisher–Yates shuffle seeded by (seed, epoch).
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::for_sample(seed, epoch as u64);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

fn check(cfg: &LoopConfig, n: usize) -> Result<()> {
    if n == 0 {
        return Err(TrainError::Data("the training set is empty".into()));
    }
    if cfg.batch_size == 0 || cfg.grad_accum == 0 {
        return Err(TrainError::Config(
            "batch_size and grad_accum must be at least 1".into(),
        ));
    }
    if cfg.max_steps == 0 && cfg.epochs == 0 {
        return Err(TrainError::Config(
            "epochs is 0 and max_steps is 0: nothing to train; set one of them".into(),
        ));
    }
    if cfg.early_stopping_patience > 0 && (cfg.best_metric.is_none() || cfg.eval_steps == 0) {
        return Err(TrainError::Config(
            "early stopping needs an evaluation metric to watch: set best_metric and eval_steps"
                .into(),
        ));
    }
    if cfg.learning_rate.is_nan() || cfg.learning_rate <= 0.0 {
        return Err(TrainError::Config(format!(
            "learning_rate {} must be positive",
            cfg.learning_rate
        )));
    }
    Ok(())
}

fn snapshot(lora: &Lora) -> Result<Vec<Tensor>> {
    Ok(lora
        .vars()
        .iter()
        .map(|v| v.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?)
}

fn restore(lora: &Lora, values: &[Tensor]) -> Result<()> {
    for (v, t) in lora.vars().iter().zip(values) {
        v.set(t)?;
    }
    Ok(())
}

fn save_tensors(path: &Path, values: &[Tensor]) -> Result<()> {
    let map: std::collections::HashMap<String, Tensor> = values
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("var.{i}"), t.clone()))
        .collect();
    candle_core::safetensors::save(&map, path)?;
    Ok(())
}

fn load_tensors(path: &Path, n: usize, device: &candle_core::Device) -> Result<Vec<Tensor>> {
    let map = candle_core::safetensors::load(path, device)?;
    (0..n)
        .map(|i| {
            map.get(&format!("var.{i}"))
                .cloned()
                .ok_or_else(|| TrainError::File {
                    path: path.to_path_buf(),
                    problem: format!("checkpoint has no `var.{i}`"),
                })
        })
        .collect()
}

/// The newest complete checkpoint under `dir` (`ckpt-<step>`; a `.partial` one is ignored).
pub fn latest_checkpoint(dir: &Path) -> Option<(usize, PathBuf)> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("ckpt-")?.parse::<usize>().ok()?;
            Some((step, e.path()))
        })
        .max_by_key(|(s, _)| *s)
}

struct Ckpt<'a> {
    dir: &'a Path,
}

impl Ckpt<'_> {
    fn save(
        &self,
        lora: &Lora,
        opt: &AdamW,
        state: &State,
        best: Option<&Vec<Tensor>>,
    ) -> Result<()> {
        let final_dir = self.dir.join(format!("ckpt-{}", state.step));
        let tmp = self.dir.join(format!("ckpt-{}.partial", state.step));
        let io = |a, p: &Path, e| TrainError::io(a, p, e);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io("cannot remove", &tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
        save_tensors(&tmp.join("adapter.safetensors"), &snapshot(lora)?)?;
        opt.save(&tmp.join("optimizer.safetensors"))?;
        if let Some(b) = best {
            save_tensors(&tmp.join("best.safetensors"), b)?;
        }
        let json = serde_json::to_vec(state).map_err(|e| TrainError::Config(e.to_string()))?;
        let sp = tmp.join("state.json");
        std::fs::write(&sp, json).map_err(|e| io("cannot write", &sp, e))?;
        std::fs::rename(&tmp, &final_dir).map_err(|e| io("cannot rename", &tmp, e))?;
        // Older checkpoints are superseded.
        if let Ok(entries) = std::fs::read_dir(self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("ckpt-") && e.path() != final_dir {
                    drop(std::fs::remove_dir_all(e.path()));
                }
            }
        }
        Ok(())
    }
}

/// Trains `lora`'s variables (already attached to `model`) on `obj`. With `checkpoints`,
/// state is saved there every `checkpoint_steps` and on cancellation, and a run finding a
/// checkpoint there resumes from it.
pub fn train(
    model: &mut (dyn Trainable + Send),
    lora: &Lora,
    obj: &mut (dyn Objective + Send),
    cfg: &LoopConfig,
    checkpoints: Option<&Path>,
    hooks: &Hooks,
) -> Result<Outcome> {
    // On a thread of the pool the products and kernels split their work with: see
    // `kernels::in_pool` (an SFT step of the bench model, 146-151 ms -> 125 ms).
    expflow_models::kernels::in_pool(|| train_steps(model, lora, obj, cfg, checkpoints, hooks))
}

fn train_steps(
    model: &mut (dyn Trainable + Send),
    lora: &Lora,
    obj: &mut (dyn Objective + Send),
    cfg: &LoopConfig,
    checkpoints: Option<&Path>,
    hooks: &Hooks,
) -> Result<Outcome> {
    let n = obj.items();
    check(cfg, n)?;
    let total = total_steps(cfg, n);
    let per_epoch = steps_per_epoch(cfg, n);
    let warmup = warmup_steps(cfg.warmup_ratio, total);
    let vars = lora.vars();
    let mut opt = AdamW::new(vars.clone(), cfg.adamw.clone())?;
    let mut state = State {
        step: 0,
        rows: Vec::new(),
        window_loss: 0.0,
        window_steps: 0,
        best: None,
        stale: 0,
    };
    let mut best_values: Option<Vec<Tensor>> = None;
    let device = model.device().clone();
    if let Some((step, dir)) = checkpoints.and_then(latest_checkpoint) {
        restore(
            lora,
            &load_tensors(&dir.join("adapter.safetensors"), vars.len(), &device)?,
        )?;
        opt.load(&dir.join("optimizer.safetensors"))?;
        let sp = dir.join("state.json");
        let bytes = std::fs::read(&sp).map_err(|e| TrainError::io("cannot read", &sp, e))?;
        state = serde_json::from_slice(&bytes).map_err(|e| TrainError::File {
            path: sp.clone(),
            problem: e.to_string(),
        })?;
        let bp = dir.join("best.safetensors");
        if bp.exists() {
            best_values = Some(load_tensors(&bp, vars.len(), &device)?);
        }
        hooks.say(&format!(
            "resuming from the checkpoint at step {step} of {total}"
        ));
    }
    let resumed_from = state.step;
    let ckpt = checkpoints.map(|dir| Ckpt { dir });
    model.set_differentiable(true);
    let batches = n.div_ceil(cfg.batch_size);
    let mut order_epoch = usize::MAX;
    let mut order = Vec::new();
    let mut stopped_early = None;
    while state.step < total {
        let s = state.step;
        if let Some(cancel) = hooks.cancel
            && cancel(s)
        {
            if let Some(c) = &ckpt {
                c.save(lora, &opt, &state, best_values.as_ref())?;
            }
            model.set_differentiable(false);
            return Err(TrainError::Cancelled(s));
        }
        let epoch = s / per_epoch;
        if epoch != order_epoch {
            order = epoch_order(cfg.seed, epoch, n);
            order_epoch = epoch;
        }
        let within = s % per_epoch;
        let first = within * cfg.grad_accum;
        let last = ((within + 1) * cfg.grad_accum).min(batches);
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let (mut loss_sum, mut units) = (0f64, 0f64);
        let mut stats: BTreeMap<String, f64> = BTreeMap::new();
        lora.set_training(true);
        for (k, j) in (first..last).enumerate() {
            let items = &order[j * cfg.batch_size..((j + 1) * cfg.batch_size).min(n)];
            lora.set_dropout_key((s * cfg.grad_accum + k) as u64);
            let (loss, count, st) = obj.micro(model, items)?;
            loss_sum += loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            units += count;
            for (name, v) in st {
                *stats.entry(name).or_default() += v;
            }
            let g = loss.backward()?;
            accumulate(&mut grads, collect_grads(&g, &vars))?;
        }
        lora.set_training(false);
        if units > 0.0 {
            for g in grads.iter_mut().flatten() {
                *g = (&*g / units)?;
            }
        }
        let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm)?;
        let lr = cfg.learning_rate * factor(cfg.scheduler, s, warmup, total);
        opt.step(&grads, lr)?;
        state.step = s + 1;
        let step_loss = if units > 0.0 { loss_sum / units } else { 0.0 };
        state.window_loss += step_loss;
        state.window_steps += 1;
        let epoch_f = state.step as f64 / per_epoch as f64;
        let log_now = cfg.logging_steps > 0 && state.step.is_multiple_of(cfg.logging_steps);
        if log_now || state.step == total {
            let loss = state.window_loss / state.window_steps.max(1) as f64;
            let values = stats
                .iter()
                .map(|(k, v)| (k.clone(), v / units.max(1.0)))
                .collect();
            state.rows.push(MetricRow {
                step: state.step,
                epoch: epoch_f,
                lr,
                loss: Some(loss),
                grad_norm: Some(grad_norm),
                values,
            });
            hooks.say(&format!(
                "step {}/{total} epoch {epoch_f:.2} loss {loss:.4} lr {lr:.3e} grad_norm {grad_norm:.3}",
                state.step
            ));
            state.window_loss = 0.0;
            state.window_steps = 0;
        }
        let eval_now = cfg.eval_steps > 0
            && (state.step.is_multiple_of(cfg.eval_steps) || state.step == total);
        if eval_now {
            model.set_differentiable(false);
            let mut metrics = obj.evaluate(model)?;
            model.set_differentiable(true);
            if !metrics.is_empty() {
                hooks.say(&format!("step {} eval {metrics:?}", state.step));
                if let Some(name) = &cfg.best_metric {
                    let v = *metrics.get(name).ok_or_else(|| {
                        TrainError::Config(format!(
                            "best_metric `{name}` is not among the evaluation metrics {:?}",
                            metrics.keys().collect::<Vec<_>>()
                        ))
                    })?;
                    let better = match state.best {
                        None => true,
                        Some((_, b)) => {
                            if cfg.greater_is_better {
                                v > b
                            } else {
                                v < b
                            }
                        }
                    };
                    if better {
                        state.best = Some((state.step, v));
                        best_values = Some(snapshot(lora)?);
                        state.stale = 0;
                    } else {
                        state.stale += 1;
                    }
                    if let Some((b, _)) = state.best {
                        metrics.insert("best_step".into(), b as f64);
                    }
                }
                state.rows.push(MetricRow {
                    step: state.step,
                    epoch: epoch_f,
                    lr,
                    loss: None,
                    grad_norm: None,
                    values: metrics,
                });
            }
        }
        if cfg.early_stopping_patience > 0
            && state.stale >= cfg.early_stopping_patience
            && state.step < total
        {
            hooks.say(&format!(
                "early stopping at step {}: {} evaluations without a better {}",
                state.step,
                state.stale,
                cfg.best_metric.as_deref().unwrap_or_default()
            ));
            stopped_early = Some(state.step);
            if let Some(p) = hooks.progress {
                p(total, total);
            }
            break;
        }
        if let Some(p) = hooks.progress {
            p(state.step, total);
        }
        if let Some(c) = &ckpt
            && cfg.checkpoint_steps > 0
            && state.step.is_multiple_of(cfg.checkpoint_steps)
            && state.step < total
        {
            c.save(lora, &opt, &state, best_values.as_ref())?;
        }
    }
    model.set_differentiable(false);
    if let (Some(values), Some((step, v))) = (&best_values, state.best) {
        restore(lora, values)?;
        hooks.say(&format!(
            "kept the best evaluated adapter: step {step} ({v})"
        ));
    }
    Ok(Outcome {
        rows: state.rows,
        total_steps: total,
        resumed_from,
        best: state.best,
        stopped_early,
    })
}

/// Per-row sums of `log p(label)` over labelled positions (position `t` predicts `t + 1`),
/// differentiable in `logits` `(batch, len, vocab)`; with the labelled token counts.
pub fn sequence_logps(logits: &Tensor, labels: &[&[i64]]) -> Result<(Tensor, Vec<usize>)> {
    let (b, len, vocab) = logits.dims3()?;
    let mut idx = Vec::new();
    let mut targets = Vec::new();
    let mut owner = Vec::new();
    let mut counts = vec![0usize; b];
    for (r, lab) in labels.iter().enumerate() {
        for t in 0..lab.len().saturating_sub(1).min(len - 1) {
            let y = lab[t + 1];
            if y != expflow_models::IGNORE {
                idx.push((r * len + t) as u32);
                targets.push(y as u32);
                owner.push(r);
                counts[r] += 1;
            }
        }
    }
    let device = logits.device();
    if idx.is_empty() {
        return Ok((Tensor::zeros(b, candle_core::DType::F32, device)?, counts));
    }
    let m = idx.len();
    let flat = logits.reshape((b * len, vocab))?;
    let tok = if expflow_models::kernels::applies(&flat) {
        expflow_models::kernels::token_logps(&flat, &idx, &targets)?
    } else {
        composite_logps(&flat, idx, targets)?
    };
    let mut assign = vec![0f32; b * m];
    for (k, &r) in owner.iter().enumerate() {
        assign[r * m + k] = 1.0;
    }
    let assign = Tensor::from_vec(assign, (b, m), device)?;
    let sums = assign.matmul(&tok.unsqueeze(1)?)?.squeeze(1)?;
    Ok((sums, counts))
}

/// `log softmax(flat[idx[k]])[targets[k]]` with candle's composite ops.
fn composite_logps(flat: &Tensor, idx: Vec<u32>, targets: Vec<u32>) -> Result<Tensor> {
    let device = flat.device();
    let m = idx.len();
    let picked = flat.index_select(&Tensor::from_vec(idx, m, device)?, 0)?;
    let lp = candle_nn::ops::log_softmax(&picked, candle_core::D::Minus1)?;
    let tok = lp
        .gather(&Tensor::from_vec(targets, (m, 1), device)?, 1)?
        .squeeze(1)?;
    Ok(tok)
}
