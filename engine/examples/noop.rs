//! Profiling aid for no-op re-runs: `cargo run --release -p expflow-engine --example noop
//! -- N DIR [REPEATS] [JOBS]` runs the generated pipeline of N nodes (node i reads i-1 and
//! i/2) in the workspace DIR once if DIR has no run yet, then re-runs it REPEATS times
//! (default 5) and prints each re-run's wall and CPU time. Splitting the first run from the
//! re-runs lets a profiler (`perf record`, `valgrind --tool=callgrind`) see the re-runs
//! alone.

#[path = "../benches/generated/mod.rs"]
mod generated;

use std::time::Instant;

use expflow_engine::{CancelToken, RunOptions, Workspace, compile, workspace};

fn cpu_s() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = std::path::PathBuf::from(args.get(2).map_or("/tmp/expflow-noop", |s| s));
    let repeats: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(5);
    let jobs: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(8);
    std::fs::create_dir_all(&dir).unwrap();
    let reg = generated::registry();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = RunOptions {
        jobs,
        cpus: jobs as u32,
        ..RunOptions::default()
    };
    let text = generated::pipeline_text(n);
    let fresh = !dir.join(".expflow").exists();
    let t = Instant::now();
    let p = compile::compile(&dir.join("gen.yaml"), &text, &reg, &[]).unwrap();
    eprintln!("compile: {:.3} s", t.elapsed().as_secs_f64());
    let ws = Workspace::open(
        &dir.join(".expflow"),
        workspace::holder("noop", "gen", None),
    )
    .unwrap();
    let once = |what: &str| {
        let (t, c) = (Instant::now(), cpu_s());
        let id = workspace::new_run_id();
        let s = rt
            .block_on(expflow_engine::run(&ws, &p, &id, &opts, CancelToken::new()))
            .unwrap();
        eprintln!(
            "{what}: {:.3} s wall, {:.3} s CPU, {} executed, {} cached",
            t.elapsed().as_secs_f64(),
            cpu_s() - c,
            s.executed.len(),
            s.cached.len()
        );
    };
    if fresh {
        once("first run");
    }
    for _ in 0..repeats {
        once("no-op re-run");
    }
}
