//! The scheduler: walks the graph, decides cached nodes on the spot, and hands nodes that
//! must execute to blocking workers within `--jobs` and the declared resources.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use expflow_cache::{Digest, OutputRef, RunInfo};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::compile::{Pipeline, Source};
use crate::context::{CancelToken, ProgressFn};
use crate::error::{EngineError, Result};
use crate::events::{EventKind, EventLog, now_ms};
use crate::key::{KEY_SCHEMA, KeyMaterial};
use crate::materialize;
use crate::node::{self, NodeEnv, ingest_input, record_ok};
use crate::operator::PortType;
use crate::workspace::Workspace;

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

/// Runs a compiled pipeline in an open workspace.
pub async fn run(
    ws: &Workspace,
    p: &Pipeline,
    run_id: &str,
    opts: &RunOptions,
    cancel: CancelToken,
) -> Result<RunSummary> {
    let started = Instant::now();
    let selected = select(p, &opts.targets)?;
    // Before anything executes: a destination that is not expflow's stops the run here.
    materialize::check_destinations(ws, p, &selected, opts.force_outputs)?;
    // Before anything is written or executed: every declared secret must be set.
    let secrets = crate::secrets::Secrets::from_env(&p.secrets, &p.file)?;
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
    let mut s = Sched {
        p,
        env,
        opts,
        emit: &emit,
        inputs,
        state: vec![State::Skipped; p.nodes.len()],
        waiting_on: vec![0; p.nodes.len()],
        outputs: vec![None; p.nodes.len()],
        material: vec![None; p.nodes.len()],
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
        if s.running == 0 {
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
        .filter_map(|i| {
            s.material[*i]
                .as_ref()
                .map(|m| (p.nodes[*i].name.clone(), m.key()))
        })
        .collect();
    ws.store.put_run(&RunInfo {
        run_id: run_id.to_string(),
        pipeline: p.name.clone(),
        pipeline_path: p.file.display().to_string(),
        started_ms: now_ms().saturating_sub(s.summary.duration_ms),
        finished_ms: now_ms(),
        status: status.into(),
        nodes,
    })?;
    if status == "ok" {
        materialize::materialize(ws, p, &s.outputs, run_id, opts.force_outputs)?;
    }
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

struct Sched<'a, E: Fn(EventKind)> {
    p: &'a Pipeline,
    env: NodeEnv,
    opts: &'a RunOptions,
    emit: &'a E,
    inputs: HashMap<String, (Digest, PortType)>,
    state: Vec<State>,
    waiting_on: Vec<usize>,
    outputs: Vec<Option<BTreeMap<String, OutputRef>>>,
    material: Vec<Option<KeyMaterial>>,
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
}

impl<E: Fn(EventKind)> Sched<'_, E> {
    /// A node whose inputs are all known: compute its key and use the cache, park it behind
    /// an identical in-flight node, or make it runnable.
    fn decide(&mut self, i: usize) -> Result<()> {
        let mut work = vec![i];
        while let Some(i) = work.pop() {
            if self.stopping {
                continue;
            }
            let node = &self.p.nodes[i];
            let material = match self.material_for(i) {
                Ok(m) => m,
                Err(msg) => {
                    self.fail(i, None, 1, msg);
                    continue;
                }
            };
            let key = material.key();
            self.material[i] = Some(material);
            if let Some(rec) = self.env.store.get_record(&key)?
                && record_ok(&self.env.cas, self.env.store.as_ref(), &rec)?
            {
                if self.env.store.get_last(&self.p.name, &node.name)? != Some(key) {
                    self.env.store.set_last(&self.p.name, &node.name, &key)?;
                }
                (self.emit)(EventKind::NodeCached {
                    node: node.name.clone(),
                    key,
                });
                self.summary.cached.push(node.name.clone());
                self.outputs[i] = Some(rec.outputs);
                self.state[i] = State::Done;
                work.extend(self.release_children(i));
                continue;
            }
            if self.inflight.contains_key(&key) {
                self.parked.entry(key).or_default().push(i);
                self.state[i] = State::Parked;
                continue;
            }
            self.inflight.insert(key, i);
            self.state[i] = State::Runnable;
            self.runnable.insert(i);
        }
        Ok(())
    }

    fn release_children(&mut self, i: usize) -> Vec<usize> {
        let mut ready = Vec::new();
        for &c in &self.children[i] {
            if self.state[c] == State::Waiting {
                self.waiting_on[c] -= 1;
                if self.waiting_on[c] == 0 {
                    ready.push(c);
                }
            }
        }
        ready
    }

    fn material_for(&mut self, i: usize) -> std::result::Result<KeyMaterial, String> {
        let node = &self.p.nodes[i];
        let mut inputs = BTreeMap::new();
        for (port, src) in &node.inputs {
            let d = match src {
                Source::Input(name) => self.inputs.get(name).map(|(d, _)| *d),
                Source::Node {
                    node: up,
                    port: up_port,
                } => self.outputs[*up]
                    .as_ref()
                    .and_then(|o| o.get(up_port))
                    .map(|o| o.digest),
            };
            inputs.insert(
                port.clone(),
                d.ok_or_else(|| format!("input `{port}` is not available"))?,
            );
        }
        let kind = node.op.kind();
        if !self.env_cache.contains_key(kind) {
            let env = node
                .op
                .environment()
                .map_err(|e| format!("cannot determine the environment of `{kind}`: {e}"))?;
            self.env_cache.insert(kind, env);
        }
        Ok(KeyMaterial {
            schema: KEY_SCHEMA,
            op: kind.to_string(),
            op_version: node.op.version(),
            params: node.params.clone(),
            inputs,
            outputs: node.outputs.clone(),
            env: self.env_cache[kind].clone(),
            seed: match node.determinism {
                crate::Determinism::Seeded => node.params.get("seed").and_then(|v| v.as_u64()),
                _ => None,
            },
            input_types: self.input_types(i),
            sources: sources(self.p, i),
        })
    }

    fn input_types(&self, i: usize) -> BTreeMap<String, PortType> {
        self.p.nodes[i]
            .inputs
            .iter()
            .map(|(port, src)| {
                let ty = match src {
                    Source::Input(name) => {
                        self.inputs.get(name).map_or(PortType::File, |(_, t)| *t)
                    }
                    Source::Node { node, port } => self.p.nodes[*node]
                        .outputs
                        .get(port)
                        .copied()
                        .unwrap_or(PortType::File),
                };
                (port.clone(), ty)
            })
            .collect()
    }

    /// Starts runnable nodes while jobs and resources allow (lowest index first; a node that
    /// does not fit now is passed over for later ones, up to a bounded look-ahead).
    fn launch(&mut self, tx: &mpsc::UnboundedSender<Finished>) {
        let mut passed = Vec::new();
        while self.running < self.opts.jobs.max(1) && passed.len() < 256 {
            let Some(i) = self.runnable.pop_first() else {
                break;
            };
            let r = self.p.nodes[i].resources;
            if r.gpus as usize > self.opts.gpus.len() {
                let msg = format!(
                    "needs {} GPU(s) but {} are available; set CUDA_VISIBLE_DEVICES (or EXPFLOW_GPUS) to the GPUs expflow may use",
                    r.gpus,
                    self.opts.gpus.len()
                );
                let key = self.material[i].as_ref().map(KeyMaterial::key);
                self.fail(i, key, 1, msg);
                continue;
            }
            let cpus = r.cpus.min(self.opts.cpus.max(1));
            let mem = r.mem_gb.min(self.opts.mem_gb);
            // A node alone on the machine always fits (its request was capped above).
            let fits = self.running == 0
                || (self.used_cpus + cpus <= self.opts.cpus.max(1)
                    && self.used_mem + mem <= self.opts.mem_gb);
            if !fits || self.free_gpus.len() < r.gpus as usize {
                passed.push(i);
                continue;
            }
            self.used_cpus += cpus;
            self.used_mem += mem;
            let gpus: Vec<u32> = self.free_gpus.drain(..r.gpus as usize).collect();
            self.held_gpus.insert(i, gpus.clone());
            self.start(i, 1, gpus, tx);
        }
        self.runnable.extend(passed);
    }

    fn start(
        &mut self,
        i: usize,
        attempt: u32,
        gpus: Vec<u32>,
        tx: &mpsc::UnboundedSender<Finished>,
    ) {
        let material = self.material[i]
            .clone()
            .expect("material is computed before a node runs");
        let key = material.key();
        self.inflight.insert(key, i);
        self.state[i] = State::Running;
        self.running += 1;
        let node = self.p.nodes[i].clone();
        (self.emit)(EventKind::NodeStarted {
            node: node.name.clone(),
            key,
            attempt,
        });
        let env = self.env.clone();
        let types = self.input_types(i);
        let tx = tx.clone();
        let progress = self.progress_fn(&node.name);
        let delay = if attempt > 1 {
            (self.opts.retry_base * 2u32.pow((attempt - 2).min(10))).min(Duration::from_secs(30))
        } else {
            Duration::ZERO
        };
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let result = tokio::task::spawn_blocking(move || {
                if env.cancel.is_cancelled() {
                    return Err("cancelled".to_string());
                }
                node::execute(
                    &env, &node, &material, &key, &types, gpus, attempt, progress, true,
                )
            })
            .await
            .unwrap_or_else(|e| Err(format!("worker panicked: {e}")));
            let _ = tx.send(Finished {
                idx: i,
                attempt,
                result,
            });
        });
    }

    fn progress_fn(&self, node: &str) -> ProgressFn {
        let node = node.to_string();
        let observer = self.opts.observer.clone();
        let last = Mutex::new(Instant::now() - Duration::from_secs(1));
        let events_path = self.env.run_dir.join("events.jsonl");
        let log = EventLog::create(&events_path).ok();
        Arc::new(move |done, total| {
            let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
            if done < total && l.elapsed() < Duration::from_millis(200) {
                return;
            }
            *l = Instant::now();
            let ev = EventKind::NodeProgress {
                node: node.clone(),
                done,
                total,
            };
            if let Some(o) = &observer {
                o(&ev);
            }
            if let Some(log) = &log {
                log.emit(ev);
            }
        })
    }

    fn finish(&mut self, f: Finished, tx: &mpsc::UnboundedSender<Finished>) -> Result<()> {
        let i = f.idx;
        let name = self.p.nodes[i].name.clone();
        let key = self.material[i]
            .as_ref()
            .map(KeyMaterial::key)
            .expect("running nodes have keys");
        match f.result {
            Ok(done) => {
                self.release(i);
                self.inflight.remove(&key);
                (self.emit)(EventKind::NodeExecuted {
                    node: name.clone(),
                    key,
                    duration_ms: done.duration_ms,
                    outputs: done
                        .outputs
                        .iter()
                        .map(|(k, o)| (k.clone(), o.digest))
                        .collect(),
                    memo_hits: done.memo.0,
                    memo_misses: done.memo.1,
                    notes: done.notes,
                });
                self.summary.executed.push(name);
                self.outputs[i] = Some(done.outputs);
                self.state[i] = State::Done;
                let mut next = self.release_children(i);
                if let Some(parked) = self.parked.remove(&key) {
                    next.extend(parked);
                }
                for c in next {
                    self.decide(c)?;
                }
            }
            Err(msg) => {
                let cancelled = self.env.cancel.is_cancelled();
                let retries = self.p.nodes[i].retries;
                let will_retry = !cancelled && !self.stopping && f.attempt <= retries;
                (self.emit)(EventKind::NodeFailed {
                    node: name.clone(),
                    key: Some(key),
                    attempt: f.attempt,
                    will_retry,
                    error: msg.clone(),
                });
                if will_retry {
                    self.running -= 1;
                    let gpus = self.held_gpus.get(&i).cloned().unwrap_or_default();
                    self.start(i, f.attempt + 1, gpus, tx);
                    return Ok(());
                }
                self.release(i);
                self.inflight.remove(&key);
                self.summary.failed.push(name.clone());
                self.summary.errors.push((name, msg));
                self.state[i] = State::Failed;
                self.after_failure(i, key);
            }
        }
        Ok(())
    }

    fn release(&mut self, i: usize) {
        self.running -= 1;
        let r = self.p.nodes[i].resources;
        self.used_cpus = self
            .used_cpus
            .saturating_sub(r.cpus.min(self.opts.cpus.max(1)));
        self.used_mem = (self.used_mem - r.mem_gb.min(self.opts.mem_gb)).max(0.0);
        if let Some(g) = self.held_gpus.remove(&i) {
            self.free_gpus.extend(g);
            self.free_gpus.sort_unstable();
        }
    }

    fn fail(&mut self, i: usize, key: Option<Digest>, attempt: u32, msg: String) {
        let name = self.p.nodes[i].name.clone();
        (self.emit)(EventKind::NodeFailed {
            node: name.clone(),
            key,
            attempt,
            will_retry: false,
            error: msg.clone(),
        });
        self.summary.failed.push(name.clone());
        self.summary.errors.push((name, msg));
        self.state[i] = State::Failed;
        if let Some(k) = key {
            self.after_failure(i, k);
        } else if !self.opts.keep_going {
            self.stopping = true;
        } else {
            self.skip_descendants(i);
        }
    }

    fn after_failure(&mut self, i: usize, key: Digest) {
        self.inflight.remove(&key);
        // Nodes parked behind this one would fail the same way; they become runnable so
        // that each reports its own error (under keep-going) or are skipped (under stop).
        if let Some(mut parked) = self.parked.remove(&key) {
            // The first one takes over the key; the rest stay parked behind it.
            parked.sort_unstable();
            let first = parked.remove(0);
            self.inflight.insert(key, first);
            self.state[first] = State::Runnable;
            self.runnable.insert(first);
            if !parked.is_empty() {
                self.parked.insert(key, parked);
            }
        }
        if self.opts.keep_going {
            self.skip_descendants(i);
        } else {
            self.stopping = true;
        }
    }

    fn skip_descendants(&mut self, i: usize) {
        let mut stack = self.children[i].clone();
        while let Some(c) = stack.pop() {
            if matches!(
                self.state[c],
                State::Waiting | State::Runnable | State::Parked
            ) {
                self.state[c] = State::Skipped;
                self.runnable.remove(&c);
                (self.emit)(EventKind::NodeSkipped {
                    node: self.p.nodes[c].name.clone(),
                    reason: format!("upstream {} failed", self.p.nodes[i].name),
                });
                self.summary.skipped.push(self.p.nodes[c].name.clone());
                stack.extend(self.children[c].iter().copied());
            }
        }
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
            };
            (port.clone(), s)
        })
        .collect()
}
