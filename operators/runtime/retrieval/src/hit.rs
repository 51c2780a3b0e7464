//! One search result and the deterministic top-k selection every index uses.

use std::cmp::Ordering;

/// One search result: the document's position in the index and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Position of the document in the index (its row in the input).
    pub index: usize,
    /// Higher is better: a BM25 score, an inner product or a cosine.
    pub score: f64,
}

/// The ranking order: score descending, then index ascending (so ties are deterministic).
pub fn rank_order(a: &Hit, b: &Hit) -> Ordering {
    b.score.total_cmp(&a.score).then(a.index.cmp(&b.index))
}

/// The best `k` of `scores` (one per document) in [`rank_order`].
pub fn top_k(scores: impl IntoIterator<Item = f64>, k: usize) -> Vec<Hit> {
    let mut hits: Vec<Hit> = scores
        .into_iter()
        .enumerate()
        .map(|(index, score)| Hit { index, score })
        .collect();
    if k == 0 {
        return Vec::new();
    }
    if hits.len() > k {
        hits.select_nth_unstable_by(k - 1, rank_order);
        hits.truncate(k);
    }
    hits.sort_by(rank_order);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_lower_index() {
        let hits = top_k([1.0, 3.0, 3.0, 2.0, 3.0], 3);
        let got: Vec<usize> = hits.iter().map(|h| h.index).collect();
        assert_eq!(got, [1, 2, 4]);
        let all = top_k([0.5, 0.5], 10);
        assert_eq!(all.iter().map(|h| h.index).collect::<Vec<_>>(), [0, 1]);
        assert!(top_k([1.0], 0).is_empty());
    }
}
