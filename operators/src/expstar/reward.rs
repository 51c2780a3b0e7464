//! `expstar.reward`: sampled answers → the rewarded candidates `expstar.dpo_pairs` reads
//! (`{"id", "response", "reward"}`, spec §C.6; DAG node 24, unreleased in the original).
//!
//! Each candidate (`{id, response, labels}`: `expstar.postprocess` of
//! `expstar.rag_infer` with `samples`, or its `protocol: baseline` rows) is scored against
//! its reference `labels` with `metric` (`rouge_l`: ROUGE-L F as rouge_score computes it;
//! `bleu`: sentence BLEU, sacrebleu's 13a tokens with effective order). With `threshold`,
//! `reward` is whether the score reaches it; with `threshold: null`, per id, the candidates
//! with the id's highest score are positive and the rest negative (an id whose candidates
//! all score the same gives no pair). Output rows keep the candidate's order and add
//! `score`. Deterministic: the metric is a function of the texts.

use std::collections::HashMap;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::{read_jsonl, write_jsonl};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct Reward;

const KIND: &str = "expstar.reward";

pub const METRICS: [&str; 2] = ["rouge_l", "bleu"];

struct Config {
    metric: &'static str,
    threshold: Option<f64>,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        Ok(Config {
            metric: p.choice("metric", &METRICS)?,
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

impl Operator for Reward {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "candidates",
                PortType::File,
                "sampled answers {id, response, labels}, JSON Lines (expstar.postprocess rows)",
            )]),
            outputs: Ports::Fixed(vec![Port::new(
                "candidates",
                PortType::File,
                "{id, response, reward, score}, JSON Lines (expstar.dpo_pairs' candidates)",
            )]),
            params: vec![
                ParamSpec::with_default(
                    "metric",
                    ParamKind::String,
                    json!("rouge_l"),
                    "the score against the reference: rouge_l or bleu",
                ),
                ParamSpec::with_default(
                    "threshold",
                    ParamKind::Float,
                    Value::Null,
                    "positive when the score reaches this (0 to 1); null: the best of each id's candidates",
                ),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let rows = read_jsonl(&ctx.input("candidates")?.path)?;
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
        write_jsonl(&ctx.output("candidates")?.path, &out)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewards_by_threshold_or_by_the_best_of_each_id() {
        let s = |id: &str, v: f64| (id.to_string(), v);
        let scored = [s("a", 0.2), s("a", 0.6), s("a", 0.6), s("b", 0.5), s("b", 0.5)];
        assert_eq!(
            rewards(&scored, Some(0.5)),
            [false, true, true, true, true]
        );
        assert_eq!(rewards(&scored, None), [false, true, true, false, false]);
    }

    #[test]
    fn the_reference_itself_scores_highest() {
        let reference = "<Narration>\nPour the water slowly\n<Safety>\nWear goggles\n";
        for m in METRICS {
            let same = score(m, reference, reference);
            let part = score(m, "<Narration>\nPour the water\n", reference);
            let other = score(m, "Stir the sugar", reference);
            assert!((same - 1.0).abs() < 1e-9, "{m}: {same}");
            assert!(same > part && part > other, "{m}: {same} {part} {other}");
        }
    }
}
