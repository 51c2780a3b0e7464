//! Loading a saved HNSW index: with its stored graph (`hnsw.graph`), and without it (an
//! artifact written before the graph was stored), when the graph is rebuilt by serial
//! insertion. Also checks that the loaded index answers exactly as the freshly built one and
//! prints its recall@10 against exact search.
//!
//! Data as in `search.rs`: `EXPFLOW_BENCH_N` (default 100,000) clustered vectors of dimension
//! 384, cosine, M 16, ef_construction 200. Run with
//! `cargo bench -p expflow-retrieval --bench load`.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use expflow_retrieval::{HnswParams, Index, IndexKind, Metric, store::GRAPH_FILE};

mod data;
use data::{DIM, bench_n, clustered};

const QUERIES: usize = 256;
const K: usize = 10;

fn load(c: &mut Criterion) {
    let n = bench_n();
    let ids: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
    let queries = clustered(QUERIES, 2);
    let start = Instant::now();
    let built = Index::hnsw(
        ids,
        clustered(n, 1),
        DIM,
        Metric::Cosine,
        HnswParams::default(),
    )
    .expect("hnsw index");
    println!(
        "n={n} dim={DIM}: serial build {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let start = Instant::now();
    built.save(dir.path()).expect("save");
    println!("save {:.2} s", start.elapsed().as_secs_f64());
    for entry in std::fs::read_dir(dir.path()).expect("index directory") {
        let entry = entry.expect("entry");
        let size = entry.metadata().expect("metadata").len();
        println!(
            "  {}: {:.1} MB",
            entry.file_name().to_string_lossy(),
            size as f64 / 1e6
        );
    }

    let loaded = Index::load(dir.path()).expect("load");
    for ef in [K, 64, 128] {
        let a = loaded.search_vectors(&queries, K, ef).expect("search");
        assert_eq!(
            a,
            built.search_vectors(&queries, K, ef).expect("search"),
            "the loaded index must answer as the built one (ef {ef})"
        );
        let IndexKind::Hnsw(h) = &loaded.kind else {
            panic!("the loaded index is not HNSW")
        };
        let recall = h.recall_at_k(&queries, K, ef).expect("recall");
        println!("loaded index answers as the built one; recall@{K} with ef={ef}: {recall:.4}");
    }
    drop(loaded);

    let mut g = c.benchmark_group(format!("hnsw_load_n{n}_d{DIM}"));
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("with_stored_graph", |b| {
        b.iter(|| Index::load(dir.path()).expect("load"))
    });
    g.finish();

    std::fs::remove_file(dir.path().join(GRAPH_FILE)).expect("remove the graph");
    let start = Instant::now();
    let rebuilt = Index::load(dir.path()).expect("load without graph");
    println!(
        "load without {GRAPH_FILE} (graph rebuilt serially): {:.2} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(
        rebuilt.search_vectors(&queries, K, 64).expect("search"),
        built.search_vectors(&queries, K, 64).expect("search")
    );
}

criterion_group!(benches, load);
criterion_main!(benches);
