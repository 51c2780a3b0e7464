//! `mcq.summary`: the predictions tables of several `mcq.answer` nodes (a gathered sweep,
//! `in: {runs: "answer[*].predictions"}`) → one table, a row per (node, task) and one per node
//! over all tasks (`task` = `all`): `node`, `strategy`, `task`, `items`, `scored`, `accuracy`,
//! `fallback`, `tokens` (generated), `calls` (forward passes and generation requests),
//! `mean_entropy`. Wall-clock seconds are notes of each `mcq.answer` node (`expflow log`), not
//! data. Rows follow the
//! gathered points' order, tasks sorted within each.

use std::collections::BTreeMap;

use expflow_engine::{
    Context, Determinism, OpError, Operator, Port, PortType, Ports, Resources, Signature,
};
use polars::prelude::*;
use serde_json::{Map, Value};

use crate::error::{OperatorError, Result};
use crate::infer::rows::text_column;
use crate::table_io::{read_table, write_table};

pub struct Summary;

const KIND: &str = "mcq.summary";

#[derive(Default)]
struct Acc {
    items: u64,
    scored: u64,
    correct: u64,
    fallback: u64,
    tokens: u64,
    calls: u64,
    entropy: f64,
}

fn numbers(df: &DataFrame, name: &str) -> Result<Vec<f64>> {
    let c = df
        .column(name)
        .and_then(|c| c.cast(&DataType::Float64))
        .map_err(|e| {
            OperatorError::polars(KIND, format!("reading `{name}` of a predictions table"), e)
        })?;
    Ok(c.f64()
        .map_err(|e| OperatorError::polars(KIND, format!("reading `{name}`"), e))?
        .iter()
        .map(|v| v.unwrap_or(0.0))
        .collect())
}

/// The rows of one predictions table: per task, then `all`.
fn point_rows(df: &DataFrame) -> Result<(String, BTreeMap<String, Acc>)> {
    let col = |name: &str| -> Result<Vec<Option<String>>> {
        text_column(KIND, df, name)?.ok_or_else(|| {
            OperatorError::data(
                KIND,
                format!(
                    "a gathered table has no `{name}` column; gather mcq.answer's `predictions`"
                ),
            )
        })
    };
    let (tasks, strategy, answer, pred, parsed) = (
        col("task")?,
        col("strategy")?,
        col("answer")?,
        col("pred")?,
        col("parsed")?,
    );
    let (tokens, calls, entropy) = (
        numbers(df, "tokens")?,
        numbers(df, "calls")?,
        numbers(df, "entropy")?,
    );
    let mut per: BTreeMap<String, Acc> = BTreeMap::new();
    for i in 0..df.height() {
        let task = tasks[i].clone().unwrap_or_default();
        for key in [task, "all".to_string()] {
            let a = per.entry(key).or_default();
            a.items += 1;
            if let Some(g) = answer[i].as_deref() {
                a.scored += 1;
                a.correct += u64::from(pred[i].as_deref() == Some(g));
            }
            a.fallback += u64::from(parsed[i].as_deref() == Some("fallback"));
            a.tokens += tokens[i] as u64;
            a.calls += calls[i] as u64;
            a.entropy += entropy[i];
        }
    }
    let strategy = strategy.first().cloned().flatten().unwrap_or_default();
    Ok((strategy, per))
}

impl Operator for Summary {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "runs",
                PortType::Dir,
                "gathered predictions tables (NODE[*].predictions)",
            )]),
            outputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "node, strategy, task, items, scored, accuracy, fallback, tokens, calls, mean_entropy",
            )]),
            params: Vec::new(),
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, _params: &Map<String, Value>) -> Vec<String> {
        Vec::new()
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let dir = &ctx.input("runs")?.path;
        let list_path = dir.join(expflow_engine::gather::POINTS);
        let bytes = std::fs::read(&list_path)
            .map_err(|e| OperatorError::io("cannot read", &list_path, e))?;
        let points: Vec<Value> = serde_json::from_slice(&bytes)?;
        let (mut node, mut strat, mut task) = (Vec::new(), Vec::new(), Vec::new());
        let (mut items, mut scored, mut acc, mut fallback, mut tokens, mut secs, mut ent) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for p in &points {
            let (Some(name), Some(path)) = (
                p.get("node").and_then(Value::as_str),
                p.get("path").and_then(Value::as_str),
            ) else {
                return Err(OperatorError::data(
                    KIND,
                    format!("{}: a point without node or path", list_path.display()),
                )
                .into());
            };
            let df = read_table(&dir.join(path))?;
            let (strategy, per) = point_rows(&df)?;
            for (t, a) in per {
                node.push(name.to_string());
                strat.push(strategy.clone());
                task.push(t);
                items.push(a.items);
                scored.push(a.scored);
                acc.push((a.scored > 0).then(|| a.correct as f64 / a.scored as f64));
                fallback.push(a.fallback);
                tokens.push(a.tokens);
                secs.push(a.calls);
                ent.push(a.entropy / a.items.max(1) as f64);
            }
        }
        let height = node.len();
        let mut df = DataFrame::new(
            height,
            vec![
                Column::new("node".into(), node),
                Column::new("strategy".into(), strat),
                Column::new("task".into(), task),
                Column::new("items".into(), items),
                Column::new("scored".into(), scored),
                Column::new("accuracy".into(), acc),
                Column::new("fallback".into(), fallback),
                Column::new("tokens".into(), tokens),
                Column::new("calls".into(), secs),
                Column::new("mean_entropy".into(), ent),
            ],
        )
        .map_err(|e| OperatorError::polars(KIND, "building the summary", e))?;
        write_table(&mut df, &ctx.output("table")?.path)?;
        Ok(())
    }
}
