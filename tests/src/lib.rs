//! Helpers for expflow's workspace integration tests: a project in a temporary directory,
//! the `expflow` binary, and reading which nodes executed from a run's event log; and
//! [`skip`], how every test of the workspace skips for a missing dependency.
//!
//! Dependencies: none from expflow at build time; the tests drive the `expflow` binary as a
//! user would. Nothing depends on this crate.

pub mod browser;
pub mod s3;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub mod skip;

/// The `expflow` binary built by `cargo test --workspace` (the cli package has integration
/// tests, so cargo builds its binary next to this test executable).
pub fn expflow_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let bin = dir.join("expflow");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p expflow` (or run `cargo test --workspace`)",
        bin.display()
    );
    bin
}

/// A pipeline project in a temporary directory.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Default for Project {
    fn default() -> Self {
        Self::new()
    }
}

impl Project {
    pub fn new() -> Project {
        Project {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(p, text).expect("write");
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).expect("read")
    }

    /// Runs `expflow ARGS` in the project directory.
    pub fn expflow(&self, args: &[&str]) -> Output {
        self.expflow_with_env(args, &[])
    }

    /// Runs `expflow ARGS` in the project directory with `envs` added to its environment.
    pub fn expflow_with_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        Command::new(expflow_bin())
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("EXPFLOW_LOG")
            .envs(envs.iter().copied())
            .output()
            .expect("run expflow")
    }

    /// `expflow run PIPELINE --json EXTRA...`; returns the run's summary and its events.
    pub fn run(&self, pipeline: &str, extra: &[&str]) -> RunResult {
        self.run_with_env(pipeline, extra, &[])
    }

    /// [`Project::run`] with `envs` added to the environment.
    pub fn run_with_env(&self, pipeline: &str, extra: &[&str], envs: &[(&str, &str)]) -> RunResult {
        let mut args = vec!["run", pipeline, "--json"];
        args.extend_from_slice(extra);
        let out = self.expflow_with_env(&args, envs);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let summary: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        let events = match summary["run_id"].as_str() {
            Some(id) => read_events(&self.path(&format!(".expflow/runs/{id}/events.jsonl"))),
            None => Vec::new(),
        };
        RunResult {
            code: out.status.code().unwrap_or(-1),
            summary,
            events,
            stdout,
            stderr,
        }
    }
}

pub struct RunResult {
    pub code: i32,
    pub summary: Value,
    pub events: Vec<Value>,
    pub stdout: String,
    pub stderr: String,
}

impl RunResult {
    /// Names of nodes whose event log says `event` (e.g. `node_executed`), sorted.
    pub fn nodes(&self, event: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .events
            .iter()
            .filter(|e| e["event"] == event)
            .filter_map(|e| e["node"].as_str().map(str::to_owned))
            .collect();
        v.sort();
        v
    }

    pub fn executed(&self) -> Vec<String> {
        self.nodes("node_executed")
    }

    pub fn cached(&self) -> Vec<String> {
        self.nodes("node_cached")
    }

    /// Panics with the run's stderr unless it exited with `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code; stderr:\n{}", self.stderr);
        self
    }
}

pub fn read_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Strings for sorted name lists in assertions.
pub fn names(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// All blob files under a workspace's CAS.
pub fn blobs(ws: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(ws.join("cas")) else {
        return out;
    };
    for d in dirs.flatten() {
        if d.file_name() == "tmp" {
            continue;
        }
        if let Ok(files) = std::fs::read_dir(d.path()) {
            out.extend(files.flatten().map(|f| f.path()));
        }
    }
    out.sort();
    out
}

/// What a workspace's journal (`journal.jsonl`) holds, read independently of expflow.
#[derive(Debug, Default)]
pub struct JournalCheck {
    /// Complete lines that parsed.
    pub lines: usize,
    /// Whether the file ends in an unterminated fragment (a write torn by a kill), which
    /// the next open terminates and skips.
    pub torn_tail: bool,
    /// The records still in force (later `forget` entries applied), by key.
    pub records: std::collections::BTreeMap<String, Value>,
}

/// Reads `ws/journal.jsonl`: every newline-terminated line must be a JSON object with a
/// `type`; only a last, unterminated fragment may be unreadable.
pub fn check_journal(ws: &Path) -> Result<JournalCheck, String> {
    let path = ws.join("journal.jsonl");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(JournalCheck::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut out = JournalCheck::default();
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    out.torn_tail = complete < bytes.len();
    for (i, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: Value = serde_json::from_slice(line).map_err(|e| {
            format!(
                "{} line {}: {e}: {}",
                path.display(),
                i + 1,
                String::from_utf8_lossy(line)
            )
        })?;
        match v["type"].as_str() {
            Some("record") => {
                let key = v["record"]["key"].as_str().unwrap_or_default().to_string();
                out.records.insert(key, v["record"].clone());
            }
            Some("forget") => {
                out.records.remove(v["key"].as_str().unwrap_or_default());
            }
            Some(_) => {}
            None => {
                return Err(format!(
                    "{} line {}: no `type`: {}",
                    path.display(),
                    i + 1,
                    String::from_utf8_lossy(line)
                ));
            }
        }
        out.lines += 1;
    }
    Ok(out)
}

/// The path of blob `hex` in the CAS of workspace `ws`.
pub fn blob_path(ws: &Path, hex: &str) -> PathBuf {
    ws.join("cas").join(&hex[..2.min(hex.len())]).join(hex)
}

/// Every blob the journal's records name (outputs, the files of directory outputs, logs,
/// items) that is not in the CAS, as "node: what digest". Read without expflow, so it
/// checks `verify` rather than trusting it.
pub fn records_missing_blobs(ws: &Path, journal: &JournalCheck) -> Vec<String> {
    let mut missing = Vec::new();
    for rec in journal.records.values() {
        let node = rec["node"].as_str().unwrap_or("?");
        let mut need: Vec<(String, String, bool)> = Vec::new();
        if let Some(outs) = rec["outputs"].as_object() {
            for (port, o) in outs {
                let d = o["digest"].as_str().unwrap_or_default().to_string();
                need.push((format!("output {port}"), d, o["dir"] == true));
            }
        }
        if let Some(log) = rec["log"].as_str() {
            need.push(("log".into(), log.to_string(), false));
        }
        for (i, item) in rec["items"].as_array().into_iter().flatten().enumerate() {
            let d = item.as_str().unwrap_or_default().to_string();
            need.push((format!("item {i}"), d, false));
        }
        for (what, d, dir) in need {
            let path = blob_path(ws, &d);
            let Ok(bytes) = std::fs::read(&path) else {
                missing.push(format!("{node}: {what} {d}"));
                continue;
            };
            if !dir {
                continue;
            }
            // A manifest: `MODE DIGEST SIZE PATH` per line.
            for line in String::from_utf8_lossy(&bytes).lines() {
                let mut f = line.split(' ');
                let (_, Some(fd), _) = (f.next(), f.next(), f.next()) else {
                    missing.push(format!("{node}: {what}: bad manifest line {line:?}"));
                    continue;
                };
                if !blob_path(ws, fd).is_file() {
                    missing.push(format!("{node}: {what} file {line}"));
                }
            }
        }
    }
    missing
}

/// Every file under `dir` (hidden ones included) as relative path → bytes.
pub fn tree_bytes(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// Makes `cmd` start a session of its own (its pid is the session id), so that every
/// process it starts can be found with [`session_members`].
pub fn in_new_session(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches nothing of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Live (non-zombie) processes of session `sid`, with their command names.
pub fn session_members(sid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp session ...`
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if f.len() > 3 && f[0] != "Z" && f[3].parse::<i32>().ok() == Some(sid) {
            out.push((pid, stat[open + 1..close].to_string()));
        }
    }
    out
}
