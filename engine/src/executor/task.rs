//! What a cluster job runs: a task file names one node execution (its key material and
//! where the workspace is); `expflow worker` executes it with the workspace's CAS (shared
//! file system) and writes a result file beside it. The worker never opens the record
//! database: the coordinator alone writes records, after checking the outputs itself.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use expflow_cache::{Cas, Digest, OutputRef, Record, RunInfo, StatKey, Store};
use serde::{Deserialize, Serialize};

use crate::compile::CNode;
use crate::context::CancelToken;
use crate::error::{EngineError, Result};
use crate::key::KeyMaterial;
use crate::node::{self, Facts, NodeEnv};
use crate::operator::{Registry, Resources};
use crate::shared::ObjectExchange;

/// One node execution, as a job reads it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Task {
    /// The workspace (`.expflow`), absolute.
    pub workspace: PathBuf,
    pub pipeline: String,
    /// The pipeline file (for the secrets error message).
    pub pipeline_file: PathBuf,
    pub run_id: String,
    pub node: String,
    pub key: Digest,
    pub material: KeyMaterial,
    pub gpus: u32,
    /// Names of the run's declared secrets (their values come from the job's environment).
    pub secrets: Vec<String>,
    pub attempt: u32,
    /// Where the worker writes its [`TaskResult`].
    pub result: PathBuf,
}

/// What a worker reports. The coordinator believes none of it before re-hashing outputs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TaskResult {
    /// Set when the node failed.
    pub error: Option<String>,
    pub outputs: BTreeMap<String, OutputRef>,
    pub duration_ms: u64,
    pub memo: (u64, u64),
    pub notes: serde_json::Map<String, serde_json::Value>,
    pub facts: Option<Facts>,
    /// Per-item memo entries the worker wrote (item key → blob).
    pub memos: Vec<(Digest, Digest)>,
    /// The node log's blob, in the object data mode (the coordinator cannot read the
    /// job's files there).
    #[serde(default)]
    pub log: Option<Digest>,
}

impl Task {
    pub fn write(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }

    pub fn read(path: &Path) -> Result<Task> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| EngineError::Usage(format!("{}: not a task file: {e}", path.display())))
    }
}

/// Reads a result file; `None` while there is none (or it is not complete yet).
pub fn read_result(path: &Path) -> Option<TaskResult> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(v).map_err(|e| EngineError::Other(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(|e| EngineError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path, e))
}

/// Runs the task in `path` and writes its result file. `Ok(true)` when the node succeeded.
pub fn run_task(path: &Path, registry: &Registry) -> Result<bool> {
    let task = Task::read(path)?;
    let result = match execute(&task, registry) {
        Ok(r) => r,
        Err(msg) => TaskResult {
            error: Some(msg),
            ..TaskResult::default()
        },
    };
    let ok = result.error.is_none();
    write_json(&task.result, &result)?;
    Ok(ok)
}

/// Runs the task at `task_obj` on the remote `x` (the object data mode) in the job's own
/// workspace `workspace`: downloads its inputs (each blob re-hashed), executes it, uploads
/// its outputs, log and items, and writes its result object. `Ok(true)` when the node
/// succeeded.
pub fn run_object_task(
    x: &dyn ObjectExchange,
    task_obj: &str,
    workspace: &Path,
    registry: &Registry,
) -> Result<bool> {
    let name = x.locator().name;
    let bytes = x.get_object(task_obj)?.ok_or_else(|| {
        EngineError::Usage(format!(
            "remote {name} has no task at {task_obj}; was the run's remote emptied?"
        ))
    })?;
    let mut task: Task = serde_json::from_slice(&bytes).map_err(|e| {
        EngineError::Usage(format!("remote {name}: {task_obj} is not a task file: {e}"))
    })?;
    std::fs::create_dir_all(workspace).map_err(|e| EngineError::io(workspace, e))?;
    task.workspace = std::path::absolute(workspace).map_err(|e| EngineError::io(workspace, e))?;
    let result = match exchange_and_execute(x, &task, registry) {
        Ok(r) => r,
        Err(msg) => TaskResult {
            error: Some(msg),
            ..TaskResult::default()
        },
    };
    let ok = result.error.is_none();
    let text = serde_json::to_vec_pretty(&result).map_err(|e| EngineError::Other(e.to_string()))?;
    x.put_object(&task.result.to_string_lossy(), text)?;
    Ok(ok)
}

fn exchange_and_execute(
    x: &dyn ObjectExchange,
    task: &Task,
    registry: &Registry,
) -> std::result::Result<TaskResult, String> {
    let cas = Cas::open(&task.workspace.join("cas")).map_err(|e| e.to_string())?;
    let m = &task.material;
    let inputs: Vec<(Digest, bool)> = m
        .inputs
        .iter()
        .map(|(port, d)| {
            let dir = m.input_types.get(port).is_some_and(|t| t.is_dir());
            (*d, dir)
        })
        .collect();
    let got = x.download(&cas, &inputs).map_err(|e| {
        format!(
            "cannot download the inputs from remote {}: {e}",
            x.locator().name
        )
    })?;
    tracing::info!(blobs = got.blobs, bytes = got.bytes, "inputs downloaded");
    let mut r = execute(task, registry)?;
    let log_path = task
        .workspace
        .join("runs")
        .join(&task.run_id)
        .join("logs")
        .join(format!("{}.log", crate::node::safe_name(&task.node)));
    if std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 0) {
        r.log = Some(cas.put_file(&log_path).map_err(|e| e.to_string())?.0);
    }
    let mut up: Vec<(Digest, bool)> = r.outputs.values().map(|o| (o.digest, o.dir)).collect();
    up.extend(r.log.map(|d| (d, false)));
    if let Some(f) = &r.facts {
        up.extend(f.items.iter().map(|d| (*d, false)));
    }
    up.extend(r.memos.iter().map(|(_, b)| (*b, false)));
    let sent = x.upload(&cas, &up).map_err(|e| {
        format!(
            "cannot upload the outputs to remote {}: {e}",
            x.locator().name
        )
    })?;
    tracing::info!(blobs = sent.blobs, bytes = sent.bytes, "outputs uploaded");
    Ok(r)
}

fn execute(task: &Task, registry: &Registry) -> std::result::Result<TaskResult, String> {
    let m = &task.material;
    let op = registry
        .get(&m.op)
        .ok_or_else(|| format!("this expflow has no operator `{}`", m.op))?
        .clone();
    if op.version() != m.op_version {
        return Err(format!(
            "operator `{}` is version {} here but {} where the run started; run the same expflow on the cluster",
            m.op,
            op.version(),
            m.op_version
        ));
    }
    // The key says which tools made the outputs: a node with other tools must not run.
    let env = op
        .environment()
        .map_err(|e| format!("cannot determine the environment of `{}`: {e}", m.op))?;
    if env != m.env {
        let diff: Vec<String> = m
            .env
            .iter()
            .filter(|(k, v)| env.get(*k) != Some(*v))
            .map(|(k, v)| {
                format!(
                    "{k}: `{v}` where the run started, `{}` here",
                    env.get(k).map_or("(none)", String::as_str)
                )
            })
            .collect();
        return Err(format!(
            "this job's environment differs from the submitting host's ({}); install the same tools on the compute nodes",
            diff.join("; ")
        ));
    }
    let node = CNode {
        name: task.node.clone(),
        base: task.node.clone(),
        determinism: op.determinism(&m.params),
        op,
        params: m.params.clone(),
        inputs: BTreeMap::new(),
        outputs: m.outputs.clone(),
        resources: Resources::default(),
        retries: 0,
        metrics: m.metrics.clone(),
        point: Default::default(),
        deps: Vec::new(),
        loc: Default::default(),
        executor: None,
        time_min: None,
    };
    let cas = Cas::open(&task.workspace.join("cas")).map_err(|e| e.to_string())?;
    let store = Arc::new(MemStore::default());
    let secrets = crate::secrets::Secrets::from_env(&task.secrets, &task.pipeline_file)
        .map_err(|e| e.to_string())?;
    let env = NodeEnv {
        cas,
        store: store.clone(),
        pipeline: task.pipeline.clone(),
        run_id: task.run_id.clone(),
        run_dir: task.workspace.join("runs").join(&task.run_id),
        scratch_dir: task.workspace.join("scratch").join(&task.run_id),
        resume_root: task.workspace.join("resume"),
        cancel: CancelToken::new(),
        secrets,
        memo_store: true,
    };
    // The cluster gave the job its GPUs in `CUDA_VISIBLE_DEVICES` (an `EXPFLOW_GPUS`
    // exported from the submitting shell says nothing about this machine).
    let gpus: Vec<u32> = std::env::var("CUDA_VISIBLE_DEVICES")
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .take(task.gpus as usize)
        .collect();
    if gpus.len() < task.gpus as usize {
        return Err(format!(
            "the job was given {} GPU(s) but the node needs {}; check the cluster's gres setting (slurm.gpu_flag)",
            gpus.len(),
            task.gpus
        ));
    }
    let done = node::execute(
        &env,
        &node,
        m,
        &task.key,
        &m.input_types,
        gpus,
        task.attempt,
        Arc::new(|_: &crate::context::Progress| {}),
        false,
    )?;
    let memos = store.memos.lock().map(|m| m.clone()).unwrap_or_default();
    Ok(TaskResult {
        error: None,
        outputs: done.outputs,
        duration_ms: done.duration_ms,
        memo: done.memo,
        notes: done.notes,
        facts: Some(done.facts),
        memos,
        log: None,
    })
}

/// The record store of a worker: in memory, gone with the job. It keeps the memo entries
/// the node writes so that the coordinator can store them after checking their blobs.
#[derive(Default)]
struct MemStore {
    stat: Mutex<HashMap<String, Digest>>,
    memo: Mutex<HashMap<Digest, Digest>>,
    memos: Mutex<Vec<(Digest, Digest)>>,
}

type CResult<T> = expflow_cache::Result<T>;

impl Store for MemStore {
    fn get_record(&self, _: &Digest) -> CResult<Option<Record>> {
        Ok(None)
    }
    fn put_record(&self, _: &Record) -> CResult<()> {
        Ok(())
    }
    fn remove_record(&self, _: &Digest) -> CResult<()> {
        Ok(())
    }
    fn records(&self) -> CResult<Vec<Record>> {
        Ok(Vec::new())
    }
    fn get_last(&self, _: &str, _: &str) -> CResult<Option<Digest>> {
        Ok(None)
    }
    fn set_last(&self, _: &str, _: &str, _: &Digest) -> CResult<()> {
        Ok(())
    }
    fn last_keys(&self, _: &str) -> CResult<Vec<(String, Digest)>> {
        Ok(Vec::new())
    }
    fn stat_get(&self, k: &StatKey) -> CResult<Option<Digest>> {
        let k = serde_json::to_string(k).unwrap_or_default();
        Ok(self.stat.lock().ok().and_then(|m| m.get(&k).copied()))
    }
    fn stat_put(&self, k: &StatKey, d: &Digest) -> CResult<()> {
        let k = serde_json::to_string(k).unwrap_or_default();
        if let Ok(mut m) = self.stat.lock() {
            m.insert(k, *d);
        }
        Ok(())
    }
    fn memo_get(&self, item_key: &Digest) -> CResult<Option<Digest>> {
        Ok(self.memo.lock().ok().and_then(|m| m.get(item_key).copied()))
    }
    fn memo_put(&self, item_key: &Digest, blob: &Digest) -> CResult<()> {
        if let Ok(mut m) = self.memo.lock() {
            m.insert(*item_key, *blob);
        }
        if let Ok(mut v) = self.memos.lock() {
            v.push((*item_key, *blob));
        }
        Ok(())
    }
    fn put_run(&self, _: &RunInfo) -> CResult<()> {
        Ok(())
    }
    fn runs(&self) -> CResult<Vec<RunInfo>> {
        Ok(Vec::new())
    }
    fn pin(&self, _: &str) -> CResult<()> {
        Ok(())
    }
    fn unpin(&self, _: &str) -> CResult<()> {
        Ok(())
    }
    fn pins(&self) -> CResult<Vec<String>> {
        Ok(Vec::new())
    }
    fn flush(&self) -> CResult<()> {
        Ok(())
    }
}
