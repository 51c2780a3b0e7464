//! `expflow report [RUN] [--baseline RUN] --out FILE.html`: one self-contained HTML file
//! about a run, readable offline by someone without expflow: the DAG coloured by state,
//! a timeline, each node's parameters, outputs and log tail, metrics, training curves and,
//! with a baseline, what `expflow diff` says with before/after curves.
//!
//! `data` gathers (records, events, logs, the diff), `layout` places the DAG's nodes, `page`
//! writes the HTML around the inline JSON, the page's script (`page.js`) and uPlot
//! (`vendor/`, see `vendor/VENDORED.md`).

mod data;
mod layout;
mod page;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use expflow_engine::history::History;
use expflow_engine::{Workspace, workspace};

/// Writes the report of `run` (default: the workspace's latest run; a pipeline name or
/// file means its latest run) to `out`.
pub fn report(
    ws_arg: &Option<PathBuf>,
    run: Option<&str>,
    baseline: Option<&str>,
    out: &Path,
) -> Result<u8> {
    if out.extension().is_none_or(|e| e != "html" && e != "htm") {
        anyhow::bail!(expflow_engine::EngineError::Usage(format!(
            "--out {}: the report is one HTML file; name it FILE.html",
            out.display()
        )));
    }
    // A pipeline file names its workspace as `run` and `plan` do; otherwise the workspace
    // is found from the current directory (or --workspace).
    let root = match run.map(Path::new).filter(|p| p.is_file()) {
        Some(file) => Workspace::locate(file, ws_arg.as_deref()),
        None => Workspace::discover(ws_arg.as_deref())?,
    };
    let ws = Workspace::open(&root, workspace::holder("report", "", None))?;
    let h = History::open(ws.store.as_ref())?;
    let run = data::resolve_run(&h, run)?;
    let baseline = match baseline {
        Some(b) => Some(h.find(b)?.clone()),
        None => None,
    };
    drop(h);
    let report = data::gather(&ws, &run, baseline.as_ref())?;
    let html = page::render(&report)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    }
    std::fs::write(out, &html).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "report of run {} ({} nodes{}) written to {} ({} KiB)",
        report.run.id,
        report.nodes.len(),
        report
            .baseline
            .as_ref()
            .map_or(String::new(), |b| format!(", baseline {}", b.id)),
        out.display(),
        html.len().div_ceil(1024)
    );
    Ok(0)
}
