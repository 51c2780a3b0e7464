//! Adapters for the external tools researchers run today (docs/training.md):
//! - [`llamafactory`]: `train.sft` / `train.dpo` with `backend: llamafactory`: dataset files,
//!   `dataset_info.json`, the flat training YAML, `llamafactory-cli train`, its
//!   `trainer_log.jsonl` / `trainer_state.json`, and the adapter imported;
//! - [`swift`]: the same with ms-swift (`swift sft`, `swift rlhf --rlhf_type dpo`) and
//!   ExpStar's arguments;
//! - [`vllm_infer`]: `infer.vllm_infer`, LLaMA-Factory's `scripts/vllm_infer.py`, its lines
//!   joined back to ids by row index.
//!
//! What they share lives here: the backend parameters, the training rows, the log reader, the
//! adapter import and running the tool with progress from its log.

pub mod checkpoints;
pub mod llamafactory;
pub mod swift;
pub mod vllm_infer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use expflow_engine::{Context, OpError, ParamKind, ParamSpec};
use expflow_train::MetricRow;
use serde_json::{Map, Value, json};

use crate::error::{OperatorError, Result};

pub use vllm_infer::VllmInfer;

/// Scores an external trainer's saved adapters on the dev set: (context, operator, the
/// trainer's output directory, its `trainer_state.json`, the metric, max new tokens) to
/// (step, adapter directory, score) in step order. The training operators pass their native
/// evaluation (`train::checkpoints::evaluate`), so this module does not import them.
pub type Evaluate = fn(
    &Context,
    &'static str,
    &Path,
    &Value,
    &str,
    usize,
) -> std::result::Result<Vec<(usize, PathBuf, f64)>, OpError>;

/// Which training stage a tool runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Sft,
    Dpo,
}

/// Parameters of the external backends, appended to `train.sft` / `train.dpo`.
pub fn backend_params() -> Vec<ParamSpec> {
    let p = ParamSpec::with_default;
    vec![
        p(
            "tool",
            ParamKind::String,
            json!(""),
            "llamafactory/swift: the program (default: llamafactory-cli or swift on PATH)",
        ),
        p(
            "model_name_or_path",
            ParamKind::String,
            json!(""),
            "llamafactory/swift: the base model when no `model` input is connected (a hub name or a path)",
        ),
        p(
            "template",
            ParamKind::String,
            json!("qwen2_vl"),
            "llamafactory: the chat template",
        ),
        p(
            "dataset_name",
            ParamKind::String,
            json!(""),
            "llamafactory and native: the dataset of the `dataset` input to train on",
        ),
        p(
            "eval_dataset_name",
            ParamKind::String,
            json!(""),
            "llamafactory and native: the dev dataset of the `dataset` input (eval_loss, and the checkpoints' eval_metric)",
        ),
        p(
            "bf16",
            ParamKind::Bool,
            json!(true),
            "llamafactory/swift: train in bfloat16",
        ),
        p(
            "freeze_vit",
            ParamKind::Bool,
            json!(true),
            "llamafactory/swift: keep the vision tower frozen",
        ),
        p(
            "deepspeed",
            ParamKind::String,
            json!(""),
            "llamafactory/swift: a DeepSpeed config (e.g. zero2)",
        ),
        p(
            "nproc_per_node",
            ParamKind::Int,
            json!(1),
            "swift: processes (GPUs) per node; also give the node `resources: {gpus: N}`",
        ),
        p(
            "extra",
            ParamKind::Map,
            json!({}),
            "llamafactory: extra YAML keys; swift: extra --flags (key: value), passed verbatim",
        ),
        p(
            "env",
            ParamKind::Map,
            json!({}),
            "environment variables for the tool (e.g. VIDEO_MAX_PIXELS, FPS, FPS_MAX_FRAMES)",
        ),
    ]
}

/// The `dataset_name` parameter, which must name a dataset when the `dataset` input is used.
pub fn dataset_name(op: &'static str, map: &Map<String, Value>) -> Result<String> {
    let name = map
        .get("dataset_name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        return Err(OperatorError::param(
            op,
            "dataset_name",
            "is empty: name the dataset of the `dataset` input to train on",
        ));
    }
    Ok(name.to_string())
}

/// The `extra` or `env` map parameter as ordered (key, text) pairs.
pub fn string_map(
    op: &'static str,
    map: &Map<String, Value>,
    name: &str,
) -> Result<Vec<(String, String)>> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(o)) => Ok(o
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect()),
        Some(_) => Err(OperatorError::param(
            op,
            name,
            "must be a map of key: value",
        )),
    }
}

/// The rows of the input `port` (JSON Lines, a JSON array or a table); each tool's module
/// converts them to the form it reads.
pub fn rows(ctx: &Context, op: &'static str, port: &str) -> Result<Vec<Value>, OpError> {
    crate::train_io::read_rows(op, &ctx.input(port)?.path)
}

/// Where a tool's training writes (kept in the node's resume directory, so an interrupted
/// run can be continued by the tool's own `resume_from_checkpoint`).
pub fn work_dir(ctx: &Context, name: &str) -> Result<PathBuf, OpError> {
    let d = ctx.resume_dir()?.join(name);
    std::fs::create_dir_all(&d).map_err(|e| OperatorError::io("cannot create", &d, e))?;
    Ok(d)
}

/// A TCP port nobody listens on at the moment (the OS picks it).
fn free_port() -> Option<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).ok()?;
    Some(l.local_addr().ok()?.port())
}

/// Runs `cmd`, reporting progress from the JSON-lines log `log` (its `current_steps` /
/// `total_steps`, or `global_step/max_steps` as ms-swift writes) while it runs. A missing
/// program is an error saying what to install.
pub fn run_tool(
    ctx: &Context,
    cmd: &mut Command,
    log: &Path,
    install: &str,
) -> Result<(), OpError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    // The tools start torchrun, whose rendezvous port defaults to 29500: two training nodes
    // at once (or another job) would collide, so each run gets a free port unless one is set.
    let port_set = cmd.get_envs().any(|(k, _)| k == "MASTER_PORT")
        || std::env::var_os("MASTER_PORT").is_some();
    if let Some(port) = free_port().filter(|_| !port_set) {
        cmd.env("MASTER_PORT", port.to_string());
    }
    ctx.log(&format!(
        "running {program} {}",
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let done = AtomicBool::new(false);
    let status = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Some((d, t)) = last_progress(log) {
                    ctx.progress_of(d, t, "steps", "");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let r = ctx.run_command(cmd);
        done.store(true, Ordering::Relaxed);
        r
    });
    let status = status.map_err(|e| {
        if e.to_string().contains("cannot start") {
            OpError::from(format!("{e}; {install}"))
        } else {
            e
        }
    })?;
    if !status.success() {
        return Err(format!(
            "{program} failed ({status}); {}",
            failure_excerpt(&ctx.log_tail(400))
        )
        .into());
    }
    Ok(())
}

/// What a failed tool printed that explains the failure: its first Python traceback in
/// `tail` (under torchrun the worker's own, its lines prefixed `[rank0]: `, comes before the
/// launcher's, which only says that a child failed), else the last 20 lines.
pub fn failure_excerpt(tail: &str) -> String {
    let unprefixed = |l: &'_ str| -> String {
        match l.strip_prefix("[rank").and_then(|r| r.split_once("]: ")) {
            Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) => rest.to_string(),
            _ => l.to_string(),
        }
    };
    let owned: Vec<String> = tail.lines().map(unprefixed).collect();
    let lines: Vec<&str> = owned.iter().map(String::as_str).collect();
    let first = lines.iter().position(|l| {
        l.trim_start()
            .starts_with("Traceback (most recent call last)")
    });
    match first {
        Some(i) => {
            // The traceback ends at its exception line (the first unindented line after it).
            let end = lines[i + 1..]
                .iter()
                .position(|l| !l.starts_with(' ') && !l.is_empty())
                .map_or(lines.len(), |k| i + 1 + k + 1);
            let shown = &lines[i..end.min(lines.len())];
            let cut = shown.len().saturating_sub(30);
            format!(
                "its error:\n{}{}",
                if cut > 0 { "…\n" } else { "" },
                shown[cut..].join("\n")
            )
        }
        None => {
            let from = lines.len().saturating_sub(20);
            format!("the end of its output:\n{}", lines[from..].join("\n"))
        }
    }
}

fn last_progress(log: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(log).ok()?;
    let v: Value = serde_json::from_str(text.lines().rev().find(|l| !l.trim().is_empty())?).ok()?;
    if let (Some(d), Some(t)) = (v["current_steps"].as_u64(), v["total_steps"].as_u64()) {
        return Some((d, t));
    }
    let (d, t) = v["global_step/max_steps"].as_str()?.split_once('/')?;
    Some((d.trim().parse().ok()?, t.trim().parse().ok()?))
}

/// Metric rows from a JSON-lines training log (LLaMA-Factory's `trainer_log.jsonl` or
/// ms-swift's `logging.jsonl`) or Hugging Face's `trainer_state.json` `log_history`: step
/// from `current_steps` / `step` / `global_step/max_steps`; `lr` from `lr` /
/// `learning_rate`; every other numeric field kept under its own name (`eval_loss`,
/// `rewards/chosen`, ...) except timing fields.
pub fn metric_rows(entries: &[Value]) -> Vec<MetricRow> {
    const SKIP: [&str; 10] = [
        "current_steps",
        "total_steps",
        "step",
        "epoch",
        "lr",
        "learning_rate",
        "loss",
        "grad_norm",
        "percentage",
        "total_flos",
    ];
    let timing = |k: &str| {
        k.contains("time")
            || k.contains("runtime")
            || k.ends_with("per_second")
            || k == "memory(GiB)"
            || k == "train_speed(iter/s)"
    };
    let mut out = Vec::new();
    for e in entries {
        let Some(o) = e.as_object() else { continue };
        let step = o
            .get("current_steps")
            .or_else(|| o.get("step"))
            .and_then(Value::as_u64)
            .or_else(|| {
                o.get("global_step/max_steps")
                    .and_then(Value::as_str)
                    .and_then(|s| s.split('/').next())
                    .and_then(|s| s.trim().parse().ok())
            });
        let Some(step) = step else { continue };
        let num = |k: &str| o.get(k).and_then(Value::as_f64);
        let mut values = BTreeMap::new();
        for (k, v) in o {
            if SKIP.contains(&k.as_str()) || timing(k) {
                continue;
            }
            if let Some(x) = v.as_f64() {
                values.insert(k.clone(), x);
            }
        }
        let (loss, grad_norm) = (num("loss"), num("grad_norm"));
        if loss.is_none() && grad_norm.is_none() && values.is_empty() {
            // A closing line with only timings and counters.
            continue;
        }
        out.push(MetricRow {
            step: step as usize,
            epoch: num("epoch").unwrap_or(f64::NAN),
            lr: num("lr")
                .or_else(|| num("learning_rate"))
                .unwrap_or(f64::NAN),
            loss,
            grad_norm,
            values,
        });
    }
    out
}

/// Reads JSON lines, skipping lines that are not JSON objects (a tool may be killed mid-line).
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect()
}

/// Copies the PEFT adapter files of `from` (`adapter_model.safetensors` or `.bin`,
/// `adapter_config.json`, tokenizer files when present) into `to`.
pub fn import_adapter(from: &Path, to: &Path) -> Result<(), OpError> {
    let weights = ["adapter_model.safetensors", "adapter_model.bin"]
        .iter()
        .map(|n| from.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            OpError::from(format!(
                "{}: no adapter_model.safetensors (or .bin); the tool did not save a LoRA adapter there",
                from.display()
            ))
        })?;
    std::fs::create_dir_all(to).map_err(|e| OperatorError::io("cannot create", to, e))?;
    let mut names = vec![weights.file_name().unwrap().to_string_lossy().into_owned()];
    for extra in [
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
    ] {
        if from.join(extra).is_file() {
            names.push(extra.to_string());
        }
    }
    if !from.join("adapter_config.json").is_file() {
        return Err(format!(
            "{}: no adapter_config.json beside the adapter weights",
            from.display()
        )
        .into());
    }
    for n in names {
        std::fs::copy(from.join(&n), to.join(&n))
            .map_err(|e| OperatorError::io("cannot copy", &from.join(&n), e))?;
    }
    Ok(())
}

/// Rewrites, in the JSON files under `dir` (any depth), string values that name a place in
/// this run's workspace, so that an imported model does not carry where the workspace lives
/// (an output's bytes must not depend on it): the connected `model` input's directory
/// becomes its digest (as the native trainer names the base model in
/// `adapter_config.json`), and paths inside the tool's working directory `work` become
/// relative to it. Files without such a value are left byte for byte.
pub fn unplace_paths(ctx: &Context, dir: &Path, work: &Path) -> Result<(), OpError> {
    let mut places: Vec<(String, String)> = Vec::new();
    if let Some(m) = ctx.inputs().get("model") {
        places.push((m.path.display().to_string(), m.digest.to_hex()));
    }
    places.push((work.display().to_string(), ".".to_string()));
    unplace_dir(dir, &places)
}

fn unplace_dir(dir: &Path, places: &[(String, String)]) -> Result<(), OpError> {
    let entries = std::fs::read_dir(dir).map_err(|e| OperatorError::io("cannot read", dir, e))?;
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            unplace_dir(&path, places)?;
            continue;
        }
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let Ok(mut v) = std::fs::read(&path)
            .map_err(|_| ())
            .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|_| ()))
        else {
            continue;
        };
        if unplace_value(&mut v, places) {
            let mut text = serde_json::to_string_pretty(&v)?;
            text.push('\n');
            std::fs::write(&path, text).map_err(|e| OperatorError::io("cannot write", &path, e))?;
        }
    }
    Ok(())
}

/// Replaces workspace places in the strings of `v`; whether anything changed.
fn unplace_value(v: &mut Value, places: &[(String, String)]) -> bool {
    match v {
        Value::String(s) => {
            for (from, to) in places {
                let rest = if s == from {
                    Some(String::new())
                } else {
                    s.strip_prefix(&format!("{from}/")).map(str::to_string)
                };
                if let Some(rest) = rest {
                    *s = if rest.is_empty() {
                        to.clone()
                    } else if to == "." {
                        rest
                    } else {
                        format!("{to}/{rest}")
                    };
                    return true;
                }
            }
            false
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, x| unplace_value(x, places) | changed),
        Value::Object(map) => map
            .values_mut()
            .fold(false, |changed, x| unplace_value(x, places) | changed),
        _ => false,
    }
}

/// The checkpoint a Hugging Face trainer kept as best (`trainer_state.json`'s
/// `best_model_checkpoint`, when that directory exists), else `fallback`.
pub fn best_or(state: &Value, fallback: &Path) -> PathBuf {
    state["best_model_checkpoint"]
        .as_str()
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| fallback.to_path_buf())
}

/// The base model a tool loads: the `model` input's path, else `model_name_or_path`.
pub fn base_model(ctx: &Context, op: &'static str) -> Result<String, OpError> {
    if let Some(m) = ctx.inputs().get("model") {
        return Ok(m.path.display().to_string());
    }
    match ctx.params().get("model_name_or_path").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(OperatorError::param(
            op,
            "model_name_or_path",
            "is empty and no `model` input is connected: name the base model (a hub id or a directory)",
        )
        .into()),
    }
}

#[cfg(test)]
mod tests;
