//! The Slurm executor: `sbatch --parsable` of a generated script (a job array for a batch
//! of several tasks), one `sacct` query per poll for all of a run's jobs (by job name = run
//! id; `squeue` when accounting is off), `scancel`. Commands run here, or on a login host
//! over ssh (`slurm.ssh`).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::config::{Accounting, GpuFlag, SlurmSettings};
use super::{Executor, JobRequest, JobState, Submitted};
use crate::error::{EngineError, Result};

pub struct Slurm {
    s: SlurmSettings,
    worker: String,
    max_array: OnceLock<usize>,
    /// Set once `sacct` said accounting is off: `squeue` from then on.
    no_accounting: AtomicBool,
}

impl Slurm {
    pub fn new(s: SlurmSettings) -> Result<Slurm> {
        let worker = match &s.worker {
            Some(w) => w.clone(),
            None => std::env::current_exe()
                .map_err(|e| EngineError::Other(format!("cannot find the expflow binary: {e}")))?
                .display()
                .to_string(),
        };
        let slurm = Slurm {
            s,
            worker,
            max_array: OnceLock::new(),
            no_accounting: AtomicBool::new(false),
        };
        slurm.command("sbatch", &["--version".into()]).map_err(|e| {
            EngineError::Usage(format!(
                "the slurm executor cannot run `sbatch` ({e}); run expflow where Slurm's commands are (a login node), or set `slurm.ssh` in .expflow/config.yaml"
            ))
        })?;
        Ok(slurm)
    }

    /// Runs a Slurm command (here, or over ssh) and returns its standard output.
    fn command(&self, prog: &str, args: &[String]) -> std::result::Result<String, String> {
        self.command_with_input(prog, args, None)
    }

    /// [`Slurm::command`] with `input` on its standard input (a job script for `sbatch`,
    /// which then need not be a file the login host can read).
    fn command_with_input(
        &self,
        prog: &str,
        args: &[String],
        input: Option<&[u8]>,
    ) -> std::result::Result<String, String> {
        let mut c = match &self.s.ssh {
            Some(host) => {
                let mut c = Command::new("ssh");
                c.args(&self.s.ssh_options).arg(host).arg("--");
                let line: Vec<String> = std::iter::once(prog.to_string())
                    .chain(args.iter().cloned())
                    .map(|a| quote(&a))
                    .collect();
                c.arg(line.join(" "));
                c
            }
            None => {
                let mut c = Command::new(prog);
                c.args(args);
                c
            }
        };
        let out = match input {
            None => c.output(),
            Some(bytes) => c
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write as _;
                    let fed = child.stdin.take().map(|mut i| i.write_all(bytes));
                    let out = child.wait_with_output()?;
                    fed.transpose()?;
                    Ok(out)
                }),
        }
        .map_err(|e| format!("cannot run `{prog}`: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`{prog}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The job script of a batch. In the shared data mode the job reads its task file's
    /// path from `list`; in the object data mode the script holds the task object paths
    /// and the job writes its log into its own workspace (Slurm cannot create the
    /// directory of an `--output` file, and the submitting workspace is not there).
    pub fn script(&self, req: &JobRequest, list: &Path) -> String {
        let n = req.tasks.len();
        let mut l = vec!["#!/bin/bash".to_string()];
        let mut o = |s: String| l.push(format!("#SBATCH {s}"));
        o(format!("--job-name={}", req.name));
        let log = if req.object.is_some() {
            "/dev/null".into()
        } else if n > 1 {
            req.log_dir.join("slurm-%A_%a.out").display().to_string()
        } else {
            req.log_dir.join("slurm-%j.out").display().to_string()
        };
        o(format!("--output={log}"));
        o(format!("--cpus-per-task={}", req.resources.cpus.max(1)));
        if req.resources.mem_gb > 0.0 {
            o(format!(
                "--mem={}M",
                (req.resources.mem_gb * 1024.0).ceil() as u64
            ));
        }
        if let Some(t) = req.time_min {
            o(format!("--time={t}"));
        }
        if req.resources.gpus > 0 {
            o(match self.s.gpu_flag {
                GpuFlag::Gres => format!("--gres=gpu:{}", req.resources.gpus),
                GpuFlag::Gpus => format!("--gpus={}", req.resources.gpus),
            });
        }
        for (flag, v) in [
            ("partition", &self.s.partition),
            ("account", &self.s.account),
            ("qos", &self.s.qos),
        ] {
            if let Some(v) = v {
                o(format!("--{flag}={v}"));
            }
        }
        o(if self.s.requeue {
            "--requeue".into()
        } else {
            "--no-requeue".into()
        });
        if n > 1 {
            let throttle = self
                .s
                .array_parallelism
                .map(|k| format!("%{k}"))
                .unwrap_or_default();
            o(format!("--array=0-{}{throttle}", n - 1));
        }
        for a in &self.s.extra_args {
            o(a.clone());
        }
        l.push("set -e".into());
        let mut args = String::new();
        match &req.object {
            None => {
                l.extend(self.s.setup.iter().cloned());
                l.push(format!(
                    "task=\"$(sed -n \"$(( ${{SLURM_ARRAY_TASK_ID:-0}} + 1 ))p\" {})\"",
                    quote(&list.display().to_string())
                ));
            }
            Some(obj) => {
                l.push(format!("ws=\"{}\"", obj.workspace));
                l.push("mkdir -p \"$ws/logs\"".into());
                l.push(format!("exec >>\"$ws/logs/{}\" 2>&1", object_log_name()));
                l.extend(self.s.setup.iter().cloned());
                let tasks: Vec<String> = req.tasks.iter().map(|t| quote(t)).collect();
                l.push(format!("tasks=({})", tasks.join(" ")));
                l.push("task=\"${tasks[${SLURM_ARRAY_TASK_ID:-0}]}\"".into());
                for a in &obj.worker_args {
                    args.push(' ');
                    args.push_str(&quote(a));
                }
                args.push_str(" --workspace \"$ws\"");
            }
        }
        l.push(format!(
            "exec {} worker{args} \"$task\"",
            quote(&self.worker)
        ));
        l.join("\n") + "\n"
    }

    fn states(&self, run_id: &str) -> std::result::Result<String, String> {
        let use_squeue = match self.s.accounting {
            Accounting::Squeue => true,
            Accounting::Sacct => false,
            Accounting::Auto => self.no_accounting.load(Ordering::Relaxed),
        };
        if !use_squeue {
            let args = [
                "-X",
                "--parsable2",
                "--noheader",
                "--format=JobID,State",
                "--starttime=now-7days",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("--name={run_id}")])
            .collect::<Vec<_>>();
            match self.command("sacct", &args) {
                Ok(out) => return Ok(out),
                Err(e)
                    if self.s.accounting == Accounting::Auto
                        && e.contains("accounting storage is disabled") =>
                {
                    tracing::info!("Slurm accounting is off: reading job states with squeue");
                    self.no_accounting.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        let args = [
            "--noheader".to_string(),
            "--states=all".into(),
            "--format=%i|%T".into(),
            format!("--name={run_id}"),
        ];
        self.command("squeue", &args)
    }
}

impl Executor for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn max_batch(&self) -> usize {
        *self.max_array.get_or_init(|| {
            if let Some(m) = self.s.max_array_size {
                return m.max(1);
            }
            self.command("scontrol", &["show".into(), "config".into()])
                .ok()
                .and_then(|out| max_array_size(&out))
                .unwrap_or(1001)
                .max(1)
        })
    }

    fn submit(&self, req: &JobRequest) -> Result<Vec<Submitted>> {
        std::fs::create_dir_all(&req.jobs_dir).map_err(|e| EngineError::io(&req.jobs_dir, e))?;
        std::fs::create_dir_all(&req.log_dir).map_err(|e| EngineError::io(&req.log_dir, e))?;
        let list = req.jobs_dir.join(format!("batch-{}.tasks", req.batch));
        if req.object.is_none() {
            std::fs::write(&list, req.tasks.join("\n") + "\n")
                .map_err(|e| EngineError::io(&list, e))?;
        }
        let script = req.jobs_dir.join(format!("batch-{}.sh", req.batch));
        let text = self.script(req, &list);
        std::fs::write(&script, &text).map_err(|e| EngineError::io(&script, e))?;
        // The script goes on sbatch's standard input (a copy stays in the run's directory):
        // over ssh the login host need not see this file.
        let out = self
            .command_with_input("sbatch", &["--parsable".into()], Some(text.as_bytes()))
            .map_err(|e| EngineError::Other(format!("cannot submit {}: {e}", script.display())))?;
        let id = out
            .trim()
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(EngineError::Other(format!(
                "sbatch printed `{}`, not a job id",
                out.trim()
            )));
        }
        // In the object data mode the log is on the compute node, in the job's workspace.
        let log_dir = match &req.object {
            Some(obj) => Path::new(&obj.workspace).join("logs"),
            None => req.log_dir.clone(),
        };
        Ok(if req.tasks.len() == 1 {
            vec![Submitted {
                log: log_dir.join(format!("slurm-{id}.out")),
                job: id,
            }]
        } else {
            (0..req.tasks.len())
                .map(|i| Submitted {
                    job: format!("{id}_{i}"),
                    log: log_dir.join(format!("slurm-{id}_{i}.out")),
                })
                .collect()
        })
    }

    fn poll(&self, run_id: &str, _jobs: &[String]) -> Result<HashMap<String, JobState>> {
        let out = self.states(run_id).map_err(EngineError::Other)?;
        Ok(parse_states(&out))
    }

    fn cancel(&self, run_id: &str, jobs: &[String]) -> Result<()> {
        let args: Vec<String> = if jobs.is_empty() {
            vec![format!("--name={run_id}")]
        } else {
            jobs.to_vec()
        };
        self.command("scancel", &args)
            .map(drop)
            .map_err(EngineError::Other)
    }
}

/// The log file name a job of the object data mode writes (`slurm-JOB.out`, or
/// `slurm-ARRAY_INDEX.out` for an array element), as the job's shell expands it.
fn object_log_name() -> &'static str {
    "slurm-${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}.out"
}

/// `MaxArraySize` from `scontrol show config`: array indices go up to one less.
fn max_array_size(config: &str) -> Option<usize> {
    config.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "MaxArraySize").then(|| v.trim().parse::<usize>().ok())?
    })
}

/// Lines `JOBID|STATE` (sacct or squeue) to states. `123_[4-9%2]` (array elements not
/// started yet) gives one entry per element.
pub fn parse_states(out: &str) -> HashMap<String, JobState> {
    let mut states = HashMap::new();
    for line in out.lines() {
        let Some((id, state)) = line.trim().split_once('|') else {
            continue;
        };
        let state = to_state(state);
        match id.split_once("_[") {
            Some((base, rest)) => {
                let ranges = rest.trim_end_matches(']');
                let ranges = ranges.split('%').next().unwrap_or("");
                for r in ranges.split(',') {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                        for i in a..=b.min(a + 100_000) {
                            states.insert(format!("{base}_{i}"), state.clone());
                        }
                    }
                }
            }
            None => {
                states.insert(id.to_string(), state);
            }
        }
    }
    states
}

fn to_state(s: &str) -> JobState {
    // `CANCELLED by 0`: the first word is the state.
    let word = s
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_end_matches('+');
    match word {
        "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" => JobState::Running,
        "COMPLETED" => JobState::Completed,
        "FAILED" | "TIMEOUT" | "OUT_OF_MEMORY" | "DEADLINE" => JobState::Failed(word.into()),
        "CANCELLED" | "PREEMPTED" | "NODE_FAIL" | "BOOT_FAIL" | "REVOKED" => {
            JobState::Interrupted(s.trim().into())
        }
        // PENDING, CONFIGURING, REQUEUED, REQUEUE_HOLD, REQUEUE_FED, RESIZING, SUSPENDED…
        _ => JobState::Pending,
    }
}

/// Single-quotes a word for sh.
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,%@+".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::Resources;

    /// The object data mode's script, run by bash as Slurm would run array element 1 (with
    /// `echo` as the worker): it picks its task, logs into the job's workspace, and names
    /// nothing of the submitting workspace.
    #[test]
    fn an_object_mode_script_runs_its_element_in_its_own_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let slurm = Slurm {
            s: SlurmSettings {
                setup: vec!["echo setup-ran".into()],
                ..SlurmSettings::default()
            },
            worker: "/bin/echo".into(),
            max_array: OnceLock::new(),
            no_accounting: AtomicBool::new(false),
        };
        let req = JobRequest {
            name: "run1".into(),
            tasks: vec![
                "jobs/run1/tasks/a.1.b1.json".into(),
                "jobs/run1/tasks/b c.1.b1.json".into(),
            ],
            resources: Resources::default(),
            time_min: None,
            jobs_dir: "/submit/ws/runs/run1/jobs".into(),
            log_dir: "/submit/ws/runs/run1/logs".into(),
            batch: 1,
            object: Some(super::super::ObjectJob {
                worker_args: vec!["--remote-url".into(), "s3://b/p x".into()],
                workspace: format!("{}/$JOBDIR", dir.path().display()),
            }),
        };
        let script = slurm.script(&req, Path::new("/submit/ws/runs/run1/jobs/batch-1.tasks"));
        assert!(!script.contains("/submit/ws"), "{script}");
        assert!(script.contains("#SBATCH --output=/dev/null"), "{script}");
        assert!(script.contains("#SBATCH --array=0-1"), "{script}");
        let file = dir.path().join("job.sh");
        std::fs::write(&file, &script).unwrap();
        let out = Command::new("bash")
            .arg(&file)
            .env("JOBDIR", "w")
            .env("SLURM_JOB_ID", "8")
            .env("SLURM_ARRAY_JOB_ID", "7")
            .env("SLURM_ARRAY_TASK_ID", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::read_to_string(dir.path().join("w/logs/slurm-7_1.out")).unwrap();
        let ws = dir.path().join("w");
        assert_eq!(
            log,
            format!(
                "setup-ran\nworker --remote-url s3://b/p x --workspace {} jobs/run1/tasks/b c.1.b1.json\n",
                ws.display()
            )
        );
    }

    #[test]
    fn states_of_jobs_and_array_elements() {
        let out = "7|COMPLETED\n8_0|RUNNING\n8_[1-3,5%2]|PENDING\n9|CANCELLED by 0\n10|OUT_OF_MEMORY\n11|PREEMPTED\n";
        let s = parse_states(out);
        assert_eq!(s["7"], JobState::Completed);
        assert_eq!(s["8_0"], JobState::Running);
        for i in [1, 2, 3, 5] {
            assert_eq!(s[&format!("8_{i}")], JobState::Pending);
        }
        assert!(!s.contains_key("8_4"));
        assert_eq!(s["9"], JobState::Interrupted("CANCELLED by 0".into()));
        assert_eq!(s["10"], JobState::Failed("OUT_OF_MEMORY".into()));
        assert!(matches!(s["11"], JobState::Interrupted(_)));
        assert_eq!(
            max_array_size("A = 1\nMaxArraySize            = 1001\n"),
            Some(1001)
        );
        assert_eq!(quote("a b'c"), "'a b'\\''c'");
    }
}
