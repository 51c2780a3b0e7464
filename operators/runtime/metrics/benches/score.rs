//! Scoring throughput over 100,000 generated pairs per metric (`cargo bench -p
//! expflow-metrics --bench score`). `score_python.py` generates the same pairs and times
//! sacrebleu, rouge-score, NLTK and pycocoevalcap on them; docs/scoring.md has both.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use expflow_metrics::bleu::{self, BleuConfig};
use expflow_metrics::cider;
use expflow_metrics::corpus::{self, Metric, TextConfig};
use expflow_metrics::meteor::{self, MeteorParams};
use expflow_metrics::rouge::{self, SplitMix64};
use expflow_metrics::tokenize::Tokenizer;
use expflow_metrics::wordnet::{self, WordNet};

const N: usize = 100_000;

const WORDS: &str = "the a of to in on with by for from and add adds added adding pour poured heat heated \
mix mixing stir solution beaker flask yeast sucrose glucose ethanol water acid base salt \
sodium chloride copper sulfate reaction reacts quickly fast slowly large big small begin \
start observe watch color blue red green clear bubbles gas carbon dioxide oxygen \
temperature rises cools dissolve crystals form precipitate white running dogs cats \
kitten car children measure measured electrode battery current voltage safety goggles \
gloves wear careful avoid contact skin eyes , . ( ) : ; % 3.5 10ml 25 C6H12O6";

/// The pairs of `score_python.py` (same generator, same seed).
fn pairs(n: usize) -> (Vec<String>, Vec<String>) {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut rng = SplitMix64::new(42);
    let (mut hyps, mut refs) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let k = 5 + rng.below(30);
        let r: Vec<&str> = (0..k).map(|_| words[rng.below(words.len())]).collect();
        let mut h = Vec::new();
        for w in &r {
            match rng.below(8) {
                0 => continue,
                1 => h.push(words[rng.below(words.len())]),
                _ => h.push(w),
            }
            if rng.below(16) == 0 {
                h.push(words[rng.below(words.len())]);
            }
        }
        hyps.push(h.join(" "));
        refs.push(r.join(" "));
    }
    (hyps, refs)
}

fn bench(c: &mut Criterion) {
    let (hyps, refs) = pairs(N);
    let refs1: Vec<Vec<&str>> = refs.iter().map(|r| vec![r.as_str()]).collect();
    let mut g = c.benchmark_group("score_100k");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(N as u64));
    g.bench_function("bleu_corpus_13a", |b| {
        b.iter(|| black_box(bleu::corpus_bleu(&hyps, &refs1, &BleuConfig::default())))
    });
    g.bench_function("rouge_l", |b| {
        b.iter(|| {
            let s: Vec<rouge::Prf> = hyps
                .iter()
                .zip(&refs1)
                .map(|(h, r)| rouge::rouge_l(h, r, false))
                .collect();
            black_box(rouge::mean(&s))
        })
    });
    let tok = |s: &str| Tokenizer::T13a.tokens(s, false);
    let dir = Path::new(wordnet::DEFAULT_DIR);
    if dir.join("index.noun").exists() {
        let wn = WordNet::shared(dir).expect("WordNet loads");
        let p = MeteorParams::default();
        g.bench_function("meteor", |b| {
            b.iter(|| {
                let mut sum = 0.0;
                for (h, r) in hyps.iter().zip(&refs) {
                    sum += meteor::meteor(&[tok(r)], &tok(h), &wn, &p);
                }
                black_box(sum)
            })
        });
    } else {
        eprintln!("meteor skipped: wordnet-base is not installed");
    }
    g.bench_function("cider_d", |b| {
        b.iter(|| {
            let ht: Vec<Vec<String>> = hyps.iter().map(|h| tok(h)).collect();
            let rt: Vec<Vec<Vec<String>>> = refs.iter().map(|r| vec![tok(r)]).collect();
            black_box(cider::mean(&cider::cider_d(&ht, &rt, cider::SIGMA)))
        })
    });
    g.finish();

    // What `expflow score` and `score.text` run: `corpus::score`, one metric at a time,
    // with pairs spread over all cores (rayon; results identical to one thread).
    let mut g = c.benchmark_group("corpus_score_100k_all_cores");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(N as u64));
    for name in ["bleu", "rouge_l", "meteor", "cider_d"] {
        let cfg = TextConfig {
            metrics: vec![Metric::parse(name).expect("a metric")],
            ..TextConfig::default()
        };
        if name == "meteor" && !cfg.wordnet_dir.join("index.noun").exists() {
            continue;
        }
        g.bench_function(name, |b| {
            b.iter(|| black_box(corpus::score(&hyps, &refs1, &cfg).expect("scores")))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
