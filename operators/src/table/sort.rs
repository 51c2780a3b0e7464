//! `table.sort`: order rows by one or more columns.
//!
//! The sort is stable: rows that compare equal keep their input order. `descending` and
//! `nulls_last` take one boolean for all columns or a list with one per column in `by`.

use expflow_engine::{Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Signature};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::{one_in_one_out, read_input, require_columns, write_output};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct Sort;

const KIND: &str = "table.sort";

struct Config {
    by: Vec<String>,
    descending: Vec<bool>,
    nulls_last: Vec<bool>,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let by = p.strings("by")?;
        Ok(Config {
            descending: p.bools("descending", by.len())?,
            nulls_last: p.bools("nulls_last", by.len())?,
            by,
        })
    }
}

fn apply(df: &DataFrame, cfg: &Config) -> Result<DataFrame> {
    require_columns(KIND, "by", df, "the input", &cfg.by)?;
    let options = SortMultipleOptions::default()
        .with_order_descending_multi(cfg.descending.iter().copied())
        .with_nulls_last_multi(cfg.nulls_last.iter().copied())
        .with_maintain_order(true)
        .with_multithreaded(false);
    df.sort(&cfg.by, options)
        .map_err(|e| OperatorError::polars(KIND, format!("sorting by {}", cfg.by.join(", ")), e))
}

impl Operator for Sort {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        one_in_one_out(
            vec![
                ParamSpec::required(
                    "by",
                    ParamKind::List,
                    "the columns to sort by, most significant first",
                ),
                ParamSpec::with_default(
                    "descending",
                    ParamKind::Any,
                    json!(false),
                    "a boolean, or one per column in `by`",
                ),
                ParamSpec::with_default(
                    "nulls_last",
                    ParamKind::Any,
                    json!(true),
                    "a boolean, or one per column in `by`",
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
    use crate::testing::{column_i64, run_table};

    fn frame() -> DataFrame {
        df!(
            "id" => [1i64, 2, 3, 4, 5, 6],
            "group" => ["b", "a", "b", "a", "a", "b"],
            "score" => [Some(1.0f64), Some(2.0), None, Some(2.0), Some(0.5), Some(1.0)],
        )
        .unwrap()
    }

    #[test]
    fn sorts_stably_with_per_column_directions() {
        let out = run_table(
            &Sort,
            &frame(),
            json!({"by": ["group", "score"], "descending": [false, true]}),
        )
        .unwrap();
        // Equal (group, score) pairs keep input order: ids 2 and 4, then 1 and 6.
        assert_eq!(column_i64(&out, "id"), [2, 4, 5, 1, 6, 3].map(Some));
    }

    #[test]
    fn nulls_first_when_asked() {
        let out = run_table(
            &Sort,
            &frame(),
            json!({"by": ["score"], "nulls_last": false}),
        )
        .unwrap();
        assert_eq!(column_i64(&out, "id"), [3, 5, 1, 6, 2, 4].map(Some));
    }

    #[test]
    fn mismatched_descending_list_is_an_error() {
        let e = run_table(
            &Sort,
            &frame(),
            json!({"by": ["id"], "descending": [true, false]}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("table.sort: parameter `descending` has 2 values but 1 are needed"),
            "{e}"
        );
        let e = run_table(&Sort, &frame(), json!({"by": ["nope"]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("column `nope` (from `by`)"), "{e}");
    }
}
