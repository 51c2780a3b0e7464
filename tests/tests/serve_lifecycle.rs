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
