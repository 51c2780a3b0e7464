//! What a report shows, gathered from the workspace: the run's nodes with their records
//! (key, outputs, parameters), its events (state, start and end of each node), log tails,
//! metrics and, with a baseline, `expflow diff`'s result. Serialised once as the page's
//! inline JSON; the page renders from it.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use expflow_cache::{Record, RunInfo};
use expflow_engine::Workspace;
use expflow_engine::events::{EventKind, read_events};
use expflow_engine::history::{History, RunDiff, diff, split_point};
use expflow_engine::node::safe_name;
use serde::Serialize;
use serde_json::Value;

use super::layout;

/// Lines of a node's log the report keeps, and characters at most.
const LOG_LINES: usize = 30;
const LOG_CHARS: usize = 4_000;

#[derive(Serialize)]
pub struct Report {
    pub expflow: &'static str,
    pub generated_ms: u64,
    pub run: RunHead,
    pub baseline: Option<RunHead>,
    pub nodes: Vec<NodeData>,
    /// `[from, to]` node indexes.
    pub edges: Vec<[u32; 2]>,
    /// Number of layers and the widest layer's node count.
    pub layers: u32,
    pub width: u32,
    /// Scalar metrics of the run: `[node index, name, value]`.
    pub metrics: Vec<(u32, String, f64)>,
    /// Metrics tables (training curves), one per node and port.
    pub series: Vec<SeriesData>,
    pub diff: Option<DiffData>,
}

#[derive(Serialize)]
pub struct RunHead {
    pub id: String,
    pub pipeline: String,
    pub path: String,
    pub status: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub params: serde_json::Map<String, Value>,
}

impl RunHead {
    fn of(r: &RunInfo) -> RunHead {
        RunHead {
            id: r.run_id.clone(),
            pipeline: r.pipeline.clone(),
            path: r.pipeline_path.clone(),
            status: r.status.clone(),
            started_ms: r.started_ms,
            finished_ms: r.finished_ms,
            params: r.params.clone(),
        }
    }
}

/// One node of the run. Short field names: a 10,000-node report carries 10,000 of them.
#[derive(Serialize, Default)]
pub struct NodeData {
    pub name: String,
    /// `executed`, `cached`, `failed` or `skipped`.
    pub state: &'static str,
    pub key: Option<String>,
    pub op: String,
    /// The run that produced the record (the report's run when executed).
    pub rec_run: Option<String>,
    /// When the node started and ended in this run (ms since the epoch), from its events.
    pub t0: Option<u64>,
    pub t1: Option<u64>,
    /// How long producing the record took (ms).
    pub dur: Option<u64>,
    pub attempts: u32,
    /// `[port, digest, type, bytes]`.
    pub outs: Vec<(String, String, String, u64)>,
    /// `[port, source, digest]`.
    pub ins: Vec<(String, String, String)>,
    pub params: BTreeMap<String, Value>,
    pub error: Option<String>,
    pub reason: Option<String>,
    pub log: String,
    pub layer: u32,
    pub pos: u32,
    /// The baseline run's record of the same node: `[key, run]`.
    pub base: Option<(String, String)>,
}

#[derive(Serialize)]
pub struct SeriesData {
    pub node: u32,
    pub port: String,
    /// Column → values row by row.
    pub cols: BTreeMap<String, Vec<Option<f64>>>,
    /// The same node's table in the baseline run, when it differs.
    pub base: Option<BTreeMap<String, Vec<Option<f64>>>>,
}

#[derive(Serialize)]
pub struct DiffData {
    #[serde(flatten)]
    pub diff: RunDiff,
    /// For each changed metric (same order as `diff.metrics`), the node it belongs to.
    pub metric_nodes: Vec<Option<u32>>,
}

/// Which run a report is of, resolved against the history.
pub fn resolve_run(h: &History<'_>, arg: Option<&str>) -> Result<RunInfo> {
    let Some(arg) = arg else {
        return h.runs(None).last().map(|r| (*r).clone()).ok_or_else(|| {
            expflow_engine::EngineError::Usage("this workspace has no runs yet".into()).into()
        });
    };
    match h.find(arg) {
        Ok(r) => Ok(r.clone()),
        Err(by_id) => match h.pipeline_named(arg) {
            Ok(name) => Ok(h
                .runs(Some(&name))
                .last()
                .map(|r| (*r).clone())
                .expect("a named pipeline has runs")),
            Err(_) => Err(by_id.into()),
        },
    }
}

/// Gathers everything the page shows about `run` (and `baseline`).
pub fn gather(ws: &Workspace, run: &RunInfo, baseline: Option<&RunInfo>) -> Result<Report> {
    let mut h = History::open(ws.store.as_ref())?;
    let recs = h.nodes(run)?;
    let events = read_events(&ws.run_dir(&run.run_id).join("events.jsonl")).unwrap_or_default();

    let mut nodes: Vec<NodeData> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut slot = |name: &str, nodes: &mut Vec<NodeData>| -> usize {
        *index.entry(name.to_string()).or_insert_with(|| {
            nodes.push(NodeData {
                name: name.to_string(),
                ..NodeData::default()
            });
            nodes.len() - 1
        })
    };
    for (name, rec) in &recs {
        let i = slot(name, &mut nodes);
        fill_from_record(&mut nodes[i], rec, ws, &run.run_id);
    }
    for ev in &events {
        let Some(name) = ev.kind.node() else { continue };
        let i = slot(name, &mut nodes);
        let n = &mut nodes[i];
        match &ev.kind {
            EventKind::NodeStarted { key, attempt, .. } => {
                n.t0.get_or_insert(ev.t_ms);
                n.attempts = n.attempts.max(*attempt);
                n.key.get_or_insert_with(|| key.to_hex());
            }
            EventKind::NodeCached { .. } => {
                n.state = "cached";
                n.t0.get_or_insert(ev.t_ms);
                n.t1 = Some(ev.t_ms);
            }
            EventKind::NodeExecuted { duration_ms, .. } => {
                n.state = "executed";
                n.t1 = Some(ev.t_ms);
                n.t0.get_or_insert(ev.t_ms.saturating_sub(*duration_ms));
            }
            EventKind::NodeFailed {
                key,
                error,
                will_retry,
                ..
            } => {
                if let Some(k) = key {
                    n.key.get_or_insert_with(|| k.to_hex());
                }
                if !will_retry {
                    n.state = "failed";
                    n.error = Some(error.clone());
                    n.t1 = Some(ev.t_ms);
                }
            }
            EventKind::NodeSkipped { reason, .. } => {
                n.state = "skipped";
                n.reason = Some(reason.clone());
            }
            _ => {}
        }
    }
    for n in nodes.iter_mut().filter(|n| n.state.is_empty()) {
        // No event says (an event log lost or removed): the record says.
        n.state = match &n.rec_run {
            Some(r) if *r == run.run_id => "executed",
            Some(_) => "cached",
            None => "skipped",
        };
    }
    for n in nodes
        .iter_mut()
        .filter(|n| n.log.is_empty() && n.state == "failed")
    {
        n.log = tail(&run_log(ws, &run.run_id, &n.name).unwrap_or_default());
    }

    let names: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    // A node's edges: the sources its record names when the node made that record itself;
    // a record made by another node with the same key (the same work under another name)
    // names that node's sources, and failed or skipped nodes have none, so theirs come from
    // the pipeline file compiled with the run's parameters (else, for a borrowed record,
    // from the record).
    let own = |(name, rec): &&(String, Record)| rec.node == *name;
    let mut edges = edges_from_records(recs.iter().filter(own), &names);
    let mut need = vec![true; nodes.len()];
    for (name, _) in recs.iter().filter(own) {
        need[names[name.as_str()]] = false;
    }
    if need.contains(&true) {
        let (from_file, covered) = edges_from_file(run, &need, &names);
        edges.extend(from_file);
        let rest = recs
            .iter()
            .filter(|(name, _)| need[names[name.as_str()]] && !covered[names[name.as_str()]]);
        edges.extend(edges_from_records(rest, &names));
    }
    edges.sort_unstable();
    edges.dedup();
    let l = layout::layers(nodes.len(), &edges);
    for (i, n) in nodes.iter_mut().enumerate() {
        n.layer = l.layer[i];
        n.pos = l.pos[i];
    }

    let mut metrics = Vec::new();
    let mut series = Vec::new();
    for (name, rec) in &recs {
        let i = names[name.as_str()] as u32;
        for (m, v) in &rec.metrics.scalars {
            metrics.push((i, m.clone(), *v));
        }
        for (port, cols) in tables(rec) {
            series.push(SeriesData {
                node: i,
                port,
                cols,
                base: None,
            });
        }
    }

    let (base_head, diff_data) = match baseline {
        Some(b) => {
            let brecs = h.nodes(b)?;
            let by_name: HashMap<&str, &Record> =
                brecs.iter().map(|(n, r)| (n.as_str(), r)).collect();
            for n in nodes.iter_mut() {
                if let Some(r) = by_name.get(n.name.as_str()) {
                    n.base = Some((r.key.to_hex(), r.run_id.clone()));
                }
            }
            for s in series.iter_mut() {
                let Some(r) = by_name.get(nodes[s.node as usize].name.as_str()) else {
                    continue;
                };
                if let Some(old) = tables(r).remove(&s.port).filter(|old| *old != s.cols) {
                    s.base = Some(old);
                }
            }
            let d = diff(&mut h, &b.run_id, &run.run_id)?;
            let metric_nodes = d
                .metrics
                .iter()
                .map(|m| node_of_metric(&m.name, &names).map(|i| i as u32))
                .collect();
            (
                Some(RunHead::of(b)),
                Some(DiffData {
                    diff: d,
                    metric_nodes,
                }),
            )
        }
        None => (None, None),
    };

    Ok(Report {
        expflow: env!("CARGO_PKG_VERSION"),
        generated_ms: expflow_engine::events::now_ms(),
        run: RunHead::of(run),
        baseline: base_head,
        nodes,
        edges,
        layers: l.layers,
        width: l.width,
        metrics,
        series,
        diff: diff_data,
    })
}

fn fill_from_record(n: &mut NodeData, rec: &Record, ws: &Workspace, run_id: &str) {
    n.key = Some(rec.key.to_hex());
    n.op = format!("{}@{}", rec.op, rec.op_version);
    n.rec_run = Some(rec.run_id.clone());
    n.dur = Some(rec.duration_ms);
    n.outs = rec
        .outputs
        .iter()
        .map(|(port, o)| (port.clone(), o.digest.to_hex(), o.kind.clone(), o.size))
        .collect();
    if let Some(m) = expflow_engine::KeyMaterial::from_json(&rec.material) {
        n.ins = m
            .inputs
            .iter()
            .map(|(port, d)| {
                let src = m.sources.get(port).cloned().unwrap_or_default();
                (port.clone(), src, d.to_hex())
            })
            .collect();
    }
    if let Some(Value::Object(params)) = rec.material.get("params") {
        for (k, v) in params {
            flatten(v, k.clone(), &mut n.params);
        }
    }
    let text = rec
        .log
        .and_then(|d| std::fs::read(ws.cas.blob_path(&d)).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .or_else(|| run_log(ws, run_id, &rec.node))
        .unwrap_or_default();
    n.log = tail(&text);
}

/// Nested parameter maps as `a.b` names, as `runs` and `diff` name them.
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

/// A node's log as its run's log directory holds it.
fn run_log(ws: &Workspace, run_id: &str, node: &str) -> Option<String> {
    let dir = ws.run_dir(run_id).join("logs");
    std::fs::read_to_string(dir.join(format!("{}.log", safe_name(node)))).ok()
}

/// The last lines of a log, at most [`LOG_LINES`] and [`LOG_CHARS`].
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[lines.len().saturating_sub(LOG_LINES)..].join("\n");
    if out.len() > LOG_CHARS {
        let mut cut = out.len() - LOG_CHARS;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = format!("…{}", &out[cut..]);
    }
    out
}

/// A record's metrics tables: port → column → values.
fn tables(rec: &Record) -> BTreeMap<String, BTreeMap<String, Vec<Option<f64>>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<Option<f64>>>> = BTreeMap::new();
    for (name, values) in &rec.metrics.series {
        let (port, col) = name.split_once('.').unwrap_or(("", name.as_str()));
        out.entry(port.to_string())
            .or_default()
            .insert(col.to_string(), values.clone());
    }
    out
}

/// The node a source (`NODE.PORT`, `BASE[*].PORT`) names, as indexes.
fn source_nodes(
    src: &str,
    names: &HashMap<String, usize>,
    bases: &HashMap<&str, Vec<usize>>,
) -> Vec<usize> {
    if src.starts_with("inputs.") {
        return Vec::new();
    }
    let Some((node, _port)) = src.rsplit_once('.') else {
        return Vec::new();
    };
    if let Some(base) = node.strip_suffix("[*]") {
        return bases.get(base).cloned().unwrap_or_default();
    }
    names.get(node).map(|i| vec![*i]).unwrap_or_default()
}

fn edges_from_records<'r>(
    recs: impl Iterator<Item = &'r (String, Record)>,
    names: &HashMap<String, usize>,
) -> Vec<[u32; 2]> {
    let mut bases: HashMap<&str, Vec<usize>> = HashMap::new();
    for (name, i) in names {
        let (base, point) = split_point(name.as_str());
        if point.is_some() {
            bases.entry(base).or_default().push(*i);
        }
    }
    let mut out = Vec::new();
    for (name, rec) in recs {
        let to = names[name.as_str()];
        let Some(m) = expflow_engine::KeyMaterial::from_json(&rec.material) else {
            continue;
        };
        for src in m.sources.values() {
            for from in source_nodes(src, names, &bases) {
                out.push([from as u32, to as u32]);
            }
        }
    }
    out
}

/// Edges into the nodes marked in `need`, from the pipeline file as it is now, compiled
/// with the run's parameters, and which nodes the file has; none when it no longer
/// compiles.
fn edges_from_file(
    run: &RunInfo,
    need: &[bool],
    names: &HashMap<String, usize>,
) -> (Vec<[u32; 2]>, Vec<bool>) {
    let mut covered = vec![false; need.len()];
    let path = std::path::Path::new(&run.pipeline_path);
    let registry = crate::registry();
    let with_params = expflow_engine::CompileOptions {
        overrides: run
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ..Default::default()
    };
    let p = match expflow_engine::compile::load_with(path, &registry, &with_params)
        .or_else(|_| expflow_engine::compile::load_with(path, &registry, &Default::default()))
    {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(
                "report: {} does not compile ({e}); edges of nodes without their own record come from records or are left out",
                path.display()
            );
            return (Vec::new(), covered);
        }
    };
    let mut out = Vec::new();
    for (ci, cn) in p.nodes.iter().enumerate() {
        let Some(&to) = names.get(cn.name.as_str()) else {
            continue;
        };
        if !need[to] {
            continue;
        }
        covered[to] = true;
        for src in expflow_engine::run::sources(&p, ci).values() {
            let mut bases: HashMap<&str, Vec<usize>> = HashMap::new();
            if let Some(base) = src
                .rsplit_once('.')
                .and_then(|(n, _)| n.strip_suffix("[*]"))
            {
                let pts: Vec<usize> = p
                    .nodes
                    .iter()
                    .filter(|n| n.base == base && n.name != n.base)
                    .filter_map(|n| names.get(n.name.as_str()).copied())
                    .collect();
                bases.insert(base, pts);
            }
            for from in source_nodes(src, names, &bases) {
                out.push([from as u32, to as u32]);
            }
        }
    }
    (out, covered)
}

/// The node a metric name (`NODE.PORT.FIELD`) belongs to: the longest node name that
/// prefixes it followed by a dot.
fn node_of_metric(metric: &str, names: &HashMap<String, usize>) -> Option<usize> {
    metric
        .match_indices('.')
        .rev()
        .find_map(|(i, _)| names.get(&metric[..i]).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_belongs_to_the_longest_node_name_before_a_dot() {
        let names: HashMap<String, usize> = [("train", 0), ("train[lr=0.1]", 1), ("score", 2)]
            .into_iter()
            .map(|(n, i)| (n.to_string(), i))
            .collect();
        assert_eq!(
            node_of_metric("train[lr=0.1].metrics.loss", &names),
            Some(1)
        );
        assert_eq!(node_of_metric("score.scores.bleu", &names), Some(2));
        assert_eq!(node_of_metric("other.x", &names), None);
    }

    #[test]
    fn sources_name_nodes_points_and_never_inputs() {
        let names: HashMap<String, usize> = [("a", 0), ("s[n=1]", 1), ("s[n=2]", 2)]
            .into_iter()
            .map(|(n, i)| (n.to_string(), i))
            .collect();
        let bases: HashMap<&str, Vec<usize>> = [("s", vec![1, 2])].into_iter().collect();
        assert_eq!(source_nodes("a.table", &names, &bases), vec![0]);
        assert_eq!(source_nodes("s[n=2].table", &names, &bases), vec![2]);
        assert_eq!(source_nodes("s[*].table", &names, &bases), vec![1, 2]);
        assert!(source_nodes("inputs.a", &names, &bases).is_empty());
    }

    #[test]
    fn a_log_tail_keeps_the_last_lines_within_the_character_limit() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&text);
        assert!(t.starts_with("line 70\n") && t.ends_with("line 99"), "{t}");
        let long = "é".repeat(LOG_CHARS);
        let t = tail(&long);
        assert!(t.starts_with('…') && t.len() <= LOG_CHARS + '…'.len_utf8() + 1);
    }
}
