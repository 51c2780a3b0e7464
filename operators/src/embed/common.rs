//! What the `embed` operators share: opening the model input, reading columns, adding a
//! vector column, and per-item memoisation of vectors.

use std::path::{Path, PathBuf};

use expflow_engine::{Context, OpError};
use expflow_models::{ModelDir, Needs};
use polars::prelude::*;
use serde_json::Value;

use crate::error::{OperatorError, Result};

/// The model on the `model` input port, checked. Opening logs its weight digest.
pub struct OpenModel {
    pub dir: ModelDir,
    /// The model artifact's content digest (hex); it goes into every memo item.
    pub digest: String,
}

pub fn open_model(ctx: &Context, kind: &'static str, needs: Needs) -> Result<OpenModel, OpError> {
    let input = ctx.input("model")?;
    let dir = ModelDir::open(&input.path, needs).map_err(|e| {
        OperatorError::data(
            kind,
            format!(
                "input `model` ({}) is not a usable model directory: {e}",
                input.path.display()
            ),
        )
    })?;
    let weights = dir.weight_digest()?;
    ctx.log(&format!(
        "model {}: weights blake3 {weights}",
        input.path.display()
    ));
    Ok(OpenModel {
        dir,
        digest: input.digest.to_hex(),
    })
}

/// Logs the device a model runs on (called when a model is loaded).
pub fn log_device(ctx: &Context, device: &impl std::fmt::Debug) {
    ctx.log(&format!("device {device:?}"));
}

/// The names of `df`'s columns, comma-separated (for error messages).
fn column_names(df: &DataFrame) -> String {
    df.get_column_names()
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A text column, one string per row; a null is an error naming the row.
pub fn text_column(
    df: &DataFrame,
    kind: &'static str,
    param: &'static str,
    name: &str,
) -> Result<Vec<String>> {
    let col = df.column(name).map_err(|_| OperatorError::UnknownColumn {
        op: kind,
        param,
        column: name.to_string(),
        table: "the input table".into(),
        available: column_names(df),
    })?;
    let ca = col.str().map_err(|_| {
        OperatorError::data(
            kind,
            format!(
                "column `{name}` (from `{param}`) is {}, not text",
                col.dtype()
            ),
        )
    })?;
    ca.iter()
        .enumerate()
        .map(|(i, v)| {
            v.map(str::to_owned).ok_or_else(|| {
                OperatorError::data(kind, format!("row {i}: column `{name}` is null"))
            })
        })
        .collect()
}

/// Fails when `name` is already a column of `df` (the output would overwrite it).
pub fn check_new_column(df: &DataFrame, kind: &'static str, name: &str) -> Result<()> {
    if df.column(name).is_ok() {
        return Err(OperatorError::param(
            kind,
            "output",
            format!("is `{name}`, which the input table already has; choose another name"),
        ));
    }
    Ok(())
}

/// `df` with a `list<f32>` column `name` holding `vectors` (one per row).
pub fn with_vectors(
    mut df: DataFrame,
    kind: &'static str,
    name: &str,
    vectors: &[Vec<f32>],
) -> Result<DataFrame> {
    let dim = vectors.first().map_or(0, Vec::len);
    let mut b = ListPrimitiveChunkedBuilder::<Float32Type>::new(
        name.into(),
        vectors.len(),
        vectors.len() * dim,
        DataType::Float32,
    );
    for v in vectors {
        b.append_slice(v);
    }
    df.with_column(b.finish().into_column())
        .map_err(|e| OperatorError::polars(kind, format!("adding column `{name}`"), e))?;
    Ok(df)
}

/// Little-endian bytes of a vector (the memoised form).
fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Result<Vec<f32>, OpError> {
    if !b.len().is_multiple_of(4) {
        return Err(format!(
            "a memoised vector has {} bytes, not a multiple of 4",
            b.len()
        )
        .into());
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The error a lookup-only memo call returns from its compute closure.
#[derive(Debug)]
struct NotCached;

impl std::fmt::Display for NotCached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not cached")
    }
}

impl std::error::Error for NotCached {}

/// The stored bytes of `item`, or `None`. A failing compute closure stores nothing and
/// counts neither a hit nor a miss, so this is a pure lookup.
fn lookup(ctx: &Context, item: &Value) -> Result<Option<Vec<u8>>, OpError> {
    match ctx.memo(item, || Err(Box::new(NotCached))) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.is::<NotCached>() => Ok(None),
        Err(e) => Err(e),
    }
}

/// One vector per item: memoised ones are read back; the others are split into batches by
/// `plan` (given the indices of the missing items, in order), computed one batch at a time by
/// `compute` (given a batch, it returns its vectors in that order) and stored. Logs the hits
/// and misses.
pub fn memo_vectors<P, F>(
    ctx: &Context,
    items: &[Value],
    plan: P,
    mut compute: F,
) -> Result<Vec<Vec<f32>>, OpError>
where
    P: FnOnce(Vec<usize>) -> Result<Vec<Vec<usize>>, OpError>,
    F: FnMut(&[usize]) -> Result<Vec<Vec<f32>>, OpError>,
{
    let total = items.len() as u64;
    let mut out: Vec<Option<Vec<f32>>> = Vec::with_capacity(items.len());
    let mut missing = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match lookup(ctx, item)? {
            Some(bytes) => out.push(Some(from_bytes(&bytes)?)),
            None => {
                out.push(None);
                missing.push(i);
            }
        }
    }
    let mut done = total - missing.len() as u64;
    ctx.progress_of(done, total, "texts", "");
    let batches = if missing.is_empty() {
        Vec::new()
    } else {
        plan(missing)?
    };
    for chunk in &batches {
        ctx.check_cancelled()?;
        let vectors = compute(chunk)?;
        if vectors.len() != chunk.len() {
            return Err(format!(
                "the encoder returned {} vectors for {} inputs",
                vectors.len(),
                chunk.len()
            )
            .into());
        }
        for (&i, v) in chunk.iter().zip(vectors) {
            let bytes = to_bytes(&v);
            ctx.memo(&items[i], || Ok(bytes))?;
            out[i] = Some(v);
        }
        done += chunk.len() as u64;
        ctx.progress_of(done, total, "texts", "");
    }
    let (hits, misses) = ctx.memo_counts();
    ctx.log(&format!(
        "{} items: {hits} memo hits, {misses} computed",
        items.len()
    ));
    out.into_iter()
        .enumerate()
        .map(|(i, v)| v.ok_or_else(|| format!("item {i} was in no batch").into()))
        .collect()
}

/// `missing` cut into batches of at most `size`, in order.
pub fn chunks(missing: Vec<usize>, size: usize) -> Vec<Vec<usize>> {
    missing.chunks(size.max(1)).map(<[usize]>::to_vec).collect()
}

/// A file path from a table cell: relative paths are taken from `dir` when given.
pub fn resolve(dir: Option<&Path>, cell: &str) -> PathBuf {
    let p = Path::new(cell);
    match dir {
        Some(d) if p.is_relative() => d.join(p),
        _ => p.to_path_buf(),
    }
}

/// A list of distinct values and, for each original position, the index of its value.
pub fn distinct<T: Clone + Ord>(values: &[T]) -> (Vec<T>, Vec<usize>) {
    let mut seen = std::collections::BTreeMap::new();
    let mut unique = Vec::new();
    let index = values
        .iter()
        .map(|v| {
            *seen.entry(v.clone()).or_insert_with(|| {
                unique.push(v.clone());
                unique.len() - 1
            })
        })
        .collect();
    (unique, index)
}

/// The files named by a path column: distinct by content, with the row each came from first.
pub struct Files {
    /// One path per distinct content.
    pub paths: Vec<PathBuf>,
    /// The BLAKE3 (hex) of each distinct file.
    pub digests: Vec<String>,
    /// The first row that names each distinct file.
    pub rows: Vec<usize>,
    /// For each row, the index of its file in `paths`.
    pub index: Vec<usize>,
}

/// Reads the path column `column`, resolves each path against the optional `dir` input and
/// hashes the files; errors name the row and the file.
pub fn file_column(
    ctx: &Context,
    df: &DataFrame,
    kind: &'static str,
    column: &str,
    strip_prefix: Option<&str>,
) -> Result<Files, OpError> {
    let cells = text_column(df, kind, "column", column)?;
    let dir = ctx.inputs().get("dir").map(|i| i.path.clone());
    let mut resolved = Vec::with_capacity(cells.len());
    let mut digests = Vec::with_capacity(cells.len());
    for (i, cell) in cells.iter().enumerate() {
        let cell: &str = cell.as_str();
        let stripped = match strip_prefix {
            Some(pre) if !pre.is_empty() => cell
                .strip_prefix(pre)
                .map(|rest| rest.trim_start_matches('/'))
                .unwrap_or(cell),
            _ => cell,
        };
        let path = resolve(dir.as_deref(), stripped);
        let (d, _) = expflow_cache::hash_file(&path).map_err(|e| {
            OperatorError::data(
                kind,
                format!(
                    "row {i}: cannot read `{cell}` ({}): {e}; check column `{column}`{}",
                    path.display(),
                    if dir.is_some() {
                        " and the `dir` input"
                    } else {
                        " (relative paths need the `dir` input)"
                    }
                ),
            )
        })?;
        resolved.push(path);
        digests.push(d.to_hex());
    }
    let (unique, index) = distinct(&digests);
    let mut rows = vec![0; unique.len()];
    for (row, &u) in index.iter().enumerate().rev() {
        rows[u] = row;
    }
    let paths = rows.iter().map(|&r| resolved[r].clone()).collect();
    Ok(Files {
        paths,
        digests: unique,
        rows,
        index,
    })
}
