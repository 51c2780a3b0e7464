//! Greedy decode throughput (tokens/s) on a tiny random model from `tiny::write_tiny_qwen2`,
//! at batch 1 and batch 8. Run with `cargo bench -p expflow-models --bench generate`.

use candle_core::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use expflow_models::{
    GenRequest, Generator, ModelDir, Needs, Sampling, TinySpec, write_tiny_qwen2,
};

const NEW_TOKENS: usize = 32;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let corpus: Vec<String> = (0..300)
        .map(|i| {
            format!(
                "sentence {i}: the model reads {} papers about the river",
                i % 17
            )
        })
        .collect();
    write_tiny_qwen2(dir.path(), &TinySpec::default(), &corpus).expect("tiny model");
    let model_dir = ModelDir::open(dir.path(), Needs::Tokenizer).expect("model directory");
    let g = Generator::load(&model_dir, &Device::Cpu).expect("generator");
    // Random weights may emit an end-of-sequence token early: throughput counts the tokens a
    // run actually produces (the same every run, greedy decoding being deterministic).
    let eos = g.eos_ids().to_vec();
    let mut group = c.benchmark_group("greedy_decode");
    for batch in [1usize, 8] {
        let reqs: Vec<GenRequest> = (0..batch)
            .map(|i| GenRequest {
                prompt: format!("the model reads {i} papers about"),
                images: vec![],
                sampling: Sampling {
                    max_new_tokens: NEW_TOKENS,
                    ..Sampling::default()
                },
            })
            .collect();
        let produced: usize = g
            .generate(&reqs)
            .expect("generate")
            .iter()
            .map(|r| r.completions[0].token_ids.len())
            .sum();
        eprintln!("batch {batch}: {produced} tokens per run (eos ids {eos:?})");
        group.throughput(Throughput::Elements(produced as u64));
        group.bench_function(format!("batch_{batch}"), |b| {
            b.iter(|| g.generate(&reqs).expect("generate"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
