//! A matrix too large to expand is refused from the lengths of its lists, before anything
//! proportional to the product is allocated.

use std::path::Path;
use std::time::Instant;

use expflow_engine::compile::{CompileOptions, compile_with};
use expflow_engine::{Registry, limits::DEFAULT_MAX_NODES};

fn matrix_pipeline(vars: usize, len: usize) -> String {
    let values = (0..len).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    let mut yaml = String::from("pipeline: big\nnodes:\n  sweep:\n    op: command\n    matrix:\n");
    for v in 0..vars {
        yaml.push_str(&format!("      v{v}: [{values}]\n"));
    }
    yaml.push_str("    out: {o: file}\n    params: {run: \"echo ${matrix.v0} > ${out.o}\"}\n");
    yaml
}

fn refusal(yaml: &str, max_nodes: usize) -> (String, f64) {
    let opts = CompileOptions {
        max_nodes,
        ..CompileOptions::default()
    };
    let started = Instant::now();
    let result = compile_with(Path::new("/tmp/big.yaml"), yaml, &Registry::new(), &opts);
    let took = started.elapsed().as_secs_f64();
    let diags = result.err().expect("refused");
    assert_eq!(diags.items.len(), 1, "{diags}");
    (diags.items[0].message.clone(), took)
}

#[test]
fn a_trillion_node_matrix_is_refused_in_well_under_a_second() {
    let (msg, took) = refusal(&matrix_pipeline(3, 10_000), DEFAULT_MAX_NODES);
    assert_eq!(
        msg,
        "the matrix of node `sweep` expands to 10000 × 10000 × 10000 = 1000000000000 nodes, over the limit of 1000000"
    );
    assert!(took < 1.0, "took {took} s");
}

#[test]
fn a_product_beyond_the_machine_word_is_refused_without_overflow() {
    // 10^4^5 = 10^20 does not fit in 64 bits.
    let (msg, took) = refusal(&matrix_pipeline(5, 10_000), usize::MAX);
    assert!(
        msg.contains("10000 × 10000 × 10000 × 10000 × 10000 = more than"),
        "{msg}"
    );
    assert!(took < 1.0, "took {took} s");
}
