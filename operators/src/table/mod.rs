//! Relational operators on table artifacts: select, filter, join, concat, sort, dedupe,
//! sample and split. Each keeps row order deterministic, so equal inputs give equal bytes.

use expflow_engine::{
    Context, Determinism, OpError, ParamSpec, Port, PortType, Ports, Resources, Signature,
};
use polars::prelude::*;

use crate::error::{OperatorError, Result};
use crate::table_io::{read_table, write_table};

pub mod concat;
pub mod dedupe;
pub mod filter;
mod hashing;
pub mod join;
pub mod sample;
pub mod select;
pub mod sort;
pub mod split;

pub use concat::Concat;
pub use dedupe::Dedupe;
pub use filter::Filter;
pub use join::Join;
pub use sample::Sample;
pub use select::Select;
pub use sort::Sort;
pub use split::Split;

/// The signature of an operator with one table in (`table`) and one table out (`table`).
fn one_in_one_out(params: Vec<ParamSpec>, determinism: Determinism) -> Signature {
    Signature {
        inputs: Ports::Fixed(vec![Port::new("table", PortType::Table, "the input rows")]),
        outputs: Ports::Fixed(vec![Port::new("table", PortType::Table, "the result")]),
        params,
        determinism,
        resources: Resources::default(),
    }
}

/// Reads the table on input `port`.
fn read_input(ctx: &Context, port: &str) -> Result<DataFrame, OpError> {
    Ok(read_table(&ctx.input(port)?.path)?)
}

/// Writes `df` to output `port` and logs its shape.
fn write_output(ctx: &Context, port: &str, mut df: DataFrame) -> Result<(), OpError> {
    ctx.log(&format!(
        "{port}: {} rows, {} columns",
        df.height(),
        df.width()
    ));
    write_table(&mut df, &ctx.output(port)?.path)?;
    Ok(())
}

/// The column names of `df`, comma-separated, for messages.
fn available(df: &DataFrame) -> String {
    let names: Vec<&str> = df.get_column_names().iter().map(|n| n.as_str()).collect();
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}

/// Fails unless every name in `columns` (from parameter `param`) is a column of `df`.
fn require_columns(
    op: &'static str,
    param: &'static str,
    df: &DataFrame,
    table: &str,
    columns: &[String],
) -> Result<()> {
    match columns.iter().find(|c| df.column(c).is_err()) {
        None => Ok(()),
        Some(missing) => Err(OperatorError::UnknownColumn {
            op,
            param,
            column: missing.clone(),
            table: table.to_string(),
            available: available(df),
        }),
    }
}
