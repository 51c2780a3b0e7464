//! METEOR as NLTK's `meteor_score` (3.9+) computes it on tokenised text: lower-cased
//! tokens; exact matches, then Porter-stem matches, then WordNet-synonym matches (the last
//! stage compares the stems left over from the second, as NLTK does); α 0.9, β 3, γ 0.5;
//! several references keep the best score.

use crate::porter;
use crate::tokenize::{FxMap, py_lower};
use crate::wordnet::WordNet;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeteorParams {
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
}

impl Default for MeteorParams {
    fn default() -> Self {
        MeteorParams {
            alpha: 0.9,
            beta: 3.0,
            gamma: 0.5,
        }
    }
}

type Enum = Vec<(usize, String)>;

fn positions(refs: &Enum) -> FxMap<&str, Vec<usize>> {
    let mut p: FxMap<&str, Vec<usize>> = FxMap::default();
    for (j, (_, w)) in refs.iter().enumerate() {
        p.entry(w.as_str()).or_default().push(j);
    }
    p
}

fn keep(list: Enum, matched: &[bool]) -> Enum {
    list.into_iter()
        .zip(matched)
        .filter(|(_, m)| !**m)
        .map(|(x, _)| x)
        .collect()
}

/// `_match_enums`: each hypothesis word, last first, takes the last unmatched equal
/// reference word.
fn match_enums(hyp: Enum, refs: Enum, matches: &mut Vec<(usize, usize)>) -> (Enum, Enum) {
    let mut hyp_matched = vec![false; hyp.len()];
    let mut ref_matched = vec![false; refs.len()];
    {
        let mut pos = positions(&refs);
        for i in (0..hyp.len()).rev() {
            if let Some(p) = pos.get_mut(hyp[i].1.as_str())
                && let Some(j) = p.pop()
            {
                hyp_matched[i] = true;
                ref_matched[j] = true;
                matches.push((hyp[i].0, refs[j].0));
            }
        }
    }
    (keep(hyp, &hyp_matched), keep(refs, &ref_matched))
}

/// `_enum_wordnetsyn_match`: a hypothesis word matches the last unmatched reference word
/// among its synonyms (and itself).
fn wordnet_match(hyp: &Enum, refs: &Enum, wn: &WordNet, matches: &mut Vec<(usize, usize)>) {
    let mut pos = positions(refs);
    for i in (0..hyp.len()).rev() {
        let word = hyp[i].1.as_str();
        let syns = wn.synonyms(word);
        let mut best: Option<(usize, &str)> = None;
        for syn in syns.iter().map(String::as_str).chain(std::iter::once(word)) {
            if let Some(&j) = pos.get(syn).and_then(|p| p.last())
                && best.is_none_or(|(b, _)| j > b)
            {
                best = Some((j, syn));
            }
        }
        if let Some((j, syn)) = best {
            if let Some(p) = pos.get_mut(syn) {
                p.pop();
            }
            matches.push((hyp[i].0, refs[j].0));
        }
    }
}

fn count_chunks(matches: &[(usize, usize)]) -> usize {
    let mut chunks = 1;
    for w in matches.windows(2) {
        if !(w[1].0 == w[0].0 + 1 && w[1].1 == w[0].1 + 1) {
            chunks += 1;
        }
    }
    chunks
}

/// `single_meteor_score(reference, hypothesis)` on tokens.
pub fn single<S: AsRef<str>, T: AsRef<str>>(
    reference: &[S],
    hypothesis: &[T],
    wn: &WordNet,
    p: &MeteorParams,
) -> f64 {
    let hyp: Enum = hypothesis
        .iter()
        .map(|w| py_lower(w.as_ref()))
        .enumerate()
        .collect();
    let refs: Enum = reference
        .iter()
        .map(|w| py_lower(w.as_ref()))
        .enumerate()
        .collect();
    let (hyp_len, ref_len) = (hyp.len(), refs.len());
    if hyp_len == 0 || ref_len == 0 {
        return 0.0;
    }
    let mut matches = Vec::new();
    let (hyp, refs) = match_enums(hyp, refs, &mut matches);
    let stem = |e: Enum| -> Enum { e.into_iter().map(|(i, w)| (i, porter::stem(&w))).collect() };
    let (hyp, refs) = match_enums(stem(hyp), stem(refs), &mut matches);
    wordnet_match(&hyp, &refs, wn, &mut matches);
    if matches.is_empty() {
        return 0.0;
    }
    matches.sort_by_key(|m| m.0);
    let m = matches.len() as f64;
    let precision = m / hyp_len as f64;
    let recall = m / ref_len as f64;
    let fmean = (precision * recall) / (p.alpha * precision + (1.0 - p.alpha) * recall);
    let frag = count_chunks(&matches) as f64 / m;
    let penalty = p.gamma * frag.powf(p.beta);
    (1.0 - penalty) * fmean
}

/// `meteor_score(references, hypothesis)`: the best over the references (0 without any).
pub fn meteor<S: AsRef<str>, T: AsRef<str>>(
    references: &[Vec<S>],
    hypothesis: &[T],
    wn: &WordNet,
    p: &MeteorParams,
) -> f64 {
    let mut best: Option<f64> = None;
    for r in references {
        let s = single(r, hypothesis, wn, p);
        if best.is_none_or(|b| s > b) {
            best = Some(s);
        }
    }
    best.unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks() {
        assert_eq!(count_chunks(&[(0, 0), (1, 1), (3, 2)]), 2);
        assert_eq!(count_chunks(&[(0, 0)]), 1);
    }
}
