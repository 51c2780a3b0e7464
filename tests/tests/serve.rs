//! `expflow serve` end to end: the real binary serves the committed tiny Qwen2 fixture on a
//! free loopback port; plain HTTP requests and an `infer.chat` pipeline (run by the real
//! binary too) talk to it; Ctrl-C (SIGINT) stops it cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use expflow_tests::{Project, expflow_bin};
use serde_json::{Value, json};

/// A server child process, killed if the test fails before stopping it.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(model: &Path) -> Server {
    let mut child = Command::new(expflow_bin())
        .args([
            "serve",
            model.to_str().unwrap(),
            "--port",
            "0",
            "--max-batch",
            "4",
            "--batch-wait-ms",
            "50",
        ])
        .args(["--model-name", "tiny"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start expflow serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.trim_end_matches("/v1").to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("expflow serve printed its address within 60 s");
    Server { child, addr }
}

/// One HTTP/1.1 request over a fresh connection; (status, JSON body).
fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let payload = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../operators/runtime/models/tests/fixtures/qwen2/tiny")
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
    let mut server = start(&fixture());
    let addr = server.addr.clone();

    let (s, models) = http(&addr, "GET", "/v1/models", None);
    assert_eq!(s, 200);
    assert_eq!(models["data"][0]["id"], "tiny");
    let req = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "temperature": 0, "max_tokens": 6});
    let (s1, a) = http(&addr, "POST", "/v1/chat/completions", Some(&req));
    let (s2, b) = http(&addr, "POST", "/v1/chat/completions", Some(&req));
    assert_eq!((s1, s2), (200, 200), "{a}");
    assert_eq!(
        a["choices"][0]["message"], b["choices"][0]["message"],
        "greedy is repeatable"
    );
    let (s, e) = http(
        &addr,
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
    let (_, stats) = http(&addr, "GET", "/stats", None);
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
    let (_, stats) = http(&addr, "GET", "/stats", None);
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
