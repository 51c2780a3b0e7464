//! `backend: swift` (spec expstar-pipeline §E): `swift sft` and `swift rlhf --rlhf_type dpo`
//! with ExpStar's arguments as defaults (LoRA on all linears, frozen vision tower,
//! `split_dataset_ratio 0` without a dev set, `save_only_model`), the data as ms-swift JSONL,
//! `NPROC_PER_NODE` and the `env` map (ExpStar sets `VIDEO_MAX_PIXELS`, `FPS`,
//! `FPS_MAX_FRAMES`). ms-swift writes into `output_dir/v<N>-<time>/`: its `logging.jsonl`
//! becomes the metrics table and the best (or last) `checkpoint-<step>/` the adapter.

use std::path::{Path, PathBuf};
use std::process::Command;

use expflow_engine::{Context, OpError};
use serde_json::{Map, Value};

use super::{
    Stage, base_model, best_or, import_adapter, metric_rows, read_json_lines, run_tool, string_map,
};
use crate::error::{OperatorError, Result};
use crate::params::Params;

const INSTALL: &str =
    "install ms-swift (`pip install ms-swift`) or set `tool` to the swift program's path";

fn num(f: f64) -> String {
    format!("{f}")
}

/// A tool invocation: the arguments after the program name, and the environment.
#[derive(Debug, PartialEq)]
pub struct Invocation {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// The major version of the ms-swift that `program` runs: the interpreter on its `#!` line
/// asked for `swift.__version__`. `None` when that cannot be told (the 3.x flags are used).
pub fn installed_major(program: &str) -> Option<u32> {
    let path = if program.contains('/') {
        PathBuf::from(program)
    } else {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join(program))
            .find(|p| p.is_file())?
    };
    let head = std::fs::read(&path).ok()?;
    let first = String::from_utf8_lossy(&head[..head.len().min(512)])
        .lines()
        .next()?
        .to_string();
    let python = first
        .strip_prefix("#!")?
        .split_whitespace()
        .next()?
        .to_string();
    let out = Command::new(python)
        .args(["-c", "import swift; print(swift.__version__)"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The command line after the program name, and the environment. `major` is the installed
/// ms-swift's major version (4 renamed `--train_type` to `--tuner_type`).
#[allow(clippy::too_many_arguments)]
pub fn command_line(
    op: &'static str,
    params: &Map<String, Value>,
    stage: Stage,
    model: &str,
    data: &Path,
    dev: Option<&Path>,
    output_dir: &Path,
    major: u32,
) -> Result<Invocation> {
    let p = Params::new(op, params);
    let mut a: Vec<String> = Vec::new();
    let mut flag = |k: &str, v: String| {
        a.push(format!("--{k}"));
        a.push(v);
    };
    flag("model", model.to_string());
    let tuner = if major >= 4 {
        "tuner_type"
    } else {
        "train_type"
    };
    flag(tuner, "lora".into());
    flag("dataset", data.display().to_string());
    match dev {
        Some(d) => flag("val_dataset", d.display().to_string()),
        None => flag("split_dataset_ratio", "0".into()),
    }
    flag("lora_rank", p.u64("lora_rank")?.to_string());
    flag("lora_alpha", num(p.f64("lora_alpha")?));
    flag("lora_dropout", num(p.f64("lora_dropout")?));
    flag("target_modules", p.strings("target_modules")?.join(" "));
    flag("freeze_vit", p.bool("freeze_vit")?.to_string());
    flag("learning_rate", num(p.f64("learning_rate")?));
    let max_steps = p.u64("max_steps")?;
    if max_steps > 0 {
        flag("max_steps", max_steps.to_string());
    } else {
        flag("num_train_epochs", p.u64("epochs")?.to_string());
    }
    flag(
        "per_device_train_batch_size",
        p.u64("batch_size")?.to_string(),
    );
    flag(
        "gradient_accumulation_steps",
        p.u64("grad_accum")?.to_string(),
    );
    flag("warmup_ratio", num(p.f64("warmup_ratio")?));
    flag("lr_scheduler_type", p.str("scheduler")?.to_string());
    flag("max_grad_norm", num(p.f64("max_grad_norm")?));
    flag("weight_decay", num(p.f64("weight_decay")?));
    flag("max_length", p.u64("max_len")?.to_string());
    flag("logging_steps", p.u64("logging_steps")?.to_string());
    let eval = p.u64("eval_steps")?;
    if dev.is_some() && eval > 0 {
        flag("eval_steps", eval.to_string());
        flag("save_steps", eval.to_string());
        let best = p.str("best_metric")?;
        flag(
            "metric_for_best_model",
            if best.is_empty() {
                "loss".into()
            } else {
                best.trim_start_matches("eval_").to_string()
            },
        );
        flag(
            "greater_is_better",
            p.bool("greater_is_better")?.to_string(),
        );
    } else {
        let save = p.u64("checkpoint_steps")?;
        if save > 0 {
            flag("save_steps", save.to_string());
        }
    }
    flag("save_only_model", "true".into());
    flag(
        "torch_dtype",
        if p.bool("bf16")? {
            "bfloat16"
        } else {
            "float32"
        }
        .into(),
    );
    flag("seed", p.u64("seed")?.to_string());
    flag("output_dir", output_dir.display().to_string());
    let ds = p.str("deepspeed")?;
    if !ds.is_empty() {
        flag("deepspeed", ds.to_string());
    }
    if stage == Stage::Dpo {
        flag("beta", num(p.f64("beta")?));
        flag("loss_type", p.str("loss")?.to_string());
        flag("label_smoothing", num(p.f64("label_smoothing")?));
    }
    for (k, v) in string_map(op, params, "extra")? {
        flag(&k, v);
    }
    let mut args = match stage {
        Stage::Sft => vec!["sft".to_string()],
        Stage::Dpo => vec!["rlhf".into(), "--rlhf_type".into(), "dpo".into()],
    };
    args.extend(a);
    let mut env = vec![(
        "NPROC_PER_NODE".to_string(),
        p.u64("nproc_per_node")?.to_string(),
    )];
    env.extend(string_map(op, params, "env")?);
    Ok(Invocation { args, env })
}

/// ms-swift rows: as given, or alpaca rows turned into `messages` (and preference rows into
/// `messages` + `rejected_response`).
pub fn swift_rows(rows: &[Value], stage: Stage) -> Result<Vec<Value>> {
    let bad_row = |i: usize, e: expflow_train::TrainError| {
        OperatorError::data("train", format!("row {}: {e}", i + 1))
    };
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            if r.get("messages").is_some() {
                return Ok(r.clone());
            }
            let msgs = |m: &[expflow_models::ChatMessage]| -> Vec<Value> {
                m.iter()
                    .map(|m| serde_json::json!({"role": m.role, "content": m.joined_text()}))
                    .collect()
            };
            let mut out = Map::new();
            match stage {
                Stage::Sft => {
                    let c = expflow_train::data::sft_conversations(std::slice::from_ref(r))
                        .map_err(|e| bad_row(i, e))?;
                    out.insert("messages".into(), Value::Array(msgs(&c[0])));
                }
                Stage::Dpo => {
                    let p = expflow_train::data::pairs(std::slice::from_ref(r))
                        .map_err(|e| bad_row(i, e))?;
                    let mut m = msgs(&p[0].prompt);
                    m.push(serde_json::json!({"role": "assistant", "content": p[0].chosen}));
                    out.insert("messages".into(), Value::Array(m));
                    out.insert(
                        "rejected_response".into(),
                        Value::String(p[0].rejected.clone()),
                    );
                }
            }
            if let Some(v) = r.get("images") {
                out.insert("images".into(), v.clone());
            }
            Ok(Value::Object(out))
        })
        .collect()
}

/// Rows with their relative `images`/`videos` paths resolved against `media` (the node's
/// copy of its `media` input, materialised for this run), so ms-swift finds them whatever
/// directory it runs in; a file that is not there is an error naming the row.
pub fn resolve_media(
    op: &'static str,
    rows: Vec<Value>,
    media: Option<&Path>,
) -> Result<Vec<Value>> {
    let Some(media) = media else {
        return Ok(rows);
    };
    rows.into_iter()
        .enumerate()
        .map(|(i, mut row)| {
            for key in ["images", "videos"] {
                let Some(list) = row.get_mut(key).and_then(Value::as_array_mut) else {
                    continue;
                };
                for v in list.iter_mut() {
                    let Some(p) = v.as_str() else { continue };
                    if Path::new(p).is_absolute() || p.contains("://") {
                        continue;
                    }
                    let full = media.join(p);
                    if !full.is_file() {
                        return Err(OperatorError::data(
                            op,
                            format!(
                                "row {}: {key} file `{p}` is not in the `media` input; connect \
                                 `media` to the directory the paths are relative to (the export's \
                                 `media` output)",
                                i + 1
                            ),
                        ));
                    }
                    *v = Value::String(full.display().to_string());
                }
            }
            Ok(row)
        })
        .collect()
}

/// ms-swift's newest run directory under `output_dir` (`v<N>-<time>`).
pub fn run_dir(output_dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(output_dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name
                .strip_prefix('v')?
                .split('-')
                .next()?
                .parse::<u64>()
                .ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

/// The highest `checkpoint-<step>` directory in `dir`.
pub fn last_checkpoint(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let s = e
                .file_name()
                .into_string()
                .ok()?
                .strip_prefix("checkpoint-")?
                .parse::<u64>()
                .ok()?;
            Some((s, e.path()))
        })
        .max_by_key(|(s, _)| *s)
        .map(|(_, p)| p)
}

fn write_jsonl(path: &Path, rows: &[Value]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| OperatorError::io("cannot write", path, e))
}

/// Runs one training stage with ms-swift (see the module doc).
pub fn train(ctx: &Context, stage: Stage) -> Result<(), OpError> {
    let op = if stage == Stage::Sft {
        "train.sft"
    } else {
        "train.dpo"
    };
    let work = super::work_dir(ctx, "swift")?;
    let model = base_model(ctx, op)?;
    let data = work.join("train.jsonl");
    let media = ctx.inputs().get("media").map(|m| m.path.clone());
    let rows = |port: &str| -> Result<Vec<Value>, OpError> {
        let rows = swift_rows(&super::rows(ctx, op, port)?, stage)?;
        Ok(resolve_media(op, rows, media.as_deref())?)
    };
    write_jsonl(&data, &rows("data")?)?;
    let dev = if ctx.inputs().contains_key("dev") {
        let d = work.join("dev.jsonl");
        write_jsonl(&d, &rows("dev")?)?;
        Some(d)
    } else {
        None
    };
    let output_dir = work.join("output");
    let program = match ctx.params().get("tool").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => "swift".to_string(),
    };
    let major = installed_major(&program).unwrap_or(3);
    ctx.log(&format!("ms-swift {major}.x flags"));
    let Invocation { args, env } = command_line(
        op,
        ctx.params(),
        stage,
        &model,
        &data,
        dev.as_deref(),
        &output_dir,
        major,
    )?;
    let mut cmd = Command::new(program);
    cmd.args(&args).current_dir(&work);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // The run directory appears once ms-swift starts; progress is read from the newest one.
    let log = run_dir(&output_dir)
        .unwrap_or_else(|| output_dir.join("v0"))
        .join("logging.jsonl");
    run_tool(ctx, &mut cmd, &log, INSTALL)?;
    let run = run_dir(&output_dir).ok_or_else(|| {
        OpError::from(format!(
            "{}: ms-swift wrote no v<N>-<time> run directory",
            output_dir.display()
        ))
    })?;
    let last = last_checkpoint(&run).ok_or_else(|| {
        OpError::from(format!(
            "{}: no checkpoint-<step> directory with the adapter",
            run.display()
        ))
    })?;
    let state: Value = std::fs::read(last.join("trainer_state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let entries = read_json_lines(&run.join("logging.jsonl"));
    crate::train_io::write_metrics(ctx, op, &metric_rows(&entries))?;
    let adapter = best_or(&state, &last);
    ctx.log(&format!("adapter from {}", adapter.display()));
    let out = &ctx.output("model")?.path;
    if ctx
        .params()
        .get("merge")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let mut cmd = Command::new(cmd.get_program());
        cmd.args(["export", "--adapters"])
            .arg(&adapter)
            .args(["--merge_lora", "true", "--output_dir"])
            .arg(out.join("merged"))
            .current_dir(&work);
        run_tool(ctx, &mut cmd, &work.join("none"), INSTALL)?;
        // ms-swift refuses an existing output directory: it wrote into `merged/`.
        for e in std::fs::read_dir(out.join("merged"))
            .map_err(|e| OperatorError::io("cannot read", &out.join("merged"), e))?
            .flatten()
        {
            std::fs::rename(e.path(), out.join(e.file_name()))
                .map_err(|er| OperatorError::io("cannot move", &e.path(), er))?;
        }
        std::fs::remove_dir(out.join("merged"))
            .map_err(|e| OperatorError::io("cannot remove", &out.join("merged"), e))?;
        import_adapter(&adapter, &out.join("adapter"))?;
    } else {
        import_adapter(&adapter, out)?;
    }
    super::unplace_paths(ctx, out, &work)
}
