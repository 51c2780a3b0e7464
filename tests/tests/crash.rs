//! The kill loop: SIGKILL at random moments over runs of a pipeline of 200+ nodes (shell
//! commands, table operators, a per-item memoising inference node, native LoRA training).
//! After every kill: `verify` exits 0, every complete journal line parses, no record names a
//! missing blob (checked by reading the journal and the CAS directly, not only through
//! `verify`), no process of the run survives, and nothing is left in the CAS's temp
//! directory or in scratch space. The next run carries on from what was stored. At the end
//! an uninterrupted run completes and the outputs equal, bit for bit, those of uninterrupted
//! runs elsewhere (the training node among them, resumed after a SIGKILL).
//!
//! `EXPFLOW_KILLS` sets the number of kills (default 20, what CI runs; docs/reliability.md
//! has a run of 100), `EXPFLOW_CRASH_SEED` the seed of the kill times (default: from the
//! clock). The seed is printed, so a failure can be replayed.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use expflow_tests::{
    Project, check_journal, expflow_bin, in_new_session, read_events, records_missing_blobs,
    session_members, tree_bytes,
};
use serde_json::Value;

/// Chains of command → load → table.filter → table.sort: 4 nodes each.
const CHAINS: usize = 50;

/// The pipeline: training first (the scheduler starts lower indices first, so it overlaps the
/// chains), then the chains, their concatenation, and inference on the trained model.
/// `round` changes the chains and a third of the prompts, so every round has work to kill;
/// `train` (the training seed, [`train_of`]) changes every third round.
fn pipeline() -> String {
    let mut y = String::from(
        r#"pipeline: crash
params:
  round: 0
  train: 5
inputs:
  rows: rows.jsonl
nodes:
  base:
    op: train.tiny_model
    in: {text: inputs.rows}
    params: {params: 200000, vocab: 300}
  sft:
    op: train.sft
    in: {data: inputs.rows, model: base.model}
    params: {max_steps: 60, checkpoint_steps: 3, learning_rate: 0.003, lora_rank: 4, lora_alpha: 8, lora_dropout: 0.1, seed: "${params.train}"}
  prompts_gen:
    op: command
    out: {p: file}
    params:
      run: |
        for k in 1 2 3 4 5 6 7 8; do echo "{\"user\": \"step $k: what now?\"}"; done > ${out.p}
        for k in 1 2 3 4; do echo "{\"user\": \"round ${params.round}, question $k\"}"; done >> ${out.p}
  prompts:
    op: load
    in: {src: prompts_gen.p}
  answers:
    op: infer.chat
    in: {prompts: prompts.table, model: sft.model}
    params: {backend: native, temperature: 0, max_tokens: 8, batch_size: 2}
  answers_file:
    op: export
    in: {table: answers.table}
    params: {format: jsonl}
"#,
    );
    for i in 0..CHAINS {
        y.push_str(&format!(
            r#"  gen_{i:03}:
    op: command
    out: {{csv: file}}
    params:
      run: |
        echo id,score,chain > ${{out.csv}}
        for k in 1 2 3 4 5 6 7 8; do echo "$k,$(( (k * {i} + ${{params.round}}) % 7 )),c{i}" >> ${{out.csv}}; done
  load_{i:03}:
    op: load
    in: {{src: gen_{i:03}.csv}}
  keep_{i:03}:
    op: table.filter
    in: {{table: load_{i:03}.table}}
    params: {{where: "score >= 2"}}
  sort_{i:03}:
    op: table.sort
    in: {{table: keep_{i:03}.table}}
    params: {{by: [score, id], descending: [true, false]}}
"#
        ));
    }
    let ins: Vec<String> = (0..CHAINS)
        .map(|i| format!("c{i:03}: sort_{i:03}.table"))
        .collect();
    y.push_str(&format!(
        r#"  all:
    op: table.concat
    in: {{{}}}
  summary:
    op: command
    in: {{t: all.table}}
    out: {{n: file}}
    params:
      run: "wc -c < ${{in.t}} > ${{out.n}}"
outputs:
  out/all.parquet: all.table
  out/summary.txt: summary.n
  out/model: sft.model
  out/sft_metrics.parquet: sft.metrics
  out/answers.jsonl: answers_file.file
"#,
        ins.join(", ")
    ));
    y
}

fn project() -> Project {
    let p = Project::new();
    p.write("crash.yaml", &pipeline());
    let mut rows = String::new();
    for i in 0..6 {
        rows.push_str(&format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"step {i}: what now?\"}}, {{\"role\": \"assistant\", \"content\": \"heat the flask {i} times, then add water\"}}]}}\n"
        ));
    }
    p.write("rows.jsonl", &rows);
    p
}

/// splitmix64: a small seeded generator, so a failing sequence of kill times can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The training seed of round `round`: a new training every third round.
fn train_of(round: u64) -> u64 {
    5 + round / 3
}

/// `--set` arguments of round `round`.
fn sets(round: u64) -> [String; 4] {
    [
        "--set".into(),
        format!("round={round}"),
        "--set".into(),
        format!("train={}", train_of(round)),
    ]
}

/// `expflow run crash.yaml --jobs 2 --set round=R --set train=T` in a session of its own (so that the kill
/// can reach every process the run started), output to `log`.
fn spawn_run(p: &Project, round: u64, log: &Path) -> Child {
    let out = File::create(log).expect("run log");
    let mut cmd = Command::new(expflow_bin());
    cmd.args(["run", "crash.yaml", "--jobs", "2"])
        .args(sets(round))
        .current_dir(p.dir.path())
        .env_remove("EXPFLOW_LOG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out);
    in_new_session(&mut cmd);
    cmd.spawn().expect("start expflow")
}

/// SIGKILL to expflow, then to every other process of its session until none is left (as a
/// job scheduler or an OOM-killed cgroup would). Returns how many others there were.
fn kill_run(child: &mut Child) -> usize {
    let sid = child.id() as i32;
    // SAFETY: kill only sends a signal.
    unsafe { libc::kill(sid, libc::SIGKILL) };
    child.wait().expect("reap expflow");
    let mut others = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = session_members(sid);
        if left.is_empty() {
            return others.len();
        }
        assert!(
            Instant::now() < deadline,
            "processes {left:?} of the killed run do not die"
        );
        for (pid, _) in left {
            others.insert(pid);
            // SAFETY: as above; these are processes of the run's own session.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What the killed run was doing, from its event log and the workspace it left.
fn phases(p: &Project, pid: u32) -> Vec<String> {
    let ws = p.path(".expflow");
    let mut tags = Vec::new();
    if std::fs::read_dir(ws.join("cas/tmp")).is_ok_and(|mut d| d.next().is_some()) {
        tags.push("CAS write in flight (temp file left)".to_string());
    }
    if check_journal(&ws).is_ok_and(|j| j.torn_tail) {
        tags.push("journal append torn".to_string());
    }
    let partial_ckpt = std::fs::read_dir(ws.join("resume"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|k| {
            std::fs::read_dir(k.path().join("native"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|c| c.file_name().to_string_lossy().ends_with(".partial"))
        });
    if partial_ckpt {
        tags.push("training checkpoint being written".to_string());
    }
    let events = std::fs::read_dir(ws.join("runs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|r| read_events(&r.path().join("events.jsonl")))
        .find(|ev| {
            ev.first()
                .is_some_and(|e| e["event"] == "run_started" && e["pid"] == pid)
        });
    let Some(events) = events else {
        tags.push("start-up (opening the workspace, replaying the journal)".to_string());
        return tags;
    };
    let total = events[0]["nodes"].as_u64().unwrap_or(0) as usize;
    let mut running = BTreeMap::new();
    let mut decided = 0;
    let mut finished = false;
    for e in &events {
        let node = e["node"].as_str().unwrap_or_default().to_string();
        match e["event"].as_str().unwrap_or_default() {
            "node_started" => {
                running.insert(node, ());
            }
            "node_executed" | "node_failed" => {
                running.remove(&node);
                decided += 1;
            }
            "node_cached" | "node_skipped" => decided += 1,
            "run_finished" => finished = true,
            _ => {}
        }
    }
    for node in running.keys() {
        let what = if node.starts_with("gen_") || node == "summary" || node == "prompts_gen" {
            "a command node running"
        } else if node == "base" {
            "train.tiny_model running"
        } else if node == "sft" {
            "train.sft running (an epoch)"
        } else if node == "answers" {
            "infer.chat running (per-item memo writes)"
        } else {
            "a table/io operator running"
        };
        tags.push(what.to_string());
    }
    if running.is_empty() {
        tags.push(if finished {
            "after the run finished (exiting)".to_string()
        } else if decided >= total {
            "end of run (run record, sled flush, materialising outputs)".to_string()
        } else {
            "between nodes (cache checks, records, scheduling)".to_string()
        });
    }
    tags.sort();
    tags.dedup();
    tags
}

/// A checkpoint of the training node exists.
fn checkpoint_exists(p: &Project) -> bool {
    std::fs::read_dir(p.path(".expflow/resume"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|k| {
            std::fs::read_dir(k.path().join("native"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|c| !c.file_name().to_string_lossy().ends_with(".partial"))
        })
}

/// The checks after every kill.
fn check_after_kill(p: &Project, kill: usize, seed: u64) {
    let ws = p.path(".expflow");
    let journal = check_journal(&ws)
        .unwrap_or_else(|e| panic!("kill {kill} (seed {seed}): the journal does not parse: {e}"));
    let missing = records_missing_blobs(&ws, &journal);
    assert!(
        missing.is_empty(),
        "kill {kill} (seed {seed}): records name missing blobs: {missing:#?}"
    );
    let v = p.expflow(&["verify", "--json"]);
    assert_eq!(
        v.status.code(),
        Some(0),
        "kill {kill} (seed {seed}): verify: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let report: Value = serde_json::from_slice(&v.stdout).expect("verify --json");
    assert_eq!(report["ok"], true, "{report}");
    // verify opened the workspace, which clears what a killed run leaves half-written.
    for leftover in ["cas/tmp", "scratch"] {
        let left: Vec<_> = std::fs::read_dir(ws.join(leftover))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(
            left.is_empty(),
            "kill {kill} (seed {seed}): left in {leftover}: {left:?}"
        );
    }
}

fn run_to_completion(p: &Project, round: u64) -> Duration {
    let t = Instant::now();
    let sets = sets(round);
    let mut args = vec!["--jobs", "2"];
    args.extend(sets.iter().map(String::as_str));
    let r = p.run("crash.yaml", &args);
    r.expect_code(0);
    t.elapsed()
}

fn plan_keys(p: &Project, round: u64) -> Vec<(String, String, String)> {
    let sets = sets(round);
    let mut args = vec!["plan", "crash.yaml", "--json"];
    args.extend(sets.iter().map(String::as_str));
    let out = p.expflow(&args);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).expect("plan --json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_string(),
                e["key"].as_str().unwrap_or_default().to_string(),
                e["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn assert_same_outputs(got: &Project, want: &Project, what: &str) {
    let (g, w) = (tree_bytes(&got.path("out")), tree_bytes(&want.path("out")));
    assert_eq!(
        g.keys().collect::<Vec<_>>(),
        w.keys().collect::<Vec<_>>(),
        "{what}: the output files differ"
    );
    for (name, bytes) in &w {
        assert!(g[name] == *bytes, "{what}: {name} differs");
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_ends_with_the_same_bytes() {
    let kills: usize = std::env::var("EXPFLOW_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("EXPFLOW_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("kill loop: {kills} kills, seed {seed} (EXPFLOW_CRASH_SEED={seed} replays it)");
    let started = Instant::now();

    // Uninterrupted references: round 0 from scratch, then round 1 (training cached).
    let reference = project();
    let full = run_to_completion(&reference, 0);
    let ref_round0 = tree_bytes(&reference.path("out"));
    let later = run_to_completion(&reference, 1);
    println!(
        "uninterrupted: a round from scratch {:.1} s, a later round {:.1} s",
        full.as_secs_f64(),
        later.as_secs_f64()
    );

    let p = project();
    let logs = tempfile::tempdir().expect("log dir");
    let mut rng = Rng(seed);
    let mut round = 0u64;
    let mut done = 0usize;
    let mut completed_runs = 0usize;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut attempts = 0usize;
    while done < kills {
        attempts += 1;
        assert!(
            attempts < kills * 4 + 20,
            "too many runs completed before their kill (seed {seed})"
        );
        let log = logs.path().join(format!("run-{attempts}.log"));
        let mut child = spawn_run(&p, round, &log);
        let t0 = Instant::now();
        // The first kill lands while the training node has a checkpoint (so a resumed
        // training is always among what the final comparison covers); the others at a random
        // moment of a run's expected length.
        let sft_recorded = check_journal(&p.path(".expflow")).is_ok_and(|j| {
            j.records
                .values()
                .any(|r| r["node"] == "sft" && r["material"]["params"]["seed"] == train_of(round))
        });
        let limit = if sft_recorded { later } else { full };
        let delay = limit.mul_f64(rng.unit());
        let targeted = done == 0;
        let exited = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break Some(status);
            }
            let due = if targeted {
                checkpoint_exists(&p)
            } else {
                t0.elapsed() >= delay
            };
            if due {
                break None;
            }
            std::thread::sleep(Duration::from_millis(if targeted { 5 } else { 1 }));
        };
        if let Some(status) = exited {
            assert!(
                status.success(),
                "run {attempts} (round {round}, seed {seed}) failed: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            completed_runs += 1;
            round += 1;
            continue;
        }
        let children = kill_run(&mut child);
        done += 1;
        let tags = phases(&p, child.id());
        println!(
            "kill {done} at {:.2} s of run {attempts} (round {round}), {children} child processes: {}",
            t0.elapsed().as_secs_f64(),
            tags.join("; ")
        );
        for t in tags {
            *seen.entry(t).or_default() += 1;
        }
        check_after_kill(&p, done, seed);
    }

    // The next run completes, and so does the round-0 run, from what the killed runs stored.
    run_to_completion(&p, round);
    let v = p.expflow(&["verify"]);
    assert_eq!(v.status.code(), Some(0));
    run_to_completion(&reference, round);
    assert_same_outputs(&p, &reference, &format!("round {round}"));
    run_to_completion(&p, 0);
    let got0 = tree_bytes(&p.path("out"));
    assert_eq!(
        got0.keys().collect::<Vec<_>>(),
        ref_round0.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &ref_round0 {
        assert!(got0[name] == *bytes, "round 0: {name} differs");
    }
    // Every node's key (so every upstream output digest) is the same as in the reference.
    let (got_keys, want_keys) = (plan_keys(&p, 0), plan_keys(&reference, 0));
    assert_eq!(got_keys, want_keys);
    assert!(got_keys.iter().all(|(_, _, state)| state == "cached"));

    // The training node was killed with a checkpoint and resumed from it.
    let resumed = std::fs::read_dir(p.path(".expflow/runs"))
        .expect("runs")
        .flatten()
        .filter(|r| {
            std::fs::read_to_string(r.path().join("logs/sft.log"))
                .is_ok_and(|l| l.contains("resuming from the checkpoint"))
        })
        .count();
    assert!(resumed >= 1, "the training node never resumed");
    let memo_hits: u64 = std::fs::read_dir(p.path(".expflow/runs"))
        .expect("runs")
        .flatten()
        .flat_map(|r| read_events(&r.path().join("events.jsonl")))
        .filter(|e| e["event"] == "node_executed" && e["node"] == "answers")
        .map(|e| e["memo_hits"].as_u64().unwrap_or(0))
        .sum();

    println!(
        "done: {done} kills, {completed_runs} runs completed before their kill, {} rounds, \
         training resumed {resumed} time(s), {memo_hits} inference items reused from the memo, \
         {:.0} s in all",
        round + 1,
        started.elapsed().as_secs_f64()
    );
    println!("where the kills landed:");
    for (tag, n) in &seen {
        println!("  {n:4}  {tag}");
    }
}
