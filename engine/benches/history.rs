//! `runs` and `diff` on a record store holding 1,000 runs of one pipeline. Run with
//! `cargo bench -p expflow-engine --bench history`.
//!
//! The store is written directly (records and runs as the scheduler writes them): a
//! pipeline of 50 nodes, node i reading nodes i-1 and i/2; every node keeps 5 scalar
//! metrics and every tenth a training curve (3 columns of 200 steps). Each run changes one
//! node's parameter, which gives that node and what depends on it new records, about 25
//! per run, 25,000 in all. The store lives on /dev/shm when it exists: writing it fsyncs
//! the journal once per record, which is beside the point here.

use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use expflow_cache::{Digest, Metrics, OutputRef, Record, RunInfo, SledStore, Store};
use expflow_engine::history::{History, diff};
use expflow_engine::{KEY_SCHEMA, KeyMaterial, PortType};
use serde_json::{Map, json};

const NODES: usize = 50;
const RUNS: usize = 1_000;

fn record(i: usize, value: u64, inputs: BTreeMap<String, Digest>, run: &str) -> Record {
    let mut params = Map::new();
    params.insert("value".into(), json!(value));
    params.insert("name".into(), json!(format!("node {i}")));
    let sources = inputs
        .keys()
        .map(|port| {
            let from = if port == "a" { i - 1 } else { i / 2 };
            (port.clone(), format!("n{from}.out"))
        })
        .collect();
    let material = KeyMaterial {
        schema: KEY_SCHEMA,
        op: "bench.const".into(),
        op_version: 1,
        params,
        inputs,
        outputs: [("out".to_string(), PortType::File)].into_iter().collect(),
        env: BTreeMap::new(),
        seed: None,
        metrics: Vec::new(),
        input_types: BTreeMap::new(),
        sources,
    };
    let key = material.key();
    let mut metrics = Metrics::default();
    for m in 0..5 {
        metrics
            .scalars
            .insert(format!("scores.m{m}"), (value as f64 + m as f64) / 7.0);
    }
    if i.is_multiple_of(10) {
        for col in ["step", "loss", "lr"] {
            let values = (0..200)
                .map(|s| Some(s as f64 / (value as f64 + 1.0)))
                .collect();
            metrics.series.insert(format!("metrics.{col}"), values);
        }
    }
    Record {
        key,
        pipeline: "bench".into(),
        node: format!("n{i}"),
        op: "bench.const".into(),
        op_version: 1,
        determinism: "deterministic".into(),
        outputs: [(
            "out".to_string(),
            OutputRef {
                digest: Digest::of_bytes(format!("{key:?} out").as_bytes()),
                kind: "file".into(),
                dir: false,
                size: 16,
            },
        )]
        .into_iter()
        .collect(),
        material: material.to_json(),
        started_ms: 0,
        duration_ms: 10,
        host: "bench".into(),
        engine_version: "bench".into(),
        log: None,
        run_id: run.to_string(),
        secrets: Vec::new(),
        items: Vec::new(),
        threads: 1,
        metrics,
    }
}

/// Writes the 1,000 runs; returns the first and last run ids.
fn fill(store: &dyn Store) -> (String, String) {
    let mut values = [0u64; NODES];
    let mut current: Vec<Option<Record>> = vec![None; NODES];
    let mut ids = Vec::new();
    for r in 0..RUNS {
        let run_id = format!("20260101-{r:06}");
        if r > 0 {
            values[(r * 7) % NODES] += 1;
        }
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let mut inputs = BTreeMap::new();
            if i > 0 {
                let out = |k: usize| current[k].as_ref().unwrap().outputs["out"].digest;
                inputs.insert("a".to_string(), out(i - 1));
                inputs.insert("b".to_string(), out(i / 2));
            }
            let rec = record(i, values[i], inputs, &run_id);
            if current[i].as_ref().is_none_or(|c| c.key != rec.key) {
                store.put_record(&rec).unwrap();
                current[i] = Some(rec);
            }
            nodes.push((format!("n{i}"), current[i].as_ref().unwrap().key));
        }
        let mut params = Map::new();
        params.insert("round".into(), json!(r));
        store
            .put_run(&RunInfo {
                run_id: run_id.clone(),
                pipeline: "bench".into(),
                pipeline_path: "bench.yaml".into(),
                started_ms: r as u64 * 1000,
                finished_ms: r as u64 * 1000 + 500,
                status: "ok".into(),
                nodes,
                params,
                profiles: Vec::new(),
                inputs: Default::default(),
            })
            .unwrap();
        ids.push(run_id);
    }
    (ids[0].clone(), ids[RUNS - 1].clone())
}

fn bench(c: &mut Criterion) {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let store = SledStore::open(dir.path()).unwrap();
    let started = std::time::Instant::now();
    let (first, last) = fill(&store);
    let records = store.records().unwrap().len();
    eprintln!(
        "store: {RUNS} runs, {records} records, written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut g = c.benchmark_group("history_1000_runs");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("diff first last", |b| {
        b.iter(|| {
            let mut h = History::open(&store).unwrap();
            let d = diff(&mut h, &first, &last).unwrap();
            assert!(!d.reran.is_empty() && !d.metrics.is_empty());
            d
        })
    });
    g.bench_function("runs", |b| {
        b.iter(|| {
            let mut h = History::open(&store).unwrap();
            let rows = h.rows(None).unwrap();
            assert_eq!(rows.len(), RUNS);
            rows
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
