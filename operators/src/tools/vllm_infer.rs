//! `infer.vllm_infer`: LLaMA-Factory's `scripts/vllm_infer.py` (spec macbench-llamafactory
//! §2.7) over a registered dataset, its `{prompt, predict, label}` lines joined back to the
//! ids of the rows the dataset was written from, by row index. The script writes one line per
//! row in dataset order and no id, drops rows silently in some cases, so a line count that
//! differs from the row count fails the node, naming both.

use std::path::Path;
use std::process::Command;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::{read_json_lines, run_tool};
use crate::error::{OperatorError, Result};
use crate::infer::rows::text_column;
use crate::params::Params;
use crate::table_io::{read_table, write_table};

pub struct VllmInfer;

const KIND: &str = "infer.vllm_infer";

/// The script's arguments (after the script path).
pub fn command_line(
    params: &Map<String, Value>,
    model: &str,
    adapter: Option<&Path>,
    dataset_dir: &Path,
    save_name: &Path,
) -> Result<Vec<String>> {
    let p = Params::new(KIND, params);
    let mut a = Vec::new();
    let mut flag = |k: &str, v: String| {
        a.push(format!("--{k}"));
        a.push(v);
    };
    flag("model_name_or_path", model.to_string());
    if let Some(ad) = adapter {
        flag("adapter_name_or_path", ad.display().to_string());
    }
    flag("dataset", p.str("dataset_name")?.to_string());
    flag("dataset_dir", dataset_dir.display().to_string());
    flag("template", p.str("template")?.to_string());
    flag("cutoff_len", p.u64("cutoff_len")?.to_string());
    flag("max_new_tokens", p.u64("max_new_tokens")?.to_string());
    flag("temperature", format!("{}", p.f64("temperature")?));
    flag("top_p", format!("{}", p.f64("top_p")?));
    flag("top_k", p.u64("top_k")?.to_string());
    flag("seed", p.u64("seed")?.to_string());
    flag("image_max_pixels", p.u64("image_max_pixels")?.to_string());
    flag("batch_size", p.u64("batch_size")?.to_string());
    flag("save_name", save_name.display().to_string());
    let cfg = params.get("vllm_config").cloned().unwrap_or(json!({}));
    flag("vllm_config", cfg.to_string());
    Ok(a)
}

/// Joins the script's lines to `ids` by index.
pub fn join(ids: &[String], lines: &[Value]) -> Result<DataFrame> {
    if ids.len() != lines.len() {
        return Err(OperatorError::data(
            KIND,
            format!(
                "vllm_infer.py wrote {} lines for {} rows; it drops rows whose prompt has an even number of turns and cannot be joined by index then: check its log for warnings",
                lines.len(),
                ids.len()
            ),
        ));
    }
    let col = |k: &str| -> Vec<String> {
        lines
            .iter()
            .map(|l| l[k].as_str().unwrap_or("").to_string())
            .collect()
    };
    DataFrame::new(
        ids.len(),
        vec![
            Column::new("id".into(), ids.to_vec()),
            Column::new("prompt".into(), col("prompt")),
            Column::new("predict".into(), col("predict")),
            Column::new("label".into(), col("label")),
        ],
    )
    .map_err(|e| OperatorError::polars(KIND, "building the predictions table", e))
}

impl Operator for VllmInfer {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        let p = ParamSpec::with_default;
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new(
                    "table",
                    PortType::Table,
                    "the rows in the order the dataset file was written from (their ids)",
                ),
                Port::new(
                    "dataset",
                    PortType::Dir,
                    "the LLaMA-Factory dataset directory (dataset_info.json)",
                ),
                Port::new(
                    "model",
                    PortType::Model,
                    "the base model (else `model_name_or_path`)",
                )
                .optional(),
                Port::new("adapter", PortType::Model, "a LoRA adapter (PEFT layout)").optional(),
            ]),
            outputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "id, prompt, predict, label",
            )]),
            params: vec![
                ParamSpec::required(
                    "script",
                    ParamKind::String,
                    "path of LLaMA-Factory's scripts/vllm_infer.py",
                ),
                ParamSpec::required(
                    "dataset_name",
                    ParamKind::String,
                    "the dataset's name in dataset_info.json",
                ),
                p(
                    "python",
                    ParamKind::String,
                    json!("python3"),
                    "the Python with LLaMA-Factory and vLLM installed",
                ),
                p(
                    "model_name_or_path",
                    ParamKind::String,
                    json!(""),
                    "the base model when no `model` input is connected",
                ),
                p(
                    "id_column",
                    ParamKind::String,
                    json!("id"),
                    "the id column of `table`",
                ),
                p(
                    "template",
                    ParamKind::String,
                    json!("qwen2_vl"),
                    "LLaMA-Factory chat template",
                ),
                p(
                    "cutoff_len",
                    ParamKind::Int,
                    json!(4096),
                    "prompt tokens (4 images need more than the script's 2048)",
                ),
                p(
                    "max_new_tokens",
                    ParamKind::Int,
                    json!(1024),
                    "tokens per answer",
                ),
                p(
                    "temperature",
                    ParamKind::Float,
                    json!(0.0),
                    "always passed (the script samples at 0.95 by default); 0 is greedy",
                ),
                p("top_p", ParamKind::Float, json!(0.7), "nucleus sampling"),
                p("top_k", ParamKind::Int, json!(50), "top-k sampling"),
                p("seed", ParamKind::Int, json!(42), "sampling seed"),
                p(
                    "image_max_pixels",
                    ParamKind::Int,
                    json!(262144),
                    "as in training (the script does not read the training YAML)",
                ),
                p(
                    "batch_size",
                    ParamKind::Int,
                    json!(1024),
                    "rows per llm.generate call",
                ),
                p(
                    "vllm_config",
                    ParamKind::Map,
                    json!({}),
                    "JSON merged into vLLM's LLM(...) arguments",
                ),
            ],
            determinism: Determinism::Nondeterministic,
            resources: Resources::default(),
        }
    }

    fn determinism(&self, params: &Map<String, Value>) -> Determinism {
        if params.get("temperature").and_then(Value::as_f64) == Some(0.0) {
            Determinism::Seeded
        } else {
            Determinism::Nondeterministic
        }
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let p = Params::new(KIND, ctx.params());
        let df = read_table(&ctx.input("table")?.path)?;
        let id_col = p.str("id_column")?;
        let ids: Vec<String> = text_column(KIND, &df, id_col)?
            .ok_or_else(|| {
                OperatorError::data(
                    KIND,
                    format!("input `table` has no column `{id_col}` (set `id_column`)"),
                )
            })?
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.unwrap_or_else(|| format!("row_{i}")))
            .collect();
        let model = super::base_model(ctx, KIND)?;
        let adapter = ctx.inputs().get("adapter").map(|a| a.path.clone());
        let save = ctx.scratch().join("generated_predictions.jsonl");
        let args = command_line(
            ctx.params(),
            &model,
            adapter.as_deref(),
            &ctx.input("dataset")?.path,
            &save,
        )?;
        let mut cmd = Command::new(p.str("python")?);
        cmd.arg(p.str("script")?)
            .args(&args)
            .current_dir(ctx.scratch());
        run_tool(
            ctx,
            &mut cmd,
            &ctx.scratch().join("none"),
            "install LLaMA-Factory and vLLM for `python`, and point `script` at scripts/vllm_infer.py",
        )?;
        let lines = read_json_lines(&save);
        let mut out = join(&ids, &lines)?;
        write_table(&mut out, &ctx.output("table")?.path)?;
        Ok(())
    }
}
