//! `expstar.split`: the train/test split by experiment (spec §C.3, DAG nodes 10–11).
//!
//! Group key of a row, from `videos[0]`: with a `processed` component,
//! `<subject>/<unit>/<experiment>` (components +1, +2, +4, as the original); else, when the
//! clip sits at `…/<subject>/<unit>/video/<experiment>/<clip>` (the anonymised layout),
//! the same three components; else the clip's file name without `_step_<k>.mp4`. So
//! anonymised paths still split by experiment (the original silently split by step).
//!
//! Per subject (subjects sorted): the groups in first-seen order are ranked by
//! BLAKE3(seed as u64 little-endian ‖ group key) and taken in rank order (a seeded shuffle
//! that is the same on every platform; it is not CPython's `random.shuffle`). With n groups:
//! n = 1 → the group is test; else `n_train = max(1, floor(n × train_ratio / (train_ratio +
//! test_ratio)))`, minus one if that leaves test empty. Rows keep their input order.
//! Outputs: the train and test rows, the assignment (group → `train`/`test`) to apply to
//! other row sets with `expstar.apply_split`, and `dataset_stats.json`.

use std::collections::BTreeMap;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::{first_video, py_json_indent, read_rows, write_file, write_rows};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct Split;

const KIND: &str = "expstar.split";

/// (subject, group key) of a clip path.
pub fn group_key(video: &str) -> (String, String) {
    let comps: Vec<&str> = video.split(['/', '\\']).filter(|c| !c.is_empty()).collect();
    let n = comps.len();
    if let Some(p) = comps.iter().position(|c| *c == "processed")
        && p + 4 < n
    {
        return (
            comps[p + 1].to_string(),
            format!("{}/{}/{}", comps[p + 1], comps[p + 2], comps[p + 4]),
        );
    }
    if n >= 5 && comps[n - 3] == "video" {
        return (
            comps[n - 5].to_string(),
            format!("{}/{}/{}", comps[n - 5], comps[n - 4], comps[n - 2]),
        );
    }
    let name = comps.last().copied().unwrap_or("");
    let stem = name.rsplit_once('.').map(|(s, _)| s).unwrap_or(name);
    let exp = stem.rsplit_once("_step_").map(|(s, _)| s).unwrap_or(stem);
    (String::new(), exp.to_string())
}

fn rank(seed: u64, key: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(key.as_bytes());
    *h.finalize().as_bytes()
}

/// Number of train groups out of `n`.
pub fn n_train(n: usize, train: u64, test: u64) -> usize {
    if n <= 1 {
        return 0;
    }
    let mut k = ((n as u128 * train as u128) / (train + test) as u128) as usize;
    k = k.max(1);
    if k >= n {
        k = n - 1;
    }
    k
}

/// group key → is train, per subject; and the statistics.
pub fn assign(rows: &[Value], seed: u64, train: u64, test: u64) -> (BTreeMap<String, bool>, Value) {
    let mut by_subject: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in rows {
        let (subject, key) = group_key(first_video(row).unwrap_or(""));
        let keys = by_subject.entry(subject).or_default();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut out = BTreeMap::new();
    for keys in by_subject.values() {
        let mut ranked: Vec<&String> = keys.iter().collect();
        ranked.sort_by_key(|k| rank(seed, k));
        let k = n_train(ranked.len(), train, test);
        for (i, key) in ranked.iter().enumerate() {
            out.insert((*key).clone(), i < k);
        }
    }
    let stats = stats(rows, &out, train, test);
    (out, stats)
}

/// `dataset_stats.json` in the original's shape.
pub fn stats(rows: &[Value], assignment: &BTreeMap<String, bool>, train: u64, test: u64) -> Value {
    let mut subjects: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    for row in rows {
        let (subject, key) = group_key(first_video(row).unwrap_or(""));
        let is_train = assignment.get(&key).copied().unwrap_or(true);
        let s = subjects.entry(subject).or_default();
        s[if is_train { 0 } else { 1 }] += 1;
        if seen.insert(key, ()).is_none() {
            s[if is_train { 2 } else { 3 }] += 1;
        }
    }
    let mut total = [0u64; 4];
    let mut per = Map::new();
    for (name, s) in &subjects {
        for i in 0..4 {
            total[i] += s[i];
        }
        per.insert(
            name.clone(),
            json!({"train_items": s[0], "test_items": s[1], "train_groups": s[2], "test_groups": s[3]}),
        );
    }
    json!({
        "stats": {
            "subjects": per,
            "total": {"train_items": total[0], "test_items": total[1], "train_groups": total[2], "test_groups": total[3]},
        },
        "ratios": format!("{train}:{test}"),
        "split_method": "group_based",
    })
}

/// Train and test rows under an assignment (groups it lacks go to train).
pub fn apply(
    rows: Vec<Value>,
    assignment: &BTreeMap<String, bool>,
) -> (Vec<Value>, Vec<Value>, Vec<String>) {
    let (mut tr, mut te, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        let (_, key) = group_key(first_video(&row).unwrap_or(""));
        match assignment.get(&key) {
            Some(false) => te.push(row),
            Some(true) => tr.push(row),
            None => {
                if !unknown.contains(&key) {
                    unknown.push(key);
                }
                tr.push(row)
            }
        }
    }
    (tr, te, unknown)
}

pub fn assignment_json(a: &BTreeMap<String, bool>) -> Value {
    Value::Object(
        a.iter()
            .map(|(k, v)| (k.clone(), json!(if *v { "train" } else { "test" })))
            .collect(),
    )
}

struct Config {
    seed: u64,
    train: u64,
    test: u64,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let (train, test) = (p.u64("train_ratio")?, p.u64("test_ratio")?);
        if train + test == 0 {
            return Err(OperatorError::param(
                KIND,
                "train_ratio",
                "and `test_ratio` are both 0",
            ));
        }
        Ok(Config {
            seed: p.u64("seed")?,
            train,
            test,
        })
    }
}

impl Operator for Split {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        // 2: rows travel as Parquet tables, not JSON Lines (docs/decisions.md).
        2
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "rows",
                PortType::Table,
                "rows (the baseline rows are canonical), a rows table",
            )]),
            outputs: Ports::Fixed(vec![
                Port::new("train", PortType::Table, "train rows, a rows table"),
                Port::new("test", PortType::Table, "test rows, a rows table"),
                Port::new(
                    "assignment",
                    PortType::File,
                    "JSON: group key → train or test",
                ),
                Port::new("stats", PortType::File, "dataset_stats.json"),
            ]),
            params: vec![
                ParamSpec::with_default("seed", ParamKind::Int, json!(42), "selects the partition"),
                ParamSpec::with_default(
                    "train_ratio",
                    ParamKind::Int,
                    json!(10),
                    "train part of the ratio",
                ),
                ParamSpec::with_default(
                    "test_ratio",
                    ParamKind::Int,
                    json!(1),
                    "test part of the ratio",
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
        let rows = read_rows(&ctx.input("rows")?.path)?;
        let (assignment, stats) = assign(&rows, cfg.seed, cfg.train, cfg.test);
        let (tr, te, _) = apply(rows, &assignment);
        ctx.log(&format!(
            "{} groups; {} train rows, {} test rows",
            assignment.len(),
            tr.len(),
            te.len()
        ));
        write_rows(&ctx.output("train")?.path, &tr)?;
        write_rows(&ctx.output("test")?.path, &te)?;
        write_file(
            &ctx.output("assignment")?.path,
            py_json_indent(&assignment_json(&assignment), 2).as_bytes(),
        )?;
        write_file(
            &ctx.output("stats")?.path,
            py_json_indent(&stats, 2).as_bytes(),
        )?;
        Ok(())
    }
}
