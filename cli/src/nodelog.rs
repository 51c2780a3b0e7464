//! `expflow log NODE`: the log of the run that produced the node's current record, which is
//! not the latest run when that run found the node cached.

use std::path::{Path, PathBuf};

use anyhow::Result;
use expflow_engine::events::{EventKind, read_events};
use expflow_engine::node::safe_name;
use expflow_engine::{EngineError, Workspace};
use serde_json::json;

use crate::inspect;

/// What the latest run did with the node.
fn latest_state(root: &Path, latest: &str, node: &str) -> &'static str {
    let events =
        read_events(&root.join("runs").join(latest).join("events.jsonl")).unwrap_or_default();
    let mut state = "absent";
    for e in events {
        match e.kind {
            EventKind::NodeCached { node: n, .. } if n == node => state = "cached",
            EventKind::NodeExecuted { node: n, .. } if n == node => state = "executed",
            _ => {}
        }
    }
    state
}

/// Prints the log of the run that produced `node`'s current record, naming that run.
/// `Ok(None)` when the workspace is held by a run or the node has no record (the caller
/// then shows the latest run's log).
pub fn current(
    ws_arg: &Option<PathBuf>,
    node: &str,
    pipeline: Option<String>,
    latest: &str,
    json: bool,
) -> Result<Option<u8>> {
    let ws = match inspect::open(ws_arg, "log") {
        Ok(ws) => ws,
        Err(EngineError::Held { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Ok(pipeline) = inspect::pipeline_name(&ws, pipeline) else {
        return Ok(None);
    };
    let Ok(rec) = inspect::last_record(&ws, &pipeline, node) else {
        return Ok(None);
    };
    let text = log_text(&ws, &rec.node, &rec.run_id, rec.log.as_ref());
    let state = latest_state(ws.root(), latest, &rec.node);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "node": rec.node,
                "key": rec.key.to_hex(),
                "run_id": rec.run_id,
                "latest_run": latest,
                "latest_run_state": state,
                "log": text,
            }))?
        );
        return Ok(Some(0));
    }
    let mut head = format!(
        "log of `{}` from run {}, which produced its current record ({})",
        rec.node,
        rec.run_id,
        rec.key.short()
    );
    if rec.run_id != latest {
        match state {
            "cached" => head.push_str(&format!("; the latest run, {latest}, found it cached")),
            "executed" => head.push_str(&format!(
                "; the latest run, {latest}, executed it again to the same key"
            )),
            _ => head.push_str(&format!("; the latest run, {latest}, did not include it")),
        }
    }
    println!("== {head} ==");
    match text {
        Some(t) => print!("{t}"),
        None => println!("(the node wrote no log lines)"),
    }
    Ok(Some(0))
}

/// The node's log as the record stored it, else as its run's log directory holds it.
fn log_text(
    ws: &Workspace,
    node: &str,
    run_id: &str,
    stored: Option<&expflow_cache::Digest>,
) -> Option<String> {
    if let Some(d) = stored
        && let Ok(bytes) = std::fs::read(ws.cas.blob_path(d))
    {
        return Some(String::from_utf8_lossy(&bytes).into_owned());
    }
    let file = ws
        .root()
        .join("runs")
        .join(run_id)
        .join("logs")
        .join(format!("{}.log", safe_name(node)));
    std::fs::read_to_string(file).ok().filter(|t| !t.is_empty())
}
