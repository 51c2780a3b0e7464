//! Expanding one node of the file into its instances: matrix sweep points, parameters
//! interpolated and checked against the operator's signature, outputs and resources.

use super::*;

impl Builder<'_> {
    pub(super) fn signature(&mut self, op: &dyn Operator) -> Arc<crate::Signature> {
        self.sigs
            .entry(op.kind())
            .or_insert_with(|| Arc::new(op.signature()))
            .clone()
    }

    pub(super) fn expand(&mut self, spec: &NodeSpec) {
        self.bad_matrix = spec.bad_matrix.clone();
        self.matrix_unreadable = spec.matrix_unreadable;
        let Some(op) = self.registry.get(&spec.op).cloned() else {
            self.bad_nodes.insert(spec.name.clone());
            if !spec.op.is_empty() {
                let hint = match closest(&spec.op, self.registry.kinds()) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => format!(
                        "known operators: {}",
                        self.registry.kinds().collect::<Vec<_>>().join(", ")
                    ),
                };
                self.diags.push(
                    &spec.op_loc,
                    format!("unknown operator `{}` in node `{}`", spec.op, spec.name),
                    Some(hint),
                );
            }
            return;
        };
        let sig = self.signature(op.as_ref());
        // Each instance costs one, plus its parameters as written.
        let per_instance = 1 + spec
            .params
            .iter()
            .map(|(_, n)| budget::yaml_values(n))
            .sum::<usize>();
        let count = spec
            .matrix
            .iter()
            .try_fold(1usize, |acc, (_, values, _)| acc.checked_mul(values.len()));
        if !count
            .and_then(|c| c.checked_mul(per_instance))
            .is_some_and(|cost| self.budget.charge(cost))
        {
            let loc = spec.matrix.first().map_or(&spec.loc, |(_, _, loc)| loc);
            let points = count.map_or("more than 2^64".to_string(), |c| c.to_string());
            self.diags.push(
                loc,
                format!(
                    "node `{}` expands to {points} sweep points; with its parameters the \
                     pipeline would hold more than {} values",
                    spec.name,
                    self.budget.limit()
                ),
                Some("sweep fewer values, or split the sweep over several pipelines".into()),
            );
            return;
        }
        let mut points: Vec<Vec<(String, Value)>> = vec![Vec::new()];
        for (var, values, _) in &spec.matrix {
            points = points
                .into_iter()
                .flat_map(|p| {
                    values.iter().map(move |v| {
                        let mut p = p.clone();
                        p.push((var.clone(), crate::canonical::normalise(&v.to_json())));
                        p
                    })
                })
                .collect();
        }
        let outputs = self.outputs(spec, &sig.outputs);
        let resources = self.resources(spec, sig.resources);
        let time_min = self.time_min(spec);
        let metrics = self.metrics(spec, &outputs);
        for point in points {
            let name = instance_name(&spec.name, &point);
            let mut given = Map::new();
            // Parameters whose value could not be computed (reported once, here): checks
            // that need their value are skipped.
            let mut failed = HashSet::new();
            for (pname, pnode) in &spec.params {
                let allow_io = spec.op == "command" && pname == "run";
                self.hit_bad_matrix.set(false);
                let mode = Mode {
                    io: allow_io,
                    secrets: sig.param(pname).is_some_and(|p| p.secret),
                };
                match self.interpolate(&pnode.to_json(), &point, mode) {
                    Ok(v) => {
                        given.insert(pname.clone(), v);
                    }
                    Err(e) => {
                        failed.insert(pname.clone());
                        if !self.hit_bad_matrix.get() {
                            self.diags.push(
                                &pnode.loc,
                                format!(
                                    "bad interpolation in parameter `{pname}` of node `{}`: {}",
                                    spec.name, e.message
                                ),
                                None,
                            );
                        }
                    }
                }
            }
            let (filled, mut problems) = fill_defaults(&sig, &given);
            problems.retain(|p| !matches!(p, ParamProblem::Missing(name) if failed.contains(name)));
            let schema_ok = problems.is_empty() && failed.is_empty();
            for p in problems {
                self.param_problem(spec, &sig, p);
            }
            // The operator's own checks assume the schema holds.
            let extra = if schema_ok {
                op.check(&filled)
            } else {
                Vec::new()
            };
            for msg in extra {
                let loc = spec
                    .params
                    .first()
                    .map(|(_, n)| n.loc.clone())
                    .unwrap_or(spec.op_loc.clone());
                self.diags
                    .push(&loc, format!("node `{}`: {msg}", spec.name), None);
            }
            self.nodes.push(CNode {
                name,
                base: spec.name.clone(),
                determinism: if schema_ok {
                    op.determinism(&filled)
                } else {
                    sig.determinism
                },
                op: op.clone(),
                params: filled,
                inputs: BTreeMap::new(),
                outputs: outputs.clone(),
                resources,
                retries: spec.retries.as_ref().map_or(0, |(r, _)| *r),
                metrics: metrics.clone(),
                point: point.iter().cloned().collect(),
                deps: Vec::new(),
                loc: spec.loc.clone(),
                executor: spec.executor.as_ref().map(|(e, _)| e.clone()),
                time_min,
            });
            self.refs.push((
                spec.ins.clone(),
                point,
                (spec.bad_matrix.clone(), spec.matrix_unreadable),
            ));
        }
    }

    fn param_problem(&mut self, spec: &NodeSpec, sig: &crate::Signature, p: ParamProblem) {
        let loc_of = |name: &str| {
            spec.params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, n)| n.loc.clone())
        };
        match p {
            ParamProblem::Unknown(name) => {
                let names: Vec<&str> = sig.params.iter().map(|p| p.name).collect();
                let hint = match closest(&name, names.iter().copied()) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None if names.is_empty() => format!("`{}` takes no parameters", spec.op),
                    None => format!("`{}` takes: {}", spec.op, names.join(", ")),
                };
                self.diags.push(
                    &loc_of(&name).unwrap_or(spec.loc.clone()),
                    format!(
                        "unknown parameter `{name}` for `{}` in node `{}`",
                        spec.op, spec.name
                    ),
                    Some(hint),
                );
            }
            ParamProblem::Missing(name) => {
                let doc = sig.param(&name).map(|p| p.doc).unwrap_or_default();
                self.diags.push(
                    &spec.op_loc,
                    format!("node `{}` needs parameter `{name}`", spec.name),
                    Some(format!("add `params: {{{name}: ...}}` ({doc})")),
                );
            }
            ParamProblem::WrongKind { name, want, got } => {
                let want = if want == "any" {
                    "any value".to_string()
                } else {
                    article(want)
                };
                let got = article(got);
                self.diags.push(
                    &loc_of(&name).unwrap_or(spec.loc.clone()),
                    format!(
                        "parameter `{name}` of node `{}` must be {want}, found {got}",
                        spec.name
                    ),
                    None,
                );
            }
        }
    }

    fn interpolate(
        &self,
        v: &Value,
        point: &[(String, Value)],
        mode: Mode,
    ) -> std::result::Result<Value, InterpError> {
        match v {
            // A string expanded again at run time keeps its `$${` escapes until then.
            Value::String(s) if mode.io || (mode.secrets && crate::secrets::mentions(s)) => {
                interp::expand_partial(s, |r| self.resolve(r, point, mode))
            }
            Value::String(s) => interp::expand(s, |r| self.resolve(r, point, mode)),
            Value::Array(items) => items
                .iter()
                .map(|i| self.interpolate(i, point, mode))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, v) in m {
                    out.insert(k.clone(), self.interpolate(v, point, mode)?);
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    fn resolve(
        &self,
        r: &Reference,
        point: &[(String, Value)],
        mode: Mode,
    ) -> std::result::Result<Option<Value>, InterpError> {
        let allow_io = mode.io;
        let err = |message: String| InterpError {
            message,
            offset: r.start,
        };
        match r.ns.as_str() {
            "params" => {
                let mut cur: Option<&Value> = None;
                for (i, part) in r.path.split('.').enumerate() {
                    cur = if i == 0 {
                        self.params.get(part)
                    } else {
                        cur.and_then(|c| c.get(part))
                    };
                }
                if let Some(v) = cur
                    && !self.budget.charge(budget::json_values(v))
                {
                    return Err(err(format!(
                        "`${{params.{}}}` is copied so often that the pipeline would hold more \
                         than {} values; refer to a smaller parameter, or fewer times",
                        r.path,
                        self.budget.limit()
                    )));
                }
                cur.cloned().map(Some).ok_or_else(|| {
                    let names: Vec<&str> = self.params.keys().map(String::as_str).collect();
                    err(match closest(&r.path, names.iter().copied()) {
                        Some(c) => format!(
                            "`${{params.{}}}`: no such parameter; did you mean `{c}`?",
                            r.path
                        ),
                        None => format!(
                            "`${{params.{}}}`: no such parameter under `params:`",
                            r.path
                        ),
                    })
                })
            }
            "matrix" => point
                .iter()
                .find(|(k, _)| *k == r.path)
                .map(|(_, v)| Some(v.clone()))
                .ok_or_else(|| {
                    if self.is_bad_matrix(&r.path) {
                        self.hit_bad_matrix.set(true);
                    }
                    err(format!(
                        "`${{matrix.{}}}`: this node has no matrix variable `{}`",
                        r.path, r.path
                    ))
                }),
            "secrets" => crate::secrets::check_reference(r, self.secrets, mode.io || mode.secrets),
            _ if allow_io => Ok(None),
            _ => Err(err(format!(
                "`${{{}.{}}}` is only expanded inside the `run` of a `command` node",
                r.ns, r.path
            ))),
        }
    }

    /// Whether `var` is a matrix variable of the node being expanded that was reported
    /// invalid already.
    fn is_bad_matrix(&self, var: &str) -> bool {
        self.matrix_unreadable || self.bad_matrix.iter().any(|v| v == var)
    }

    fn outputs(&mut self, spec: &NodeSpec, ports: &Ports) -> BTreeMap<String, PortType> {
        match ports {
            Ports::Fixed(ps) => {
                if let Some((_, _, loc)) = spec.outs.first() {
                    self.diags.push(
                        loc,
                        format!(
                            "node `{}`: `out` declares outputs, but `{}` has fixed outputs ({})",
                            spec.name,
                            spec.op,
                            ps.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                        ),
                        Some("remove `out:`; only `command` declares its outputs".into()),
                    );
                }
                ps.iter().map(|p| (p.name.to_string(), p.ty)).collect()
            }
            _ => {
                let mut out = BTreeMap::new();
                for (port, ty, loc) in &spec.outs {
                    match PortType::parse(ty) {
                        Some(t) => {
                            out.insert(port.clone(), t);
                        }
                        None => self.diags.push(
                            loc,
                            format!(
                                "unknown type `{ty}` for output `{port}` of node `{}`",
                                spec.name
                            ),
                            Some(format!(
                                "types are: {}",
                                PortType::ALL.map(PortType::as_str).join(", ")
                            )),
                        ),
                    }
                }
                out
            }
        }
    }

    /// The ports named under `metrics:`, each an output of a type that can hold metrics.
    fn metrics(&mut self, spec: &NodeSpec, outputs: &BTreeMap<String, PortType>) -> Vec<String> {
        let mut out = Vec::new();
        for (port, loc) in &spec.metrics {
            match outputs.get(port) {
                Some(PortType::Metrics | PortType::Table | PortType::File) => {
                    if !out.contains(port) {
                        out.push(port.clone());
                    }
                }
                Some(other) => self.diags.push(
                    loc,
                    format!(
                        "`metrics` of node `{}` names output `{port}`, of type `{}`, which holds no metrics",
                        spec.name,
                        other.as_str()
                    ),
                    Some("name a `metrics` (JSON), `file` (JSON) or `table` output".into()),
                ),
                None => {
                    let known: Vec<&str> = outputs.keys().map(String::as_str).collect();
                    let hint = match closest(port, known.iter().copied()) {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => format!("its outputs: {}", known.join(", ")),
                    };
                    self.diags.push(
                        loc,
                        format!("`metrics` of node `{}` names `{port}`, which is not one of its outputs", spec.name),
                        Some(hint),
                    );
                }
            }
        }
        out.sort();
        out
    }

    fn resources(&mut self, spec: &NodeSpec, mut r: Resources) -> Resources {
        for (k, v) in &spec.resources {
            let j = v.to_json();
            match k.as_str() {
                "cpus" if j.as_u64().is_some_and(|n| n <= 4096) => {
                    r.cpus = j.as_u64().unwrap_or(1) as u32
                }
                "gpus" if j.as_u64().is_some_and(|n| n <= 64) => {
                    r.gpus = j.as_u64().unwrap_or(0) as u32
                }
                "mem_gb" if j.as_f64().is_some_and(|n| n >= 0.0) => {
                    r.mem_gb = j.as_f64().unwrap_or(0.0)
                }
                // Read by `time_min` below.
                "time_min" => {}
                "cpus" | "gpus" | "mem_gb" => self.diags.push(
                    &v.loc,
                    format!(
                        "resource `{k}` of node `{}` must be a non-negative number, found {}",
                        spec.name,
                        spec::describe(v)
                    ),
                    None,
                ),
                _ => self.diags.push(
                    &v.loc,
                    format!("unknown resource `{k}` in node `{}`", spec.name),
                    Some("resources are: cpus, gpus, mem_gb, time_min".into()),
                ),
            }
        }
        r
    }
}

impl Builder<'_> {
    /// `resources: {time_min: N}`: whole minutes, at least 1.
    fn time_min(&mut self, spec: &NodeSpec) -> Option<u32> {
        let (_, v) = spec.resources.iter().find(|(k, _)| k == "time_min")?;
        match v.to_json().as_u64() {
            Some(n) if (1..=u32::MAX as u64).contains(&n) => Some(n as u32),
            _ => {
                self.diags.push(
                    &v.loc,
                    format!(
                        "resource `time_min` of node `{}` must be a whole number of minutes (at least 1), found {}",
                        spec.name,
                        spec::describe(v)
                    ),
                    None,
                );
                None
            }
        }
    }
}

fn instance_name(base: &str, point: &[(String, Value)]) -> String {
    if point.is_empty() {
        return base.to_string();
    }
    let parts: Vec<String> = point
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    format!("{base}[{}]", parts.join(","))
}

/// `integer` → `an integer`, `string` → `a string`.
fn article(word: &str) -> String {
    match word.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {word}"),
        _ => format!("a {word}"),
    }
}
