//! `expflow diff RUN_A RUN_B`: what changed between two runs and why, from the records.

use std::collections::{BTreeMap, BTreeSet};

use expflow_cache::Record;
use serde::Serialize;
use serde_json::Value;

use super::{History, all_params, metrics_of, param_changes, record_params};
use crate::error::Result;
use crate::key::KeyMaterial;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParamChange {
    pub name: String,
    pub old: Value,
    pub new: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricChange {
    pub name: String,
    pub old: Option<f64>,
    pub new: Option<f64>,
    /// `new - old` when both exist.
    pub delta: Option<f64>,
    /// The causes upstream of the metric's node (its own included), as `NODE: CAUSE`.
    pub causes: Vec<String>,
}

/// Why a node's key differs between the runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// The node is not in the first run.
    New,
    Param {
        name: String,
        old: Value,
        new: Value,
    },
    /// The operator's version (its code) changed.
    Code { op: String, old: u32, new: u32 },
    /// A declared tool or model version changed.
    Environment { name: String },
    /// A pipeline input file's content changed.
    InputFile { port: String, input: String },
    /// An upstream node's output changed.
    Upstream { port: String, node: String },
    /// Anything else in the key (seed, key schema, outputs, metrics): in words.
    Other { what: String },
}

impl Cause {
    /// Whether the cause lies in this node, not upstream of it.
    fn is_root(&self) -> bool {
        !matches!(self, Cause::Upstream { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            Cause::New => "new node".into(),
            Cause::Param { name, old, new } => {
                let (old, new) = super::excerpt_pair(old, new, 48);
                format!("param {name}: {old} → {new}")
            }
            Cause::Code { op, old, new } => format!("`{op}` version {old} → {new}"),
            Cause::Environment { name } => format!("environment `{name}` changed"),
            Cause::InputFile { port, input } => {
                format!("input file `{input}` changed (port {port})")
            }
            Cause::Upstream { port, node } => format!("upstream `{node}` changed (port {port})"),
            Cause::Other { what } => what.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeChange {
    pub node: String,
    pub causes: Vec<Cause>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunDiff {
    pub a: String,
    pub b: String,
    pub params: Vec<ParamChange>,
    pub metrics: Vec<MetricChange>,
    /// Nodes of the second run whose key differs from the first's, with why.
    pub reran: Vec<NodeChange>,
    /// Nodes only in the first run.
    pub removed: Vec<String>,
}

/// Compares run `b` with run `a`.
pub fn diff(h: &mut History<'_>, a: &str, b: &str) -> Result<RunDiff> {
    let (ra, rb) = (h.find(a)?.clone(), h.find(b)?.clone());
    let na = h.nodes(&ra)?;
    let nb = h.nodes(&rb)?;
    let by_name_a: BTreeMap<&str, &Record> = na.iter().map(|(n, r)| (n.as_str(), r)).collect();
    let by_name_b: BTreeMap<&str, &Record> = nb.iter().map(|(n, r)| (n.as_str(), r)).collect();
    let mut reran = Vec::new();
    for (node, rec) in &nb {
        let causes = match by_name_a.get(node.as_str()) {
            None => vec![Cause::New],
            Some(old) if old.key == rec.key => continue,
            Some(old) => causes(old, rec),
        };
        reran.push(NodeChange {
            node: node.clone(),
            causes,
        });
    }
    let removed = na
        .iter()
        .filter(|(n, _)| !by_name_b.contains_key(n.as_str()))
        .map(|(n, _)| n.clone())
        .collect();
    let roots = root_causes(&reran);
    let (ma, mb) = (metrics_of(&na), metrics_of(&nb));
    let mut names: Vec<&String> = ma.keys().chain(mb.keys()).collect();
    names.sort();
    names.dedup();
    let metrics = names
        .into_iter()
        .filter_map(|name| {
            let (old, new) = (ma.get(name).copied(), mb.get(name).copied());
            if old == new {
                return None;
            }
            let node = metric_node(name, &by_name_b, &by_name_a);
            Some(MetricChange {
                name: name.clone(),
                old,
                new,
                delta: old.zip(new).map(|(o, n)| n - o),
                causes: node
                    .and_then(|n| roots.get(n))
                    .map(|c| c.iter().cloned().collect())
                    .unwrap_or_default(),
            })
        })
        .collect();
    Ok(RunDiff {
        a: ra.run_id.clone(),
        b: rb.run_id.clone(),
        params: param_changes(&all_params(&ra, &na), &all_params(&rb, &nb)),
        metrics,
        reran,
        removed,
    })
}

/// The node a metric name (`NODE.PORT.FIELD`) belongs to: the longest node name that
/// prefixes it (node names may hold dots inside a matrix point).
fn metric_node<'n>(
    metric: &str,
    b: &BTreeMap<&'n str, &Record>,
    a: &BTreeMap<&'n str, &Record>,
) -> Option<&'n str> {
    b.keys()
        .chain(a.keys())
        .filter(|n| metric.starts_with(&format!("{n}.")))
        .max_by_key(|n| n.len())
        .copied()
}

/// Why `new`'s key differs from `old`'s.
fn causes(old: &Record, new: &Record) -> Vec<Cause> {
    let (Some(a), Some(b)) = (
        KeyMaterial::from_json(&old.material),
        KeyMaterial::from_json(&new.material),
    ) else {
        return vec![Cause::Other {
            what: "key material unreadable".into(),
        }];
    };
    let mut out = Vec::new();
    if a.op != b.op || a.op_version != b.op_version {
        out.push(Cause::Code {
            op: b.op.clone(),
            old: a.op_version,
            new: b.op_version,
        });
    }
    let (mut pa, mut pb) = (BTreeMap::new(), BTreeMap::new());
    record_params(old, "", &mut pa);
    record_params(new, "", &mut pb);
    for c in param_changes(&pa, &pb) {
        out.push(Cause::Param {
            name: c.name,
            old: c.old,
            new: c.new,
        });
    }
    let ports: BTreeSet<&String> = a.inputs.keys().chain(b.inputs.keys()).collect();
    for port in ports {
        if a.inputs.get(port) == b.inputs.get(port) {
            continue;
        }
        let source = b.sources.get(port).or_else(|| a.sources.get(port));
        out.push(match source {
            Some(s) if s.starts_with("inputs.") => Cause::InputFile {
                port: port.clone(),
                input: s.trim_start_matches("inputs.").to_string(),
            },
            Some(s) => Cause::Upstream {
                port: port.clone(),
                node: s
                    .rsplit_once('.')
                    .map_or(s.as_str(), |(n, _)| n)
                    .to_string(),
            },
            None => Cause::Other {
                what: format!("input {port} changed"),
            },
        });
    }
    let envs: BTreeSet<&String> = a.env.keys().chain(b.env.keys()).collect();
    for name in envs {
        if a.env.get(name) != b.env.get(name) {
            out.push(Cause::Environment { name: name.clone() });
        }
    }
    if out.is_empty() {
        // Seed, schema, outputs, metrics: the key's own words.
        out.extend(b.diff(&a).into_iter().map(|what| Cause::Other { what }));
    }
    out
}

/// For each re-run node, the causes in it and upstream of it, as `NODE: CAUSE`.
fn root_causes(reran: &[NodeChange]) -> BTreeMap<&str, BTreeSet<String>> {
    let by_name: BTreeMap<&str, &NodeChange> = reran.iter().map(|c| (c.node.as_str(), c)).collect();
    let mut out: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for change in reran {
        let mut seen = BTreeSet::new();
        let mut stack = vec![change.node.as_str()];
        let mut found = BTreeSet::new();
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            let Some(c) = by_name.get(n) else { continue };
            for cause in &c.causes {
                match cause {
                    Cause::Upstream { node, .. } => stack.push(node.as_str()),
                    other if other.is_root() => {
                        found.insert(format!("{n}: {}", other.describe()));
                    }
                    _ => {}
                }
            }
        }
        out.insert(change.node.as_str(), found);
    }
    out
}
