//! Running one operator outside a pipeline, for operator tests: a throw-away CAS and store
//! in a directory, inputs stored from paths, outputs returned as paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use expflow_cache::{Cas, Digest, SledStore, Store};
use serde_json::{Map, Value};

use crate::context::{CancelToken, Context, Input, MemoStats, Output};
use crate::operator::{OpError, Operator, PortType, Ports};
use crate::params::fill_defaults;

/// A workspace for running operators directly.
pub struct Harness {
    dir: PathBuf,
    cas: Cas,
    store: Arc<dyn Store>,
    runs: u32,
    secrets: crate::secrets::Secrets,
}

/// What one harness run produced.
pub struct HarnessRun {
    /// Output paths by port (files, or directories for directory types).
    pub outputs: BTreeMap<String, PathBuf>,
    /// Per-item memoisation (hits, misses).
    pub memo: (u64, u64),
    /// The node log.
    pub log: String,
    /// Figures the operator noted about the execution ([`Context::note`]).
    pub notes: Map<String, Value>,
    /// The digest of each output as the CAS names it (directories as Merkle trees).
    pub digests: BTreeMap<String, Digest>,
}

impl Harness {
    /// Creates the CAS and store under `dir`.
    pub fn new(dir: &Path) -> Result<Harness, OpError> {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir)?);
        let cas = Cas::open(&dir.join("cas"))?.with_stat_cache(store.clone());
        Ok(Harness {
            dir: dir.to_path_buf(),
            cas,
            store,
            runs: 0,
            secrets: crate::secrets::Secrets::default(),
        })
    }

    /// Gives the operators run from now on these declared secrets (`${secrets.NAME}`).
    pub fn set_secrets(&mut self, secrets: crate::secrets::Secrets) {
        self.secrets = secrets;
    }

    /// Runs `op` with `inputs` (port, type, path) and `params` (a JSON object; defaults are
    /// filled in). For operators with declared outputs, `declared` names them.
    pub fn run(
        &mut self,
        op: &dyn Operator,
        inputs: &[(&str, PortType, &Path)],
        params: Value,
        declared: &[(&str, PortType)],
    ) -> Result<HarnessRun, OpError> {
        self.runs += 1;
        let sig = op.signature();
        let given: Map<String, Value> = match params {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => return Err(format!("params must be an object, got {other}").into()),
        };
        let (params, problems) = fill_defaults(&sig, &given);
        if !problems.is_empty() {
            return Err(format!("parameter problems: {problems:?}").into());
        }
        let extra = op.check(&params);
        if !extra.is_empty() {
            return Err(extra.join("; ").into());
        }
        let mut ins = BTreeMap::new();
        for (port, ty, path) in inputs {
            let (digest, _) = if ty.is_dir() {
                self.cas.put_dir(path)?
            } else {
                self.cas.put_file(path)?
            };
            let stored = if ty.is_dir() {
                let d = self.dir.join(format!("in-{}-{}", self.runs, port));
                self.cas.materialize_dir(&digest, &d)?;
                d
            } else {
                self.cas.blob_path(&digest)
            };
            ins.insert(
                port.to_string(),
                Input {
                    path: stored,
                    ty: *ty,
                    digest,
                },
            );
        }
        let scratch = self.dir.join(format!("scratch-{}", self.runs));
        let out_dir = self.dir.join(format!("out-{}", self.runs));
        std::fs::create_dir_all(&scratch)?;
        std::fs::create_dir_all(&out_dir)?;
        let out_ports: Vec<(String, PortType)> = match &sig.outputs {
            Ports::Fixed(ports) => ports.iter().map(|p| (p.name.to_string(), p.ty)).collect(),
            _ => declared.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
        };
        let mut outs = BTreeMap::new();
        for (name, ty) in out_ports {
            let path = out_dir.join(crate::node::output_file_name(&name, ty));
            if ty.is_dir() {
                std::fs::create_dir_all(&path)?;
            }
            outs.insert(name, Output { path, ty });
        }
        let log_path = self.dir.join(format!("node-{}.log", self.runs));
        let seed = params.get("seed").and_then(Value::as_u64).unwrap_or(0);
        // Same operator, params and inputs → same resume directory, as a node key would.
        let mut h = blake3::Hasher::new();
        h.update(op.kind().as_bytes());
        h.update(
            serde_json::to_string(&params)
                .unwrap_or_default()
                .as_bytes(),
        );
        for (port, input) in &ins {
            h.update(port.as_bytes());
            h.update(input.digest.to_hex().as_bytes());
        }
        let resume = self.dir.join("resume").join(h.finalize().to_hex().as_str());
        let ctx = Context {
            node: "test".into(),
            op_kind: op.kind().into(),
            op_version: op.version(),
            params,
            inputs: ins,
            outputs: outs,
            scratch,
            scratch_ready: std::sync::OnceLock::new(),
            copies: self.dir.join(format!("inputs-{}", self.runs)),
            resume,
            log: Mutex::new(None),
            log_path: log_path.clone(),
            cancel: CancelToken::new(),
            gpus: Vec::new(),
            seed,
            cas: self.cas.clone(),
            store: self.store.clone(),
            items: Mutex::new(Vec::new()),
            memo_store: true,
            memo_stats: MemoStats::default(),
            progress: Arc::new(|_: &crate::context::Progress| {}),
            secrets: Mutex::new(Vec::new()),
            vault: self.secrets.clone(),
            revealed: Mutex::new(Vec::new()),
            notes: Mutex::new(Map::new()),
        };
        op.run(&ctx)?;
        if ctx.resume.exists() {
            drop(std::fs::remove_dir_all(&ctx.resume));
        }
        let memo = ctx.memo_counts();
        let mut digests = BTreeMap::new();
        for (port, out) in &ctx.outputs {
            let (digest, _) = if out.ty.is_dir() {
                self.cas.put_dir(&out.path)?
            } else {
                self.cas.put_file(&out.path).map_err(|e| {
                    format!(
                        "output `{port}` was not written ({}): {e}",
                        out.path.display()
                    )
                })?
            };
            digests.insert(port.clone(), digest);
        }
        Ok(HarnessRun {
            outputs: ctx
                .outputs
                .iter()
                .map(|(k, o)| (k.clone(), o.path.clone()))
                .collect(),
            memo,
            log: std::fs::read_to_string(&log_path).unwrap_or_default(),
            notes: ctx.notes(),
            digests,
        })
    }
}

/// One way to run an operator, for [`check_reproducible`]: inputs (port, type, path),
/// parameters, and the outputs a `command`-like operator declares.
#[derive(Clone, Debug)]
pub struct Example {
    /// What the example shows, for messages (`infer.chat, openai backend`).
    pub name: String,
    pub inputs: Vec<(String, PortType, PathBuf)>,
    pub params: Value,
    pub declared: Vec<(String, PortType)>,
}

/// What [`check_reproducible`] saw.
pub struct Reproducibility {
    /// The first, cold run (its outputs can feed the next example).
    pub cold: HarnessRun,
    /// The same again in the same workspace, with the memo store warm.
    pub warm: HarnessRun,
    /// A cold run in a workspace at another path.
    pub moved: HarnessRun,
    /// One line per output whose bytes differ between the runs; empty when all agree.
    pub differences: Vec<String>,
}

/// Runs `op` on `ex` three times: cold in a fresh workspace under `base`, again in that
/// workspace (its memo store now warm), and cold in a fresh workspace at another path under
/// `base`. An output's bytes must be a function of the node's key, so all three must agree:
/// figures about the run (memo hits, requests, retries, timings, hosts, process ids, paths
/// of the workspace) belong in [`Context::note`] and the log, never in an output.
pub fn check_reproducible(
    op: &dyn Operator,
    ex: &Example,
    base: &Path,
) -> Result<Reproducibility, OpError> {
    let inputs: Vec<(&str, PortType, &Path)> = ex
        .inputs
        .iter()
        .map(|(port, ty, p)| (port.as_str(), *ty, p.as_path()))
        .collect();
    let declared: Vec<(&str, PortType)> =
        ex.declared.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    let context = |what: &str| {
        let name = ex.name.clone();
        let what = what.to_string();
        move |e: OpError| -> OpError { format!("{name}, {what} run: {e}").into() }
    };
    let mut first = Harness::new(&base.join("first"))?;
    let cold = first
        .run(op, &inputs, ex.params.clone(), &declared)
        .map_err(context("cold"))?;
    let warm = first
        .run(op, &inputs, ex.params.clone(), &declared)
        .map_err(context("warm"))?;
    let mut second = Harness::new(&base.join("elsewhere").join("second workspace"))?;
    let moved = second
        .run(op, &inputs, ex.params.clone(), &declared)
        .map_err(context("moved"))?;
    let mut differences = Vec::new();
    for (port, d) in &cold.digests {
        for (what, run) in [
            ("with a warm memo store", &warm),
            ("in a workspace at another path", &moved),
        ] {
            match run.digests.get(port) {
                Some(other) if other == d => {}
                other => differences.push(format!(
                    "{}: output `{port}` is {} cold but {} {what}",
                    ex.name,
                    d.short(),
                    other.map_or("missing".to_string(), Digest::short)
                )),
            }
        }
    }
    Ok(Reproducibility {
        cold,
        warm,
        moved,
        differences,
    })
}
