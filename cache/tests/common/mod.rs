//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use expflow_cache::{Cas, Digest, OutputRef, Record, RunInfo};

/// A record for `node` with the given outputs; the key is derived from `seed`.
pub fn record(seed: &str, pipeline: &str, node: &str, outputs: &[(&str, OutputRef)]) -> Record {
    Record {
        key: Digest::of_bytes(seed.as_bytes()),
        pipeline: pipeline.into(),
        node: node.into(),
        op: "table.filter".into(),
        op_version: 1,
        determinism: "deterministic".into(),
        outputs: outputs
            .iter()
            .map(|(p, o)| (p.to_string(), o.clone()))
            .collect::<BTreeMap<_, _>>(),
        material: serde_json::json!({"schema": 1, "params": {"lr": 0.0001, "n": 5}, "seed": seed}),
        started_ms: 1_700_000_000_000,
        duration_ms: 12,
        host: "test-host".into(),
        engine_version: "0.1.0".into(),
        log: None,
        run_id: "r1".into(),
        secrets: vec!["OPENAI_API_KEY".into()],
        items: vec![],
        threads: 2,
        metrics: Default::default(),
    }
}

/// Stores `bytes` and returns a file output pointing at them.
pub fn file_output(cas: &Cas, bytes: &[u8]) -> OutputRef {
    let digest = cas.put_bytes(bytes).expect("put");
    OutputRef {
        digest,
        kind: "table".into(),
        dir: false,
        size: bytes.len() as u64,
    }
}

/// Stores the directory `src` and returns a dir output pointing at it.
pub fn dir_output(cas: &Cas, src: &Path) -> OutputRef {
    let (digest, size) = cas.put_dir(src).expect("put_dir");
    OutputRef {
        digest,
        kind: "model".into(),
        dir: true,
        size,
    }
}

pub fn run(run_id: &str, pipeline: &str, started_ms: u64, nodes: &[(&str, Digest)]) -> RunInfo {
    RunInfo {
        run_id: run_id.into(),
        pipeline: pipeline.into(),
        pipeline_path: format!("/pipelines/{pipeline}.yaml"),
        started_ms,
        finished_ms: started_ms + 1_000,
        status: "ok".into(),
        nodes: nodes.iter().map(|(n, d)| (n.to_string(), *d)).collect(),
        params: Default::default(),
        profiles: Vec::new(),
        inputs: Default::default(),
    }
}

/// Overwrites a blob in place (it is read-only), keeping its size.
pub fn corrupt_blob(cas: &Cas, d: &Digest) {
    let path = cas.blob_path(d);
    let mut bytes = fs::read(&path).expect("read blob");
    bytes[0] ^= 0xff;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::write(&path, &bytes).expect("write blob");
}

/// Writes a small model-like directory.
pub fn write_model_dir(dir: &Path) {
    fs::create_dir_all(dir.join("tokenizer")).expect("mkdir");
    fs::write(dir.join("config.json"), br#"{"hidden": 8}"#).expect("write");
    fs::write(dir.join("model.safetensors"), vec![7u8; 4096]).expect("write");
    fs::write(dir.join("tokenizer/tokenizer.json"), b"{}").expect("write");
}
