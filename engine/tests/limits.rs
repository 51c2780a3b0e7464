//! A matrix too large to expand is refused from the lengths of its lists, before anything
//! proportional to the product is allocated.

use std::path::Path;
use std::time::Instant;

use expflow_engine::compile::{CompileOptions, compile_with};
use expflow_engine::{Diagnostics, Registry, limits::DEFAULT_MAX_NODES, spec};

fn matrix_pipeline(vars: usize, len: usize) -> String {
    let values = (0..len)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut yaml = String::from("pipeline: big\nnodes:\n  sweep:\n    op: command\n    matrix:\n");
    for v in 0..vars {
        yaml.push_str(&format!("      v{v}: [{values}]\n"));
    }
    yaml.push_str("    out: {o: file}\n    params: {run: \"echo ${matrix.v0} > ${out.o}\"}\n");
    yaml
}

/// The refusal's message, and the seconds compiling took beyond reading the file's
/// structure (which any compile pays, and which a loaded debug build makes slow).
fn refusal(yaml: &str, max_nodes: usize) -> (String, f64) {
    let file = Path::new("/tmp/big.yaml");
    let started = Instant::now();
    let mut diags = Diagnostics::new("big.yaml");
    let spec = spec::read(file, yaml, &mut diags);
    let reading = started.elapsed().as_secs_f64();
    assert!(diags.is_empty(), "{diags}");
    assert_eq!(spec.nodes[0].matrix.len(), yaml.matches(": [").count());
    let opts = CompileOptions {
        max_nodes,
        ..CompileOptions::default()
    };
    let started = Instant::now();
    let result = compile_with(file, yaml, &Registry::new(), &opts);
    let took = started.elapsed().as_secs_f64();
    let diags = result.err().expect("refused");
    assert_eq!(diags.items.len(), 1, "{diags}");
    eprintln!("reading {reading:.3} s, compiling {took:.3} s");
    (diags.items[0].message.clone(), took - reading)
}

#[test]
fn a_trillion_node_matrix_is_refused_in_well_under_a_second() {
    let (msg, took) = refusal(&matrix_pipeline(3, 10_000), DEFAULT_MAX_NODES);
    assert_eq!(
        msg,
        "the matrix of node `sweep` expands to 10000 × 10000 × 10000 = 1000000000000 nodes, over the limit of 1000000"
    );
    assert!(took < 1.0, "refusing took {took} s beyond reading the file");
}

#[test]
fn a_product_beyond_the_machine_word_is_refused_without_overflow() {
    // 10^4^5 = 10^20 does not fit in 64 bits.
    let (msg, took) = refusal(&matrix_pipeline(5, 10_000), usize::MAX);
    assert!(
        msg.contains("10000 × 10000 × 10000 × 10000 × 10000 = more than"),
        "{msg}"
    );
    assert!(took < 1.0, "refusing took {took} s beyond reading the file");
}
