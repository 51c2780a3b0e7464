//! `table.sample`: a seeded random subset of rows, without replacement.
//!
//! The rule, which does not use Polars' RNG and so gives the same rows on every platform and
//! with every Polars version: each row `i` (0-based) gets the rank
//! BLAKE3(seed as u64 little-endian ‖ i as u64 little-endian); the `n` rows with the smallest
//! ranks (compared as byte strings) are kept, in their original order. Give exactly one of
//! `n` (a row count) or `fraction` (between 0 and 1; `n = round(fraction × rows)`, halves
//! rounding up). An `n` larger than the table keeps every row.
//!
//! Because a row's rank depends only on the seed and its index, growing `n` only adds rows:
//! the sample of 10 is contained in the sample of 20.

use expflow_engine::{Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Signature};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::hashing::row_rank;
use super::{one_in_one_out, read_input, write_output};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct Sample;

const KIND: &str = "table.sample";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Size {
    Rows(u64),
    Fraction(f64),
}

struct Config {
    size: Size,
    seed: u64,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let size = match (p.opt_u64("n")?, p.opt_f64("fraction")?) {
            (Some(n), None) => Size::Rows(n),
            (None, Some(f)) if (0.0..=1.0).contains(&f) => Size::Fraction(f),
            (None, Some(f)) => {
                return Err(OperatorError::param(
                    KIND,
                    "fraction",
                    format!("is {f}; use a number between 0 and 1"),
                ));
            }
            _ => {
                return Err(OperatorError::param(
                    KIND,
                    "n",
                    "or `fraction` must be given, exactly one of them",
                ));
            }
        };
        Ok(Config {
            size,
            seed: p.u64("seed")?,
        })
    }
}

/// The indices of the kept rows, ascending.
fn choose(height: usize, size: Size, seed: u64) -> Vec<IdxSize> {
    let n = match size {
        Size::Rows(n) => usize::try_from(n).unwrap_or(usize::MAX),
        Size::Fraction(f) => (f * height as f64).round() as usize,
    }
    .min(height);
    let mut ranked: Vec<([u8; 32], usize)> =
        (0..height).map(|i| (row_rank(seed, i as u64), i)).collect();
    ranked.sort_unstable();
    let mut keep: Vec<IdxSize> = ranked[..n].iter().map(|&(_, i)| i as IdxSize).collect();
    keep.sort_unstable();
    keep
}

fn apply(df: &DataFrame, cfg: &Config) -> Result<DataFrame> {
    let keep = choose(df.height(), cfg.size, cfg.seed);
    let idx = IdxCa::from_vec("".into(), keep);
    df.take(&idx)
        .map_err(|e| OperatorError::polars(KIND, "taking the sampled rows", e))
}

impl Operator for Sample {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        one_in_one_out(
            vec![
                ParamSpec::with_default("n", ParamKind::Int, Value::Null, "how many rows to keep"),
                ParamSpec::with_default(
                    "fraction",
                    ParamKind::Float,
                    Value::Null,
                    "the share of rows to keep, 0 to 1 (instead of `n`)",
                ),
                ParamSpec::with_default("seed", ParamKind::Int, json!(0), "selects the sample"),
            ],
            Determinism::Seeded,
        )
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let df = read_input(ctx, "table")?;
        let out = apply(&df, &cfg)?;
        if let Size::Rows(n) = cfg.size
            && n > df.height() as u64
        {
            tracing::info!(
                n,
                rows = df.height(),
                "sample larger than the table; keeping all rows"
            );
            ctx.log(&format!(
                "n = {n} exceeds the {} rows; kept them all",
                df.height()
            ));
        }
        write_output(ctx, "table", out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{column_i64, run_table};

    fn frame(n: i64) -> DataFrame {
        df!("id" => (0..n).collect::<Vec<_>>()).unwrap()
    }

    fn ids(df: &DataFrame) -> Vec<i64> {
        column_i64(df, "id").into_iter().flatten().collect()
    }

    #[test]
    fn keeps_n_rows_in_original_order_and_repeats() {
        let a = run_table(&Sample, &frame(100), json!({"n": 10, "seed": 3})).unwrap();
        let a_ids = ids(&a);
        assert_eq!(a_ids.len(), 10);
        assert!(a_ids.windows(2).all(|w| w[0] < w[1]), "{a_ids:?}");
        let again = run_table(&Sample, &frame(100), json!({"n": 10, "seed": 3})).unwrap();
        assert_eq!(a, again);
        let other = run_table(&Sample, &frame(100), json!({"n": 10, "seed": 4})).unwrap();
        assert_ne!(a_ids, ids(&other));
    }

    #[test]
    fn selection_follows_the_documented_rule() {
        // Independent restatement of the rule: sort indices by BLAKE3(seed ‖ index).
        let mut by_rank: Vec<i64> = (0..20).collect();
        by_rank.sort_by_key(|&i| {
            let mut bytes = 9u64.to_le_bytes().to_vec();
            bytes.extend_from_slice(&(i as u64).to_le_bytes());
            *blake3::hash(&bytes).as_bytes()
        });
        let mut expected = by_rank[..5].to_vec();
        expected.sort();
        let out = run_table(&Sample, &frame(20), json!({"n": 5, "seed": 9})).unwrap();
        assert_eq!(ids(&out), expected);
    }

    #[test]
    fn fraction_rounds_and_larger_samples_contain_smaller_ones() {
        let small = run_table(&Sample, &frame(10), json!({"fraction": 0.25})).unwrap();
        assert_eq!(small.height(), 3); // 2.5 rounds up
        let big = run_table(&Sample, &frame(10), json!({"n": 6})).unwrap();
        assert!(ids(&small).iter().all(|i| ids(&big).contains(i)));
        let all = run_table(&Sample, &frame(4), json!({"n": 50})).unwrap();
        assert_eq!(ids(&all), [0, 1, 2, 3]);
    }

    #[test]
    fn exactly_one_of_n_and_fraction() {
        let e = run_table(&Sample, &frame(5), json!({"n": 2, "fraction": 0.5}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("table.sample: parameter `n` or `fraction` must be given, exactly one"),
            "{e}"
        );
        let e = run_table(&Sample, &frame(5), json!({"fraction": 1.5}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`fraction` is 1.5; use a number between 0 and 1"),
            "{e}"
        );
    }
}
