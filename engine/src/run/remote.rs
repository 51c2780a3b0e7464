//! Nodes that run on a cluster executor: batched submission (several runnable nodes with
//! equal resources become one job array), polling, result files, cancellation. The record
//! of a node is written here, after its outputs have been re-hashed: never on a job's word.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::executor::{self, Executor, JobRequest, JobState, Settings, task};
use crate::node::safe_name;

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
}

/// (node, attempt, resubmits).
type Queued = (usize, u32, u32);

struct Active {
    idx: usize,
    attempt: u32,
    exec: &'static str,
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
        Ok(Remote {
            of,
            executors,
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
        self.remote.batch += 1;
        let req = JobRequest {
            name: self.remote.run_id.clone(),
            tasks: files.iter().map(|(f, _)| f.clone()).collect(),
            resources: first.resources,
            time_min: first.time_min,
            jobs_dir: self.remote.run_dir().join("jobs"),
            log_dir: self.remote.run_dir().join("logs"),
            batch: self.remote.batch,
        };
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
        for (job, a) in &self.remote.active {
            if let Some(r) = task::read_result(&a.result) {
                done.push((job.clone(), r));
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
                None => self.commit_remote(a.idx, &job, r),
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
