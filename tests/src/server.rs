//! `expflow serve` as a child process for tests: started on a free (or given) loopback port,
//! killed when dropped; and a one-shot HTTP/1.1 client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::expflow_bin;

/// A server child process, killed if the test ends before stopping it.
pub struct Server {
    pub child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Server {
    /// `expflow serve MODEL --model-name NAME --port PORT` (0: a free one) with `envs` added to
    /// its environment; returns once it listens.
    pub fn start(model: &Path, name: &str, port: u16, envs: &[(&str, &str)]) -> Server {
        Server::start_with(model, name, port, envs, &[])
    }

    /// [`Server::start`] with more command-line arguments (`--max-logprobs 400`).
    pub fn start_with(
        model: &Path,
        name: &str,
        port: u16,
        envs: &[(&str, &str)],
        args: &[&str],
    ) -> Server {
        let mut child = Command::new(expflow_bin())
            .args([
                "serve",
                &model.to_string_lossy(),
                "--port",
                &port.to_string(),
            ])
            .args([
                "--max-batch",
                "4",
                "--batch-wait-ms",
                "50",
                "--model-name",
                name,
            ])
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start expflow serve");
        let stderr = child.stderr.take().expect("piped stderr");
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

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("ADDR:PORT")
    }

    /// `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// One request; (status, JSON body).
    pub fn http(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        http(&self.addr, method, path, body, None)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request over a fresh connection, with an optional Bearer token; (status,
/// JSON body, or the body as a string when it is not JSON).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    bearer: Option<&str>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect to the server");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let payload = body.map(Value::to_string).unwrap_or_default();
    let auth = bearer
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let json = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    (status, json)
}

/// The committed tiny Qwen2 fixtures: `tiny` and `tiny_tied` (different weights).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../operators/runtime/models/tests/fixtures/qwen2")
        .join(name)
}
