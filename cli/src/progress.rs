//! Progress of a run on stderr. On a terminal: a bar of finished nodes, and under it the
//! running nodes with their elapsed time and their own progress (steps, prompts, a rate),
//! refreshed every second. Otherwise plain lines, and for a node running longer than
//! [`PLAIN_EVERY`] its progress once every [`PLAIN_EVERY`].

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use expflow_engine::events::EventKind;
use expflow_engine::run::Observer;
use indicatif::{ProgressBar, ProgressStyle};

/// How often a node's progress is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// A running node: when it started, its last progress, when that was last printed.
struct Running {
    started: Instant,
    progress: Option<(u64, u64, String, String)>,
    printed: Option<Instant>,
}

pub struct Display {
    bar: Option<ProgressBar>,
    quiet: bool,
    running: Arc<Mutex<BTreeMap<String, Running>>>,
    /// Plain `cached` lines not yet written (see [`Lines`]).
    lines: Arc<Mutex<Lines>>,
    stop: Arc<AtomicBool>,
}

/// Plain lines on stderr. `cached NODE` lines come in bursts (a re-run finds a thousand
/// nodes cached in a few milliseconds): they are gathered and written together, before
/// any other line, when [`CACHED_BURST`] bytes are waiting, and when the run ends; every
/// other line is written at once. The text is the same as one write per line.
#[derive(Default)]
struct Lines {
    cached: String,
}

/// Gathered `cached` lines are written at this size at the latest.
const CACHED_BURST: usize = 16 * 1024;

impl Lines {
    fn cached(&mut self, line: &str) {
        self.cached.push_str(line);
        self.cached.push('\n');
        if self.cached.len() >= CACHED_BURST {
            self.flush();
        }
    }

    fn line(&mut self, line: String) {
        self.flush();
        print_line(line);
    }

    fn flush(&mut self) {
        if !self.cached.is_empty() {
            let _ = std::io::stderr().write_all(self.cached.as_bytes());
            self.cached.clear();
        }
    }
}

/// `train: 120/400 steps (3.1 steps/s), 1 min 5 s`.
pub fn progress_line(
    node: &str,
    done: u64,
    total: u64,
    unit: &str,
    detail: &str,
    elapsed: Option<Duration>,
) -> String {
    let mut s = format!("progress {node}: {done}/{total}");
    if !unit.is_empty() {
        s.push(' ');
        s.push_str(unit);
    }
    if !detail.is_empty() {
        s.push_str(&format!(" ({detail})"));
    }
    if let Some(e) = elapsed {
        s.push_str(&format!(", {}", clock(e)));
    }
    s
}

/// `42 s`, `3 min 5 s`, `1 h 2 min`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    }
}

/// The bar's message: each running node, its elapsed time and progress.
fn running_message(running: &BTreeMap<String, Running>) -> String {
    running
        .iter()
        .map(|(node, r)| {
            let mut s = format!("{node} {}", clock(r.started.elapsed()));
            if let Some((done, total, unit, detail)) = &r.progress {
                s.push_str(&format!(" {done}/{total}"));
                if !unit.is_empty() {
                    s.push_str(&format!(" {unit}"));
                }
                if !detail.is_empty() {
                    s.push_str(&format!(" {detail}"));
                }
            }
            s
        })
        .collect::<Vec<_>>()
        .join(" | ")
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
        let running: Arc<Mutex<BTreeMap<String, Running>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        if let Some(b) = &bar {
            // Elapsed times move on between events.
            let (b, running, stop) = (b.clone(), running.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(r) = running.lock() {
                        b.set_message(running_message(&r));
                    }
                    b.tick();
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        }
        Display {
            bar,
            quiet,
            running,
            lines: Arc::default(),
            stop,
        }
    }

    pub fn observer(&self) -> Observer {
        let bar = self.bar.clone();
        let quiet = self.quiet;
        let running = self.running.clone();
        let lines = self.lines.clone();
        Arc::new(move |ev: &EventKind| {
            let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
            let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
            let line = match ev {
                EventKind::RunStarted { nodes, run_id, .. } => {
                    if let Some(b) = &bar {
                        b.set_length(*nodes as u64);
                    }
                    format!("run {run_id}: {nodes} nodes")
                }
                EventKind::NodeStarted { node, attempt, .. } => {
                    running.insert(
                        node.clone(),
                        Running {
                            started: Instant::now(),
                            progress: None,
                            printed: None,
                        },
                    );
                    if *attempt > 1 {
                        format!("retry {node} (attempt {attempt})")
                    } else {
                        format!("start {node}")
                    }
                }
                EventKind::NodeCached { node, .. } => {
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
                    running.remove(node);
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
                EventKind::NodeProgress {
                    node,
                    done,
                    total,
                    unit,
                    detail,
                } => {
                    let Some(r) = running.get_mut(node) else {
                        return;
                    };
                    r.progress = Some((*done, *total, unit.clone(), detail.clone()));
                    if let Some(b) = &bar {
                        b.set_message(running_message(&running));
                        return;
                    }
                    // Plain lines: for nodes running longer than PLAIN_EVERY, one every
                    // PLAIN_EVERY.
                    let due = r.started.elapsed() >= PLAIN_EVERY
                        && r.printed.is_none_or(|t| t.elapsed() >= PLAIN_EVERY);
                    if quiet || !due {
                        return;
                    }
                    r.printed = Some(Instant::now());
                    progress_line(node, *done, *total, unit, detail, Some(r.started.elapsed()))
                }
                EventKind::NodeFailed {
                    node,
                    error,
                    will_retry,
                    ..
                } => {
                    running.remove(node);
                    let first = error.lines().next().unwrap_or_default();
                    let line = if *will_retry {
                        format!("failed {node} (will retry): {first}")
                    } else {
                        format!("FAILED {node}: {first}")
                    };
                    match &bar {
                        Some(b) => b.println(&line),
                        None => lines.line(line),
                    }
                    return;
                }
                EventKind::NodeSkipped { node, reason } => format!("skip {node}: {reason}"),
                EventKind::RunFinished { .. } => {
                    lines.flush();
                    return;
                }
            };
            if quiet {
                return;
            }
            match &bar {
                Some(b) => {
                    b.set_message(running_message(&running));
                    if !line.starts_with("cached") && !line.starts_with("start") {
                        b.println(&line);
                    }
                }
                None if matches!(ev, EventKind::NodeCached { .. }) => lines.cached(&line),
                None => lines.line(line),
            }
        })
    }

    pub fn finish(&self) {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).flush();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Display {
    /// A run that stops on an error still shows the nodes it found cached.
    fn drop(&mut self) {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }
}

/// One line on stderr in one write: stderr is unbuffered, and `eprintln!` writes the line
/// and its newline separately (two system calls per node of a re-run, and lines of
/// parallel writers could interleave between them).
fn print_line(mut line: String) {
    line.push('\n');
    let _ = std::io::stderr().write_all(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_node_shows_its_time_and_its_own_progress() {
        let mut running = BTreeMap::new();
        running.insert(
            "infer".to_string(),
            Running {
                started: Instant::now() - Duration::from_secs(65),
                progress: Some((12, 40, "prompts".into(), "31.5 tok/s".into())),
                printed: None,
            },
        );
        running.insert(
            "prep".to_string(),
            Running {
                started: Instant::now(),
                progress: None,
                printed: None,
            },
        );
        assert_eq!(
            running_message(&running),
            "infer 1 min 5 s 12/40 prompts 31.5 tok/s | prep 0 s"
        );
        assert_eq!(
            progress_line(
                "sft",
                3,
                10,
                "steps",
                "2.10 steps/s",
                Some(Duration::from_secs(7))
            ),
            "progress sft: 3/10 steps (2.10 steps/s), 7 s"
        );
        assert_eq!(progress_line("x", 1, 2, "", "", None), "progress x: 1/2");
    }
}
