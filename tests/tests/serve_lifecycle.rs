//! Served models with a lifecycle, for real: a `serve.model` node describes two `expflow
//! serve` replicas of the tiny fixture; the `infer.chat` node that takes its endpoint starts
//! them on free ports, health-checks them, asks them, and stops their process groups when it
//! is done, or when it fails. Answers are memoised under the model's digest, so a re-run on
//! new ports asks nothing.

use std::process::Command;

use expflow_tests::server::fixture;
use expflow_tests::{Project, expflow_bin, in_new_session, read_events, session_members};
use serde_json::Value;

const PIPE: &str = r#"
pipeline: served_lifecycle
params:
  concurrency: 2
  served: tiny
inputs:
  prompts: prompts.jsonl
  model: MODEL
nodes:
  prompts:
    op: load
    in: {src: inputs.prompts}
  model:
    op: command
    in: {src: inputs.model}
    out: {dir: model}
    params: {run: "mkdir -p ${out.dir} && cp -r ${in.src}/. ${out.dir}"}
  serve:
    op: serve.model
    in: {model: model.dir}
    params: {engine: expflow, replicas: 2, served_name: tiny, health_timeout_s: 120}
  chat:
    op: infer.chat
    in: {prompts: prompts.table, endpoint: serve.endpoint}
    params: {backend: openai, model: "${params.served}", max_tokens: 6, concurrency: "${params.concurrency}"}
  native:
    op: infer.chat
    in: {prompts: prompts.table, model: model.dir}
    params: {backend: native, max_tokens: 6, batch_size: 1}
  answers:
    op: export
    in: {table: chat.table}
    params: {format: jsonl}
  native_answers:
    op: export
    in: {table: native.table}
    params: {format: jsonl}
outputs:
  out/answers.jsonl: answers.file
  out/native.jsonl: native_answers.file
"#;

/// `expflow run pipe.yaml --json EXTRA` in a session of its own; (exit code, events, live
/// processes of the session once it has exited).
fn run(p: &Project, extra: &[&str]) -> (i32, Vec<Value>, Vec<(i32, String)>, String) {
    let mut cmd = Command::new(expflow_bin());
    cmd.args(["run", "pipe.yaml", "--json"])
        .args(extra)
        .current_dir(p.path(""))
        .env_remove("EXPFLOW_LOG");
    in_new_session(&mut cmd);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start expflow run");
    let sid = child.id() as i32;
    let out = child.wait_with_output().expect("wait for expflow run");
    // The run has exited: whatever it started must be gone too (give exit a moment).
    let mut left = session_members(sid);
    for _ in 0..20 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = session_members(sid);
    }
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let events = summary["run_id"]
        .as_str()
        .map(|id| read_events(&p.path(&format!(".expflow/runs/{id}/events.jsonl"))))
        .unwrap_or_default();
    (
        out.status.code().unwrap_or(-1),
        events,
        left,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn log_of(p: &Project, node: &str) -> String {
    let out = p.expflow(&["log", node, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("expflow log --json");
    v["log"].as_str().unwrap_or_default().to_string()
}

fn executed<'a>(events: &'a [Value], node: &str) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| e["event"] == "node_executed" && e["node"] == node)
}

fn rows(p: &Project, rel: &str) -> Vec<Value> {
    p.read(rel)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn replicas_serve_the_node_and_stop_with_it() {
    let p = Project::new();
    p.write(
        "pipe.yaml",
        &PIPE.replace("MODEL", &fixture("tiny").to_string_lossy()),
    );
    let prompts = [
        "hello",
        "heat the tube",
        "add yeast",
        "stir it",
        "weigh the flask",
    ];
    p.write(
        "prompts.jsonl",
        &prompts
            .iter()
            .map(|q| format!("{{\"user\": \"{q}\"}}\n"))
            .collect::<String>(),
    );

    let (code, events, left, stderr) = run(&p, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(left.is_empty(), "processes outlived the run: {left:?}");
    // Served and native answers agree (greedy, same runtime): the answers came through the
    // endpoint's servers.
    let (served, native) = (rows(&p, "out/answers.jsonl"), rows(&p, "out/native.jsonl"));
    assert_eq!(served.len(), prompts.len());
    for (s, n) in served.iter().zip(&native) {
        assert_eq!(s["response"], n["response"], "{s} vs {n}");
    }
    let log = log_of(&p, "chat");
    for r in 0..2 {
        assert!(
            log.contains(&format!("replica {r} is up at http://127.0.0.1:")),
            "{log}"
        );
        assert!(log.contains(&format!("replica {r} stopped")), "{log}");
        // The server's own output is in the node's log.
        assert!(log.contains(&format!("[replica {r}]")), "{log}");
    }
    let first = executed(&events, "chat").expect("chat ran");
    assert_eq!(first["memo_misses"], prompts.len() as u64, "{first}");

    // Another node key (concurrency), new servers on new ports: every answer from the memo.
    let (code, events, left, stderr) = run(&p, &["--set", "concurrency=1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(left.is_empty(), "processes outlived the run: {left:?}");
    let second = executed(&events, "chat").expect("chat ran again");
    assert_eq!(second["memo_hits"], prompts.len() as u64, "{second}");
    assert_eq!(second["memo_misses"], 0, "{second}");
    assert_eq!(rows(&p, "out/answers.jsonl"), served);

    // Nothing changed: the node is cached and no server starts.
    let (code, events, left, stderr) = run(&p, &["--set", "concurrency=1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(left.is_empty(), "{left:?}");
    assert!(executed(&events, "chat").is_none(), "chat is cached");

    // The node fails once its servers are up (it asks for a model they do not serve): the
    // run fails and the servers go with it.
    let (code, _, left, stderr) = run(&p, &["--set", "served=nosuch"]);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("nosuch"), "{stderr}");
    assert!(
        left.is_empty(),
        "processes outlived the failed run: {left:?}"
    );
    let log = log_of(&p, "chat");
    assert!(log.contains("replica 1 stopped"), "{log}");
}

/// The first `.expflow/runs/*/logs/NODE.log` that exists, read whole ("" while none does).
fn live_log(p: &Project, node: &str) -> String {
    let Ok(runs) = std::fs::read_dir(p.path(".expflow/runs")) else {
        return String::new();
    };
    runs.flatten()
        .filter_map(|r| {
            std::fs::read_to_string(r.path().join("logs").join(format!("{node}.log"))).ok()
        })
        .next()
        .unwrap_or_default()
}

/// Ctrl-C while the inference node is asking its servers: a terminal sends SIGINT to the
/// foreground process group, which is `expflow run` alone (each replica runs in a process
/// group of its own). The run stops with the interrupted code, the replicas are stopped with
/// their process groups, nothing is recorded for the interrupted node, and a second run
/// finishes the work, reusing the answers given before the interrupt.
#[test]
fn ctrl_c_stops_the_replicas() {
    let p = Project::new();
    p.write(
        "pipe.yaml",
        &PIPE
            .replace("MODEL", &fixture("tiny").to_string_lossy())
            .replace("max_tokens: 6, concurrency", "max_tokens: 48, concurrency"),
    );
    // Enough questions that the node is still asking when the signal comes.
    let prompts: Vec<String> = (0..400)
        .map(|i| format!("step {i}: heat the tube"))
        .collect();
    p.write(
        "prompts.jsonl",
        &prompts
            .iter()
            .map(|q| format!("{{\"user\": \"{q}\"}}\n"))
            .collect::<String>(),
    );
    let mut cmd = Command::new(expflow_bin());
    cmd.args(["run", "pipe.yaml", "--json", "--set", "concurrency=1"])
        .current_dir(p.path(""))
        .env_remove("EXPFLOW_LOG");
    in_new_session(&mut cmd);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start expflow run");
    let pid = child.id() as i32;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !live_log(&p, "chat").contains("replica 1 is up") {
        assert!(
            std::time::Instant::now() < deadline,
            "the replicas did not come up in 300 s: {}",
            live_log(&p, "chat")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Both replicas serve: let a few answers through, then interrupt.
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: kill(2) with a pid this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let out = child.wait_with_output().expect("wait for expflow run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let mut left = session_members(pid);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = session_members(pid);
    }
    assert!(
        left.is_empty(),
        "processes outlived the interrupted run: {left:?}"
    );
    let log = live_log(&p, "chat");
    for r in 0..2 {
        assert!(log.contains(&format!("replica {r} stopped")), "{log}");
    }
    // Nothing of `chat` was recorded: its output does not exist yet.
    assert!(!p.path("out/answers.jsonl").exists());

    // The second run finishes; what was answered before the interrupt comes from the memo.
    let (code, events, left, stderr) = run(&p, &["--set", "concurrency=1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(left.is_empty(), "{left:?}");
    let chat = executed(&events, "chat").expect("chat ran");
    assert_eq!(
        chat["memo_hits"].as_u64().unwrap() + chat["memo_misses"].as_u64().unwrap(),
        prompts.len() as u64,
        "{chat}"
    );
    assert!(chat["memo_hits"].as_u64().unwrap() > 0, "{chat}");
    assert_eq!(rows(&p, "out/answers.jsonl").len(), prompts.len());
}
