//! `expstar.reward` (in the ExpStar family, kept beside the backends it asks): sampled answers → the rewarded candidates `expstar.dpo_pairs` reads
//! (`{"id", "response", "reward"}`, spec §C.6; DAG node 24, unreleased in the original).
//!
//! Each candidate (`{id, response, labels}`: `expstar.postprocess` of
//! `expstar.rag_infer` with `samples`, or its `protocol: baseline` rows) is scored against
//! its reference `labels` with `metric` (`rouge_l`: ROUGE-L F as rouge_score computes it;
//! `bleu`: sentence BLEU, sacrebleu's 13a tokens with effective order; `judge`: a judge
//! model, served through the OpenAI-compatible client or native with the `model` input,
//! asked greedily with [`judge_prompt`] for a digit from 1 to 5, scored (d − 1) / 4; a reply
//! without one scores 0 and is counted in the log). With `threshold`,
//! `reward` is whether the score reaches it; with `threshold: null`, per id, the candidates
//! with the id's highest score are positive and the rest negative (an id whose candidates
//! all score the same gives no pair). Output rows keep the candidate's order and add
//! `score`. Deterministic with a metric (a function of the texts); with `judge`, as
//! `infer.chat`: a server promises nothing, the native runtime answers greedily.

use std::collections::HashMap;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use expflow_models::{ChatMessage, Sampling};
use serde_json::{Map, Value, json};

use super::backend::ChatReq;
use crate::error::{OperatorError, Result};
use crate::expstar::{read_rows, write_rows};
use crate::params::{Params, problems};

pub struct Reward;

const KIND: &str = "expstar.reward";

pub const METRICS: [&str; 3] = ["rouge_l", "bleu", "judge"];

/// The judge's request for one candidate.
pub fn judge_prompt(reference: &str, candidate: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::text(
            "system",
            "You grade commentary of science experiment videos against a reference.",
        ),
        ChatMessage::text(
            "user",
            &format!(
                "Reference commentary:\n{reference}\n\nCandidate commentary:\n{candidate}\n\n\
                 How well does the candidate match the reference in its narration, its \
                 scientific principles and its safety warnings? Answer with one digit from 1 \
                 (not at all) to 5 (fully)."
            ),
        ),
    ]
}

/// The judge's grade: the first digit 1–5 of its reply, as (d − 1) / 4.
pub fn judge_score(reply: &str) -> Option<f64> {
    reply
        .chars()
        .find(|c| ('1'..='5').contains(c))
        .and_then(|c| c.to_digit(10))
        .map(|d| f64::from(d - 1) / 4.0)
}

struct Config {
    metric: &'static str,
    threshold: Option<f64>,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let metric = p.choice("metric", &METRICS)?;
        if metric == "judge" {
            super::BackendKind::parse(KIND, map)?;
        }
        Ok(Config {
            metric,
            threshold: p.opt_f64("threshold")?,
        })
    }
}

/// The score of `hyp` against `reference` under `metric` (0 to 1).
pub fn score(metric: &str, hyp: &str, reference: &str) -> f64 {
    match metric {
        "bleu" => {
            let cfg = expflow_metrics::bleu::BleuConfig {
                effective_order: true,
                ..Default::default()
            };
            expflow_metrics::bleu::sentence_bleu(hyp, &[reference], &cfg).score / 100.0
        }
        _ => expflow_metrics::rouge::rouge_l(hyp, &[reference], false).fmeasure,
    }
}

/// Rewards for scored candidates `(id, score)`: `score >= threshold`, or without one, the
/// id's best score (and only when the id's scores differ).
pub fn rewards(scored: &[(String, f64)], threshold: Option<f64>) -> Vec<bool> {
    if let Some(t) = threshold {
        return scored.iter().map(|(_, s)| *s >= t).collect();
    }
    let mut range: HashMap<&str, (f64, f64)> = HashMap::new();
    for (id, s) in scored {
        let e = range.entry(id.as_str()).or_insert((*s, *s));
        e.0 = e.0.min(*s);
        e.1 = e.1.max(*s);
    }
    scored
        .iter()
        .map(|(id, s)| {
            let (lo, hi) = range[id.as_str()];
            hi > lo && *s == hi
        })
        .collect()
}

/// Replaces each score with the judge model's grade.
fn judge(ctx: &Context, rows: &[Value], scored: &mut [(String, f64)]) -> Result<(), OpError> {
    let backend = super::open_backend(ctx, KIND)?;
    let max_tokens = Params::new(KIND, ctx.params()).u64("max_tokens")?.max(1) as usize;
    let reqs: Vec<ChatReq> = rows
        .iter()
        .map(|r| ChatReq {
            messages: judge_prompt(
                r["labels"].as_str().unwrap_or_default(),
                r["response"].as_str().unwrap_or_default(),
            ),
            sampling: Sampling {
                max_new_tokens: max_tokens,
                ..Sampling::default()
            },
            send_seed: false,
            keep_special: false,
        })
        .collect();
    let names: Vec<String> = (1..=rows.len()).map(|i| format!("candidate {i}")).collect();
    let replies = if reqs.is_empty() {
        Vec::new()
    } else {
        backend.chat(ctx, &reqs, &names)?
    };
    let mut unparsed = 0;
    for ((_, s), r) in scored.iter_mut().zip(&replies) {
        let text = r.choices.first().map(|c| c.text.as_str()).unwrap_or("");
        *s = judge_score(text).unwrap_or_else(|| {
            unparsed += 1;
            0.0
        });
    }
    if unparsed > 0 {
        ctx.log(&format!(
            "{unparsed} of {} judge replies had no grade 1-5 (scored 0)",
            replies.len()
        ));
    }
    Ok(())
}

impl Operator for Reward {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        // 2: rows travel as Parquet tables, not JSON Lines (docs/decisions.md).
        2
    }

    fn signature(&self) -> Signature {
        let mut params = vec![
            ParamSpec::with_default(
                "metric",
                ParamKind::String,
                json!("rouge_l"),
                "the score against the reference: rouge_l, bleu, or judge (a model's 1-5 grade)",
            ),
            ParamSpec::with_default(
                "backend",
                ParamKind::String,
                json!("openai"),
                "metric judge: openai (an OpenAI-compatible server) or native (the `model` input)",
            ),
            ParamSpec::with_default(
                "model",
                ParamKind::String,
                Value::Null,
                "metric judge, backend openai: the judge's name at the server",
            ),
            ParamSpec::with_default(
                "media",
                ParamKind::String,
                json!("none"),
                "metric judge: the judge sees text only",
            ),
            ParamSpec::with_default(
                "batch_size",
                ParamKind::Int,
                json!(8),
                "metric judge, native: prompts per generate call",
            ),
            ParamSpec::with_default(
                "max_tokens",
                ParamKind::Int,
                json!(8),
                "metric judge: the budget of the judge's reply",
            ),
            ParamSpec::with_default(
                "threshold",
                ParamKind::Float,
                Value::Null,
                "positive when the score reaches this (0 to 1); null: the best of each id's candidates",
            ),
        ];
        params.extend(super::openai::client_params(false));
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new(
                    "candidates",
                    PortType::Table,
                    "sampled answers {id, response, labels}, a rows table (expstar.postprocess rows)",
                ),
                Port::new(
                    "model",
                    PortType::Model,
                    "metric judge, backend native: the judge model directory",
                )
                .optional(),
                Port::new(
                    "endpoint",
                    PortType::Dir,
                    "judge, backend openai: a serve.model endpoint, its servers started for this node (instead of base_url)",
                )
                .optional(),
            ]),
            outputs: Ports::Fixed(vec![Port::new(
                "candidates",
                PortType::Table,
                "{id, response, reward, score}, a rows table (expstar.dpo_pairs' candidates)",
            )]),
            params,
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn determinism(&self, params: &Map<String, Value>) -> Determinism {
        if params.get("metric").and_then(Value::as_str) != Some("judge") {
            return Determinism::Deterministic;
        }
        let mut greedy = params.clone();
        greedy.insert("temperature".into(), json!(0.0));
        super::determinism(&greedy)
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let rows = read_rows(&ctx.input("candidates")?.path)?;
        let mut scored = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let field = |k: &str| {
                row.get(k).and_then(Value::as_str).ok_or_else(|| {
                    OperatorError::data(
                        KIND,
                        format!(
                            "candidate {}: no string `{k}`; connect expstar.postprocess rows \
                             ({{id, response, labels}})",
                            i + 1
                        ),
                    )
                })
            };
            let (id, response, labels) = (field("id")?, field("response")?, field("labels")?);
            scored.push((id.to_string(), score(cfg.metric, response, labels)));
        }
        if cfg.metric == "judge" {
            judge(ctx, &rows, &mut scored)?;
        }
        let rewards = rewards(&scored, cfg.threshold);
        let mut out = Vec::with_capacity(rows.len());
        for ((row, (id, s)), r) in rows.iter().zip(&scored).zip(&rewards) {
            out.push(json!({"id": id, "response": row["response"], "reward": r, "score": s}));
        }
        let positive = rewards.iter().filter(|r| **r).count();
        ctx.log(&format!(
            "{} candidates by {}: {positive} positive, {} negative",
            out.len(),
            cfg.metric,
            out.len() - positive
        ));
        write_rows(&ctx.output("candidates")?.path, &out)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewards_by_threshold_or_by_the_best_of_each_id() {
        let s = |id: &str, v: f64| (id.to_string(), v);
        let scored = [
            s("a", 0.2),
            s("a", 0.6),
            s("a", 0.6),
            s("b", 0.5),
            s("b", 0.5),
        ];
        assert_eq!(rewards(&scored, Some(0.5)), [false, true, true, true, true]);
        assert_eq!(rewards(&scored, None), [false, true, true, false, false]);
    }

    #[test]
    fn judge_grades_are_the_first_digit_from_1_to_5() {
        assert_eq!(judge_score("Grade: 4/5"), Some(0.75));
        assert_eq!(judge_score("0 or 1"), Some(0.0));
        assert_eq!(judge_score("5"), Some(1.0));
        assert_eq!(judge_score("none"), None);
    }

    #[test]
    fn the_reference_itself_scores_highest() {
        let reference = "<Narration>\nPour the water slowly\n<Safety>\nWear goggles\n";
        for m in ["rouge_l", "bleu"] {
            let same = score(m, reference, reference);
            let part = score(m, "<Narration>\nPour the water\n", reference);
            let other = score(m, "Stir the sugar", reference);
            assert!((same - 1.0).abs() < 1e-9, "{m}: {same}");
            assert!(same > part && part > other, "{m}: {same} {part} {other}");
        }
    }
}
