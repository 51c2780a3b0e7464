//! The order nodes run in: topological, keeping the file's order among independent nodes,
//! or a diagnostic naming each cycle.

use petgraph::graph::DiGraph;

use crate::compile::CNode;
use crate::diag::Diagnostics;

/// Topological order, or a diagnostic naming each cycle.
pub(crate) fn order(nodes: &[CNode], diags: &mut Diagnostics) -> Option<Vec<usize>> {
    let mut g: DiGraph<usize, ()> = DiGraph::with_capacity(nodes.len(), nodes.len());
    let ix: Vec<_> = (0..nodes.len()).map(|i| g.add_node(i)).collect();
    for (i, n) in nodes.iter().enumerate() {
        for d in &n.deps {
            g.add_edge(ix[*d], ix[i], ());
        }
    }
    match stable_topo(nodes) {
        Some(order) => Some(order),
        None => {
            for scc in petgraph::algo::tarjan_scc(&g) {
                let cyclic = scc.len() > 1 || scc.iter().any(|n| g.contains_edge(*n, *n));
                if !cyclic {
                    continue;
                }
                let mut members: Vec<usize> = scc.iter().map(|n| g[*n]).collect();
                members.sort_unstable();
                let cycle = walk_cycle(nodes, &members);
                let first = &nodes[cycle[0]];
                let names: Vec<&str> = cycle
                    .iter()
                    .chain(std::iter::once(&cycle[0]))
                    .map(|i| nodes[*i].name.as_str())
                    .collect();
                diags.push(
                    &first.loc,
                    format!("cycle: {}", names.join(" → ")),
                    Some("a node cannot depend on its own output; break the cycle".into()),
                );
            }
            None
        }
    }
}

/// Kahn's algorithm, taking the earliest-declared ready node first, so independent nodes
/// keep the order of the file. `None` if there is a cycle.
fn stable_topo(nodes: &[CNode]) -> Option<Vec<usize>> {
    let mut indegree: Vec<usize> = nodes.iter().map(|n| n.deps.len()).collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        for &d in &n.deps {
            children[d].push(i);
        }
    }
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..nodes.len())
        .filter(|i| indegree[*i] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for &c in &children[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.push(std::cmp::Reverse(c));
            }
        }
    }
    (order.len() == nodes.len()).then_some(order)
}

/// Orders the members of a strongly connected component along its edges.
fn walk_cycle(nodes: &[CNode], members: &[usize]) -> Vec<usize> {
    let mut cycle = vec![members[0]];
    let mut cur = members[0];
    loop {
        // follow an edge cur -> next within the component
        let next = members
            .iter()
            .copied()
            .find(|m| nodes[*m].deps.contains(&cur) && (!cycle.contains(m) || *m == members[0]));
        match next {
            Some(n) if n == members[0] => break,
            Some(n) => {
                cycle.push(n);
                cur = n;
            }
            None => break,
        }
    }
    cycle
}
