//! Inspection commands: plan/explain text, status, log, lineage, show, graph.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Result, bail};
use expflow_cache::{Digest, Record};
use expflow_engine::events::{EventKind, format_utc, read_events};
use expflow_engine::{EngineError, Explanation, Pipeline, PlanEntry, Source, Workspace, workspace};
use serde_json::json;

mod graph;
mod lineage;
mod show;

pub use graph::{GraphFormat, graph};
pub use lineage::lineage;
pub use show::show;

pub fn plan_text(entries: &[PlanEntry]) -> String {
    let mut out = String::new();
    let count = |s: &str| entries.iter().filter(|e| e.state == s).count();
    for e in entries {
        let key = e
            .key
            .as_deref()
            .map_or("-".to_string(), |k| k[..12].to_string());
        let _ = write!(out, "{:<8} {:<12} {}", e.state, key, e.name);
        if !e.reasons.is_empty() {
            let _ = write!(out, "  ({})", e.reasons.join("; "));
        }
        if let Some(est) = &e.estimate {
            let _ = write!(out, "  [~{}", seconds(est.seconds));
            if est.gpu_hours > 0.0 {
                let _ = write!(out, ", {:.2} GPU-h", est.gpu_hours);
            }
            let _ = write!(out, ", {}; from {}]", human_bytes(est.bytes), est.basis);
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{} to run, {} pending, {} cached",
        count("run"),
        count("pending"),
        count("cached")
    );
    let ests: Vec<&expflow_engine::estimate::Estimate> =
        entries.iter().filter_map(|e| e.estimate.as_ref()).collect();
    let to_run = entries.iter().filter(|e| e.state != "cached").count();
    if !ests.is_empty() {
        let _ = writeln!(
            out,
            "expected: {}, {:.2} GPU-hours, {} written (from earlier runs of {} of the {} nodes to run)",
            seconds(ests.iter().map(|e| e.seconds).sum()),
            ests.iter().map(|e| e.gpu_hours).sum::<f64>(),
            human_bytes(ests.iter().map(|e| e.bytes).sum()),
            ests.len(),
            to_run
        );
    }
    out
}

pub fn explain_text(ex: &[Explanation]) -> String {
    let mut out = String::new();
    for e in ex {
        let _ = writeln!(out, "node {}: {}", e.node, e.state);
        let _ = writeln!(out, "  key       {}", e.key.as_deref().unwrap_or("pending"));
        if let Some(p) = &e.previous_key {
            let _ = writeln!(
                out,
                "  last run  {p} (run {})",
                e.previous_run.as_deref().unwrap_or("?")
            );
        }
        for c in &e.changes {
            let _ = writeln!(out, "  - {c}");
        }
    }
    out
}

/// Opens the workspace for an inspection command. `Err(Held)` is passed through for the
/// callers that can fall back on the holder's event log.
pub fn open(ws_arg: &Option<PathBuf>, command: &str) -> Result<Workspace, EngineError> {
    let root = Workspace::discover(ws_arg.as_deref())?;
    Workspace::open(&root, workspace::holder(command, "", None))
}

fn latest_events(root: &std::path::Path, run: Option<&str>) -> Result<(String, PathBuf)> {
    let runs = root.join("runs");
    let id = match run {
        Some(r) => r.to_string(),
        None => {
            let mut ids: Vec<String> = std::fs::read_dir(&runs)
                .map_err(|e| EngineError::Usage(format!("no runs in {}: {e}", runs.display())))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("audit-"))
                .collect();
            // Run ids are second-resolution timestamps with a random suffix: two runs within
            // one second sort by the suffix, so order by the start time in their events.
            let started = |id: &String| -> u64 {
                std::fs::read_to_string(runs.join(id).join("events.jsonl"))
                    .ok()
                    .and_then(|t| {
                        let first = t.lines().next()?.to_string();
                        serde_json::from_str::<serde_json::Value>(&first).ok()
                    })
                    .and_then(|v| v["t_ms"].as_u64())
                    .unwrap_or(0)
            };
            ids.sort_by_cached_key(|id| (started(id), id.clone()));
            match ids.pop() {
                Some(id) => id,
                None => bail!(EngineError::Usage("this workspace has no runs yet".into())),
            }
        }
    };
    let path = runs.join(&id).join("events.jsonl");
    if !path.exists() {
        bail!(EngineError::Usage(format!(
            "no run `{id}` in {}",
            runs.display()
        )));
    }
    Ok((id, path))
}

pub fn status(ws_arg: &Option<PathBuf>, json: bool) -> Result<u8> {
    let ws = match open(ws_arg, "status") {
        Ok(ws) => ws,
        Err(EngineError::Held { workspace, holder }) => {
            // A run holds the database: report from its event log.
            let h = workspace::read_holder(&workspace);
            let run_id = h.as_ref().and_then(|h| h.run_id.clone());
            // The holder may not have written its event log yet (or is not a run).
            let (id, events) = match run_id
                .as_deref()
                .map(|r| latest_events(&workspace, Some(r)))
            {
                Some(Ok((id, path))) => (id, read_events(&path).unwrap_or_default()),
                _ => (run_id.unwrap_or_else(|| "-".into()), Vec::new()),
            };
            let done = events
                .iter()
                .filter(|e| {
                    matches!(
                        e.kind,
                        EventKind::NodeExecuted { .. } | EventKind::NodeCached { .. }
                    )
                })
                .count();
            let total = events
                .iter()
                .find_map(|e| match e.kind {
                    EventKind::RunStarted { nodes, .. } => Some(nodes),
                    _ => None,
                })
                .unwrap_or(0);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"held_by": holder, "run_id": id, "done": done, "nodes": total})
                    )?
                );
            } else {
                println!("held by {holder}\nrun {id}: {done}/{total} nodes done");
            }
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    let runs = ws.store.runs()?;
    let records = ws.store.records()?;
    let blobs = ws.cas.list()?;
    let bytes: u64 = blobs.iter().map(|(_, s)| s).sum();
    let pins = ws.store.pins()?;
    let recent: Vec<_> = runs.iter().rev().take(10).collect();
    if json {
        let rs: Vec<_> = recent.iter().map(|r| json!({"run_id": r.run_id, "pipeline": r.pipeline, "status": r.status, "started": format_utc(r.started_ms), "nodes": r.nodes.len(), "pinned": pins.contains(&r.run_id)})).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"workspace": ws.root(), "held_by": null, "records": records.len(), "blobs": blobs.len(), "bytes": bytes, "runs": rs})
            )?
        );
    } else {
        println!("workspace {}", ws.root().display());
        println!(
            "{} records, {} blobs, {}",
            records.len(),
            blobs.len(),
            human_bytes(bytes)
        );
        for r in recent {
            let pin = if pins.contains(&r.run_id) {
                " (pinned)"
            } else {
                ""
            };
            println!(
                "  {}  {:<10} {:<9} {} nodes  {}{pin}",
                r.run_id,
                r.pipeline,
                r.status,
                r.nodes.len(),
                format_utc(r.started_ms)
            );
        }
    }
    Ok(0)
}

/// `0.4 s`, `12 s`, `3 min 5 s`, `2 h 10 min`.
fn seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1} s")
    } else if s < 60.0 {
        format!("{s:.0} s")
    } else if s < 3600.0 {
        format!("{} min {} s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{} h {} min",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub fn log(
    ws_arg: &Option<PathBuf>,
    node: Option<String>,
    run: Option<String>,
    pipeline: Option<String>,
    json: bool,
) -> Result<u8> {
    let root = Workspace::discover(ws_arg.as_deref())?;
    let (id, path) = latest_events(&root, run.as_deref())?;
    if let Some(node) = node {
        // Without --run: the run that produced the node's current record, which the latest
        // run may only have found cached.
        if run.is_none()
            && let Some(code) = crate::nodelog::current(ws_arg, &node, pipeline, &id, json)?
        {
            return Ok(code);
        }
        let log = root
            .join("runs")
            .join(&id)
            .join("logs")
            .join(format!("{}.log", expflow_engine::node::safe_name(&node)));
        match std::fs::read_to_string(&log) {
            Ok(text) => print!("{text}"),
            Err(_) => bail!(EngineError::Usage(format!(
                "node `{node}` has no log in run {id} (it was cached or did not run); see `expflow log --run {id}`"
            ))),
        }
        return Ok(0);
    }
    let events = read_events(&path)?;
    for e in events {
        if json {
            println!("{}", serde_json::to_string(&e)?);
            continue;
        }
        let t = format_utc(e.t_ms);
        let line = match &e.kind {
            EventKind::RunStarted {
                run_id,
                pipeline,
                nodes,
                ..
            } => format!("run {run_id} of {pipeline} started ({nodes} nodes)"),
            EventKind::NodeStarted { node, attempt, .. } => {
                format!("started  {node} (attempt {attempt})")
            }
            EventKind::NodeCached { node, key } => format!("cached   {node} {}", key.short()),
            EventKind::NodeProgress {
                node,
                done,
                total,
                unit,
                detail,
            } => crate::progress::progress_line(node, *done, *total, unit, detail, None),
            EventKind::NodeExecuted {
                node,
                key,
                duration_ms,
                memo_hits,
                memo_misses,
                notes,
                ..
            } => {
                // Figures about the execution: the memo and what the operator noted.
                let mut figures = Vec::new();
                if memo_hits + memo_misses > 0 {
                    figures.push(format!(
                        "{memo_misses} item(s) computed, {memo_hits} reused"
                    ));
                }
                figures.extend(notes.iter().map(|(k, v)| format!("{k} {v}")));
                let figures = if figures.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", figures.join(", "))
                };
                format!(
                    "executed {node} {} in {duration_ms} ms{figures}",
                    key.short()
                )
            }
            EventKind::NodeFailed {
                node,
                error,
                will_retry,
                ..
            } => format!(
                "failed   {node}{}: {}",
                if *will_retry { " (will retry)" } else { "" },
                error.lines().next().unwrap_or_default()
            ),
            EventKind::NodeSkipped { node, reason } => format!("skipped  {node}: {reason}"),
            EventKind::RunFinished {
                status,
                executed,
                cached,
                failed,
                skipped,
                duration_ms,
            } => format!(
                "run finished: {status}; {executed} executed, {cached} cached, {failed} failed, {skipped} skipped in {duration_ms} ms"
            ),
        };
        println!("{t} {line}");
    }
    Ok(0)
}

/// The pipeline an inspection command is about: `--pipeline` or the latest run's.
pub fn pipeline_name(ws: &Workspace, given: Option<String>) -> Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    match ws.store.runs()?.last() {
        Some(r) => Ok(r.pipeline.clone()),
        None => bail!(EngineError::Usage(
            "this workspace has no runs yet; run a pipeline first".into()
        )),
    }
}

/// The record of the last run of `node` (an instance name, or a base name with one instance).
pub fn last_record(ws: &Workspace, pipeline: &str, node: &str) -> Result<Record> {
    let keys = ws.store.last_keys(pipeline)?;
    let matches: Vec<&(String, Digest)> = keys
        .iter()
        .filter(|(n, _)| n == node || n.split('[').next() == Some(node))
        .collect();
    let (name, key) = match matches.as_slice() {
        [one] => *one,
        [] => {
            let names: Vec<&str> = keys.iter().map(|(n, _)| n.as_str()).collect();
            bail!(EngineError::Usage(format!(
                "pipeline {pipeline} has no recorded node `{node}`; recorded: {}",
                names.join(", ")
            )))
        }
        many => bail!(EngineError::Usage(format!(
            "`{node}` has several sweep points: {}; name one",
            many.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    };
    match ws.store.get_record(key)? {
        Some(r) => Ok(r),
        None => bail!(EngineError::Usage(format!(
            "the last result of `{name}` is no longer recorded (collected by gc?); run the pipeline again"
        ))),
    }
}
