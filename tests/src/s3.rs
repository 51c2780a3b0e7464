//! The S3 server `.ci/run` starts (moto_server), as the remote-cache tests use it: its
//! endpoint with the test bucket created, object listings, and unique prefixes per test.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;

use crate::skip::skip_or_fail;

/// The bucket every test shares; tests keep apart by prefix ([`unique`]).
pub const BUCKET: &str = "expflow-test";

/// The endpoint from `EXPFLOW_TEST_S3_ENDPOINT`, with [`BUCKET`] created; `None` (a skip, or
/// a failure under CI=true) without one.
pub fn endpoint() -> Option<String> {
    let Ok(endpoint) = std::env::var("EXPFLOW_TEST_S3_ENDPOINT") else {
        skip_or_fail(
            "no S3 server: set EXPFLOW_TEST_S3_ENDPOINT (and AWS_ACCESS_KEY_ID, \
             AWS_SECRET_ACCESS_KEY) to one; `.ci/run` starts moto_server for it",
        );
        return None;
    };
    let (status, body) = http(&endpoint, "PUT", &format!("/{BUCKET}"));
    assert!(
        status == 200 || body.contains("BucketAlreadyOwnedByYou"),
        "cannot create bucket {BUCKET} at {endpoint}: {status} {body}"
    );
    Some(endpoint)
}

/// One plain HTTP/1.1 request to the S3 server (moto accepts unsigned requests).
pub fn http(endpoint: &str, method: &str, path: &str) -> (u16, String) {
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// The object keys under `prefix` in [`BUCKET`].
pub fn keys(endpoint: &str, prefix: &str) -> Vec<String> {
    let (status, body) = http(
        endpoint,
        "GET",
        &format!("/{BUCKET}?list-type=2&prefix={prefix}"),
    );
    assert_eq!(status, 200, "{body}");
    body.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(str::to_string)
        .collect()
}

/// A unique prefix for one test.
pub fn unique(tag: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{t}", std::process::id())
}

/// The pipeline the remote-cache tests share: a → b (a directory) → c from the input file
/// `data.txt`; only c is materialised (`out/c.txt`).
pub fn chain_pipeline(name: &str) -> String {
    format!(
        r#"
pipeline: {name}
inputs:
  src: data.txt
nodes:
  a:
    op: command
    in: {{src: inputs.src}}
    out: {{text: file}}
    params: {{run: "cat ${{in.src}} ${{in.src}} > ${{out.text}}"}}
  b:
    op: command
    in: {{text: a.text}}
    out: {{d: dir}}
    params: {{run: "tr a-z A-Z < ${{in.text}} > ${{out.d}}/upper && wc -c < ${{in.text}} > ${{out.d}}/n"}}
  c:
    op: command
    in: {{d: b.d}}
    out: {{sum: file}}
    params: {{run: "cat ${{in.d}}/n ${{in.d}}/upper > ${{out.sum}}"}}
outputs:
  out/c.txt: c.sum
"#
    )
}
