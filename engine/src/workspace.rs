//! The workspace on disk (`.expflow/`): the lock that makes one run its only user, the CAS,
//! the record store, run directories.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use expflow_cache::{Cas, LazyStore, Store};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::events::{format_utc, now_ms};

/// Who holds a workspace: written to `holder.json` while the lock is held.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
    pub pipeline: String,
    pub started_ms: u64,
    /// The run id, for `run` (inspection commands read its event log meanwhile).
    pub run_id: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {}, `expflow {}`, pipeline {}, started {}",
            self.pid,
            self.command,
            if self.pipeline.is_empty() {
                "-"
            } else {
                &self.pipeline
            },
            format_utc(self.started_ms)
        )?;
        if let Some(r) = &self.run_id {
            write!(f, ", run {r}")?;
        }
        Ok(())
    }
}

/// An open, locked workspace.
pub struct Workspace {
    root: PathBuf,
    pub cas: Cas,
    pub store: Arc<dyn Store>,
    lock: Option<File>,
}

impl Workspace {
    /// The `.expflow` directory for a pipeline file: `--workspace` when given, else next to
    /// the pipeline file.
    pub fn locate(pipeline_file: &Path, explicit: Option<&Path>) -> PathBuf {
        match explicit {
            Some(p) => p.to_path_buf(),
            None => pipeline_file
                .parent()
                .map(|d| {
                    if d.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        d
                    }
                })
                .unwrap_or(Path::new("."))
                .join(".expflow"),
        }
    }

    /// Finds an existing `.expflow` in the current directory or its parents.
    pub fn discover(explicit: Option<&Path>) -> Result<PathBuf> {
        if let Some(p) = explicit {
            return std::path::absolute(p).map_err(|e| EngineError::io(p, e));
        }
        let cwd = std::env::current_dir().map_err(|e| EngineError::io(".", e))?;
        for dir in cwd.ancestors() {
            let candidate = dir.join(".expflow");
            if candidate.join("db").exists() || candidate.join("journal.jsonl").exists() {
                return Ok(candidate);
            }
        }
        Err(EngineError::Usage(format!(
            "no expflow workspace (.expflow/) in {} or its parents; run a pipeline first, or pass --workspace DIR",
            cwd.display()
        )))
    }

    /// Opens (creating) the workspace at `root` and takes its lock. A workspace held by
    /// another process gives [`EngineError::Held`] naming the holder.
    pub fn open(root: &Path, holder: Holder) -> Result<Workspace> {
        Workspace::open_for(root, holder, None)
    }

    /// [`Workspace::open`] for a run (or plan) of `pipeline`: its record store leaves the
    /// database closed while the pipeline's last-hits file answers ([`LazyStore`]).
    pub fn open_for(root: &Path, holder: Holder, pipeline: Option<&str>) -> Result<Workspace> {
        std::fs::create_dir_all(root).map_err(|e| EngineError::io(root, e))?;
        // Operators may change directory (a command runs in its scratch dir): hand out
        // absolute paths only.
        let root = &std::fs::canonicalize(root).map_err(|e| EngineError::io(root, e))?;
        let lock = take_lock(root, &holder)?;
        let store: Arc<dyn Store> = Arc::new(LazyStore::open(root, pipeline)?);
        // The CAS shares the stat cache: a blob is re-hashed before it is believed unless
        // its stat is unchanged since it was written or last hashed.
        let cas = Cas::open(&root.join("cas"))?.with_stat_cache(store.clone());
        clear_leftovers(root, &cas);
        Ok(Workspace {
            root: root.to_path_buf(),
            cas,
            store,
            lock: Some(lock),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Replaces the recorded holder, e.g. to name the pipeline once it has compiled when
    /// the workspace was opened while it compiled.
    pub fn set_holder(&self, holder: &Holder) -> Result<()> {
        write_holder(&self.root, holder)
    }

    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("runs").join(run_id)
    }

    pub fn scratch_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("scratch").join(run_id)
    }

    /// Resumable node state, one directory per node key; kept across failed and
    /// interrupted runs, removed when the node's outputs are stored.
    pub fn resume_root(&self) -> PathBuf {
        self.root.join("resume")
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            let _ = std::fs::remove_file(self.root.join("holder.json"));
            drop(lock);
        }
    }
}

/// Removes what a run that was killed left half-written: temp files of CAS writes and run
/// scratch space. Safe only while holding the lock, when no other process can be writing
/// them. A leftover that cannot be removed is only worth a warning.
fn clear_leftovers(root: &Path, cas: &Cas) {
    match cas.clean_tmp() {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            count = n,
            "removed temp files of an interrupted store write"
        ),
        Err(e) => tracing::warn!("{e}"),
    }
    let scratch = root.join("scratch");
    let Ok(entries) = std::fs::read_dir(&scratch) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed the scratch space of an interrupted run")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the scratch space of an interrupted run")
            }
        }
    }
}

fn take_lock(root: &Path, holder: &Holder) -> Result<File> {
    let path = root.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| EngineError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let who = read_holder(root)
                .map(|h| h.to_string())
                .unwrap_or_else(|| "holder unknown".into());
            return Err(EngineError::Held {
                workspace: root.to_path_buf(),
                holder: who,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(EngineError::io(&path, e)),
    }
    write_holder(root, holder)?;
    Ok(file)
}

fn write_holder(root: &Path, holder: &Holder) -> Result<()> {
    let text = serde_json::to_vec_pretty(holder).unwrap_or_default();
    let hp = root.join("holder.json");
    std::fs::write(&hp, text).map_err(|e| EngineError::io(&hp, e))
}

/// The current holder of a workspace, if one is recorded.
pub fn read_holder(root: &Path) -> Option<Holder> {
    let bytes = std::fs::read(root.join("holder.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A new run id: UTC time and a few bytes of the pid and clock, e.g. `20261122-043001-a1b2`.
pub fn new_run_id() -> String {
    let ms = now_ms();
    let t = format_utc(ms);
    let compact: String = t.chars().filter(|c| c.is_ascii_digit()).collect();
    let salt = expflow_cache::Digest::of_bytes(format!("{ms}-{}", std::process::id()).as_bytes());
    format!(
        "{}-{}-{}",
        &compact[..8],
        &compact[8..14],
        &salt.to_hex()[..4]
    )
}

/// Fills a holder for this process.
pub fn holder(command: &str, pipeline: &str, run_id: Option<String>) -> Holder {
    Holder {
        pid: std::process::id(),
        command: command.to_string(),
        pipeline: pipeline.to_string(),
        started_ms: now_ms(),
        run_id,
    }
}
