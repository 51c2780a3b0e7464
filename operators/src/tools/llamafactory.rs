//! `backend: llamafactory` (spec macbench-llamafactory §2): the dataset file and its
//! `dataset_info.json` entry, the flat training YAML, `llamafactory-cli train`, the metrics
//! from `trainer_log.jsonl` / `trainer_state.json`, and the adapter (the best checkpoint when
//! the trainer kept one) imported; `merge: true` runs `llamafactory-cli export` too.

use std::path::Path;
use std::process::Command;

use expflow_engine::{Context, OpError};
use serde_json::{Map, Value, json};

use super::{
    Stage, base_model, best_or, import_adapter, metric_rows, read_json_lines, run_tool, string_map,
};
use crate::error::{OperatorError, Result};
use crate::params::Params;

const INSTALL: &str =
    "install LLaMA-Factory (`pip install llamafactory`) or set `tool` to llamafactory-cli's path";

/// Rows in the form the dataset registry entry describes: ms-swift rows become sharegpt
/// `messages` (preference rows: `chosen` / `rejected` assistant messages), alpaca rows stay.
pub fn dataset_rows(rows: &[Value], stage: Stage) -> Result<(Vec<Value>, bool)> {
    let swift = rows.first().is_some_and(|r| r.get("messages").is_some());
    if !swift {
        return Ok((rows.to_vec(), false));
    }
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let mut msgs = r["messages"].as_array().cloned().unwrap_or_default();
        let mut row = Map::new();
        if stage == Stage::Dpo {
            let chosen = msgs
                .pop()
                .filter(|m| m["role"] == "assistant")
                .ok_or_else(|| {
                    OperatorError::data(
                        "train.dpo",
                        format!(
                            "row {}: the last message must be the chosen assistant answer",
                            i + 1
                        ),
                    )
                })?;
            let rejected = r["rejected_response"].as_str().ok_or_else(|| {
                OperatorError::data(
                    "train.dpo",
                    format!("row {}: no `rejected_response`", i + 1),
                )
            })?;
            row.insert("messages".into(), Value::Array(msgs));
            row.insert("chosen".into(), chosen);
            row.insert(
                "rejected".into(),
                json!({"role": "assistant", "content": rejected}),
            );
        } else {
            row.insert("messages".into(), Value::Array(msgs));
        }
        for media in ["images", "videos"] {
            if let Some(v) = r.get(media) {
                row.insert(media.into(), v.clone());
            }
        }
        out.push(Value::Object(row));
    }
    Ok((out, true))
}

/// The `dataset_info.json` entry for a dataset file.
pub fn dataset_entry(file: &str, rows: &[Value], sharegpt: bool, stage: Stage) -> Value {
    let has = |k: &str| rows.iter().any(|r| r.get(k).is_some_and(|v| !v.is_null()));
    let mut columns = Map::new();
    let mut entry = Map::new();
    entry.insert("file_name".into(), json!(file));
    if sharegpt {
        entry.insert("formatting".into(), json!("sharegpt"));
        columns.insert("messages".into(), json!("messages"));
    } else {
        for (k, v) in [
            ("prompt", "instruction"),
            ("query", "input"),
            ("system", "system"),
            ("history", "history"),
        ] {
            if has(v) {
                columns.insert(k.into(), json!(v));
            }
        }
        if stage == Stage::Sft {
            columns.insert("response".into(), json!("output"));
        }
    }
    if stage == Stage::Dpo {
        entry.insert("ranking".into(), json!(true));
        columns.insert("chosen".into(), json!("chosen"));
        columns.insert("rejected".into(), json!("rejected"));
    }
    for media in ["images", "videos"] {
        if has(media) {
            columns.insert(media.into(), json!(media));
        }
    }
    entry.insert("columns".into(), Value::Object(columns));
    if sharegpt {
        entry.insert(
            "tags".into(),
            json!({"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"}),
        );
    }
    Value::Object(entry)
}

fn yaml_value(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./,".contains(c))
                && !matches!(s.as_str(), "true" | "false" | "null" | "yes" | "no")
                && s.parse::<f64>().is_err();
            if plain {
                s.clone()
            } else {
                Value::String(s.clone()).to_string()
            }
        }
        other => other.to_string(),
    }
}

/// A number for YAML: integers as they are, floats in plain or exponent notation that
/// YAML 1.1 (PyYAML) reads as floats.
fn yaml_float(f: f64) -> String {
    let s = format!("{f}");
    if s.contains('.') || s.contains('e') {
        if s.contains('e') && !s.contains('.') {
            return s.replacen('e', ".0e", 1);
        }
        return s;
    }
    format!("{s}.0")
}

/// What a training YAML points at.
pub struct Target<'a> {
    pub model: &'a str,
    pub dataset: &'a str,
    pub eval_dataset: Option<&'a str>,
    pub dataset_dir: &'a Path,
    pub output_dir: &'a Path,
}

/// The flat training YAML (LLaMA-Factory + Hugging Face Trainer keys).
pub fn training_yaml(
    op: &'static str,
    params: &Map<String, Value>,
    stage: Stage,
    t: &Target,
) -> Result<String> {
    let Target {
        model,
        dataset,
        eval_dataset,
        dataset_dir,
        output_dir,
    } = *t;
    let p = Params::new(op, params);
    let targets = p.strings("target_modules")?;
    let lora_target = if targets.iter().any(|t| t == "all-linear") {
        "all".to_string()
    } else {
        targets.join(",")
    };
    let mut keys: Vec<(String, String)> = Vec::new();
    // Later values of a key replace earlier ones in place (PyYAML would keep the last).
    let mut put = |k: &str, v: String| match keys.iter_mut().find(|(key, _)| key == k) {
        Some(slot) => slot.1 = v,
        None => keys.push((k.to_string(), v)),
    };
    put("model_name_or_path", yaml_value(&json!(model)));
    put("trust_remote_code", "true".into());
    put(
        "stage",
        if stage == Stage::Sft { "sft" } else { "dpo" }.into(),
    );
    put("do_train", "true".into());
    put("finetuning_type", "lora".into());
    put("lora_rank", p.u64("lora_rank")?.to_string());
    put("lora_alpha", yaml_float(p.f64("lora_alpha")?));
    put("lora_dropout", yaml_float(p.f64("lora_dropout")?));
    put("lora_target", yaml_value(&json!(lora_target)));
    put("freeze_vision_tower", p.bool("freeze_vit")?.to_string());
    if stage == Stage::Dpo {
        put("pref_beta", yaml_float(p.f64("beta")?));
        put("pref_loss", yaml_value(&json!(p.str("loss")?)));
        put("dpo_label_smoothing", yaml_float(p.f64("label_smoothing")?));
    }
    put("dataset", yaml_value(&json!(dataset)));
    put(
        "dataset_dir",
        yaml_value(&json!(dataset_dir.display().to_string())),
    );
    put("template", yaml_value(&json!(p.str("template")?)));
    put("cutoff_len", p.u64("max_len")?.to_string());
    put("overwrite_cache", "true".into());
    put(
        "output_dir",
        yaml_value(&json!(output_dir.display().to_string())),
    );
    put("logging_steps", p.u64("logging_steps")?.to_string());
    let save = p.u64("checkpoint_steps")?;
    if save > 0 {
        put("save_strategy", "steps".into());
        put("save_steps", save.to_string());
    } else {
        // Quoted: YAML 1.1 (PyYAML) reads a bare `no` as false.
        put("save_strategy", yaml_value(&json!("no")));
    }
    put("plot_loss", "false".into());
    put("overwrite_output_dir", "false".into());
    put("report_to", "none".into());
    put(
        "per_device_train_batch_size",
        p.u64("batch_size")?.to_string(),
    );
    put(
        "gradient_accumulation_steps",
        p.u64("grad_accum")?.to_string(),
    );
    put("learning_rate", yaml_float(p.f64("learning_rate")?));
    let max_steps = p.u64("max_steps")?;
    if max_steps > 0 {
        put("max_steps", max_steps.to_string());
    } else {
        put("num_train_epochs", yaml_float(p.u64("epochs")? as f64));
    }
    put("lr_scheduler_type", yaml_value(&json!(p.str("scheduler")?)));
    put("warmup_ratio", yaml_float(p.f64("warmup_ratio")?));
    put("max_grad_norm", yaml_float(p.f64("max_grad_norm")?));
    put("weight_decay", yaml_float(p.f64("weight_decay")?));
    put("bf16", p.bool("bf16")?.to_string());
    put("seed", p.u64("seed")?.to_string());
    put("ddp_timeout", "180000000".into());
    let ds = p.str("deepspeed")?;
    if !ds.is_empty() {
        put("deepspeed", yaml_value(&json!(ds)));
    }
    let eval_steps = p.u64("eval_steps")?;
    if let Some(dev) = eval_dataset {
        put("eval_dataset", yaml_value(&json!(dev)));
        put("per_device_eval_batch_size", "1".into());
        if eval_steps > 0 {
            put("eval_strategy", "steps".into());
            put("eval_steps", eval_steps.to_string());
            // Best-checkpoint selection needs saves aligned with evaluations.
            put("save_strategy", "steps".into());
            put("save_steps", eval_steps.to_string());
            // With `eval_metric`, expflow scores every checkpoint on the dev set and picks
            // the best itself.
            if expflow_metric(params).is_none() {
                put("load_best_model_at_end", "true".into());
                let best = p.str("best_metric")?;
                put(
                    "metric_for_best_model",
                    yaml_value(&json!(if best.is_empty() { "eval_loss" } else { best })),
                );
                put(
                    "greater_is_better",
                    p.bool("greater_is_better")?.to_string(),
                );
            }
        }
    }
    for (k, v) in string_map(op, params, "extra")? {
        put(
            &k,
            yaml_value(&serde_json::from_str(&v).unwrap_or(Value::String(v.clone()))),
        );
    }
    Ok(keys
        .into_iter()
        .map(|(k, v)| format!("{k}: {v}\n"))
        .collect())
}

/// The task metric expflow computes on the dev set for each saved checkpoint
/// (`eval_metric` of `train.sft`), if any.
pub fn expflow_metric(params: &Map<String, Value>) -> Option<&str> {
    params
        .get("eval_metric")
        .and_then(Value::as_str)
        .filter(|m| *m != "none")
}

/// The export (merge) YAML.
pub fn export_yaml(model: &str, adapter: &Path, template: &str, export_dir: &Path) -> String {
    [
        ("model_name_or_path", yaml_value(&json!(model))),
        (
            "adapter_name_or_path",
            yaml_value(&json!(adapter.display().to_string())),
        ),
        ("template", yaml_value(&json!(template))),
        ("finetuning_type", "lora".to_string()),
        ("trust_remote_code", "true".to_string()),
        (
            "export_dir",
            yaml_value(&json!(export_dir.display().to_string())),
        ),
        ("export_size", "5".to_string()),
        ("export_device", "cpu".to_string()),
        ("export_legacy_format", "false".to_string()),
    ]
    .iter()
    .map(|(k, v)| format!("{k}: {v}\n"))
    .collect()
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| OperatorError::io("cannot write", path, e))
}

fn tool(ctx: &Context) -> String {
    match ctx.params().get("tool").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => "llamafactory-cli".to_string(),
    }
}

/// Runs one training stage with LLaMA-Factory (see the module doc).
pub fn train(ctx: &Context, stage: Stage, evaluate: super::Evaluate) -> Result<(), OpError> {
    let op = if stage == Stage::Sft {
        "train.sft"
    } else {
        "train.dpo"
    };
    let work = super::work_dir(ctx, "llamafactory")?;
    let model = base_model(ctx, op)?;
    let output_dir = work.join("output");
    let (dataset_dir, dataset, eval) = match ctx.inputs().get("dataset") {
        Some(d) => {
            let dev = ctx
                .params()
                .get("eval_dataset_name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(str::to_string);
            (d.path.clone(), super::dataset_name(op, ctx.params())?, dev)
        }
        None => {
            let dir = work.join("data");
            std::fs::create_dir_all(&dir)
                .map_err(|e| OperatorError::io("cannot create", &dir, e))?;
            let mut info = Map::new();
            // Relative media paths of `data`/`dev` are resolved against the `media` input.
            let media = ctx.inputs().get("media").map(|m| m.path.clone());
            let resolved = |port: &str| -> Result<Vec<Value>, OpError> {
                Ok(super::swift::resolve_media(
                    op,
                    super::rows(ctx, op, port)?,
                    media.as_deref(),
                )?)
            };
            let (rows, sharegpt) = dataset_rows(&resolved("data")?, stage)?;
            write(
                &dir.join("expflow_train.json"),
                &serde_json::to_string_pretty(&rows)?,
            )?;
            info.insert(
                "expflow_train".into(),
                dataset_entry("expflow_train.json", &rows, sharegpt, stage),
            );
            let eval = if ctx.inputs().contains_key("dev") {
                let (dev, sg) = dataset_rows(&resolved("dev")?, stage)?;
                write(
                    &dir.join("expflow_dev.json"),
                    &serde_json::to_string_pretty(&dev)?,
                )?;
                info.insert(
                    "expflow_dev".into(),
                    dataset_entry("expflow_dev.json", &dev, sg, stage),
                );
                Some("expflow_dev".to_string())
            } else {
                None
            };
            write(
                &dir.join("dataset_info.json"),
                &serde_json::to_string_pretty(&Value::Object(info))?,
            )?;
            (dir, "expflow_train".to_string(), eval)
        }
    };
    let target = Target {
        model: &model,
        dataset: &dataset,
        eval_dataset: eval.as_deref(),
        dataset_dir: &dataset_dir,
        output_dir: &output_dir,
    };
    let yaml = training_yaml(op, ctx.params(), stage, &target)?;
    let cfg = work.join("train.yaml");
    write(&cfg, &yaml)?;
    let mut cmd = Command::new(tool(ctx));
    cmd.arg("train").arg(&cfg).current_dir(&work);
    for (k, v) in string_map(op, ctx.params(), "env")? {
        cmd.env(k, v);
    }
    run_tool(
        ctx,
        &mut cmd,
        &output_dir.join("trainer_log.jsonl"),
        INSTALL,
    )?;
    let state: Value = std::fs::read(output_dir.join("trainer_state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let mut entries = read_json_lines(&output_dir.join("trainer_log.jsonl"));
    if entries.is_empty() {
        entries = state["log_history"].as_array().cloned().unwrap_or_default();
    }
    let mut rows = metric_rows(&entries);
    let adapter = match expflow_metric(ctx.params()).filter(|_| eval.is_some()) {
        Some(metric) => {
            let max_tokens = ctx
                .params()
                .get("eval_max_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(64) as usize;
            let scored = evaluate(ctx, op, &output_dir, &state, metric, max_tokens)?;
            let scores: Vec<(usize, f64)> = scored.iter().map(|(s, _, v)| (*s, *v)).collect();
            super::checkpoints::merge_scores(&mut rows, metric, &scores);
            let (step, value) = super::checkpoints::best(&scores).unwrap_or_default();
            ctx.log(&format!(
                "best checkpoint by dev {metric}: step {step} ({value:.4})"
            ));
            scored
                .into_iter()
                .find(|(s, _, _)| *s == step)
                .map(|(_, d, _)| d)
                .unwrap_or_else(|| output_dir.clone())
        }
        None => best_or(&state, &output_dir),
    };
    crate::train_io::write_metrics(ctx, op, &rows)?;
    ctx.log(&format!("adapter from {}", adapter.display()));
    let out = &ctx.output("model")?.path;
    if ctx
        .params()
        .get("merge")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let template = ctx
            .params()
            .get("template")
            .and_then(Value::as_str)
            .unwrap_or("qwen2_vl");
        let ecfg = work.join("export.yaml");
        write(&ecfg, &export_yaml(&model, &adapter, template, out))?;
        let mut cmd = Command::new(tool(ctx));
        cmd.arg("export").arg(&ecfg).current_dir(&work);
        run_tool(ctx, &mut cmd, &work.join("none"), INSTALL)?;
        import_adapter(&adapter, &out.join("adapter"))?;
    } else {
        import_adapter(&adapter, out)?;
    }
    super::unplace_paths(ctx, out, &work)
}
