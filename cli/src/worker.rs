//! `expflow worker TASK`: what a cluster job runs (see `expflow_engine::executor::task`).

use std::path::Path;

use anyhow::Result;
use expflow_engine::Registry;

/// Runs the task; exit code 0 when the node succeeded, 1 when it failed (the result file
/// says why either way).
pub fn run(task: &Path, registry: &Registry) -> Result<u8> {
    let ok = expflow_engine::executor::task::run_task(task, registry)?;
    if !ok {
        eprintln!("expflow worker: the node failed; see its result file and log");
    }
    Ok(if ok { 0 } else { 1 })
}

/// The object data mode: the task, its inputs and its outputs travel through the remote
/// `spec` (credentials from the job's `AWS_*` environment); `workspace` is the job's own
/// (default `$TMPDIR/expflow-worker`), never the submitting one.
pub fn run_object(
    task: &Path,
    spec: expflow_remote::RemoteSpec,
    workspace: Option<&Path>,
    registry: &Registry,
) -> Result<u8> {
    let ws = match workspace {
        Some(w) => w.to_path_buf(),
        None => std::env::temp_dir().join("expflow-worker"),
    };
    // The job reads no record: it needs no trusted keys.
    let remote = expflow_remote::Remote::open(&spec, expflow_remote::Trust::default())?;
    let ok = expflow_engine::executor::task::run_object_task(
        &remote,
        &task.to_string_lossy(),
        &ws,
        registry,
    )?;
    if !ok {
        eprintln!(
            "expflow worker: the node failed; see its result on remote {}",
            spec.name
        );
    }
    Ok(if ok { 0 } else { 1 })
}
