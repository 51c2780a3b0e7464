//! `table.dedupe`: drop duplicate rows.
//!
//! Rows are duplicates when they agree on the `subset` columns (all columns when `subset` is
//! null); nulls compare equal to nulls. `keep: first` keeps the first row of each set of
//! duplicates, `keep: last` the last. Kept rows stay in their input order.

use expflow_engine::{Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Signature};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::{one_in_one_out, read_input, require_columns, write_output};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct Dedupe;

const KIND: &str = "table.dedupe";

struct Config {
    subset: Option<Vec<String>>,
    keep: UniqueKeepStrategy,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let subset = p.opt_strings("subset")?;
        if subset.as_ref().is_some_and(Vec::is_empty) {
            return Err(OperatorError::param(
                KIND,
                "subset",
                "is an empty list; name columns, or leave it out to compare whole rows",
            ));
        }
        let keep = match p.choice("keep", &["first", "last"])? {
            "last" => UniqueKeepStrategy::Last,
            _ => UniqueKeepStrategy::First,
        };
        Ok(Config { subset, keep })
    }
}

fn apply(df: &DataFrame, cfg: &Config) -> Result<DataFrame> {
    if let Some(subset) = &cfg.subset {
        require_columns(KIND, "subset", df, "the input", subset)?;
    }
    df.unique_stable(cfg.subset.as_deref(), cfg.keep, None)
        .map_err(|e| OperatorError::polars(KIND, "finding duplicates", e))
}

impl Operator for Dedupe {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        one_in_one_out(
            vec![
                ParamSpec::with_default(
                    "subset",
                    ParamKind::List,
                    Value::Null,
                    "columns that decide duplicates; null means all columns",
                ),
                ParamSpec::with_default(
                    "keep",
                    ParamKind::String,
                    json!("first"),
                    "first or last: which row of a set of duplicates to keep",
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
        let before = df.height();
        let out = apply(&df, &cfg)?;
        ctx.log(&format!("dropped {} duplicate rows", before - out.height()));
        write_output(ctx, "table", out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{column_i64, run_table};

    fn frame() -> DataFrame {
        df!(
            "id" => [1i64, 2, 3, 4, 5],
            "text" => [Some("a"), Some("b"), Some("a"), None, None],
        )
        .unwrap()
    }

    #[test]
    fn keeps_first_or_last_in_original_order() {
        let first = run_table(&Dedupe, &frame(), json!({"subset": ["text"]})).unwrap();
        assert_eq!(column_i64(&first, "id"), [1, 2, 4].map(Some));
        let last = run_table(
            &Dedupe,
            &frame(),
            json!({"subset": ["text"], "keep": "last"}),
        )
        .unwrap();
        assert_eq!(column_i64(&last, "id"), [2, 3, 5].map(Some));
    }

    #[test]
    fn whole_rows_by_default() {
        let df = df!("a" => [1i64, 1, 2, 1], "b" => ["x", "x", "x", "y"]).unwrap();
        let out = run_table(&Dedupe, &df, json!({})).unwrap();
        assert_eq!(
            out,
            df!("a" => [1i64, 2, 1], "b" => ["x", "x", "y"]).unwrap()
        );
    }

    #[test]
    fn bad_keep_and_unknown_subset_are_errors() {
        let e = run_table(&Dedupe, &frame(), json!({"keep": "any"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`keep` is `any`; use one of: first, last"),
            "{e}"
        );
        let e = run_table(&Dedupe, &frame(), json!({"subset": ["txt"]}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("column `txt` (from `subset`)") && e.contains("id, text"),
            "{e}"
        );
    }
}
