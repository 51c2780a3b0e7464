//! `table.split`: a seeded train/test split by group, optionally within strata.
//!
//! All rows with the same `group` value land on the same side, so no group leaks across the
//! split. The rule, independent of Polars and of the platform:
//! 1. Group and stratum values are compared as text (the column cast to string); a null value
//!    is a value of its own.
//! 2. Within each stratum (each value of `stratify`; the whole table when it is not set),
//!    the distinct groups are ordered by BLAKE3(seed as u64 little-endian ‖ the group value's
//!    UTF-8 bytes) — for a null group the single byte 0xFF — compared as byte strings, ties
//!    broken by the value.
//! 3. The first `k = round(ratio × groups)` of them go to `train`, the rest to `test`.
//!    Edge cases: with 2 or more groups, `k` is at least 1 when `ratio > 0` and at most
//!    `groups − 1` when `ratio < 1`, so both sides get a group when both are asked for; a
//!    stratum with a single group sends it to `train` when `ratio ≥ 0.5`, else to `test`;
//!    `ratio: 0` and `ratio: 1` put everything on one side.
//! 4. Rows keep their original order within each output.
//!
//! A group whose rows carry different `stratify` values is an error: the group could not be
//! kept whole while splitting each stratum separately.

use std::collections::{BTreeMap, BTreeSet};

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::hashing::value_rank;
use super::{read_input, require_columns, write_output};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct Split;

const KIND: &str = "table.split";

struct Config {
    group: String,
    ratio: f64,
    seed: u64,
    stratify: Option<String>,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let ratio = p.f64("ratio")?;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(OperatorError::param(
                KIND,
                "ratio",
                format!("is {ratio}; use the train share, a number between 0 and 1"),
            ));
        }
        Ok(Config {
            group: p.str("group")?.to_string(),
            ratio,
            seed: p.u64("seed")?,
            stratify: p.opt_str("stratify")?.map(str::to_owned),
        })
    }
}

/// How many of `groups` go to train (see the module docs).
fn train_count(groups: usize, ratio: f64) -> usize {
    let k = (ratio * groups as f64).round() as usize;
    if groups < 2 {
        return k.min(groups);
    }
    let low = usize::from(ratio > 0.0);
    let high = if ratio < 1.0 { groups - 1 } else { groups };
    k.clamp(low, high)
}

/// The values of column `name` as text, one per row.
fn as_text(df: &DataFrame, name: &str, param: &str) -> Result<Vec<Option<String>>> {
    let column = df.column(name).and_then(|c| c.cast(&DataType::String)).map_err(|e| {
        OperatorError::data(
            KIND,
            format!("`{param}` column `{name}` must hold plain values (text, numbers, booleans): {e}"),
        )
    })?;
    let text = column
        .str()
        .map_err(|e| OperatorError::polars(KIND, format!("reading `{name}` as text"), e))?;
    Ok(text.iter().map(|v| v.map(str::to_owned)).collect())
}

/// For each row, whether it goes to train.
fn assign(df: &DataFrame, cfg: &Config) -> Result<Vec<bool>> {
    let groups = as_text(df, &cfg.group, "group")?;
    let strata = match &cfg.stratify {
        Some(s) => as_text(df, s, "stratify")?,
        None => vec![None; df.height()],
    };
    // Group value -> its stratum, checking that no group spans two strata.
    let mut stratum_of: BTreeMap<&Option<String>, &Option<String>> = BTreeMap::new();
    for (g, s) in groups.iter().zip(&strata) {
        let first = *stratum_of.entry(g).or_insert(s);
        if first != s {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "null".into());
            return Err(OperatorError::data(
                KIND,
                format!(
                    "group `{}` has rows with `{}` = `{}` and = `{}`; a group must lie in one stratum (check `group` and `stratify`)",
                    show(g),
                    cfg.stratify.as_deref().unwrap_or_default(),
                    show(first),
                    show(s)
                ),
            ));
        }
    }
    let mut per_stratum: BTreeMap<&Option<String>, Vec<&Option<String>>> = BTreeMap::new();
    for (g, s) in &stratum_of {
        per_stratum.entry(*s).or_default().push(*g);
    }
    let mut train: BTreeSet<&Option<String>> = BTreeSet::new();
    for members in per_stratum.values_mut() {
        members.sort_by_cached_key(|g| (value_rank(cfg.seed, g.as_deref()), (*g).clone()));
        let k = train_count(members.len(), cfg.ratio);
        train.extend(members[..k].iter().copied());
    }
    Ok(groups.iter().map(|g| train.contains(g)).collect())
}

fn apply(df: &DataFrame, cfg: &Config) -> Result<(DataFrame, DataFrame)> {
    let mut columns = vec![cfg.group.clone()];
    columns.extend(cfg.stratify.clone());
    require_columns(KIND, "group", df, "the input", &columns[..1])?;
    require_columns(KIND, "stratify", df, "the input", &columns[1..])?;
    let mask = BooleanChunked::from_slice("".into(), &assign(df, cfg)?);
    let failed = |e| OperatorError::polars(KIND, "splitting rows", e);
    let train = df.filter(&mask).map_err(failed)?;
    let test = df.filter(&!&mask).map_err(failed)?;
    Ok((train, test))
}

impl Operator for Split {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "the rows to split",
            )]),
            outputs: Ports::Fixed(vec![
                Port::new("train", PortType::Table, "rows of the train groups"),
                Port::new("test", PortType::Table, "rows of the other groups"),
            ]),
            params: vec![
                ParamSpec::required(
                    "group",
                    ParamKind::String,
                    "column whose values are kept whole on one side",
                ),
                ParamSpec::with_default(
                    "ratio",
                    ParamKind::Float,
                    json!(0.8),
                    "share of groups (per stratum) that go to train",
                ),
                ParamSpec::with_default("seed", ParamKind::Int, json!(0), "selects the split"),
                ParamSpec::with_default(
                    "stratify",
                    ParamKind::String,
                    Value::Null,
                    "column within whose values the split is made separately",
                ),
            ],
            determinism: Determinism::Seeded,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let df = read_input(ctx, "table")?;
        let (train, test) = apply(&df, &cfg)?;
        write_output(ctx, "train", train)?;
        write_output(ctx, "test", test)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{column_i64, column_str, run_tables};

    /// 40 rows: 20 videos of 2 clips each, 4 subjects of 5 videos each.
    fn frame() -> DataFrame {
        let id: Vec<i64> = (0..40).collect();
        let video: Vec<String> = (0..40).map(|i| format!("v{}", i / 2)).collect();
        let subject: Vec<String> = (0..40).map(|i| format!("s{}", i / 10)).collect();
        df!("id" => id, "video" => video, "subject" => subject).unwrap()
    }

    fn split(params: Value) -> (DataFrame, DataFrame) {
        let mut out = run_tables(&Split, &[("table", &frame())], params).unwrap();
        (out.remove("train").unwrap(), out.remove("test").unwrap())
    }

    fn values(df: &DataFrame, col: &str) -> BTreeSet<String> {
        column_str(df, col).into_iter().flatten().collect()
    }

    #[test]
    fn groups_never_straddle_and_rows_keep_order() {
        let (train, test) = split(json!({"group": "video", "seed": 1}));
        assert_eq!(train.height() + test.height(), 40);
        assert!(values(&train, "video").is_disjoint(&values(&test, "video")));
        assert_eq!(values(&train, "video").len(), 16);
        for df in [&train, &test] {
            let ids: Vec<i64> = column_i64(df, "id").into_iter().flatten().collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn a_different_seed_changes_the_assignment() {
        let (a, _) = split(json!({"group": "video", "seed": 1}));
        let (b, _) = split(json!({"group": "video", "seed": 2}));
        let (a2, _) = split(json!({"group": "video", "seed": 1}));
        assert_ne!(values(&a, "video"), values(&b, "video"));
        assert_eq!(a, a2);
    }

    #[test]
    fn stratified_split_takes_the_ratio_in_every_stratum() {
        let (train, test) = split(json!({"group": "video", "stratify": "subject", "ratio": 0.6}));
        assert!(values(&train, "video").is_disjoint(&values(&test, "video")));
        for s in 0..4 {
            let subject = format!("s{s}");
            let in_train = column_str(&train, "subject")
                .iter()
                .filter(|v| v.as_deref() == Some(subject.as_str()))
                .count();
            // 5 videos per subject, round(0.6 × 5) = 3 of them, 2 rows each.
            assert_eq!(in_train, 6, "subject {subject}");
        }
    }

    #[test]
    fn edge_counts() {
        assert_eq!(train_count(2, 0.9), 1);
        assert_eq!(train_count(3, 0.1), 1);
        assert_eq!(train_count(1, 0.8), 1);
        assert_eq!(train_count(1, 0.2), 0);
        assert_eq!(train_count(4, 1.0), 4);
        assert_eq!(train_count(4, 0.0), 0);
        assert_eq!(train_count(0, 0.5), 0);
    }

    #[test]
    fn a_group_in_two_strata_is_an_error() {
        let e = run_tables(
            &Split,
            &[("table", &frame())],
            json!({"group": "id", "stratify": "video"}),
        );
        assert!(e.is_ok(), "ids are unique, so each lies in one video");
        let e = run_tables(
            &Split,
            &[("table", &frame())],
            json!({"group": "subject", "stratify": "video"}),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("group `s0` has rows with `video` = `v0` and = `v1`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_group_column_is_an_error() {
        let e = run_tables(&Split, &[("table", &frame())], json!({"group": "clip"}))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("column `clip` (from `group`) not found in the input; available columns: id, video, subject"),
            "{e}"
        );
    }
}
