//! `plan` and `explain`: what a run would do and why, without executing anything.

use std::collections::{BTreeMap, HashMap};

use expflow_cache::{Digest, OutputRef};
use serde::Serialize;

use crate::compile::{Pipeline, Source};
use crate::error::Result;
use crate::key::{KEY_SCHEMA, KeyMaterial, KeyParts};
use crate::node::{hit_ok, ingest_input};
use crate::run::Prefetch;
use crate::workspace::Workspace;

/// One line of `plan --json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanEntry {
    pub name: String,
    /// Hex key, or `None` while an upstream output is not computed yet.
    pub key: Option<String>,
    /// `cached`, `run` or `pending`.
    pub state: String,
    pub reasons: Vec<String>,
    /// For a node that will run: its expected cost, from earlier records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<crate::estimate::Estimate>,
}

/// What `explain` reports for one node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    pub node: String,
    pub key: Option<String>,
    pub state: String,
    /// The key of the last run of this node, and its run id.
    pub previous_key: Option<String>,
    pub previous_run: Option<String>,
    /// Field-by-field changes since the last run of this node.
    pub changes: Vec<String>,
    /// The current key material (inputs still pending are missing from it).
    pub material: serde_json::Value,
}

struct Eval {
    state: &'static str,
    /// The digests of the node's inputs known so far (all of them unless `pending`).
    inputs: BTreeMap<String, Digest>,
    key: Option<Digest>,
    reasons: Vec<String>,
    outputs: Option<BTreeMap<String, OutputRef>>,
}

/// The key material of node `i` with `inputs` (owned copies of its parts; made only where a
/// reason or `explain` shows it).
fn material(
    p: &Pipeline,
    i: usize,
    inputs: BTreeMap<String, Digest>,
    env: BTreeMap<String, String>,
) -> KeyMaterial {
    crate::run::material(p, i, inputs, env, BTreeMap::new())
}

/// Evaluates nodes `selected` (topologically ordered indices) against the workspace.
///
/// As a run does, it looks up the hits of the keys the nodes had last time and checks their
/// blobs in parallel first, computes each key from borrowed parts, and copies a node's key
/// material only where a reason needs it: a no-op plan is a walk over keys.
fn evaluate(
    ws: &Workspace,
    p: &Pipeline,
    selected: &[usize],
    prefetch: Option<Prefetch>,
) -> Result<HashMap<usize, Eval>> {
    let mut input_digests = HashMap::new();
    for (name, path) in &p.inputs {
        input_digests.insert(
            name.clone(),
            ingest_input(&ws.cas, ws.store.as_ref(), path, false)?.0,
        );
    }
    let mut checked = match prefetch.and_then(|f| f.for_pipeline(&p.name)) {
        Some((_, checked)) => checked,
        None => {
            let last: HashMap<String, Digest> = ws.store.last_keys(&p.name)?.into_iter().collect();
            let keys = crate::run::last_keys_of(&last, p, selected);
            crate::run::check_hits(&ws.cas, ws.store.as_ref(), keys, crate::run::threads())
        }
    };
    let mut evals: HashMap<usize, Eval> = HashMap::new();
    let mut env_cache: HashMap<&str, BTreeMap<String, String>> = HashMap::new();
    for &i in selected {
        let node = &p.nodes[i];
        let mut inputs = BTreeMap::new();
        let mut waiting = Vec::new();
        for (port, src) in &node.inputs {
            match src {
                Source::Input(name) => {
                    inputs.insert(port.clone(), input_digests[name]);
                }
                Source::Node {
                    node: up,
                    port: up_port,
                } => {
                    match evals
                        .get(up)
                        .and_then(|e| e.outputs.as_ref())
                        .and_then(|o| o.get(up_port))
                    {
                        Some(o) => {
                            inputs.insert(port.clone(), o.digest);
                        }
                        None => waiting.push(p.nodes[*up].name.clone()),
                    }
                }
                Source::Gather {
                    nodes: ups,
                    port: up_port,
                } => {
                    let outs: Vec<Option<&OutputRef>> = ups
                        .iter()
                        .map(|up| {
                            evals
                                .get(up)
                                .and_then(|e| e.outputs.as_ref())
                                .and_then(|o| o.get(up_port))
                        })
                        .collect();
                    if let Some(missing) = outs.iter().position(Option::is_none) {
                        waiting.push(p.nodes[ups[missing]].name.clone());
                    } else {
                        let pts: Vec<crate::gather::Point> = ups
                            .iter()
                            .zip(outs.iter().flatten())
                            .map(|(up, o)| crate::gather::Point {
                                node: &p.nodes[*up].name,
                                matrix: &p.nodes[*up].point,
                                output: o,
                            })
                            .collect();
                        inputs.insert(port.clone(), crate::gather::digest(&ws.cas, &pts)?);
                    }
                }
            }
        }
        let kind = node.op.kind();
        let env = env_cache
            .entry(kind)
            .or_insert_with(|| node.op.environment().unwrap_or_default());
        // The previous material is read only where a reason needs it (a cached node, the
        // common case of a no-op plan, does not).
        if !waiting.is_empty() {
            waiting.sort();
            waiting.dedup();
            let mut reasons = vec![format!("waits on {}", waiting.join(", "))];
            if let Some((prev, _)) = &previous_material(ws, p, &node.name)? {
                let now = material(p, i, inputs.clone(), env.clone());
                reasons.extend(
                    now.diff(prev)
                        .into_iter()
                        .filter(|r| !r.starts_with("input ")),
                );
            }
            evals.insert(
                i,
                Eval {
                    state: "pending",
                    inputs,
                    key: None,
                    reasons,
                    outputs: None,
                },
            );
            continue;
        }
        let key = KeyParts {
            schema: KEY_SCHEMA,
            op: kind,
            op_version: node.op.version(),
            params: &node.params,
            inputs: &inputs,
            outputs: &node.outputs,
            env,
            seed: crate::run::seed_of(node),
            metrics: &node.metrics,
        }
        .key();
        let (hit, intact) = match checked.remove(&key) {
            Some(hit) => (Some(hit), true),
            None => {
                let mut hit = ws.store.get_hit(&key)?;
                let intact = match &mut hit {
                    Some(h) => hit_ok(&ws.cas, ws.store.as_ref(), &key, h)?,
                    None => false,
                };
                (hit, intact)
            }
        };
        let mut reasons = Vec::new();
        let state = match &hit {
            Some(_) if intact => "cached",
            Some(_) => {
                reasons.push(
                    "a stored output is missing or corrupt; it will be recomputed".to_string(),
                );
                "run"
            }
            None => {
                match &previous_material(ws, p, &node.name)? {
                    Some((prev, _)) => {
                        let d = material(p, i, inputs.clone(), env.clone()).diff(prev);
                        if d.is_empty() {
                            reasons.push("its last result is no longer recorded".into());
                        }
                        reasons.extend(d);
                    }
                    None => reasons.push("never run".into()),
                }
                "run"
            }
        };
        let outputs = if state == "cached" {
            hit.map(|h| h.outputs)
        } else {
            None
        };
        evals.insert(
            i,
            Eval {
                state,
                inputs,
                key: Some(key),
                reasons,
                outputs,
            },
        );
    }
    Ok(evals)
}

/// The material of the last run of `node` in this pipeline, with its run id.
fn previous_material(
    ws: &Workspace,
    p: &Pipeline,
    node: &str,
) -> Result<Option<(KeyMaterial, String)>> {
    let Some(last) = ws.store.get_last(&p.name, node)? else {
        return Ok(None);
    };
    Ok(ws
        .store
        .get_record(&last)?
        .and_then(|r| KeyMaterial::from_json(&r.material).map(|m| (m, r.run_id))))
}

/// The plan for the selected nodes, in topological order.
pub fn plan(ws: &Workspace, p: &Pipeline, targets: &[String]) -> Result<Vec<PlanEntry>> {
    plan_prefetched(ws, p, targets, None)
}

/// [`plan`] with the look-ups a run makes first already made ([`Prefetch`], used only when
/// it was gathered for this pipeline's name).
pub fn plan_prefetched(
    ws: &Workspace,
    p: &Pipeline,
    targets: &[String],
    prefetch: Option<Prefetch>,
) -> Result<Vec<PlanEntry>> {
    let selected = crate::run::select(p, targets)?;
    let mut evals = evaluate(ws, p, &selected, prefetch)?;
    let mut estimator = crate::estimate::Estimator::new(ws);
    selected
        .iter()
        .map(|i| {
            let e = evals.remove(i).expect("every selected node is evaluated");
            let estimate = if e.state == "cached" {
                None
            } else {
                estimator.estimate(p, *i)?
            };
            Ok(PlanEntry {
                name: p.nodes[*i].name.clone(),
                key: e.key.map(|k| k.to_hex()),
                state: e.state.to_string(),
                reasons: e.reasons,
                estimate,
            })
        })
        .collect()
}

/// Explains one node: its key material against the last run of the same node.
pub fn explain(ws: &Workspace, p: &Pipeline, node: &str) -> Result<Vec<Explanation>> {
    let targets = vec![node.to_string()];
    let selected = crate::run::select(p, &targets)?;
    let mut evals = evaluate(ws, p, &selected, None)?;
    let mut out = Vec::new();
    for i in selected
        .iter()
        .filter(|i| p.nodes[**i].name == node || p.nodes[**i].base == node)
    {
        let e = evals.remove(i).expect("evaluated");
        let name = &p.nodes[*i].name;
        let env = p.nodes[*i].op.environment().unwrap_or_default();
        let now = material(p, *i, e.inputs, env);
        let previous = previous_material(ws, p, name)?;
        let mut changes = match &previous {
            Some((prev, _)) => now.diff(prev),
            None => vec!["no previous run of this node".into()],
        };
        if e.state == "pending" {
            changes.retain(|c| !c.starts_with("input "));
            changes.insert(0, e.reasons[0].clone());
        }
        if changes.is_empty() && e.state == "cached" {
            changes.push("nothing changed: the key is the same as the last run's".into());
        }
        out.push(Explanation {
            node: name.clone(),
            key: e.key.map(|k| k.to_hex()),
            state: e.state.to_string(),
            previous_key: previous.as_ref().map(|(m, _)| m.key().to_hex()),
            previous_run: previous.map(|(_, r)| r),
            changes,
            material: now.to_json(),
        });
    }
    Ok(out)
}
