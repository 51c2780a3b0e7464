//! `expflow score FILE.jsonl`: scores outside a pipeline, as the sacrebleu command does.
//!
//! Rows are `{"hyp": ..., "refs": [...]}` (`refs` may also be one string), ExpStar's
//! `{"gt": {"feedback": ...}, "pred": {"feedback": ...}}`, or, for `accuracy`, MAC rows
//! `{"response": ..., "answer": ...}` (optionally with `journal` and `task`).

use std::path::Path;

use anyhow::{Context as _, Result};
use expflow_operators::score::corpus::{Metric, TextConfig};
use expflow_operators::score::{evaluate_accuracy, evaluate_text};
use serde_json::{Map, Value, json};

/// The metrics `--metrics` accepts.
pub const METRICS: [&str; 5] = ["bleu", "rouge_l", "meteor", "cider_d", "accuracy"];

fn text_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

struct Rows {
    hyps: Vec<String>,
    refs: Vec<Vec<String>>,
    responses: Vec<String>,
    answers: Vec<String>,
    journals: Vec<String>,
    tasks: Vec<String>,
}

fn read_rows(path: &Path, want_text: bool, want_accuracy: bool) -> Result<Rows> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Rows {
        hyps: vec![],
        refs: vec![],
        responses: vec![],
        answers: vec![],
        journals: vec![],
        tasks: vec![],
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}: not JSON", path.display(), i + 1))?;
        let bad = |what: &str| anyhow::anyhow!("{}: line {}: {what}", path.display(), i + 1);
        if want_text {
            if let Some(h) = v.get("hyp") {
                rows.hyps.push(text_of(Some(h)));
                rows.refs.push(match v.get("refs") {
                    Some(Value::Array(a)) => a.iter().map(|r| text_of(Some(r))).collect(),
                    Some(r) => vec![text_of(Some(r))],
                    None => return Err(bad("a row with `hyp` needs `refs`")),
                });
            } else if let (Some(p), Some(g)) = (v.get("pred"), v.get("gt")) {
                rows.hyps.push(text_of(p.get("feedback")));
                rows.refs.push(vec![text_of(g.get("feedback"))]);
            } else {
                return Err(bad(
                    "expected {\"hyp\", \"refs\"} or {\"gt\": {\"feedback\"}, \"pred\": {\"feedback\"}}",
                ));
            }
        }
        if want_accuracy {
            let (Some(r), Some(a)) = (v.get("response"), v.get("answer")) else {
                return Err(bad("accuracy needs `response` and `answer`"));
            };
            rows.responses.push(text_of(Some(r)));
            rows.answers.push(text_of(Some(a)));
            rows.journals.push(text_of(v.get("journal")));
            rows.tasks.push(text_of(v.get("task")));
        }
    }
    Ok(rows)
}

/// The `--json` object for `file`, or `Err(message)` for an unknown metric (a usage error).
fn compute(
    file: &Path,
    metrics: &str,
    wordnet_dir: Option<&Path>,
) -> Result<std::result::Result<Map<String, Value>, String>> {
    let names: Vec<&str> = metrics
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for n in &names {
        if !METRICS.contains(n) {
            return Ok(Err(format!(
                "unknown metric `{n}`; use any of {}",
                METRICS.join(", ")
            )));
        }
    }
    let text_metrics: Vec<Metric> = names.iter().filter_map(|n| Metric::parse(n)).collect();
    let want_accuracy = names.contains(&"accuracy");
    let rows = read_rows(file, !text_metrics.is_empty(), want_accuracy)?;
    let mut out = Map::new();
    out.insert("n".into(), json!(rows.hyps.len().max(rows.responses.len())));
    if !text_metrics.is_empty() {
        let mut cfg = TextConfig {
            metrics: text_metrics,
            ..TextConfig::default()
        };
        if let Some(d) = wordnet_dir {
            cfg.wordnet_dir = d.to_path_buf();
        }
        let r = evaluate_text(&rows.hyps, &rows.refs, None, false, "score", &cfg)
            .map_err(anyhow::Error::msg)?;
        out.extend(r.corpus.to_json());
    }
    if want_accuracy {
        let some = |v: &Vec<String>| v.iter().any(|s| !s.is_empty());
        let r = evaluate_accuracy(
            &rows.responses,
            &rows.answers,
            some(&rows.journals).then_some(rows.journals.as_slice()),
            some(&rows.tasks).then_some(rows.tasks.as_slice()),
            "ABCD",
        )
        .map_err(anyhow::Error::msg)?;
        out.insert("accuracy".into(), r.metrics["accuracy"].clone());
        for k in ["tasks", "journals"] {
            if let Some(v) = r.metrics.get(k) {
                out.insert(format!("accuracy_{k}"), v.clone());
            }
        }
    }
    Ok(Ok(out))
}

/// Runs `expflow score`; returns the exit code.
pub fn run(file: &Path, metrics: &str, json_out: bool, wordnet_dir: Option<&Path>) -> Result<u8> {
    let out = match compute(file, metrics, wordnet_dir)? {
        Ok(out) => out,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(2);
        }
    };
    if json_out {
        println!("{}", Value::Object(out));
    } else {
        let pct = |k: &str| {
            out.get(k)
                .and_then(Value::as_f64)
                .map(|x| format!("{:.2}", x * 100.0))
        };
        println!("n = {}", out["n"]);
        for (k, label) in [
            ("bleu", "BLEU"),
            ("bleu_1", "BLEU-1"),
            ("bleu_2", "BLEU-2"),
            ("bleu_3", "BLEU-3"),
            ("bleu_4", "BLEU-4"),
            ("rouge_l", "ROUGE-L F"),
            ("meteor", "METEOR"),
            ("accuracy", "accuracy"),
        ] {
            if let Some(v) = pct(k) {
                println!("{label:<10} {v}");
            }
        }
        if let Some(c) = out.get("cider_d").and_then(Value::as_f64) {
            println!("{:<10} {:.4}", "CIDEr-D", c);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_the_parity_fixture_like_the_reference_packages() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../operators/runtime/metrics/tests/fixtures");
        let out = compute(&dir.join("pairs.jsonl"), "bleu,rouge_l,cider_d", None)
            .unwrap()
            .unwrap();
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let c = &r["corpus"];
        let close = |a: &Value, b: f64| (a.as_f64().unwrap() - b).abs() < 1e-9;
        assert_eq!(out["n"], json!(306));
        assert!(close(
            &out["bleu"],
            c["bleu_13a"]["score"].as_f64().unwrap() / 100.0
        ));
        for k in 0..4 {
            let want = c["bleu_13a"]["precisions_none"][k].as_f64().unwrap() / 100.0;
            assert!(close(&out[&format!("bleu_{}", k + 1)], want));
        }
        assert!(close(&out["rouge_l"], c["rouge_l"].as_f64().unwrap()));
        assert!(close(&out["cider_d"], c["cider_d"].as_f64().unwrap()));
    }

    #[test]
    fn unknown_metric_is_a_usage_error() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../operators/runtime/metrics/tests/fixtures");
        let e = compute(&dir.join("pairs.jsonl"), "bleu,bert", None)
            .unwrap()
            .unwrap_err();
        assert!(e.contains("unknown metric `bert`"), "{e}");
    }

    #[test]
    fn accuracy_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mac.jsonl");
        std::fs::write(
            &p,
            "{\"response\": \"Final answer: B\", \"answer\": \"B\", \"journal\": \"Cell\"}\n\
             {\"response\": \"{\\\"A\\\": 0.9}\", \"answer\": \"C\", \"journal\": \"Cell\"}",
        )
        .unwrap();
        let out = compute(&p, "accuracy", None).unwrap().unwrap();
        assert_eq!(out["accuracy"], json!(0.5));
        assert_eq!(out["accuracy_journals"]["Cell"]["total"], json!(2));
    }
}
