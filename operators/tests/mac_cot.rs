//! `mac.cot` over real HTTP: a tiny server on 127.0.0.1 (loopback only) answers
//! `/v1/chat/completions` with rationales derived from the request, fails some requests once
//! (429 with Retry-After, 503) and one always (400). The test checks the memo (a second run
//! asks nothing, an edit asks only the changed prompt), the retries, the gold-letter filter,
//! and that the API key reaches the server but no log or output.
//!
//! This file holds one test: it sets an environment variable, which must not race with
//! other threads of the same test binary.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use expflow_engine::PortType;
use expflow_engine::harness::Harness;
use expflow_operators::mac;
use expflow_operators::table_io::read_table;
use serde_json::{Value, json};

const KEY_VAR: &str = "EXPFLOW_TEST_MAC_COT_KEY";
const KEY: &str = "sk-test-0123456789";

#[derive(Default)]
struct Seen {
    /// (path, authorization header, user text) of every chat request.
    requests: Vec<(String, String, String)>,
    busy_failed: bool,
    flaky_failed: bool,
    /// Authorization headers of the `GET /v1/models` requests.
    listings: Vec<String>,
    /// The `created` the model list reports: a new one is a new model under the same name.
    created: u64,
}

/// A request's path, lower-cased headers and body.
type Request = (String, Vec<(String, String)>, Vec<u8>);

fn read_request(s: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let header_end = loop {
        let n = s.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + len {
        let n = s.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Some((path, headers, buf[header_end..header_end + len].to_vec()))
}

fn respond(s: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let _ = s.flush();
}

/// The canned teacher: the option marked `(correct)` is the gold one; `TRICK` items get the
/// next letter, `MUMBLE` items no letter; `BUSY` gets one 429, `FLAKY` one 503, `BAD` a 400.
fn handle(mut s: TcpStream, seen: &Mutex<Seen>) {
    let Some((path, headers, body)) = read_request(&mut s) else {
        return;
    };
    let auth = headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = req
        .pointer("/messages/1/content/0/text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut st = seen.lock().unwrap();
    if path == "/v1/models" {
        st.listings.push(auth);
        let list = json!({"object": "list", "data": [
            {"id": "teacher-7b", "object": "model", "created": st.created, "owned_by": "test"},
            {"id": "teacher-72b", "object": "model", "created": st.created, "owned_by": "test"},
        ]});
        return respond(&mut s, "200 OK", "", &list.to_string());
    }
    st.requests.push((path.clone(), auth, text.clone()));
    if path != "/v1/chat/completions" {
        return respond(&mut s, "404 Not Found", "", "{}");
    }
    if text.contains("BAD") {
        return respond(&mut s, "400 Bad Request", "", r#"{"error": "bad request"}"#);
    }
    if text.contains("BUSY") && !st.busy_failed {
        st.busy_failed = true;
        return respond(
            &mut s,
            "429 Too Many Requests",
            "Retry-After: 0\r\n",
            r#"{"error": "slow down"}"#,
        );
    }
    if text.contains("FLAKY") && !st.flaky_failed {
        st.flaky_failed = true;
        return respond(
            &mut s,
            "503 Service Unavailable",
            "",
            r#"{"error": "overloaded"}"#,
        );
    }
    drop(st);
    let gold = text
        .lines()
        .find(|l| l.contains("(correct)"))
        .and_then(|l| l.chars().next())
        .unwrap_or('A');
    let letter = if text.contains("TRICK") {
        (b'A' + ((gold as u8 - b'A' + 1) % 4)) as char
    } else {
        gold
    };
    let content = if text.contains("MUMBLE") {
        "The cover is hard to read; I cannot decide.".to_string()
    } else if text.contains("FLIP") {
        // The right final letter after arguing for another option.
        let other = (b'A' + ((gold as u8 - b'A' + 1) % 4)) as char;
        format!("Option {other} is the correct one: it shows a reef.\nAnswer: {gold}")
    } else {
        format!("The cover shows a pattern.\nIt matches option {letter}'s story.\nAnswer: {letter}")
    };
    let model = req.get("model").cloned().unwrap_or(Value::Null);
    let resp = json!({
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    });
    respond(&mut s, "200 OK", "", &resp.to_string());
}

fn start_server() -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen {
        created: 1_700_000_000,
        ..Seen::default()
    }));
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

fn record(id: &str, tag: &str) -> Value {
    json!({
        "id": id, "system": "Answer with one letter.",
        "input": format!("<image>Which cover story fits? {tag}\nA: a reef\nB: a neuron (correct)\nC: a galaxy\nD: a glacier"),
        "output": "B", "images": [format!("Cover/Nature/{id}.png")]
    })
}

fn table(h: &mut Harness, dir: &Path, records: &[Value]) -> PathBuf {
    let src = dir.join(format!(
        "records-{}.json",
        blake3::hash(Value::Array(records.to_vec()).to_string().as_bytes()).to_hex()
    ));
    std::fs::write(&src, Value::Array(records.to_vec()).to_string()).unwrap();
    h.run(&mac::Load, &[("src", PortType::File, &src)], json!({}), &[])
        .unwrap()
        .outputs["table"]
        .clone()
}

#[test]
fn cot_over_http_memoises_retries_and_keeps_gold_rationales() {
    // SAFETY: this is the only test in this binary, so no other thread reads the environment.
    unsafe { std::env::set_var(KEY_VAR, KEY) };
    let (base_url, seen) = start_server();
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let mut records = vec![
        record("n0", "plain"),
        record("n1", "BUSY"),
        record("n2", "TRICK"),
        record("n3", "MUMBLE"),
        record("n4", "FLAKY"),
        record("n5", "plain too"),
    ];
    let params = json!({
        "base_url": base_url, "model": "teacher-7b", "api_key_env": KEY_VAR,
        "concurrency": 3, "backoff_ms": 10, "max_retries": 2, "timeout_s": 20,
    });
    let t = table(&mut h, dir.path(), &records);
    let run = h
        .run(
            &mac::Cot,
            &[("table", PortType::Table, &t)],
            params.clone(),
            &[],
        )
        .unwrap();
    assert_eq!(run.memo, (0, 6), "every prompt asked once");
    let report: Value =
        serde_json::from_slice(&std::fs::read(&run.outputs["report"]).unwrap()).unwrap();
    // Figures about the run are notes (log and event), not part of the report.
    assert_eq!(
        run.notes["http_requests"], 8,
        "6 prompts + one 429 + one 503: {:?}",
        run.notes
    );
    assert_eq!(run.notes["retries"], 2);
    assert!(run.log.contains("note: http_requests = 8"), "{}", run.log);
    assert!(report.get("http_requests").is_none(), "{report}");
    assert_eq!(
        (
            report["kept"].as_u64(),
            report["wrong"].as_u64(),
            report["unparsable"].as_u64()
        ),
        (Some(4), Some(1), Some(1))
    );
    let kept = mac::df_to_items("test", &read_table(&run.outputs["table"]).unwrap()).unwrap();
    let ids: Vec<&str> = kept.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["n0#cot", "n1#cot", "n4#cot", "n5#cot"]);
    assert!(
        kept.iter()
            .all(|i| i.output.ends_with("Answer: B") && i.variant == "cot" && i.answer == Some(1))
    );
    assert!(
        kept[0].input.starts_with("<image>Which cover story fits?"),
        "the SFT prompt is the item's"
    );
    {
        let st = seen.lock().unwrap();
        assert_eq!(st.requests.len(), 8);
        assert!(
            st.requests
                .iter()
                .all(|(p, a, _)| p == "/v1/chat/completions" && a == &format!("Bearer {KEY}"))
        );
        assert_eq!(
            st.listings,
            [format!("Bearer {KEY}")],
            "the model list is read once per run, with the key"
        );
        assert!(
            st.requests[0]
                .2
                .contains("A: a reef\nB: a neuron (correct)"),
            "{}",
            st.requests[0].2
        );
    }
    // The key is in no log and no output.
    assert!(!run.log.contains(KEY), "{}", run.log);
    assert!(run.log.contains("retrying"), "{}", run.log);
    for p in run.outputs.values() {
        assert!(!String::from_utf8_lossy(&std::fs::read(p).unwrap()).contains(KEY));
    }

    // Same prompts: everything from the memo, nothing sent.
    let again = h
        .run(
            &mac::Cot,
            &[("table", PortType::Table, &t)],
            params.clone(),
            &[],
        )
        .unwrap();
    assert_eq!(again.memo, (6, 0));
    assert_eq!(again.notes["http_requests"], 0);
    assert_eq!(seen.lock().unwrap().requests.len(), 8);
    assert_eq!(
        again.digests, run.digests,
        "outputs do not depend on the memo"
    );

    // One prompt edited: only it is asked again. Concurrency is not part of a request.
    records[5] = record("n5", "plain, edited");
    let t2 = table(&mut h, dir.path(), &records);
    let mut p2 = params.clone();
    p2["concurrency"] = json!(1);
    let edited = h
        .run(&mac::Cot, &[("table", PortType::Table, &t2)], p2, &[])
        .unwrap();
    assert_eq!(edited.memo, (5, 1));
    let st = seen.lock().unwrap();
    assert_eq!(st.requests.len(), 9);
    assert!(st.requests[8].2.contains("plain, edited"));
    drop(st);

    // A model change is a new request for every prompt.
    let mut p3 = params.clone();
    p3["model"] = json!("teacher-72b");
    let other = h
        .run(&mac::Cot, &[("table", PortType::Table, &t)], p3, &[])
        .unwrap();
    assert_eq!(other.memo, (0, 6));

    // Another model served under the same name (the list reports another `created`): the
    // memoised answers were the old model's, so every prompt is asked again.
    seen.lock().unwrap().created = 1_700_000_500;
    let retrained = h
        .run(
            &mac::Cot,
            &[("table", PortType::Table, &t)],
            params.clone(),
            &[],
        )
        .unwrap();
    assert_eq!(retrained.memo, (0, 6));
    // `model_revision` is the user's name for a version: another one, other answers.
    let mut revised = params.clone();
    revised["model_revision"] = json!("sft-2");
    let with_revision = h
        .run(&mac::Cot, &[("table", PortType::Table, &t)], revised, &[])
        .unwrap();
    assert_eq!(with_revision.memo, (0, 6));

    // A model the server does not list: the node fails, unless `model_revision` names it.
    let mut unlisted = params.clone();
    unlisted["model"] = json!("teacher-unknown");
    let e = h
        .run(
            &mac::Cot,
            &[("table", PortType::Table, &t)],
            unlisted.clone(),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("does not list `teacher-unknown`") && e.contains("model_revision"),
        "{e}"
    );
    unlisted["model_revision"] = json!("teacher-unknown@1");
    let pinned = h
        .run(&mac::Cot, &[("table", PortType::Table, &t)], unlisted, &[])
        .unwrap();
    assert_eq!(pinned.memo, (0, 6));
    assert!(
        pinned.log.contains("model_revision `teacher-unknown@1`"),
        "{}",
        pinned.log
    );

    // A 400 is not retried; the error names the record; answers got so far stay memoised.
    let bad = table(
        &mut h,
        dir.path(),
        &[record("ok", "plain"), record("b1", "BAD")],
    );
    let before = seen.lock().unwrap().requests.len();
    let mut p4 = params.clone();
    p4["concurrency"] = json!(1);
    let e = h
        .run(&mac::Cot, &[("table", PortType::Table, &bad)], p4, &[])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("record 1 (id `b1`)") && e.contains("HTTP 400") && e.contains("after 1 attempt"),
        "{e}"
    );
    assert_eq!(
        seen.lock().unwrap().requests.len(),
        before + 1,
        "`ok` came from the memo, `b1` sent once"
    );

    // A missing key variable is a clear error.
    let mut p5 = params.clone();
    p5["api_key_env"] = json!("EXPFLOW_TEST_MAC_COT_UNSET");
    let e = h
        .run(&mac::Cot, &[("table", PortType::Table, &t)], p5, &[])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("EXPFLOW_TEST_MAC_COT_UNSET") && e.contains("not set"),
        "{e}"
    );

    // A rationale that ends on the gold letter but argues for another option is dropped and
    // counted.
    let flip = table(
        &mut h,
        dir.path(),
        &[record("f0", "FLIP"), record("f1", "plain")],
    );
    let run = h
        .run(&mac::Cot, &[("table", PortType::Table, &flip)], params, &[])
        .unwrap();
    let report: Value =
        serde_json::from_slice(&std::fs::read(&run.outputs["report"]).unwrap()).unwrap();
    assert_eq!(
        (report["kept"].as_u64(), report["contradicts"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    let kept = mac::df_to_items("test", &read_table(&run.outputs["table"]).unwrap()).unwrap();
    assert_eq!(kept[0].id, "f1#cot");
}
