//! Site settings for executors: `~/.config/expflow/config.yaml` (the user's), then
//! `.expflow/config.yaml` (the workspace's, which wins field by field). Keys other than
//! `executor` and `slurm` belong to other parts of expflow and are left alone here.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{EngineError, Result};

/// The executor settings of both config files.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Settings {
    /// The executor of nodes that name none (default `local`).
    #[serde(default)]
    pub executor: Option<String>,
    #[serde(default)]
    pub slurm: SlurmSettings,
}

/// `slurm:` in a config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmSettings {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// How GPUs are asked for: `gres` (`--gres=gpu:N`, every Slurm) or `gpus` (`--gpus=N`).
    pub gpu_flag: GpuFlag,
    /// More `sbatch` arguments, e.g. `["--constraint=a100"]`.
    pub extra_args: Vec<String>,
    /// Shell lines the job runs before the worker (`module load cuda`, `source venv/…`).
    pub setup: Vec<String>,
    /// Seconds between two status queries of the run's jobs.
    pub poll_interval_s: f64,
    /// At most this many elements of one job array run at once (`--array=…%N`).
    pub array_parallelism: Option<u32>,
    /// The largest array to submit (default: `MaxArraySize` from `scontrol show config`).
    pub max_array_size: Option<usize>,
    /// Let Slurm requeue preempted jobs (`--requeue`): commits are idempotent.
    pub requeue: bool,
    /// How many times a task whose job was cancelled from outside, preempted or lost is
    /// submitted again (not counted against the node's `retries`).
    pub resubmit: u32,
    /// The `expflow` binary jobs run (default: this one; it must be visible on the nodes).
    pub worker: Option<String>,
    /// Run Slurm's commands on this login host over ssh (`user@login.cluster`).
    pub ssh: Option<String>,
    /// Options for ssh, e.g. `["-o", "ControlMaster=auto", "-o", "ControlPersist=10m"]`.
    pub ssh_options: Vec<String>,
    /// How job states are read: `auto` (sacct, squeue when accounting is off), `sacct`,
    /// `squeue`.
    pub accounting: Accounting,
    /// Seconds to wait for a finished job's result file to become visible (shared file
    /// systems cache attributes).
    pub result_grace_s: f64,
    /// How jobs reach the data: `shared` (the workspace is on a file system the compute
    /// nodes share) or `object` (they fetch inputs from and push outputs to the run's
    /// remote cache; `--data` on the command line wins).
    pub data: DataMode,
    /// In the `object` data mode: the job's own workspace on the compute node (the job's
    /// shell expands it, so `$TMPDIR` or `/scratch/$USER/expflow` work). Default
    /// `${TMPDIR:-/tmp}/expflow-worker`.
    pub worker_workspace: Option<String>,
}

impl Default for SlurmSettings {
    fn default() -> Self {
        SlurmSettings {
            partition: None,
            account: None,
            qos: None,
            gpu_flag: GpuFlag::Gres,
            extra_args: Vec::new(),
            setup: Vec::new(),
            poll_interval_s: 30.0,
            array_parallelism: None,
            max_array_size: None,
            requeue: true,
            resubmit: 3,
            worker: None,
            ssh: None,
            ssh_options: Vec::new(),
            accounting: Accounting::Auto,
            result_grace_s: 60.0,
            data: DataMode::Shared,
            worker_workspace: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuFlag {
    Gres,
    Gpus,
}

/// How a cluster job reaches its inputs and where it leaves its outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataMode {
    /// The workspace is on a file system the compute nodes share.
    Shared,
    /// Through the run's remote cache (object storage); no shared file system.
    Object,
}

impl DataMode {
    /// `--data NAME`.
    pub fn parse(name: &str) -> Result<DataMode> {
        match name {
            "shared" => Ok(DataMode::Shared),
            "object" => Ok(DataMode::Object),
            other => Err(EngineError::Usage(format!(
                "--data {other}: the data modes are `shared` (a file system the compute nodes share) and `object` (through the remote cache)"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accounting {
    Auto,
    Sacct,
    Squeue,
}

/// The user's config file: `$XDG_CONFIG_HOME/expflow/config.yaml`, else
/// `~/.config/expflow/config.yaml`.
pub fn user_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("expflow").join("config.yaml"))
}

/// Reads the user's and the workspace's (`WORKSPACE/config.yaml`) settings.
pub fn load(workspace: &Path) -> Result<Settings> {
    let mut merged = Value::Object(Default::default());
    for file in user_file()
        .into_iter()
        .chain([workspace.join("config.yaml")])
    {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let node = crate::yaml::parse(&text).map_err(|e| {
            EngineError::Usage(format!(
                "{}:{}:{}: invalid YAML: {}; fix the config file",
                file.display(),
                e.loc.line,
                e.loc.column,
                e.message
            ))
        })?;
        let v = node.to_json();
        if !v.is_null() {
            merge(&mut merged, v);
        }
        // Each file on its own must make sense, so that an error names the right one.
        parse(&merged).map_err(|e| EngineError::Usage(format!("{}: {e}", file.display())))?;
    }
    parse(&merged).map_err(EngineError::Usage)
}

fn parse(v: &Value) -> std::result::Result<Settings, String> {
    let mut s: Settings = serde_json::from_value(v.clone()).map_err(|e| {
        format!("invalid executor settings: {e} (see docs/distributed.md for the keys)")
    })?;
    if let Some(name) = &s.executor
        && !super::NAMES.contains(&name.as_str())
    {
        return Err(format!(
            "unknown executor `{name}`; the executors are: {}",
            super::NAMES.join(", ")
        ));
    }
    if s.slurm.poll_interval_s.is_nan() || s.slurm.poll_interval_s <= 0.0 {
        return Err("slurm.poll_interval_s must be a positive number of seconds".into());
    }
    s.slurm.result_grace_s = s.slurm.result_grace_s.max(0.0);
    if let Some(w) = &s.slurm.worker_workspace
        && (w.is_empty() || w.contains(['"', '`', '\n']))
    {
        return Err(format!(
            "slurm.worker_workspace {w:?}: write a directory path (`$VAR`s are expanded by the job's shell; quotes and backquotes are not allowed)"
        ));
    }
    Ok(s)
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_file_wins_field_by_field_and_typos_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join("expflow")).unwrap();
        std::fs::write(
            home.join("expflow/config.yaml"),
            "slurm:\n  partition: gpu\n  account: lab\n",
        )
        .unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(
            ws.join("config.yaml"),
            "executor: slurm\nremotes: {x: 1}\nslurm:\n  partition: debug\n  gpu_flag: gpus\n",
        )
        .unwrap();
        // SAFETY: this test module is the only one that reads XDG_CONFIG_HOME.
        unsafe { std::env::set_var("XDG_CONFIG_HOME", &home) };
        let s = load(&ws).unwrap();
        assert_eq!(s.executor.as_deref(), Some("slurm"));
        assert_eq!(s.slurm.partition.as_deref(), Some("debug"));
        assert_eq!(s.slurm.account.as_deref(), Some("lab"));
        assert_eq!(s.slurm.gpu_flag, GpuFlag::Gpus);
        std::fs::write(ws.join("config.yaml"), "slurm:\n  partiton: debug\n").unwrap();
        let e = load(&ws).unwrap_err().to_string();
        assert!(e.contains("partiton") && e.contains("config.yaml"), "{e}");
    }
}
