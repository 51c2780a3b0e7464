//! Engine benchmarks: compiling generated pipelines, no-op re-runs (everything cached), and
//! executing many trivial nodes. Run with `cargo bench -p expflow-engine --bench engine`.
//! `EXPFLOW_BENCH_MAX` caps the largest pipeline size (default 100000).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use expflow_engine::{
    CancelToken, Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType,
    Ports, Registry, Resources, RunOptions, Signature, Workspace, compile, workspace,
};
use serde_json::json;

/// A trivial operator: writes its `value` parameter and the size of its optional input.
struct Const;

impl Operator for Const {
    fn kind(&self) -> &'static str {
        "bench.const"
    }
    fn version(&self) -> u32 {
        1
    }
    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Open(PortType::File),
            outputs: Ports::Fixed(vec![Port::new("out", PortType::File, "a few bytes")]),
            params: vec![ParamSpec::with_default(
                "value",
                ParamKind::Any,
                json!(0),
                "written out",
            )],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }
    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let n: u64 = ctx
            .inputs()
            .values()
            .map(|i| std::fs::metadata(&i.path).map_or(0, |m| m.len()))
            .sum();
        std::fs::write(
            &ctx.output("out")?.path,
            format!("{} {n}\n", ctx.params()["value"]),
        )?;
        Ok(())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(Const));
    r
}

/// A layered DAG: node i reads node i-1 and node i/2 (fan-in 2, depth ~n).
fn pipeline_text(n: usize) -> String {
    let mut s = String::with_capacity(n * 80);
    s.push_str("pipeline: gen\nparams:\n  v: 1\nnodes:\n");
    for i in 0..n {
        s.push_str(&format!("  n{i}:\n    op: bench.const\n"));
        if i > 0 {
            let j = i / 2;
            if j != i - 1 {
                s.push_str(&format!("    in: {{a: n{}.out, b: n{j}.out}}\n", i - 1));
            } else {
                s.push_str(&format!("    in: {{a: n{}.out}}\n", i - 1));
            }
        }
        s.push_str(&format!("    params: {{value: \"${{params.v}}-{i}\"}}\n"));
    }
    s
}

/// Independent nodes (width), for raw execution throughput.
fn wide_text(n: usize) -> String {
    let mut s = String::with_capacity(n * 60);
    s.push_str("pipeline: wide\nnodes:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  n{i}:\n    op: bench.const\n    params: {{value: {i}}}\n"
        ));
    }
    s
}

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
                (dir, p, ws)
            },
            |(dir, p, ws)| {
                let s = run_once(&ws, &p, &rt, 8);
                assert_eq!(s.executed.len(), n);
                // Deleting the workspace is not part of the measurement.
                (dir, ws)
            },
        )
    });
    g.finish();
}

criterion_group!(benches, bench_compile, bench_noop_rerun, bench_execute);
criterion_main!(benches);
