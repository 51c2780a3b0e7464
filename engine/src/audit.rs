//! `audit`: re-execute a sample of recorded nodes from their stored inputs and compare what
//! each node's determinism class allows: every output's bytes for `deterministic` nodes and
//! for `seeded` nodes re-executed with the thread count they were recorded with; metrics
//! (JSON numbers within a tolerance) for `nondeterministic` nodes and for seeded nodes
//! re-executed with another thread count. Re-execution starts from nothing: no resumable
//! state and no per-item memo (every item is computed again; the workspace's memo is left
//! as it was).

use std::collections::BTreeMap;
use std::sync::Arc;

use expflow_cache::{Digest, Record};
use serde::Serialize;
use serde_json::Value;

use crate::compile::CNode;
use crate::context::CancelToken;
use crate::diag::Loc;
use crate::error::Result;
use crate::key::KeyMaterial;
use crate::node::{NodeEnv, compute_threads, execute, hostname};
use crate::operator::{Determinism, PortType, Registry};
use crate::secrets::Secrets;
use crate::workspace::Workspace;

/// How much to audit and how closely.
#[derive(Clone, Copy, Debug)]
pub struct AuditOptions {
    /// The share of records to re-execute (at least one when any exist).
    pub fraction: f64,
    /// Seed of the sample.
    pub seed: u64,
    /// How far a metric may move where a node's class allows it: absolute for values up to
    /// 1 (rates, scores), relative above.
    pub tolerance: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    pub node: String,
    pub pipeline: String,
    pub key: String,
    /// The node's determinism class as recorded.
    pub class: String,
    /// `match` (identical bytes), `within_tolerance`, `mismatch`, `failed` or `skipped`.
    pub outcome: String,
    /// For `skipped`: the reason in a few words, for the summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub detail: String,
}

/// Counts of an audit's outcomes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AuditSummary {
    pub exact: usize,
    pub within_tolerance: usize,
    pub mismatch: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Skipped nodes by reason.
    pub skipped_reasons: BTreeMap<String, usize>,
}

impl AuditSummary {
    pub fn of(entries: &[AuditEntry]) -> AuditSummary {
        let mut s = AuditSummary::default();
        for e in entries {
            match e.outcome.as_str() {
                "match" => s.exact += 1,
                "within_tolerance" => s.within_tolerance += 1,
                "mismatch" => s.mismatch += 1,
                "failed" => s.failed += 1,
                _ => {
                    s.skipped += 1;
                    let why = e.reason.clone().unwrap_or_else(|| "other".into());
                    *s.skipped_reasons.entry(why).or_default() += 1;
                }
            }
        }
        s
    }

    /// One line: "12 nodes compared exactly, 1 within tolerance, 2 skipped (…); 0
    /// mismatches, 0 failed".
    pub fn line(&self) -> String {
        let nodes = |n: usize| if n == 1 { "node" } else { "nodes" };
        let mut text = format!(
            "{} {} compared exactly, {} within tolerance, {} skipped",
            self.exact,
            nodes(self.exact),
            self.within_tolerance,
            self.skipped
        );
        if !self.skipped_reasons.is_empty() {
            let reasons: Vec<String> = self
                .skipped_reasons
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect();
            text.push_str(&format!(" ({})", reasons.join(", ")));
        }
        text.push_str(&format!(
            "; {} {}, {} failed",
            self.mismatch,
            if self.mismatch == 1 {
                "mismatch"
            } else {
                "mismatches"
            },
            self.failed
        ));
        text
    }
}

/// Picks `fraction` of the records (at least one when any exist), by a seeded ranking of
/// their keys, so the same seed picks the same sample.
pub fn sample(records: &[Record], fraction: f64, seed: u64) -> Vec<&Record> {
    let mut ranked: Vec<(Digest, &Record)> = records
        .iter()
        .map(|r| {
            let mut b = seed.to_le_bytes().to_vec();
            b.extend_from_slice(&r.key.0);
            (Digest::of_bytes(&b), r)
        })
        .collect();
    ranked.sort_by_key(|(rank, _)| *rank);
    let n = ((ranked.len() as f64) * fraction.clamp(0.0, 1.0)).ceil() as usize;
    ranked.into_iter().take(n).map(|(_, r)| r).collect()
}

/// Names of the `${secrets.NAME}` placeholders in a node's parameters, sorted.
fn used_secrets(material: &KeyMaterial) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.extend(crate::secrets::placeholders(s)),
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            serde_json::Value::Object(m) => m.values().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for v in material.params.values() {
        walk(v, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

fn class_of(rec: &Record) -> Determinism {
    match rec.determinism.as_str() {
        "seeded" => Determinism::Seeded,
        "nondeterministic" => Determinism::Nondeterministic,
        _ => Determinism::Deterministic,
    }
}

/// Re-executes the sampled records and compares their outputs as their class allows.
pub fn audit(ws: &Workspace, registry: &Registry, opts: AuditOptions) -> Result<Vec<AuditEntry>> {
    let records = ws.store.records()?;
    let run_id = format!("audit-{}", crate::workspace::new_run_id());
    let env = NodeEnv {
        cas: ws.cas.clone(),
        store: ws.store.clone(),
        pipeline: String::new(),
        run_id: run_id.clone(),
        run_dir: ws.run_dir(&run_id),
        scratch_dir: ws.scratch_dir(&run_id),
        // A re-execution starts from nothing: never from a run's saved state.
        resume_root: ws.scratch_dir(&run_id).join("resume"),
        cancel: CancelToken::new(),
        secrets: Secrets::default(),
        memo_store: false,
    };
    let here = (compute_threads(), hostname());
    let mut out = Vec::new();
    for rec in sample(&records, opts.fraction, opts.seed) {
        out.push(audit_one(ws, registry, &env, rec, &here, opts.tolerance));
    }
    let _ = std::fs::remove_dir_all(ws.scratch_dir(&run_id));
    Ok(out)
}

fn audit_one(
    ws: &Workspace,
    registry: &Registry,
    env: &NodeEnv,
    rec: &Record,
    here: &(u32, String),
    tolerance: f64,
) -> AuditEntry {
    let (threads, host) = (here.0, here.1.as_str());
    let class = class_of(rec);
    let entry = |outcome: &str, reason: Option<&str>, detail: String| AuditEntry {
        node: rec.node.clone(),
        pipeline: rec.pipeline.clone(),
        key: rec.key.to_hex(),
        class: class.as_str().into(),
        outcome: outcome.into(),
        reason: reason.map(str::to_string),
        detail,
    };
    let skip = |reason: &str, detail: String| entry("skipped", Some(reason), detail);
    let Some(material) = KeyMaterial::from_json(&rec.material) else {
        return skip(
            "unreadable record",
            "the record's key material cannot be read".into(),
        );
    };
    let Some(op) = registry.get(&rec.op) else {
        return skip(
            "operator unknown",
            format!("operator `{}` is not known to this expflow", rec.op),
        );
    };
    if op.version() != rec.op_version {
        return skip(
            "operator version changed",
            format!(
                "operator `{}` is now version {}, the record has version {}",
                rec.op,
                op.version(),
                rec.op_version
            ),
        );
    }
    if let Some(missing) = material.inputs.iter().find(|(_, d)| !ws.cas.contains(d)) {
        return skip(
            "input gone",
            format!(
                "input `{}` ({}) is no longer stored",
                missing.0,
                missing.1.short()
            ),
        );
    }
    let metrics: Vec<&String> = rec
        .outputs
        .iter()
        .filter(|(_, o)| o.kind == PortType::Metrics.as_str())
        .map(|(port, _)| port)
        .collect();
    if class == Determinism::Nondeterministic && metrics.is_empty() {
        return skip(
            "nondeterministic without metrics",
            "nondeterministic (remote sampling, external tools): its bytes may differ on \
             every execution and it has no metrics output to compare within tolerance"
                .into(),
        );
    }
    // The secrets the node used, read again from this environment.
    let names = used_secrets(&material);
    let secrets = match Secrets::from_env(&names, std::path::Path::new(&rec.pipeline)) {
        Ok(s) => s,
        Err(_) => {
            return skip(
                "secret unset",
                format!(
                    "it uses the secret(s) {}; export them to audit it",
                    names.join(", ")
                ),
            );
        }
    };
    let env = &NodeEnv {
        secrets,
        ..env.clone()
    };
    let node = CNode {
        name: rec.node.clone(),
        base: rec.node.clone(),
        op: Arc::clone(op),
        params: material.params.clone(),
        inputs: Default::default(),
        outputs: material.outputs.clone(),
        resources: op.signature().resources,
        retries: 0,
        metrics: material.metrics.clone(),
        point: Default::default(),
        determinism: op.determinism(&material.params),
        deps: Vec::new(),
        loc: Loc::default(),
        executor: None,
        time_min: None,
    };
    let done = match execute(
        env,
        &node,
        &material,
        &rec.key,
        &material.input_types,
        Vec::new(),
        1,
        Arc::new(|_: &crate::context::Progress| {}),
        false,
    ) {
        Ok(done) => done,
        Err(e) => return entry("failed", None, e),
    };
    let differing: Vec<String> = rec
        .outputs
        .iter()
        .filter_map(|(port, o)| {
            let now = done.outputs.get(port).map(|n| n.digest);
            (now != Some(o.digest)).then(|| {
                format!(
                    "{port}: recorded {} but re-execution gave {}",
                    o.digest.short(),
                    now.map_or("nothing".into(), |d| d.short())
                )
            })
        })
        .collect();
    if differing.is_empty() {
        return entry(
            "match",
            None,
            format!("{} output(s) identical", rec.outputs.len()),
        );
    }
    // The bytes differ. Which differences the class allows:
    let allowed = match class {
        Determinism::Deterministic => None,
        Determinism::Seeded if rec.host != host => Some(format!(
            "seeded, recorded on {} and re-executed on {host}, so its bytes may differ",
            rec.host
        )),
        Determinism::Seeded if rec.threads == 0 || rec.threads == threads => None,
        Determinism::Seeded => Some(format!(
            "seeded, recorded with {} threads and re-executed with {threads}, so its bytes may \
             differ (RAYON_NUM_THREADS={} compares them exactly)",
            rec.threads, rec.threads
        )),
        Determinism::Nondeterministic => Some("nondeterministic, so its bytes may differ".into()),
    };
    let Some(allowed) = allowed else {
        return entry("mismatch", None, differing.join("; "));
    };
    if metrics.is_empty() {
        return skip(
            "seeded, other threads or host",
            format!("{allowed}; it has no metrics output to compare within tolerance"),
        );
    }
    let mut problems = Vec::new();
    for port in &metrics {
        let recorded = &rec.outputs[*port];
        let Some(now) = done.outputs.get(*port) else {
            problems.push(format!("{port}: re-execution gave nothing"));
            continue;
        };
        let read = |d: &Digest| -> Option<Value> {
            let bytes = std::fs::read(ws.cas.blob_path(d)).ok()?;
            serde_json::from_slice(&bytes).ok()
        };
        match (read(&recorded.digest), read(&now.digest)) {
            (Some(a), Some(b)) => compare_json(port, &a, &b, tolerance, &mut problems),
            _ => problems.push(format!("{port}: not readable as JSON")),
        }
    }
    if problems.is_empty() {
        entry(
            "within_tolerance",
            None,
            format!(
                "{allowed}; metrics ({}) within {tolerance}",
                metrics
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    } else {
        entry(
            "mismatch",
            None,
            format!(
                "{allowed}, but metrics moved beyond {tolerance}: {}",
                problems.join("; ")
            ),
        )
    }
}

/// Whether two numbers agree within `tol`: absolutely up to magnitude 1, relatively above.
pub fn within(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * a.abs().max(b.abs()).max(1.0)
}

/// Compares two metrics documents: numbers within `tol`, everything else equal; each
/// difference goes to `problems`, named by its JSON path.
pub fn compare_json(path: &str, a: &Value, b: &Value, tol: f64, problems: &mut Vec<String>) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            if !within(x, y, tol) {
                problems.push(format!("{path}: recorded {x}, now {y}"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => compare_json(&format!("{path}.{k}"), v, w, tol, problems),
                    None => problems.push(format!("{path}.{k}: no longer there")),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                problems.push(format!("{path}.{k}: new"));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                compare_json(&format!("{path}[{i}]"), v, w, tol, problems);
            }
        }
        _ if a == b => {}
        _ => problems.push(format!("{path}: recorded {a}, now {b}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn metrics_compare_within_tolerance_and_name_the_place() {
        let a = json!({"accuracy": 0.50, "n": 200, "per_task": [{"name": "i2t", "acc": 0.4}]});
        let close = json!({"accuracy": 0.52, "n": 204, "per_task": [{"name": "i2t", "acc": 0.43}]});
        let mut problems = Vec::new();
        compare_json("metrics", &a, &close, 0.05, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let far =
            json!({"accuracy": 0.60, "n": 200, "per_task": [{"name": "t2i", "acc": 0.4}], "x": 1});
        compare_json("metrics", &a, &far, 0.05, &mut problems);
        assert_eq!(
            problems,
            [
                "metrics.accuracy: recorded 0.5, now 0.6",
                "metrics.per_task[0].name: recorded \"i2t\", now \"t2i\"",
                "metrics.x: new"
            ]
        );
    }

    #[test]
    fn tolerance_is_absolute_below_one_and_relative_above() {
        assert!(within(0.50, 0.54, 0.05));
        assert!(!within(0.50, 0.56, 0.05));
        assert!(within(1000.0, 1049.0, 0.05));
        assert!(!within(1000.0, 1060.0, 0.05));
        assert!(!within(f64::NAN, 1.0, 0.05));
    }

    #[test]
    fn the_summary_line_counts_each_outcome_and_groups_skip_reasons() {
        let e = |outcome: &str, reason: Option<&str>| AuditEntry {
            node: "n".into(),
            pipeline: "p".into(),
            key: "k".into(),
            class: "deterministic".into(),
            outcome: outcome.into(),
            reason: reason.map(str::to_string),
            detail: String::new(),
        };
        let entries = [
            e("match", None),
            e("match", None),
            e("within_tolerance", None),
            e("skipped", Some("nondeterministic without metrics")),
            e("skipped", Some("nondeterministic without metrics")),
            e("skipped", Some("operator version changed")),
            e("mismatch", None),
        ];
        let s = AuditSummary::of(&entries);
        assert_eq!(
            s.line(),
            "2 nodes compared exactly, 1 within tolerance, 3 skipped (2 nondeterministic without \
             metrics, 1 operator version changed); 1 mismatch, 0 failed"
        );
    }
}
