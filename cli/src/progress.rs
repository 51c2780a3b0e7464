//! Progress of a run: a bar on a terminal, plain lines otherwise (both on stderr).

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use expflow_engine::events::EventKind;
use expflow_engine::run::Observer;
use indicatif::{ProgressBar, ProgressStyle};

pub struct Display {
    bar: Option<ProgressBar>,
    quiet: bool,
    counts: Arc<Mutex<(u64, u64)>>,
}

impl Display {
    /// `quiet` (for `--json`) prints only failures.
    pub fn new(quiet: bool) -> Display {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} nodes {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b
        });
        Display {
            bar,
            quiet,
            counts: Arc::new(Mutex::new((0, 0))),
        }
    }

    pub fn observer(&self) -> Observer {
        let bar = self.bar.clone();
        let quiet = self.quiet;
        let counts = self.counts.clone();
        Arc::new(move |ev: &EventKind| {
            let line = match ev {
                EventKind::RunStarted { nodes, run_id, .. } => {
                    if let Some(b) = &bar {
                        b.set_length(*nodes as u64);
                    }
                    format!("run {run_id}: {nodes} nodes")
                }
                EventKind::NodeStarted { node, attempt, .. } => {
                    if *attempt > 1 {
                        format!("retry {node} (attempt {attempt})")
                    } else {
                        format!("start {node}")
                    }
                }
                EventKind::NodeCached { node, .. } => {
                    if let Ok(mut c) = counts.lock() {
                        c.1 += 1;
                    }
                    if let Some(b) = &bar {
                        b.inc(1);
                    }
                    format!("cached {node}")
                }
                EventKind::NodeExecuted {
                    node,
                    duration_ms,
                    memo_hits,
                    memo_misses,
                    ..
                } => {
                    if let Ok(mut c) = counts.lock() {
                        c.0 += 1;
                    }
                    if let Some(b) = &bar {
                        b.inc(1);
                    }
                    let memo = if memo_hits + memo_misses > 0 {
                        format!(", {memo_misses} item(s) computed, {memo_hits} reused")
                    } else {
                        String::new()
                    };
                    format!("done {node} ({:.2} s{memo})", *duration_ms as f64 / 1000.0)
                }
                EventKind::NodeProgress { node, done, total } => {
                    if let Some(b) = &bar {
                        b.set_message(format!("{node}: {done}/{total}"));
                    }
                    return;
                }
                EventKind::NodeFailed {
                    node,
                    error,
                    will_retry,
                    ..
                } => {
                    let first = error.lines().next().unwrap_or_default();
                    let line = if *will_retry {
                        format!("failed {node} (will retry): {first}")
                    } else {
                        format!("FAILED {node}: {first}")
                    };
                    match &bar {
                        Some(b) => b.println(&line),
                        None => eprintln!("{line}"),
                    }
                    return;
                }
                EventKind::NodeSkipped { node, reason } => format!("skip {node}: {reason}"),
                EventKind::RunFinished { .. } => return,
            };
            if quiet {
                return;
            }
            match &bar {
                Some(b) => {
                    if !line.starts_with("cached") && !line.starts_with("start") {
                        b.println(&line);
                    }
                }
                None => eprintln!("{line}"),
            }
        })
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
