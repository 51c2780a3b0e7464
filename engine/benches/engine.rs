//! Engine benchmarks: compiling generated pipelines, no-op re-runs and plans (everything
//! cached), and executing many trivial nodes. Run with
//! `cargo bench -p expflow-engine --bench engine`.
//! `EXPFLOW_BENCH_MAX` caps the largest pipeline size (default 100000).

use std::path::Path;
use std::time::Duration;

mod generated;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use expflow_engine::{CancelToken, RunOptions, Workspace, compile, workspace};
use generated::{pipeline_text, registry, wide_text};

/// `EXPFLOW_BENCH_ONLY=compile` (or `noop_rerun`, `execute_trivial`) skips the other groups,
/// whose setup (running whole pipelines) criterion performs even when they are filtered out.
fn wanted(group: &str) -> bool {
    std::env::var("EXPFLOW_BENCH_ONLY").map_or(true, |g| g == group)
}

fn sizes() -> Vec<usize> {
    let max: usize = std::env::var("EXPFLOW_BENCH_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    [1_000, 10_000, 100_000]
        .into_iter()
        .filter(|n| *n <= max)
        .collect()
}

fn run_once(
    ws: &Workspace,
    p: &expflow_engine::Pipeline,
    rt: &tokio::runtime::Runtime,
    jobs: usize,
) -> expflow_engine::RunSummary {
    let opts = RunOptions {
        jobs,
        cpus: jobs as u32,
        ..RunOptions::default()
    };
    let id = workspace::new_run_id();
    rt.block_on(expflow_engine::run(ws, p, &id, &opts, CancelToken::new()))
        .expect("run")
}

fn bench_compile(c: &mut Criterion) {
    if !wanted("compile") {
        return;
    }
    let reg = registry();
    let mut g = c.benchmark_group("compile");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for n in sizes() {
        let text = pipeline_text(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| {
                compile::compile(Path::new("/tmp/gen.yaml"), text, &reg, &[]).expect("compiles")
            })
        });
    }
    g.finish();
}

fn bench_noop_rerun(c: &mut Criterion) {
    if !wanted("noop_rerun") {
        return;
    }
    let reg = registry();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("noop_rerun");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for n in sizes() {
        let dir = tempfile::tempdir().unwrap();
        let p =
            compile::compile(&dir.path().join("gen.yaml"), &pipeline_text(n), &reg, &[]).unwrap();
        let ws = Workspace::open(
            &dir.path().join(".expflow"),
            workspace::holder("bench", "gen", None),
        )
        .unwrap();
        let first = run_once(&ws, &p, &rt, 8);
        assert_eq!(first.executed.len(), n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let s = run_once(&ws, &p, &rt, 8);
                assert_eq!(s.cached.len(), n);
            })
        });
        // `expflow plan` on the same, everything cached.
        g.bench_function(BenchmarkId::new("plan", n), |b| {
            b.iter(|| {
                let entries = expflow_engine::plan(&ws, &p, &[]).expect("plan");
                assert!(entries.iter().all(|e| e.state == "cached"));
            })
        });
    }
    g.finish();
}

fn bench_execute(c: &mut Criterion) {
    if !wanted("execute_trivial") {
        return;
    }
    let reg = registry();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("execute_trivial");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    let n = 10_000;
    let text = wide_text(n);
    // Every iteration's workspace is kept until the group ends. Deleting one (10,000 blobs)
    // right before the next iteration would measure the file system instead of the engine:
    // ext4 without a journal (this project's machines) skips inodes freed in the last one
    // to six minutes when it allocates new ones, and creating files right after a large
    // deletion runs at less than half its usual speed (README, "Node throughput").
    let kept = std::cell::RefCell::new(Vec::new());
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::from_parameter(n), |b| {
        b.iter_with_setup(
            || {
                let dir = tempfile::tempdir().unwrap();
                let p = compile::compile(&dir.path().join("w.yaml"), &text, &reg, &[]).unwrap();
                let ws = Workspace::open(
                    &dir.path().join(".expflow"),
                    workspace::holder("bench", "wide", None),
                )
                .unwrap();
                kept.borrow_mut().push(dir);
                (p, ws)
            },
            |(p, ws)| {
                let s = run_once(&ws, &p, &rt, 8);
                assert_eq!(s.executed.len(), n);
                // Closing the workspace is not part of the measurement.
                ws
            },
        )
    });
    g.finish();
}

criterion_group!(benches, bench_compile, bench_noop_rerun, bench_execute);
criterion_main!(benches);
