//! One LoRA SFT optimizer step (forward, backward, AdamW) on a tiny-but-not-trivial Qwen2
//! (hidden 256, 4 layers, 8 heads / 4 key-value heads, intermediate 704, vocabulary 4,096;
//! about 4.9M parameters), batch 4 × 128 tokens, LoRA r 16 on all linears, on the CPU.
//! `sft_step_python.py` does the same step with PyTorch on the same model directory and
//! tokens (written here to `target/sft-bench/`), for the README's comparison.
//!
//! Peak resident memory of the process is printed at the end (`VmHWM`).

use std::path::PathBuf;

use candle_core::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use expflow_models::sampling::Rng;
use expflow_models::{
    Generator, IGNORE, ModelDir, Needs, TinySpec, TrainSequence, write_tiny_qwen2,
};
use expflow_train::optim::AdamWConfig;
use expflow_train::schedule::Scheduler;
use expflow_train::sft::Sft;
use expflow_train::{Hooks, LoopConfig, Lora, LoraConfig, train};

const BATCH: usize = 4;
const SEQ: usize = 128;

fn bench_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../target")));
    target.join("sft-bench")
}

fn spec() -> TinySpec {
    TinySpec {
        vocab: 4096,
        hidden: 256,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        intermediate: 704,
        seed: 1,
    }
}

/// The model directory and `BATCH` sequences of `SEQ` seeded token ids (every position
/// trained), also written as `tokens.json` for the Python side.
fn setup() -> (Generator, Vec<TrainSequence>) {
    let dir = bench_dir();
    let model = dir.join("model");
    if !model.join("model.safetensors").is_file() {
        let corpus: Vec<String> = (0..2000)
            .map(|i| {
                format!(
                    "step {i}: heat {} grams of copper oxide at {} degrees, then add hydrogen",
                    i % 37,
                    100 + i % 400
                )
            })
            .collect();
        write_tiny_qwen2(&model, &spec(), &corpus).unwrap();
    }
    let mut rng = Rng::for_sample(9, 0);
    let seqs: Vec<TrainSequence> = (0..BATCH)
        .map(|_| {
            let ids: Vec<u32> = (0..SEQ)
                .map(|_| (rng.next_u64() % 4000) as u32 + 10)
                .collect();
            let mut labels: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
            labels[0] = IGNORE;
            TrainSequence {
                ids,
                labels,
                images: Vec::new(),
            }
        })
        .collect();
    let tokens: Vec<Vec<u32>> = seqs.iter().map(|s| s.ids.clone()).collect();
    std::fs::write(
        dir.join("tokens.json"),
        serde_json::to_string(&tokens).unwrap(),
    )
    .unwrap();
    let g = Generator::load(
        &ModelDir::open(&model, Needs::Tokenizer).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    (g, seqs)
}

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn sft_step(c: &mut Criterion) {
    // `EXPFLOW_BENCH_UNFUSED=1`: candle's composite ops instead of the fused kernels, to
    // measure both paths with one build.
    let unfused = std::env::var_os("EXPFLOW_BENCH_UNFUSED").is_some_and(|v| v == "1");
    expflow_models::kernels::set_enabled(!unfused);
    let path = if unfused {
        "composite ops"
    } else {
        "fused kernels"
    };
    let (mut g, seqs) = setup();
    let lora = Lora::attach(
        &mut g,
        &LoraConfig {
            rank: 16,
            alpha: 32.0,
            dropout: 0.0,
            targets: vec!["all-linear".into()],
            seed: 0,
        },
    )
    .unwrap();
    let mut obj = Sft {
        train: seqs,
        dev: Vec::new(),
        eval_batch: BATCH,
    };
    let cfg = LoopConfig {
        epochs: 1,
        max_steps: 1,
        batch_size: BATCH,
        grad_accum: 1,
        learning_rate: 1e-4,
        scheduler: Scheduler::Constant,
        warmup_ratio: 0.0,
        max_grad_norm: 1.0,
        adamw: AdamWConfig::default(),
        logging_steps: 1,
        eval_steps: 0,
        best_metric: None,
        early_stopping_patience: 0,
        greater_is_better: false,
        checkpoint_steps: 0,
        seed: 0,
    };
    let mut group = c.benchmark_group(format!("sft_step, {path}"));
    group.sample_size(10);
    group.bench_function("lora_r16_batch4x128_hidden256_4layers", |b| {
        b.iter(|| train(&mut g, &lora, &mut obj, &cfg, None, &Hooks::default()).unwrap())
    });
    group.finish();
    if let Some(mib) = peak_rss_mib() {
        println!("peak RSS of the benchmark process: {mib:.0} MiB");
    }
}

criterion_group!(benches, sft_step);
criterion_main!(benches);
