//! `train.sft`: LoRA supervised fine-tuning. Inputs `data` (ms-swift `messages` rows or
//! LLaMA-Factory alpaca rows; JSON Lines, a JSON array or a table), optional `dev` (same
//! forms), `model` (the base model directory). Outputs `model` (merged model directory with
//! the PEFT adapter in `adapter/`, or the adapter alone with `merge: false`) and `metrics`
//! (step, epoch, lr, loss, grad_norm, eval_loss and the task metric).
//!
//! The `native` backend trains in-process on candle (`expflow-train`): resumable from its
//! last checkpoint after an interruption, with the same final weights as an uninterrupted
//! run. `llamafactory` and `swift` hand the same settings to those tools.

use std::collections::BTreeMap;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_models::{ChatMessage, Trainable};
use expflow_train::sft::Sft as SftObjective;
use expflow_train::{Lora, Objective, train};
use serde_json::{Map, Value, json};

use super::common::{self, Defaults};
use crate::error::Result;
use crate::params::{Params, problems};

pub struct Sft;

const KIND: &str = "train.sft";

pub const BACKENDS: [&str; 3] = ["native", "llamafactory", "swift"];

/// `eval_loss` on the dev set and, with `eval_metric`, a task metric against the dev answers:
/// of greedy generations (`accuracy`: the first option letter; `rouge_l`: ROUGE-L F), or of
/// one forward pass (`choice_accuracy`: the most probable of the letters A–D as the reply's
/// first token against the answer's letter, read with `mac::extract_answer`).
struct WithTask {
    inner: SftObjective,
    dev: Vec<(Vec<ChatMessage>, String)>,
    metric: String,
    max_new_tokens: usize,
}

impl Objective for WithTask {
    fn items(&self) -> usize {
        self.inner.items()
    }

    fn micro(
        &mut self,
        model: &dyn Trainable,
        items: &[usize],
    ) -> expflow_train::Result<(expflow_train::Tensor, f64, BTreeMap<String, f64>)> {
        self.inner.micro(model, items)
    }

    fn evaluate(
        &mut self,
        model: &mut dyn Trainable,
    ) -> expflow_train::Result<BTreeMap<String, f64>> {
        let mut out = self.inner.evaluate(model)?;
        if self.metric == "none" || self.dev.is_empty() {
            return Ok(out);
        }
        if self.metric == "choice_accuracy" {
            let acc = choice_accuracy(model, &self.dev)?;
            out.insert("eval_choice_accuracy".into(), acc);
            return Ok(out);
        }
        let mut total = 0f64;
        for (prompt, answer) in &self.dev {
            let hyp = model.complete(prompt, self.max_new_tokens)?;
            total += match self.metric.as_str() {
                "accuracy" => {
                    let first = |s: &str| {
                        expflow_metrics::accuracy::extract(s, "ABCD")
                            .ok()
                            .and_then(|(c, _)| c)
                    };
                    let got = first(&hyp);
                    f64::from(u8::from(got.is_some() && got == first(answer)))
                }
                _ => expflow_metrics::rouge::rouge_l(&hyp, &[answer.as_str()], false).fmeasure,
            };
        }
        out.insert(
            format!("eval_{}", self.metric),
            total / self.dev.len() as f64,
        );
        Ok(out)
    }
}

/// The share of dev rows whose most probable next letter (of A–D, after the prompt) is the
/// answer's letter; a row whose answer has no letter counts as wrong.
pub fn choice_accuracy(
    model: &dyn Trainable,
    dev: &[(Vec<ChatMessage>, String)],
) -> expflow_train::Result<f64> {
    let mut right = 0usize;
    for (prompt, answer) in dev {
        let lps = model.next_token_logprobs(prompt, &crate::mcq::LETTER_TEXTS)?;
        let pred = crate::mcq::argmax(&lps.iter().map(|&l| f64::from(l)).collect::<Vec<_>>());
        right += usize::from(crate::mac::extract_answer(answer) == Some(pred));
    }
    Ok(right as f64 / dev.len().max(1) as f64)
}

pub const EVAL_METRICS: [&str; 4] = ["none", "accuracy", "rouge_l", "choice_accuracy"];

fn check_all(map: &Map<String, Value>) -> Result<()> {
    let p = Params::new(KIND, map);
    p.choice("backend", &BACKENDS)?;
    p.choice("eval_metric", &EVAL_METRICS)?;
    common::parse(KIND, map)?;
    Ok(())
}

impl Operator for Sft {
    fn read_series(
        &self,
        path: &std::path::Path,
    ) -> Option<Result<expflow_engine::Series, OpError>> {
        Some(crate::table_io::numeric_columns(path).map_err(OpError::from))
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        let mut params = common::loop_params(&Defaults {
            rank: 16,
            alpha: 32.0,
            lr: 1e-4,
            epochs: 3,
        });
        params.push(ParamSpec::with_default(
            "eval_metric",
            ParamKind::String,
            json!("none"),
            "task metric on `dev` at each evaluation: none, accuracy (first option letter of a greedy generation), rouge_l, or choice_accuracy (the most probable letter A-D after the prompt, one forward pass)",
        ));
        params.push(ParamSpec::with_default(
            "eval_max_tokens",
            ParamKind::Int,
            json!(64),
            "tokens generated per dev row for eval_metric",
        ));
        params.push(ParamSpec::optional(
            "eval_dataset_name",
            ParamKind::String,
            "native: without a `dev` input, the dev rows are this dataset of the `dataset` input (as LLaMA-Factory's eval_dataset)",
        ));
        params.extend(crate::tools::backend_params());
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new(
                    "data",
                    PortType::File,
                    "training rows: ms-swift {messages} or alpaca {system, instruction, input, output}, optional `images`; JSON Lines, JSON or a table (or the `dataset` input)",
                )
                .optional(),
                Port::new("dev", PortType::File, "evaluation rows, same forms").optional(),
                Port::new("model", PortType::Model, "the base model directory").optional(),
                Port::new(
                    "dataset",
                    PortType::Dir,
                    "llamafactory and native: a LLaMA-Factory dataset directory (dataset_info.json); trains on `dataset_name`",
                )
                .optional(),
                Port::new(
                    "media",
                    PortType::Dir,
                    "the directory relative image/video paths of `data`/`dev` are in (an export's `media`); swift and llamafactory get them resolved against the node's copy of it",
                )
                .optional(),
            ]),
            outputs: Ports::Fixed(vec![
                Port::new(
                    "model",
                    PortType::Model,
                    "the fine-tuned model (merged, with the adapter in adapter/), or the PEFT adapter alone",
                ),
                Port::new(
                    "metrics",
                    PortType::Table,
                    "step, epoch, lr, loss, grad_norm, eval_loss, eval_<metric>",
                )
                .metrics(),
            ]),
            params,
            determinism: Determinism::Seeded,
            resources: Resources::default(),
        }
    }

    fn determinism(&self, params: &Map<String, Value>) -> Determinism {
        common::determinism(params)
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(check_all(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        if let Some(done) = common::run_external(ctx, KIND, crate::tools::Stage::Sft) {
            return done;
        }
        let p = Params::new(KIND, ctx.params());
        let (cfg, lora_cfg) = common::parse(KIND, ctx.params())?;
        let max_len = p.u64("max_len")? as usize;
        let common::Loaded {
            mut model,
            base,
            vision,
        } = common::load_model(ctx, KIND)?;
        let convs = common::sft_conversations(ctx, KIND, "data", vision)?.unwrap_or_default();
        let train_seqs = SftObjective::encode(model.as_ref(), &convs, max_len, "data")?;
        let (dev_seqs, dev_pairs) = match common::sft_conversations(ctx, KIND, "dev", vision)? {
            Some(convs) => {
                let seqs = SftObjective::encode(model.as_ref(), &convs, max_len, "dev")?;
                let pairs = convs
                    .into_iter()
                    .map(|mut c| {
                        let answer = c.pop().map(|m| m.joined_text()).unwrap_or_default();
                        (c, answer)
                    })
                    .collect();
                (seqs, pairs)
            }
            None => (Vec::new(), Vec::new()),
        };
        let tokens: usize = train_seqs.iter().map(|s| s.ids.len()).sum();
        let lora = Lora::attach(model.as_mut(), &lora_cfg)?;
        ctx.log(&format!(
            "SFT: {} rows ({tokens} tokens), {} dev rows; LoRA r {} alpha {} on {} linears ({} trainable parameters)",
            train_seqs.len(),
            dev_seqs.len(),
            lora_cfg.rank,
            lora_cfg.alpha,
            lora.layers.len(),
            lora.parameters()
        ));
        let mut obj = WithTask {
            inner: SftObjective {
                train: train_seqs,
                dev: dev_seqs,
                eval_batch: cfg.batch_size.max(4),
            },
            dev: dev_pairs,
            metric: p.str("eval_metric")?.to_string(),
            max_new_tokens: p.u64("eval_max_tokens")? as usize,
        };
        let ckpt = common::checkpoints(ctx)?;
        let out = common::with_hooks(ctx, |hooks| {
            train(model.as_mut(), &lora, &mut obj, &cfg, Some(&ckpt), hooks)
        })?;
        if out.resumed_from > 0 {
            ctx.log(&format!(
                "resumed at step {} of {}",
                out.resumed_from, out.total_steps
            ));
        }
        if let Some((step, v)) = out.best {
            ctx.log(&format!(
                "kept the adapter of step {step} ({} {v})",
                cfg.best_metric.as_deref().unwrap_or_default()
            ));
        }
        if let Some(step) = out.stopped_early {
            ctx.log(&format!(
                "stopped early at step {step} of {}",
                out.total_steps
            ));
        }
        crate::train_io::write_metrics(ctx, KIND, &out.rows)?;
        lora.set_training(false);
        common::write_model(ctx, &base, &lora, p.bool("merge")?)?;
        Ok(())
    }
}
