//! `graph`: the compiled pipeline as DOT, Mermaid or JSON.

use super::*;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

pub fn graph(p: &Pipeline, format: GraphFormat, json: bool) -> Result<String> {
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for n in &p.nodes {
        for (port, src) in &n.inputs {
            let from: Vec<(String, String)> = match src {
                Source::Input(name) => vec![(format!("inputs.{name}"), port.clone())],
                Source::Node { node, port: up } => {
                    vec![(p.nodes[*node].name.clone(), format!("{up}→{port}"))]
                }
                Source::Gather { nodes, port: up } => nodes
                    .iter()
                    .map(|node| (p.nodes[*node].name.clone(), format!("{up}→{port}[*]")))
                    .collect(),
            };
            for (from, label) in from {
                edges.entry((from, n.name.clone())).or_default().push(label);
            }
        }
    }
    if json {
        let nodes: Vec<_> = p
            .nodes
            .iter()
            .map(|n| json!({"name": n.name, "op": n.op.kind()}))
            .collect();
        let es: Vec<_> = edges
            .iter()
            .map(|((a, b), l)| json!({"from": a, "to": b, "ports": l}))
            .collect();
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(
                &json!({"pipeline": p.name, "inputs": p.inputs.keys().collect::<Vec<_>>(), "nodes": nodes, "edges": es})
            )?
        ));
    }
    let mut out = String::new();
    match format {
        GraphFormat::Dot => {
            let _ = writeln!(out, "digraph \"{}\" {{\n  rankdir=LR;", p.name);
            for name in p.inputs.keys() {
                let _ = writeln!(out, "  \"inputs.{name}\" [shape=note];");
            }
            for n in &p.nodes {
                let _ = writeln!(
                    out,
                    "  \"{}\" [shape=box, label=\"{}\\n{}\"];",
                    n.name,
                    n.name,
                    n.op.kind()
                );
            }
            for ((a, b), l) in &edges {
                let _ = writeln!(out, "  \"{a}\" -> \"{b}\" [label=\"{}\"];", l.join(", "));
            }
            out.push_str("}\n");
        }
        GraphFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            let id = |s: &str| {
                s.chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect::<String>()
            };
            for name in p.inputs.keys() {
                let _ = writeln!(
                    out,
                    "  {}[/\"inputs.{name}\"/]",
                    id(&format!("inputs.{name}"))
                );
            }
            for n in &p.nodes {
                let _ = writeln!(out, "  {}[\"{}<br/>{}\"]", id(&n.name), n.name, n.op.kind());
            }
            for ((a, b), l) in &edges {
                let _ = writeln!(out, "  {} -->|{}| {}", id(a), l.join(", "), id(b));
            }
        }
    }
    Ok(out)
}
