//! The per-run event log: `runs/<run id>/events.jsonl`, one JSON object a line, written as
//! things happen (each line flushed, so a killed run leaves a readable log).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use expflow_cache::Digest;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// One line of the event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub t_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    RunStarted {
        run_id: String,
        pipeline: String,
        pipeline_path: String,
        pid: u32,
        jobs: usize,
        nodes: usize,
    },
    NodeStarted {
        node: String,
        key: Digest,
        attempt: u32,
    },
    NodeCached {
        node: String,
        key: Digest,
    },
    NodeProgress {
        node: String,
        done: u64,
        total: u64,
        /// What is counted (`steps`, `prompts`); empty for items.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        unit: String,
        /// A rate or a phase (`41 tok/s`, `epoch 2/3`).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        detail: String,
    },
    NodeExecuted {
        node: String,
        key: Digest,
        duration_ms: u64,
        outputs: BTreeMap<String, Digest>,
        memo_hits: u64,
        memo_misses: u64,
        /// Figures the operator noted about this execution (requests, retries, ...): they
        /// describe the run, not the data, so they live here and in the log, never in an
        /// output.
        #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
        notes: serde_json::Map<String, serde_json::Value>,
    },
    NodeFailed {
        node: String,
        key: Option<Digest>,
        attempt: u32,
        will_retry: bool,
        error: String,
    },
    NodeSkipped {
        node: String,
        reason: String,
    },
    RunFinished {
        status: String,
        executed: usize,
        cached: usize,
        failed: usize,
        skipped: usize,
        duration_ms: u64,
    },
}

impl EventKind {
    /// The node this event is about, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            EventKind::NodeStarted { node, .. }
            | EventKind::NodeCached { node, .. }
            | EventKind::NodeProgress { node, .. }
            | EventKind::NodeExecuted { node, .. }
            | EventKind::NodeFailed { node, .. }
            | EventKind::NodeSkipped { node, .. } => Some(node),
            EventKind::RunStarted { .. } | EventKind::RunFinished { .. } => None,
        }
    }
}

/// Writes one run's event log.
///
/// Every event is written as it happens, except `node_cached`: a no-op re-run of 100,000
/// nodes would spend much of its time in one `write` per cached node, so those lines are
/// gathered and written together with the next other event (a node starting, failing or
/// being skipped, the run finishing), when 64 KiB have gathered, or when the log is dropped.
/// The log stays readable line by line; a run killed outright may lack its last cached lines
/// (the records and the run index are the store's, not the log's).
pub struct EventLog {
    path: PathBuf,
    file: Mutex<(File, Vec<u8>)>,
}

/// Gathered `node_cached` lines are written at this size at the latest.
const CACHED_BUFFER: usize = 64 * 1024;

impl EventLog {
    pub fn create(path: &Path) -> Result<EventLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| EngineError::io(path, e))?;
        Ok(EventLog {
            path: path.to_path_buf(),
            file: Mutex::new((file, Vec::new())),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event. A failure to write the log is reported through tracing, not
    /// returned: the run's results are in the store either way.
    pub fn emit(&self, kind: EventKind) {
        let event = Event {
            t_ms: now_ms(),
            kind,
        };
        let gather = matches!(event.kind, EventKind::NodeCached { .. });
        let Ok(mut guard) = self.file.lock() else {
            return;
        };
        let (file, buf) = &mut *guard;
        let before = buf.len();
        if let Err(e) = serde_json::to_writer(&mut *buf, &event) {
            buf.truncate(before);
            tracing::warn!("cannot encode event: {e}");
            return;
        }
        buf.push(b'\n');
        if !gather || buf.len() >= CACHED_BUFFER {
            write_out(&self.path, file, buf);
        }
    }
}

fn write_out(path: &Path, file: &mut File, buf: &mut Vec<u8>) {
    if let Err(e) = file.write_all(buf) {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
    buf.clear();
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let path = &self.path;
        if let Ok((file, buf)) = self.file.get_mut()
            && !buf.is_empty()
        {
            write_out(path, file, buf);
        }
    }
}

/// Reads an event log; a torn last line (a killed run) is ignored.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| EngineError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(ev) => out.push(ev),
            Err(e) => tracing::debug!("skipping unreadable event line in {}: {e}", path.display()),
        }
    }
    Ok(out)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The last `n` lines of a text file ("" if it cannot be read).
pub fn tail_lines(path: &Path, n: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Formats a Unix time in milliseconds as UTC `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_795_000_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn events_round_trip_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let log = EventLog::create(&path).unwrap();
        log.emit(EventKind::NodeSkipped {
            node: "a".into(),
            reason: "upstream failed".into(),
        });
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"t_ms\":1,\"event\":\"node_st")
            .unwrap();
        let evs = read_events(&path).unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].kind.node(), Some("a"));
    }
}
