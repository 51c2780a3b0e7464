//! Limits on what a pipeline file may ask for, checked before anything is built.

use crate::diag::Diagnostics;
use crate::spec::PipelineSpec;

/// The most nodes a pipeline may expand to unless `--max-nodes` says otherwise.
pub const DEFAULT_MAX_NODES: usize = 1_000_000;

/// Checks that expanding every matrix gives at most `max` nodes in the whole pipeline,
/// from the lengths of the matrix lists alone (checked arithmetic, nothing expanded).
/// Reports the node that goes over and returns false if it would not fit.
pub(crate) fn check_node_count(spec: &PipelineSpec, max: usize, diags: &mut Diagnostics) -> bool {
    let hint = || {
        Some(format!(
            "shrink the matrix or split the sweep; `--max-nodes N` raises the limit of {max}"
        ))
    };
    let mut total: usize = 0;
    for node in &spec.nodes {
        let lens: Vec<usize> = node.matrix.iter().map(|(_, v, _)| v.len()).collect();
        let loc = node
            .matrix
            .first()
            .map_or(node.loc.clone(), |(_, _, l)| l.clone());
        let factors = lens
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" × ");
        let product = lens.iter().try_fold(1usize, |acc, n| acc.checked_mul(*n));
        let n = match product {
            Some(n) if n <= max => n,
            Some(n) => {
                diags.push(
                    &loc,
                    format!(
                        "the matrix of node `{}` expands to {factors} = {n} nodes, over the limit of {max}",
                        node.name
                    ),
                    hint(),
                );
                return false;
            }
            None => {
                diags.push(
                    &loc,
                    format!(
                        "the matrix of node `{}` expands to {factors} = more than 2^64 nodes, over the limit of {max}",
                        node.name
                    ),
                    hint(),
                );
                return false;
            }
        };
        match total.checked_add(n).filter(|t| *t <= max) {
            Some(t) => total = t,
            None => {
                diags.push(
                    &loc,
                    format!(
                        "node `{}` ({n} node{}) takes the pipeline over the limit of {max} nodes ({total} before it)",
                        node.name,
                        if n == 1 { "" } else { "s" }
                    ),
                    hint(),
                );
                return false;
            }
        }
    }
    true
}
