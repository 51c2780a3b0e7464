//! The scheduler: walks the graph, decides cached nodes on the spot, and hands nodes that
//! must execute to blocking workers within `--jobs` and the declared resources.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use expflow_cache::{Digest, Hit, OutputRef, RunInfo};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::compile::{Pipeline, Source};
use crate::context::{CancelToken, ProgressFn};
use crate::error::{EngineError, Result};
use crate::events::{EventKind, EventLog, now_ms};
use crate::key::{KEY_SCHEMA, KeyMaterial, KeyParts};
use crate::materialize;
use crate::node::{self, NodeEnv, ingest_input, intact_hit};
use crate::operator::PortType;
use crate::workspace::Workspace;

mod remote;
mod sched;
mod shared;

/// Called with every event as it happens (for progress displays).
pub type Observer = Arc<dyn Fn(&EventKind) + Send + Sync>;

/// How to run.
#[derive(Clone)]
pub struct RunOptions {
    /// At most this many nodes execute at once.
    pub jobs: usize,
    /// Keep running independent nodes after a failure.
    pub keep_going: bool,
    /// Run only these nodes (base or instance names) and what they need.
    pub targets: Vec<String>,
    /// CPU budget (sum of running nodes' `cpus`).
    pub cpus: u32,
    /// GPU ordinals that may be handed out.
    pub gpus: Vec<u32>,
    /// Memory budget in GB (sum of running nodes' `mem_gb`).
    pub mem_gb: f64,
    pub observer: Option<Observer>,
    /// Base delay of the retry backoff (doubles per attempt, at most 30 s).
    pub retry_base: Duration,
    /// Replace what is at an `outputs:` destination even if expflow did not write it.
    pub force_outputs: bool,
    /// A shared cache to look records up in on a local miss (`run --remote NAME`).
    pub shared: Option<Arc<dyn crate::shared::SharedCache>>,
    /// Execute nothing (`pull`): download every node the shared cache has, skip the nodes
    /// neither cache has, and record no run.
    pub fetch_only: bool,
    /// `--executor`: where nodes that do not name an executor run.
    pub executor: Option<String>,
    /// Executor site settings (config files).
    pub executors: crate::executor::Settings,
}

impl Default for RunOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        RunOptions {
            jobs: cores,
            keep_going: false,
            targets: Vec::new(),
            cpus: cores as u32,
            gpus: detect_gpus(),
            mem_gb: total_memory_gb(),
            observer: None,
            retry_base: Duration::from_millis(500),
            force_outputs: false,
            shared: None,
            fetch_only: false,
            executor: None,
            executors: crate::executor::Settings::default(),
        }
    }
}

/// GPUs from `EXPFLOW_GPUS` or `CUDA_VISIBLE_DEVICES` (comma-separated ordinals).
pub fn detect_gpus() -> Vec<u32> {
    let var = std::env::var("EXPFLOW_GPUS").or_else(|_| std::env::var("CUDA_VISIBLE_DEVICES"));
    var.map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Total memory from /proc/meminfo (GB), or a large number if unknown.
pub fn total_memory_gb() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(1.0e6, |kb| kb / 1024.0 / 1024.0)
}

/// The outcome of a run, as `run --json` prints it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub status: String,
    pub executed: Vec<String>,
    pub cached: Vec<String>,
    pub failed: Vec<String>,
    pub skipped: Vec<String>,
    /// Cached nodes whose records came from the shared cache (`--remote`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<String>,
    /// Of those, the nodes whose blobs were downloaded (the rest were not needed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fetched: Vec<String>,
    /// Node → error message, for failed nodes.
    #[serde(skip)]
    pub errors: Vec<(String, String)>,
    #[serde(skip)]
    pub duration_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Waiting,
    Runnable,
    Running,
    Parked,
    Done,
    Failed,
    Skipped,
}

struct Finished {
    idx: usize,
    attempt: u32,
    result: std::result::Result<node::Executed, String>,
}

/// Each node's key at its last run (by name), and the intact hits of those keys.
pub(crate) type LastHits = (HashMap<String, Digest>, HashMap<Digest, Hit>);

/// The last keys of the `selected` nodes that have one.
pub(crate) fn last_keys_of(
    last: &HashMap<String, Digest>,
    p: &Pipeline,
    selected: &[usize],
) -> Vec<Digest> {
    selected
        .iter()
        .filter_map(|&i| last.get(p.nodes[i].name.as_str()).copied())
        .collect()
}

/// What a run of a pipeline looks up before its walk, done ahead of time: the key each node
/// had last time, and the intact hits of those keys ([`check_hits`]). The command line
/// gathers it while the pipeline file compiles, from the pipeline's name as the file states
/// it; a run uses it only for a pipeline of that name. It stays true while the workspace
/// lock that was held to gather it is held: nothing else writes the records meanwhile.
pub struct Prefetch {
    pipeline: String,
    last: HashMap<String, Digest>,
    checked: HashMap<Digest, Hit>,
}

impl Prefetch {
    pub fn gather(ws: &Workspace, pipeline: &str) -> Result<Prefetch> {
        let last: HashMap<String, Digest> = ws.store.last_keys(pipeline)?.into_iter().collect();
        // One thread fewer than the cores: the compile runs beside it on another.
        let keys = last.values().copied().collect();
        let checked = check_hits(
            &ws.cas,
            ws.store.as_ref(),
            keys,
            threads().saturating_sub(1),
        );
        Ok(Prefetch {
            pipeline: pipeline.to_string(),
            last,
            checked,
        })
    }

    /// The last keys and their checked hits, when gathered for pipeline `name`.
    pub(crate) fn for_pipeline(self, name: &str) -> Option<LastHits> {
        (self.pipeline == name).then_some((self.last, self.checked))
    }
}

/// Runs a compiled pipeline in an open workspace.
pub async fn run(
    ws: &Workspace,
    p: &Pipeline,
    run_id: &str,
    opts: &RunOptions,
    cancel: CancelToken,
) -> Result<RunSummary> {
    run_prefetched(ws, p, run_id, opts, cancel, None).await
}

/// [`run`], with what [`Prefetch::gather`] found in this workspace since its lock was
/// taken; a prefetch for another pipeline name is ignored.
pub async fn run_prefetched(
    ws: &Workspace,
    p: &Pipeline,
    run_id: &str,
    opts: &RunOptions,
    cancel: CancelToken,
    prefetch: Option<Prefetch>,
) -> Result<RunSummary> {
    let started = Instant::now();
    let selected = select(p, &opts.targets)?;
    // Before anything executes: a destination that is not expflow's stops the run here.
    // A pull materialises nothing.
    if !opts.fetch_only {
        materialize::check_destinations(ws, p, &selected, opts.force_outputs)?;
    }
    // Before anything is written or executed: every declared secret must be set.
    let declared: &[String] = if opts.fetch_only { &[] } else { &p.secrets };
    let secrets = crate::secrets::Secrets::from_env(declared, &p.file)?;
    let events = Arc::new(EventLog::create(&ws.run_dir(run_id).join("events.jsonl"))?);
    let emit = {
        let events = events.clone();
        let observer = opts.observer.clone();
        move |kind: EventKind| {
            if let Some(o) = &observer {
                o(&kind);
            }
            events.emit(kind);
        }
    };
    emit(EventKind::RunStarted {
        run_id: run_id.to_string(),
        pipeline: p.name.clone(),
        pipeline_path: p.file.display().to_string(),
        pid: std::process::id(),
        jobs: opts.jobs,
        nodes: selected.len(),
    });
    let env = NodeEnv {
        cas: ws.cas.clone(),
        store: ws.store.clone(),
        pipeline: p.name.clone(),
        run_id: run_id.to_string(),
        run_dir: ws.run_dir(run_id),
        scratch_dir: ws.scratch_dir(run_id),
        resume_root: ws.resume_root(),
        memo_store: true,
        cancel: cancel.clone(),
        secrets,
    };
    let inputs = ingest_inputs(&env, p, &selected).await?;
    let (last, checked) = match prefetch.and_then(|f| f.for_pipeline(&p.name)) {
        Some(found) => found,
        None => {
            let last: HashMap<String, Digest> = ws.store.last_keys(&p.name)?.into_iter().collect();
            let keys = last_keys_of(&last, p, &selected);
            let (cas, store) = (env.cas.clone(), env.store.clone());
            let checked = tokio::task::spawn_blocking(move || {
                check_hits(&cas, store.as_ref(), keys, threads())
            })
            .await
            .map_err(|e| EngineError::Other(format!("checking the cache panicked: {e}")))?;
            (last, checked)
        }
    };
    let mut s = Sched {
        p,
        env,
        opts,
        emit: &emit,
        events: events.clone(),
        inputs,
        state: vec![State::Skipped; p.nodes.len()],
        waiting_on: vec![0; p.nodes.len()],
        outputs: vec![None; p.nodes.len()],
        material: vec![None; p.nodes.len()],
        keys: vec![None; p.nodes.len()],
        last,
        checked,
        runnable: BTreeSet::new(),
        inflight: HashMap::new(),
        parked: HashMap::new(),
        env_cache: HashMap::new(),
        used_cpus: 0,
        used_mem: 0.0,
        free_gpus: opts.gpus.clone(),
        held_gpus: HashMap::new(),
        running: 0,
        stopping: false,
        summary: RunSummary {
            run_id: run_id.to_string(),
            ..RunSummary::default()
        },
        children: vec![Vec::new(); p.nodes.len()],
        remote_hits: HashMap::new(),
        remote: remote::Remote::new(ws, p, &selected, opts, run_id)?,
    };
    for &i in &selected {
        s.state[i] = State::Waiting;
        s.waiting_on[i] = p.nodes[i].deps.len();
        for &d in &p.nodes[i].deps {
            s.children[d].push(i);
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Finished>();
    let ready: Vec<usize> = selected
        .iter()
        .copied()
        .filter(|i| s.waiting_on[*i] == 0)
        .collect();
    for i in ready {
        s.decide(i)?;
    }
    loop {
        if cancel.is_cancelled() && !s.stopping {
            s.stopping = true;
        }
        if !s.stopping {
            s.launch(&tx);
        }
        s.remote_step(&tx)?;
        // (A cluster node's result may have made others runnable just now.)
        if s.running == 0 && (s.stopping || s.runnable.is_empty()) {
            break;
        }
        tokio::select! {
            msg = rx.recv() => {
                if let Some(f) = msg {
                    s.finish(f, &tx)?;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    // Whatever never ran is skipped.
    for &i in &selected {
        if matches!(s.state[i], State::Waiting | State::Runnable | State::Parked) {
            s.state[i] = State::Skipped;
            let reason = if cancel.is_cancelled() {
                "cancelled"
            } else {
                "not run after a failure"
            };
            (s.emit)(EventKind::NodeSkipped {
                node: p.nodes[i].name.clone(),
                reason: reason.into(),
            });
            s.summary.skipped.push(p.nodes[i].name.clone());
        }
    }
    if !cancel.is_cancelled() && s.summary.failed.is_empty() {
        s.fetch_needed(&selected);
    }
    let status = if cancel.is_cancelled() {
        "cancelled"
    } else if s.summary.failed.is_empty() {
        "ok"
    } else {
        "failed"
    };
    s.summary.status = status.into();
    s.summary.duration_ms = started.elapsed().as_millis() as u64;
    let nodes: Vec<(String, Digest)> = selected
        .iter()
        .filter(|i| s.state[**i] == State::Done)
        .filter_map(|i| s.keys[*i].map(|k| (p.nodes[*i].name.clone(), k)))
        .collect();
    if opts.fetch_only {
        // A pull records no run.
        (s.emit)(EventKind::RunFinished {
            status: status.into(),
            executed: 0,
            cached: s.summary.cached.len(),
            failed: s.summary.failed.len(),
            skipped: s.summary.skipped.len(),
            duration_ms: s.summary.duration_ms,
        });
        let _ = std::fs::remove_dir_all(ws.run_dir(run_id));
        let _ = std::fs::remove_dir_all(ws.scratch_dir(run_id));
        return Ok(s.summary);
    }
    ws.store.put_run(&RunInfo {
        run_id: run_id.to_string(),
        pipeline: p.name.clone(),
        pipeline_path: p.file.display().to_string(),
        started_ms: now_ms().saturating_sub(s.summary.duration_ms),
        finished_ms: now_ms(),
        status: status.into(),
        nodes,
        params: p.params.clone(),
        profiles: p.profiles.clone(),
        inputs: p
            .input_overrides
            .iter()
            .map(|(k, v)| (k.clone(), v.display().to_string()))
            .collect(),
    })?;
    if status == "ok" {
        materialize::materialize(ws, p, &s.outputs, run_id, opts.force_outputs)?;
    }
    ws.store.keep_last_hits(&p.name);
    let _ = std::fs::remove_dir_all(ws.scratch_dir(run_id));
    (s.emit)(EventKind::RunFinished {
        status: status.into(),
        executed: s.summary.executed.len(),
        cached: s.summary.cached.len(),
        failed: s.summary.failed.len(),
        skipped: s.summary.skipped.len(),
        duration_ms: s.summary.duration_ms,
    });
    Ok(s.summary)
}

/// Indices of the nodes to run: all, or the targets and their ancestors.
pub fn select(p: &Pipeline, targets: &[String]) -> Result<Vec<usize>> {
    if targets.is_empty() {
        return Ok((0..p.nodes.len()).collect());
    }
    let mut picked = Vec::new();
    for t in targets {
        let found: Vec<usize> = p
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.name == *t || n.base == *t)
            .map(|(i, _)| i)
            .collect();
        if found.is_empty() {
            let names: Vec<&str> = p.nodes.iter().map(|n| n.base.as_str()).collect();
            let hint = crate::diag::closest(t, names.iter().copied())
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            return Err(EngineError::Usage(format!(
                "--target {t}: no such node in pipeline {}{hint}",
                p.name
            )));
        }
        picked.extend(found);
    }
    Ok(p.closure(&picked))
}

/// Hashes and stores the external inputs that the selected nodes read.
async fn ingest_inputs(
    env: &NodeEnv,
    p: &Pipeline,
    selected: &[usize],
) -> Result<HashMap<String, (Digest, PortType)>> {
    let mut names = BTreeSet::new();
    for &i in selected {
        for src in p.nodes[i].inputs.values() {
            if let Source::Input(n) = src {
                names.insert(n.clone());
            }
        }
    }
    let mut tasks = Vec::new();
    for name in names {
        let path = p.inputs[&name].clone();
        let (cas, store) = (env.cas.clone(), env.store.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            ingest_input(&cas, store.as_ref(), &path, true).map(|d| (name, d))
        }));
    }
    let mut out = HashMap::new();
    for t in tasks {
        let (name, d) = t
            .await
            .map_err(|e| EngineError::Other(format!("input hashing panicked: {e}")))??;
        out.insert(name, d);
    }
    Ok(out)
}

/// How many threads [`check_hits`] uses when it has the machine to itself.
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
}

/// The hits among `keys` whose blobs are intact, looked up and checked on `threads` threads.
///
/// A no-op re-run finds each node's key only once its inputs' hits are known, one node after
/// another; but the key a node had last time is known at the start, and it is usually the
/// key it has now. Looking those up and checking their blobs' stats in parallel, before the
/// walk, leaves the walk computing keys. A key that has no hit, or whose blobs fail the
/// check, is left out: the walk looks it up again and reports what it finds.
pub(crate) fn check_hits(
    cas: &expflow_cache::Cas,
    store: &dyn expflow_cache::Store,
    mut keys: Vec<Digest>,
    threads: usize,
) -> HashMap<Digest, Hit> {
    keys.sort_unstable();
    keys.dedup();
    let threads = threads.max(1);
    if keys.is_empty() {
        return HashMap::new();
    }
    let chunk = keys.len().div_ceil(threads);
    let check = |keys: &[Digest]| {
        keys.iter()
            .filter_map(|key| Some((*key, intact_hit(cas, store, key).ok()??)))
            .collect::<Vec<_>>()
    };
    // This thread checks the first share itself: it is running already, where a new
    // thread may wait for its CPU to wake.
    let mut chunks = keys.chunks(chunk);
    let first = chunks.next().unwrap_or_default();
    std::thread::scope(|scope| {
        let parts: Vec<_> = chunks
            .map(|keys| scope.spawn(move || check(keys)))
            .collect();
        let mut found: HashMap<Digest, Hit> = check(first).into_iter().collect();
        for part in parts {
            found.extend(part.join().unwrap_or_default());
        }
        found
    })
}

struct Sched<'a, E: Fn(EventKind)> {
    p: &'a Pipeline,
    env: NodeEnv,
    opts: &'a RunOptions,
    emit: &'a E,
    /// The run's event log, shared with the nodes' progress reports.
    events: Arc<EventLog>,
    inputs: HashMap<String, (Digest, PortType)>,
    state: Vec<State>,
    waiting_on: Vec<usize>,
    outputs: Vec<Option<BTreeMap<String, OutputRef>>>,
    material: Vec<Option<KeyMaterial>>,
    /// The key of each node's material, computed once.
    keys: Vec<Option<Digest>>,
    /// The last key of every node of the pipeline as the run started (one scan of the store
    /// instead of a lookup per node).
    last: HashMap<String, Digest>,
    /// The hits of those last keys whose blobs were found intact as the run started (see
    /// [`check_hits`]); each is taken when its node's key turns out the same.
    checked: HashMap<Digest, Hit>,
    runnable: BTreeSet<usize>,
    inflight: HashMap<Digest, usize>,
    parked: HashMap<Digest, Vec<usize>>,
    env_cache: HashMap<&'static str, BTreeMap<String, String>>,
    used_cpus: u32,
    used_mem: f64,
    free_gpus: Vec<u32>,
    held_gpus: HashMap<usize, Vec<u32>>,
    running: usize,
    stopping: bool,
    summary: RunSummary,
    children: Vec<Vec<usize>>,
    /// Nodes found in the shared cache whose blobs are not downloaded yet.
    remote_hits: HashMap<usize, expflow_cache::Record>,
    remote: remote::Remote,
}

/// The seed in the key of a seeded node.
pub(crate) fn seed_of(node: &crate::CNode) -> Option<u64> {
    match node.determinism {
        crate::Determinism::Seeded => node.params.get("seed").and_then(|v| v.as_u64()),
        _ => None,
    }
}

/// The whole key material of node `i`: owned copies of its parts, with the digests of its
/// `inputs`, its operator's environment `env` and the types of its inputs.
pub(crate) fn material(
    p: &Pipeline,
    i: usize,
    inputs: BTreeMap<String, Digest>,
    env: BTreeMap<String, String>,
    input_types: BTreeMap<String, PortType>,
) -> KeyMaterial {
    let node = &p.nodes[i];
    KeyMaterial {
        schema: KEY_SCHEMA,
        op: node.op.kind().to_string(),
        op_version: node.op.version(),
        params: node.params.clone(),
        inputs,
        outputs: node.outputs.clone(),
        env,
        seed: seed_of(node),
        metrics: node.metrics.clone(),
        input_types,
        sources: sources(p, i),
    }
}

/// Where each input of node `i` comes from, as written in a pipeline (`inputs.raw`, `a.rows`).
pub fn sources(p: &Pipeline, i: usize) -> BTreeMap<String, String> {
    p.nodes[i]
        .inputs
        .iter()
        .map(|(port, src)| {
            let s = match src {
                Source::Input(name) => format!("inputs.{name}"),
                Source::Node { node, port } => format!("{}.{port}", p.nodes[*node].name),
                Source::Gather { nodes, port } => match nodes.first() {
                    Some(n) => format!("{}[*].{port}", p.nodes[*n].base),
                    None => format!("[*].{port}"),
                },
            };
            (port.clone(), s)
        })
        .collect()
}
