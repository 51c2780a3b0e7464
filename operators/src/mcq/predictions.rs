//! `mcq.answer`'s outputs: the predictions table and the metrics of its predictions.

use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::items::McItem;
use super::{entropy, margin};
use crate::error::{OperatorError, Result};
use crate::mac::LETTERS;

const KIND: &str = "mcq.answer";

/// One item's prediction.
#[derive(Clone, Debug, Default)]
pub struct Pred {
    pub pred: usize,
    pub parsed: &'static str,
    pub p: Vec<f64>,
    pub tokens: u64,
    pub calls: u64,
    pub seconds: f64,
    pub response: String,
    pub confidence: Option<f64>,
    pub reasked: bool,
}

/// The predictions table.
pub fn table(items: &[McItem], preds: &[Pred], strategy: &str) -> Result<DataFrame> {
    let letter = |k: usize| LETTERS[k].to_string();
    let prob = |k: usize| -> Vec<f64> { preds.iter().map(|p| p.p[k]).collect() };
    let cols = vec![
        Column::new(
            "id".into(),
            items.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "task".into(),
            items.iter().map(|i| i.task.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "answer".into(),
            items.iter().map(|i| i.gold.map(letter)).collect::<Vec<_>>(),
        ),
        Column::new(
            "pred".into(),
            preds.iter().map(|p| letter(p.pred)).collect::<Vec<_>>(),
        ),
        Column::new(
            "correct".into(),
            items
                .iter()
                .zip(preds)
                .map(|(i, p)| i.gold.map(|g| g == p.pred))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "parsed".into(),
            preds.iter().map(|p| p.parsed).collect::<Vec<_>>(),
        ),
        Column::new("p_A".into(), prob(0)),
        Column::new("p_B".into(), prob(1)),
        Column::new("p_C".into(), prob(2)),
        Column::new("p_D".into(), prob(3)),
        Column::new(
            "entropy".into(),
            preds.iter().map(|p| entropy(&p.p)).collect::<Vec<_>>(),
        ),
        Column::new(
            "margin".into(),
            preds.iter().map(|p| margin(&p.p)).collect::<Vec<_>>(),
        ),
        Column::new("strategy".into(), vec![strategy; preds.len()]),
        Column::new(
            "tokens".into(),
            preds.iter().map(|p| p.tokens).collect::<Vec<_>>(),
        ),
        Column::new(
            "calls".into(),
            preds.iter().map(|p| p.calls).collect::<Vec<_>>(),
        ),
        Column::new(
            "confidence".into(),
            preds.iter().map(|p| p.confidence).collect::<Vec<_>>(),
        ),
        Column::new(
            "reasked".into(),
            preds.iter().map(|p| p.reasked).collect::<Vec<_>>(),
        ),
        Column::new(
            "response".into(),
            preds.iter().map(|p| p.response.clone()).collect::<Vec<_>>(),
        ),
    ];
    DataFrame::new(items.len(), cols)
        .map_err(|e| OperatorError::polars(KIND, "building the predictions", e))
}

/// Counts and accuracy of some predictions (seconds are notes, not data).
fn summarise(items: &[&McItem], preds: &[&Pred]) -> Value {
    let scored = items.iter().filter(|i| i.gold.is_some()).count();
    let correct = items
        .iter()
        .zip(preds)
        .filter(|(i, p)| i.gold == Some(p.pred))
        .count();
    let count = |what: &str| preds.iter().filter(|p| p.parsed == what).count();
    json!({
        "items": items.len(),
        "scored": scored,
        "correct": correct,
        "accuracy": (scored > 0).then(|| correct as f64 / scored as f64),
        "from_text": count("text"),
        "fallback": count("fallback"),
        "reasked": preds.iter().filter(|p| p.reasked).count(),
        "tokens": preds.iter().map(|p| p.tokens).sum::<u64>(),
        "calls": preds.iter().map(|p| p.calls).sum::<u64>(),
        "mean_entropy": preds.iter().map(|p| entropy(&p.p)).sum::<f64>() / preds.len().max(1) as f64,
    })
}

pub fn metrics(items: &[McItem], preds: &[Pred], strategy: &str) -> Value {
    let mut tasks: Vec<&str> = items.iter().map(|i| i.task.as_str()).collect();
    tasks.sort_unstable();
    tasks.dedup();
    let mut per = Map::new();
    for t in tasks {
        let (it, pr): (Vec<&McItem>, Vec<&Pred>) =
            items.iter().zip(preds).filter(|(i, _)| i.task == t).unzip();
        per.insert(t.to_string(), summarise(&it, &pr));
    }
    let mut out = summarise(
        &items.iter().collect::<Vec<_>>(),
        &preds.iter().collect::<Vec<_>>(),
    );
    out["strategy"] = json!(strategy);
    out["tasks"] = Value::Object(per);
    out
}
