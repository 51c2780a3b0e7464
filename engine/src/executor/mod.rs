//! Executors: where a node that must execute runs. `local` runs it in this process (the
//! scheduler does that itself); every other executor submits batches of task files to a
//! cluster, whose jobs run `expflow worker` on them (see [`task`]), and reports job states.
//!
//! An executor never touches node keys or records: the coordinator writes a record only
//! after it has re-hashed the outputs a job reports (`run::remote`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::operator::Resources;

pub mod config;
pub mod slurm;
pub mod task;

pub use config::Settings;

/// The executors a pipeline, a node or `--executor` may name.
pub const NAMES: [&str; 2] = ["local", "slurm"];

/// One batch to submit: one job for one task, a job array for several.
#[derive(Clone, Debug)]
pub struct JobRequest {
    /// The job name: the run id (so one query finds all of a run's jobs).
    pub name: String,
    /// Task files (shared data mode) or task object paths on the remote (object data
    /// mode), in array-index order.
    pub tasks: Vec<String>,
    /// What each task needs (the same for every task of a batch).
    pub resources: Resources,
    /// Wall-clock limit in minutes, if the nodes declared one.
    pub time_min: Option<u32>,
    /// Where the job's script, task list and logs go (`runs/<id>/jobs`, `runs/<id>/logs`).
    pub jobs_dir: PathBuf,
    pub log_dir: PathBuf,
    /// A number for this batch, unique within the run (names its files).
    pub batch: u64,
    /// Set in the object-storage data mode: the job shares no file system with the
    /// submitting workspace.
    pub object: Option<ObjectJob>,
}

/// How a job of the object-storage data mode runs its worker.
#[derive(Clone, Debug)]
pub struct ObjectJob {
    /// Arguments for `expflow worker` before the task (the remote's locator, the job's
    /// workspace).
    pub worker_args: Vec<String>,
    /// The job's own workspace on the compute node, as the job's shell expands it.
    pub workspace: String,
}

/// A submitted task: its job id (`123`, or `123_4` for an array element) and its log.
#[derive(Clone, Debug, PartialEq)]
pub struct Submitted {
    pub job: String,
    pub log: PathBuf,
}

/// What the cluster says about a job.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    /// Queued, requeued, suspended: not finished.
    Pending,
    Running,
    Completed,
    /// Finished unsuccessfully (the node failed): `FAILED`, `TIMEOUT`, `OUT_OF_MEMORY`…
    Failed(String),
    /// Stopped for reasons that are not the node's fault (cancelled from outside,
    /// preempted, node failure): the task is submitted again.
    Interrupted(String),
}

impl JobState {
    pub fn is_finished(&self) -> bool {
        !matches!(self, JobState::Pending | JobState::Running)
    }
}

/// A batch scheduler the run submits to. Slurm implements it; Ray's Jobs REST API (one
/// `POST /api/jobs/` per task, `GET /api/jobs/` to poll, `POST …/stop`) and Kubernetes Jobs
/// (an indexed Job per batch, list by label, delete) fit the same three calls.
pub trait Executor: Send + Sync {
    fn name(&self) -> &'static str;
    /// The most tasks one [`JobRequest`] may hold (Slurm: `MaxArraySize`).
    fn max_batch(&self) -> usize;
    /// Submits a batch; one [`Submitted`] per task, in order.
    fn submit(&self, req: &JobRequest) -> Result<Vec<Submitted>>;
    /// The states of the run's jobs, in one query. Jobs the cluster does not report (yet)
    /// are absent.
    fn poll(&self, run_id: &str, jobs: &[String]) -> Result<HashMap<String, JobState>>;
    /// Cancels jobs (all of a run's when `jobs` is empty).
    fn cancel(&self, run_id: &str, jobs: &[String]) -> Result<()>;
}

/// Opens the executor `name` with the site settings; `None` for `local`.
pub fn open(name: &str, settings: &Settings) -> Result<Option<Arc<dyn Executor>>> {
    match name {
        "local" => Ok(None),
        "slurm" => Ok(Some(Arc::new(slurm::Slurm::new(settings.slurm.clone())?))),
        other => Err(EngineError::Usage(format!(
            "unknown executor `{other}`; the executors are: {}",
            NAMES.join(", ")
        ))),
    }
}
