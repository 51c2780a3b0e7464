//! `table.select`: keep some columns, in the given order, optionally renaming them.

use std::collections::BTreeMap;

use expflow_engine::{Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Signature};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::{one_in_one_out, read_input, require_columns, write_output};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct Select;

const KIND: &str = "table.select";

struct Config {
    columns: Vec<String>,
    rename: BTreeMap<String, String>,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let columns = p.strings("columns")?;
        let rename = p.string_map("rename")?;
        if let Some(old) = rename.keys().find(|k| !columns.contains(k)) {
            return Err(OperatorError::param(
                KIND,
                "rename",
                format!("renames `{old}`, which is not in `columns`; add it there"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &columns {
            let name = rename.get(c).unwrap_or(c);
            if !seen.insert(name.clone()) {
                return Err(OperatorError::param(
                    KIND,
                    "columns",
                    format!(
                        "gives two output columns the name `{name}`; list each column once and rename to distinct names"
                    ),
                ));
            }
        }
        Ok(Config { columns, rename })
    }
}

fn apply(df: &DataFrame, cfg: &Config) -> Result<DataFrame> {
    require_columns(KIND, "columns", df, "the input", &cfg.columns)?;
    // All renames apply at once, so swapping two names works.
    let columns = cfg
        .columns
        .iter()
        .map(|name| {
            let column = df
                .column(name)
                .map_err(|e| OperatorError::polars(KIND, format!("selecting `{name}`"), e))?;
            let new = cfg.rename.get(name).unwrap_or(name);
            Ok(column.clone().with_name(new.as_str().into()))
        })
        .collect::<Result<Vec<Column>>>()?;
    DataFrame::new(df.height(), columns)
        .map_err(|e| OperatorError::polars(KIND, "building the output", e))
}

impl Operator for Select {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        one_in_one_out(
            vec![
                ParamSpec::required("columns", ParamKind::List, "the columns to keep, in order"),
                ParamSpec::with_default(
                    "rename",
                    ParamKind::Map,
                    json!({}),
                    "new names by old name",
                ),
            ],
            Determinism::Deterministic,
        )
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let df = read_input(ctx, "table")?;
        write_output(ctx, "table", apply(&df, &cfg)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::run_table;

    fn frame() -> DataFrame {
        df!("a" => [1i64, 2], "b" => ["x", "y"], "c" => [true, false]).unwrap()
    }

    #[test]
    fn keeps_order_and_renames() {
        let out = run_table(
            &Select,
            &frame(),
            json!({"columns": ["c", "a"], "rename": {"a": "id"}}),
        )
        .unwrap();
        assert_eq!(out, df!("c" => [true, false], "id" => [1i64, 2]).unwrap());
    }

    #[test]
    fn renames_apply_at_once() {
        let out = run_table(
            &Select,
            &frame(),
            json!({"columns": ["a", "b"], "rename": {"a": "b", "b": "a"}}),
        )
        .unwrap();
        assert_eq!(out, df!("b" => [1i64, 2], "a" => ["x", "y"]).unwrap());
    }

    #[test]
    fn unknown_column_lists_the_available_ones() {
        let e = run_table(&Select, &frame(), json!({"columns": ["a", "z"]}))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "table.select: column `z` (from `columns`) not found in the input; available columns: a, b, c"
        );
    }

    #[test]
    fn rename_of_an_unselected_column_is_a_check_error() {
        let e = run_table(
            &Select,
            &frame(),
            json!({"columns": ["a"], "rename": {"b": "x"}}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("renames `b`, which is not in `columns`"), "{e}");
        let e = run_table(
            &Select,
            &frame(),
            json!({"columns": ["a", "b"], "rename": {"b": "a"}}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("two output columns the name `a`"), "{e}");
    }
}
