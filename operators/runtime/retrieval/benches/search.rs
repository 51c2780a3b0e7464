//! Search latency and recall at scale: exact and HNSW search (one query, and a batch of 64),
//! HNSW build time (serial and parallel insertion), and recall@10 of HNSW against exact.
//!
//! Data: `EXPFLOW_BENCH_N` vectors (default 100,000) of dimension 384, drawn as seeded
//! Gaussian clusters (64 centres, unit-variance noise scaled by 0.3), plus 256 queries from
//! the same clusters. Run with `cargo bench -p expflow-retrieval --bench search`; set
//! `EXPFLOW_BENCH_N=20000` for a quick run, `EXPFLOW_BENCH_SKIP_BUILD_GROUP=1` to skip the
//! repeated builds on a tenth of the data. `--bench load` measures loading a saved index.

use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use expflow_retrieval::{ExactIndex, HnswIndex, HnswParams, Metric};

mod data;
use data::{DIM, bench_n, clustered};

const QUERIES: usize = 256;
const BATCH: usize = 64;
const K: usize = 10;
const EF: usize = 64;

fn search(c: &mut Criterion) {
    let n = bench_n();
    let data = clustered(n, 1);
    let queries = clustered(QUERIES, 2);
    let exact = ExactIndex::build(data, DIM, Metric::Cosine).expect("exact index");

    let params = HnswParams::default();
    let start = Instant::now();
    let hnsw = HnswIndex::build(exact.clone(), params).expect("hnsw index");
    let serial = start.elapsed();
    let start = Instant::now();
    let parallel = HnswIndex::build(
        exact.clone(),
        HnswParams {
            parallel: true,
            ..params
        },
    )
    .expect("hnsw index");
    let par = start.elapsed();
    for (name, index, took) in [("serial", &hnsw, serial), ("parallel", &parallel, par)] {
        for ef in [K, EF, 128] {
            let recall = index.recall_at_k(&queries, K, ef).expect("recall");
            println!(
                "n={n} dim={DIM} hnsw build ({name}, M={}, ef_construction={}): {:.2} s; recall@{K} with ef={ef}: {recall:.4}",
                params.m,
                params.ef_construction,
                took.as_secs_f64()
            );
        }
    }

    let mut g = c.benchmark_group(format!("search_n{n}_d{DIM}"));
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let one = &queries[..DIM];
    let batch = &queries[..BATCH * DIM];
    g.bench_function("exact_one_query", |b| {
        b.iter(|| exact.search(one, K).expect("search"))
    });
    g.bench_function(format!("exact_batch_{BATCH}"), |b| {
        b.iter(|| exact.search_batch(batch, K).expect("search"))
    });
    g.bench_function(format!("hnsw_one_query_ef{EF}"), |b| {
        b.iter(|| hnsw.search(one, K, EF).expect("search"))
    });
    g.bench_function(format!("hnsw_batch_{BATCH}_ef{EF}"), |b| {
        b.iter(|| hnsw.search_batch(batch, K, EF).expect("search"))
    });
    g.finish();

    if std::env::var_os("EXPFLOW_BENCH_SKIP_BUILD_GROUP").is_some() {
        return;
    }
    // Build time on a tenth of the data (a full build per sample would take minutes).
    let small = ExactIndex::build(clustered(n / 10, 3), DIM, Metric::Cosine).expect("index");
    let mut g = c.benchmark_group(format!("hnsw_build_n{}_d{DIM}", n / 10));
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for parallel in [false, true] {
        let name = if parallel { "parallel" } else { "serial" };
        g.bench_function(name, |b| {
            b.iter_batched(
                || small.clone(),
                |e| HnswIndex::build(e, HnswParams { parallel, ..params }).expect("build"),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, search);
criterion_main!(benches);
