//! all-MiniLM-L6-v2 with its real weights against sentence-transformers
//! (tests/fixtures/make_minilm_reference.py). The model directory is looked for in
//! `$EXPFLOW_MINILM_DIR`, else `$HOME/.cache/expflow-models/all-minilm-l6-v2`; the test is
//! skipped, saying so, when neither exists (under `CI=true`, which fetches it, it fails).

mod common;

use std::path::PathBuf;

use candle_core::Device;
use common::{cosine, expected, rows, strings};
use expflow_encoders::{EncoderDefaults, Pooling, TextEncoder};
use expflow_models::{ModelDir, Needs};

pub fn minilm_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("EXPFLOW_MINILM_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME")?).join(".cache/expflow-models/all-minilm-l6-v2")
        }
    };
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        expflow_tests::skip::skip_or_fail(&format!(
            "no all-MiniLM-L6-v2 directory at {} (set EXPFLOW_MINILM_DIR; see \
             tests/fixtures/make_minilm_reference.py for how to fetch it)",
            dir.display()
        ));
        None
    }
}

#[test]
fn minilm_matches_sentence_transformers() {
    let Some(root) = minilm_dir() else {
        return;
    };
    let dir = ModelDir::open(&root, Needs::Tokenizer).unwrap();
    let e = expected("minilm_expected.json");
    let defaults = EncoderDefaults::read(&dir).unwrap();
    assert_eq!(
        defaults,
        EncoderDefaults {
            pooling: Pooling::Mean,
            normalize: true,
            max_len: e["max_seq_length"].as_u64().unwrap() as usize,
        }
    );
    let enc = TextEncoder::load_default(&dir, &Device::Cpu).unwrap();
    assert_eq!(enc.dim(), 384);
    let sentences = strings(&e["sentences"]);
    let got = enc.embed(&sentences).unwrap();
    let want = rows(&e["embeddings"]);
    let mut worst = 1.0f64;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let c = cosine(g, w);
        worst = worst.min(c);
        assert!(c >= 0.9999, "sentence {i} ({:?}): cosine {c}", sentences[i]);
    }
    println!(
        "MiniLM: min cosine to sentence-transformers over {} sentences: {worst:.7}",
        got.len()
    );
}
