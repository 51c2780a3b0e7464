//! The `Operator` trait, its signature types and the registry.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::context::Context;

/// The error an operator returns. Operators' crates convert their own error enums into it
/// with `?`; the engine prints the whole source chain.
pub type OpError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What flows along an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortType {
    /// A Parquet file with an Arrow schema.
    Table,
    /// A Hugging-Face-style model directory.
    Model,
    /// A retrieval index (a directory).
    Index,
    /// Any single file.
    File,
    /// Any directory.
    Dir,
    /// A JSON file of metrics.
    Metrics,
}

impl PortType {
    pub const ALL: [PortType; 6] = [
        PortType::Table,
        PortType::Model,
        PortType::Index,
        PortType::File,
        PortType::Dir,
        PortType::Metrics,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PortType::Table => "table",
            PortType::Model => "model",
            PortType::Index => "index",
            PortType::File => "file",
            PortType::Dir => "dir",
            PortType::Metrics => "metrics",
        }
    }

    pub fn parse(s: &str) -> Option<PortType> {
        PortType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether artifacts of this type are directories (stored as a manifest).
    pub fn is_dir(self) -> bool {
        matches!(self, PortType::Model | PortType::Index | PortType::Dir)
    }

    /// Whether a value of type `self` may feed a port of type `want`.
    /// `file` accepts any single-file type and `dir` any directory type.
    pub fn fits(self, want: PortType) -> bool {
        self == want
            || (want == PortType::File && !self.is_dir())
            || (want == PortType::Dir && self.is_dir())
    }
}

impl std::fmt::Display for PortType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One named port.
#[derive(Clone, Debug, PartialEq)]
pub struct Port {
    pub name: &'static str,
    pub ty: PortType,
    pub optional: bool,
    pub doc: &'static str,
    /// Whether the output holds metrics (a `table` of training curves, read through
    /// [`Operator::read_series`]); outputs of type `metrics` always do.
    pub metrics: bool,
}

impl Port {
    pub fn new(name: &'static str, ty: PortType, doc: &'static str) -> Port {
        Port {
            name,
            ty,
            optional: false,
            doc,
            metrics: false,
        }
    }

    pub fn optional(mut self) -> Port {
        self.optional = true;
        self
    }

    /// Marks the output as holding metrics: its values are kept in the node's record.
    pub fn metrics(mut self) -> Port {
        self.metrics = true;
        self
    }
}

/// The set of input or output ports of an operator.
#[derive(Clone, Debug, PartialEq)]
pub enum Ports {
    /// Exactly these ports.
    Fixed(Vec<Port>),
    /// Any number of ports with any names, all of the given type (for example `table.concat`).
    Open(PortType),
    /// Any names and any types (the inputs of `command`).
    Any,
    /// Declared by the node's `out:` map (the outputs of `command`).
    Declared,
}

/// The type a parameter's value must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Any,
    String,
    Int,
    Float,
    Bool,
    List,
    Map,
}

impl ParamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamKind::Any => "any",
            ParamKind::String => "string",
            ParamKind::Int => "integer",
            ParamKind::Float => "number",
            ParamKind::Bool => "boolean",
            ParamKind::List => "list",
            ParamKind::Map => "map",
        }
    }

    /// Whether `v` is acceptable for this kind (integers are acceptable numbers).
    pub fn accepts(self, v: &Value) -> bool {
        match self {
            ParamKind::Any => true,
            ParamKind::String => v.is_string(),
            ParamKind::Int => v.is_i64() || v.is_u64(),
            ParamKind::Float => v.is_number(),
            ParamKind::Bool => v.is_boolean(),
            ParamKind::List => v.is_array(),
            ParamKind::Map => v.is_object(),
        }
    }
}

/// One parameter: its name, kind, default (`None` means required unless `optional`) and a
/// line of help.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamKind,
    pub default: Option<Value>,
    pub doc: &'static str,
    /// Without a default and not required: absent from the filled-in parameters (and so
    /// from the key) unless given. Adding such a parameter keeps existing keys.
    pub optional: bool,
    /// Takes a credential: `${secrets.NAME}` may be written in it. The placeholder stays in
    /// the key; the operator asks the context for the value where it uses it
    /// ([`crate::Context::reveal`]).
    pub secret: bool,
}

impl ParamSpec {
    pub fn required(name: &'static str, kind: ParamKind, doc: &'static str) -> ParamSpec {
        ParamSpec {
            name,
            kind,
            default: None,
            doc,
            optional: false,
            secret: false,
        }
    }

    /// A parameter with no default that is left out when not given (see `optional`).
    pub fn optional(name: &'static str, kind: ParamKind, doc: &'static str) -> ParamSpec {
        ParamSpec {
            optional: true,
            ..ParamSpec::required(name, kind, doc)
        }
    }

    /// Marks the parameter as taking `${secrets.NAME}` (see `secret`).
    pub fn takes_secrets(mut self) -> ParamSpec {
        self.secret = true;
        self
    }

    pub fn with_default(
        name: &'static str,
        kind: ParamKind,
        default: Value,
        doc: &'static str,
    ) -> ParamSpec {
        ParamSpec {
            name,
            kind,
            default: Some(default),
            doc,
            optional: false,
            secret: false,
        }
    }
}

/// Whether re-execution gives identical bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Determinism {
    /// Re-execution must give identical bytes.
    Deterministic,
    /// Identical given the seed, the thread count and the hardware.
    Seeded,
    /// Remote sampling, GPU training: audit compares metrics within tolerances.
    Nondeterministic,
}

impl Determinism {
    pub fn as_str(self) -> &'static str {
        match self {
            Determinism::Deterministic => "deterministic",
            Determinism::Seeded => "seeded",
            Determinism::Nondeterministic => "nondeterministic",
        }
    }
}

/// What a node needs from the machine while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpus: u32,
    pub gpus: u32,
    pub mem_gb: f64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpus: 1,
            gpus: 0,
            mem_gb: 0.0,
        }
    }
}

/// Everything the engine needs to know about an operator before running it.
#[derive(Clone, Debug)]
pub struct Signature {
    pub inputs: Ports,
    pub outputs: Ports,
    pub params: Vec<ParamSpec>,
    pub determinism: Determinism,
    pub resources: Resources,
}

impl Signature {
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }
}

/// An operator: a stable kind name, a version, a signature, and `run`.
///
/// `run` is called on a blocking thread; it reads inputs and writes outputs through the
/// context. Bump `version` whenever a change alters the bytes the operator produces.
pub trait Operator: Send + Sync + 'static {
    /// Stable name used in pipeline files, e.g. `table.filter`.
    fn kind(&self) -> &'static str;
    /// Bumped whenever the output for the same inputs changes.
    fn version(&self) -> u32;
    fn signature(&self) -> Signature;
    /// Versions of external tools that the output depends on (they enter the key).
    /// Called at most once per run per operator.
    fn environment(&self) -> Result<BTreeMap<String, String>, OpError> {
        Ok(BTreeMap::new())
    }
    /// Checks beyond the parameter schema, run when the pipeline is compiled.
    /// Return one message per problem.
    fn check(&self, _params: &serde_json::Map<String, Value>) -> Vec<String> {
        Vec::new()
    }
    /// How reproducible this node's outputs are with these (filled-in) parameters; the
    /// signature's value unless an operator's parameters change it (a sampling backend
    /// that is reproducible for a seed locally but not through a remote server).
    fn determinism(&self, _params: &serde_json::Map<String, Value>) -> Determinism {
        self.signature().determinism
    }
    /// The numeric columns of the metrics table this operator wrote at `path` (an output
    /// marked [`Port::metrics`], or named under the node's `metrics:`), column by column.
    /// `None`: this operator cannot read tables, and the table's values are not kept.
    fn read_series(&self, _path: &std::path::Path) -> Option<Result<Series, OpError>> {
        None
    }
    fn run(&self, ctx: &Context) -> Result<(), OpError>;
}

/// Numeric columns of a metrics table, row by row (`None` where a row has no value).
pub type Series = BTreeMap<String, Vec<Option<f64>>>;

/// All known operators, by kind.
#[derive(Clone, Default)]
pub struct Registry {
    ops: BTreeMap<&'static str, Arc<dyn Operator>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds an operator. Panics on a duplicate kind: that is a programming error.
    pub fn register(&mut self, op: Arc<dyn Operator>) -> &mut Self {
        let kind = op.kind();
        let previous = self.ops.insert(kind, op);
        assert!(previous.is_none(), "operator {kind} registered twice");
        self
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Operator>> {
        self.ops.get(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.ops.keys().copied()
    }
}
