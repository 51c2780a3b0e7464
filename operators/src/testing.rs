//! Helpers for operator tests: run an operator through the engine's harness on inputs given
//! as literals, and read its outputs back.

use std::collections::BTreeMap;
use std::path::PathBuf;

use expflow_engine::harness::Harness;
use expflow_engine::{OpError, Operator, PortType};
use polars::prelude::*;
use serde_json::Value;

use crate::table_io::{read_table, write_table};

/// One input: port, type and the file's bytes.
pub struct InputBytes<'a> {
    pub port: &'a str,
    pub ty: PortType,
    pub bytes: Vec<u8>,
}

/// Runs `op` and returns the output files' bytes by port (directories are not read).
pub fn run_op(
    op: &dyn Operator,
    inputs: &[InputBytes<'_>],
    params: Value,
    declared: &[(&str, PortType)],
) -> Result<BTreeMap<String, Vec<u8>>, OpError> {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("inputs");
    std::fs::create_dir_all(&src)?;
    let mut paths: Vec<(String, PortType, PathBuf)> = Vec::new();
    for input in inputs {
        let p = src.join(input.port);
        std::fs::write(&p, &input.bytes)?;
        paths.push((input.port.to_string(), input.ty, p));
    }
    let given: Vec<(&str, PortType, &std::path::Path)> = paths
        .iter()
        .map(|(port, ty, p)| (port.as_str(), *ty, p.as_path()))
        .collect();
    // A space in the workspace path makes every test exercise path quoting.
    let mut harness = Harness::new(&dir.path().join("work space"))?;
    let run = harness.run(op, &given, params, declared)?;
    let mut out = BTreeMap::new();
    for (port, path) in run.outputs {
        if path.is_file() {
            out.insert(port, std::fs::read(&path)?);
        }
    }
    Ok(out)
}

/// The bytes of a table as stored.
pub fn table_bytes(df: &DataFrame) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("t.parquet");
    write_table(&mut df.clone(), &p).expect("write table");
    std::fs::read(&p).expect("read table")
}

/// A table from stored bytes.
pub fn table_from_bytes(bytes: &[u8]) -> DataFrame {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("t.parquet");
    std::fs::write(&p, bytes).expect("write bytes");
    read_table(&p).expect("read table")
}

/// Runs a table operator on tables by port; returns its table outputs by port.
pub fn run_tables(
    op: &dyn Operator,
    inputs: &[(&str, &DataFrame)],
    params: Value,
) -> Result<BTreeMap<String, DataFrame>, OpError> {
    let inputs: Vec<InputBytes<'_>> = inputs
        .iter()
        .map(|(port, df)| InputBytes {
            port,
            ty: PortType::Table,
            bytes: table_bytes(df),
        })
        .collect();
    Ok(run_op(op, &inputs, params, &[])?
        .into_iter()
        .map(|(port, bytes)| (port, table_from_bytes(&bytes)))
        .collect())
}

/// Runs a one-table-in, one-table-out operator.
pub fn run_table(op: &dyn Operator, df: &DataFrame, params: Value) -> Result<DataFrame, OpError> {
    let mut out = run_tables(op, &[("table", df)], params)?;
    out.remove("table")
        .ok_or_else(|| "no `table` output".into())
}

/// Runs an operator whose input `src` is a file with `content`; returns its `table` output.
pub fn run_file_op(op: &dyn Operator, content: &str, params: Value) -> Result<DataFrame, OpError> {
    run_file_op_bytes(op, content.as_bytes(), params)
}

pub fn run_file_op_bytes(
    op: &dyn Operator,
    content: &[u8],
    params: Value,
) -> Result<DataFrame, OpError> {
    let input = InputBytes {
        port: "src",
        ty: PortType::File,
        bytes: content.to_vec(),
    };
    let out = run_op(op, &[input], params, &[])?;
    let bytes = out.get("table").ok_or("no `table` output")?;
    Ok(table_from_bytes(bytes))
}

pub fn column_i64(df: &DataFrame, name: &str) -> Vec<Option<i64>> {
    df.column(name)
        .expect("column exists")
        .cast(&DataType::Int64)
        .expect("integer column")
        .i64()
        .expect("i64")
        .iter()
        .collect()
}

pub fn column_str(df: &DataFrame, name: &str) -> Vec<Option<String>> {
    df.column(name)
        .expect("column exists")
        .str()
        .expect("string column")
        .iter()
        .map(|s| s.map(str::to_owned))
        .collect()
}
