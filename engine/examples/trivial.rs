//! Profiling aid for node throughput: `cargo run --release -p expflow-engine --example
//! trivial -- N DIR [JOBS]` runs the bench's pipeline of N independent trivial nodes
//! (`execute_trivial`) once in a fresh workspace under DIR and prints nodes per second and
//! the CPU time, so that `strace -f -c` or `perf` sees one execution and nothing else.

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
    let dir = std::path::PathBuf::from(args.get(2).map_or("/tmp/expflow-trivial", |s| s));
    let jobs: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(8);
    assert!(
        !dir.join(".expflow").exists(),
        "{} has a workspace already; give a fresh directory",
        dir.display()
    );
    std::fs::create_dir_all(&dir).unwrap();
    let reg = generated::registry();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = RunOptions {
        jobs,
        cpus: jobs as u32,
        ..RunOptions::default()
    };
    let p = compile::compile(&dir.join("w.yaml"), &generated::wide_text(n), &reg, &[]).unwrap();
    let ws = Workspace::open(
        &dir.join(".expflow"),
        workspace::holder("trivial", "wide", None),
    )
    .unwrap();
    let (t, c) = (Instant::now(), cpu_s());
    let id = workspace::new_run_id();
    let s = rt
        .block_on(expflow_engine::run(&ws, &p, &id, &opts, CancelToken::new()))
        .unwrap();
    let wall = t.elapsed().as_secs_f64();
    assert_eq!(s.executed.len(), n);
    eprintln!(
        "{n} nodes, {jobs} jobs: {wall:.3} s wall ({:.0} nodes/s), {:.3} s CPU",
        n as f64 / wall,
        cpu_s() - c
    );
}
