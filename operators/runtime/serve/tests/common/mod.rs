//! Shared test helpers: a tiny Qwen2 directory, the server on a free loopback port, and a
//! small blocking HTTP client.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use expflow_models::{TinySpec, write_tiny_qwen2};
use expflow_serve::{Running, ServeConfig};
use serde_json::Value;

/// Text the tiny tokenizer is trained on.
pub fn corpus() -> Vec<String> {
    [
        "Add three spatulas of sucrose and yeast to the beaker.",
        "<Narration>\nHeat the test tube gently over the flame.\n",
        "<Principle>\nYeast ferments glucose into ethanol and carbon dioxide.\n",
        "<Safety>\nWear goggles when heating liquids.\n",
        "The quick brown fox jumps over the lazy dog.",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Writes the tiny model into `dir`.
pub fn tiny_model(dir: &Path) {
    write_tiny_qwen2(dir, &TinySpec::default(), &corpus()).expect("write the tiny model");
}

/// Serves the model in `dir` as `tiny` on 127.0.0.1 with a free port.
pub fn start(dir: &Path, max_batch: usize, wait_ms: u64) -> Running {
    let loaded = expflow_serve::load(dir, Some("tiny".into()), 16).expect("load");
    let cfg = ServeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        max_batch,
        batch_wait: Duration::from_millis(wait_ms),
        api_key: None,
    };
    expflow_serve::spawn(loaded, &cfg).expect("spawn the server")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn finish(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut resp = resp.expect("the request reaches the server");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().expect("read the body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// POSTs raw bytes as JSON; (status, body).
pub fn post_raw(url: &str, body: &[u8]) -> (u16, Value) {
    finish(
        agent()
            .post(url)
            .header("Content-Type", "application/json")
            .send(body),
    )
}

pub fn post(url: &str, body: &Value) -> (u16, Value) {
    post_raw(url, body.to_string().as_bytes())
}

pub fn get(url: &str) -> (u16, Value) {
    finish(agent().get(url).call())
}
