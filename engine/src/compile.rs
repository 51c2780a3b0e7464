//! From a pipeline file to a checked, matrix-expanded, topologically ordered pipeline.
//! Every problem is collected and reported at once with file:line:column and a hint.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::budget::{self, Budget};
use crate::diag::{Diagnostics, Loc, closest};
use crate::error::{EngineError, Result};
use crate::interp::{self, InterpError, Reference};
use crate::limits::{self, DEFAULT_MAX_NODES};
use crate::operator::{Determinism, Operator, PortType, Ports, Registry, Resources};
use crate::outputs;
use crate::params::{ParamProblem, fill_defaults};
use crate::spec::{self, NodeSpec, PipelineSpec};
use crate::topo;

/// A compiled pipeline: nodes in topological order.
#[derive(Clone)]
pub struct Pipeline {
    pub name: String,
    pub file: PathBuf,
    pub dir: PathBuf,
    pub params: Map<String, Value>,
    /// External inputs: name → absolute path.
    pub inputs: BTreeMap<String, PathBuf>,
    pub nodes: Vec<CNode>,
    /// `outputs:`: destination (absolute), node index, port.
    pub outputs: Vec<(PathBuf, usize, String)>,
    /// `secrets:`: names of the environment variables `run` reads when it starts.
    pub secrets: Vec<String>,
}

/// One node instance (a matrix node gives one per sweep point).
#[derive(Clone)]
pub struct CNode {
    /// Instance name, e.g. `sweep[lr=0.0001]`.
    pub name: String,
    /// The name in the file, e.g. `sweep`.
    pub base: String,
    pub op: Arc<dyn Operator>,
    pub params: Map<String, Value>,
    pub inputs: BTreeMap<String, Source>,
    pub outputs: BTreeMap<String, PortType>,
    pub resources: Resources,
    pub retries: u32,
    pub determinism: Determinism,
    /// Upstream node indices (unique, sorted).
    pub deps: Vec<usize>,
    pub loc: Loc,
}

/// Where an input port's artifact comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Input(String),
    Node { node: usize, port: String },
}

impl Pipeline {
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Indices of `targets` and all their ancestors, in topological order.
    pub fn closure(&self, targets: &[usize]) -> Vec<usize> {
        let mut keep = vec![false; self.nodes.len()];
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(i) = stack.pop() {
            if !keep[i] {
                keep[i] = true;
                stack.extend(self.nodes[i].deps.iter().copied());
            }
        }
        (0..self.nodes.len()).filter(|i| keep[*i]).collect()
    }
}

/// How to compile: `--set` overrides and limits.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// `--set` values: dotted path → value.
    pub overrides: Vec<(String, Value)>,
    /// The most nodes the pipeline may expand to (matrices included).
    pub max_nodes: usize,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            overrides: Vec::new(),
            max_nodes: DEFAULT_MAX_NODES,
        }
    }
}

/// Reads and compiles a pipeline file. `overrides` are `--set` values: dotted path → value.
pub fn load(file: &Path, registry: &Registry, overrides: &[(String, Value)]) -> Result<Pipeline> {
    let opts = CompileOptions {
        overrides: overrides.to_vec(),
        ..CompileOptions::default()
    };
    load_with(file, registry, &opts)
}

/// [`load`] with options.
pub fn load_with(file: &Path, registry: &Registry, opts: &CompileOptions) -> Result<Pipeline> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        EngineError::Usage(format!(
            "cannot read the pipeline file {}: {e}",
            file.display()
        ))
    })?;
    let file = std::path::absolute(file).map_err(|e| EngineError::io(file, e))?;
    compile_with(&file, &text, registry, opts).map_err(EngineError::Invalid)
}

/// Compiles pipeline text. `file` names it in messages and anchors relative paths.
pub fn compile(
    file: &Path,
    text: &str,
    registry: &Registry,
    overrides: &[(String, Value)],
) -> std::result::Result<Pipeline, Diagnostics> {
    let opts = CompileOptions {
        overrides: overrides.to_vec(),
        ..CompileOptions::default()
    };
    compile_with(file, text, registry, &opts)
}

/// [`compile`] with options.
pub fn compile_with(
    file: &Path,
    text: &str,
    registry: &Registry,
    opts: &CompileOptions,
) -> std::result::Result<Pipeline, Diagnostics> {
    let display = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string());
    let mut diags = Diagnostics::new(display);
    let spec = spec::read(file, text, &mut diags);
    let mut params: Map<String, Value> = spec
        .params
        .iter()
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect();
    for (path, value) in &opts.overrides {
        if let Err(msg) = set_path(&mut params, path, value.clone()) {
            diags.push(
                &Loc::default(),
                format!("--set {path}: {msg}"),
                Some("`--set` overrides a parameter under `params:`; check the name".into()),
            );
        }
    }
    // Nothing is expanded unless the whole pipeline fits.
    if !limits::check_node_count(&spec, opts.max_nodes, &mut diags) {
        diags.sort();
        return Err(diags);
    }
    let inputs = check_inputs(&spec, &mut diags);
    // Declared but unusable: their own errors are reported, references to them are not.
    let bad_inputs: HashSet<String> = spec
        .inputs
        .iter()
        .map(|i| i.name.clone())
        .filter(|n| !inputs.contains_key(n))
        .chain(spec.bad_inputs.iter().cloned())
        .collect();
    let mut b = Builder {
        registry,
        params: &params,
        secrets: &spec.secrets,
        diags: &mut diags,
        nodes: Vec::new(),
        sigs: HashMap::new(),
        refs: Vec::new(),
        budget: Budget::for_text(text.len()),
        bad_nodes: spec.bad_nodes.iter().cloned().collect(),
        bad_matrix: Vec::new(),
        matrix_unreadable: false,
        hit_bad_matrix: Cell::new(false),
    };
    for node in &spec.nodes {
        b.expand(node);
    }
    let nodes = b.resolve_inputs(&inputs, &bad_inputs);
    let bad_nodes = std::mem::take(&mut b.bad_nodes);
    let dests = outputs::check_destinations(&spec, &mut diags);
    let outputs = outputs::resolve(&spec, &dests, &nodes, &bad_nodes, &mut diags);
    let order = topo::order(&nodes, &mut diags);
    if !diags.is_empty() {
        diags.sort();
        diags.items.dedup();
        return Err(diags);
    }
    let order = order.unwrap_or_default();
    let mut position = vec![0; nodes.len()];
    for (new, old) in order.iter().enumerate() {
        position[*old] = new;
    }
    let mut sorted: Vec<Option<CNode>> = nodes.into_iter().map(Some).collect();
    let nodes: Vec<CNode> = order
        .iter()
        .map(|old| {
            let mut n = sorted[*old].take().expect("each node is placed once");
            for src in n.inputs.values_mut() {
                if let Source::Node { node, .. } = src {
                    *node = position[*node];
                }
            }
            n.deps = n.deps.iter().map(|d| position[*d]).collect();
            n.deps.sort_unstable();
            n
        })
        .collect();
    Ok(Pipeline {
        name: spec.name.clone(),
        file: spec.file.clone(),
        dir: spec.dir.clone(),
        params,
        inputs: inputs.into_iter().map(|(k, (p, _))| (k, p)).collect(),
        nodes,
        outputs: outputs
            .into_iter()
            .map(|(p, n, port)| (p, position[n], port))
            .collect(),
        secrets: spec.secrets.iter().map(|(n, _)| n.clone()).collect(),
    })
}

fn set_path(
    params: &mut Map<String, Value>,
    path: &str,
    value: Value,
) -> std::result::Result<(), String> {
    let mut parts = path.split('.').peekable();
    let mut cur = params;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            if !cur.contains_key(part) {
                let names: Vec<&str> = cur.keys().map(String::as_str).collect();
                return Err(match closest(part, names.iter().copied()) {
                    Some(c) => format!("no parameter `{part}`; did you mean `{c}`?"),
                    None => format!(
                        "no parameter `{part}`; the parameters are: {}",
                        names.join(", ")
                    ),
                });
            }
            cur.insert(part.to_string(), value);
            return Ok(());
        }
        cur = match cur.get_mut(part) {
            Some(Value::Object(m)) => m,
            _ => return Err(format!("`{part}` is not a map of parameters")),
        };
    }
    Err("empty parameter path".into())
}

/// Input name → (absolute path, whether it is a directory).
fn check_inputs(spec: &PipelineSpec, diags: &mut Diagnostics) -> BTreeMap<String, (PathBuf, bool)> {
    let mut out = BTreeMap::new();
    for input in &spec.inputs {
        let path = spec.dir.join(&input.path);
        match std::fs::metadata(&path) {
            Ok(m) => {
                out.insert(input.name.clone(), (path, m.is_dir()));
            }
            Err(e) => diags.push(
                &input.loc,
                format!(
                    "input `{}`: cannot read {}: {}",
                    input.name,
                    input.path,
                    match e.kind() {
                        std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
                        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                        _ => e.to_string(),
                    }
                ),
                Some(
                    "create it, or fix the path (relative to the pipeline file's directory)".into(),
                ),
            ),
        }
    }
    out
}

/// A sweep point: matrix variable → value.
type Point = Vec<(String, Value)>;

/// What a parameter's `${...}` may name besides `params` and `matrix`.
#[derive(Clone, Copy)]
struct Mode {
    /// `${in.*}` and `${out.*}` (a command's `run`).
    io: bool,
    /// `${secrets.*}` (parameters that take credentials).
    secrets: bool,
}

/// An unresolved `in:` entry: port, reference text, where it was written.
type InRef = (String, String, Loc);

/// A node's matrix variables whose values were invalid, and whether its `matrix:` could not
/// be read at all.
type BadMatrix = (Vec<String>, bool);

struct Builder<'a> {
    registry: &'a Registry,
    params: &'a Map<String, Value>,
    /// Declared secrets (`secrets:`).
    secrets: &'a [(String, Loc)],
    diags: &'a mut Diagnostics,
    nodes: Vec<CNode>,
    /// Signatures by operator kind, built once (they allocate their parameter specs).
    sigs: HashMap<&'static str, Arc<crate::Signature>>,
    /// What the pipeline may expand into: node instances and copied parameter values.
    budget: Budget,
    /// Per node: its unresolved `in` references, its matrix point, and whether a `${matrix.X}`
    /// it cannot resolve was reported already (see `is_bad_matrix`).
    refs: Vec<(Vec<InRef>, Point, BadMatrix)>,
    /// Nodes declared but not built (an unknown operator, ...): already reported, so
    /// references to them are not.
    bad_nodes: HashSet<String>,
    /// The node being expanded: its matrix variables whose values were invalid, and whether
    /// its `matrix:` could not be read at all (both already reported).
    bad_matrix: Vec<String>,
    matrix_unreadable: bool,
    /// Set when an interpolation failed on such a variable (not reported again).
    hit_bad_matrix: Cell<bool>,
}

impl Builder<'_> {
    fn signature(&mut self, op: &dyn Operator) -> Arc<crate::Signature> {
        self.sigs
            .entry(op.kind())
            .or_insert_with(|| Arc::new(op.signature()))
            .clone()
    }

    fn expand(&mut self, spec: &NodeSpec) {
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
                deps: Vec::new(),
                loc: spec.loc.clone(),
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
                    Some("resources are: cpus, gpus, mem_gb".into()),
                ),
            }
        }
        r
    }

    fn resolve_inputs(
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
                if let Some(want) = want
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
                .filter_map(|s| match s {
                    Source::Node { node, .. } => Some(*node),
                    Source::Input(_) => None,
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
