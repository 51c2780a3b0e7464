//! `expflow compare PIPELINE`: one row per run and per `matrix` point, columns grouped as
//! parameters | metrics, built from the records alone.

use std::collections::BTreeMap;

use expflow_cache::Record;
use serde::Serialize;
use serde_json::Value;

use super::{History, all_params, metrics_of, split_point};
use crate::error::{EngineError, Result};

#[derive(Clone, Debug, Default)]
pub struct CompareOptions {
    /// Keep only columns whose values differ between rows.
    pub only_changed: bool,
    /// Sort rows by this metric column (`NODE.PORT.FIELD`), highest first; with a `:asc`
    /// suffix, lowest first. Rows without the metric go last.
    pub sort: Option<String>,
}

/// The table: `run` and `point` identify a row; then parameters, then metrics.
#[derive(Clone, Debug, Serialize)]
pub struct CompareTable {
    pub params: Vec<String>,
    pub metrics: Vec<String>,
    pub rows: Vec<CompareRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompareRow {
    pub run: String,
    /// The matrix point (`lr=0.1,seed=2`), empty for a run without a matrix.
    pub point: String,
    pub params: BTreeMap<String, Value>,
    pub metrics: BTreeMap<String, f64>,
}

/// Every run of `pipeline`, oldest first, one row per matrix point.
pub fn compare(h: &mut History<'_>, pipeline: &str, opts: &CompareOptions) -> Result<CompareTable> {
    let runs: Vec<_> = h.runs(Some(pipeline)).into_iter().cloned().collect();
    if runs.is_empty() {
        let known: Vec<String> = {
            let mut p: Vec<String> = h.runs(None).iter().map(|r| r.pipeline.clone()).collect();
            p.sort();
            p.dedup();
            p
        };
        return Err(EngineError::Usage(format!(
            "no runs of pipeline `{pipeline}` in this workspace{}",
            if known.is_empty() {
                String::new()
            } else {
                format!(" (it has runs of: {})", known.join(", "))
            }
        )));
    }
    let mut rows = Vec::new();
    for run in &runs {
        let nodes = h.nodes(run)?;
        // Nodes of a matrix point go to that point's row under their base name; nodes
        // outside any matrix go to every row of the run.
        let mut shared: Vec<(String, Record)> = Vec::new();
        let mut points: BTreeMap<String, Vec<(String, Record)>> = BTreeMap::new();
        for (name, rec) in nodes {
            match split_point(&name) {
                (base, Some(point)) => points
                    .entry(point.to_string())
                    .or_default()
                    .push((base.to_string(), rec)),
                (_, None) => shared.push((name, rec)),
            }
        }
        if points.is_empty() {
            points.insert(String::new(), Vec::new());
        }
        for (point, own) in points {
            let all: Vec<(String, Record)> = shared.iter().cloned().chain(own).collect();
            rows.push(CompareRow {
                run: run.run_id.clone(),
                point,
                params: all_params(run, &all),
                metrics: metrics_of(&all),
            });
        }
    }
    let mut params: Vec<String> = rows.iter().flat_map(|r| r.params.keys().cloned()).collect();
    let mut metrics: Vec<String> = rows
        .iter()
        .flat_map(|r| r.metrics.keys().cloned())
        .collect();
    params.sort();
    params.dedup();
    metrics.sort();
    metrics.dedup();
    if opts.only_changed && rows.len() > 1 {
        params.retain(|c| {
            let first = rows[0].params.get(c);
            rows.iter().any(|r| r.params.get(c) != first)
        });
        metrics.retain(|c| {
            let first = rows[0].metrics.get(c);
            rows.iter().any(|r| r.metrics.get(c) != first)
        });
    }
    if let Some(spec) = &opts.sort {
        let (name, asc) = match spec.strip_suffix(":asc") {
            Some(n) => (n, true),
            None => (spec.strip_suffix(":desc").unwrap_or(spec), false),
        };
        if !rows.iter().any(|r| r.metrics.contains_key(name)) {
            let hint = crate::diag::closest(name, metrics.iter().map(String::as_str))
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            return Err(EngineError::Usage(format!(
                "--sort: no run of `{pipeline}` has the metric `{name}`{hint}"
            )));
        }
        rows.sort_by(|x, y| {
            let (a, b) = (x.metrics.get(name), y.metrics.get(name));
            match (a, b) {
                (Some(a), Some(b)) if asc => a.total_cmp(b),
                (Some(a), Some(b)) => b.total_cmp(a),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            }
        });
    }
    Ok(CompareTable {
        params,
        metrics,
        rows,
    })
}
