//! ROUGE-L as Google's `rouge-score` 0.1.2 computes it: lower-case, every run of
//! characters other than `[a-z0-9]` is a separator (so non-ASCII text disappears), NLTK's
//! Porter stemmer on tokens longer than 3 characters when asked, LCS-based precision,
//! recall and F; several references keep the one with the best F (the first on ties).
//!
//! Corpus aggregation is the plain mean, or, as an option, `BootstrapAggregator`'s mid
//! value (the median of resampled means) with a seeded generator.

use crate::porter;
use crate::tokenize::{Interner, py_lower};

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

/// rouge-score's `tokenize.tokenize(text, stemmer)`.
pub fn tokenize(text: &str, stem: bool) -> Vec<String> {
    let lower = py_lower(text);
    let mut out = Vec::new();
    for tok in lower.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit())) {
        if tok.is_empty() {
            continue;
        }
        let t = if stem && tok.len() > 3 {
            porter::stem(tok)
        } else {
            tok.to_string()
        };
        if !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            out.push(t);
        }
    }
    out
}

fn lcs_len(a: &[u32], b: &[u32]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let (a, b) = if a.len() < b.len() { (b, a) } else { (a, b) };
    let mut prev = vec![0u32; b.len() + 1];
    let mut cur = vec![0u32; b.len() + 1];
    for &x in a {
        for (j, &y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()] as usize
}

fn fmeasure(p: f64, r: f64) -> f64 {
    if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    }
}

/// `_score_lcs(target, prediction)` on interned tokens.
pub fn score_lcs(target: &[u32], prediction: &[u32]) -> Prf {
    if target.is_empty() || prediction.is_empty() {
        return Prf::default();
    }
    let l = lcs_len(target, prediction) as f64;
    let precision = l / prediction.len() as f64;
    let recall = l / target.len() as f64;
    Prf {
        precision,
        recall,
        fmeasure: fmeasure(precision, recall),
    }
}

/// `score_multi`: the reference with the highest F (the first of equals).
pub fn score_multi(targets: &[Vec<u32>], prediction: &[u32]) -> Prf {
    let mut best: Option<Prf> = None;
    for t in targets {
        let s = score_lcs(t, prediction);
        if best.is_none_or(|b| s.fmeasure > b.fmeasure) {
            best = Some(s);
        }
    }
    best.unwrap_or_default()
}

/// ROUGE-L of one hypothesis against its references.
pub fn rouge_l<R: AsRef<str>>(hyp: &str, refs: &[R], stem: bool) -> Prf {
    let mut interner = Interner::default();
    let h = interner.ids(&tokenize(hyp, stem));
    let rs: Vec<Vec<u32>> = refs
        .iter()
        .map(|r| interner.ids(&tokenize(r.as_ref(), stem)))
        .collect();
    score_multi(&rs, &h)
}

/// The plain mean of each field.
pub fn mean(scores: &[Prf]) -> Prf {
    if scores.is_empty() {
        return Prf::default();
    }
    let n = scores.len() as f64;
    let mut s = Prf::default();
    for x in scores {
        s.precision += x.precision;
        s.recall += x.recall;
        s.fmeasure += x.fmeasure;
    }
    Prf {
        precision: s.precision / n,
        recall: s.recall / n,
        fmeasure: s.fmeasure / n,
    }
}

/// SplitMix64, the generator of the seeded bootstrap.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// numpy's default (linear) percentile of sorted values, `q` in 0..=100.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Low, mid and high of `BootstrapAggregator` (95% interval), with a seeded generator
/// where the original uses numpy's unseeded global one.
pub fn bootstrap(scores: &[Prf], samples: usize, seed: u64) -> [Prf; 3] {
    if scores.is_empty() || samples == 0 {
        return [Prf::default(); 3];
    }
    let mut rng = SplitMix64::new(seed);
    let n = scores.len();
    let mut means: [Vec<f64>; 3] = [vec![], vec![], vec![]];
    for _ in 0..samples {
        let mut s = [0.0f64; 3];
        for _ in 0..n {
            let x = scores[rng.below(n)];
            s[0] += x.precision;
            s[1] += x.recall;
            s[2] += x.fmeasure;
        }
        for (m, v) in means.iter_mut().zip(s) {
            m.push(v / n as f64);
        }
    }
    for m in &mut means {
        m.sort_by(f64::total_cmp);
    }
    let at = |q: f64| Prf {
        precision: percentile(&means[0], q),
        recall: percentile(&means[1], q),
        fmeasure: percentile(&means[2], q),
    };
    [at(2.5), at(50.0), at(97.5)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_drops_non_ascii_and_punctuation() {
        assert_eq!(
            tokenize("C₆H₁₂O₆ → 2CO₂, Hello!", false),
            ["c", "h", "o", "2co", "hello"]
        );
    }

    #[test]
    fn lcs_scores() {
        let s = rouge_l("the cat sat on the mat", &["the cat is on the mat"], false);
        assert!((s.fmeasure - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(rouge_l("", &["x"], false), Prf::default());
    }

    #[test]
    fn seeded_bootstrap_repeats() {
        let xs: Vec<Prf> = (0..50)
            .map(|i| Prf {
                precision: i as f64 / 50.0,
                recall: 0.5,
                fmeasure: (i % 7) as f64 / 7.0,
            })
            .collect();
        assert_eq!(bootstrap(&xs, 200, 1), bootstrap(&xs, 200, 1));
        assert_ne!(bootstrap(&xs, 200, 1)[1], bootstrap(&xs, 200, 2)[1]);
        let m = bootstrap(&xs, 2000, 7)[1].fmeasure;
        assert!((m - mean(&xs).fmeasure).abs() < 0.02);
    }
}
