//! The pipeline file, read into plain structs that remember where each thing was written.
//! Structural problems are collected, not returned one by one.

use std::path::{Path, PathBuf};

use crate::diag::{Diagnostics, Loc, closest};
use crate::yaml::{Node, YValue};

/// A parsed pipeline file, before operators are looked up.
#[derive(Clone, Debug, Default)]
pub struct PipelineSpec {
    pub file: PathBuf,
    /// The directory relative paths are resolved against.
    pub dir: PathBuf,
    pub name: String,
    pub name_loc: Loc,
    /// Global parameters, by name, in file order.
    pub params: Vec<(String, Node)>,
    pub inputs: Vec<InputSpec>,
    pub nodes: Vec<NodeSpec>,
    pub outputs: Vec<OutputSpec>,
    /// Inputs and nodes that were declared but could not be read (already reported):
    /// references to them are not reported again.
    pub bad_inputs: Vec<String>,
    pub bad_nodes: Vec<String>,
    /// `secrets:`: names of environment variables read at run time, never stored.
    pub secrets: Vec<(String, Loc)>,
    /// `profiles:`: the declared profiles (those selected are merged in already).
    pub profiles: Vec<crate::profile::ProfileInfo>,
    /// `executor:` (`local`, `slurm`).
    pub executor: Option<(String, Loc)>,
}

#[derive(Clone, Debug)]
pub struct InputSpec {
    pub name: String,
    pub path: String,
    pub loc: Loc,
}

#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub loc: Loc,
    pub op: String,
    pub op_loc: Loc,
    /// Input port → reference text (`inputs.NAME` or `NODE.PORT`).
    pub ins: Vec<(String, String, Loc)>,
    /// Declared output port → type name (for `command`).
    pub outs: Vec<(String, String, Loc)>,
    pub params: Vec<(String, Node)>,
    /// Sweep variable → values.
    pub matrix: Vec<(String, Vec<Node>, Loc)>,
    /// Matrix variables whose values were invalid (already reported): references to them
    /// are not reported again.
    pub bad_matrix: Vec<String>,
    /// The `matrix:` section could not be read at all (already reported).
    pub matrix_unreadable: bool,
    pub resources: Vec<(String, Node)>,
    pub retries: Option<(u32, Loc)>,
    /// `metrics:`: output ports whose values the record keeps (JSON numbers, or the numeric
    /// columns of a table).
    pub metrics: Vec<(String, Loc)>,
    pub executor: Option<(String, Loc)>,
}

#[derive(Clone, Debug)]
pub struct OutputSpec {
    /// The destination, as written (the key).
    pub path: String,
    /// Where the destination key was written.
    pub key_loc: Loc,
    pub reference: String,
    /// Where the reference (the value) was written.
    pub loc: Loc,
}

const TOP_KEYS: [&str; 8] = [
    "pipeline", "params", "inputs", "nodes", "outputs", "secrets", "profiles", "executor",
];
const NODE_KEYS: [&str; 9] = [
    "executor",
    "op",
    "in",
    "out",
    "params",
    "matrix",
    "resources",
    "retries",
    "metrics",
];

/// Reads the structure of a pipeline file. Problems go into `diags`; what could be read is
/// returned so that later checks can report theirs too.
pub fn read(file: &Path, text: &str, diags: &mut Diagnostics) -> PipelineSpec {
    read_profiled(file, text, &[], diags)
}

/// [`read`] with the named profiles merged in, in order (see [`crate::profile`]).
pub fn read_profiled(
    file: &Path,
    text: &str,
    profiles: &[String],
    diags: &mut Diagnostics,
) -> PipelineSpec {
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut spec = PipelineSpec {
        file: file.to_path_buf(),
        dir,
        ..PipelineSpec::default()
    };
    let mut root = match crate::yaml::parse(text) {
        Ok(r) => r,
        Err(e) => {
            diags.push(
                &e.loc,
                format!("invalid YAML: {}", e.message),
                Some("fix the YAML syntax at this place".into()),
            );
            return spec;
        }
    };
    spec.profiles = crate::profile::apply(&mut root, profiles, diags);
    let Some(top) = root.as_map() else {
        diags.push(
            &root.loc,
            format!("a pipeline file must be a map, found {}", root.kind()),
            Some("start with `pipeline: NAME` and a `nodes:` map".into()),
        );
        return spec;
    };
    check_duplicates(top, "top-level key", diags);
    let mut saw_nodes = false;
    for (k, v) in top {
        let key = k.key_str().unwrap_or_default();
        match key.as_ref() {
            "pipeline" => match v.as_str() {
                Some(name) if valid_name(name, true) => {
                    spec.name = name.to_string();
                    spec.name_loc = v.loc.clone();
                }
                _ => diags.push(
                    &v.loc,
                    format!("`pipeline` must be a name, found {}", describe(v)),
                    Some("use letters, digits, `_` and `-`, e.g. `pipeline: demo`".into()),
                ),
            },
            "params" => spec.params = owned(map_entries(v, "params", diags)),
            "inputs" => {
                for (name, n) in map_entries(v, "inputs", diags) {
                    if !valid_name(&name, false) {
                        diags.push(
                            &n.loc,
                            format!("input name `{name}` is not valid"),
                            Some("input names use lower-case letters, digits and `_`".into()),
                        );
                    }
                    match n.as_str() {
                        Some(p) => spec.inputs.push(InputSpec {
                            name,
                            path: p.to_string(),
                            loc: n.loc.clone(),
                        }),
                        None => {
                            diags.push(
                                &n.loc,
                                format!("input `{name}` must be a path, found {}", describe(n)),
                                Some(
                                    "write a file or directory path relative to the pipeline file"
                                        .into(),
                                ),
                            );
                            spec.bad_inputs.push(name);
                        }
                    }
                }
            }
            "nodes" => {
                saw_nodes = true;
                let mut seen = std::collections::HashSet::new();
                for (name, n) in map_entries(v, "nodes", diags) {
                    // A duplicate was reported; checking it as well would only confuse.
                    if !seen.insert(name.clone()) {
                        continue;
                    }
                    match read_node(&name, n, diags) {
                        Some(node) => spec.nodes.push(node),
                        None => spec.bad_nodes.push(name),
                    }
                }
            }
            "secrets" => spec.secrets = crate::secrets::read_names(v, diags),
            // Read (and the selected ones merged) by `profile::apply`.
            "profiles" => {}
            "executor" => spec.executor = read_executor(v, "the pipeline", diags),
            "outputs" => {
                for (path, key_loc, n) in keyed_entries(v, "outputs", diags) {
                    match n.as_str() {
                        Some(r) => spec.outputs.push(OutputSpec {
                            path,
                            key_loc,
                            reference: r.to_string(),
                            loc: n.loc.clone(),
                        }),
                        None => diags.push(
                            &n.loc,
                            format!(
                                "output `{path}` must name `NODE.PORT`, found {}",
                                describe(n)
                            ),
                            None,
                        ),
                    }
                }
            }
            _ => diags.push(
                &k.loc,
                format!("unknown top-level key `{key}`"),
                Some(match closest(&key, TOP_KEYS) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => format!("the keys are: {}", TOP_KEYS.join(", ")),
                }),
            ),
        }
    }
    if spec.name.is_empty()
        && !top
            .iter()
            .any(|(k, _)| k.key_str().as_deref() == Some("pipeline"))
    {
        diags.push(
            &root.loc,
            "the pipeline has no name",
            Some("add `pipeline: NAME` at the top".into()),
        );
    }
    if !saw_nodes {
        diags.push(
            &root.loc,
            "the pipeline has no `nodes`",
            Some("add a `nodes:` map".into()),
        );
    }
    spec
}

/// `executor: NAME`, one of [`crate::executor::NAMES`].
fn read_executor(v: &Node, whose: &str, diags: &mut Diagnostics) -> Option<(String, Loc)> {
    let names = crate::executor::NAMES;
    match v.as_str() {
        Some(e) if names.contains(&e) => Some((e.to_string(), v.loc.clone())),
        _ => {
            diags.push(
                &v.loc,
                format!(
                    "`executor` of {whose} must be an executor, found {}",
                    describe(v)
                ),
                Some(format!("the executors are: {}", names.join(", "))),
            );
            None
        }
    }
}

fn read_node(name: &str, n: &Node, diags: &mut Diagnostics) -> Option<NodeSpec> {
    if !valid_name(name, false) {
        diags.push(
            &n.loc,
            format!("node name `{name}` is not valid"),
            Some("node names use lower-case letters, digits and `_` ([a-z0-9_]+)".into()),
        );
    }
    let Some(entries) = n.as_map() else {
        diags.push(
            &n.loc,
            format!("node `{name}` must be a map, found {}", describe(n)),
            Some("give it at least `op: KIND`".into()),
        );
        return None;
    };
    check_duplicates(entries, &format!("key in node `{name}`"), diags);
    let mut node = NodeSpec {
        name: name.to_string(),
        loc: n.loc.clone(),
        op: String::new(),
        op_loc: n.loc.clone(),
        ins: Vec::new(),
        outs: Vec::new(),
        params: Vec::new(),
        matrix: Vec::new(),
        bad_matrix: Vec::new(),
        matrix_unreadable: false,
        resources: Vec::new(),
        retries: None,
        metrics: Vec::new(),
        executor: None,
    };
    for (k, v) in entries {
        let key = k.key_str().unwrap_or_default();
        match key.as_ref() {
            "op" => match v.as_str() {
                Some(op) => {
                    node.op = op.to_string();
                    node.op_loc = v.loc.clone();
                }
                None => diags.push(
                    &v.loc,
                    format!(
                        "`op` of node `{name}` must be an operator kind, found {}",
                        describe(v)
                    ),
                    None,
                ),
            },
            "in" => {
                for (port, r) in map_entries(v, &format!("nodes.{name}.in"), diags) {
                    match r.as_str() {
                        Some(s) => node.ins.push((port, s.to_string(), r.loc.clone())),
                        None => diags.push(
                            &r.loc,
                            format!("input `{port}` of node `{name}` must be `inputs.NAME` or `NODE.PORT`, found {}", describe(r)),
                            None,
                        ),
                    }
                }
            }
            "out" => {
                for (port, t) in map_entries(v, &format!("nodes.{name}.out"), diags) {
                    match t.as_str() {
                        Some(s) => node.outs.push((port, s.to_string(), t.loc.clone())),
                        None => diags.push(
                            &t.loc,
                            format!(
                                "output `{port}` of node `{name}` must be a type name, found {}",
                                describe(t)
                            ),
                            None,
                        ),
                    }
                }
            }
            "params" => node.params = owned(map_entries(v, &format!("nodes.{name}.params"), diags)),
            "matrix" => {
                node.matrix_unreadable = !v.is_null() && v.as_map().is_none();
                for (var, vals) in map_entries(v, &format!("nodes.{name}.matrix"), diags) {
                    match &vals.value {
                        YValue::Seq(items) if !items.is_empty() => {
                            node.matrix.push((var, items.clone(), vals.loc.clone()))
                        }
                        _ => {
                            diags.push(
                                &vals.loc,
                                format!(
                                    "matrix variable `{var}` of node `{name}` must be a non-empty list"
                                ),
                                Some(format!("for example `{var}: [1, 2]`")),
                            );
                            node.bad_matrix.push(var);
                        }
                    }
                }
            }
            "executor" => node.executor = read_executor(v, &format!("node `{name}`"), diags),
            "resources" => {
                node.resources = owned(map_entries(v, &format!("nodes.{name}.resources"), diags))
            }
            "metrics" => match &v.value {
                YValue::Seq(items) => {
                    for item in items {
                        match item.as_str() {
                            Some(port) => node.metrics.push((port.to_string(), item.loc.clone())),
                            None => diags.push(
                                &item.loc,
                                format!(
                                    "`metrics` of node `{name}` lists output ports, found {}",
                                    describe(item)
                                ),
                                None,
                            ),
                        }
                    }
                }
                _ => diags.push(
                    &v.loc,
                    format!(
                        "`metrics` of node `{name}` must be a list of output ports, found {}",
                        describe(v)
                    ),
                    Some("for example `metrics: [scores]`".into()),
                ),
            },
            "retries" => match v.value {
                YValue::Int(r) if (0..=100).contains(&r) => {
                    node.retries = Some((r as u32, v.loc.clone()))
                }
                _ => diags.push(
                    &v.loc,
                    format!(
                        "`retries` of node `{name}` must be an integer from 0 to 100, found {}",
                        describe(v)
                    ),
                    None,
                ),
            },
            _ => diags.push(
                &k.loc,
                format!("unknown key `{key}` in node `{name}`"),
                Some(match closest(&key, NODE_KEYS) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => format!("a node has: {}", NODE_KEYS.join(", ")),
                }),
            ),
        }
    }
    if node.op.is_empty()
        && !entries
            .iter()
            .any(|(k, _)| k.key_str().as_deref() == Some("op"))
    {
        diags.push(
            &n.loc,
            format!("node `{name}` has no `op`"),
            Some("add `op: KIND`, e.g. `op: command`".into()),
        );
    }
    Some(node)
}

/// The entries of a map section (empty and a diagnostic if it is not a map; `null` is empty).
fn map_entries<'a>(v: &'a Node, what: &str, diags: &mut Diagnostics) -> Vec<(String, &'a Node)> {
    keyed_entries(v, what, diags)
        .into_iter()
        .map(|(k, _, v)| (k, v))
        .collect()
}

/// Entries kept in the spec: the subtrees are copied out of the parsed tree.
fn owned(entries: Vec<(String, &Node)>) -> Vec<(String, Node)> {
    entries.into_iter().map(|(k, v)| (k, v.clone())).collect()
}

/// Like [`map_entries`], with where each key was written.
fn keyed_entries<'a>(
    v: &'a Node,
    what: &str,
    diags: &mut Diagnostics,
) -> Vec<(String, Loc, &'a Node)> {
    if v.is_null() {
        return Vec::new();
    }
    let Some(entries) = v.as_map() else {
        diags.push(
            &v.loc,
            format!("`{what}` must be a map, found {}", describe(v)),
            None,
        );
        return Vec::new();
    };
    check_duplicates(entries, &format!("key in `{what}`"), diags);
    entries
        .iter()
        .filter_map(|(k, v)| match k.as_key() {
            Some(key) => Some((key, k.loc.clone(), v)),
            None => {
                diags.push(
                    &k.loc,
                    format!("a key in `{what}` must be a name, found {}", describe(k)),
                    None,
                );
                None
            }
        })
        .collect()
}

fn check_duplicates(entries: &[(Node, Node)], what: &str, diags: &mut Diagnostics) {
    let mut seen: std::collections::HashMap<std::borrow::Cow<str>, &Node> =
        std::collections::HashMap::with_capacity(entries.len());
    for (k, _) in entries {
        let Some(key) = k.key_str() else { continue };
        if let Some(first) = seen.get(&key) {
            let noun = if what.starts_with("key in `nodes`") {
                "node"
            } else {
                what
            };
            diags.push(
                &k.loc,
                format!(
                    "duplicate {noun} `{key}` (first defined at line {}, column {})",
                    first.loc.line, first.loc.column
                ),
                Some("names must be unique: rename or remove one of them".into()),
            );
        } else {
            seen.insert(key, k);
        }
    }
}

fn valid_name(s: &str, allow_dash: bool) -> bool {
    !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == '_'
                || (allow_dash && (c == '-' || c.is_ascii_uppercase()))
        })
}

/// A short description of a value for messages: `a list`, `the number 3`, ...
pub fn describe(n: &Node) -> String {
    match &n.value {
        YValue::Str(s) => format!("the string {s:?}"),
        YValue::Int(i) => format!("the integer {i}"),
        YValue::UInt(u) => format!("the integer {u}"),
        YValue::Float(f) => format!("the number {f}"),
        YValue::Bool(b) => format!("`{b}`"),
        _ => n.kind().to_string(),
    }
}
