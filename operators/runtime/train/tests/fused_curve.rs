//! The fused CPU kernels (`expflow_models::kernels`) against candle's composite ops on a
//! whole LoRA SFT run: the first 20 steps' losses and gradient norms agree within 1e-5.
//! One test in its own binary, because the switch between the two paths is process-wide.

use std::path::Path;

use candle_core::Device;
use expflow_models::{
    ChatMessage, Generator, ModelDir, Needs, TinySpec, kernels, write_tiny_qwen2,
};
use expflow_train::optim::AdamWConfig;
use expflow_train::schedule::Scheduler;
use expflow_train::sft::Sft;
use expflow_train::{Hooks, LoopConfig, Lora, LoraConfig, train};

fn model(dir: &Path) -> Generator {
    Generator::load(
        &ModelDir::open(dir, Needs::Tokenizer).unwrap(),
        &Device::Cpu,
    )
    .unwrap()
}

fn conversations() -> Vec<Vec<ChatMessage>> {
    let answers = [
        "heat the oxide",
        "add hydrogen slowly and watch the powder",
        "watch it turn red",
        "stop the gas, then let the tube cool before you open it",
        "weigh the copper",
        "write the mass in the table",
    ];
    answers
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

/// `(loss, grad_norm)` of each of the first 20 steps.
fn curve(dir: &Path, fused: bool) -> Vec<(f64, f64)> {
    kernels::set_enabled(fused);
    let mut g = model(dir);
    let seqs = Sft::encode(&g, &conversations(), 256, "train").unwrap();
    let lora = Lora::attach(
        &mut g,
        &LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: vec!["all-linear".into()],
            seed: 5,
        },
    )
    .unwrap();
    let mut obj = Sft {
        train: seqs,
        dev: Vec::new(),
        eval_batch: 2,
    };
    let cfg = LoopConfig {
        epochs: 10,
        max_steps: 20,
        batch_size: 3,
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
        seed: 11,
    };
    let out = train(&mut g, &lora, &mut obj, &cfg, None, &Hooks::default()).unwrap();
    kernels::set_enabled(true);
    out.rows
        .iter()
        .map(|r| (r.loss.unwrap(), r.grad_norm.unwrap()))
        .collect()
}

#[test]
fn fused_loss_curve_equals_the_composite_one() {
    let dir = tempfile::tempdir().unwrap();
    let corpus: Vec<String> = (0..30)
        .map(|i| {
            format!("step {i}: heat the copper oxide, then add hydrogen and watch it turn red")
        })
        .collect();
    write_tiny_qwen2(dir.path(), &TinySpec::default(), &corpus).unwrap();
    let fused = curve(dir.path(), true);
    let composite = curve(dir.path(), false);
    assert_eq!(fused.len(), 20);
    assert_eq!(composite.len(), 20);
    for (step, (f, c)) in fused.iter().zip(&composite).enumerate() {
        assert!(
            (f.0 - c.0).abs() <= 1e-5,
            "step {}: loss {} (fused) vs {} (composite)",
            step + 1,
            f.0,
            c.0
        );
        assert!(
            (f.1 - c.1).abs() <= 1e-5 * c.1.max(1.0),
            "step {}: grad norm {} (fused) vs {} (composite)",
            step + 1,
            f.1,
            c.1
        );
    }
    // The run learned something, so the comparison covers changing adapters.
    assert!(
        fused[19].0 < fused[0].0 * 0.9,
        "loss {} → {}",
        fused[0].0,
        fused[19].0
    );
}
