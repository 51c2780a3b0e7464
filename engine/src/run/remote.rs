//! Nodes that run on a cluster executor: batched submission (several runnable nodes with
//! equal resources become one job array), polling, result files, cancellation. The record
//! of a node is written here, after its outputs have been re-hashed: never on a job's word.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::executor::config::DataMode;
use crate::executor::{self, Executor, JobRequest, JobState, ObjectJob, Settings, task};
use crate::node::safe_name;
use crate::shared::SharedCache;

use super::*;

pub(super) struct Remote {
    /// Executor name of each node (`local` for most).
    of: Vec<&'static str>,
    executors: HashMap<&'static str, Arc<dyn Executor>>,
    settings: Settings,
    ws_root: PathBuf,
    run_id: String,
    /// Waiting to be submitted.
    queue: Vec<Queued>,
    active: HashMap<String, Active>,
    batch: u64,
    last_poll: Option<Instant>,
    last_check: Option<Instant>,
    cancelled: bool,
    /// The object data mode's remote (jobs share no file system with this workspace).
    object: Option<Arc<dyn SharedCache>>,
}

/// (node, attempt, resubmits).
type Queued = (usize, u32, u32);

struct Active {
    idx: usize,
    attempt: u32,
    exec: &'static str,
    /// The result file (shared data mode) or result object path (object data mode).
    result: PathBuf,
    log: PathBuf,
    resubmits: u32,
    /// When the cluster first said the job had finished without a result file.
    finished: Option<(Instant, JobState)>,
    submitted: Instant,
    /// Polls in a row that did not report the job.
    missing: u32,
}

fn static_name(name: &str) -> &'static str {
    executor::NAMES
        .iter()
        .find(|n| **n == name)
        .copied()
        .unwrap_or("local")
}

impl Remote {
    pub(super) fn new(
        ws: &Workspace,
        p: &Pipeline,
        selected: &[usize],
        opts: &RunOptions,
        run_id: &str,
    ) -> Result<Remote> {
        if let Some(e) = &opts.executor
            && !executor::NAMES.contains(&e.as_str())
        {
            return Err(EngineError::Usage(format!(
                "--executor {e}: unknown executor; the executors are: {}",
                executor::NAMES.join(", ")
            )));
        }
        // The node's own `executor:`, then `--executor`, the pipeline's, the config's.
        let default = opts
            .executor
            .as_deref()
            .or(p.executor.as_deref())
            .or(opts.executors.executor.as_deref())
            .unwrap_or("local");
        let of: Vec<&'static str> = p
            .nodes
            .iter()
            .map(|n| static_name(n.executor.as_deref().unwrap_or(default)))
            .collect();
        let mut executors = HashMap::new();
        for &i in selected {
            if of[i] != "local"
                && !executors.contains_key(of[i])
                && let Some(e) = executor::open(of[i], &opts.executors)?
            {
                executors.insert(of[i], e);
            }
        }
        let data = opts.executors.slurm.data;
        let object = match (&opts.shared, data) {
            (_, DataMode::Shared) => None,
            _ if executors.is_empty() => None,
            (Some(shared), DataMode::Object) if shared.exchange().is_some() => Some(shared.clone()),
            (Some(shared), DataMode::Object) => {
                return Err(EngineError::Usage(format!(
                    "the object data mode moves data through the remote cache, but remote {} cannot serve cluster jobs",
                    shared.name()
                )));
            }
            (None, DataMode::Object) => {
                return Err(EngineError::Usage(
                    "the object data mode (`--data object`, or `slurm.data: object` in the config) moves data through a remote cache: run with `--remote NAME` (see `expflow remote add`)".into(),
                ));
            }
        };
        Ok(Remote {
            of,
            executors,
            object,
            settings: opts.executors.clone(),
            ws_root: ws.root().to_path_buf(),
            run_id: run_id.to_string(),
            queue: Vec::new(),
            active: HashMap::new(),
            batch: 0,
            last_poll: None,
            last_check: None,
            cancelled: false,
        })
    }

    pub(super) fn is_remote(&self, i: usize) -> bool {
        self.executors.contains_key(self.of[i])
    }

    /// Nodes counted as running that run on a cluster.
    pub(super) fn running(&self) -> usize {
        self.queue.len() + self.active.len()
    }

    pub(super) fn enqueue(&mut self, i: usize, attempt: u32) {
        self.queue.push((i, attempt, 0));
    }

    fn run_dir(&self) -> PathBuf {
        self.ws_root.join("runs").join(&self.run_id)
    }

    fn poll_every(&self) -> Duration {
        Duration::from_secs_f64(self.settings.slurm.poll_interval_s)
    }
}

impl<E: Fn(EventKind)> Sched<'_, E> {
    /// Submits what is queued, reads result files, polls the cluster, and cancels the run's
    /// jobs when the run stops.
    pub(super) fn remote_step(&mut self, tx: &mpsc::UnboundedSender<Finished>) -> Result<()> {
        if self.remote.executors.is_empty() {
            return Ok(());
        }
        if self.stopping {
            self.remote_cancel();
            return Ok(());
        }
        self.remote_submit(tx)?;
        let every = self.remote.poll_every();
        // Result files are cheap to look for: at least once a second.
        let check_every = every.min(Duration::from_secs(1));
        if self
            .remote
            .last_check
            .is_none_or(|t| t.elapsed() >= check_every)
        {
            self.remote.last_check = Some(Instant::now());
            self.remote_results(tx)?;
        }
        if !self.remote.active.is_empty()
            && self.remote.last_poll.is_none_or(|t| t.elapsed() >= every)
        {
            self.remote.last_poll = Some(Instant::now());
            self.remote_poll(tx)?;
        }
        Ok(())
    }

    fn remote_submit(&mut self, tx: &mpsc::UnboundedSender<Finished>) -> Result<()> {
        if self.remote.queue.is_empty() {
            return Ok(());
        }
        let queue = std::mem::take(&mut self.remote.queue);
        // Batches: equal executor, resources and time limit, in queue order.
        let mut groups: Vec<(String, Vec<Queued>)> = Vec::new();
        for q in queue {
            let n = &self.p.nodes[q.0];
            let r = n.resources;
            let sig = format!(
                "{}/{}/{}/{}/{:?}",
                self.remote.of[q.0], r.cpus, r.gpus, r.mem_gb, n.time_min
            );
            match groups.iter_mut().find(|(s, _)| *s == sig) {
                Some((_, g)) => g.push(q),
                None => groups.push((sig, vec![q])),
            }
        }
        let tasks_dir = self.remote.run_dir().join("tasks");
        std::fs::create_dir_all(&tasks_dir).map_err(|e| EngineError::io(&tasks_dir, e))?;
        for (_, group) in groups {
            let exec_name = self.remote.of[group[0].0];
            let exec = self.remote.executors[exec_name].clone();
            for chunk in group.chunks(exec.max_batch()) {
                self.submit_chunk(&exec, exec_name, chunk, &tasks_dir, tx)?;
            }
        }
        Ok(())
    }

    fn submit_chunk(
        &mut self,
        exec: &Arc<dyn Executor>,
        exec_name: &'static str,
        chunk: &[Queued],
        tasks_dir: &Path,
        tx: &mpsc::UnboundedSender<Finished>,
    ) -> Result<()> {
        self.remote.batch += 1;
        let batch = self.remote.batch;
        if self.remote.object.is_some() {
            return self.submit_object_chunk(exec, exec_name, chunk, tasks_dir, batch, tx);
        }
        let mut files = Vec::new();
        for &(i, attempt, _) in chunk {
            let node = &self.p.nodes[i];
            let material = self.material[i]
                .clone()
                .expect("material is computed before a node runs");
            let stem = format!("{}.{attempt}", safe_name(&node.name));
            let file = tasks_dir.join(format!("{stem}.json"));
            let result = tasks_dir.join(format!("{stem}.result.json"));
            // A result file from an earlier job of this attempt is not this job's.
            let _ = std::fs::remove_file(&result);
            task::Task {
                workspace: self.remote.ws_root.clone(),
                pipeline: self.p.name.clone(),
                pipeline_file: self.p.file.clone(),
                run_id: self.remote.run_id.clone(),
                node: node.name.clone(),
                key: material.key(),
                material,
                gpus: node.resources.gpus,
                secrets: self.p.secrets.clone(),
                attempt,
                result: result.clone(),
            }
            .write(&file)?;
            files.push((file, result));
        }
        let first = &self.p.nodes[chunk[0].0];
        let req = JobRequest {
            name: self.remote.run_id.clone(),
            tasks: files.iter().map(|(f, _)| f.display().to_string()).collect(),
            resources: first.resources,
            time_min: first.time_min,
            jobs_dir: self.remote.run_dir().join("jobs"),
            log_dir: self.remote.run_dir().join("logs"),
            batch,
            object: None,
        };
        self.submitted(exec, exec_name, chunk, req, files, tx)
    }

    /// The object data mode: each task's inputs are uploaded to the remote (what it lacks),
    /// the task goes there too, and the job script names the task objects; the job's
    /// workspace is its own.
    fn submit_object_chunk(
        &mut self,
        exec: &Arc<dyn Executor>,
        exec_name: &'static str,
        chunk: &[Queued],
        tasks_dir: &Path,
        batch: u64,
        tx: &mpsc::UnboundedSender<Finished>,
    ) -> Result<()> {
        let shared = self.remote.object.clone().expect("the object data mode");
        let x = shared.exchange().expect("checked when the run started");
        let loc = x.locator();
        let mut prepared = Vec::new();
        for &(i, attempt, _) in chunk {
            let node = &self.p.nodes[i];
            let material = self.material[i]
                .clone()
                .expect("material is computed before a node runs");
            let stem = format!("{}.{attempt}.b{batch}", safe_name(&node.name));
            let prefix = format!("jobs/{}", self.remote.run_id);
            let result_obj = format!("{prefix}/results/{stem}.json");
            let inputs: Vec<(Digest, bool)> = material
                .inputs
                .iter()
                .map(|(port, d)| {
                    let dir = material.input_types.get(port).is_some_and(|t| t.is_dir());
                    (*d, dir)
                })
                .collect();
            let t = task::Task {
                // The job's own workspace, which it names itself: nothing here points
                // into this one.
                workspace: PathBuf::new(),
                pipeline: self.p.name.clone(),
                pipeline_file: self
                    .p
                    .file
                    .file_name()
                    .map(PathBuf::from)
                    .unwrap_or_default(),
                run_id: self.remote.run_id.clone(),
                node: node.name.clone(),
                key: material.key(),
                material,
                gpus: node.resources.gpus,
                secrets: self.p.secrets.clone(),
                attempt,
                result: PathBuf::from(&result_obj),
            };
            prepared.push((
                stem.clone(),
                format!("{prefix}/tasks/{stem}.json"),
                inputs,
                t,
            ));
        }
        // Each task's inputs and the task itself, several tasks at once (a job array of
        // small nodes is bound by requests, not bytes).
        let cas = &self.env.cas;
        let hand =
            |(stem, task_obj, inputs, t): &(String, String, Vec<(Digest, bool)>, task::Task)| {
                let got = x.upload(cas, inputs)?;
                let bytes =
                    serde_json::to_vec_pretty(t).map_err(|e| EngineError::Other(e.to_string()))?;
                t.write(&tasks_dir.join(format!("{stem}.json")))?;
                x.put_object(task_obj, bytes)?;
                tracing::info!(
                    node = %t.node,
                    blobs = got.blobs,
                    bytes = got.bytes,
                    "inputs uploaded to remote {}",
                    loc.name
                );
                Ok::<_, EngineError>(())
            };
        let sent: Vec<Result<()>> = parallel(&prepared, 8, hand);
        let failed = prepared.iter().zip(&sent).find_map(|(p, r)| {
            r.as_ref().err().map(|e| {
                format!(
                    "cannot hand {} to its job through remote {}: {e}",
                    p.3.node, loc.name
                )
            })
        });
        let files: Vec<(PathBuf, PathBuf)> = prepared
            .into_iter()
            .map(|(_, task_obj, _, t)| (PathBuf::from(task_obj), t.result))
            .collect();
        if let Some(msg) = failed {
            for &(i, attempt, _) in chunk {
                self.finish(
                    Finished {
                        idx: i,
                        attempt,
                        result: Err(msg.clone()),
                    },
                    tx,
                )?;
            }
            return Ok(());
        }
        let mut worker_args = vec![
            "--remote-name".to_string(),
            loc.name.clone(),
            "--remote-url".into(),
            loc.url.clone(),
        ];
        if let Some(ep) = &loc.endpoint {
            worker_args.extend(["--remote-endpoint".to_string(), ep.clone()]);
        }
        let workspace = self
            .remote
            .settings
            .slurm
            .worker_workspace
            .clone()
            .unwrap_or_else(|| "${TMPDIR:-/tmp}/expflow-worker".into());
        let first = &self.p.nodes[chunk[0].0];
        let req = JobRequest {
            name: self.remote.run_id.clone(),
            tasks: files.iter().map(|(f, _)| f.display().to_string()).collect(),
            resources: first.resources,
            time_min: first.time_min,
            jobs_dir: self.remote.run_dir().join("jobs"),
            log_dir: self.remote.run_dir().join("logs"),
            batch,
            object: Some(ObjectJob {
                worker_args,
                workspace,
            }),
        };
        self.submitted(exec, exec_name, chunk, req, files, tx)
    }

    /// Submits `req` and tracks its jobs (or fails the chunk's nodes).
    fn submitted(
        &mut self,
        exec: &Arc<dyn Executor>,
        exec_name: &'static str,
        chunk: &[Queued],
        req: JobRequest,
        files: Vec<(PathBuf, PathBuf)>,
        tx: &mpsc::UnboundedSender<Finished>,
    ) -> Result<()> {
        match exec.submit(&req) {
            Ok(subs) => {
                let mut lines = String::new();
                for ((&(i, attempt, resubmits), sub), (_, result)) in
                    chunk.iter().zip(subs).zip(files)
                {
                    tracing::info!("{}: {exec_name} job {}", self.p.nodes[i].name, sub.job);
                    lines.push_str(&format!(
                        "{}\t{attempt}\t{}\n",
                        self.p.nodes[i].name, sub.job
                    ));
                    self.remote.active.insert(
                        sub.job,
                        Active {
                            idx: i,
                            attempt,
                            exec: exec_name,
                            result,
                            log: sub.log,
                            resubmits,
                            finished: None,
                            submitted: Instant::now(),
                            missing: 0,
                        },
                    );
                }
                append(&req.jobs_dir.join("jobs.tsv"), &lines);
            }
            Err(e) => {
                for &(i, attempt, _) in chunk {
                    self.finish(
                        Finished {
                            idx: i,
                            attempt,
                            result: Err(e.to_string()),
                        },
                        tx,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Jobs whose result file is there: commit (after checking) or fail.
    fn remote_results(&mut self, tx: &mpsc::UnboundedSender<Finished>) -> Result<()> {
        let mut done: Vec<(String, task::TaskResult)> = Vec::new();
        if let Some(shared) = self.remote.object.clone() {
            self.object_results(shared.as_ref(), &mut done);
        } else {
            for (job, a) in &self.remote.active {
                if let Some(r) = task::read_result(&a.result) {
                    done.push((job.clone(), r));
                }
            }
        }
        for (job, r) in done {
            let Some(a) = self.remote.active.remove(&job) else {
                continue;
            };
            let result = match r.error {
                Some(err) => Err(format!(
                    "{err}\n{} job {job} log ({}):\n{}",
                    a.exec,
                    a.log.display(),
                    tail(&a.log, 20)
                )),
                None => match self.remote.object.clone() {
                    Some(shared) => self
                        .fetch_outputs(shared.as_ref(), a.idx, &job, &r)
                        .and_then(|()| self.commit_remote(a.idx, &job, r)),
                    None => self.commit_remote(a.idx, &job, r),
                },
            };
            self.finish(
                Finished {
                    idx: a.idx,
                    attempt: a.attempt,
                    result,
                },
                tx,
            )?;
        }
        Ok(())
    }

    /// The object data mode: the results the run's jobs put on the remote (one listing).
    fn object_results(&self, shared: &dyn SharedCache, done: &mut Vec<(String, task::TaskResult)>) {
        if self.remote.active.is_empty() {
            return;
        }
        let x = shared.exchange().expect("the object data mode");
        let prefix = format!("jobs/{}/results/", self.remote.run_id);
        let listed: std::collections::HashSet<String> = match x.list_objects(&prefix) {
            Ok(l) => l.into_iter().collect(),
            Err(e) => {
                tracing::warn!(
                    "remote {}: cannot list the run's results: {e}",
                    shared.name()
                );
                return;
            }
        };
        let ready: Vec<(String, String)> = self
            .remote
            .active
            .iter()
            .map(|(job, a)| (job.clone(), a.result.to_string_lossy().into_owned()))
            .filter(|(_, path)| listed.contains(path))
            .collect();
        // Several at once: the result, then the blobs it names (downloaded here so that
        // committing, one job after another, finds them local; it checks them again).
        let cas = &self.env.cas;
        let read = parallel(&ready, 8, |(job, path)| match x.get_object(path) {
            Ok(Some(bytes)) => Some(match serde_json::from_slice::<task::TaskResult>(&bytes) {
                Ok(r) => {
                    if r.error.is_none()
                        && let Err(e) = x.download(cas, &job_artifacts(&r))
                    {
                        tracing::warn!("job {job}: {e}");
                    }
                    r
                }
                Err(e) => task::TaskResult {
                    error: Some(format!("job {job} wrote an unreadable result {path}: {e}")),
                    ..Default::default()
                },
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("remote {}: cannot read {path}: {e}", shared.name());
                None
            }
        });
        for ((job, _), r) in ready.into_iter().zip(read) {
            if let Some(r) = r {
                done.push((job, r));
            }
        }
    }

    /// The object data mode: downloads what a job reports (outputs, log, items, memo
    /// blobs) into the local CAS, each blob re-hashed, and puts the node log where the
    /// record takes it from. The outputs are then checked as in the shared mode.
    fn fetch_outputs(
        &self,
        shared: &dyn SharedCache,
        i: usize,
        job: &str,
        r: &task::TaskResult,
    ) -> std::result::Result<(), String> {
        let x = shared.exchange().expect("the object data mode");
        let got = x.download(&self.env.cas, &job_artifacts(r)).map_err(|e| {
            format!(
                "job {job} reported outputs that cannot be downloaded from remote {}: {e}",
                shared.name()
            )
        })?;
        let name = &self.p.nodes[i].name;
        tracing::info!(node = %name, blobs = got.blobs, bytes = got.bytes, "outputs downloaded");
        if let Some(log) = r.log {
            let dir = self.remote.run_dir().join("logs");
            let dest = dir.join(format!("{}.log", safe_name(name)));
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::copy(self.env.cas.blob_path(&log), &dest).map(drop))
                .map_err(|e| format!("{}: {e}", dest.display()))?;
        }
        Ok(())
    }

    /// Checks the outputs a job reports and writes the node's record.
    fn commit_remote(
        &self,
        i: usize,
        job: &str,
        r: task::TaskResult,
    ) -> std::result::Result<node::Executed, String> {
        let node = &self.p.nodes[i];
        let material = self.material[i].as_ref().expect("running nodes have keys");
        let key = material.key();
        let facts = r
            .facts
            .ok_or_else(|| format!("job {job} reported success without its facts"))?;
        if r.outputs.keys().ne(node.outputs.keys()) {
            return Err(format!(
                "job {job} reported outputs {:?}, the node declares {:?}",
                r.outputs.keys().collect::<Vec<_>>(),
                node.outputs.keys().collect::<Vec<_>>()
            ));
        }
        let (cas, store) = (&self.env.cas, self.env.store.as_ref());
        for (port, out) in &r.outputs {
            let ok =
                node::artifact_ok(cas, store, &out.digest, out.dir).map_err(|e| e.to_string())?;
            if !ok {
                return Err(format!(
                    "job {job} reported output `{port}` as {}, but the store does not hold those bytes; \
                     is the workspace on a file system the compute nodes share?",
                    out.digest
                ));
            }
        }
        for (item, blob) in &r.memos {
            if node::blob_ok(cas, store, blob).unwrap_or(false) {
                let _ = store.memo_put(item, blob);
            }
        }
        node::commit_record(
            &self.env,
            &node.name,
            node.determinism.as_str(),
            material,
            &key,
            &r.outputs,
            r.duration_ms,
            &facts,
        )
        .map_err(|e| e.to_string())?;
        Ok(node::Executed {
            outputs: r.outputs,
            duration_ms: r.duration_ms,
            memo: r.memo,
            notes: r.notes,
            facts,
        })
    }

    /// One status query per executor for all of the run's jobs.
    fn remote_poll(&mut self, tx: &mpsc::UnboundedSender<Finished>) -> Result<()> {
        let mut states = HashMap::new();
        let names: Vec<&'static str> = self.remote.executors.keys().copied().collect();
        for name in names {
            let jobs: Vec<String> = self
                .remote
                .active
                .iter()
                .filter(|(_, a)| a.exec == name)
                .map(|(j, _)| j.clone())
                .collect();
            if jobs.is_empty() {
                continue;
            }
            match self.remote.executors[name].poll(&self.remote.run_id, &jobs) {
                Ok(s) => states.extend(s),
                Err(e) => tracing::warn!("cannot read the states of the {name} jobs: {e}"),
            }
        }
        let grace = Duration::from_secs_f64(self.remote.settings.slurm.result_grace_s);
        let mut ended: Vec<(String, JobState)> = Vec::new();
        for (job, a) in self.remote.active.iter_mut() {
            let Some(state) = states.get(job) else {
                // Accounting lags a submission; squeue forgets finished jobs. A job that
                // stays unreported (10 polls and 2 minutes) and wrote no result is lost.
                a.missing += 1;
                if a.missing >= 10 && a.submitted.elapsed() >= Duration::from_secs(120) {
                    ended.push((
                        job.clone(),
                        JobState::Interrupted("no longer reported by the cluster".into()),
                    ));
                }
                continue;
            };
            a.missing = 0;
            match state {
                JobState::Interrupted(_) => ended.push((job.clone(), state.clone())),
                s if s.is_finished() => {
                    let since = a.finished.get_or_insert((Instant::now(), s.clone())).0;
                    if since.elapsed() >= grace {
                        ended.push((job.clone(), s.clone()));
                    }
                }
                _ => {}
            }
        }
        if ended.is_empty() {
            return Ok(());
        }
        // A result file that appeared meanwhile decides.
        self.remote_results(tx)?;
        for (job, state) in ended {
            let Some(a) = self.remote.active.remove(&job) else {
                continue;
            };
            if let JobState::Interrupted(why) = &state
                && a.resubmits < self.remote.settings.slurm.resubmit
            {
                tracing::warn!(
                    "{}: {} job {job} ended ({why}); submitting it again",
                    self.p.nodes[a.idx].name,
                    a.exec
                );
                self.remote.queue.push((a.idx, a.attempt, a.resubmits + 1));
                continue;
            }
            let what = match &state {
                JobState::Completed => "completed but wrote no result file".to_string(),
                JobState::Failed(s) | JobState::Interrupted(s) => format!("ended: {s}"),
                _ => "ended".into(),
            };
            let msg = format!(
                "{} job {job} {what}\njob log ({}):\n{}",
                a.exec,
                a.log.display(),
                tail(&a.log, 20)
            );
            self.finish(
                Finished {
                    idx: a.idx,
                    attempt: a.attempt,
                    result: Err(msg),
                },
                tx,
            )?;
        }
        self.remote_submit(tx)
    }

    /// The run stops (Ctrl-C, or a failure under `stop`): cancel every job it submitted;
    /// their nodes are skipped.
    fn remote_cancel(&mut self) {
        if !self.remote.cancelled && !self.remote.active.is_empty() {
            self.remote.cancelled = true;
            let names: Vec<&'static str> = self.remote.executors.keys().copied().collect();
            for name in names {
                let jobs: Vec<String> = self
                    .remote
                    .active
                    .iter()
                    .filter(|(_, a)| a.exec == name)
                    .map(|(j, _)| j.clone())
                    .collect();
                if jobs.is_empty() {
                    continue;
                }
                if let Err(e) = self.remote.executors[name].cancel(&self.remote.run_id, &jobs) {
                    tracing::warn!("cannot cancel the run's {name} jobs: {e}");
                }
            }
        }
        let queued: Vec<usize> = self.remote.queue.drain(..).map(|q| q.0).collect();
        let active: Vec<usize> = self.remote.active.drain().map(|(_, a)| a.idx).collect();
        for i in queued.into_iter().chain(active) {
            self.release(i);
            if let Some(k) = self.material[i].as_ref().map(KeyMaterial::key) {
                self.inflight.remove(&k);
            }
            self.state[i] = State::Skipped;
            (self.emit)(EventKind::NodeSkipped {
                node: self.p.nodes[i].name.clone(),
                reason: "cancelled: its cluster job was cancelled".into(),
            });
            self.summary.skipped.push(self.p.nodes[i].name.clone());
        }
    }
}

/// Every blob a job's result names: outputs (directories whole), log, items, memo blobs.
fn job_artifacts(r: &task::TaskResult) -> Vec<(Digest, bool)> {
    let mut want: Vec<(Digest, bool)> = r.outputs.values().map(|o| (o.digest, o.dir)).collect();
    want.extend(r.log.map(|d| (d, false)));
    if let Some(f) = &r.facts {
        want.extend(f.items.iter().map(|d| (*d, false)));
    }
    want.extend(r.memos.iter().map(|(_, b)| (*b, false)));
    want
}

/// `f` over `items` on up to `threads` threads, results in order.
fn parallel<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let per = items.len().div_ceil(threads.max(1));
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|c| {
                let f = &f;
                s.spawn(move || c.iter().map(f).collect::<Vec<R>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a worker thread panicked"))
            .collect()
    })
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = r {
        tracing::warn!("{}: {e}", path.display());
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
