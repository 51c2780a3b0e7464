//! Parity of expflow's metrics with the reference implementations (sacrebleu 2.6.0,
//! rouge-score 0.1.2, NLTK 3.10.4, pycocoevalcap 1.2) on the stored fixtures
//! `tests/fixtures/{pairs.jsonl,reference.json}`, made by `make_reference.py`.
//! Every value must agree within 1e-6 (BLEU on sacrebleu's 0-100 scale).

use std::path::{Path, PathBuf};

use expflow_metrics::bleu::{self, BleuConfig, Smooth};
use expflow_metrics::cider;
use expflow_metrics::meteor::{self, MeteorParams};
use expflow_metrics::porter;
use expflow_metrics::rouge;
use expflow_metrics::tokenize::Tokenizer;
use expflow_metrics::wordnet::{self, WordNet};
use serde_json::Value;

const TOL: f64 = 1e-6;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Data {
    hyps: Vec<String>,
    refs: Vec<Vec<String>>,
    reference: Value,
}

fn load() -> Data {
    let text = std::fs::read_to_string(dir().join("pairs.jsonl")).unwrap();
    let mut hyps = Vec::new();
    let mut refs = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        hyps.push(v["hyp"].as_str().unwrap().to_string());
        refs.push(
            v["refs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect(),
        );
    }
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap())
            .unwrap();
    assert_eq!(reference["pairs"].as_array().unwrap().len(), hyps.len());
    assert!(hyps.len() >= 300);
    Data {
        hyps,
        refs,
        reference,
    }
}

/// Tracks the largest difference of one metric and fails on any above `TOL`.
struct Diff {
    name: String,
    max: f64,
    failures: Vec<String>,
}

impl Diff {
    fn new(name: &str) -> Diff {
        Diff {
            name: name.into(),
            max: 0.0,
            failures: Vec::new(),
        }
    }

    fn check(&mut self, what: impl std::fmt::Display, ours: f64, theirs: f64) {
        let d = (ours - theirs).abs();
        self.max = self.max.max(d);
        if d > TOL || d.is_nan() {
            self.failures
                .push(format!("{what}: ours {ours} reference {theirs}"));
        }
    }

    fn finish(self) {
        eprintln!("{}: max abs diff {:e}", self.name, self.max);
        assert!(
            self.failures.is_empty(),
            "{}: {} disagreements, first: {:?}",
            self.name,
            self.failures.len(),
            &self.failures[..self.failures.len().min(5)]
        );
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

#[test]
fn bleu_agrees_with_sacrebleu() {
    let d = load();
    for (tok, name) in [
        (Tokenizer::T13a, "13a"),
        (Tokenizer::Intl, "intl"),
        (Tokenizer::Zh, "zh"),
        (Tokenizer::Char, "char"),
    ] {
        let mut diff = Diff::new(&format!("bleu {name}"));
        let cfg = BleuConfig {
            tokenizer: tok,
            ..BleuConfig::default()
        };
        let c = bleu::corpus_bleu(&d.hyps, &d.refs, &cfg);
        let r = &d.reference["corpus"][format!("bleu_{name}")];
        diff.check("corpus score", c.score, f(&r["score"]));
        diff.check("corpus bp", c.bp, f(&r["bp"]));
        assert_eq!(c.stats.sys_len, r["sys_len"].as_u64().unwrap());
        assert_eq!(c.stats.ref_len, r["ref_len"].as_u64().unwrap());
        for n in 0..4 {
            diff.check(
                format!("precision {n}"),
                c.precisions[n],
                f(&r["precisions"][n]),
            );
            diff.check(
                format!("raw precision {n}"),
                c.stats.precision(n) * 100.0,
                f(&r["precisions_none"][n]),
            );
        }
        let sent = BleuConfig {
            effective_order: true,
            ..cfg
        };
        for (i, (h, rs)) in d.hyps.iter().zip(&d.refs).enumerate() {
            let s = bleu::sentence_bleu(h, rs, &sent);
            diff.check(
                format!("pair {i}"),
                s.score,
                f(&d.reference["pairs"][i]["bleu"][name]),
            );
        }
        diff.finish();
    }
    for (sm, smooth) in [
        ("floor", Smooth::Floor(0.1)),
        ("add-k", Smooth::AddK(1.0)),
        ("none", Smooth::None),
    ] {
        let mut diff = Diff::new(&format!("bleu 13a smooth {sm}"));
        let cfg = BleuConfig {
            smooth,
            ..BleuConfig::default()
        };
        let c = bleu::corpus_bleu(&d.hyps, &d.refs, &cfg);
        diff.check(
            "corpus",
            c.score,
            f(&d.reference["corpus"][format!("bleu_13a_{sm}")]["score"]),
        );
        let sent = BleuConfig {
            effective_order: true,
            ..cfg
        };
        for (i, (h, rs)) in d.hyps.iter().zip(&d.refs).enumerate() {
            let s = bleu::sentence_bleu(h, rs, &sent);
            diff.check(
                format!("pair {i}"),
                s.score,
                f(&d.reference["pairs"][i]["bleu"][format!("13a_{sm}")]),
            );
        }
        diff.finish();
    }
}

#[test]
fn rouge_l_agrees_with_rouge_score() {
    let d = load();
    for (stem, key) in [(false, "rouge_l"), (true, "rouge_l_stem")] {
        let mut diff = Diff::new(key);
        let mut all = Vec::new();
        for (i, (h, rs)) in d.hyps.iter().zip(&d.refs).enumerate() {
            let s = rouge::rouge_l(h, rs, stem);
            let r = &d.reference["pairs"][i][key];
            diff.check(format!("pair {i} precision"), s.precision, f(&r[0]));
            diff.check(format!("pair {i} recall"), s.recall, f(&r[1]));
            diff.check(format!("pair {i} f"), s.fmeasure, f(&r[2]));
            all.push(s);
        }
        diff.check(
            "corpus mean",
            rouge::mean(&all).fmeasure,
            f(&d.reference["corpus"][key]),
        );
        diff.finish();
    }
}

#[test]
fn porter_agrees_with_nltk() {
    let d = load();
    let map = d.reference["porter"].as_object().unwrap();
    let bad: Vec<String> = map
        .iter()
        .filter(|(w, s)| porter::stem(w) != s.as_str().unwrap())
        .map(|(w, s)| format!("{w}: ours {} nltk {}", porter::stem(w), s))
        .collect();
    eprintln!("porter: {} words, {} differ", map.len(), bad.len());
    assert!(bad.is_empty(), "{bad:?}");
}

fn tokens(s: &str) -> Vec<String> {
    Tokenizer::T13a.tokens(s, false)
}

#[test]
fn meteor_agrees_with_nltk() {
    let dir = Path::new(wordnet::DEFAULT_DIR);
    if !dir.join("index.noun").exists() {
        expflow_tests::skip::skip_or_fail(
            "WordNet is not installed (apt-get install wordnet-base)",
        );
        return;
    }
    let wn = WordNet::shared(dir).unwrap();
    let d = load();
    let mut diff = Diff::new("meteor");
    let mut sum = 0.0;
    for (i, (h, rs)) in d.hyps.iter().zip(&d.refs).enumerate() {
        let rt: Vec<Vec<String>> = rs.iter().map(|r| tokens(r)).collect();
        let s = meteor::meteor(&rt, &tokens(h), &wn, &MeteorParams::default());
        diff.check(
            format!("pair {i}"),
            s,
            f(&d.reference["pairs"][i]["meteor"]),
        );
        sum += s;
    }
    diff.check(
        "corpus mean",
        sum / d.hyps.len() as f64,
        f(&d.reference["corpus"]["meteor"]),
    );
    diff.finish();
}

#[test]
fn cider_d_agrees_with_pycocoevalcap() {
    let d = load();
    let ht: Vec<Vec<String>> = d.hyps.iter().map(|h| tokens(h)).collect();
    let rt: Vec<Vec<Vec<String>>> = d
        .refs
        .iter()
        .map(|rs| rs.iter().map(|r| tokens(r)).collect())
        .collect();
    let scores = cider::cider_d(&ht, &rt, cider::SIGMA);
    let mut diff = Diff::new("cider_d");
    for (i, s) in scores.iter().enumerate() {
        diff.check(
            format!("pair {i}"),
            *s,
            f(&d.reference["pairs"][i]["cider_d"]),
        );
    }
    diff.check(
        "corpus",
        cider::mean(&scores),
        f(&d.reference["corpus"]["cider_d"]),
    );
    diff.finish();
}
