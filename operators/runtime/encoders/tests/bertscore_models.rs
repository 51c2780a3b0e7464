//! BERTScore on RoBERTa, DeBERTa v1 (`microsoft/deberta-large-mnli`'s architecture) and
//! DeBERTa-v3 against the real `bert-score` package (0.3.13), run live on tiny random models
//! (tests/fixtures/make_bertscore_models.py wrote them): the token ids bert-score encodes, the
//! layer-L token states, and P/R/F1 with and without idf and baseline rescaling, within 1e-4.
//!
//! The reference runs tests/fixtures/bertscore_reference.py with the LLaMA-Factory venv's
//! python (torch, transformers) and bert-score installed beside it, both of which `.ci/run`
//! provides (`$EXPFLOW_LLAMAFACTORY`, `$EXPFLOW_BERT_SCORE`); under CI=true a missing one fails.

mod common;

use std::path::PathBuf;
use std::process::Command;

use candle_core::Device;
use common::{assert_close, fixtures, floats, rows};
use expflow_encoders::{Architecture, Baseline, BertScorer};
use expflow_models::{ModelDir, Needs};
use serde_json::{Value, json};

const LAYERS: usize = 2;
/// bert-score's batch size: 3 of the 5 pairs, so both batches have padded pairs.
const BATCH: usize = 3;

/// The python that runs bert-score and the folder bert-score is installed in.
fn reference_python() -> Option<(PathBuf, PathBuf)> {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let python = match std::env::var_os("EXPFLOW_LLAMAFACTORY") {
        Some(cli) => PathBuf::from(cli).with_file_name("python"),
        None => home.join(".cache/expflow-venv/llamafactory/bin/python"),
    };
    let bert_score = std::env::var_os("EXPFLOW_BERT_SCORE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/expflow-venv/bert-score"));
    if !python.is_file() {
        expflow_tests::skip::skip_or_fail(&format!(
            "no python with torch and transformers at {} (.ci/run builds the LLaMA-Factory venv)",
            python.display()
        ));
        return None;
    }
    if !bert_score.join("bert_score-0.3.13.dist-info").is_dir() {
        expflow_tests::skip::skip_or_fail(&format!(
            "bert-score 0.3.13 is not installed in {} (.ci/run: pip install --no-deps --target \
             that folder bert-score==0.3.13; set EXPFLOW_BERT_SCORE to another one)",
            bert_score.display()
        ));
        return None;
    }
    Some((python, bert_score))
}

fn cands() -> Vec<String> {
    [
        "the student heats the flask over a flame",
        "<Narration>\nAdd 3 spatulas of yeast to the beaker.\n \n<Principle>\nanaerobic respiration",
        "  open the gas valve slowly  ",
        "record the temperature in the table, then measure the boiling point of water every ten seconds and compare the results",
        "Safety first!",
    ]
    .map(String::from)
    .to_vec()
}

fn refs() -> Vec<String> {
    [
        "a student heats the flask over a small flame",
        "<Narration>\nadd the yeast to the beaker\n<Principle>\nYeast anaerobic respiration",
        "open the valve of the gas cylinder slowly",
        "measure the temperature every ten seconds",
        "wear goggles and keep the window open",
    ]
    .map(String::from)
    .to_vec()
}

/// What bert-score computes for `model`, run live.
fn reference(model: &str, prefix_space: bool) -> Option<Value> {
    let (python, bert_score) = reference_python()?;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reference.json");
    let request = json!({
        "model": fixtures().join(model),
        "num_layers": LAYERS,
        "cands": cands(),
        "refs": refs(),
        "baseline_path": fixtures().join("bertscore_baseline.csv"),
        "batch_size": BATCH,
        "prefix_space": prefix_space,
    });
    let mut child = Command::new(&python)
        .arg(fixtures().join("bertscore_reference.py"))
        .arg(&out)
        .env("PYTHONPATH", &bert_score)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), &request).unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "bertscore_reference.py failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    Some(serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap())
}

fn ids(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn check(model: &str, arch: Architecture, prefix_space: bool) {
    let Some(want) = reference(model, prefix_space) else {
        return;
    };
    let dir = ModelDir::open(fixtures().join(model), Needs::Tokenizer).unwrap();
    assert_eq!(Architecture::of(&dir).unwrap(), arch);
    let scorer = BertScorer::load(&dir, &Device::Cpu, LAYERS, None)
        .unwrap()
        .with_prefix_space(prefix_space)
        .with_batch_size(BATCH);

    // Token ids: bert-score's `sent_encode` (prefix space for RoBERTa, truncation).
    assert_eq!(
        scorer.encode(&cands()).unwrap(),
        ids(&want["ids"]["cands"]),
        "{model}: candidate ids"
    );
    assert_eq!(
        scorer.encode(&refs()).unwrap(),
        ids(&want["ids"]["refs"]),
        "{model}: reference ids"
    );
    let longest = ids(&want["ids"]["cands"])
        .iter()
        .map(Vec::len)
        .max()
        .unwrap();
    let max_len = dir.tokenizer_config.as_ref().unwrap()["model_max_length"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(longest, max_len, "{model}: one candidate must be truncated");

    // Layer-L states of each candidate (batched and padded here; one at a time there).
    let states: Vec<Vec<Vec<f32>>> = scorer
        .token_states(&cands())
        .unwrap()
        .into_iter()
        .map(|t| t.states.to_vec2::<f32>().unwrap())
        .collect();
    for (i, (got, exp)) in states
        .into_iter()
        .zip(want["states"].as_array().unwrap())
        .enumerate()
    {
        let exp = rows(exp);
        assert_close(
            &format!("{model}: states of candidate {i}"),
            &got,
            &exp,
            1e-4,
        );
    }

    let baseline = Baseline::from_csv(&fixtures().join("bertscore_baseline.csv"), LAYERS).unwrap();
    for run in want["runs"].as_array().unwrap() {
        let idf = run["idf"].as_bool().unwrap();
        let rescale = run["rescale"].as_bool().unwrap();
        let s = scorer
            .score(&cands(), &refs(), idf, rescale.then_some(baseline))
            .unwrap();
        let what = format!("{model} idf={idf} rescale={rescale}");
        assert_close(&format!("P {what}"), &[s.p], &[floats(&run["P"])], 1e-4);
        assert_close(&format!("R {what}"), &[s.r], &[floats(&run["R"])], 1e-4);
        assert_close(&format!("F {what}"), &[s.f], &[floats(&run["F"])], 1e-4);
    }
}

/// RoBERTa as bert-score encodes it under transformers 4 (a space before each sentence),
/// the scorer's default.
#[test]
fn roberta_matches_bert_score() {
    check("roberta-tiny", Architecture::Roberta, true);
}

/// RoBERTa as bert-score encodes it under transformers 5 (the keyword ignored, no space).
#[test]
fn roberta_without_prefix_space_matches_bert_score_on_transformers_5() {
    check("roberta-tiny", Architecture::Roberta, false);
}

#[test]
fn roberta_scorer_puts_a_space_first_by_default() {
    let dir = ModelDir::open(fixtures().join("roberta-tiny"), Needs::Tokenizer).unwrap();
    let on = BertScorer::load(&dir, &Device::Cpu, LAYERS, None).unwrap();
    assert!(on.prefix_space());
    let texts = ["the flask".to_string()];
    let with = on.encode(&texts).unwrap();
    let without = on.with_prefix_space(false).encode(&texts).unwrap();
    assert_ne!(with, without);
    // DeBERTa's byte-level BPE never gets one, as in bert-score.
    let dir = ModelDir::open(fixtures().join("deberta-tiny"), Needs::Tokenizer).unwrap();
    let d = BertScorer::load(&dir, &Device::Cpu, LAYERS, None).unwrap();
    assert!(!d.prefix_space() && !d.with_prefix_space(true).prefix_space());
}

#[test]
fn deberta_large_mnli_architecture_matches_bert_score() {
    check("deberta-tiny", Architecture::Deberta, false);
}

#[test]
fn deberta_v3_matches_bert_score() {
    check("deberta-v3-tiny", Architecture::DebertaV2, false);
}
