//! The external tools for real, on a tiny Qwen2: LLaMA-Factory, which `.ci/run` installs
//! (`$EXPFLOW_LLAMAFACTORY`; under CI=true its absence fails the test), `swift` on PATH (SFT
//! and DPO on CPU), and `scripts/vllm_infer.py` with vLLM (a GPU; see its test). The ms-swift
//! and vLLM tests say SKIPPED without them (CI machines have neither); the configs and
//! command lines they get are covered by the golden tests in `operators/src/tools/tests.rs`.

use std::path::Path;

use expflow_engine::Operator;
use expflow_engine::PortType;
use expflow_engine::harness::Harness;
use expflow_models::{TinySpec, write_tiny_qwen2};
use expflow_operators::train::{Dpo, Sft};
use serde_json::json;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Four training rows (ms-swift form); preference rows add a rejected answer.
fn rows(dir: &Path, preference: bool) -> std::path::PathBuf {
    let p = dir.join("rows.jsonl");
    let mut text = String::new();
    for i in 0..4 {
        let rejected = if preference {
            ", \"rejected_response\": \"cool the flask\""
        } else {
            ""
        };
        text.push_str(&format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"step {i}\"}}, {{\"role\": \"assistant\", \"content\": \"heat the flask\"}}]{rejected}}}\n"
        ));
    }
    std::fs::write(&p, text).unwrap();
    p
}

fn real_run(backend: &str, program: &str, install: &str, extra: serde_json::Value) {
    real_run_stage(backend, program, install, extra, false);
}

fn real_run_stage(
    backend: &str,
    program: &str,
    install: &str,
    extra: serde_json::Value,
    dpo: bool,
) {
    let tool = if backend == "llamafactory" {
        match expflow_tests::skip::llamafactory_cli() {
            Some(t) => t,
            None => return,
        }
    } else if on_path(program) {
        program.to_string()
    } else {
        expflow_tests::skip::skip(&format!("{program} is not installed ({install})"));
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let corpus: Vec<String> = (0..20)
        .map(|i| format!("step {i} heat the flask"))
        .collect();
    write_tiny_qwen2(&model, &TinySpec::default(), &corpus).unwrap();
    let data = rows(dir.path(), dpo);
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let op: &dyn Operator = if dpo { &Dpo } else { &Sft };
    let run = h
        .run(
            op,
            &[("data", PortType::File, data.as_path()), ("model", PortType::Model, model.as_path())],
            json!({"backend": backend, "template": "qwen", "bf16": false, "max_steps": 2, "lora_rank": 4, "lora_alpha": 8.0, "max_len": 256, "merge": false, "checkpoint_steps": 2, "tool": tool, "extra": extra}),
            &[],
        )
        .unwrap_or_else(|e| panic!("{backend}: {e}"));
    assert!(run.outputs["model"].join("adapter_config.json").is_file());
    assert!(std::fs::metadata(&run.outputs["metrics"]).unwrap().len() > 0);
}

#[test]
fn llamafactory_trains_a_tiny_model_when_installed() {
    real_run(
        "llamafactory",
        "llamafactory-cli",
        "pip install llamafactory",
        json!({}),
    );
}

#[test]
fn swift_trains_a_tiny_model_when_installed() {
    // A local directory is ambiguous to ms-swift (qwen2 or qwen2_gte; several chat
    // templates): name both.
    real_run(
        "swift",
        "swift",
        "pip install ms-swift",
        json!({"model_type": "qwen2", "template": "qwen"}),
    );
}

#[test]
fn swift_dpo_trains_a_tiny_model_when_installed() {
    real_run_stage(
        "swift",
        "swift",
        "pip install ms-swift",
        json!({"model_type": "qwen2", "template": "qwen"}),
        true,
    );
}

/// `infer.vllm_infer` for real needs vLLM (a GPU) and LLaMA-Factory's `scripts/vllm_infer.py`:
/// set `EXPFLOW_VLLM_INFER_SCRIPT` to the script and `EXPFLOW_VLLM_PYTHON` to a Python that
/// imports both (default `python3`).
#[test]
fn vllm_infer_answers_a_dataset_when_installed() {
    use polars::prelude::*;
    let Some(script) = std::env::var_os("EXPFLOW_VLLM_INFER_SCRIPT") else {
        expflow_tests::skip::skip(
            "EXPFLOW_VLLM_INFER_SCRIPT is not set (LLaMA-Factory's scripts/vllm_infer.py; vLLM needs a GPU)",
        );
        return;
    };
    let python = std::env::var("EXPFLOW_VLLM_PYTHON").unwrap_or_else(|_| "python3".into());
    let importable = std::process::Command::new(&python)
        .args(["-c", "import vllm, llamafactory"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !importable {
        expflow_tests::skip::skip(&format!("{python} cannot import vllm and llamafactory"));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let corpus: Vec<String> = (0..20)
        .map(|i| format!("step {i} heat the flask"))
        .collect();
    write_tiny_qwen2(&model, &TinySpec::default(), &corpus).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("dataset_info.json"),
        json!({"steps": {"file_name": "steps.json", "formatting": "alpaca"}}).to_string(),
    )
    .unwrap();
    let rows: Vec<_> = (0..3)
        .map(|i| json!({"instruction": format!("step {i}"), "input": "", "output": "heat the flask"}))
        .collect();
    std::fs::write(data.join("steps.json"), json!(rows).to_string()).unwrap();
    let mut ids = df!("id" => ["a", "b", "c"]).unwrap();
    let table = dir.path().join("ids.parquet");
    expflow_operators::table_io::write_table(&mut ids, &table).unwrap();
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let run = h
        .run(
            &expflow_operators::tools::VllmInfer,
            &[
                ("table", PortType::Table, table.as_path()),
                ("dataset", PortType::Dir, data.as_path()),
                ("model", PortType::Model, model.as_path()),
            ],
            json!({"script": script.to_string_lossy(), "dataset_name": "steps", "python": python,
                   "template": "qwen", "max_new_tokens": 4, "cutoff_len": 256}),
            &[],
        )
        .unwrap_or_else(|e| panic!("vllm_infer: {e}"));
    let out = expflow_operators::table_io::read_table(&run.outputs["table"]).unwrap();
    assert_eq!(out.height(), 3);
    for c in ["id", "prompt", "predict", "label"] {
        assert!(out.column(c).is_ok(), "no `{c}` column");
    }
}
