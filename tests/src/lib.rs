//! Helpers for expflow's workspace integration tests: a project in a temporary directory,
//! the `expflow` binary, and reading which nodes executed from a run's event log.

pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

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
