//! `table.filter`: keep the rows where a SQL boolean expression holds.
//!
//! `where` is a SQL expression over the columns, as Polars' SQL understands it:
//! `score > 0.5 AND lang = 'en'`, `name LIKE 'a%'`, `x IS NOT NULL`, `id IN (1, 2)`. Rows
//! where it is false or null are dropped; the rest keep their order. The expression is parsed
//! when the pipeline is compiled, so a syntax error fails before anything runs.

use expflow_engine::{Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Signature};
use polars::prelude::*;
use polars::sql::sql_expr;
use serde_json::{Map, Value};

use super::{available, one_in_one_out, read_input, write_output};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct Filter;

const KIND: &str = "table.filter";

fn parse(map: &Map<String, Value>) -> Result<(String, Expr)> {
    let text = Params::new(KIND, map).str("where")?;
    let expr = sql_expr(text).map_err(|e| {
        OperatorError::param(
            KIND,
            "where",
            format!("cannot be parsed as SQL (`{text}`): {e}"),
        )
    })?;
    Ok((text.to_string(), expr))
}

fn apply(df: DataFrame, text: &str, expr: Expr) -> Result<DataFrame> {
    let columns = available(&df);
    df.lazy().filter(expr).collect().map_err(|e| {
        OperatorError::data(
            KIND,
            format!("cannot evaluate `where: {text}`: {e} (columns: {columns})"),
        )
    })
}

impl Operator for Filter {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        one_in_one_out(
            vec![ParamSpec::required(
                "where",
                ParamKind::String,
                "SQL boolean expression over the columns, e.g. `score > 0.5 AND lang = 'en'`",
            )],
            Determinism::Deterministic,
        )
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let (text, expr) = parse(ctx.params())?;
        let df = read_input(ctx, "table")?;
        let before = df.height();
        let out = apply(df, &text, expr)?;
        ctx.log(&format!("kept {} of {before} rows", out.height()));
        write_output(ctx, "table", out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{column_i64, run_table};
    use serde_json::json;

    fn frame() -> DataFrame {
        df!(
            "id" => [1i64, 2, 3, 4, 5],
            "score" => [Some(0.9f64), Some(0.2), Some(0.7), None, Some(0.6)],
            "lang" => ["en", "en", "de", "en", "en"],
        )
        .unwrap()
    }

    #[test]
    fn keeps_matching_rows_in_order() {
        let out = run_table(
            &Filter,
            &frame(),
            json!({"where": "score > 0.5 AND lang = 'en'"}),
        )
        .unwrap();
        assert_eq!(column_i64(&out, "id"), [Some(1), Some(5)]);
        assert_eq!(out.width(), 3);
    }

    #[test]
    fn unparsable_expression_fails_check() {
        let mut m = Map::new();
        m.insert("where".into(), json!("(score > 0.5"));
        let problems = Filter.check(&m);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with(
                "table.filter: parameter `where` cannot be parsed as SQL (`(score > 0.5`): "
            ),
            "{problems:?}"
        );
        m.insert("where".into(), json!("score > 0.5"));
        assert!(Filter.check(&m).is_empty());
    }

    #[test]
    fn unknown_column_names_the_expression_and_columns() {
        let e = run_table(&Filter, &frame(), json!({"where": "lenght > 3"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot evaluate `where: lenght > 3`"), "{e}");
        assert!(e.contains("(columns: id, score, lang)"), "{e}");
    }
}
