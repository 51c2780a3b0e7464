//! `audit`: re-execute a sample of recorded deterministic and seeded nodes from their
//! stored inputs and compare output digests with the record.

use std::sync::Arc;

use expflow_cache::{Digest, Record};
use serde::Serialize;

use crate::compile::CNode;
use crate::context::CancelToken;
use crate::diag::Loc;
use crate::error::Result;
use crate::key::KeyMaterial;
use crate::node::{NodeEnv, execute};
use crate::operator::{Determinism, Registry};
use crate::secrets::Secrets;
use crate::workspace::Workspace;

#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    pub node: String,
    pub pipeline: String,
    pub key: String,
    /// `match`, `mismatch`, `failed` or `skipped`.
    pub outcome: String,
    pub detail: String,
}

/// Picks `fraction` of the records (at least one when any qualify), by a seeded ranking of
/// their keys, so the same seed picks the same sample.
pub fn sample(records: &[Record], fraction: f64, seed: u64) -> Vec<&Record> {
    let mut eligible: Vec<(Digest, &Record)> = records
        .iter()
        .filter(|r| r.determinism != Determinism::Nondeterministic.as_str())
        .map(|r| {
            let mut b = seed.to_le_bytes().to_vec();
            b.extend_from_slice(&r.key.0);
            (Digest::of_bytes(&b), r)
        })
        .collect();
    eligible.sort_by_key(|(rank, _)| *rank);
    let n = ((eligible.len() as f64) * fraction.clamp(0.0, 1.0)).ceil() as usize;
    eligible.into_iter().take(n).map(|(_, r)| r).collect()
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

/// Re-executes the sampled records and compares their outputs.
pub fn audit(
    ws: &Workspace,
    registry: &Registry,
    fraction: f64,
    seed: u64,
) -> Result<Vec<AuditEntry>> {
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
    };
    let mut out = Vec::new();
    for rec in sample(&records, fraction, seed) {
        let entry = |outcome: &str, detail: String| AuditEntry {
            node: rec.node.clone(),
            pipeline: rec.pipeline.clone(),
            key: rec.key.to_hex(),
            outcome: outcome.into(),
            detail,
        };
        let Some(material) = KeyMaterial::from_json(&rec.material) else {
            out.push(entry(
                "skipped",
                "the record's key material cannot be read".into(),
            ));
            continue;
        };
        let Some(op) = registry.get(&rec.op) else {
            out.push(entry(
                "skipped",
                format!("operator `{}` is not known to this expflow", rec.op),
            ));
            continue;
        };
        if op.version() != rec.op_version {
            out.push(entry(
                "skipped",
                format!(
                    "operator `{}` is now version {}, the record has version {}",
                    rec.op,
                    op.version(),
                    rec.op_version
                ),
            ));
            continue;
        }
        if let Some(missing) = material.inputs.iter().find(|(_, d)| !ws.cas.contains(d)) {
            out.push(entry(
                "skipped",
                format!(
                    "input `{}` ({}) is no longer stored",
                    missing.0,
                    missing.1.short()
                ),
            ));
            continue;
        }
        // The secrets the node used, read again from this environment.
        let names = used_secrets(&material);
        let secrets = match Secrets::from_env(&names, std::path::Path::new(&rec.pipeline)) {
            Ok(s) => s,
            Err(_) => {
                out.push(entry(
                    "skipped",
                    format!(
                        "it uses the secret(s) {}; export them to audit it",
                        names.join(", ")
                    ),
                ));
                continue;
            }
        };
        let env = NodeEnv {
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
            determinism: op.determinism(&material.params),
            deps: Vec::new(),
            loc: Loc::default(),
        };
        let result = execute(
            &env,
            &node,
            &material,
            &rec.key,
            &material.input_types,
            Vec::new(),
            1,
            Arc::new(|_, _| {}),
            false,
        );
        match result {
            Err(e) => out.push(entry("failed", e)),
            Ok(done) => {
                let diffs: Vec<String> = rec
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
                if diffs.is_empty() {
                    out.push(entry(
                        "match",
                        format!("{} output(s) identical", rec.outputs.len()),
                    ));
                } else {
                    out.push(entry("mismatch", diffs.join("; ")));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(ws.scratch_dir(&run_id));
    Ok(out)
}
