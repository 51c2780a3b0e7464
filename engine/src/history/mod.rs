//! What the record store says about past runs, for `runs`, `diff` and `compare`: each run's
//! parameters and metrics, read from the run index and the records alone (no blob).
//!
//! Names: a parameter is `params.NAME` for the pipeline's global parameters and
//! `NODE.PARAM` for a node's (nested maps flattened with `.`), a metric
//! `NODE.PORT.FIELD` for JSON metrics and `NODE.PORT.COLUMN` for the last value of a
//! metrics table's column (its whole series stays in the record).

mod compare;
mod diff;

use std::collections::{BTreeMap, HashMap};

use expflow_cache::{Digest, Record, RecordSummary, RunInfo, Store};
use serde::Serialize;
use serde_json::Value;

use crate::error::{EngineError, Result};

pub use compare::{CompareOptions, CompareTable, compare};
pub use diff::{Cause, MetricChange, NodeChange, ParamChange, RunDiff, diff};

/// One run as `expflow runs` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct RunRow {
    pub run_id: String,
    pub pipeline: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub status: String,
    /// Nodes this run executed, and nodes it found in the cache.
    pub executed: usize,
    pub cached: usize,
    /// Parameters that differ from the previous run of the same pipeline (none for its
    /// first run).
    pub changed: Vec<ParamChange>,
    /// Every metric of the run's nodes.
    pub metrics: BTreeMap<String, f64>,
}

/// The runs and records of a workspace, records read once each.
pub struct History<'a> {
    store: &'a dyn Store,
    runs: Vec<RunInfo>,
    records: HashMap<Digest, Option<Record>>,
}

impl<'a> History<'a> {
    pub fn open(store: &'a dyn Store) -> Result<History<'a>> {
        Ok(History {
            store,
            runs: store.runs()?,
            records: HashMap::new(),
        })
    }

    /// Runs, oldest first; of one pipeline when given.
    pub fn runs(&self, pipeline: Option<&str>) -> Vec<&RunInfo> {
        self.runs
            .iter()
            .filter(|r| pipeline.is_none_or(|p| r.pipeline == p))
            .collect()
    }

    /// The pipeline name `arg` means: a pipeline name of a recorded run, or the path of a
    /// pipeline file a run was made from.
    pub fn pipeline_named(&self, arg: &str) -> Result<String> {
        if self.runs.iter().any(|r| r.pipeline == arg) {
            return Ok(arg.to_string());
        }
        if let Ok(path) = std::fs::canonicalize(arg)
            && let Some(r) = self
                .runs
                .iter()
                .rev()
                .find(|r| std::fs::canonicalize(&r.pipeline_path).is_ok_and(|p| p == path))
        {
            return Ok(r.pipeline.clone());
        }
        let mut known: Vec<&str> = self.runs.iter().map(|r| r.pipeline.as_str()).collect();
        known.sort();
        known.dedup();
        Err(EngineError::Usage(format!(
            "no runs of `{arg}` in this workspace; {}",
            if known.is_empty() {
                "it has no runs yet".to_string()
            } else {
                format!("it has runs of: {}", known.join(", "))
            }
        )))
    }

    /// The run `id`, or a unique run whose id starts with it.
    pub fn find(&self, id: &str) -> Result<&RunInfo> {
        if let Some(r) = self.runs.iter().find(|r| r.run_id == id) {
            return Ok(r);
        }
        let matches: Vec<&RunInfo> = self
            .runs
            .iter()
            .filter(|r| r.run_id.starts_with(id))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(EngineError::Usage(format!(
                "no run `{id}` in this workspace; `expflow runs` lists them"
            ))),
            many => Err(EngineError::Usage(format!(
                "`{id}` names {} runs ({}); give more of the id",
                many.len(),
                many.iter()
                    .map(|r| r.run_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn record(&mut self, key: &Digest) -> Result<Option<&Record>> {
        if !self.records.contains_key(key) {
            let rec = self.store.get_record(key)?;
            self.records.insert(*key, rec);
        }
        Ok(self.records.get(key).and_then(Option::as_ref))
    }

    /// The run's nodes with their records (a node whose record is gone is left out).
    pub fn nodes(&mut self, run: &RunInfo) -> Result<Vec<(String, Record)>> {
        let mut out = Vec::new();
        for (node, key) in &run.nodes {
            if let Some(rec) = self.record(key)? {
                out.push((node.clone(), rec.clone()));
            }
        }
        Ok(out)
    }

    /// `expflow runs`: every run of `pipeline` (or of all), oldest first. Each record is
    /// read once, as a [`RecordSummary`] (its parameters and the last value of each metric,
    /// not its training curves or the rest of its key material); a run's changed parameters
    /// compare only the nodes whose key differs from the previous run's (the same key means
    /// the same parameters).
    pub fn rows(&mut self, pipeline: Option<&str>) -> Result<Vec<RunRow>> {
        let runs: Vec<&RunInfo> = self
            .runs
            .iter()
            .filter(|r| pipeline.is_none_or(|p| r.pipeline == p))
            .collect();
        let mut summaries: HashMap<Digest, Option<RecordSummary>> = HashMap::new();
        for run in &runs {
            for (_, key) in &run.nodes {
                if !summaries.contains_key(key) {
                    summaries.insert(*key, self.store.get_record_summary(key)?);
                }
            }
        }
        let mut previous: HashMap<&str, (&RunInfo, Nodes)> = HashMap::new();
        let mut out = Vec::with_capacity(runs.len());
        for run in runs {
            let nodes = present(&summaries, run);
            let executed = nodes.iter().filter(|(_, r)| r.run_id == run.run_id).count();
            let changed = match previous.get(run.pipeline.as_str()) {
                Some((before, before_nodes)) => run_changes(before, before_nodes, run, &nodes),
                None => Vec::new(),
            };
            let mut metrics = Vec::new();
            for (node, rec) in &nodes {
                for (name, v) in &rec.metrics {
                    let mut full = String::with_capacity(node.len() + 1 + name.len());
                    full.push_str(node);
                    full.push('.');
                    full.push_str(name);
                    metrics.push((full, *v));
                }
            }
            out.push(RunRow {
                run_id: run.run_id.clone(),
                pipeline: run.pipeline.clone(),
                started_ms: run.started_ms,
                finished_ms: run.finished_ms,
                status: run.status.clone(),
                executed,
                cached: nodes.len() - executed,
                changed,
                // Sorted and built at once; a later duplicate wins, as with inserts.
                metrics: metrics.into_iter().collect(),
            });
            previous.insert(run.pipeline.as_str(), (run, nodes));
        }
        Ok(out)
    }
}

/// A run's nodes with their records' summaries.
type Nodes<'r> = Vec<(&'r str, &'r RecordSummary)>;

/// The run's nodes whose record is present.
fn present<'r>(records: &'r HashMap<Digest, Option<RecordSummary>>, run: &'r RunInfo) -> Nodes<'r> {
    run.nodes
        .iter()
        .filter_map(|(n, k)| {
            records
                .get(k)
                .and_then(Option::as_ref)
                .map(|r| (n.as_str(), r))
        })
        .collect()
}

/// What [`param_changes`] of the two runs' [`all_params`] gives, comparing only the global
/// parameters and the nodes whose record differs.
fn run_changes(
    a: &RunInfo,
    na: &[(&str, &RecordSummary)],
    b: &RunInfo,
    nb: &[(&str, &RecordSummary)],
) -> Vec<ParamChange> {
    let (mut ga, mut gb) = (BTreeMap::new(), BTreeMap::new());
    // How the run was asked for (see [`all_params`]).
    for (run, g) in [(a, &mut ga), (b, &mut gb)] {
        if !run.profiles.is_empty() {
            g.insert("profile".to_string(), Value::String(run.profiles.join(",")));
        }
        for (name, path) in &run.inputs {
            g.insert(format!("inputs.{name}"), Value::String(path.clone()));
        }
        for (k, v) in &run.params {
            flatten(v, format!("params.{k}"), g);
        }
    }
    let mut out = param_changes(&ga, &gb);
    let keys_a: HashMap<&str, &RecordSummary> = na.iter().copied().collect();
    let keys_b: HashMap<&str, &RecordSummary> = nb.iter().copied().collect();
    let mut names: Vec<&str> = keys_a.keys().chain(keys_b.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let (ra, rb) = (keys_a.get(name), keys_b.get(name));
        if ra.zip(rb).is_some_and(|(x, y)| x.key == y.key) {
            continue;
        }
        let prefix = format!("{name}.");
        let (mut pa, mut pb) = (BTreeMap::new(), BTreeMap::new());
        for (r, p) in [(ra, &mut pa), (rb, &mut pb)] {
            for (k, v) in r.map(|r| &r.params).into_iter().flatten() {
                flatten(v, format!("{prefix}{k}"), p);
            }
        }
        out.extend(param_changes(&pa, &pb));
    }
    out.sort_by(|x, y| x.name.cmp(&y.name));
    out
}

/// The run's global parameters as `params.NAME`, then every node's as `NODE.PARAM`.
pub fn all_params(run: &RunInfo, nodes: &[(String, Record)]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    // How the run was asked for: `--profile` and `--input` (the content of an input is in
    // the keys of the nodes that read it; where it was read from is only here).
    if !run.profiles.is_empty() {
        out.insert("profile".to_string(), Value::String(run.profiles.join(",")));
    }
    for (name, path) in &run.inputs {
        out.insert(format!("inputs.{name}"), Value::String(path.clone()));
    }
    for (k, v) in &run.params {
        flatten(v, format!("params.{k}"), &mut out);
    }
    out.extend(params_of(nodes));
    out
}

/// `NODE.PARAM` → value, for every node of a run.
pub fn params_of(nodes: &[(String, Record)]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (node, rec) in nodes {
        record_params(rec, &format!("{node}."), &mut out);
    }
    out
}

/// The parameters of one record, flattened, each name prefixed with `prefix`.
pub(crate) fn record_params(rec: &Record, prefix: &str, out: &mut BTreeMap<String, Value>) {
    if let Some(Value::Object(params)) = rec.material.get("params") {
        for (k, v) in params {
            flatten(v, format!("{prefix}{k}"), out);
        }
    }
}

fn flatten(v: &Value, name: String, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                flatten(v, format!("{name}.{k}"), out);
            }
        }
        other => {
            out.insert(name, other.clone());
        }
    }
}

/// `NODE.PORT.FIELD` → value: JSON metrics, and the last value of each series.
pub fn metrics_of(nodes: &[(String, Record)]) -> BTreeMap<String, f64> {
    metrics_of_refs(nodes.iter().map(|(n, r)| (n.as_str(), r)))
}

fn metrics_of_refs<'r>(
    nodes: impl Iterator<Item = (&'r str, &'r Record)>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (node, rec) in nodes {
        for (name, v) in &rec.metrics.scalars {
            out.insert(format!("{node}.{name}"), *v);
        }
        for (name, values) in &rec.metrics.series {
            if let Some(last) = values.iter().rev().flatten().next() {
                out.insert(format!("{node}.{name}"), *last);
            }
        }
    }
    out
}

/// Parameters whose value differs (a parameter only on one side is `null` on the other).
pub fn param_changes(
    old: &BTreeMap<String, Value>,
    new: &BTreeMap<String, Value>,
) -> Vec<ParamChange> {
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let (a, b) = (old.get(name), new.get(name));
            (a != b).then(|| ParamChange {
                name: name.clone(),
                old: a.cloned().unwrap_or(Value::Null),
                new: b.cloned().unwrap_or(Value::Null),
            })
        })
        .collect()
}

/// `lr=0.1,seed=2` of `train[lr=0.1,seed=2]`, and the base name `train`.
pub fn split_point(node: &str) -> (&str, Option<&str>) {
    match node.find('[') {
        Some(i) if node.ends_with(']') => (&node[..i], Some(&node[i + 1..node.len() - 1])),
        _ => (node, None),
    }
}

/// A value as a table or sentence shows it: strings without quotes, one line.
pub fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.replace('\n', " "),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `old` and `new` cut to at most `width` characters each around where they first differ,
/// so a change inside a long command line stays visible.
pub fn excerpt_pair(old: &Value, new: &Value, width: usize) -> (String, String) {
    let (a, b) = (shown(old), shown(new));
    if a.chars().count() <= width && b.chars().count() <= width {
        return (a, b);
    }
    let first = a
        .chars()
        .zip(b.chars())
        .position(|(x, y)| x != y)
        .unwrap_or_else(|| a.chars().count().min(b.chars().count()));
    let start = first.saturating_sub(width / 3);
    let cut = |s: &str| {
        let n = s.chars().count();
        let body: String = s.chars().skip(start).take(width).collect();
        format!(
            "{}{body}{}",
            if start > 0 { "…" } else { "" },
            if start + width < n { "…" } else { "" }
        )
    };
    (cut(&a), cut(&b))
}
