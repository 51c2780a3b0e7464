//! expflow's engine: pipeline files, the graph, keys, the operator trait and registry,
//! plan/explain, the scheduler and executors, and the event log.
//!
//! Dependencies: `expflow-cache` and general-purpose crates only (petgraph, serde-saphyr,
//! tokio). It must not depend on any operator or model crate: operators plug in through the
//! [`operator::Operator`] trait and a [`operator::Registry`] handed to it. `expflow-operators`
//! and the cli depend on it; the model runtime under `operators/runtime/` must not.

pub mod audit;
pub mod budget;
pub mod canonical;
pub mod compile;
pub mod context;
pub mod diag;
pub mod error;
pub mod estimate;
pub mod events;
pub mod executor;
pub mod fuzzing;
pub mod gather;
pub mod harness;
pub mod history;
pub mod input_copies;
pub mod interp;
pub mod key;
pub mod limits;
pub mod materialize;
pub mod metrics;
pub mod node;
pub mod operator;
mod outputs;
pub mod params;
pub mod plan;
pub mod profile;
pub mod run;
pub mod secrets;
pub mod shared;
pub mod spec;
mod topo;
pub mod workspace;
pub mod yaml;

pub use compile::{CNode, CompileOptions, Pipeline, Source};
pub use context::{CancelToken, Context, Input, Output, Progress};
pub use diag::{Diagnostic, Diagnostics, Loc};
pub use error::{EngineError, Result};
pub use input_copies::{InputChange, InputCopies};
pub use key::{KEY_SCHEMA, KeyMaterial};
pub use operator::{
    Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports, Registry,
    Resources, Series, Signature,
};
pub use plan::{Explanation, PlanEntry, explain, plan, plan_prefetched};
pub use run::{RunOptions, RunSummary, run};
pub use secrets::Secrets;
pub use workspace::{Holder, Workspace};

/// The engine's version, recorded with every node record.
pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");
