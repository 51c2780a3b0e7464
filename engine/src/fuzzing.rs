//! The pipeline front end as one entry point, for the fuzz target in `engine/fuzz/` and the
//! test that replays its corpus (`operators/tests/fuzz_corpus.rs`, which has every
//! operator): bytes → YAML → spec → compiled graph → node keys. Nothing is read from or
//! written to the file system: the pipeline file's directory does not exist, so every
//! declared input is reported missing.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use expflow_cache::Digest;

use crate::compile::{Pipeline, compile};
use crate::key::{KEY_SCHEMA, KeyParts};
use crate::operator::Registry;

/// Where the fuzzed pipeline claims to live (a directory that is never created).
pub const PIPELINE_FILE: &str = "/nonexistent/expflow-fuzz/pipeline.yaml";

/// The key a compiled node would have with no inputs and no declared environment: what
/// [`crate::plan`] hashes, less what needs the file system.
pub fn bare_key(p: &Pipeline, i: usize) -> Digest {
    let node = &p.nodes[i];
    KeyParts {
        schema: KEY_SCHEMA,
        op: node.op.kind(),
        op_version: node.op.version(),
        params: &node.params,
        inputs: &BTreeMap::new(),
        outputs: &node.outputs,
        env: &BTreeMap::new(),
        seed: None,
        metrics: &node.metrics,
    }
    .key()
}

/// Compiles `bytes` (read as UTF-8, invalid sequences replaced) as a pipeline file and, when
/// it compiles, checks what every compiled pipeline promises: node names are unique, each
/// node comes after the nodes it reads, every input source names an earlier node's output,
/// and each node has a key. Returns the number of nodes, or of diagnostics. Panics only if
/// a promise is broken.
pub fn pipeline(registry: &Registry, bytes: &[u8]) -> usize {
    let text = String::from_utf8_lossy(bytes);
    match compile(Path::new(PIPELINE_FILE), &text, registry, &[]) {
        Err(diags) => {
            assert!(!diags.is_empty(), "a failed compile reports a problem");
            diags.items.len()
        }
        Ok(p) => {
            let mut names = HashSet::new();
            for (i, node) in p.nodes.iter().enumerate() {
                assert!(
                    names.insert(node.name.as_str()),
                    "two nodes are named `{}`",
                    node.name
                );
                assert!(
                    node.deps.iter().all(|d| *d < i),
                    "node `{}` comes before a node it reads",
                    node.name
                );
                for src in node.inputs.values() {
                    let ups = match src {
                        crate::Source::Node { node: up, port } => vec![(*up, port)],
                        crate::Source::Gather { nodes, port } => {
                            nodes.iter().map(|up| (*up, port)).collect()
                        }
                        crate::Source::Input(_) => Vec::new(),
                    };
                    for (up, port) in ups {
                        assert!(
                            up < i && p.nodes[up].outputs.contains_key(port),
                            "node `{}` reads a port that no earlier node has",
                            node.name
                        );
                    }
                }
                let _ = bare_key(&p, i);
            }
            for (_, n, port) in &p.outputs {
                assert!(p.nodes[*n].outputs.contains_key(port));
            }
            p.nodes.len()
        }
    }
}
