//! Greedy decode throughput (new tokens/s) of the Qwen2 runtime at batch 1 and batch 8, on a
//! small random-weight Qwen2 written by `write_tiny_qwen2`: vocab 8,192, hidden 512, 8 layers,
//! 8 heads (2 key/value heads), intermediate 1,536: 33.6M parameters, 134 MB in f32. That is
//! large enough for the matrix products to dominate (a 100k-parameter model would measure
//! only per-step overhead) and small enough for this 2-core machine.
//!
//! The model directory is written to `$EXPFLOW_GEN_BENCH_DIR` (default
//! `$TMPDIR/expflow-bench-qwen2-small`; same spec, same bytes) together with
//! `bench_prompts.json` (the prompt token ids of each batch) and `bench_greedy_rust.json` (the
//! tokens this runtime generates), which `generate_python.py` next to this file reads: it
//! times transformers' `generate` on the same directory and ids and checks that it produces
//! the same tokens.
//!
//! Each iteration is one `generate` call: prefill of the (left-padded) prompts, then up to
//! `NEW_TOKENS` decode steps; throughput counts the tokens produced (random weights may emit
//! an end-of-sequence token early; greedy decoding makes that the same every run).
//!
//! Run: `cargo bench -p expflow-models --bench generate`

use std::path::PathBuf;

use candle_core::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use expflow_models::{
    GenRequest, Generator, ModelDir, Needs, Sampling, TinySpec, write_tiny_qwen2,
};
use serde_json::json;

const NEW_TOKENS: usize = 64;
const BATCHES: [usize; 2] = [1, 8];

/// The benchmark model's shape.
fn spec() -> TinySpec {
    TinySpec {
        vocab: 8192,
        hidden: 512,
        layers: 8,
        heads: 8,
        kv_heads: 2,
        intermediate: 1536,
        seed: 0,
    }
}

/// Pseudo-words from 48 syllables (seeded LCG), so byte-level BPE finds enough merges to fill
/// an 8k vocabulary.
fn corpus() -> Vec<String> {
    const SYL: [&str; 48] = [
        "ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "da", "zu", "fe", "go", "hi", "ju",
        "be", "ra", "si", "to", "nu", "le", "mo", "pi", "ce", "qua", "xo", "yi", "we", "ste",
        "pla", "tri", "gro", "ban", "ten", "lin", "mor", "sal", "ver", "dun", "kel", "pom", "ris",
        "tas", "wen", "yor", "zim", "bre", "cla",
    ];
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |m: u64| {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (s >> 33) % m
    };
    (0..12_000)
        .map(|_| {
            (0..12)
                .map(|_| {
                    let syllables = 1 + next(4);
                    (0..syllables)
                        .map(|_| SYL[next(SYL.len() as u64) as usize])
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn prompt(i: usize) -> String {
    let words = [
        "kalomi", "nesuta", "ripove", "dazufe", "gohiju", "berasi", "tonule",
    ];
    let n = 12 + 3 * i;
    (0..n)
        .map(|j| words[(i + 5 * j) % words.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn model_dir() -> PathBuf {
    std::env::var_os("EXPFLOW_GEN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("expflow-bench-qwen2-small"))
}

fn bench(c: &mut Criterion) {
    let dir = model_dir();
    write_tiny_qwen2(&dir, &spec(), &corpus()).expect("small model");
    let model_dir = ModelDir::open(&dir, Needs::Tokenizer).expect("model directory");
    let g = Generator::load(&model_dir, &Device::Cpu).expect("generator");
    eprintln!(
        "model: {} (vocab {}, hidden {}, {} layers); eos ids {:?}",
        dir.display(),
        spec().vocab,
        spec().hidden,
        spec().layers,
        g.eos_ids()
    );
    let mut prompts = serde_json::Map::new();
    let mut outputs = serde_json::Map::new();
    let mut runs = Vec::new();
    for batch in BATCHES {
        let reqs: Vec<GenRequest> = (0..batch)
            .map(|i| GenRequest {
                prompt: prompt(i),
                images: vec![],
                videos: Vec::new(),
                sampling: Sampling {
                    max_new_tokens: NEW_TOKENS,
                    ..Sampling::default()
                },
            })
            .collect();
        let ids: Vec<Vec<u32>> = reqs
            .iter()
            .map(|r| g.encode(&r.prompt).expect("encode"))
            .collect();
        let tokens: Vec<Vec<u32>> = g
            .generate(&reqs)
            .expect("generate")
            .iter()
            .map(|r| r.completions[0].token_ids.clone())
            .collect();
        let produced: usize = tokens.iter().map(Vec::len).sum();
        eprintln!(
            "batch {batch}: prompt lengths {:?}, {produced} new tokens per run",
            ids.iter().map(Vec::len).collect::<Vec<_>>()
        );
        prompts.insert(batch.to_string(), json!(ids));
        outputs.insert(batch.to_string(), json!(tokens));
        runs.push((batch, reqs, produced));
    }
    for (name, v) in [
        ("bench_prompts.json", prompts),
        ("bench_greedy_rust.json", outputs),
    ] {
        let body = json!({"max_new_tokens": NEW_TOKENS, "batches": v});
        std::fs::write(dir.join(name), body.to_string() + "\n").expect("write bench file");
    }
    let mut group = c.benchmark_group("greedy_decode_qwen2_h512_l8_v8192");
    group.sample_size(10);
    for (batch, reqs, produced) in &runs {
        group.throughput(Throughput::Elements(*produced as u64));
        group.bench_function(format!("batch_{batch}_new_{NEW_TOKENS}"), |b| {
            b.iter(|| g.generate(reqs).expect("generate"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
