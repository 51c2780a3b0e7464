//! `serve.model`: a model to be served, as an endpoint for inference nodes (see
//! [`super::served`] for the lifecycle). Its output is a directory: `endpoint.json` (engine,
//! served name, replicas, GPUs per replica, extra arguments and environment, the model's
//! digest) and the model under `model/`. It starts nothing itself: each inference node with
//! the endpoint at its `endpoint` input starts the replicas while it runs and stops them when
//! it is done, so a node answered from the cache never starts a server.

use std::path::Path;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::served::{ENDPOINT_FILE, ENGINES, Endpoint, MODEL_DIR};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub const KIND: &str = "serve.model";

pub struct ServeModel;

fn endpoint(map: &Map<String, Value>, model_digest: String) -> Result<Endpoint> {
    let p = Params::new(KIND, map);
    let engine = p.choice("engine", &ENGINES)?;
    let replicas = p.u64("replicas")?;
    if replicas == 0 || replicas > 64 {
        return Err(OperatorError::param(
            KIND,
            "replicas",
            format!("is {replicas}; use 1 to 64"),
        ));
    }
    let gpus = p.u64("gpus_per_replica")?;
    if engine != "expflow" && gpus == 0 {
        return Err(OperatorError::param(
            KIND,
            "gpus_per_replica",
            format!("is 0; {engine} serves on GPUs: use at least 1"),
        ));
    }
    let served_name = p.str("served_name")?;
    if served_name.is_empty() {
        return Err(OperatorError::param(KIND, "served_name", "is empty"));
    }
    Ok(Endpoint {
        engine: engine.into(),
        served_name: served_name.into(),
        model_digest,
        replicas: replicas as u32,
        gpus_per_replica: gpus as u32,
        args: p.opt_strings("args")?.unwrap_or_default(),
        env: p.string_map("env")?,
        health_timeout_s: p.u64("health_timeout_s")?.max(1),
    })
}

/// Copies `from` into `to` (created), file by file in name order.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| OperatorError::io("cannot create", to, e))?;
    let entries = std::fs::read_dir(from).map_err(|e| OperatorError::io("cannot list", from, e))?;
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for src in paths {
        let dst = to.join(src.file_name().unwrap_or_default());
        if src.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| OperatorError::io("cannot copy", &src, e))?;
        }
    }
    Ok(())
}

impl Operator for ServeModel {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "model",
                PortType::Model,
                "the model directory to serve",
            )]),
            outputs: Ports::Fixed(vec![Port::new(
                "endpoint",
                PortType::Dir,
                "endpoint.json and the model: connect to an inference node's `endpoint` input",
            )]),
            params: vec![
                ParamSpec::with_default(
                    "engine",
                    ParamKind::String,
                    json!("expflow"),
                    "expflow (expflow serve), vllm (vllm serve) or swift (swift deploy)",
                ),
                ParamSpec::with_default(
                    "served_name",
                    ParamKind::String,
                    json!("model"),
                    "the model's name in requests",
                ),
                ParamSpec::with_default(
                    "replicas",
                    ParamKind::Int,
                    json!(1),
                    "servers started, each on its own port (and GPUs)",
                ),
                ParamSpec::with_default(
                    "gpus_per_replica",
                    ParamKind::Int,
                    json!(0),
                    "GPUs per replica (tensor-parallel size); 0: CPU (expflow only)",
                ),
                ParamSpec::with_default(
                    "args",
                    ParamKind::List,
                    json!([]),
                    "more command-line arguments for every replica",
                ),
                ParamSpec::with_default(
                    "env",
                    ParamKind::Map,
                    json!({}),
                    "more environment variables for every replica",
                ),
                ParamSpec::with_default(
                    "health_timeout_s",
                    ParamKind::Int,
                    json!(600),
                    "how long a replica may take to answer GET /v1/models",
                ),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(endpoint(params, String::new()))
    }

    fn run(&self, ctx: &Context) -> std::result::Result<(), OpError> {
        let model = ctx.input("model")?;
        let ep = endpoint(ctx.params(), model.digest.to_hex())?;
        let out = &ctx.output("endpoint")?.path;
        copy_tree(&model.path, &out.join(MODEL_DIR))?;
        let mut text = serde_json::to_string_pretty(&ep)?;
        text.push('\n');
        let path = out.join(ENDPOINT_FILE);
        std::fs::write(&path, text).map_err(|e| OperatorError::io("cannot write", &path, e))?;
        ctx.log(&format!(
            "endpoint: {} × {} ({} GPU(s) each) serving `{}`",
            ep.replicas, ep.engine, ep.gpus_per_replica, ep.served_name
        ));
        Ok(())
    }
}
