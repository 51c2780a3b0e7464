//! `expstar.rag_infer` over the openai backend, against a scripted OpenAI-compatible server
//! on 127.0.0.1 whose replies follow the trained ExpStar format: the emitted-token decision
//! and the cut after `[Retrieval]`, one `<paragraph>` turn per passage and the relevance
//! verdicts, lookup by normalised video path, a row with no retrieval entry, ms-swift's
//! `videos` field, the released client's JSON-dump turn, and the memo; DPO candidates
//! sampled with one seed per sample, and `expstar.reward`'s judge.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use expflow_engine::PortType;
use expflow_engine::harness::Harness;
use expflow_operators::infer::{RagInfer, Reward};
use serde_json::{Value, json};

/// A request's path and body.
fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let end = loop {
        let n = s.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let path = head.split(' ').nth(1)?.to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < end + len {
        let n = s.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Some((path, buf[end..end + len].to_vec()))
}

/// The scripted model: turn 1 asks for retrieval when the prompt says `RET`; a passage
/// containing `good` is relevant; a JSON dump is answered with the number of documents.
fn reply(req: &Value) -> String {
    let msgs = req["messages"].as_array().unwrap();
    let last = msgs.last().unwrap()["content"].as_str().unwrap_or("");
    // The judge of `expstar.reward`: 5 when the candidate is the reference, else 2.
    if let Some((reference, rest)) = last
        .strip_prefix("Reference commentary:\n")
        .and_then(|r| r.split_once("\n\nCandidate commentary:\n"))
    {
        let candidate = rest.split("\n\nHow well").next().unwrap_or("");
        return if candidate == reference {
            "Grade: 5".into()
        } else {
            "2 of 5".into()
        };
    }
    if msgs.len() == 2 {
        let step = last.split_whitespace().last().unwrap_or("");
        let token = if last.contains("RET") {
            "[Retrieval] and then some"
        } else {
            "[No Retrieval]"
        };
        return format!("<Narration>\nstep {step}\n{token}");
    }
    if let Some(p) = last.strip_prefix("<paragraph>") {
        let p = p.trim_end_matches("</paragraph>");
        return if p.contains("good") {
            format!("[Relevant]\n<Principle>\nfrom {p}\n")
        } else {
            "[Irrelevant]\n<Principle>\nignored\n".into()
        };
    }
    let docs: Vec<Value> =
        serde_json::from_str(last.trim_start_matches("Here are the retrieved documents:\n"))
            .unwrap();
    format!("[Relevant]\n<Principle>\n{} documents\n", docs.len())
}

fn handle(mut s: TcpStream, seen: &Mutex<Vec<Value>>) {
    let Some((path, body)) = read_request(&mut s) else {
        return;
    };
    let resp = if path == "/v1/models" {
        // The model list the client reads once per node run (the model's identity).
        json!({"object": "list", "data": [
            {"id": "expstar", "object": "model", "created": 1_700_000_000u64, "owned_by": "test"}
        ]})
        .to_string()
    } else {
        let req: Value = serde_json::from_slice(&body).unwrap();
        let content = reply(&req);
        seen.lock().unwrap().push(req);
        json!({
            "id": "x", "object": "chat.completion", "created": 0, "model": "expstar",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        })
        .to_string()
    };
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{resp}",
        resp.len()
    );
}

fn start() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            match stream {
                Ok(s) => handle(s, &s2),
                Err(_) => break,
            }
        }
    });
    (format!("http://{addr}/v1"), seen)
}

/// The rows of a table artifact (ExpStar's row stages pass Parquet tables).
fn read_rows(p: &Path) -> Vec<Value> {
    expflow_operators::expstar::read_rows(p).unwrap()
}

/// Writes `rows` as a rows table at `dir/name`.
fn table(dir: &Path, name: &str, rows: &[Value]) -> PathBuf {
    let p = dir.join(name);
    expflow_operators::expstar::write_rows(&p, rows).unwrap();
    p
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn rag_infer_follows_the_trained_protocol_over_http() {
    let (base_url, seen) = start();
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    std::fs::create_dir_all(media.join("clips")).unwrap();
    for v in ["a", "b", "c"] {
        std::fs::write(media.join(format!("clips/{v}.mp4")), format!("video {v}")).unwrap();
    }
    let row = |id: &str, prompt: &str, video: &str| {
        json!({"id": id, "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": format!("<video>{prompt} {id}")},
            {"role": "assistant", "content": "<Narration>\ngt\n"},
        ], "videos": [video]})
    };
    let rows = table(
        dir.path(),
        "rows.parquet",
        &[
            row("r1", "RET", "clips/a.mp4"),
            row("r2", "plain", "clips/b.mp4"),
            row("r3", "RET", "clips/c.mp4"),
        ],
    );
    let retrieval = write(
        dir.path(),
        "retrieval.json",
        &json!([
            {"id": "q-a", "query": "q", "video_path": "clips/./a.mp4",
             "documents": [{"text": "a bad one", "relevant": 1}, {"text": "a good one"}, {"text": "good two"}, {"text": "good but beyond passages"}]},
            {"id": "q-b", "query": "q", "video_path": "clips/b.mp4", "documents": ["good b"]}
        ])
        .to_string(),
    );
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let inputs = [
        ("rows", PortType::Table, rows.as_path()),
        ("retrieval", PortType::File, retrieval.as_path()),
        ("media", PortType::Dir, media.as_path()),
    ];
    let params = json!({"backend": "openai", "base_url": base_url, "model": "expstar", "passages": 3, "backoff_ms": 1});
    let run = h.run(&RagInfer, &inputs, params.clone(), &[]).unwrap();
    let out = read_rows(&run.outputs["results"]);

    let r1 = &out[0];
    assert_eq!(r1["id"], "r1");
    assert_eq!(r1["is_retrieval"], true);
    assert_eq!(
        r1["rounds"][0]["content"], "<Narration>\nstep r1\n[Retrieval]",
        "cut after the token"
    );
    assert_eq!(
        r1["rounds"][1]["content"], "[Relevant]\n<Principle>\nfrom a good one\n",
        "the first relevant passage's continuation"
    );
    assert_eq!(
        r1["rag_passages"],
        json!([
            "<paragraph>a bad one</paragraph>",
            "<paragraph>a good one</paragraph>",
            "<paragraph>good two</paragraph>"
        ])
    );
    assert_eq!(
        r1["relevant_passages"],
        json!([
            "<paragraph>a good one</paragraph>",
            "<paragraph>good two</paragraph>"
        ])
    );
    assert_eq!(r1["gt"][2]["content"], "<Narration>\ngt\n");

    let r2 = &out[1];
    assert_eq!(r2["is_retrieval"], false);
    assert_eq!(r2["rounds"].as_array().unwrap().len(), 1);
    assert_eq!(
        r2["rounds"][0]["content"],
        "<Narration>\nstep r2\n[No Retrieval]"
    );

    let r3 = &out[2];
    assert_eq!(r3["is_retrieval"], true);
    assert_eq!(
        r3["rounds"].as_array().unwrap().len(),
        1,
        "no retrieval entry: turn 1 only"
    );
    let rep: Value =
        serde_json::from_slice(&std::fs::read(&run.outputs["report"]).unwrap()).unwrap();
    assert_eq!(rep["missing_retrieval"], 1, "{rep}");
    assert!(
        run.log.contains("r3") && run.log.contains("no documents"),
        "{}",
        run.log
    );

    {
        let reqs = seen.lock().unwrap();
        assert_eq!(reqs.len(), 3 + 3, "three first turns, three passages");
        let first = reqs
            .iter()
            .find(|r| {
                r["messages"][1]["content"]
                    .as_str()
                    .unwrap()
                    .ends_with("r1")
            })
            .unwrap();
        assert_eq!(
            first["messages"][1]["content"], "<video>RET r1",
            "ms-swift form: the tag stays"
        );
        let v = first["videos"][0].as_str().unwrap();
        assert!(
            v.ends_with("clips/a.mp4") && Path::new(v).is_absolute(),
            "{v}"
        );
        let para = reqs
            .iter()
            .find(|r| r["messages"].as_array().unwrap().len() == 4)
            .unwrap();
        assert_eq!(para["messages"][2]["role"], "assistant");
        assert!(
            para["messages"][2]["content"]
                .as_str()
                .unwrap()
                .ends_with("[Retrieval]")
        );
    }

    // The same run again: all from the memo.
    let again = h.run(&RagInfer, &inputs, params.clone(), &[]).unwrap();
    assert_eq!(again.memo, (6, 0));
    assert_eq!(seen.lock().unwrap().len(), 6);
    assert_eq!(
        std::fs::read(&again.outputs["results"]).unwrap(),
        std::fs::read(&run.outputs["results"]).unwrap()
    );

    // The released client's second turn: every document in one JSON dump.
    let mut dump = params;
    dump["second_turn"] = json!("json_dump");
    let d = h.run(&RagInfer, &inputs, dump, &[]).unwrap();
    let out = read_rows(&d.outputs["results"]);
    assert_eq!(
        out[0]["rounds"][1]["content"],
        "[Relevant]\n<Principle>\n3 documents\n"
    );
    assert_eq!(out[0]["rag_passages"].as_array().unwrap().len(), 3);
    assert_eq!(
        out[0]["rag_passages"][0]["text"], "a bad one",
        "the documents as given"
    );
    assert_eq!(d.memo, (3, 1), "first turns memoised; one dump turn asked");
}

#[test]
fn samples_are_seeded_one_by_one_and_a_judge_rewards_them() {
    let (base_url, seen) = start();
    let dir = tempfile::tempdir().unwrap();
    let row = json!({"id": "r1", "messages": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "<video>plain r1"},
        {"role": "assistant", "content": "<Narration>\ngt\n"},
    ], "videos": ["clips/a.mp4"]});
    let rows = table(dir.path(), "rows.parquet", &[row]);
    let retrieval = write(dir.path(), "retrieval.json", "[]");
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let run = h
        .run(
            &RagInfer,
            &[
                ("rows", PortType::Table, rows.as_path()),
                ("retrieval", PortType::File, retrieval.as_path()),
            ],
            json!({"backend": "openai", "base_url": base_url, "model": "expstar", "media": "none",
                   "samples": 3, "temperature": 0.8, "sampling_seed": 7, "backoff_ms": 1}),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        read_rows(&run.outputs["results"]).len(),
        3,
        "one row per sample"
    );
    // Requests go out concurrently: the seeds, in any order.
    let mut seeds: Vec<u64> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r["seed"].as_u64().unwrap())
        .collect();
    seeds.sort();
    assert_eq!(seeds, [7, 8, 9]);
    // Greedy decoding would give the same answer each time: refused with the fix.
    let greedy = h
        .run(
            &RagInfer,
            &[
                ("rows", PortType::Table, rows.as_path()),
                ("retrieval", PortType::File, retrieval.as_path()),
            ],
            json!({"backend": "openai", "base_url": base_url, "model": "expstar", "samples": 2}),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
    assert!(greedy.contains("set temperature above 0"), "{greedy}");

    // The judge grades each candidate against its reference.
    seen.lock().unwrap().clear();
    let cands = [
        json!({"id": "r1", "response": "<Narration>\ngt\n", "labels": "<Narration>\ngt\n"}),
        json!({"id": "r1", "response": "<Narration>\nwrong\n", "labels": "<Narration>\ngt\n"}),
    ];
    let cands = table(dir.path(), "cands.parquet", &cands);
    let judged = h
        .run(
            &Reward,
            &[("candidates", PortType::Table, cands.as_path())],
            json!({"metric": "judge", "backend": "openai", "base_url": base_url, "model": "expstar", "threshold": 0.5, "backoff_ms": 1}),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let out = read_rows(&judged.outputs["candidates"]);
    assert_eq!(out[0]["score"], 1.0);
    assert_eq!(out[0]["reward"], true);
    assert_eq!(out[1]["score"], 0.25);
    assert_eq!(out[1]["reward"], false);
    let asked = seen.lock().unwrap().clone();
    assert_eq!(asked.len(), 2);
    assert!(asked.iter().all(|r| r["temperature"] == 0.0), "{asked:?}");
}
