//! Retrieval operators over `expflow-retrieval` indexes (spec `expstar-pipeline.md` §D and
//! DAG nodes 14–18), one module each:
//!
//! - `retrieve.bm25_index`: a passage table (id + text columns) → a BM25 `index`;
//! - `retrieve.vector_index`: a table of ids and embeddings → an exact or HNSW `index`;
//! - `retrieve.fuse`: text + video query embeddings from one shared space → one query
//!   embedding per row (ExpStar's fusion, without its random projection);
//! - `retrieve.search`: queries + index (+ passages) → the top k per query;
//! - `retrieve.expstar_results`: search hits → ExpStar's `retrieval_results.json`.
//!
//! Every operator is deterministic: ties rank by document position, and HNSW graphs are
//! built by serial insertion.

use expflow_engine::{Context, OpError};
use expflow_retrieval::{Index, RetrievalError};
use polars::prelude::*;

use crate::error::{OperatorError, Result};

pub mod bm25_index;
pub mod expstar_results;
pub mod fuse;
pub mod search;
pub mod vector_index;

pub use bm25_index::Bm25IndexOp;
pub use expstar_results::ExpstarResults;
pub use fuse::Fuse;
pub use search::Search;
pub use vector_index::VectorIndexOp;

/// A retrieval-library error as an operator error of `op`.
pub(crate) fn lib_error(op: &'static str) -> impl Fn(RetrievalError) -> OperatorError {
    move |e| OperatorError::data(op, e.to_string())
}

fn unknown(
    op: &'static str,
    param: &'static str,
    df: &DataFrame,
    table: &str,
    name: &str,
) -> OperatorError {
    let names: Vec<&str> = df.get_column_names().iter().map(|n| n.as_str()).collect();
    OperatorError::UnknownColumn {
        op,
        param,
        column: name.to_string(),
        table: table.to_string(),
        available: if names.is_empty() {
            "(none)".into()
        } else {
            names.join(", ")
        },
    }
}

/// Column `name` (named by parameter `param`) of `df` as optional strings; numbers are
/// written in decimal.
pub(crate) fn string_column(
    op: &'static str,
    param: &'static str,
    df: &DataFrame,
    table: &str,
    name: &str,
) -> Result<Vec<Option<String>>> {
    let col = df
        .column(name)
        .map_err(|_| unknown(op, param, df, table, name))?;
    let cast = col
        .cast(&DataType::String)
        .map_err(|e| OperatorError::polars(op, format!("reading column `{name}` as text"), e))?;
    let ca = cast
        .str()
        .map_err(|e| OperatorError::polars(op, format!("reading column `{name}` as text"), e))?;
    Ok(ca.iter().map(|s| s.map(str::to_owned)).collect())
}

/// Column `name` as ids: strings (or numbers written in decimal), none missing.
pub(crate) fn id_column(
    op: &'static str,
    param: &'static str,
    df: &DataFrame,
    table: &str,
    name: &str,
) -> Result<Vec<String>> {
    string_column(op, param, df, table, name)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            v.ok_or_else(|| {
                OperatorError::data(
                    op,
                    format!(
                        "row {i} of {table} has no `{name}` (from `{param}`); every row needs an id"
                    ),
                )
            })
        })
        .collect()
}

/// Column `name` as one optional f32 vector per row (a list or array of numbers; a null
/// row, or an empty list, is `None`). A null value inside a vector is an error.
pub(crate) fn vector_column(
    op: &'static str,
    param: &'static str,
    df: &DataFrame,
    table: &str,
    name: &str,
) -> Result<Vec<Option<Vec<f32>>>> {
    let col = df
        .column(name)
        .map_err(|_| unknown(op, param, df, table, name))?;
    let not_list = || {
        OperatorError::data(
            op,
            format!(
                "column `{name}` (from `{param}`) of {table} is {}, not a list of numbers; give one embedding (a list of floats) per row",
                col.dtype()
            ),
        )
    };
    if !matches!(col.dtype(), DataType::List(_) | DataType::Array(_, _)) {
        return Err(not_list());
    }
    let cast = col
        .cast(&DataType::List(Box::new(DataType::Float32)))
        .map_err(|_| not_list())?;
    let ca = cast.list().map_err(|_| not_list())?;
    let mut out = Vec::with_capacity(ca.len());
    for i in 0..ca.len() {
        let Some(series) = ca.get_as_series(i) else {
            out.push(None);
            continue;
        };
        let values = series.f32().map_err(|_| not_list())?;
        if values.null_count() > 0 {
            return Err(OperatorError::data(
                op,
                format!(
                    "row {i} of column `{name}` in {table} holds a null value; embeddings must be complete"
                ),
            ));
        }
        let v: Vec<f32> = values.into_no_null_iter().collect();
        out.push(if v.is_empty() { None } else { Some(v) });
    }
    Ok(out)
}

/// Every vector of `rows` flattened row-major, with their common dimension; every row must
/// have one, and all the same size.
pub(crate) fn flatten(
    op: &'static str,
    name: &str,
    table: &str,
    rows: &[Option<Vec<f32>>],
) -> Result<(Vec<f32>, usize)> {
    let mut dim = None;
    let mut flat = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let v = row.as_ref().ok_or_else(|| {
            OperatorError::data(
                op,
                format!("row {i} of {table} has no `{name}` embedding; every row needs one"),
            )
        })?;
        match dim {
            None => dim = Some(v.len()),
            Some(d) if d != v.len() => {
                return Err(OperatorError::data(
                    op,
                    format!(
                        "row {i} of {table} has a {}-d `{name}` embedding but earlier rows are {d}-d; embed every row with the same encoder",
                        v.len()
                    ),
                ));
            }
            Some(_) => {}
        }
        flat.extend_from_slice(v);
    }
    Ok((flat, dim.unwrap_or(0)))
}

/// Saves `index` into the `index` output directory and logs its shape.
pub(crate) fn write_index(ctx: &Context, op: &'static str, index: &Index) -> Result<(), OpError> {
    let out = ctx.output("index")?;
    index.save(&out.path).map_err(lib_error(op))?;
    ctx.log(&format!(
        "index: {} {} documents{}",
        index.len(),
        index.kind.name(),
        index
            .dim()
            .map(|d| format!(", dimension {d}"))
            .unwrap_or_default()
    ));
    Ok(())
}

#[cfg(test)]
mod tests;
