//! CIDEr-D as `pycocoevalcap`'s `Cider` scorer computes it on tokenised text (tokens are
//! whitespace-separated, as its `precook` splits them): n-grams 1-4, TF-IDF vectors with
//! document frequencies from the corpus references and `log(#items)` as the reference
//! length, clipped similarity (`min(hyp, ref) * ref`), the Gaussian length penalty with
//! σ = 6, mean over n, mean over references, ×10.
//!
//! One quirk is kept on purpose: the "length" in the penalty counts bigrams, not words,
//! because the original adds term frequencies when the 0-based order `n == 1`.

use super::tokenize::{FxMap, Interner, ngram_key, ngram_order};

const N: usize = 4;
pub const SIGMA: f64 = 6.0;

/// Sorted (n-gram key, count) pairs.
type Counts = Vec<(u128, f64)>;

fn precook(ids: &[u32]) -> Counts {
    let mut keys: Vec<u128> = Vec::with_capacity(ids.len() * N);
    for k in 1..=N {
        if ids.len() < k {
            break;
        }
        keys.extend(ids.windows(k).map(ngram_key));
    }
    keys.sort_unstable();
    let mut out: Counts = Vec::with_capacity(keys.len());
    for k in keys {
        match out.last_mut() {
            Some((last, c)) if *last == k => *c += 1.0,
            _ => out.push((k, 1.0)),
        }
    }
    out
}

/// TF-IDF weights in key order, with the norm per order and the (bigram) length.
struct Vector {
    items: Vec<(u128, f64)>,
    norm: [f64; N],
    length: f64,
}

fn counts2vec(cnts: &Counts, df: &FxMap<u128, f64>, ref_len: f64) -> Vector {
    let mut items = Vec::with_capacity(cnts.len());
    let mut norm = [0.0f64; N];
    let mut length = 0.0;
    for &(k, tf) in cnts {
        let d = df.get(&k).copied().unwrap_or(0.0).max(1.0).ln();
        let n = ngram_order(k) - 1;
        let v = tf * (ref_len - d);
        items.push((k, v));
        norm[n] += v * v;
        if n == 1 {
            length += tf;
        }
    }
    Vector {
        items,
        norm: norm.map(f64::sqrt),
        length,
    }
}

fn sim(h: &Vector, r: &Vector, sigma: f64) -> [f64; N] {
    let delta = h.length - r.length;
    let mut val = [0.0f64; N];
    let (mut i, mut j) = (0, 0);
    while i < h.items.len() && j < r.items.len() {
        let (hk, hv) = h.items[i];
        let (rk, rv) = r.items[j];
        match hk.cmp(&rk) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                val[ngram_order(hk) - 1] += hv.min(rv) * rv;
                i += 1;
                j += 1;
            }
        }
    }
    let penalty = std::f64::consts::E.powf(-(delta * delta) / (2.0 * sigma * sigma));
    for (n, v) in val.iter_mut().enumerate() {
        if h.norm[n] != 0.0 && r.norm[n] != 0.0 {
            *v /= h.norm[n] * r.norm[n];
        }
        *v *= penalty;
    }
    val
}

/// Per-item CIDEr-D scores of a corpus of tokenised texts (one hypothesis and one or more
/// references per item); the corpus score is their mean. An item without references
/// scores 0.
pub fn cider_d<H: AsRef<str>, R: AsRef<str>>(
    hyps: &[Vec<H>],
    refs: &[Vec<Vec<R>>],
    sigma: f64,
) -> Vec<f64> {
    let mut interner = Interner::default();
    let ctest: Vec<Counts> = hyps.iter().map(|h| precook(&interner.ids(h))).collect();
    let crefs: Vec<Vec<Counts>> = refs
        .iter()
        .map(|rs| rs.iter().map(|r| precook(&interner.ids(r))).collect())
        .collect();
    let mut df: FxMap<u128, f64> = FxMap::default();
    let mut seen: Vec<u128> = Vec::new();
    for rs in &crefs {
        seen.clear();
        for r in rs {
            seen.extend(r.iter().map(|(k, _)| *k));
        }
        if rs.len() > 1 {
            seen.sort_unstable();
            seen.dedup();
        }
        for k in &seen {
            *df.entry(*k).or_insert(0.0) += 1.0;
        }
    }
    let ref_len = (crefs.len() as f64).ln();
    ctest
        .iter()
        .zip(&crefs)
        .map(|(t, rs)| {
            if rs.is_empty() {
                return 0.0;
            }
            let v = counts2vec(t, &df, ref_len);
            let mut score = [0.0f64; N];
            for r in rs {
                let vr = counts2vec(r, &df, ref_len);
                for (acc, s) in score.iter_mut().zip(sim(&v, &vr, sigma)) {
                    *acc += s;
                }
            }
            let mut avg = score.iter().sum::<f64>() / N as f64;
            avg /= rs.len() as f64;
            avg * 10.0
        })
        .collect()
}

/// The corpus CIDEr-D (mean of the item scores; 0 for no items).
pub fn mean(scores: &[f64]) -> f64 {
    if scores.is_empty() {
        0.0
    } else {
        scores.iter().sum::<f64>() / scores.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_texts_score_zero_and_copies_score_high() {
        let hyps = vec![vec!["a", "b", "c", "d", "e"], vec!["x", "y", "z", "w", "v"]];
        let refs = vec![
            vec![vec!["a", "b", "c", "d", "e"]],
            vec![vec!["p", "q", "r", "s", "t"]],
        ];
        let s = cider_d(&hyps, &refs, SIGMA);
        assert!((s[0] - 10.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s[1], 0.0);
    }
}
