//! Okapi BM25 over [`crate::tokenize()`] tokens.
//!
//! score(q, d) = Σ over query tokens t (repeats count) of
//! idf(t) · tf·(k1+1) / (tf + k1·(1 − b + b·|d|/avgdl)), with
//! idf(t) = ln(1 + (N − n_t + 0.5)/(n_t + 0.5)) (the non-negative form used by Lucene).
//! Scores are accumulated in f64 in a fixed order; ties rank by document index.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Result, RetrievalError};
use crate::hit::{Hit, top_k};
use crate::tokenize::tokenize;

/// BM25's two parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bm25Params {
    /// Term-frequency saturation (≥ 0; 1.2 is the usual default).
    pub k1: f64,
    /// Length normalisation, 0 (none) to 1 (full); 0.75 is the usual default.
    pub b: f64,
}

impl Default for Bm25Params {
    fn default() -> Self {
        Bm25Params { k1: 1.2, b: 0.75 }
    }
}

impl Bm25Params {
    pub fn validate(&self) -> Result<()> {
        if !(self.k1.is_finite() && self.k1 >= 0.0) {
            return Err(RetrievalError::param(
                "k1",
                format!("is {}; use a finite number ≥ 0 such as 1.2", self.k1),
            ));
        }
        if !(0.0..=1.0).contains(&self.b) {
            return Err(RetrievalError::param(
                "b",
                format!("is {}; use a number from 0 to 1 such as 0.75", self.b),
            ));
        }
        Ok(())
    }
}

/// A BM25 index: per-term postings `(document index, term frequency)` in document order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bm25Index {
    pub params: Bm25Params,
    /// Lowercased stopwords, removed from documents and queries (sorted).
    pub stopwords: Vec<String>,
    /// Token count of each document after stopword removal.
    pub doc_lens: Vec<u32>,
    /// Postings by term, sorted by term.
    pub postings: BTreeMap<String, Vec<(u32, u32)>>,
}

impl Bm25Index {
    /// Indexes `texts` (document `i` is `texts[i]`). `stopwords` are lowercased and matched
    /// against tokens.
    pub fn build<S: AsRef<str>>(
        texts: &[S],
        params: Bm25Params,
        stopwords: &[String],
    ) -> Result<Bm25Index> {
        params.validate()?;
        if texts.len() > u32::MAX as usize {
            return Err(RetrievalError::Data(format!(
                "{} documents is more than a BM25 index holds ({})",
                texts.len(),
                u32::MAX
            )));
        }
        let stop: BTreeSet<String> = stopwords.iter().map(|s| s.to_lowercase()).collect();
        let mut postings: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
        let mut doc_lens = Vec::with_capacity(texts.len());
        for (doc, text) in texts.iter().enumerate() {
            let mut counts: BTreeMap<String, u32> = BTreeMap::new();
            let mut len = 0u32;
            for token in tokenize(text.as_ref()) {
                if stop.contains(&token) {
                    continue;
                }
                len += 1;
                *counts.entry(token).or_default() += 1;
            }
            doc_lens.push(len);
            for (term, tf) in counts {
                postings.entry(term).or_default().push((doc as u32, tf));
            }
        }
        Ok(Bm25Index {
            params,
            stopwords: stop.into_iter().collect(),
            doc_lens,
            postings,
        })
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.doc_lens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.doc_lens.is_empty()
    }

    /// The query's tokens after stopword removal.
    pub fn query_tokens(&self, query: &str) -> Vec<String> {
        tokenize(query)
            .into_iter()
            .filter(|t| self.stopwords.binary_search(t).is_err())
            .collect()
    }

    /// The BM25 score of every document for `query`.
    pub fn scores(&self, query: &str) -> Vec<f64> {
        let n = self.len();
        let mut scores = vec![0.0f64; n];
        if n == 0 {
            return scores;
        }
        let total: u64 = self.doc_lens.iter().map(|&l| u64::from(l)).sum();
        let avgdl = (total as f64 / n as f64).max(f64::MIN_POSITIVE);
        let Bm25Params { k1, b } = self.params;
        for token in self.query_tokens(query) {
            let Some(list) = self.postings.get(&token) else {
                continue;
            };
            let df = list.len() as f64;
            let idf = (1.0 + (n as f64 - df + 0.5) / (df + 0.5)).ln();
            for &(doc, tf) in list {
                let tf = f64::from(tf);
                let len = f64::from(self.doc_lens[doc as usize]);
                let norm = k1 * (1.0 - b + b * len / avgdl);
                scores[doc as usize] += idf * tf * (k1 + 1.0) / (tf + norm);
            }
        }
        scores
    }

    /// The best `k` documents for `query` (score descending, then index ascending). Only
    /// documents sharing a token with the query are returned, so there may be fewer than `k`.
    pub fn search(&self, query: &str, k: usize) -> Vec<Hit> {
        let mut hits = top_k(self.scores(query), k);
        hits.retain(|h| h.score > 0.0);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> Vec<&'static str> {
        vec![
            "Combustion is a chemical reaction between a fuel and an oxidant.",
            "Salt water conducts electricity because of dissolved ions.",
            "Red ink diffuses faster in warm water than in cold water.",
            "Water water water everywhere, and not a drop to drink, said the long poem about the sea.",
            "燃烧是一种剧烈的化学反应。",
        ]
    }

    /// An independent, direct evaluation of the formula for one document.
    fn direct(index: &Bm25Index, docs: &[&str], query: &str, d: usize) -> f64 {
        let toks: Vec<Vec<String>> = docs.iter().map(|t| index.query_tokens(t)).collect();
        let n = docs.len() as f64;
        let avgdl = toks.iter().map(Vec::len).sum::<usize>() as f64 / n;
        let (k1, b) = (index.params.k1, index.params.b);
        index
            .query_tokens(query)
            .iter()
            .map(|q| {
                let df = toks.iter().filter(|t| t.contains(q)).count() as f64;
                let tf = toks[d].iter().filter(|t| *t == q).count() as f64;
                if df == 0.0 {
                    return 0.0;
                }
                let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
                idf * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * toks[d].len() as f64 / avgdl))
            })
            .sum()
    }

    #[test]
    fn scores_follow_the_formula() {
        let d = docs();
        let index = Bm25Index::build(&d, Bm25Params::default(), &[]).unwrap();
        for q in ["warm water ink", "chemical reaction of fuel", "化学反应"] {
            let s = index.scores(q);
            for (i, got) in s.iter().enumerate() {
                let want = direct(&index, &d, q, i);
                assert!((got - want).abs() < 1e-12, "{q} doc {i}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn ranking_prefers_the_matching_document() {
        let index = Bm25Index::build(&docs(), Bm25Params::default(), &[]).unwrap();
        assert_eq!(index.search("red ink in warm water", 1)[0].index, 2);
        assert_eq!(index.search("ions in salt water", 1)[0].index, 1);
        assert_eq!(index.search("化学反应 燃烧", 2)[0].index, 4);
        // With b = 0 (no length normalisation) the long document with three "water"s wins.
        let flat = Bm25Index::build(&docs(), Bm25Params { k1: 1.2, b: 0.0 }, &[]).unwrap();
        assert_eq!(flat.search("water", 1)[0].index, 3);
    }

    #[test]
    fn ties_break_by_document_index() {
        let same = ["blue salt", "red salt", "blue salt", "blue salt"];
        let index = Bm25Index::build(&same, Bm25Params::default(), &[]).unwrap();
        let hits = index.search("blue", 4);
        let order: Vec<usize> = hits.iter().map(|h| h.index).collect();
        assert_eq!(order, [0, 2, 3]);
        assert_eq!(hits[0].score, hits[1].score);
        // Documents without a query token are not returned.
        assert_eq!(index.search("green", 4), []);
        assert_eq!(index.search("red", 4).len(), 1);
    }

    #[test]
    fn stopwords_are_removed_from_documents_and_queries() {
        let stop = vec!["The".to_string(), "a".to_string()];
        let index = Bm25Index::build(&docs(), Bm25Params::default(), &stop).unwrap();
        assert!(!index.postings.contains_key("the"));
        assert!(!index.postings.contains_key("a"));
        assert!(index.scores("the a").iter().all(|&s| s == 0.0));
        assert_eq!(index.query_tokens("The Sea"), ["sea"]);
    }

    #[test]
    fn bad_parameters_are_refused() {
        let e = Bm25Index::build(&docs(), Bm25Params { k1: 1.2, b: 1.5 }, &[]).unwrap_err();
        assert!(e.to_string().contains("parameter `b` is 1.5"), "{e}");
        let e = Bm25Index::build(&docs(), Bm25Params { k1: -1.0, b: 0.5 }, &[]).unwrap_err();
        assert!(e.to_string().contains("parameter `k1`"), "{e}");
    }
}
