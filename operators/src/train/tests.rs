//! The training operators through the harness on a tiny model: SFT with a dev set, a task
//! metric from greedy generations and best-adapter selection; DPO against a reference table;
//! the tiny model's bytes for the same rows.

use std::path::Path;

use expflow_engine::PortType;
use expflow_engine::harness::Harness;
use serde_json::json;

use super::{Dpo, ReferenceLogprobs, Sft, TinyModel};
use crate::testing::{column_i64, table_from_bytes};

fn rows(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("rows.jsonl");
    let mut text = String::new();
    for i in 0..4 {
        text.push_str(&format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"step {i}\"}}, {{\"role\": \"assistant\", \"content\": \"heat the flask slowly\"}}], \"rejected_response\": \"drop it\"}}\n"
        ));
    }
    std::fs::write(&p, text).unwrap();
    p
}

fn tiny(h: &mut Harness, data: &Path) -> std::path::PathBuf {
    let run = h
        .run(
            &TinyModel,
            &[("text", PortType::File, data)],
            json!({"params": 100000, "vocab": 300}),
            &[],
        )
        .unwrap();
    run.outputs["model"].clone()
}

#[test]
fn sft_evaluates_a_task_metric_and_dpo_uses_the_reference_table() {
    let dir = tempfile::tempdir().unwrap();
    let data = rows(dir.path());
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let model = tiny(&mut h, &data);
    let again = tiny(&mut h, &data);
    let bytes = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
    assert_eq!(bytes(&model), bytes(&again), "same rows, same tiny model");
    let sft = h
        .run(
            &Sft,
            &[
                ("data", PortType::File, data.as_path()),
                ("dev", PortType::File, data.as_path()),
                ("model", PortType::Model, model.as_path()),
            ],
            json!({"max_steps": 6, "learning_rate": 0.01, "lora_rank": 4, "lora_alpha": 8.0, "eval_steps": 3,
                   "eval_metric": "rouge_l", "eval_max_tokens": 8, "best_metric": "eval_rouge_l", "greater_is_better": true}),
            &[],
        )
        .unwrap();
    let metrics = table_from_bytes(&std::fs::read(&sft.outputs["metrics"]).unwrap());
    let names: Vec<String> = metrics
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert!(
        names.contains(&"eval_rouge_l".to_string()) && names.contains(&"eval_loss".to_string()),
        "{names:?}"
    );
    assert_eq!(
        column_i64(&metrics, "step").len(),
        6 + 2,
        "six steps and two evaluations"
    );
    assert!(sft.log.contains("SFT: 4 rows"), "{}", sft.log);
    let merged = &sft.outputs["model"];
    assert!(
        merged.join("model.safetensors").is_file()
            && merged.join("adapter/adapter_config.json").is_file()
    );

    let reference = h
        .run(
            &ReferenceLogprobs,
            &[
                ("data", PortType::File, data.as_path()),
                ("model", PortType::Model, merged.as_path()),
            ],
            json!({}),
            &[],
        )
        .unwrap();
    let table = &reference.outputs["table"];
    let dpo = h
        .run(
            &Dpo,
            &[
                ("data", PortType::File, data.as_path()),
                ("model", PortType::Model, merged.as_path()),
                ("reference", PortType::Table, table.as_path()),
            ],
            json!({"max_steps": 2, "learning_rate": 0.001, "merge": false}),
            &[],
        )
        .unwrap();
    let m = table_from_bytes(&std::fs::read(&dpo.outputs["metrics"]).unwrap());
    let first: Vec<Option<f64>> = m.column("loss").unwrap().f64().unwrap().iter().collect();
    assert!(
        (first[0].unwrap() - std::f64::consts::LN_2).abs() < 1e-4,
        "{first:?}"
    );
    assert!(
        dpo.outputs["model"]
            .join("adapter_model.safetensors")
            .is_file()
    );
    // A reference table from other data is refused, naming the mismatch.
    let other = dir.path().join("other.jsonl");
    std::fs::write(
        &other,
        std::fs::read_to_string(&data)
            .unwrap()
            .lines()
            .take(2)
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let err = h
        .run(
            &Dpo,
            &[
                ("data", PortType::File, other.as_path()),
                ("model", PortType::Model, merged.as_path()),
                ("reference", PortType::Table, table.as_path()),
            ],
            json!({"max_steps": 1}),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("has 4 rows for 2 pairs"), "{err}");
}

#[test]
fn tiny_model_kind_is_checked_before_running() {
    use expflow_engine::Operator;
    let mut params = serde_json::Map::new();
    params.insert("kind".into(), json!("vlm"));
    let problems = TinyModel.check(&params);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("kind") && problems[0].contains("vision_language"),
        "{problems:?}"
    );
    params.insert("kind".into(), json!("vision_language"));
    assert!(TinyModel.check(&params).is_empty());
}

/// Multiple-choice rows: a question with four options, the answer one letter.
fn mc_rows(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("mc.jsonl");
    let mut text = String::new();
    let colours = ["red", "blue", "green", "black"];
    for i in 0..4 {
        let q = format!(
            "Which colour is number {i}?\nA: {}\nB: {}\nC: {}\nD: {}",
            colours[0], colours[1], colours[2], colours[3]
        );
        let answer = ["A", "B", "C", "D"][i];
        text.push_str(
            &serde_json::to_string(&json!({"instruction": q, "output": answer})).unwrap(),
        );
        text.push('\n');
    }
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn sft_keeps_the_adapter_of_the_best_dev_accuracy_and_stops_early() {
    use expflow_models::{ChatMessage, Generator, ModelDir, Needs};
    let dir = tempfile::tempdir().unwrap();
    let data = mc_rows(dir.path());
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let model = tiny(&mut h, &data);
    let params = json!({"max_steps": 40, "learning_rate": 0.02, "lora_rank": 4, "lora_alpha": 8.0,
        "eval_steps": 2, "eval_metric": "choice_accuracy", "best_metric": "eval_choice_accuracy",
        "greater_is_better": true, "early_stopping_patience": 1, "warmup_ratio": 0.0});
    let sft = h
        .run(
            &Sft,
            &[
                ("data", PortType::File, data.as_path()),
                ("dev", PortType::File, data.as_path()),
                ("model", PortType::Model, model.as_path()),
            ],
            params,
            &[],
        )
        .unwrap();
    let m = table_from_bytes(&std::fs::read(&sft.outputs["metrics"]).unwrap());
    let steps = column_i64(&m, "step");
    let col = |name: &str| -> Vec<Option<f64>> {
        m.column(name).unwrap().f64().unwrap().iter().collect()
    };
    let (acc, best, loss) = (col("eval_choice_accuracy"), col("best_step"), col("loss"));
    let evals: Vec<(i64, f64, f64)> = (0..m.height())
        .filter_map(|i| Some((steps[i]?, acc[i]?, best[i]?)))
        .collect();
    // Accuracy over 4 rows cannot rise at every one of 20 evaluations: patience 1 stops it.
    let trained = loss.iter().flatten().count();
    assert!(
        trained < 40 && trained % 2 == 0,
        "stopped early at an evaluation: {trained} steps"
    );
    assert!(sft.log.contains("stopped early at step"), "{}", sft.log);
    // best_step names the first evaluation with the highest accuracy so far; the last
    // evaluation is no better than the best, which the kept adapter is.
    let mut top = (0i64, -1f64);
    for &(step, a, b) in &evals {
        if a > top.1 {
            top = (step, a);
        }
        assert_eq!(b as i64, top.0, "{evals:?}");
    }
    let last = evals.last().unwrap();
    assert!(last.1 <= top.1, "{evals:?}");
    assert!(
        sft.log
            .contains(&format!("kept the adapter of step {}", top.0)),
        "{}",
        sft.log
    );
    // The output model answers the dev rows with the best evaluation's accuracy.
    let g = Generator::load(
        &ModelDir::open(&sft.outputs["model"], Needs::Tokenizer).unwrap(),
        &expflow_models::default_device().unwrap(),
    )
    .unwrap();
    let rows = crate::train_io::read_rows("test", &data).unwrap();
    let dev: Vec<(Vec<ChatMessage>, String)> = expflow_train::data::sft_conversations(&rows)
        .unwrap()
        .into_iter()
        .map(|mut c| {
            let a = c.pop().unwrap().joined_text();
            (c, a)
        })
        .collect();
    let got = super::sft::choice_accuracy(&g, &dev).unwrap();
    assert_eq!(got, top.1, "{evals:?}");

    // Early stopping without a metric to watch is refused, naming the fix.
    let err = h
        .run(
            &Sft,
            &[
                ("data", PortType::File, data.as_path()),
                ("model", PortType::Model, model.as_path()),
            ],
            json!({"max_steps": 2, "early_stopping_patience": 2}),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("early_stopping_patience") && err.contains("best_metric"),
        "{err}"
    );
}
