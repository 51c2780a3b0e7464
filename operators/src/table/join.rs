//! `table.join`: join two tables on key columns.
//!
//! Keys are `on` (the same names on both sides) or `left_on` with `right_on`. `how` is
//! `inner` (default), `left`, `full`, `semi` (left rows that have a match) or `anti` (left rows
//! that have none). Null keys never match. Key columns appear once (from the left; for `full`
//! the key is the left key where present, else the right one); other right columns whose
//! names clash with left ones get `suffix`.
//!
//! Row order is deterministic: left rows in their order, and for one left row its matches in
//! right order; `full` then appends the unmatched right rows in right order. `semi` and `anti`
//! keep left rows in their order, each once.

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::{read_input, require_columns, write_output};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct Join;

const KIND: &str = "table.join";
const HOWS: [&str; 5] = ["inner", "left", "full", "semi", "anti"];

struct Config {
    left_on: Vec<String>,
    right_on: Vec<String>,
    /// Which parameters named the keys, for messages: (left, right).
    key_params: (&'static str, &'static str),
    how: &'static str,
    suffix: String,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let on = p.opt_strings("on")?;
        let left_on = p.opt_strings("left_on")?;
        let right_on = p.opt_strings("right_on")?;
        let (left_on, right_on, key_params) = match (on, left_on, right_on) {
            (Some(on), None, None) => (on.clone(), on, ("on", "on")),
            (None, Some(l), Some(r)) => {
                if l.len() != r.len() {
                    return Err(OperatorError::param(
                        KIND,
                        "right_on",
                        format!(
                            "names {} columns but `left_on` names {}; pair each left key with one right key",
                            r.len(),
                            l.len()
                        ),
                    ));
                }
                (l, r, ("left_on", "right_on"))
            }
            _ => {
                return Err(OperatorError::param(
                    KIND,
                    "on",
                    "or both `left_on` and `right_on` must be given, not a mix",
                ));
            }
        };
        if left_on.is_empty() {
            return Err(OperatorError::param(
                KIND,
                key_params.0,
                "names no key columns",
            ));
        }
        Ok(Config {
            left_on,
            right_on,
            key_params,
            how: p.choice("how", &HOWS)?,
            suffix: p.str("suffix")?.to_string(),
        })
    }
}

fn exprs(names: &[String]) -> Vec<Expr> {
    names.iter().map(|n| col(n.as_str())).collect()
}

fn apply(left: DataFrame, right: DataFrame, cfg: &Config) -> Result<DataFrame> {
    require_columns(KIND, cfg.key_params.0, &left, "input `left`", &cfg.left_on)?;
    require_columns(
        KIND,
        cfg.key_params.1,
        &right,
        "input `right`",
        &cfg.right_on,
    )?;
    let failed = |e: PolarsError| {
        let pairs: Vec<String> = cfg
            .left_on
            .iter()
            .zip(&cfg.right_on)
            .map(|(l, r)| format!("left.{l} = right.{r}"))
            .collect();
        OperatorError::polars(KIND, format!("{} join on {}", cfg.how, pairs.join(", ")), e)
    };
    let how = match cfg.how {
        "semi" => return filter_by_match(left, right, cfg, true).map_err(failed),
        "anti" => return filter_by_match(left, right, cfg, false).map_err(failed),
        "left" => JoinType::Left,
        "full" => JoinType::Full,
        _ => JoinType::Inner,
    };
    left.lazy()
        .join_builder()
        .with(right.lazy())
        .left_on(exprs(&cfg.left_on))
        .right_on(exprs(&cfg.right_on))
        .how(how)
        .suffix(cfg.suffix.as_str())
        .coalesce(JoinCoalesce::CoalesceColumns)
        .maintain_order(MaintainOrderJoin::LeftRight)
        .finish()
        .collect()
        .map_err(failed)
}

/// Semi (`keep_matched`) and anti joins: a left join against the distinct right keys, marked,
/// then a filter on the mark. Left rows keep their order and appear once.
fn filter_by_match(
    left: DataFrame,
    right: DataFrame,
    cfg: &Config,
    keep_matched: bool,
) -> PolarsResult<DataFrame> {
    let left_names: Vec<PlSmallStr> = left.get_column_names().into_iter().cloned().collect();
    let mut marker = String::from("__expflow_match");
    while left_names.iter().any(|n| n.as_str() == marker) {
        marker.push('_');
    }
    // The right keys, renamed to the left keys' names.
    let keys: Vec<Column> = cfg
        .right_on
        .iter()
        .zip(&cfg.left_on)
        .map(|(r, l)| Ok(right.column(r)?.clone().with_name(l.as_str().into())))
        .collect::<PolarsResult<_>>()?;
    let keys = DataFrame::new(right.height(), keys)?
        .lazy()
        .unique_stable(None, UniqueKeepStrategy::First)
        .with_column(lit(true).alias(marker.as_str()));
    let mark = col(marker.as_str());
    left.lazy()
        .join_builder()
        .with(keys)
        .on(exprs(&cfg.left_on))
        .how(JoinType::Left)
        .coalesce(JoinCoalesce::CoalesceColumns)
        .maintain_order(MaintainOrderJoin::Left)
        .finish()
        .filter(if keep_matched {
            mark.is_not_null()
        } else {
            mark.is_null()
        })
        .select(left_names.into_iter().map(col).collect::<Vec<_>>())
        .collect()
}

impl Operator for Join {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new(
                    "left",
                    PortType::Table,
                    "the left table (its row order is kept)",
                ),
                Port::new("right", PortType::Table, "the right table"),
            ]),
            outputs: Ports::Fixed(vec![Port::new("table", PortType::Table, "the joined rows")]),
            params: vec![
                ParamSpec::with_default(
                    "on",
                    ParamKind::List,
                    Value::Null,
                    "key columns with the same names on both sides",
                ),
                ParamSpec::with_default(
                    "left_on",
                    ParamKind::List,
                    Value::Null,
                    "left key columns",
                ),
                ParamSpec::with_default(
                    "right_on",
                    ParamKind::List,
                    Value::Null,
                    "right key columns, paired with `left_on`",
                ),
                ParamSpec::with_default(
                    "how",
                    ParamKind::String,
                    json!("inner"),
                    "inner, left, full, semi or anti",
                ),
                ParamSpec::with_default(
                    "suffix",
                    ParamKind::String,
                    json!("_right"),
                    "appended to right column names that clash with left ones",
                ),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let left = read_input(ctx, "left")?;
        let right = read_input(ctx, "right")?;
        write_output(ctx, "table", apply(left, right, &cfg)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{column_i64, column_str, run_tables};

    fn left() -> DataFrame {
        df!(
            "id" => [Some(3i64), Some(1), Some(2), None, Some(1)],
            "name" => ["c", "a", "b", "n", "a2"],
        )
        .unwrap()
    }

    fn right() -> DataFrame {
        df!(
            "key" => [1i64, 3, 1, 9],
            "name" => ["r1", "r3", "r1b", "r9"],
        )
        .unwrap()
    }

    fn join(how: &str) -> DataFrame {
        let mut out = run_tables(
            &Join,
            &[("left", &left()), ("right", &right())],
            json!({"left_on": ["id"], "right_on": ["key"], "how": how}),
        )
        .unwrap();
        out.remove("table").unwrap()
    }

    #[test]
    fn inner_keeps_left_order_then_right_order() {
        let out = join("inner");
        assert_eq!(
            column_i64(&out, "id"),
            [Some(3), Some(1), Some(1), Some(1), Some(1)]
        );
        assert_eq!(
            column_str(&out, "name_right"),
            ["r3", "r1", "r1b", "r1", "r1b"].map(|s| Some(s.to_string()))
        );
        assert_eq!(
            column_str(&out, "name"),
            ["c", "a", "a", "a2", "a2"].map(|s| Some(s.to_string()))
        );
    }

    #[test]
    fn left_keeps_unmatched_left_rows() {
        let out = join("left");
        assert_eq!(out.height(), 7);
        assert_eq!(
            column_str(&out, "name"),
            ["c", "a", "a", "b", "n", "a2", "a2"].map(|s| Some(s.to_string()))
        );
    }

    #[test]
    fn full_appends_unmatched_right_rows_with_a_coalesced_key() {
        let out = join("full");
        assert_eq!(out.height(), 8);
        assert_eq!(out.width(), 3);
        assert_eq!(column_i64(&out, "id").last(), Some(&Some(9)));
    }

    #[test]
    fn semi_and_anti_keep_left_rows_once_in_order() {
        let semi = join("semi");
        assert_eq!(
            semi,
            df!("id" => [3i64, 1, 1], "name" => ["c", "a", "a2"]).unwrap()
        );
        let anti = join("anti");
        assert_eq!(
            anti,
            df!("id" => [Some(2i64), None], "name" => ["b", "n"]).unwrap()
        );
    }

    #[test]
    fn unknown_key_names_the_side_and_the_columns() {
        let e = run_tables(
            &Join,
            &[("left", &left()), ("right", &right())],
            json!({"on": ["id"]}),
        )
        .err()
        .unwrap()
        .to_string();
        assert_eq!(
            e,
            "table.join: column `id` (from `on`) not found in input `right`; available columns: key, name"
        );
    }

    #[test]
    fn keys_must_be_given_one_way() {
        let mut m = Map::new();
        m.insert("on".into(), json!(["a"]));
        m.insert("left_on".into(), json!(["a"]));
        m.insert("how".into(), json!("inner"));
        m.insert("suffix".into(), json!("_r"));
        assert!(Join.check(&m)[0].contains("`on` or both `left_on` and `right_on`"));
        m.remove("on");
        m.insert("right_on".into(), json!(["a", "b"]));
        assert!(Join.check(&m)[0].contains("names 2 columns but `left_on` names 1"));
    }
}
