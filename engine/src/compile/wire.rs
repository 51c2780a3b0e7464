//! Wiring: each instance's `in:` references resolved to declared inputs or to the ports of
//! earlier nodes (matching sweep points), each reported once where it cannot be.

use super::*;

impl Builder<'_> {
    pub(super) fn resolve_inputs(
        &mut self,
        inputs: &BTreeMap<String, (PathBuf, bool)>,
        bad_inputs: &HashSet<String>,
    ) -> Vec<CNode> {
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut by_base: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            by_name.insert(n.name.clone(), i);
            by_base.entry(n.base.clone()).or_default().push(i);
        }
        let mut nodes = std::mem::take(&mut self.nodes);
        let refs = std::mem::take(&mut self.refs);
        let points: Vec<Vec<(String, Value)>> = refs.iter().map(|(_, p, _)| p.clone()).collect();
        for (i, (ins, point, (bad_vars, unreadable))) in refs.iter().enumerate() {
            let sig = self.signature(nodes[i].op.as_ref());
            let node_name = nodes[i].base.clone();
            let kind = nodes[i].op.kind();
            let mut connected = BTreeMap::new();
            for (port, text, loc) in ins {
                let want: Option<PortType> = match &sig.inputs {
                    Ports::Fixed(ps) => {
                        match ps.iter().find(|p| p.name == port) {
                            Some(p) => Some(p.ty),
                            None => {
                                let names: Vec<&str> = ps.iter().map(|p| p.name).collect();
                                let hint = match closest(port, names.iter().copied()) {
                                    Some(c) => format!("did you mean `{c}`?"),
                                    None => format!("`{kind}` has inputs: {}", names.join(", ")),
                                };
                                self.diags.push(loc, format!("unknown input port `{port}` for `{kind}` in node `{node_name}`"), Some(hint));
                                continue;
                            }
                        }
                    }
                    Ports::Open(t) => Some(*t),
                    Ports::Any | Ports::Declared => None,
                };
                let mut reported = false;
                let text = match interp::expand(text, |r| match r.ns.as_str() {
                    "matrix" => match point.iter().find(|(k, _)| *k == r.path) {
                        Some((_, v)) => Ok(Some(v.clone())),
                        None => {
                            reported = *unreadable || bad_vars.contains(&r.path);
                            Err(InterpError {
                                message: format!(
                                    "`${{matrix.{}}}`: this node has no matrix variable `{}`",
                                    r.path, r.path
                                ),
                                offset: r.start,
                            })
                        }
                    },
                    _ => Ok(None),
                }) {
                    Ok(Value::String(s)) => s,
                    Ok(v) => v.to_string(),
                    Err(e) => {
                        if !reported {
                            self.diags.push(
                                loc,
                                format!("bad interpolation in input `{port}`: {}", e.message),
                                None,
                            );
                        }
                        continue;
                    }
                };
                let Some((src, ty)) = self.resolve_ref(
                    &text, point, inputs, bad_inputs, &nodes, &points, &by_name, &by_base, loc,
                ) else {
                    continue;
                };
                let untyped = matches!(&src, Source::Input(n) if self.untyped_inputs.contains(n));
                // A declared input directory is the user's own model, index or directory:
                // its type is what the port reads it as (the operator checks its contents
                // when it loads it, and names what is missing).
                let user_dir = matches!(&src, Source::Input(_))
                    && ty == PortType::Dir
                    && want.is_some_and(PortType::is_dir);
                if let Some(want) = want
                    && !untyped
                    && !user_dir
                    && !ty.fits(want)
                {
                    let hint = if want == PortType::Table && !ty.is_dir() {
                        "turn the file into a table first with a node `op: load`".to_string()
                    } else {
                        format!("connect an output of type {want}")
                    };
                    self.diags.push(loc, format!("type mismatch: input `{port}` of node `{node_name}` wants a {want}, but `{text}` is a {ty}"), Some(hint));
                }
                connected.insert(port.clone(), src);
            }
            if let Ports::Fixed(ps) = &sig.inputs {
                for p in ps.iter().filter(|p| !p.optional) {
                    if !ins.iter().any(|(name, _, _)| name == p.name) {
                        self.diags.push(
                            &nodes[i].loc,
                            format!(
                                "node `{node_name}` needs input `{}` ({}: {})",
                                p.name, p.ty, p.doc
                            ),
                            Some(format!("add `in: {{{}: NODE.PORT}}`", p.name)),
                        );
                    }
                }
            }
            let mut deps: Vec<usize> = connected
                .values()
                .flat_map(|s| match s {
                    Source::Node { node, .. } => vec![*node],
                    Source::Gather { nodes, .. } => nodes.clone(),
                    Source::Input(_) => Vec::new(),
                })
                .collect();
            deps.sort_unstable();
            deps.dedup();
            nodes[i].inputs = connected;
            nodes[i].deps = deps;
        }
        nodes
    }

    #[allow(clippy::too_many_arguments)]
    fn resolve_ref(
        &mut self,
        text: &str,
        point: &[(String, Value)],
        inputs: &BTreeMap<String, (PathBuf, bool)>,
        bad_inputs: &HashSet<String>,
        nodes: &[CNode],
        points: &[Vec<(String, Value)>],
        by_name: &HashMap<String, usize>,
        by_base: &HashMap<String, Vec<usize>>,
        loc: &Loc,
    ) -> Option<(Source, PortType)> {
        if let Some(name) = text.strip_prefix("inputs.") {
            return match inputs.get(name) {
                Some((_, is_dir)) => Some((
                    Source::Input(name.to_string()),
                    if *is_dir {
                        PortType::Dir
                    } else {
                        PortType::File
                    },
                )),
                // Its own error says why it cannot be read.
                None if bad_inputs.contains(name) => None,
                None => {
                    let hint = match closest(name, inputs.keys().map(String::as_str)) {
                        Some(c) => format!("did you mean `inputs.{c}`?"),
                        None => "declare it under `inputs:`".to_string(),
                    };
                    self.diags
                        .push(loc, format!("unknown input `{name}`"), Some(hint));
                    None
                }
            };
        }
        let (node, port) = match text.rfind(']') {
            Some(end) => (
                &text[..=end],
                text[end + 1..].strip_prefix('.').unwrap_or(""),
            ),
            None => text.split_once('.').unwrap_or((text, "")),
        };
        if port.is_empty() {
            self.diags.push(
                loc,
                format!("`{text}` is not a reference"),
                Some("write `NODE.PORT` or `inputs.NAME`".into()),
            );
            return None;
        }
        if let Some(base) = node.strip_suffix("[*]") {
            return self.resolve_gather(text, base, port, point, nodes, points, by_base, loc);
        }
        let idx = if let Some(i) = by_name.get(node).filter(|_| node.contains('[')) {
            *i
        } else {
            let Some(candidates) = by_base.get(node) else {
                if self.bad_nodes.contains(node) {
                    // Its own error says why it was not built.
                    return None;
                }
                let names: Vec<&str> = by_base.keys().map(String::as_str).collect();
                let hint = match closest(node, names.iter().copied()) {
                    Some(c) => format!("did you mean `{c}.{port}`?"),
                    None => "name a node defined under `nodes:`".into(),
                };
                self.diags.push(
                    loc,
                    format!("unknown node `{node}` in `{text}`"),
                    Some(hint),
                );
                return None;
            };
            let matching: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|c| {
                    let their = &points[*c];
                    their.iter().all(|(k, v)| {
                        point
                            .iter()
                            .find(|(pk, _)| pk == k)
                            .is_none_or(|(_, pv)| pv == v)
                    })
                })
                .collect();
            match matching.as_slice() {
                [one] => *one,
                _ => {
                    self.diags.push(
                        loc,
                        format!(
                            "`{node}` has {} sweep points; `{text}` does not say which",
                            matching.len()
                        ),
                        Some(format!(
                            "name one, e.g. `{}.{port}`, or give this node the same matrix",
                            nodes[candidates[0]].name
                        )),
                    );
                    return None;
                }
            }
        };
        let producer = &nodes[idx];
        match producer.outputs.get(port) {
            Some(ty) => Some((
                Source::Node {
                    node: idx,
                    port: port.to_string(),
                },
                *ty,
            )),
            None => {
                let names: Vec<&str> = producer.outputs.keys().map(String::as_str).collect();
                let hint = match closest(port, names.iter().copied()) {
                    Some(c) => format!("did you mean `{}.{c}`?", producer.base),
                    None if names.is_empty() => format!("node `{}` has no outputs", producer.base),
                    None => format!("node `{}` has outputs: {}", producer.base, names.join(", ")),
                };
                self.diags.push(
                    loc,
                    format!("unknown port `{port}` on node `{}`", producer.base),
                    Some(hint),
                );
                None
            }
        }
    }

    /// `BASE[*].PORT`: every point of the matrix node `BASE` (those agreeing with this
    /// node's own point on shared variables), gathered into one directory input.
    #[allow(clippy::too_many_arguments)]
    fn resolve_gather(
        &mut self,
        text: &str,
        base: &str,
        port: &str,
        point: &[(String, Value)],
        nodes: &[CNode],
        points: &[Vec<(String, Value)>],
        by_base: &HashMap<String, Vec<usize>>,
        loc: &Loc,
    ) -> Option<(Source, PortType)> {
        let Some(candidates) = by_base.get(base) else {
            if !self.bad_nodes.contains(base) {
                let names: Vec<&str> = by_base.keys().map(String::as_str).collect();
                let hint = match closest(base, names.iter().copied()) {
                    Some(c) => format!("did you mean `{c}[*].{port}`?"),
                    None => "name a node defined under `nodes:`".into(),
                };
                self.diags.push(
                    loc,
                    format!("unknown node `{base}` in `{text}`"),
                    Some(hint),
                );
            }
            return None;
        };
        if points[candidates[0]].is_empty() {
            self.diags.push(
                loc,
                format!(
                    "`{text}`: node `{base}` has no `matrix`, so there are no points to gather"
                ),
                Some(format!("write `{base}.{port}`")),
            );
            return None;
        }
        let matching: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|c| {
                points[*c].iter().all(|(k, v)| {
                    point
                        .iter()
                        .find(|(pk, _)| pk == k)
                        .is_none_or(|(_, pv)| pv == v)
                })
            })
            .collect();
        let producer = &nodes[candidates[0]];
        match producer.outputs.get(port) {
            Some(_) => Some((
                Source::Gather {
                    nodes: matching,
                    port: port.to_string(),
                },
                PortType::Dir,
            )),
            None => {
                let names: Vec<&str> = producer.outputs.keys().map(String::as_str).collect();
                let hint = match closest(port, names.iter().copied()) {
                    Some(c) => format!("did you mean `{base}[*].{c}`?"),
                    None => format!("node `{base}` has outputs: {}", names.join(", ")),
                };
                self.diags.push(
                    loc,
                    format!("unknown port `{port}` on node `{base}`"),
                    Some(hint),
                );
                None
            }
        }
    }
}
