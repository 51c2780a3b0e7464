//! The Slurm executor against a real Slurm (`.ci/run` starts one with
//! `scripts/slurm-ci.sh`: one node, two fake GPUs, accounting). Without one these tests
//! skip, and under CI=true they fail.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use expflow_tests::{Project, expflow_bin, skip::skip_or_fail};

/// Whether Slurm answers here (`sinfo` reports an idle or mixed node).
fn slurm() -> bool {
    let ok = Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if !ok {
        skip_or_fail(
            "no running Slurm (`sinfo` fails); `.ci/run` starts one with scripts/slurm-ci.sh and exports SLURM_CONF",
        );
    }
    ok
}

/// A project whose workspace polls Slurm often (tests, not a cluster).
fn project() -> Project {
    let p = Project::new();
    p.write(
        ".expflow/config.yaml",
        "executor: slurm\nslurm:\n  poll_interval_s: 0.3\n  result_grace_s: 2\n",
    );
    p
}

fn run_id(p: &Project) -> String {
    let mut ids: Vec<String> = std::fs::read_dir(p.path(".expflow/runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids.pop().expect("a run")
}

/// `NODE\tATTEMPT\tJOB` lines of the run's jobs.tsv.
fn jobs(p: &Project, run: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(p.path(&format!(".expflow/runs/{run}/jobs/jobs.tsv")))
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 3).then(|| (f[0].to_string(), f[2].to_string()))
        })
        .collect()
}

/// `sacct` lines `JOBID|STATE` of a run, once `want` of them are complete (accounting
/// lags the jobs by a moment).
fn sacct(run: &str, want: usize) -> Vec<(String, String)> {
    let started = Instant::now();
    loop {
        let out = Command::new("sacct")
            .args(["-X", "--parsable2", "--noheader", "--format=JobID,State"])
            .arg(format!("--name={run}"))
            .arg("--starttime=now-1days")
            .output()
            .unwrap();
        let lines: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let done = lines
            .iter()
            .filter(|(_, s)| s != "PENDING" && s != "RUNNING")
            .count();
        if done >= want || started.elapsed() > Duration::from_secs(60) {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn squeue_state(job: &str) -> String {
    let out = Command::new("squeue")
        .args(["--noheader", "--states=all", "--format=%T", "-j", job])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn copy_demo(p: &Project) {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../pipelines"));
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::copy(root.join("demo.yaml"), p.path("demo.yaml")).unwrap();
    std::fs::copy(root.join("data/runs.csv"), p.path("data/runs.csv")).unwrap();
}

#[test]
fn the_demo_pipeline_runs_on_slurm_with_the_same_results_as_locally() {
    if !slurm() {
        return;
    }
    let p = project();
    copy_demo(&p);
    let r = p.run("demo.yaml", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = run_id(&p);
    let submitted = jobs(&p, &run);
    let executed = r.summary["executed"].as_array().unwrap().len();
    assert_eq!(submitted.len(), executed, "one job per executed node");
    // Every job finished in Slurm's accounting.
    let acct = sacct(&run, executed);
    assert!(acct.iter().all(|(_, s)| s == "COMPLETED"), "{acct:?}");
    // The same pipeline run here gives the same bytes.
    let q = Project::new();
    copy_demo(&q);
    let l = q.run("demo.yaml", &["--executor", "local"]);
    assert_eq!(l.code, 0, "{}", l.stderr);
    assert_eq!(p.read("results/top.jsonl"), q.read("results/top.jsonl"));
    assert_eq!(p.read("results/count.txt"), q.read("results/count.txt"));
    assert!(
        jobs(&q, &run_id(&q)).is_empty(),
        "--executor local submits nothing"
    );
    // Records were written by the coordinator: the next run executes nothing.
    let again = p.run("demo.yaml", &[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.summary["executed"].as_array().unwrap().is_empty());
}

#[test]
fn a_twenty_point_matrix_is_one_job_array() {
    if !slurm() {
        return;
    }
    let p = project();
    let points: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    p.write(
        "m.yaml",
        &format!(
            "pipeline: m\nnodes:\n  sweep:\n    op: command\n    matrix: {{i: [{}]}}\n    out: {{o: file}}\n    params:\n      run: \"echo ${{matrix.i}} $SLURM_ARRAY_JOB_ID > ${{out.o}}\"\n",
            points.join(", ")
        ),
    );
    let r = p.run("m.yaml", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary["executed"].as_array().unwrap().len(), 20);
    let run = run_id(&p);
    let acct = sacct(&run, 20);
    assert_eq!(acct.len(), 20, "{acct:?}");
    let arrays: std::collections::BTreeSet<&str> = acct
        .iter()
        .map(|(id, _)| id.split_once('_').expect("an array element").0)
        .collect();
    assert_eq!(arrays.len(), 1, "one array job: {acct:?}");
    assert!(acct.iter().all(|(_, s)| s == "COMPLETED"), "{acct:?}");
    // Each point ran inside that array (its output says so).
    let array = *arrays.iter().next().unwrap();
    let show = p.expflow(&["show", "sweep[i=7].o"]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains(&format!("7 {array}")), "{text}");
}

#[test]
fn gpus_are_pinned_by_slurm_through_cuda_visible_devices() {
    if !slurm() {
        return;
    }
    let p = project();
    p.write(
        "g.yaml",
        "pipeline: g\nnodes:\n  one:\n    op: command\n    out: {o: file}\n    resources: {gpus: 1}\n    params:\n      run: \"echo $CUDA_VISIBLE_DEVICES > ${out.o}\"\n  two:\n    op: command\n    out: {o: file}\n    resources: {gpus: 2}\n    params:\n      run: \"echo $CUDA_VISIBLE_DEVICES > ${out.o}; true\"\noutputs:\n  one.txt: one.o\n  two.txt: two.o\n",
    );
    // No GPU here: the GPUs are Slurm's (gres), so the run must not need local ones.
    let r = p.run_with_env("g.yaml", &[], &[("EXPFLOW_GPUS", "")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let one = p.read("one.txt");
    assert!(["0", "1"].contains(&one.trim()), "{one}");
    assert_eq!(p.read("two.txt").trim(), "0,1");
}

#[test]
fn a_job_cancelled_from_outside_is_submitted_again() {
    if !slurm() {
        return;
    }
    let p = project();
    let ran = p.path("ran");
    p.write(
        "c.yaml",
        &format!(
            "pipeline: c\nnodes:\n  slow:\n    op: command\n    out: {{o: file}}\n    params:\n      run: \"echo x >> {}; sleep 4; echo done > ${{out.o}}\"\n",
            ran.display()
        ),
    );
    let child = Command::new(expflow_bin())
        .args(["run", "c.yaml"])
        .current_dir(p.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the run", 30, || p.path(".expflow/runs").is_dir());
    let run = run_id(&p);
    let mut first = String::new();
    wait_for("the job to run", 60, || {
        if let Some((_, j)) = jobs(&p, &run).first() {
            first = j.clone();
        }
        !first.is_empty() && squeue_state(&first) == "RUNNING" && ran.exists()
    });
    let st = Command::new("scancel").arg(&first).status().unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let submitted = jobs(&p, &run);
    assert_eq!(submitted.len(), 2, "{submitted:?}");
    assert_ne!(submitted[0].1, submitted[1].1);
    assert_eq!(std::fs::read_to_string(&ran).unwrap().lines().count(), 2);
}

#[test]
fn a_failing_job_fails_its_node_with_the_log_tail() {
    if !slurm() {
        return;
    }
    let p = project();
    p.write(
        "f.yaml",
        "pipeline: f\nnodes:\n  bad:\n    op: command\n    out: {o: file}\n    params:\n      run: \"echo the-last-words-of-bad; exit 3\"\n  after:\n    op: command\n    in: {x: bad.o}\n    out: {o: file}\n    params:\n      run: \"cp ${in.x} ${out.o}\"\n",
    );
    let r = p.run("f.yaml", &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.summary["failed"], serde_json::json!(["bad"]));
    assert_eq!(r.summary["skipped"], serde_json::json!(["after"]));
    let err = r
        .events
        .iter()
        .find(|e| e["event"] == "node_failed")
        .map(|e| e["error"].as_str().unwrap_or("").to_string())
        .unwrap();
    assert!(err.contains("the-last-words-of-bad"), "{err}");
    assert!(err.contains("slurm job"), "{err}");
    // Nothing recorded: a second run executes it again (and fails again).
    assert_eq!(p.run("f.yaml", &[]).code, 1);
}

#[test]
fn ctrl_c_cancels_the_runs_jobs() {
    if !slurm() {
        return;
    }
    let p = project();
    p.write(
        "l.yaml",
        "pipeline: l\nnodes:\n  long:\n    op: command\n    matrix: {i: [1, 2]}\n    out: {o: file}\n    params:\n      run: \"sleep 120; echo ${matrix.i} > ${out.o}\"\n",
    );
    let child = Command::new(expflow_bin())
        .args(["run", "l.yaml"])
        .current_dir(p.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the run", 30, || p.path(".expflow/runs").is_dir());
    let run = run_id(&p);
    wait_for("the jobs to run", 60, || {
        let j = jobs(&p, &run);
        j.len() == 2 && j.iter().all(|(_, id)| squeue_state(id) == "RUNNING")
    });
    let started = Instant::now();
    // SAFETY: kill(2) on the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    for (_, id) in jobs(&p, &run) {
        wait_for("the job to be cancelled", 30, || {
            squeue_state(&id).starts_with("CANCELLED")
        });
    }
    // Nothing was recorded.
    let again = p.expflow(&["plan", "l.yaml", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert!(plan.as_array().unwrap().iter().all(|n| n["state"] == "run"));
}

#[test]
fn an_unknown_executor_is_an_error_naming_the_place() {
    let p = Project::new();
    p.write(
        "x.yaml",
        "pipeline: x\nnodes:\n  a:\n    op: command\n    executor: pbs\n    out: {o: file}\n    params:\n      run: \"echo > ${out.o}\"\n",
    );
    let out = p.expflow(&["plan", "x.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("x.yaml:5:") && err.contains("local, slurm"),
        "{err}"
    );
    p.write(
        "y.yaml",
        "pipeline: y\nnodes:\n  a:\n    op: command\n    out: {o: file}\n    params:\n      run: \"echo > ${out.o}\"\n",
    );
    let out = p.expflow(&["run", "y.yaml", "--executor", "pbs"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--executor pbs"));
    p.write(".expflow/config.yaml", "slurm:\n  partiton: debug\n");
    let out = p.expflow(&["run", "y.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.yaml") && err.contains("partiton"),
        "{err}"
    );
}
