//! Dev-set evaluation of an external trainer's saved checkpoints by expflow (issue 15, item
//! 3): each `checkpoint-<step>/` LoRA adapter (PEFT layout) is applied to the base model on
//! the native runtime, the dev rows are answered, and the task metric (`eval_accuracy` or
//! `eval_rouge_l`) is computed per checkpoint; the best checkpoint by that metric is the one
//! the node outputs. The tools' own `compute_accuracy` is token-level teacher-forced
//! accuracy, not answer accuracy, which is why expflow does this itself.

use std::path::{Path, PathBuf};

use expflow_engine::{Context, OpError};
use expflow_models::{ChatMessage, Trainable};
use expflow_train::{Lora, peft};
use serde_json::Value;

use crate::error::OperatorError;
use crate::tools::checkpoints::saved_adapters;

/// The score of one model on dev rows (prompt, reference answer): `accuracy` is the share of
/// greedy answers whose first option letter (A–D) is the reference's; `rouge_l` the mean
/// ROUGE-L F. This is the one place answer scoring happens for checkpoint selection, so
/// another scorer (choice probabilities) can replace it here.
pub fn dev_score(
    model: &dyn Trainable,
    dev: &[(Vec<ChatMessage>, String)],
    metric: &str,
    max_new_tokens: usize,
) -> Result<f64, OpError> {
    if dev.is_empty() {
        return Err("no dev rows to evaluate the checkpoints on".into());
    }
    let letter = |s: &str| {
        expflow_metrics::accuracy::extract(s, "ABCD")
            .ok()
            .and_then(|(c, _)| c)
    };
    let mut total = 0f64;
    for (prompt, answer) in dev {
        let hyp = model
            .complete(prompt, max_new_tokens)
            .map_err(|e| OpError::from(e.to_string()))?;
        total += match metric {
            "accuracy" => {
                let got = letter(&hyp);
                f64::from(u8::from(got.is_some() && got == letter(answer)))
            }
            _ => expflow_metrics::rouge::rouge_l(&hyp, &[answer.as_str()], false).fmeasure,
        };
    }
    Ok(total / dev.len() as f64)
}

/// Evaluates every saved adapter of `output_dir` on the dev set with the native runtime
/// (the `model` input as base) and returns (step, score) in step order.
pub fn evaluate(
    ctx: &Context,
    op: &'static str,
    output_dir: &Path,
    state: &Value,
    metric: &str,
    max_new_tokens: usize,
) -> Result<Vec<(usize, PathBuf, f64)>, OpError> {
    if !ctx.inputs().contains_key("model") {
        return Err(OperatorError::param(
            op,
            "eval_metric",
            "needs the `model` input (the base model directory) to evaluate the checkpoints on the native runtime",
        )
        .into());
    }
    let super::common::Loaded {
        mut model, vision, ..
    } = super::common::load_model(ctx, op)?;
    let dev = super::common::sft_conversations(ctx, op, "dev", vision)?
        .ok_or_else(|| {
            OperatorError::param(
                op,
                "eval_metric",
                "needs dev rows: connect `dev`, or name the dev set of the `dataset` input in `eval_dataset_name`",
            )
        })?;
    let pairs: Vec<(Vec<ChatMessage>, String)> = dev
        .into_iter()
        .map(|mut c| {
            let answer = c.pop().map(|m| m.joined_text()).unwrap_or_default();
            (c, answer)
        })
        .collect();
    let final_step = state["global_step"].as_u64().map(|s| s as usize);
    let adapters = saved_adapters(output_dir, final_step);
    if adapters.is_empty() {
        return Err(format!(
            "{}: the trainer saved no adapter (checkpoint-<step>/adapter_model.safetensors) to evaluate",
            output_dir.display()
        )
        .into());
    }
    let n = adapters.len() as u64;
    let mut out = Vec::new();
    for (k, (step, dir)) in adapters.into_iter().enumerate() {
        peft::load_adapter(model.as_mut(), &dir)?;
        let score = dev_score(model.as_ref(), &pairs, metric, max_new_tokens);
        Lora::detach(model.as_mut());
        let score = score?;
        ctx.log(&format!(
            "checkpoint at step {step}: dev {metric} {score:.4} on {} rows",
            pairs.len()
        ));
        ctx.progress_of(k as u64 + 1, n, "checkpoints", "");
        out.push((step, dir, score));
    }
    Ok(out)
}
