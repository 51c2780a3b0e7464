//! Sentences per second of the text encoder: batch 32, length-sorted (what
//! sentence-transformers does). Uses all-MiniLM-L6-v2 from `$EXPFLOW_MINILM_DIR` or
//! `$HOME/.cache/expflow-models/all-minilm-l6-v2` when present, else the tiny random BERT of
//! the test fixtures. `embed_python.py` next to this file measures sentence-transformers on
//! the same sentences.
//!
//! Run: `cargo bench -p expflow-encoders --bench embed`

use std::path::PathBuf;

use candle_core::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use expflow_encoders::TextEncoder;
use expflow_models::{ModelDir, Needs};

const WORDS: &[&str] = &[
    "the",
    "experiment",
    "measures",
    "boiling",
    "point",
    "of",
    "water",
    "student",
    "heats",
    "flask",
    "over",
    "small",
    "flame",
    "carbon",
    "monoxide",
    "burns",
    "blue",
    "valve",
    "gas",
    "cylinder",
    "slowly",
    "safety",
    "goggles",
    "window",
    "solution",
    "turns",
    "red",
    "acid",
    "never",
    "reverse",
    "record",
    "temperature",
    "table",
    "compare",
    "results",
    "video",
];

/// Sentence i: `5 + (11 i mod 30)` words, word j = `WORDS[(7 i + 13 j) mod |WORDS|]`
/// (the same formula as embed_python.py).
pub fn sentences(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let len = 5 + (11 * i) % 30;
            (0..len)
                .map(|j| WORDS[(7 * i + 13 * j) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn model_dir() -> (PathBuf, &'static str) {
    let minilm = match std::env::var_os("EXPFLOW_MINILM_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/expflow-models/all-minilm-l6-v2"),
    };
    if minilm.join("model.safetensors").is_file() {
        (minilm, "all-MiniLM-L6-v2")
    } else {
        (
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert-tiny"),
            "tiny random BERT (MiniLM not found)",
        )
    }
}

fn bench(c: &mut Criterion) {
    // `EXPFLOW_BENCH_UNFUSED=1`: candle's composite ops instead of the fused kernels, to
    // measure both paths with one build.
    let unfused = std::env::var_os("EXPFLOW_BENCH_UNFUSED").is_some_and(|v| v == "1");
    expflow_models::kernels::set_enabled(!unfused);
    let path = if unfused {
        "composite ops"
    } else {
        "fused kernels"
    };
    let (root, name) = model_dir();
    let dir = ModelDir::open(&root, Needs::Tokenizer).expect("model directory");
    let enc = TextEncoder::load_default(&dir, &Device::Cpu)
        .expect("encoder")
        .with_batch_size(32);
    let texts = sentences(512);
    let mut group = c.benchmark_group(format!("embed {name}, {path}"));
    group.sample_size(10);
    group.throughput(Throughput::Elements(texts.len() as u64));
    group.bench_function("512 sentences, batch 32, length-sorted", |b| {
        b.iter(|| std::hint::black_box(enc.embed(&texts).expect("embed")))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
