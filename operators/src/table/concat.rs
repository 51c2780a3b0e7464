//! `table.concat`: stack any number of tables, one after another.
//!
//! Inputs may have any port names; they are stacked in port-name order (sorted), each keeping
//! its row order. Columns are the union of the inputs' columns, in first-seen order; a column
//! missing from one input is null in its rows, and a column whose types differ between inputs
//! takes their common supertype (integers and floats give floats). With `source_column` set,
//! a string column of that name records the port each row came from.

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use polars::prelude::*;
use serde_json::{Map, Value};

use super::{available, read_input, write_output};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct Concat;

const KIND: &str = "table.concat";

fn source_column(map: &Map<String, Value>) -> Result<Option<String>> {
    let name = Params::new(KIND, map).opt_str("source_column")?;
    if name == Some("") {
        return Err(OperatorError::param(
            KIND,
            "source_column",
            "is empty; give a column name, or leave it out",
        ));
    }
    Ok(name.map(str::to_owned))
}

fn apply(tables: Vec<(String, DataFrame)>, source: Option<&str>) -> Result<DataFrame> {
    if tables.is_empty() {
        return Err(OperatorError::data(
            KIND,
            "no inputs are connected; connect at least one table under `in:`",
        ));
    }
    let mut frames = Vec::with_capacity(tables.len());
    for (port, mut df) in tables {
        if let Some(name) = source {
            if df.column(name).is_ok() {
                return Err(OperatorError::data(
                    KIND,
                    format!(
                        "input `{port}` already has a column `{name}` (columns: {}); choose another `source_column`",
                        available(&df)
                    ),
                ));
            }
            let tag = Column::new_scalar(
                name.into(),
                Scalar::from(PlSmallStr::from(port.as_str())),
                df.height(),
            );
            df.with_column(tag)
                .map_err(|e| OperatorError::polars(KIND, format!("tagging input `{port}`"), e))?;
        }
        frames.push(df.lazy());
    }
    let args = UnionArgs {
        parallel: false,
        rechunk: true,
        to_supertypes: true,
        diagonal: true,
        strict: false,
        from_partitioned_ds: false,
        maintain_order: true,
    };
    concat_lf_diagonal(frames, args)
        .and_then(LazyFrame::collect)
        .map_err(|e| OperatorError::polars(KIND, "stacking the inputs", e))
}

impl Operator for Concat {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Open(PortType::Table),
            outputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "the stacked rows",
            )]),
            params: vec![ParamSpec::with_default(
                "source_column",
                ParamKind::String,
                Value::Null,
                "when set, a column of this name holds each row's input port name",
            )],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(source_column(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let source = source_column(ctx.params())?;
        let mut tables = Vec::new();
        // `inputs()` is sorted by port name: that is the stacking order.
        for port in ctx.inputs().keys() {
            tables.push((port.clone(), read_input(ctx, port)?));
        }
        write_output(ctx, "table", apply(tables, source.as_deref())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{column_i64, column_str, run_tables};
    use serde_json::json;

    #[test]
    fn stacks_in_port_order_with_a_union_of_columns() {
        let b = df!("id" => [3i64], "x" => [0.5f64]).unwrap();
        let a = df!("id" => [1i64, 2], "tag" => ["p", "q"]).unwrap();
        let out = run_tables(
            &Concat,
            &[("second", &b), ("first", &a)],
            json!({"source_column": "from"}),
        )
        .unwrap()
        .remove("table")
        .unwrap();
        assert_eq!(column_i64(&out, "id"), [Some(1), Some(2), Some(3)]);
        assert_eq!(
            column_str(&out, "tag"),
            [Some("p".to_string()), Some("q".to_string()), None]
        );
        assert_eq!(
            column_str(&out, "from"),
            ["first", "first", "second"].map(|s| Some(s.to_string()))
        );
        let names: Vec<&str> = out.get_column_names().iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["id", "tag", "from", "x"]);
    }

    #[test]
    fn differing_numeric_types_take_the_supertype() {
        let a = df!("v" => [1i64]).unwrap();
        let b = df!("v" => [0.5f64]).unwrap();
        let out = run_tables(&Concat, &[("a", &a), ("b", &b)], json!({}))
            .unwrap()
            .remove("table")
            .unwrap();
        assert_eq!(out.column("v").unwrap().dtype(), &DataType::Float64);
    }

    #[test]
    fn source_column_clash_is_an_error() {
        let a = df!("from" => [1i64]).unwrap();
        let e = run_tables(&Concat, &[("a", &a)], json!({"source_column": "from"}))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("input `a` already has a column `from` (columns: from)"),
            "{e}"
        );
    }

    #[test]
    fn no_inputs_is_an_error() {
        let e = run_tables(&Concat, &[], json!({}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no inputs are connected"), "{e}");
    }
}
