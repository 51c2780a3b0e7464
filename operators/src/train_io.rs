//! What the native trainer and the external training tools both read and write: the rows of
//! a training input and the metrics table of a training node. It depends on nothing else in
//! this crate but `error` and `table_io`, so `train` and `tools` can both use it without
//! importing each other.

use std::path::Path;

use expflow_engine::{Context, OpError};
use expflow_train::MetricRow;
use polars::prelude::*;
use serde_json::Value;

use crate::error::{OperatorError, Result};
use crate::table_io::{read_table, write_table};

/// Rows of a training input: JSON Lines, a JSON array, or a table (Parquet).
pub fn read_rows(op: &'static str, path: &Path) -> Result<Vec<Value>, OpError> {
    let head = std::fs::read(path).map_err(|e| OperatorError::io("cannot read", path, e))?;
    if head.starts_with(b"PAR1") {
        let mut df = read_table(path)?;
        let mut buf = Vec::new();
        JsonWriter::new(&mut buf)
            .with_json_format(JsonFormat::JsonLines)
            .finish(&mut df)
            .map_err(|e| OperatorError::polars(op, "converting the table to rows", e))?;
        return String::from_utf8_lossy(&buf)
            .lines()
            .map(|l| serde_json::from_str(l).map_err(|e| OpError::from(e.to_string())))
            .collect();
    }
    Ok(expflow_train::data::read_rows(path)?)
}

/// The metrics table: `step`, `epoch`, `lr`, `loss`, `grad_norm`, then one column per
/// logged value (null where a row lacks it), in name order.
pub fn metrics_table(op: &'static str, rows: &[MetricRow]) -> Result<DataFrame> {
    let mut names: Vec<&String> = rows.iter().flat_map(|r| r.values.keys()).collect();
    names.sort();
    names.dedup();
    let mut cols = vec![
        Column::new(
            "step".into(),
            rows.iter().map(|r| r.step as i64).collect::<Vec<_>>(),
        ),
        Column::new(
            "epoch".into(),
            rows.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        ),
        Column::new("lr".into(), rows.iter().map(|r| r.lr).collect::<Vec<_>>()),
        Column::new(
            "loss".into(),
            rows.iter().map(|r| r.loss).collect::<Vec<_>>(),
        ),
        Column::new(
            "grad_norm".into(),
            rows.iter().map(|r| r.grad_norm).collect::<Vec<_>>(),
        ),
    ];
    for n in names {
        cols.push(Column::new(
            n.as_str().into(),
            rows.iter()
                .map(|r| r.values.get(n).copied())
                .collect::<Vec<_>>(),
        ));
    }
    DataFrame::new(rows.len(), cols)
        .map_err(|e| OperatorError::polars(op, "building the metrics table", e))
}

pub fn write_metrics(ctx: &Context, op: &'static str, rows: &[MetricRow]) -> Result<(), OpError> {
    let mut df = metrics_table(op, rows)?;
    write_table(&mut df, &ctx.output("metrics")?.path)?;
    Ok(())
}
