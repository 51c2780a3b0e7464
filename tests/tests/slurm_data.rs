//! Data on a real Slurm (`.ci/run` starts one with `scripts/slurm-ci.sh` and a moto S3
//! server): the object data mode, where jobs run in a workspace of their own and only the
//! S3 remote connects them to the submitting workspace; and the data stages of both
//! shipped pipelines (`pipelines/expstar.yaml`, `pipelines/macbench.yaml`) run as Slurm
//! jobs with the same bytes as a local run. Without Slurm (or S3) these tests skip, and
//! under CI=true they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use expflow_tests::{Project, RunResult, blobs, s3, skip::skip_or_fail};

/// Whether Slurm answers here.
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

/// The executor settings of a test workspace (polls often: tests, not a cluster).
const FAST: &str = "executor: slurm\nslurm:\n  poll_interval_s: 0.3\n  result_grace_s: 2\n";

/// Output digests of each executed node, from the run's events.
fn outputs(r: &RunResult) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in r.events.iter().filter(|e| e["event"] == "node_executed") {
        for d in e["outputs"].as_object().unwrap().values() {
            out.push((
                e["node"].as_str().unwrap().to_string(),
                d.as_str().unwrap().to_string(),
            ));
        }
    }
    out.sort();
    out
}

fn has_blob(cas_parent: &Path, digest: &str) -> bool {
    blobs(cas_parent)
        .iter()
        .any(|b| b.file_name().is_some_and(|n| n == digest))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn in_the_object_data_mode_jobs_share_only_the_s3_remote_with_the_submitting_workspace() {
    if !slurm() {
        return;
    }
    let Some(endpoint) = s3::endpoint() else {
        return;
    };
    let cfg = tempfile::tempdir().unwrap();
    let worker = tempfile::tempdir().unwrap();
    let worker_ws = worker.path().join("ws");
    let p = Project::new();
    p.write("objects.yaml", &s3::chain_pipeline("objects"));
    p.write("data.txt", "alpha\nbeta\n");
    p.write(
        ".expflow/config.yaml",
        &format!(
            "{FAST}  data: object\n  worker_workspace: {}\n",
            worker_ws.display()
        ),
    );
    let prefix = s3::unique("objmode");
    let cfg_dir = cfg.path().display().to_string();
    let envs = [
        ("EXPFLOW_CONFIG_DIR", cfg_dir.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    let url = format!("s3://{}/{prefix}", s3::BUCKET);
    let add = p.expflow_with_env(
        &[
            "--workspace",
            ".expflow",
            "remote",
            "add",
            "team",
            &url,
            "--endpoint",
            &endpoint,
        ],
        &envs,
    );
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );

    // Without a remote the mode cannot work: an error saying what to add.
    let no_remote = p.run_with_env("objects.yaml", &[], &envs);
    assert_eq!(no_remote.code, 2, "{}", no_remote.stderr);
    assert!(
        no_remote.stderr.contains("--remote NAME"),
        "{}",
        no_remote.stderr
    );

    let r = p.run_with_env("objects.yaml", &["--remote", "team"], &envs);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut executed = r.executed();
    executed.sort();
    assert_eq!(executed, ["a", "b", "c"]);
    let run = r.summary["run_id"].as_str().unwrap().to_string();

    // The jobs were told nothing about the submitting workspace: neither the scripts sbatch
    // got nor the task objects name it.
    let project_dir = p.dir.path().display().to_string();
    let scripts: Vec<PathBuf> = files_under(&p.path(&format!(".expflow/runs/{run}/jobs")))
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "sh"))
        .collect();
    assert!(!scripts.is_empty());
    for s in &scripts {
        let text = std::fs::read_to_string(s).unwrap();
        assert!(!text.contains(&project_dir), "{}:\n{text}", s.display());
        assert!(
            text.contains("--remote-url") && text.contains("--output=/dev/null"),
            "{text}"
        );
    }
    let tasks = s3::keys(&endpoint, &format!("{prefix}/jobs/{run}/tasks/"));
    let results = s3::keys(&endpoint, &format!("{prefix}/jobs/{run}/results/"));
    assert_eq!(tasks.len(), 3, "{tasks:?}");
    assert_eq!(results.len(), 3, "{results:?}");
    // The tasks as uploaded (a copy stays in the run's directory).
    let copies = files_under(&p.path(&format!(".expflow/runs/{run}/tasks")));
    assert_eq!(copies.len(), 3, "{copies:?}");
    for t in &copies {
        let body = std::fs::read_to_string(t).unwrap();
        assert!(!body.contains(&project_dir), "{body}");
    }

    // The jobs ran in their own workspace: the outputs were made there and reached the
    // submitting workspace through S3 (where every blob now is).
    let outs = outputs(&r);
    assert_eq!(outs.len(), 3, "{outs:?}");
    let remote_blobs = s3::keys(&endpoint, &format!("{prefix}/blobs/"));
    for (node, d) in &outs {
        assert!(
            has_blob(&worker_ws, d),
            "{node}: {d} not in the job workspace"
        );
        assert!(
            has_blob(&p.path(".expflow"), d),
            "{node}: {d} not downloaded"
        );
        assert!(
            remote_blobs.iter().any(|k| k.ends_with(d.as_str())),
            "{node}: {d} not on the remote"
        );
    }
    let job_logs: Vec<PathBuf> = files_under(&worker_ws.join("logs"));
    assert_eq!(job_logs.len(), 3, "{job_logs:?}");
    assert!(
        files_under(&p.path(&format!(".expflow/runs/{run}/logs")))
            .iter()
            .all(|f| !f
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("slurm-")),
        "no job log in the submitting workspace"
    );

    // The same bytes as a local run, and the records were committed: a second run
    // executes nothing.
    let q = Project::new();
    q.write("objects.yaml", &s3::chain_pipeline("objects"));
    q.write("data.txt", "alpha\nbeta\n");
    let l = q.run("objects.yaml", &["--executor", "local"]);
    assert_eq!(l.code, 0, "{}", l.stderr);
    assert_eq!(p.read("out/c.txt"), q.read("out/c.txt"));
    assert_eq!(outputs(&l), outs);
    let again = p.run_with_env("objects.yaml", &["--remote", "team"], &envs);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.executed().is_empty(), "{:?}", again.executed());

    // A node failing in its job fails with its log's tail, which came back in the result.
    p.write(
        "bad.yaml",
        "pipeline: bad\nnodes:\n  bad:\n    op: command\n    out: {o: file}\n    params: {run: \"echo boom-4711 >&2; exit 3\"}\n",
    );
    let bad = p.run_with_env("bad.yaml", &["--remote", "team"], &envs);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    let err: String = bad
        .events
        .iter()
        .filter(|e| e["event"] == "node_failed")
        .map(|e| e["error"].to_string())
        .collect();
    assert!(err.contains("boom-4711"), "{err}");
    assert_eq!(bad.summary["failed"], serde_json::json!(["bad"]));

    // `--data shared` wins over the config: the job then writes into this workspace.
    p.write("data.txt", "gamma\n");
    let shared = p.run_with_env("objects.yaml", &["--data", "shared"], &envs);
    assert_eq!(shared.code, 0, "{}", shared.stderr);
    let run2 = shared.summary["run_id"].as_str().unwrap().to_string();
    assert!(s3::keys(&endpoint, &format!("{prefix}/jobs/{run2}/")).is_empty());
    assert!(
        files_under(&p.path(&format!(".expflow/runs/{run2}/logs")))
            .iter()
            .any(|f| f
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("slurm-"))
    );
}

fn pipelines() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../pipelines"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Runs `targets` of a shipped pipeline on Slurm and locally; every node executes as a job
/// and the two give the same output digests. Returns the Slurm run.
fn data_stage_on_slurm(setup: impl Fn(&Project), file: &str, targets: &[&str]) -> RunResult {
    let mut args = Vec::new();
    for t in targets {
        args.extend(["--target", *t]);
    }
    let p = Project::new();
    setup(&p);
    p.write(".expflow/config.yaml", FAST);
    let r = p.run(file, &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = r.summary["run_id"].as_str().unwrap();
    let jobs = std::fs::read_to_string(p.path(&format!(".expflow/runs/{run}/jobs/jobs.tsv")))
        .unwrap_or_default();
    let mut submitted: Vec<String> = jobs
        .lines()
        .filter_map(|l| l.split('\t').next().map(str::to_string))
        .collect();
    submitted.sort();
    let mut executed = r.executed();
    executed.sort();
    assert!(!executed.is_empty());
    assert_eq!(submitted, executed, "every executed node was a Slurm job");
    let q = Project::new();
    setup(&q);
    let mut local = args.clone();
    local.extend(["--executor", "local"]);
    let l = q.run(file, &local);
    assert_eq!(l.code, 0, "{}", l.stderr);
    assert_eq!(outputs(&r), outputs(&l), "Slurm and local runs differ");
    r
}

#[test]
fn the_expstar_data_stages_run_on_slurm_with_the_same_bytes_as_locally() {
    if !slurm() {
        return;
    }
    if Command::new("ffmpeg").arg("-version").output().is_err() {
        skip_or_fail("ffmpeg is missing (`.ci/run` installs it); the clips stage needs it");
        return;
    }
    let setup = |p: &Project| {
        std::fs::copy(pipelines().join("expstar.yaml"), p.path("expstar.yaml")).unwrap();
        copy_dir(&pipelines().join("expstar-demo"), &p.path("expstar-demo"));
    };
    // Stages A–D: scan, cut clips (ffmpeg in the job), rows, split, retrieval from the
    // corpus and its judged passages (the tiny judge model, made from the corpus), RAG, the
    // training-data exports of both arms; no trained model (the DPO pairs need candidates
    // sampled from the SFT model).
    let r = data_stage_on_slurm(
        setup,
        "expstar.yaml",
        &[
            "llamafactory_sft",
            "swift_baseline",
            "baseline_train_jsonl",
            "expstar_test_jsonl",
            "eval_rows_jsonl",
            "retrieved",
        ],
    );
    let executed = r.executed();
    for node in [
        "scan", "clips", "rag", "baseline", "corpus", "kb_index", "hits", "judged",
    ] {
        assert!(executed.iter().any(|n| n == node), "{node}: {executed:?}");
    }
    assert!(!executed.iter().any(|n| n == "base" || n == "sft"));
}

#[test]
fn the_macbench_data_stages_run_on_slurm_with_the_same_bytes_as_locally() {
    if !slurm() {
        return;
    }
    let setup = |p: &Project| {
        std::fs::copy(pipelines().join("macbench.yaml"), p.path("macbench.yaml")).unwrap();
        copy_dir(&pipelines().join("data/macbench"), &p.path("data/macbench"));
    };
    // Loading the task's six files, recombination, hard distractors (the tiny CLIP of the
    // pipeline's data), option permutation, templates and the LLaMA-Factory datasets (with
    // their images) of every recipe and of the test sets; no generative model.
    let r = data_stage_on_slurm(setup, "macbench.yaml", &["dataset", "test_ds"]);
    let executed = r.executed();
    for node in [
        "train",
        "test_i2t",
        "recombined",
        "hardened",
        "permuted",
        "train_all",
        "dataset",
        "test_ds",
    ] {
        let point = format!("{node}[");
        assert!(
            executed.iter().any(|n| n == node || n.starts_with(&point)),
            "{node}: {executed:?}"
        );
    }
    assert!(
        !executed
            .iter()
            .any(|n| n == "base" || n == "sft" || n.starts_with("sft["))
    );
}
