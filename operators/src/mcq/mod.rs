//! Multiple-choice answering (MAC-Bench's A–D items) and its inference-time scaling:
//! - [`answer`]: `mcq.answer`, one operator whose `strategy` picks how each item is answered
//!   (a direct reply, choice probabilities, self-consistency, verification,
//!   description-then-deduction) and writes a predictions table with the option distribution,
//!   its entropy and margin;
//! - [`summary`]: `mcq.summary`, the strategy × task table of gathered predictions;
//! - here: the option distribution (choice-probability scoring through either backend), its
//!   uncertainty, the vote, and the items read from a table.

pub mod answer;
pub mod items;
pub mod predictions;
pub mod summary;

#[cfg(test)]
mod tests;

pub use answer::Answer;
pub use summary::Summary;

use expflow_engine::{Context, OpError};
use expflow_models::{ChatMessage, Sampling};
use serde_json::Value;

use crate::infer::backend::{Backend, ChatReq};

/// The option letters as the texts scored as the reply's first token.
pub const LETTER_TEXTS: [&str; 4] = ["A", "B", "C", "D"];

/// Index of the largest value (the first one on ties).
pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Log-probabilities → probabilities renormalised over them (softmax).
pub fn softmax(logprobs: &[f64]) -> Vec<f64> {
    let max = logprobs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logprobs.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Shannon entropy in nats (0 for a certain answer, ln 4 ≈ 1.386 for a uniform one).
pub fn entropy(p: &[f64]) -> f64 {
    -p.iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| x * x.ln())
        .sum::<f64>()
}

/// The most probable option's probability minus the second's.
pub fn margin(p: &[f64]) -> f64 {
    let mut s: Vec<f64> = p.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    s.first().copied().unwrap_or(0.0) - s.get(1).copied().unwrap_or(0.0)
}

/// Majority vote over the letters found in sampled answers; a tie goes to the tied letter
/// with the larger probability in `p`. `None` when no sample gave a letter.
pub fn vote(letters: &[Option<usize>], p: &[f64]) -> Option<usize> {
    let mut counts = [0usize; 4];
    for l in letters.iter().flatten() {
        counts[*l] += 1;
    }
    let top = *counts.iter().max()?;
    if top == 0 {
        return None;
    }
    (0..4).filter(|&i| counts[i] == top).max_by(|&a, &b| {
        let (pa, pb) = (p.get(a).copied(), p.get(b).copied());
        pa.unwrap_or(0.0)
            .total_cmp(&pb.unwrap_or(0.0))
            // Equal probabilities: the earlier letter.
            .then(b.cmp(&a))
    })
}

/// The distribution over `candidates` from an OpenAI `logprobs.content` list: the first
/// token's `top_logprobs` (and the token itself), each alternative counted for the candidate
/// it spells (whitespace and case ignored: `" A"` and `"A"` are both `A`; a token that is a
/// prefix of a candidate, such as `Y` of `Yes`, counts for it), renormalised over the
/// candidates found. `None` when no alternative names a candidate.
pub fn from_top_logprobs(content: &Value, candidates: &[&str]) -> Option<Vec<f64>> {
    let first = content.as_array()?.first()?;
    let mut seen = std::collections::BTreeSet::new();
    let mut mass = vec![0f64; candidates.len()];
    let entries = std::iter::once(first).chain(
        first
            .get("top_logprobs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten(),
    );
    for e in entries {
        let (Some(tok), Some(lp)) = (
            e.get("token").and_then(Value::as_str),
            e.get("logprob").and_then(Value::as_f64),
        ) else {
            continue;
        };
        // The chosen token is also among the alternatives: count each token once.
        if !seen.insert(tok.to_string()) {
            continue;
        }
        if let Some(k) = candidate_of(tok, candidates) {
            mass[k] += lp.exp();
        }
    }
    let total: f64 = mass.iter().sum();
    (total > 0.0).then(|| mass.into_iter().map(|m| m / total).collect())
}

/// The candidate a token spells: equal after trimming whitespace; for candidates longer than
/// one character also in another case, or as a prefix of that candidate alone (`Y` of `Yes`).
/// Single letters match exactly, so the article `a` is not the option `A`.
fn candidate_of(token: &str, candidates: &[&str]) -> Option<usize> {
    let t = token.trim();
    if t.is_empty() {
        return None;
    }
    if let Some(k) = candidates.iter().position(|c| *c == t) {
        return Some(k);
    }
    let long = |c: &&str| c.chars().count() > 1;
    if let Some(k) = candidates
        .iter()
        .position(|c| long(c) && c.eq_ignore_ascii_case(t))
    {
        return Some(k);
    }
    let lower = t.to_lowercase();
    let prefixed: Vec<usize> = (0..candidates.len())
        .filter(|&k| long(&candidates[k]) && candidates[k].to_lowercase().starts_with(&lower))
        .collect();
    (prefixed.len() == 1).then(|| prefixed[0])
}

/// Scores candidate first tokens of the reply through a backend: the native runtime in one
/// forward pass; an OpenAI-compatible server with one `max_tokens: 1` request asking for
/// `logprobs` and `top_logprobs` (memoised like every request).
pub struct Scorer<'a> {
    pub backend: &'a dyn Backend,
    /// `top_logprobs` asked of a server (at most its `--max-logprobs`; 20 for OpenAI/vLLM).
    pub top_logprobs: usize,
}

impl Scorer<'_> {
    /// One distribution over `candidates` per conversation (each renormalised over the
    /// candidates), with the tokens a server generated for it.
    pub fn score(
        &self,
        ctx: &Context,
        convs: &[Vec<ChatMessage>],
        candidates: &[&str],
        names: &[String],
    ) -> Result<Vec<Vec<f64>>, OpError> {
        let mut out = Vec::with_capacity(convs.len());
        let mut remote = Vec::new();
        for (i, c) in convs.iter().enumerate() {
            ctx.check_cancelled()?;
            match self.backend.choice_probabilities(ctx, c, "", candidates)? {
                Some(p) => out.push(Some(p)),
                None => {
                    out.push(None);
                    remote.push(i);
                }
            }
        }
        if !remote.is_empty() {
            let reqs: Vec<ChatReq> = remote
                .iter()
                .map(|&i| ChatReq {
                    messages: convs[i].clone(),
                    sampling: Sampling {
                        temperature: 0.0,
                        max_new_tokens: 1,
                        logprobs: true,
                        top_logprobs: self.top_logprobs,
                        ..Sampling::default()
                    },
                    send_seed: false,
                    keep_special: false,
                })
                .collect();
            let rnames: Vec<String> = remote.iter().map(|&i| names[i].clone()).collect();
            let replies = self.backend.chat(ctx, &reqs, &rnames)?;
            for (&i, r) in remote.iter().zip(&replies) {
                let lp = r.choices.first().and_then(|c| c.logprobs.as_ref());
                let p = lp.and_then(|v| from_top_logprobs(v, candidates));
                out[i] = Some(p.unwrap_or_else(|| {
                    ctx.log(&format!(
                        "{}: none of {candidates:?} among the server's top {} first tokens; uniform",
                        names[i], self.top_logprobs
                    ));
                    vec![1.0 / candidates.len() as f64; candidates.len()]
                }));
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }
}
