//! Maintenance commands: verify, audit, gc, pin, db rebuild.

use std::path::PathBuf;

use anyhow::Result;
use expflow_engine::audit::{AuditOptions, AuditSummary};
use expflow_engine::{EngineError, Registry, Workspace, workspace};
use serde_json::json;

use crate::code;
use crate::inspect::human_bytes;

fn open(ws_arg: &Option<PathBuf>, command: &str) -> Result<Workspace> {
    let root = Workspace::discover(ws_arg.as_deref())?;
    Ok(Workspace::open(
        &root,
        workspace::holder(command, "", None),
    )?)
}

pub fn verify(ws_arg: &Option<PathBuf>, json: bool) -> Result<u8> {
    let ws = open(ws_arg, "verify")?;
    let report = expflow_cache::verify(&ws.cas, ws.store.as_ref())?;
    let clean = report.is_clean();
    if json {
        let bad: Vec<_> = report
            .bad_blobs
            .iter()
            .map(|(d, s)| json!({"digest": d.to_hex(), "state": format!("{s:?}")}))
            .collect();
        let recs: Vec<_> = report.bad_records.iter().map(|b| json!({"node": b.node, "key": b.key.to_hex(), "what": b.what, "digest": b.digest.to_hex(), "state": format!("{:?}", b.state)})).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"ok": clean, "blobs_checked": report.blobs_checked, "bytes_checked": report.bytes_checked, "records_checked": report.records_checked, "bad_blobs": bad, "bad_records": recs})
            )?
        );
    } else {
        println!(
            "checked {} blobs ({}) and {} records",
            report.blobs_checked,
            human_bytes(report.bytes_checked),
            report.records_checked
        );
        for (d, s) in &report.bad_blobs {
            println!("bad blob {d}: {s:?}");
        }
        for b in &report.bad_records {
            println!(
                "bad record {} ({}): {} {} is {:?}",
                b.node,
                b.key.short(),
                b.what,
                b.digest.short(),
                b.state
            );
        }
        if clean {
            println!("ok");
        } else {
            println!("mismatch: the next `expflow run` recomputes what is affected");
        }
    }
    Ok(if clean { 0 } else { code::MISMATCH })
}

pub fn audit(
    ws_arg: &Option<PathBuf>,
    registry: &Registry,
    opts: AuditOptions,
    json: bool,
) -> Result<u8> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&opts.fraction),
        EngineError::Usage("--fraction must be between 0 and 1".into())
    );
    anyhow::ensure!(
        opts.tolerance >= 0.0 && opts.tolerance.is_finite(),
        EngineError::Usage("--tolerance must be a number of 0 or more (0.05 allows 5%)".into())
    );
    let ws = open(ws_arg, "audit")?;
    let report = expflow_cache::verify(&ws.cas, ws.store.as_ref())?;
    let entries = expflow_engine::audit::audit(&ws, registry, opts)?;
    let summary = AuditSummary::of(&entries);
    let ok = report.is_clean() && summary.mismatch == 0;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"ok": ok, "verify_ok": report.is_clean(), "tolerance": opts.tolerance, "summary": summary, "audited": entries})
            )?
        );
    } else {
        println!(
            "verify: {}",
            if report.is_clean() {
                "ok"
            } else {
                "MISMATCH (run `expflow verify`)"
            }
        );
        for e in &entries {
            println!(
                "{:<16} {} ({}, {}): {}",
                e.outcome,
                e.node,
                &e.key[..12],
                e.class,
                e.detail
            );
        }
        println!("audit: {}", summary.line());
    }
    Ok(if ok { 0 } else { code::MISMATCH })
}

/// Bytes of the files under `p` (symbolic links not followed).
fn dir_size(p: &std::path::Path) -> u64 {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|d| d.flatten().map(|e| dir_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// Resumable node states (directories under `.expflow/resume`) and their total size.
fn resume_states(root: &std::path::Path) -> (Vec<PathBuf>, u64) {
    let mut dirs = Vec::new();
    let mut bytes = 0;
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            bytes += dir_size(&e.path());
            dirs.push(e.path());
        }
    }
    dirs.sort();
    (dirs, bytes)
}

pub fn gc(
    ws_arg: &Option<PathBuf>,
    keep: usize,
    dry_run: bool,
    drop_resume: bool,
    json: bool,
) -> Result<u8> {
    let ws = open(ws_arg, "gc")?;
    let r = expflow_cache::gc(&ws.cas, ws.store.as_ref(), keep, dry_run)?;
    let (states, state_bytes) = resume_states(&ws.resume_root());
    if drop_resume && !dry_run {
        for d in &states {
            std::fs::remove_dir_all(d)?;
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"dry_run": dry_run, "blobs_removed": r.blobs_removed, "bytes_removed": r.bytes_removed, "records_removed": r.records_removed, "blobs_kept": r.blobs_kept, "bytes_kept": r.bytes_kept, "resume_states": states.len(), "resume_bytes": state_bytes, "resume_dropped": drop_resume})
            )?
        );
    } else {
        if !states.is_empty() {
            let what = if drop_resume {
                if dry_run { "would remove" } else { "removed" }
            } else {
                "kept (remove with --drop-resume)"
            };
            println!(
                "{} resumable node state(s) ({}) {what}",
                states.len(),
                human_bytes(state_bytes)
            );
        }
        let verb = if dry_run { "would remove" } else { "removed" };
        println!(
            "{verb} {} blobs ({}) and {} records; kept {} blobs ({})",
            r.blobs_removed,
            human_bytes(r.bytes_removed),
            r.records_removed,
            r.blobs_kept,
            human_bytes(r.bytes_kept)
        );
    }
    Ok(0)
}

pub fn pin(ws_arg: &Option<PathBuf>, run_id: &str, on: bool) -> Result<u8> {
    let ws = open(ws_arg, if on { "pin" } else { "unpin" })?;
    if !ws.store.runs()?.iter().any(|r| r.run_id == run_id) {
        anyhow::bail!(EngineError::Usage(format!(
            "no run `{run_id}` in this workspace; see `expflow status`"
        )));
    }
    if on {
        ws.store.pin(run_id)?;
    } else {
        ws.store.unpin(run_id)?;
    }
    ws.store.flush()?;
    println!("{} {run_id}", if on { "pinned" } else { "unpinned" });
    Ok(0)
}

pub fn rebuild(ws_arg: &Option<PathBuf>) -> Result<u8> {
    let root = Workspace::discover(ws_arg.as_deref())?;
    // Take the workspace lock without opening the (possibly broken) database.
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join("lock"))?;
    if lock.try_lock().is_err() {
        let who = workspace::read_holder(&root)
            .map(|h| h.to_string())
            .unwrap_or_else(|| "holder unknown".into());
        anyhow::bail!(EngineError::Held {
            workspace: root,
            holder: who
        });
    }
    let cas = expflow_cache::Cas::open(&root.join("cas"))?;
    let r = expflow_cache::rebuild(&root, &cas)?;
    println!(
        "rebuilt the record index from the journal: {} records restored, {} skipped (their blobs are gone), {} runs, {} unreadable journal lines",
        r.records, r.skipped_missing, r.runs, r.lines_bad
    );
    if let Some(old) = &r.moved_aside {
        println!("the old database was kept at {}", old.display());
    }
    Ok(0)
}
