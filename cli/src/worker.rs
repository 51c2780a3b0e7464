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
