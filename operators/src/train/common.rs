//! What `train.sft`, `train.dpo` and `train.reference_logprobs` share: the parameters of the
//! loop and of LoRA, loading the base model, the conversations of a training input, and
//! writing the trained model (merged, or the PEFT adapter alone). Rows and metrics tables are
//! in `train_io`, which the external tools use too.

use std::path::Path;

use expflow_engine::{Context, Determinism, OpError, ParamKind, ParamSpec};
use expflow_models::{ChatMessage, ContentPart, Generator, Needs, Trainable};
use expflow_train::optim::AdamWConfig;
use expflow_train::schedule::Scheduler;
use expflow_train::{Hooks, LoopConfig, Lora, LoraConfig, peft};
use serde_json::{Map, Value, json};

use crate::error::{OperatorError, Result};
use crate::params::Params;

/// Parameters of the loop and LoRA, with the defaults of each operator.
pub struct Defaults {
    pub rank: u64,
    pub alpha: f64,
    pub lr: f64,
    pub epochs: u64,
}

pub fn loop_params(d: &Defaults) -> Vec<ParamSpec> {
    let p = ParamSpec::with_default;
    vec![
        p(
            "backend",
            ParamKind::String,
            json!("native"),
            "native (candle, in-process), llamafactory or swift",
        ),
        p("lora_rank", ParamKind::Int, json!(d.rank), "LoRA rank r"),
        p(
            "lora_alpha",
            ParamKind::Float,
            json!(d.alpha),
            "LoRA alpha (scale alpha / r)",
        ),
        p(
            "lora_dropout",
            ParamKind::Float,
            json!(0.0),
            "dropout on the LoRA input",
        ),
        p(
            "target_modules",
            ParamKind::List,
            json!(["all-linear"]),
            "linears that get adapters: names like q_proj, v_proj, or all-linear (all but lm_head)",
        ),
        p(
            "learning_rate",
            ParamKind::Float,
            json!(d.lr),
            "peak learning rate",
        ),
        p(
            "epochs",
            ParamKind::Int,
            json!(d.epochs),
            "passes over the data (when max_steps is 0)",
        ),
        p(
            "max_steps",
            ParamKind::Int,
            json!(0),
            "optimizer steps; 0: use epochs",
        ),
        p(
            "batch_size",
            ParamKind::Int,
            json!(1),
            "rows (pairs for DPO) per micro-batch",
        ),
        p(
            "grad_accum",
            ParamKind::Int,
            json!(1),
            "micro-batches per optimizer step",
        ),
        p(
            "warmup_ratio",
            ParamKind::Float,
            json!(0.05),
            "share of steps warming up linearly",
        ),
        p(
            "scheduler",
            ParamKind::String,
            json!("linear"),
            "constant, linear or cosine (Hugging Face's, with warmup)",
        ),
        p(
            "weight_decay",
            ParamKind::Float,
            json!(0.0),
            "AdamW decoupled weight decay",
        ),
        p(
            "max_grad_norm",
            ParamKind::Float,
            json!(1.0),
            "global gradient-norm clip; 0: none",
        ),
        p(
            "max_len",
            ParamKind::Int,
            json!(4096),
            "tokens per sequence (longer ones are cut)",
        ),
        p(
            "logging_steps",
            ParamKind::Int,
            json!(1),
            "a metrics row every this many steps",
        ),
        p(
            "eval_steps",
            ParamKind::Int,
            json!(0),
            "evaluate on `dev` every this many steps and at the end; 0: never",
        ),
        p(
            "best_metric",
            ParamKind::String,
            json!(""),
            "evaluation metric that picks the kept adapter (eval_loss, eval_accuracy, ...); empty: keep the last",
        ),
        p(
            "greater_is_better",
            ParamKind::Bool,
            json!(false),
            "whether a larger best_metric is better",
        ),
        ParamSpec::optional(
            "early_stopping_patience",
            ParamKind::Int,
            "stop after this many evaluations in a row without a better best_metric (needs best_metric and eval_steps); absent: never",
        ),
        p(
            "checkpoint_steps",
            ParamKind::Int,
            json!(50),
            "save resumable state every this many steps (an interrupted node resumes from it); 0: never",
        ),
        p(
            "merge",
            ParamKind::Bool,
            json!(true),
            "output a full model with the adapter merged in (and the adapter in adapter/); false: the PEFT adapter alone",
        ),
        p(
            "seed",
            ParamKind::Int,
            json!(42),
            "data order, LoRA initialisation and dropout",
        ),
    ]
}

/// The loop and LoRA settings of `map`.
pub fn parse(op: &'static str, map: &Map<String, Value>) -> Result<(LoopConfig, LoraConfig)> {
    let p = Params::new(op, map);
    let bad = |name: &str, why: String| OperatorError::param(op, name, why);
    let scheduler =
        Scheduler::parse(p.str("scheduler")?).map_err(|e| bad("scheduler", e.to_string()))?;
    let rank = p.u64("lora_rank")? as usize;
    if rank == 0 {
        return Err(bad(
            "lora_rank",
            "is 0; use at least 1 (ExpStar: 16 for SFT, 4 for DPO)".into(),
        ));
    }
    let dropout = p.f64("lora_dropout")?;
    if !(0.0..1.0).contains(&dropout) {
        return Err(bad(
            "lora_dropout",
            format!("is {dropout}; use a value in [0, 1)"),
        ));
    }
    let lr = p.f64("learning_rate")?;
    if lr.is_nan() || lr <= 0.0 {
        return Err(bad(
            "learning_rate",
            format!("is {lr}; it must be positive"),
        ));
    }
    let (epochs, max_steps) = (p.u64("epochs")? as usize, p.u64("max_steps")? as usize);
    if epochs == 0 && max_steps == 0 {
        return Err(bad(
            "epochs",
            "and max_steps are both 0: nothing to train".into(),
        ));
    }
    let (batch, accum) = (p.u64("batch_size")? as usize, p.u64("grad_accum")? as usize);
    if batch == 0 || accum == 0 {
        return Err(bad(
            "batch_size",
            "and grad_accum must be at least 1".into(),
        ));
    }
    let warmup = p.f64("warmup_ratio")?;
    if !(0.0..=1.0).contains(&warmup) {
        return Err(bad(
            "warmup_ratio",
            format!("is {warmup}; use a value in [0, 1]"),
        ));
    }
    let best = p.str("best_metric")?;
    let patience = p.opt_u64("early_stopping_patience")?.unwrap_or(0) as usize;
    if patience > 0 && (best.is_empty() || p.u64("eval_steps")? == 0) {
        return Err(bad(
            "early_stopping_patience",
            format!(
                "is {patience}, but early stopping watches best_metric at each evaluation; set \
                 best_metric (e.g. eval_choice_accuracy with greater_is_better: true) and eval_steps"
            ),
        ));
    }
    let seed = p.u64("seed")?;
    let cfg = LoopConfig {
        epochs,
        max_steps,
        batch_size: batch,
        grad_accum: accum,
        learning_rate: lr,
        scheduler,
        warmup_ratio: warmup,
        max_grad_norm: p.f64("max_grad_norm")?,
        adamw: AdamWConfig {
            weight_decay: p.f64("weight_decay")?,
            ..AdamWConfig::default()
        },
        logging_steps: p.u64("logging_steps")? as usize,
        eval_steps: p.u64("eval_steps")? as usize,
        best_metric: (!best.is_empty()).then(|| best.to_string()),
        greater_is_better: p.bool("greater_is_better")?,
        early_stopping_patience: patience,
        checkpoint_steps: p.u64("checkpoint_steps")? as usize,
        seed,
    };
    let lora = LoraConfig {
        rank,
        alpha: p.f64("lora_alpha")?,
        dropout,
        targets: p.strings("target_modules")?,
        seed,
    };
    Ok((cfg, lora))
}

/// The `model` input loaded for training (f32 on CPU): a Qwen2.5-VL directory as the
/// vision-language model, anything else as a Qwen2 text model.
pub fn load_model(ctx: &Context, op: &'static str) -> Result<Loaded, OpError> {
    let model = crate::embed::common::open_model(ctx, op, Needs::Tokenizer)?;
    let device = expflow_models::default_device()?;
    crate::embed::common::log_device(ctx, &device);
    let vision = expflow_vlm::is_qwen2_5_vl(&model.dir);
    let m: Box<dyn Trainable + Send> = if vision {
        ctx.log("model: Qwen2.5-VL (adapters on the language model; vision tower frozen)");
        Box::new(expflow_vlm::VisionLanguageModel::load(&model.dir, &device)?)
    } else {
        Box::new(Generator::load(&model.dir, &device)?)
    };
    Ok(Loaded {
        model: m,
        base: model.dir.root.clone(),
        vision,
    })
}

/// A model loaded for training.
pub struct Loaded {
    pub model: Box<dyn Trainable + Send>,
    /// Its directory.
    pub base: std::path::PathBuf,
    /// Whether it is a vision-language model.
    pub vision: bool,
}

/// The native backend's SFT conversations from `input` (`data` or `dev`): a rows file, or
/// for `data` without one, dataset `dataset_name` of the `dataset` input (a LLaMA-Factory
/// dataset directory), for `dev` without one, its `eval_dataset_name` when set. For a vision-language model (`vision`), each row's `images` replace
/// its `<image>` placeholders (paths relative to the `media` input, else to the dataset
/// directory); a text model sees the placeholders as text.
pub fn sft_conversations(
    ctx: &Context,
    op: &'static str,
    input: &str,
    vision: bool,
) -> Result<Option<Vec<Vec<ChatMessage>>>, OpError> {
    let (rows, base) = match ctx.inputs().get(input) {
        Some(file) => (crate::train_io::read_rows(op, &file.path)?, None),
        None if input == "dev" => {
            let name = ctx
                .params()
                .get("eval_dataset_name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let Some(dir) = ctx.inputs().get("dataset").filter(|_| !name.is_empty()) else {
                return Ok(None);
            };
            let rows = expflow_train::llamafactory::dataset_rows(&dir.path, name)?;
            (rows, Some(dir.path.clone()))
        }
        None if input == "data" => {
            let Some(dir) = ctx.inputs().get("dataset") else {
                return Err(OperatorError::data(
                    op,
                    "the native backend needs the `data` input (training rows) or the `dataset` \
                     input (a LLaMA-Factory dataset directory) with `dataset_name`",
                )
                .into());
            };
            let name = crate::tools::dataset_name(op, ctx.params())?;
            let rows = expflow_train::llamafactory::dataset_rows(&dir.path, &name)?;
            (rows, Some(dir.path.clone()))
        }
        None => {
            // `dev` from the dataset directory (LLaMA-Factory's `eval_dataset`).
            let name = ctx
                .params()
                .get("eval_dataset_name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty());
            match (name, ctx.inputs().get("dataset")) {
                (None, _) => return Ok(None),
                (Some(name), Some(dir)) => (
                    expflow_train::llamafactory::dataset_rows(&dir.path, name)?,
                    Some(dir.path.clone()),
                ),
                (Some(name), None) => {
                    return Err(OperatorError::param(
                        op,
                        "eval_dataset_name",
                        format!(
                            "is `{name}`, a dataset of the `dataset` input, which is not connected; \
                             connect it or give the dev rows as the `dev` input"
                        ),
                    )
                    .into());
                }
            }
        }
    };
    let mut convs = expflow_train::data::sft_conversations(&rows)
        .map_err(|e| OperatorError::data(op, format!("input `{input}`: {e}")))?;
    let media_dir = ctx.inputs().get("media").map(|m| m.path.clone()).or(base);
    let mut placeholders = false;
    for (i, (conv, row)) in convs.iter_mut().zip(&rows).enumerate() {
        let (images, videos) = expflow_train::llamafactory::row_media(row);
        if !vision {
            placeholders |= conv.iter().any(|m| {
                let t = m.joined_text();
                t.contains("<image>") || t.contains("<video>")
            });
            continue;
        }
        let mut parts = Vec::new();
        for (list, image) in [(images, true), (videos, false)] {
            for p in list {
                let path = match &media_dir {
                    Some(d) if !std::path::Path::new(&p).is_absolute() => d.join(&p),
                    _ => std::path::PathBuf::from(&p),
                };
                if !path.is_file() {
                    return Err(OperatorError::data(
                        op,
                        format!(
                            "input `{input}` row {}: media file {} does not exist; connect the \
                             `media` input to the directory the paths are relative to",
                            i + 1,
                            path.display()
                        ),
                    )
                    .into());
                }
                parts.push(if image {
                    ContentPart::Image { path }
                } else {
                    ContentPart::Video { path }
                });
            }
        }
        expflow_models::place_media(conv, parts);
    }
    if placeholders {
        ctx.log(&format!(
            "note: `{input}` rows carry <image>/<video> placeholders; this text model trains on them as plain text"
        ));
    }
    Ok(Some(convs))
}

/// Logging, progress and cancellation wired to the node context.
pub fn with_hooks<T>(ctx: &Context, f: impl FnOnce(&Hooks) -> T) -> T {
    let log = |m: &str| ctx.log(m);
    let started = std::time::Instant::now();
    let progress = |d: usize, t: usize| {
        let secs = started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 && d > 0 {
            format!("{:.2} steps/s", d as f64 / secs)
        } else {
            String::new()
        };
        ctx.progress_of(d as u64, t as u64, "steps", &rate);
    };
    let cancel = |_: usize| ctx.is_cancelled();
    let hooks = Hooks {
        cancel: Some(&cancel),
        progress: Some(&progress),
        log: Some(&log),
    };
    f(&hooks)
}

/// Writes the `model` output: merged into a full model directory with the adapter in
/// `adapter/`, or the PEFT adapter files alone.
pub fn write_model(ctx: &Context, base: &Path, lora: &Lora, merge: bool) -> Result<(), OpError> {
    let out = &ctx.output("model")?.path;
    let base_name = ctx.input("model")?.digest.to_hex();
    if merge {
        peft::merge(base, lora, out)?;
        peft::save_adapter(&out.join("adapter"), lora, &base_name)?;
    } else {
        peft::save_adapter(out, lora, &base_name)?;
    }
    Ok(())
}

/// The resume directory for the native trainer's checkpoints (created).
pub fn checkpoints(ctx: &Context) -> Result<std::path::PathBuf, OpError> {
    let dir = ctx.resume_dir()?.join("native");
    std::fs::create_dir_all(&dir).map_err(|e| OperatorError::io("cannot create", &dir, e))?;
    Ok(dir)
}

/// Native training is reproducible for a seed; GPU training through external tools is not
/// bit-reproducible.
pub fn determinism(params: &Map<String, Value>) -> Determinism {
    match params.get("backend").and_then(Value::as_str) {
        Some("native") | None => Determinism::Seeded,
        Some(_) => Determinism::Nondeterministic,
    }
}

/// Runs the stage through an external tool when `backend` names one; `None` for `native`.
pub fn run_external(
    ctx: &Context,
    op: &'static str,
    stage: crate::tools::Stage,
) -> Option<Result<(), OpError>> {
    let p = Params::new(op, ctx.params());
    match p.choice("backend", &super::sft::BACKENDS) {
        Err(e) => Some(Err(e.into())),
        Ok("llamafactory") => Some(crate::tools::llamafactory::train(
            ctx,
            stage,
            super::checkpoints::evaluate,
        )),
        Ok("swift") => Some(crate::tools::swift::train(ctx, stage)),
        Ok(_) => None,
    }
}
