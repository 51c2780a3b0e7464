//! Text scoring of a corpus: every metric over one list of hypotheses and their
//! references, per row and for the corpus, as the operators and `expflow score` report it.

use std::path::PathBuf;

use rayon::prelude::*;
use serde_json::{Map, Value, json};

use crate::MetricsError;
use crate::bleu::{self, BleuScore, BleuStats, Smooth};
use crate::cider;
use crate::meteor::{self, MeteorParams};
use crate::rouge::{self, Prf};
use crate::tokenize::Tokenizer;
use crate::wordnet::{self, WordNet};

/// The text metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    Bleu,
    RougeL,
    Meteor,
    CiderD,
}

impl Metric {
    pub const NAMES: [&'static str; 4] = ["bleu", "rouge_l", "meteor", "cider_d"];

    pub fn parse(s: &str) -> Option<Metric> {
        Some(match s {
            "bleu" => Metric::Bleu,
            "rouge_l" => Metric::RougeL,
            "meteor" => Metric::Meteor,
            "cider_d" => Metric::CiderD,
            _ => return None,
        })
    }
}

/// How ROUGE-L is aggregated over the corpus.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RougeAggregate {
    Mean,
    /// rouge-score's `BootstrapAggregator` mid value, seeded.
    Bootstrap {
        samples: usize,
        seed: u64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub metrics: Vec<Metric>,
    /// Tokeniser for BLEU, METEOR and CIDEr-D (ROUGE-L has its own).
    pub tokenizer: Tokenizer,
    pub lowercase: bool,
    pub smooth: Smooth,
    pub rouge_stemmer: bool,
    pub rouge_aggregate: RougeAggregate,
    pub cider_sigma: f64,
    pub meteor: MeteorParams,
    pub wordnet_dir: PathBuf,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            metrics: vec![Metric::Bleu, Metric::RougeL, Metric::Meteor, Metric::CiderD],
            tokenizer: Tokenizer::T13a,
            lowercase: false,
            smooth: Smooth::Exp,
            rouge_stemmer: false,
            rouge_aggregate: RougeAggregate::Mean,
            cider_sigma: cider::SIGMA,
            meteor: MeteorParams::default(),
            wordnet_dir: PathBuf::from(wordnet::DEFAULT_DIR),
        }
    }
}

impl TextConfig {
    pub fn has(&self, m: Metric) -> bool {
        self.metrics.contains(&m)
    }
}

/// Scores of one row (0-1 scale except CIDEr-D); `None` for metrics not asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowScores {
    /// sacrebleu's sentence BLEU (effective order, the configured smoothing).
    pub bleu: Option<f64>,
    pub rouge_l: Option<Prf>,
    pub meteor: Option<f64>,
    /// The row's CIDEr-D within this corpus (document frequencies are corpus-wide).
    pub cider_d: Option<f64>,
}

/// Corpus scores (0-1 scale except CIDEr-D).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CorpusScores {
    pub n: usize,
    pub bleu: Option<BleuScore>,
    pub rouge_l: Option<Prf>,
    pub meteor: Option<f64>,
    pub cider_d: Option<f64>,
}

impl CorpusScores {
    /// The `expflow score --json` object: `n`, `bleu`, `bleu_1`..`bleu_4` (n-gram
    /// precisions), `rouge_l` (F), `meteor`, `cider_d`, plus a few details.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("n".into(), json!(self.n));
        if let Some(b) = &self.bleu {
            m.insert("bleu".into(), json!(b.score / 100.0));
            for k in 0..4 {
                m.insert(format!("bleu_{}", k + 1), json!(b.stats.precision(k)));
            }
            m.insert("bleu_bp".into(), json!(b.bp));
            m.insert("bleu_sys_len".into(), json!(b.stats.sys_len));
            m.insert("bleu_ref_len".into(), json!(b.stats.ref_len));
        }
        if let Some(r) = &self.rouge_l {
            m.insert("rouge_l".into(), json!(r.fmeasure));
            m.insert("rouge_l_precision".into(), json!(r.precision));
            m.insert("rouge_l_recall".into(), json!(r.recall));
        }
        if let Some(x) = self.meteor {
            m.insert("meteor".into(), json!(x));
        }
        if let Some(x) = self.cider_d {
            m.insert("cider_d".into(), json!(x));
        }
        m
    }
}

/// Scores `hyps` against `refs` (one list per hypothesis; an empty list counts as one
/// empty reference).
pub fn score<H: AsRef<str> + Sync, R: AsRef<str> + Sync>(
    hyps: &[H],
    refs: &[Vec<R>],
    cfg: &TextConfig,
) -> Result<(Vec<RowScores>, CorpusScores), MetricsError> {
    assert_eq!(hyps.len(), refs.len(), "one reference list per hypothesis");
    let n = hyps.len();
    let refs: Vec<Vec<&str>> = refs
        .iter()
        .map(|rs| {
            if rs.is_empty() {
                vec![""]
            } else {
                rs.iter().map(AsRef::as_ref).collect()
            }
        })
        .collect();
    let mut rows = vec![RowScores::default(); n];
    let mut corpus = CorpusScores {
        n,
        ..CorpusScores::default()
    };
    if cfg.has(Metric::Bleu) {
        let stats: Vec<BleuStats> = bleu::corpus_stats(hyps, &refs, cfg.tokenizer, cfg.lowercase);
        for (row, s) in rows.iter_mut().zip(&stats) {
            row.bleu = Some(bleu::compute_bleu(s, cfg.smooth, true).score / 100.0);
        }
        corpus.bleu = Some(bleu::corpus_from_stats(
            &stats,
            &bleu::BleuConfig {
                tokenizer: cfg.tokenizer,
                lowercase: cfg.lowercase,
                smooth: cfg.smooth,
                effective_order: false,
            },
        ));
    }
    if cfg.has(Metric::RougeL) {
        let scores: Vec<Prf> = hyps
            .par_iter()
            .zip(&refs)
            .map(|(h, rs)| rouge::rouge_l(h.as_ref(), rs, cfg.rouge_stemmer))
            .collect();
        for (row, s) in rows.iter_mut().zip(&scores) {
            row.rouge_l = Some(*s);
        }
        corpus.rouge_l = Some(match cfg.rouge_aggregate {
            RougeAggregate::Mean => rouge::mean(&scores),
            RougeAggregate::Bootstrap { samples, seed } => {
                rouge::bootstrap(&scores, samples, seed)[1]
            }
        });
    }
    if cfg.has(Metric::Meteor) || cfg.has(Metric::CiderD) {
        let htoks: Vec<Vec<String>> = hyps
            .par_iter()
            .map(|h| cfg.tokenizer.tokens(h.as_ref(), cfg.lowercase))
            .collect();
        let rtoks: Vec<Vec<Vec<String>>> = refs
            .par_iter()
            .map(|rs| {
                rs.iter()
                    .map(|r| cfg.tokenizer.tokens(r, cfg.lowercase))
                    .collect()
            })
            .collect();
        if cfg.has(Metric::Meteor) {
            let wn = WordNet::shared(&cfg.wordnet_dir)?;
            let scores: Vec<f64> = rtoks
                .par_iter()
                .zip(&htoks)
                .map(|(r, h)| meteor::meteor(r, h, &wn, &cfg.meteor))
                .collect();
            // Summed in row order, so the corpus value does not depend on the thread count.
            let mut sum = 0.0;
            for (row, s) in rows.iter_mut().zip(scores) {
                sum += s;
                row.meteor = Some(s);
            }
            corpus.meteor = Some(if n == 0 { 0.0 } else { sum / n as f64 });
        }
        if cfg.has(Metric::CiderD) {
            let scores = cider::cider_d(&htoks, &rtoks, cfg.cider_sigma);
            for (row, s) in rows.iter_mut().zip(&scores) {
                row.cider_d = Some(*s);
            }
            corpus.cider_d = Some(cider::mean(&scores));
        }
    }
    Ok((rows, corpus))
}
