//! Training a tiny random Qwen2 with LoRA: the loss falls, accumulation splits do not change
//! the update, an interrupted run resumes to the same bytes, merged weights equal the
//! adapter model, and DPO starts at ln 2 and prefers the chosen answers after training.

use std::path::Path;

use candle_core::{Device, Tensor};
use expflow_models::{
    ChatMessage, Generator, ModelDir, Needs, TinySpec, Trainable, write_tiny_qwen2,
};
use expflow_train::data::Pair;
use expflow_train::dpo::{Dpo, Loss, encode_pairs, reference_logps};
use expflow_train::optim::AdamWConfig;
use expflow_train::schedule::Scheduler;
use expflow_train::sft::Sft;
use expflow_train::{Hooks, LoopConfig, Lora, LoraConfig, TrainError, peft, train};

fn corpus() -> Vec<String> {
    (0..30)
        .map(|i| {
            format!("step {i}: heat the copper oxide, then add hydrogen and watch it turn red")
        })
        .collect()
}

fn tiny(dir: &Path) -> Generator {
    write_tiny_qwen2(dir, &TinySpec::default(), &corpus()).unwrap();
    Generator::load(
        &ModelDir::open(dir, Needs::Tokenizer).unwrap(),
        &Device::Cpu,
    )
    .unwrap()
}

fn conversations() -> Vec<Vec<ChatMessage>> {
    [
        "heat the oxide",
        "add hydrogen",
        "watch it turn red",
        "stop the gas",
    ]
    .iter()
    .enumerate()
    .map(|(i, a)| {
        vec![
            ChatMessage::text("system", "You narrate experiments."),
            ChatMessage::text("user", &format!("step {i}")),
            ChatMessage::text("assistant", a),
        ]
    })
    .collect()
}

fn lora_cfg(dropout: f64) -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout,
        targets: vec!["all-linear".into()],
        seed: 7,
    }
}

fn loop_cfg(steps: usize) -> LoopConfig {
    LoopConfig {
        epochs: 1,
        max_steps: steps,
        batch_size: 2,
        grad_accum: 1,
        learning_rate: 1e-2,
        scheduler: Scheduler::Linear,
        warmup_ratio: 0.1,
        max_grad_norm: 1.0,
        adamw: AdamWConfig::default(),
        logging_steps: 1,
        eval_steps: 0,
        best_metric: None,
        early_stopping_patience: 0,
        greater_is_better: false,
        checkpoint_steps: 0,
        seed: 3,
    }
}

fn values(lora: &Lora) -> Vec<Vec<f32>> {
    lora.vars()
        .iter()
        .map(|v| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn sft_loss_falls_and_the_merged_model_equals_the_adapter_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = tiny(dir.path());
    let seqs = Sft::encode(&g, &conversations(), 256, "train").unwrap();
    let base_logits = g.train_logits(&[&seqs[0]]).unwrap();
    let lora = Lora::attach(&mut g, &lora_cfg(0.0)).unwrap();
    // B starts at zero: the adapted model is the base model.
    assert!(max_diff(&g.train_logits(&[&seqs[0]]).unwrap(), &base_logits) < 1e-6);
    let before = Sft::mean_nll(&g, &seqs, 4).unwrap();
    let mut obj = Sft {
        train: seqs.clone(),
        dev: seqs.clone(),
        eval_batch: 4,
    };
    let mut cfg = loop_cfg(30);
    cfg.eval_steps = 10;
    cfg.best_metric = Some("eval_loss".into());
    let out = train(&mut g, &lora, &mut obj, &cfg, None, &Hooks::default()).unwrap();
    let after = Sft::mean_nll(&g, &seqs, 4).unwrap();
    assert!(after < before * 0.7, "loss {before} → {after}");
    assert_eq!(out.rows.iter().filter(|r| r.loss.is_some()).count(), 30);
    let evals: Vec<f64> = out
        .rows
        .iter()
        .filter_map(|r| r.values.get("eval_loss").copied())
        .collect();
    assert_eq!(evals.len(), 3);
    let best = evals.iter().cloned().fold(f64::INFINITY, f64::min);
    assert_eq!(out.best.unwrap().1, best);
    // Merge and reload: same logits as the model with adapters.
    let merged = dir.path().join("merged");
    peft::merge(dir.path(), &lora, &merged).unwrap();
    let m = Generator::load(
        &ModelDir::open(&merged, Needs::Tokenizer).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let d = max_diff(
        &m.train_logits(&[&seqs[1]]).unwrap(),
        &g.train_logits(&[&seqs[1]]).unwrap(),
    );
    assert!(d < 1e-4, "merged logits differ by {d}");
    peft::save_adapter(&dir.path().join("adapter"), &lora, "tiny").unwrap();
    let cfg_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg_json["r"], 4);
    let names = candle_core::safetensors::load(
        dir.path().join("adapter/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert!(names.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert_eq!(names.len(), 2 * 2 * 7, "2 layers × 7 linears × (A, B)");
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let run = |ckpt: Option<&Path>, stop_at: Option<usize>| {
        let mut g = tiny(dir.path());
        let seqs = Sft::encode(&g, &conversations(), 256, "train").unwrap();
        let lora = Lora::attach(&mut g, &lora_cfg(0.1)).unwrap();
        let mut obj = Sft {
            train: seqs,
            dev: Vec::new(),
            eval_batch: 4,
        };
        let mut cfg = loop_cfg(12);
        cfg.batch_size = 1;
        cfg.grad_accum = 2;
        cfg.checkpoint_steps = 4;
        let cancel = |s: usize| stop_at == Some(s);
        let hooks = Hooks {
            cancel: Some(&cancel),
            ..Hooks::default()
        };
        let r = train(&mut g, &lora, &mut obj, &cfg, ckpt, &hooks);
        (r, values(&lora))
    };
    let (whole, want) = run(None, None);
    let whole = whole.unwrap();
    let ck = dir.path().join("ckpt");
    std::fs::create_dir_all(&ck).unwrap();
    let (first, _) = run(Some(&ck), Some(6));
    assert!(matches!(first, Err(TrainError::Cancelled(6))), "{first:?}");
    let (second, got) = run(Some(&ck), None);
    let second = second.unwrap();
    assert_eq!(second.resumed_from, 6);
    assert_eq!(
        got, want,
        "resumed weights differ from an uninterrupted run"
    );
    assert_eq!(second.rows, whole.rows, "the metrics of both runs agree");
}

#[test]
fn accumulation_splits_give_the_same_update() {
    let dir = tempfile::tempdir().unwrap();
    let step = |batch: usize, accum: usize| {
        let mut g = tiny(dir.path());
        let seqs = Sft::encode(&g, &conversations(), 256, "train").unwrap();
        let lora = Lora::attach(&mut g, &lora_cfg(0.0)).unwrap();
        let mut obj = Sft {
            train: seqs,
            dev: Vec::new(),
            eval_batch: 4,
        };
        let mut cfg = loop_cfg(2);
        cfg.batch_size = batch;
        cfg.grad_accum = accum;
        cfg.warmup_ratio = 0.0;
        train(&mut g, &lora, &mut obj, &cfg, None, &Hooks::default()).unwrap();
        values(&lora)
    };
    let a = step(2, 1);
    let b = step(1, 2);
    let worst = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-5,
        "batch 2 vs 2 × accumulation differ by {worst}"
    );
}

#[test]
fn dpo_starts_at_ln2_and_learns_the_preference() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = tiny(dir.path());
    let pairs: Vec<Pair> = conversations()
        .into_iter()
        .map(|mut c| {
            let chosen = c.pop().unwrap().joined_text();
            Pair {
                prompt: c,
                chosen,
                rejected: "stop the gas and leave".into(),
            }
        })
        .collect();
    let encoded = encode_pairs(&g, &pairs, 256).unwrap();
    let reference = reference_logps(&g, &encoded, 2).unwrap();
    let lora = Lora::attach(&mut g, &lora_cfg(0.0)).unwrap();
    let mut obj = Dpo {
        pairs: encoded,
        reference,
        loss: Loss::Sigmoid,
        beta: 0.5,
        label_smoothing: 0.0,
    };
    let out = train(
        &mut g,
        &lora,
        &mut obj,
        &loop_cfg(25),
        None,
        &Hooks::default(),
    )
    .unwrap();
    let first = out.rows[0].loss.unwrap();
    assert!(
        (first - std::f64::consts::LN_2).abs() < 1e-5,
        "first loss {first}"
    );
    let last = out.rows.last().unwrap();
    assert!(last.loss.unwrap() < 0.5, "{last:?}");
    assert_eq!(last.values["rewards/accuracies"], 1.0, "{last:?}");
    assert!(last.values["rewards/margins"] > 0.0);
}
