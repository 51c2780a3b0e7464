//! A training node interrupted by Ctrl-C resumes from its last checkpoint on the next run
//! and ends with the same model bytes as a run that was never interrupted.

use std::time::{Duration, Instant};

use expflow_tests::{Project, expflow_bin};

const PIPE: &str = r#"
pipeline: resume
inputs:
  rows: rows.jsonl
nodes:
  base:
    op: train.tiny_model
    in: {text: inputs.rows}
    params: {params: 200000, vocab: 300}
  sft:
    op: train.sft
    in: {data: inputs.rows, model: base.model}
    params: {max_steps: 60, checkpoint_steps: 3, learning_rate: 0.003, lora_rank: 4, lora_alpha: 8, lora_dropout: 0.1, seed: 5}
outputs:
  model: sft.model
"#;

fn project() -> Project {
    let p = Project::new();
    p.write("pipe.yaml", PIPE);
    let mut rows = String::new();
    for i in 0..6 {
        rows.push_str(&format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"step {i}: what now?\"}}, {{\"role\": \"assistant\", \"content\": \"heat the flask {i} times, then add water\"}}]}}\n"
        ));
    }
    p.write("rows.jsonl", &rows);
    p
}

fn checkpoint_exists(p: &Project) -> bool {
    let Ok(keys) = std::fs::read_dir(p.path(".expflow/resume")) else {
        return false;
    };
    keys.flatten().any(|k| {
        std::fs::read_dir(k.path().join("native"))
            .map(|d| {
                d.flatten()
                    .any(|e| !e.file_name().to_string_lossy().ends_with(".partial"))
            })
            .unwrap_or(false)
    })
}

#[test]
fn an_interrupted_training_node_resumes_to_the_same_model() {
    let whole = project();
    let first = whole.run("pipe.yaml", &[]);
    first.expect_code(0);
    // The trainer reports its steps and rate, which the terminal shows.
    let progress: Vec<&serde_json::Value> = first
        .events
        .iter()
        .filter(|e| e["event"] == "node_progress" && e["node"] == "sft")
        .collect();
    let last = progress.last().expect("sft reported progress");
    assert_eq!(last["unit"], "steps", "{last}");
    assert_eq!(last["done"], last["total"], "{last}");
    assert!(
        last["detail"]
            .as_str()
            .is_some_and(|d| d.ends_with(" steps/s")),
        "{last}"
    );

    let p = project();
    let mut child = std::process::Command::new(expflow_bin())
        .args(["run", "pipe.yaml"])
        .current_dir(p.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !checkpoint_exists(&p) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before a checkpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Ctrl-C: the node saves its state and the run stops without a record of it.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "an interrupted run exits 130");
    assert!(checkpoint_exists(&p), "the state survives the interruption");

    let again = p.run("pipe.yaml", &[]);
    again.expect_code(0);
    assert_eq!(again.executed(), vec!["sft".to_string()]);
    let log = String::from_utf8_lossy(&p.expflow(&["log", "sft"]).stdout).into_owned();
    assert!(
        log.contains("resuming from the checkpoint at step"),
        "{log}"
    );
    for f in [
        "model/model.safetensors",
        "model/adapter/adapter_model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(p.path(f)).unwrap(),
            std::fs::read(whole.path(f)).unwrap(),
            "{f} differs from the uninterrupted run"
        );
    }
    assert!(
        !p.path(".expflow/resume").read_dir().unwrap().any(|_| true),
        "stored outputs end the state"
    );
}
