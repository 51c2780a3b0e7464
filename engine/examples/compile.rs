//! Profiling aid for compiling: `cargo run --release -p expflow-engine --example compile --
//! N [REPEATS] [PHASE]` compiles the generated pipeline of N nodes (node i reads i-1 and i/2)
//! REPEATS times (default 5) and prints each compile's wall time and the minimum. With PHASE
//! `parse` only the YAML is parsed, with `read` the spec is read as well. Under
//! `valgrind --tool=callgrind` (instruction counts are reproducible on a busy machine, wall
//! time is not) use REPEATS 1.

#[path = "../benches/generated/mod.rs"]
mod generated;

use std::path::Path;
use std::time::Instant;

use expflow_engine::{compile, diag::Diagnostics, spec, yaml};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let repeats: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let phase = args.get(3).map_or("compile", |s| s.as_str());
    let reg = generated::registry();
    let text = generated::pipeline_text(n);
    let file = Path::new("/tmp/gen.yaml");
    let mut best = f64::INFINITY;
    for i in 0..repeats {
        let t = Instant::now();
        match phase {
            "parse" => {
                yaml::parse(&text).expect("parses");
            }
            "read" => {
                let mut d = Diagnostics::new("gen.yaml");
                let s = spec::read(file, &text, &mut d);
                assert!(d.is_empty() && s.nodes.len() == n);
            }
            _ => {
                let p = compile::compile(file, &text, &reg, &[]).expect("compiles");
                assert_eq!(p.nodes.len(), n);
            }
        }
        let s = t.elapsed().as_secs_f64();
        best = best.min(s);
        println!("{phase} {n} nodes, try {i}: {s:.3} s");
    }
    println!("{phase} {n} nodes: minimum {best:.3} s over {repeats}");
}
