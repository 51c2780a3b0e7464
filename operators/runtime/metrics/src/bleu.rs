//! BLEU as sacrebleu 2.x computes it: corpus and sentence scores, the `13a`, `intl`, `zh`
//! and `char` tokenisers, the brevity penalty against the closest reference length, and the
//! smoothing methods `none`, `floor`, `add-k` and `exp` with sacrebleu's defaults.
//!
//! ExpStar's "BLEU-1..4" are the corpus n-gram precisions without smoothing:
//! [`BleuStats::precision`].

use rayon::prelude::*;

use crate::tokenize::{FxMap, Interner, Tokenizer, ngram_key, ngram_order};

pub const MAX_ORDER: usize = 4;

/// sacrebleu's smoothing methods, with their values (sacrebleu's defaults: floor 0.1,
/// add-k 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Smooth {
    None,
    Floor(f64),
    AddK(f64),
    Exp,
}

impl Smooth {
    pub const NAMES: [&'static str; 4] = ["exp", "floor", "add-k", "none"];

    pub fn parse(name: &str, value: Option<f64>) -> Option<Smooth> {
        Some(match name {
            "none" => Smooth::None,
            "exp" => Smooth::Exp,
            "floor" => Smooth::Floor(value.unwrap_or(0.1)),
            "add-k" => Smooth::AddK(value.unwrap_or(1.0)),
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BleuConfig {
    pub tokenizer: Tokenizer,
    pub lowercase: bool,
    pub smooth: Smooth,
    /// Stop at the highest n-gram order the hypothesis has (sacrebleu's sentence BLEU).
    pub effective_order: bool,
}

impl Default for BleuConfig {
    fn default() -> Self {
        BleuConfig {
            tokenizer: Tokenizer::T13a,
            lowercase: false,
            smooth: Smooth::Exp,
            effective_order: false,
        }
    }
}

/// Sufficient statistics of one segment or a sum of them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BleuStats {
    pub sys_len: u64,
    pub ref_len: u64,
    pub correct: [u64; MAX_ORDER],
    pub total: [u64; MAX_ORDER],
}

impl BleuStats {
    pub fn add(&mut self, o: &BleuStats) {
        self.sys_len += o.sys_len;
        self.ref_len += o.ref_len;
        for n in 0..MAX_ORDER {
            self.correct[n] += o.correct[n];
            self.total[n] += o.total[n];
        }
    }

    /// The modified n-gram precision of order `n + 1` on the 0-1 scale, 0 when there are
    /// no n-grams of that order (HF `evaluate`'s `bleu` precisions, which ExpStar reports).
    pub fn precision(&self, n: usize) -> f64 {
        if self.total[n] == 0 {
            0.0
        } else {
            self.correct[n] as f64 / self.total[n] as f64
        }
    }
}

/// A BLEU result on sacrebleu's 0-100 scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BleuScore {
    pub score: f64,
    pub precisions: [f64; MAX_ORDER],
    pub bp: f64,
    pub stats: BleuStats,
}

fn my_log(x: f64) -> f64 {
    if x == 0.0 { -9_999_999_999.0 } else { x.ln() }
}

/// sacrebleu's `BLEU.compute_bleu`.
pub fn compute_bleu(stats: &BleuStats, smooth: Smooth, effective_order: bool) -> BleuScore {
    let mut correct = stats.correct.map(|c| c as f64);
    let mut total = stats.total.map(|t| t as f64);
    let (sys_len, ref_len) = (stats.sys_len as f64, stats.ref_len as f64);
    let bp = if sys_len < ref_len {
        if sys_len > 0.0 {
            (1.0 - ref_len / sys_len).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    let mut precisions = [0.0f64; MAX_ORDER];
    if correct.iter().all(|&c| c == 0.0) {
        return BleuScore {
            score: 0.0,
            precisions,
            bp,
            stats: *stats,
        };
    }
    let mut smooth_mteval = 1.0f64;
    let mut eff_order = MAX_ORDER;
    for n in 1..=MAX_ORDER {
        if let Smooth::AddK(k) = smooth
            && n > 1
        {
            correct[n - 1] += k;
            total[n - 1] += k;
        }
        if total[n - 1] == 0.0 {
            break;
        }
        if effective_order {
            eff_order = n;
        }
        if correct[n - 1] == 0.0 {
            match smooth {
                Smooth::Exp => {
                    smooth_mteval *= 2.0;
                    precisions[n - 1] = 100.0 / (smooth_mteval * total[n - 1]);
                }
                Smooth::Floor(v) => precisions[n - 1] = 100.0 * v / total[n - 1],
                _ => {}
            }
        } else {
            precisions[n - 1] = 100.0 * correct[n - 1] / total[n - 1];
        }
    }
    let mut sum = 0.0;
    for p in &precisions[..eff_order] {
        sum += my_log(*p);
    }
    BleuScore {
        score: bp * (sum / eff_order as f64).exp(),
        precisions,
        bp,
        stats: *stats,
    }
}

/// The references of one segment, pre-processed: merged (max) n-gram counts and lengths.
pub struct RefInfo {
    ngrams: FxMap<u128, u32>,
    lens: Vec<u64>,
}

fn count_ngrams(ids: &[u32], out: &mut FxMap<u128, u32>) {
    for n in 1..=MAX_ORDER {
        if ids.len() < n {
            break;
        }
        for w in ids.windows(n) {
            *out.entry(ngram_key(w)).or_insert(0) += 1;
        }
    }
}

pub fn ref_info(refs: &[Vec<u32>]) -> RefInfo {
    let mut ngrams: FxMap<u128, u32> = FxMap::default();
    let mut this = FxMap::default();
    let mut lens = Vec::with_capacity(refs.len());
    for r in refs {
        lens.push(r.len() as u64);
        this.clear();
        count_ngrams(r, &mut this);
        for (&k, &c) in &this {
            let e = ngrams.entry(k).or_insert(0);
            *e = (*e).max(c);
        }
    }
    RefInfo { ngrams, lens }
}

/// sacrebleu's `_get_closest_ref_len`: ties go to the shorter reference.
fn closest_ref_len(hyp_len: u64, ref_lens: &[u64]) -> u64 {
    let mut best: Option<(u64, u64)> = None;
    for &r in ref_lens {
        let diff = hyp_len.abs_diff(r);
        best = match best {
            None => Some((diff, r)),
            Some((d, l)) if diff < d || (diff == d && r < l) => Some((diff, r)),
            b => b,
        };
    }
    best.map_or(0, |(_, l)| l)
}

pub fn segment_stats(hyp: &[u32], refs: &RefInfo) -> BleuStats {
    let mut hyp_ngrams = FxMap::default();
    count_ngrams(hyp, &mut hyp_ngrams);
    let mut s = BleuStats {
        sys_len: hyp.len() as u64,
        ref_len: closest_ref_len(hyp.len() as u64, &refs.lens),
        ..BleuStats::default()
    };
    for (k, &c) in &hyp_ngrams {
        let n = ngram_order(*k) - 1;
        s.total[n] += u64::from(c);
        if let Some(&r) = refs.ngrams.get(k) {
            s.correct[n] += u64::from(c.min(r));
        }
    }
    s
}

/// Per-segment statistics of a corpus (one entry per hypothesis).
pub fn corpus_stats<H: AsRef<str> + Sync, R: AsRef<str> + Sync>(
    hyps: &[H],
    refs: &[Vec<R>],
    tokenizer: Tokenizer,
    lowercase: bool,
) -> Vec<BleuStats> {
    // Segments are independent: token ids are only compared within a segment, so each
    // worker thread has its own interner. Order is kept, so the result does not depend on
    // the number of threads.
    hyps.par_iter()
        .zip(refs)
        .map_init(Interner::default, |interner, (h, rs)| {
            let hyp = interner.ids(&tokenizer.tokens(h.as_ref(), lowercase));
            let rids: Vec<Vec<u32>> = rs
                .iter()
                .map(|r| interner.ids(&tokenizer.tokens(r.as_ref(), lowercase)))
                .collect();
            segment_stats(&hyp, &ref_info(&rids))
        })
        .collect()
}

/// Corpus BLEU from per-segment statistics.
pub fn corpus_from_stats(stats: &[BleuStats], cfg: &BleuConfig) -> BleuScore {
    let mut sum = BleuStats::default();
    for s in stats {
        sum.add(s);
    }
    compute_bleu(&sum, cfg.smooth, cfg.effective_order)
}

/// `sacrebleu.corpus_bleu(hyps, ref_streams)` with one list of references per hypothesis.
pub fn corpus_bleu<H: AsRef<str> + Sync, R: AsRef<str> + Sync>(
    hyps: &[H],
    refs: &[Vec<R>],
    cfg: &BleuConfig,
) -> BleuScore {
    corpus_from_stats(&corpus_stats(hyps, refs, cfg.tokenizer, cfg.lowercase), cfg)
}

/// `BLEU(...).sentence_score(hyp, refs)`: `cfg.effective_order` should be true, as
/// `sacrebleu.sentence_bleu` sets it.
pub fn sentence_bleu<R: AsRef<str> + Sync>(hyp: &str, refs: &[R], cfg: &BleuConfig) -> BleuScore {
    let refs: Vec<&str> = refs.iter().map(AsRef::as_ref).collect();
    let s = corpus_stats(&[hyp], &[refs], cfg.tokenizer, cfg.lowercase);
    compute_bleu(&s[0], cfg.smooth, cfg.effective_order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentence_bleu_of_identical_text_is_100() {
        let cfg = BleuConfig {
            effective_order: true,
            ..BleuConfig::default()
        };
        let s = sentence_bleu("the cat sat on the mat", &["the cat sat on the mat"], &cfg);
        assert!((s.score - 100.0).abs() < 1e-9);
    }

    #[test]
    fn closest_reference_prefers_the_shorter_on_ties() {
        assert_eq!(closest_ref_len(5, &[7, 3]), 3);
        assert_eq!(closest_ref_len(5, &[6, 9]), 6);
    }
}
