//! Golden tests of every generated file and command line, log parsing, and the process
//! handling of the tool runner. The runner test uses a stand-in program written by the test
//! that behaves like `llamafactory-cli train` (writes the log, state and checkpoints); it
//! tests expflow's side only. Real runs: `tools_real` tests, skipped when a tool is missing.

use std::path::Path;

use expflow_engine::{Operator, PortType};
use serde_json::{Map, Value, json};

use super::*;
use crate::testing::table_from_bytes;

fn sft_params(extra: Value) -> Map<String, Value> {
    let sig = crate::registry().get("train.sft").unwrap().signature();
    let mut given = extra.as_object().cloned().unwrap_or_default();
    given.entry("backend").or_insert(json!("llamafactory"));
    let (filled, problems) = expflow_engine::params::fill_defaults(&sig, &given);
    assert!(problems.is_empty(), "{problems:?}");
    filled
}

fn dpo_params(extra: Value) -> Map<String, Value> {
    let sig = crate::registry().get("train.dpo").unwrap().signature();
    let given = extra.as_object().cloned().unwrap_or_default();
    let (filled, problems) = expflow_engine::params::fill_defaults(&sig, &given);
    assert!(problems.is_empty(), "{problems:?}");
    filled
}

fn swift_rows_sample() -> Vec<Value> {
    vec![json!({
        "messages": [
            {"role": "system", "content": "You narrate."},
            {"role": "user", "content": "<video>Narrate the step."},
            {"role": "assistant", "content": "<Narration>\nPour slowly"}
        ],
        "videos": ["/data/expstar/chemistry/ch_1/step_1.mp4"],
        "rejected_response": "<Narration>\nPour"
    })]
}

#[test]
fn llamafactory_training_yaml_sft_and_dpo() {
    let p = sft_params(
        json!({"eval_steps": 50, "extra": {"image_max_pixels": 262144}, "lora_rank": 16, "lora_alpha": 32.0}),
    );
    let target = llamafactory::Target {
        model: "Qwen/Qwen2.5-VL-7B-Instruct",
        dataset: "expflow_train",
        eval_dataset: Some("expflow_dev"),
        dataset_dir: Path::new("/work/data"),
        output_dir: Path::new("/work/output"),
    };
    let yaml = llamafactory::training_yaml("train.sft", &p, Stage::Sft, &target).unwrap();
    insta::assert_snapshot!("llamafactory_sft_yaml", yaml);
    let p = dpo_params(
        json!({"backend": "llamafactory", "target_modules": ["q_proj", "v_proj"], "loss": "ipo"}),
    );
    let target = llamafactory::Target {
        model: "/models/sft",
        eval_dataset: None,
        ..target
    };
    let yaml = llamafactory::training_yaml("train.dpo", &p, Stage::Dpo, &target).unwrap();
    insta::assert_snapshot!("llamafactory_dpo_yaml", yaml);
}

#[test]
fn llamafactory_dataset_rows_and_registry_entries() {
    let (rows, sharegpt) = llamafactory::dataset_rows(&swift_rows_sample(), Stage::Dpo).unwrap();
    assert!(sharegpt);
    let entry = llamafactory::dataset_entry("expflow_train.json", &rows, sharegpt, Stage::Dpo);
    insta::assert_json_snapshot!("llamafactory_dpo_rows", rows);
    insta::assert_json_snapshot!("llamafactory_dpo_entry", entry);
    let alpaca = vec![
        json!({"system": "Answer with one letter.", "instruction": "<image>Which?", "output": "C", "images": ["covers/a.png"]}),
    ];
    let (rows, sharegpt) = llamafactory::dataset_rows(&alpaca, Stage::Sft).unwrap();
    assert!(!sharegpt);
    insta::assert_json_snapshot!(
        "llamafactory_alpaca_entry",
        llamafactory::dataset_entry("mac.json", &rows, false, Stage::Sft)
    );
    insta::assert_snapshot!(
        "llamafactory_export_yaml",
        llamafactory::export_yaml(
            "/models/base",
            Path::new("/work/output/checkpoint-40"),
            "qwen2_vl",
            Path::new("/out/model")
        )
    );
}

#[test]
fn swift_command_lines_sft_and_dpo() {
    let p = sft_params(
        json!({"backend": "swift", "nproc_per_node": 4, "env": {"VIDEO_MAX_PIXELS": 196608, "FPS": "1.0", "FPS_MAX_FRAMES": 64}, "epochs": 3, "deepspeed": "zero2"}),
    );
    let swift::Invocation { args, env } = swift::command_line(
        "train.sft",
        &p,
        Stage::Sft,
        "Qwen/Qwen2.5-VL-7B-Instruct",
        Path::new("/w/train.jsonl"),
        None,
        Path::new("/w/output"),
        3,
    )
    .unwrap();
    insta::assert_snapshot!(
        "swift_sft_command",
        format!("{env:?}\nswift {}", args.join(" "))
    );
    // ms-swift 4 names the flag --tuner_type; nothing else differs.
    let v4 = swift::command_line(
        "train.sft",
        &p,
        Stage::Sft,
        "Qwen/Qwen2.5-VL-7B-Instruct",
        Path::new("/w/train.jsonl"),
        None,
        Path::new("/w/output"),
        4,
    )
    .unwrap();
    assert_eq!(
        v4.args.join(" "),
        args.join(" ").replace("--train_type", "--tuner_type")
    );
    let p = dpo_params(json!({"backend": "swift", "env": {"FPS_MAX_FRAMES": 32}}));
    let swift::Invocation { args, env } = swift::command_line(
        "train.dpo",
        &p,
        Stage::Dpo,
        "/models/expstar-sft",
        Path::new("/w/rl.jsonl"),
        Some(Path::new("/w/dev.jsonl")),
        Path::new("/w/output"),
        3,
    )
    .unwrap();
    insta::assert_snapshot!(
        "swift_dpo_command",
        format!("{env:?}\nswift {}", args.join(" "))
    );
    let alpaca = swift::swift_rows(
        &[json!({"instruction": "q", "chosen": "good", "rejected": "bad"})],
        Stage::Dpo,
    )
    .unwrap();
    assert_eq!(alpaca[0]["rejected_response"], "bad");
    assert_eq!(
        alpaca[0]["messages"][1],
        json!({"role": "assistant", "content": "good"})
    );
}

#[test]
fn vllm_infer_command_line_and_join() {
    let sig = VllmInfer.signature();
    let given = json!({"script": "/opt/LLaMA-Factory/scripts/vllm_infer.py", "dataset_name": "mac_test_i2t"});
    let (p, problems) = expflow_engine::params::fill_defaults(&sig, given.as_object().unwrap());
    assert!(problems.is_empty());
    let args = vllm_infer::command_line(
        &p,
        "/models/base",
        Some(Path::new("/models/adapter")),
        Path::new("/data/mac"),
        Path::new("/tmp/preds.jsonl"),
    )
    .unwrap();
    insta::assert_snapshot!("vllm_infer_command", args.join(" "));
    let lines = vec![
        json!({"prompt": "p1", "predict": "A", "label": "A"}),
        json!({"prompt": "p2", "predict": "B", "label": "C"}),
    ];
    let df = vllm_infer::join(&["i1".into(), "i2".into()], &lines).unwrap();
    assert_eq!(
        crate::testing::column_str(&df, "id"),
        [Some("i1".into()), Some("i2".into())]
    );
    let err = vllm_infer::join(&["i1".into(), "i2".into(), "i3".into()], &lines).unwrap_err();
    insta::assert_snapshot!("vllm_infer_count_mismatch", err.to_string());
}

#[test]
fn training_logs_become_metric_rows() {
    // LLaMA-Factory's trainer_log.jsonl lines (fields of spec §2.6) and ms-swift's logging.jsonl.
    let lf = vec![
        json!({"current_steps": 5, "total_steps": 20, "loss": 1.25, "lr": 9.5e-5, "epoch": 0.25, "percentage": 25.0, "elapsed_time": "0:00:10", "remaining_time": "0:00:30"}),
        json!({"current_steps": 10, "total_steps": 20, "eval_loss": 1.1, "epoch": 0.5, "percentage": 50.0, "elapsed_time": "0:00:20", "remaining_time": "0:00:20"}),
        json!({"current_steps": 20, "total_steps": 20, "loss": 0.9, "lr": 0.0, "epoch": 1.0, "reward": 0.2, "accuracy": 0.75}),
    ];
    let rows = metric_rows(&lf);
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (rows[0].step, rows[0].loss, rows[0].lr),
        (5, Some(1.25), 9.5e-5)
    );
    assert_eq!(rows[1].values["eval_loss"], 1.1);
    assert_eq!(rows[2].values["accuracy"], 0.75);
    assert!(!rows[0].values.contains_key("percentage"));
    let swift = vec![
        json!({"loss": 2.0, "grad_norm": 3.5, "learning_rate": 1e-4, "memory(GiB)": 20.1, "train_speed(iter/s)": 0.5, "epoch": 0.1, "global_step/max_steps": "5/150", "percentage": "3.33%", "elapsed_time": "1m", "remaining_time": "30m", "rewards/chosen": 0.01}),
    ];
    let rows = metric_rows(&swift);
    assert_eq!(
        (rows[0].step, rows[0].grad_norm, rows[0].lr),
        (5, Some(3.5), 1e-4)
    );
    assert_eq!(
        rows[0].values.keys().collect::<Vec<_>>(),
        ["rewards/chosen"]
    );
}

/// Writes an executable stand-in for `llamafactory-cli` that follows the file layout the
/// real tool produces (spec §2.6): log lines, trainer_state.json naming the best
/// checkpoint, and adapter files in each checkpoint.
fn stand_in(dir: &Path, exit_code: i32) -> std::path::PathBuf {
    let script = dir.join("fake-llamafactory-cli");
    let body = format!(
        r#"#!/bin/sh
set -e
[ "$1" = train ] || exit 2
out=$(sed -n 's/^output_dir: //p' "$2" | tr -d '"')
model=$(sed -n 's/^model_name_or_path: //p' "$2" | tr -d '"')
mkdir -p "$out/checkpoint-2" "$out/checkpoint-4"
echo '{{"current_steps": 2, "total_steps": 4, "loss": 2.5, "lr": 0.0001, "epoch": 0.5}}' >> "$out/trainer_log.jsonl"
echo '{{"current_steps": 2, "total_steps": 4, "eval_loss": 2.0, "epoch": 0.5}}' >> "$out/trainer_log.jsonl"
echo '{{"current_steps": 4, "total_steps": 4, "loss": 1.5, "lr": 0.00005, "epoch": 1.0}}' >> "$out/trainer_log.jsonl"
for c in 2 4; do
  printf 'weights-%s' "$c" > "$out/checkpoint-$c/adapter_model.safetensors"
  echo "{{\"peft_type\": \"LORA\", \"r\": 16, \"base_model_name_or_path\": \"$model\"}}" > "$out/checkpoint-$c/adapter_config.json"
done
printf '{{"best_model_checkpoint": "%s/checkpoint-2", "log_history": []}}' "$out" > "$out/trainer_state.json"
echo "stand-in finished"
exit {exit_code}
"#
    );
    std::fs::write(&script, body).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn run_sft(
    dir: &Path,
    tool: &Path,
) -> Result<std::collections::BTreeMap<String, std::path::PathBuf>, expflow_engine::OpError> {
    let rows = swift_rows_sample()
        .iter()
        .map(|r| r.to_string() + "\n")
        .collect::<String>();
    let data = dir.join("rows.jsonl");
    std::fs::write(&data, rows).unwrap();
    let mut h = expflow_engine::harness::Harness::new(&dir.join("work space"))?;
    let run = h.run(
        crate::registry().get("train.sft").unwrap().as_ref(),
        &[("data", PortType::File, data.as_path())],
        json!({"backend": "llamafactory", "tool": tool.display().to_string(), "model_name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct", "merge": false}),
        &[],
    )?;
    Ok(run.outputs)
}

#[test]
fn the_runner_reads_logs_and_imports_the_best_adapter_of_a_stand_in_tool() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_sft(dir.path(), &stand_in(dir.path(), 0)).unwrap();
    let metrics = table_from_bytes(&std::fs::read(&out["metrics"]).unwrap());
    assert_eq!(
        crate::testing::column_i64(&metrics, "step"),
        [Some(2), Some(2), Some(4)]
    );
    // The best checkpoint (step 2, by trainer_state.json) is the adapter, not the last.
    let weights = std::fs::read_to_string(out["model"].join("adapter_model.safetensors")).unwrap();
    assert_eq!(weights, "weights-2");
    let adapter: Value =
        serde_json::from_slice(&std::fs::read(out["model"].join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        adapter["base_model_name_or_path"], "Qwen/Qwen2.5-VL-7B-Instruct",
        "a hub name stays as it is"
    );
    let again = tempfile::tempdir().unwrap();
    let failing = run_sft(again.path(), &stand_in(dir.path(), 3))
        .unwrap_err()
        .to_string();
    assert!(
        failing.contains("failed (exit status: 3)") && failing.contains("stand-in finished"),
        "{failing}"
    );
    let other = tempfile::tempdir().unwrap();
    let missing = run_sft(other.path(), Path::new("/nonexistent/llamafactory-cli"))
        .unwrap_err()
        .to_string();
    insta::assert_snapshot!("llamafactory_missing_tool", missing);
}

#[test]
fn an_imported_adapter_names_a_connected_base_model_by_digest_not_by_its_workspace_path() {
    let dir = tempfile::tempdir().unwrap();
    let tool = stand_in(dir.path(), 0);
    let model = dir.path().join("base");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(
        model.join("config.json"),
        "{\"model_type\": \"qwen2_vl\"}\n",
    )
    .unwrap();
    let data = dir.path().join("rows.jsonl");
    let rows: String = swift_rows_sample()
        .iter()
        .map(|r| r.to_string() + "\n")
        .collect();
    std::fs::write(&data, rows).unwrap();
    let ex = expflow_engine::harness::Example {
        name: "train.sft, llamafactory stand-in".into(),
        inputs: vec![
            ("data".into(), PortType::File, data),
            ("model".into(), PortType::Model, model),
        ],
        params: json!({"backend": "llamafactory", "tool": tool.display().to_string(), "merge": false}),
        declared: vec![],
    };
    let sft = crate::registry().get("train.sft").unwrap().clone();
    let r =
        expflow_engine::harness::check_reproducible(sft.as_ref(), &ex, &dir.path().join("runs"))
            .unwrap();
    assert_eq!(r.differences, Vec::<String>::new());
    let adapter: Value = serde_json::from_slice(
        &std::fs::read(r.cold.outputs["model"].join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    let base = adapter["base_model_name_or_path"].as_str().unwrap();
    assert!(
        base.len() == 64 && base.chars().all(|c| c.is_ascii_hexdigit()),
        "the base model is named by its digest, as the native trainer names it: {base}"
    );
}

/// A stand-in for `swift sft` that fails unless every video path of its `--dataset` is an
/// absolute path to a file there, prints each video's bytes, and writes ms-swift's layout.
fn swift_stand_in(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("fake-swift");
    std::fs::write(
        &script,
        r#"#!/usr/bin/python3
import json, os, sys
args = sys.argv[1:]
if args[0] != "sft":
    sys.exit(2)
def flag(k):
    return args[args.index("--" + k) + 1]
for line in open(flag("dataset")):
    for v in json.loads(line).get("videos", []):
        if not (os.path.isabs(v) and os.path.isfile(v)):
            print("video not found: " + v)
            sys.exit(4)
        print("video ok: " + open(v).read())
run = os.path.join(flag("output_dir"), "v0-20250101-000000")
ck = os.path.join(run, "checkpoint-1")
os.makedirs(ck, exist_ok=True)
with open(os.path.join(run, "logging.jsonl"), "a") as f:
    f.write(json.dumps({"global_step/max_steps": "1/1", "loss": 1.5, "learning_rate": 0.0001, "epoch": 1.0}) + "\n")
with open(os.path.join(ck, "adapter_model.safetensors"), "w") as f:
    f.write("weights")
with open(os.path.join(ck, "adapter_config.json"), "w") as f:
    json.dump({"peft_type": "LORA", "r": 16, "base_model_name_or_path": flag("model")}, f)
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
fn swift_training_finds_the_clips_an_export_carries_wherever_the_workspace_is() {
    let dir = tempfile::tempdir().unwrap();
    let clips = dir.path().join("clips");
    let rel = "chemistry/ch_1/video/01-a/01-a_step_1.mp4";
    std::fs::create_dir_all(clips.join(rel).parent().unwrap()).unwrap();
    std::fs::write(clips.join(rel), "the clip's bytes").unwrap();
    let mut row = swift_rows_sample()[0].clone();
    row.as_object_mut().unwrap().remove("rejected_response");
    row["videos"] = json!([format!("/path/to/{rel}")]);
    let rows = dir.path().join("rows.parquet");
    crate::expstar::write_rows(&rows, &[row]).unwrap();
    let tool = swift_stand_in(dir.path());
    let sft = crate::registry().get("train.sft").unwrap().clone();
    let export = crate::registry()
        .get("expstar.export_swift")
        .unwrap()
        .clone();
    let params = json!({"backend": "swift", "tool": tool.display().to_string(), "model_name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct", "merge": false});
    // Two workspaces at different paths: the export's bytes name no workspace, and training
    // in either finds the clip through its own copy of `media`.
    let mut media_digests = Vec::new();
    for ws in ["first workspace", "moved/elsewhere"] {
        let mut h = expflow_engine::harness::Harness::new(&dir.path().join(ws)).unwrap();
        let e = h
            .run(
                export.as_ref(),
                &[
                    ("rows", PortType::Table, rows.as_path()),
                    ("clips", PortType::Dir, clips.as_path()),
                ],
                json!({}),
                &[],
            )
            .unwrap();
        media_digests.push((e.digests["file"], e.digests["media"]));
        let t = h
            .run(
                sft.as_ref(),
                &[
                    ("data", PortType::File, e.outputs["file"].as_path()),
                    ("media", PortType::Dir, e.outputs["media"].as_path()),
                ],
                params.clone(),
                &[],
            )
            .unwrap_or_else(|err| panic!("{err}"));
        assert!(t.log.contains("video ok: the clip's bytes"), "{}", t.log);
        // Without `media`, the relative path reaches nothing: the stand-in refuses it.
        let bare = h
            .run(
                sft.as_ref(),
                &[("data", PortType::File, e.outputs["file"].as_path())],
                params.clone(),
                &[],
            )
            .err()
            .unwrap()
            .to_string();
        assert!(bare.contains(&format!("video not found: {rel}")), "{bare}");
        // A `media` directory without the clip is an error naming the row and the fix.
        let empty = dir.path().join(ws).join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let missing = h
            .run(
                sft.as_ref(),
                &[
                    ("data", PortType::File, e.outputs["file"].as_path()),
                    ("media", PortType::Dir, empty.as_path()),
                ],
                params.clone(),
                &[],
            )
            .err()
            .unwrap()
            .to_string();
        assert!(
            missing.contains(&format!(
                "row 1: videos file `{rel}` is not in the `media` input"
            )),
            "{missing}"
        );
    }
    assert_eq!(media_digests[0], media_digests[1]);
}
