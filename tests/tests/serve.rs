//! `expflow serve` end to end: the real binary serves the committed tiny Qwen2 fixture on a
//! free loopback port; plain HTTP requests and an `infer.chat` pipeline (run by the real
//! binary too) talk to it; Ctrl-C (SIGINT) stops it cleanly.

use std::process::Command;
use std::time::{Duration, Instant};

use expflow_tests::Project;
use expflow_tests::server::{Server, fixture};
use serde_json::{Value, json};

fn start(model: &std::path::Path) -> Server {
    Server::start(model, "tiny", 0, &[])
}

const PIPE: &str = r#"
pipeline: served
params:
  url: URL
  concurrency: 2
inputs:
  prompts: prompts.jsonl
nodes:
  prompts:
    op: load
    in: {src: inputs.prompts}
  chat:
    op: infer.chat
    in: {prompts: prompts.table}
    params:
      backend: openai
      base_url: ${params.url}
      model: tiny
      max_tokens: 6
      concurrency: ${params.concurrency}
  answers:
    op: export
    in: {table: chat.table}
    params: {format: jsonl}
outputs:
  out/answers.jsonl: answers.file
"#;

#[test]
fn the_binary_serves_chat_and_a_pipeline_uses_it() {
    let mut server = start(&fixture("tiny"));
    let addr = server.addr.clone();
    let http = |method: &str, path: &str, body: Option<&Value>| {
        expflow_tests::server::http(&addr, method, path, body, None)
    };

    let (s, models) = http("GET", "/v1/models", None);
    assert_eq!(s, 200);
    assert_eq!(models["data"][0]["id"], "tiny");
    assert!(
        models["data"][0]["root"]
            .as_str()
            .is_some_and(|r| r.starts_with("blake3:")),
        "{models}"
    );
    let req = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "temperature": 0, "max_tokens": 6});
    let (s1, a) = http("POST", "/v1/chat/completions", Some(&req));
    let (s2, b) = http("POST", "/v1/chat/completions", Some(&req));
    assert_eq!((s1, s2), (200, 200), "{a}");
    assert_eq!(
        a["choices"][0]["message"], b["choices"][0]["message"],
        "greedy is repeatable"
    );
    let (s, e) = http(
        "POST",
        "/v1/chat/completions",
        Some(&json!({"messages": "nope"})),
    );
    assert_eq!(s, 400);
    assert_eq!(e["error"]["param"], "messages");

    // A pipeline whose infer.chat node asks the server.
    let p = Project::new();
    p.write(
        "pipe.yaml",
        &PIPE.replace("URL", &format!("http://{addr}/v1")),
    );
    p.write(
        "prompts.jsonl",
        "{\"user\": \"hello\"}\n{\"user\": \"heat the tube\"}\n{\"user\": \"add yeast\"}\n",
    );
    let first = p.run("pipe.yaml", &[]);
    first.expect_code(0);
    let answers: Vec<Value> = p
        .read("out/answers.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 3);
    assert_eq!(
        answers[0]["response"],
        a["choices"][0]["message"]["content"]
    );
    let (_, stats) = http("GET", "/stats", None);
    let asked = stats["requests"].as_u64().unwrap();
    assert_eq!(
        asked,
        3 + 3,
        "three direct requests (one invalid) and three from the node"
    );

    // Another concurrency: a new node key, but every request comes from the memo.
    let second = p.run("pipe.yaml", &["--set", "concurrency=1"]);
    second.expect_code(0);
    assert!(
        second.executed().contains(&"chat".to_string()),
        "{:?}",
        second.executed()
    );
    let (_, stats) = http("GET", "/stats", None);
    assert_eq!(
        stats["requests"].as_u64(),
        Some(asked),
        "no request reached the server"
    );

    // Ctrl-C: the server stops cleanly.
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "expflow serve did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

/// The greedy answers of the server at `addr` to `prompts`, as the pipeline asks them.
fn direct_answers(server: &Server, model: &str, prompts: &[&str]) -> Vec<Value> {
    prompts
        .iter()
        .map(|p| {
            let req = json!({"model": model, "messages": [{"role": "user", "content": p}],
                             "temperature": 0.0, "top_p": 1.0, "max_tokens": 6});
            let (s, r) = server.http("POST", "/v1/chat/completions", Some(&req));
            assert_eq!(s, 200, "{r}");
            r["choices"][0]["message"]["content"].clone()
        })
        .collect()
}

fn answers(p: &Project) -> Vec<Value> {
    p.read("out/answers.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["response"].clone())
        .collect()
}

#[test]
fn memoised_answers_belong_to_the_model_that_gave_them() {
    let prompts = ["hello", "heat the tube", "add yeast"];
    let p = Project::new();
    p.write(
        "prompts.jsonl",
        &prompts
            .iter()
            .map(|u| json!({"user": u}).to_string() + "\n")
            .collect::<String>(),
    );

    // Model A served as `m`; the pipeline's answers are A's.
    let a = Server::start(&fixture("tiny"), "m", 0, &[]);
    let port = a.port();
    let url = a.base_url();
    p.write(
        "pipe.yaml",
        &PIPE.replace("URL", &url).replace("model: tiny", "model: m"),
    );
    let from_a = direct_answers(&a, "m", &prompts);
    p.run("pipe.yaml", &[]).expect_code(0);
    assert_eq!(answers(&p), from_a);
    let (_, card_a) = a.http("GET", "/v1/models", None);
    drop(a);

    // Model B (other weights) served under the same name at the same URL: the node re-runs
    // (another concurrency, a new node key) with the same request bodies, and its answers
    // are B's, not the memoised ones of A.
    let b = Server::start(&fixture("tiny_tied"), "m", port, &[]);
    assert_eq!(b.base_url(), url, "the same URL, so only the model differs");
    let (_, card_b) = b.http("GET", "/v1/models", None);
    assert_ne!(
        card_a["data"][0]["root"], card_b["data"][0]["root"],
        "/v1/models tells the two apart"
    );
    let from_b = direct_answers(&b, "m", &prompts);
    assert_ne!(from_a, from_b, "the two models answer differently");
    let second = p.run("pipe.yaml", &["--set", "concurrency=1"]);
    second.expect_code(0);
    assert!(second.executed().contains(&"chat".to_string()));
    assert_eq!(answers(&p), from_b);
    let (_, stats) = b.http("GET", "/stats", None);
    assert_eq!(
        stats["requests"].as_u64(),
        Some(2 * prompts.len() as u64),
        "B answered the direct requests and the node's"
    );

    // B again under another node key: now everything comes from B's memo.
    let third = p.run("pipe.yaml", &["--set", "concurrency=3"]);
    third.expect_code(0);
    assert!(third.executed().contains(&"chat".to_string()));
    assert_eq!(answers(&p), from_b);
    let (_, stats) = b.http("GET", "/stats", None);
    assert_eq!(stats["requests"].as_u64(), Some(2 * prompts.len() as u64));
}
