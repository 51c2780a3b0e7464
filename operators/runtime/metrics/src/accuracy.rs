//! MAC-Bench accuracy: answer extraction from a model response, then per-task, per-journal
//! and overall accuracy (overall weighted by items).
//!
//! Extraction tries, in order:
//! 1. an explicit final answer (`Final answer: B`, `the answer is (C)`, `Answer: D`; the last
//!    such statement wins);
//! 2. the probability JSON MAC's prompt asks for (`{"A": 0.1, "B": 0.7, ...}`), after
//!    stripping code fences and quotes, with a fallback to `"X": number` pairs; missing
//!    options count 0; the answer is the argmax (the first option among equals);
//! 3. the first standalone option letter;
//!
//! and otherwise the response is invalid, which counts as wrong.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use regex::Regex;

use crate::MetricsError;

/// How an answer was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    FinalAnswer,
    ProbabilityJson,
    Letter,
    Invalid,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::FinalAnswer => "final_answer",
            Method::ProbabilityJson => "probability_json",
            Method::Letter => "letter",
            Method::Invalid => "invalid",
        }
    }
}

struct Patterns {
    letters: String,
    final_answer: Regex,
    pair: Regex,
    standalone: Regex,
}

fn patterns(letters: &str) -> Result<Patterns, String> {
    let c: String = letters
        .chars()
        .map(|c| regex::escape(&c.to_string()))
        .collect();
    let mk = |p: String| Regex::new(&p).map_err(|e| format!("bad option letters `{letters}`: {e}"));
    Ok(Patterns {
        letters: letters.to_string(),
        final_answer: mk(format!(
            r"(?i:final\s+answer|the\s+answer\s+is|answer\s*[:：])\s*[:：]?\s*(?i:is\s*)?[\*\(\[\s]*([{c}])(?:[^A-Za-z0-9]|$)"
        ))?,
        pair: mk(format!(
            r#"["']([{c}])["']\s*:\s*"?([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"#
        ))?,
        standalone: mk(format!(r"(?:^|[^A-Za-z0-9_])([{c}])(?:[^A-Za-z0-9_]|$)"))?,
    })
}

fn cached(letters: &str) -> Result<Arc<Patterns>, String> {
    static CACHE: OnceLock<Mutex<Vec<Arc<Patterns>>>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cache.iter().find(|p| p.letters == letters) {
        return Ok(p.clone());
    }
    let p = Arc::new(patterns(letters)?);
    cache.push(p.clone());
    Ok(p)
}

fn first_char(s: &str) -> char {
    s.chars().next().unwrap_or(' ')
}

/// The answer letter found in `response`, and how; `None` when invalid.
pub fn extract(response: &str, letters: &str) -> Result<(Option<char>, Method), MetricsError> {
    let pats = cached(letters).map_err(MetricsError::Letters)?;
    if let Some(c) = pats.final_answer.captures_iter(response).last() {
        return Ok((Some(first_char(&c[1])), Method::FinalAnswer));
    }
    if let Some(l) = probability_argmax(response, &pats) {
        return Ok((Some(l), Method::ProbabilityJson));
    }
    if let Some(c) = pats.standalone.captures(response) {
        return Ok((Some(first_char(&c[1])), Method::Letter));
    }
    Ok((None, Method::Invalid))
}

fn probability_argmax(response: &str, pats: &Patterns) -> Option<char> {
    let cleaned = response
        .trim()
        .trim_start_matches("```json")
        .trim_start_matches("```")
        .trim_end_matches("```")
        .trim()
        .trim_matches(['\'', '"', '`'])
        .trim();
    let mut probs: BTreeMap<char, f64> = BTreeMap::new();
    let json_text = match (cleaned.find('{'), cleaned.rfind('}')) {
        (Some(a), Some(b)) if a < b => Some(&cleaned[a..=b]),
        _ => None,
    };
    if let Some(t) = json_text
        && let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(t)
    {
        for (k, v) in &m {
            let mut chars = k.trim().chars();
            if let (Some(l), None) = (chars.next(), chars.next())
                && pats.letters.contains(l)
            {
                let p = match v {
                    serde_json::Value::Number(n) => n.as_f64(),
                    serde_json::Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                };
                if let Some(p) = p {
                    probs.insert(l, p);
                }
            }
        }
    }
    if probs.is_empty() {
        for c in pats.pair.captures_iter(response) {
            if let Ok(p) = c[2].parse::<f64>() {
                probs.insert(first_char(&c[1]), p);
            }
        }
    }
    if probs.is_empty() {
        return None;
    }
    let mut best: Option<(char, f64)> = None;
    for l in pats.letters.chars() {
        let p = probs.get(&l).copied().unwrap_or(0.0);
        if best.is_none_or(|(_, b)| p > b) {
            best = Some((l, p));
        }
    }
    best.map(|(l, _)| l)
}

/// Counts of one group.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tally {
    pub correct: u64,
    pub total: u64,
    pub invalid: u64,
}

impl Tally {
    pub fn add(&mut self, correct: bool, invalid: bool) {
        self.total += 1;
        self.correct += u64::from(correct);
        self.invalid += u64::from(invalid);
    }

    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str) -> (Option<char>, Method) {
        extract(s, "ABCD").unwrap()
    }

    #[test]
    fn extraction_order() {
        assert_eq!(
            ex("I think... Final answer: C"),
            (Some('C'), Method::FinalAnswer)
        );
        assert_eq!(ex("The answer is (B)."), (Some('B'), Method::FinalAnswer));
        assert_eq!(
            ex("```json\n{\"A\": 0.1, \"B\": 0.2, \"C\": 0.6, \"D\": 0.1}\n```"),
            (Some('C'), Method::ProbabilityJson)
        );
        assert_eq!(
            ex("{\"A\": 0.5, \"B\": 0.5"),
            (Some('A'), Method::ProbabilityJson)
        );
        assert_eq!(ex("{'D': 0.9}"), (Some('D'), Method::ProbabilityJson));
        assert_eq!(ex("Option D fits best"), (Some('D'), Method::Letter));
        assert_eq!(ex("no idea"), (None, Method::Invalid));
    }
}
