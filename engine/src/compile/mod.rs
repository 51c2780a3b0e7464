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

mod expand;
mod wire;

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
    /// The profiles merged in (`--profile`), in order.
    pub profiles: Vec<String>,
    /// Inputs whose path `--input` replaced: name → absolute path.
    pub input_overrides: BTreeMap<String, PathBuf>,
    /// Inputs that do not exist (only with [`CompileOptions::missing_inputs_ok`]): name →
    /// path. Such a pipeline is checked, not run.
    pub missing_inputs: Vec<(String, PathBuf)>,
    /// The top-level `executor:` (nodes that name none run there).
    pub executor: Option<String>,
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
    /// Output ports named under `metrics:` (sorted).
    pub metrics: Vec<String>,
    /// The matrix point of this instance (variable → value); empty outside a matrix.
    pub point: Map<String, Value>,
    pub determinism: Determinism,
    /// Upstream node indices (unique, sorted).
    pub deps: Vec<usize>,
    pub loc: Loc,
    /// `executor:` of the node (not part of its key).
    pub executor: Option<String>,
    /// `resources: {time_min: N}`: a wall-clock limit for cluster executors.
    pub time_min: Option<u32>,
}

/// Where an input port's artifact comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Input(String),
    Node {
        node: usize,
        port: String,
    },
    /// Every point of a matrix node (`sweep[*].table`), in the file's order: one directory
    /// (see [`crate::gather`]).
    Gather {
        nodes: Vec<usize>,
        port: String,
    },
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

/// How to compile: profiles, `--set` and `--input` overrides, and limits.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// `--set` values: dotted path → value.
    pub overrides: Vec<(String, Value)>,
    /// The most nodes the pipeline may expand to (matrices included).
    pub max_nodes: usize,
    /// `--profile`: profiles merged into the file, in order (see [`crate::profile`]).
    pub profiles: Vec<String>,
    /// `--input NAME=PATH`: declared inputs whose path is replaced (absolute paths).
    pub inputs: Vec<(String, PathBuf)>,
    /// Inputs that do not exist are listed in [`Pipeline::missing_inputs`] instead of being
    /// errors (`expflow check`); the types of their ports are then not checked.
    pub missing_inputs_ok: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            overrides: Vec::new(),
            max_nodes: DEFAULT_MAX_NODES,
            profiles: Vec::new(),
            inputs: Vec::new(),
            missing_inputs_ok: false,
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
    let mut spec = spec::read_profiled(file, text, &opts.profiles, &mut diags);
    let input_overrides = override_inputs(&mut spec, &opts.inputs, &mut diags);
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
    let (inputs, missing_inputs) = check_inputs(&spec, opts.missing_inputs_ok, &mut diags);
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
        untyped_inputs: missing_inputs.iter().map(|(n, _)| n.clone()).collect(),
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
                match src {
                    Source::Node { node, .. } => *node = position[*node],
                    Source::Gather { nodes, .. } => {
                        for node in nodes.iter_mut() {
                            *node = position[*node];
                        }
                    }
                    Source::Input(_) => {}
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
        profiles: opts.profiles.clone(),
        input_overrides,
        missing_inputs,
        executor: spec.executor.as_ref().map(|(e, _)| e.clone()),
    })
}

/// Applies `--input NAME=PATH`: the declared input's path becomes `PATH` (absolute). An
/// undeclared name is an error that lists the declared ones.
fn override_inputs(
    spec: &mut PipelineSpec,
    overrides: &[(String, PathBuf)],
    diags: &mut Diagnostics,
) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for (name, path) in overrides {
        match spec.inputs.iter_mut().find(|i| i.name == *name) {
            Some(input) => {
                input.path = path.display().to_string();
                out.insert(name.clone(), path.clone());
            }
            // Declared but unreadable: its own error is reported.
            None if spec.bad_inputs.contains(name) => {}
            None => {
                let names: Vec<&str> = spec.inputs.iter().map(|i| i.name.as_str()).collect();
                let hint = if names.is_empty() {
                    "the pipeline declares no inputs".to_string()
                } else {
                    match closest(name, names.iter().copied()) {
                        Some(c) => {
                            format!("did you mean `{c}`? the inputs are: {}", names.join(", "))
                        }
                        None => format!("the inputs are: {}", names.join(", ")),
                    }
                };
                diags.push(
                    &Loc::default(),
                    format!("--input {name}: no input `{name}`"),
                    Some(hint),
                );
            }
        }
    }
    out
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

/// Input name → (absolute path, whether it is a directory), and, with `missing_ok`, the
/// inputs that do not exist (also in the map, as files).
type CheckedInputs = (BTreeMap<String, (PathBuf, bool)>, Vec<(String, PathBuf)>);

fn check_inputs(spec: &PipelineSpec, missing_ok: bool, diags: &mut Diagnostics) -> CheckedInputs {
    let mut out = BTreeMap::new();
    let mut missing = Vec::new();
    for input in &spec.inputs {
        let path = spec.dir.join(&input.path);
        match std::fs::metadata(&path) {
            Ok(m) => {
                out.insert(input.name.clone(), (path, m.is_dir()));
            }
            Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => {
                out.insert(input.name.clone(), (path.clone(), false));
                missing.push((input.name.clone(), path));
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
    (out, missing)
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
    /// Inputs whose type is unknown (missing, under `expflow check`): ports they feed are
    /// not type-checked.
    untyped_inputs: HashSet<String>,
}
