//! The metric values a record keeps: the numbers of JSON metrics outputs and the numeric
//! columns of metrics tables (training curves), read from the outputs before they are
//! stored, so that comparing runs reads records alone.

use std::collections::BTreeMap;
use std::path::Path;

use expflow_cache::Metrics;
use serde_json::Value;

use crate::compile::CNode;
use crate::operator::{PortType, Ports};

/// Numbers kept from one JSON output at most: a bigger object is not a metrics summary.
const MAX_SCALARS: usize = 1_000;
/// Values kept from one metrics table at most (all columns together).
const MAX_SERIES_VALUES: usize = 200_000;

/// The output ports of `node` that hold metrics, with whether each is a table: outputs of
/// type `metrics`, outputs the operator marks, and those named under `metrics:`.
pub fn ports(node: &CNode) -> Vec<(String, bool)> {
    let marked: Vec<&str> = match &node.op.signature().outputs {
        Ports::Fixed(ps) => ps.iter().filter(|p| p.metrics).map(|p| p.name).collect(),
        _ => Vec::new(),
    };
    node.outputs
        .iter()
        .filter(|(port, ty)| {
            **ty == PortType::Metrics
                || marked.contains(&port.as_str())
                || node.metrics.iter().any(|m| m == *port)
        })
        .map(|(port, ty)| (port.clone(), *ty == PortType::Table))
        .collect()
}

/// Reads the metrics of `node`'s outputs at `paths` (port → path of the written output).
/// What cannot be read is left out with a line for the node log, never an error: metrics
/// describe outputs, they do not decide whether the node succeeded.
pub fn extract(node: &CNode, paths: &BTreeMap<String, &Path>) -> (Metrics, Vec<String>) {
    let mut m = Metrics::default();
    let mut notes = Vec::new();
    for (port, table) in ports(node) {
        let Some(path) = paths.get(&port) else {
            continue;
        };
        if table {
            match node.op.read_series(path) {
                None => notes.push(format!(
                    "metrics: `{}` cannot read the table `{port}`; its values are not kept",
                    node.op.kind()
                )),
                Some(Err(e)) => notes.push(format!("metrics: table `{port}`: {e}")),
                Some(Ok(series)) => {
                    let total: usize = series.values().map(Vec::len).sum();
                    if total > MAX_SERIES_VALUES {
                        notes.push(format!(
                            "metrics: table `{port}` has {total} values, more than the {MAX_SERIES_VALUES} a record keeps; not kept"
                        ));
                        continue;
                    }
                    for (col, values) in series {
                        m.series.insert(format!("{port}.{col}"), values);
                    }
                }
            }
        } else {
            match std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()))
            {
                Ok(v) => {
                    let mut found = BTreeMap::new();
                    flatten(&v, port.clone(), &mut found);
                    if found.len() > MAX_SCALARS {
                        notes.push(format!(
                            "metrics: `{port}` has {} numbers, more than the {MAX_SCALARS} a record keeps; not kept",
                            found.len()
                        ));
                    } else {
                        m.scalars.extend(found);
                    }
                }
                Err(e) => notes.push(format!("metrics: `{port}` is not JSON: {e}")),
            }
        }
    }
    (m, notes)
}

/// Every finite number in `v`, named by its path (`scores.bleu`, `scores.per_task.i2t`).
/// Lists are left out: they are data, not summaries.
fn flatten(v: &Value, name: String, out: &mut BTreeMap<String, f64>) {
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_f64().filter(|x| x.is_finite()) {
                out.insert(name, x);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                flatten(v, format!("{name}.{k}"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_named_by_their_path_and_lists_and_text_left_out() {
        let mut out = BTreeMap::new();
        flatten(
            &json!({"bleu": 0.25, "n": 12, "by": {"i2t": 0.5}, "note": "x", "rows": [1, 2]}),
            "scores".into(),
            &mut out,
        );
        let names: Vec<&str> = out.keys().map(String::as_str).collect();
        assert_eq!(names, ["scores.bleu", "scores.by.i2t", "scores.n"]);
        assert_eq!(out["scores.by.i2t"], 0.5);
    }
}
