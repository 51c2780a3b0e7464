//! The BERT text encoder against transformers on the tiny random-weight fixture
//! (tests/fixtures/make_fixtures.py).

mod common;

use candle_core::Device;
use common::{assert_close, expected, fixtures, floats, rows, strings};
use expflow_encoders::{EncoderDefaults, Pooling, TextEncoder};
use expflow_models::{ModelDir, Needs};

const TOL: f32 = 1e-4;

fn bert_dir() -> ModelDir {
    ModelDir::open(fixtures().join("bert-tiny"), Needs::Tokenizer).unwrap()
}

fn encoder(pooling: Pooling, normalize: bool, batch: usize) -> TextEncoder {
    let e = expected("bert_expected.json");
    let max_len = e["max_len"].as_u64().unwrap() as usize;
    TextEncoder::load(&bert_dir(), &Device::Cpu, pooling, normalize, max_len)
        .unwrap()
        .with_batch_size(batch)
}

#[test]
fn token_ids_and_hidden_states_match_transformers() {
    let e = expected("bert_expected.json");
    let sentences = strings(&e["sentences"]);
    let enc = encoder(Pooling::Mean, false, 3);
    let states = enc.token_states(&sentences).unwrap();
    for (i, s) in states.iter().enumerate() {
        let want_ids: Vec<u32> = e["input_ids"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(s.ids, want_ids, "ids of sentence {i}");
        let got = s.states.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_close("last_hidden", &[got], &[floats(&e["last_hidden"][i])], TOL);
    }
    // The long sentence was truncated to max_len with [SEP] kept.
    assert_eq!(states[2].ids.len(), e["max_len"].as_u64().unwrap() as usize);
}

#[test]
fn poolings_match_transformers_in_any_batch_size() {
    let e = expected("bert_expected.json");
    let sentences = strings(&e["sentences"]);
    for batch in [1, 3, 32] {
        for (pooling, normalize, key) in [
            (Pooling::Mean, false, "mean"),
            (Pooling::Mean, true, "mean_normalized"),
            (Pooling::Cls, false, "cls"),
            (Pooling::LastToken, false, "last_token"),
        ] {
            let enc = encoder(pooling, normalize, batch);
            assert_eq!(enc.dim(), 32);
            let got = enc.embed(&sentences).unwrap();
            assert_close(key, &got, &rows(&e[key]), TOL);
        }
    }
}

#[test]
fn max_pooling_is_the_elementwise_max_of_token_states() {
    let e = expected("bert_expected.json");
    let sentences = strings(&e["sentences"]);
    let got = encoder(Pooling::Max, false, 2).embed(&sentences).unwrap();
    for (i, row) in got.iter().enumerate() {
        let states = rows(&e["last_hidden"][i]);
        let want: Vec<f32> = (0..row.len())
            .map(|d| states.iter().map(|s| s[d]).fold(f32::MIN, f32::max))
            .collect();
        assert_close("max", std::slice::from_ref(row), &[want], TOL);
    }
}

#[test]
fn output_is_deterministic_and_in_input_order() {
    let e = expected("bert_expected.json");
    let sentences = strings(&e["sentences"]);
    let enc = encoder(Pooling::Mean, true, 2);
    let a = enc.embed(&sentences).unwrap();
    let b = enc.embed(&sentences).unwrap();
    assert_eq!(a, b);
    let reversed: Vec<String> = sentences.iter().rev().cloned().collect();
    let r = enc.embed(&reversed).unwrap();
    let back: Vec<Vec<f32>> = r.into_iter().rev().collect();
    assert_close("reversed", &back, &a, 1e-6);
    assert!(enc.embed(&[]).unwrap().is_empty());
}

#[test]
fn max_len_beyond_positions_is_refused() {
    let err = TextEncoder::load(&bert_dir(), &Device::Cpu, Pooling::Mean, false, 65)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("max_len 65") && err.contains("max_position_embeddings (64)"),
        "{err}"
    );
}

fn copy_dir(dst: &std::path::Path) {
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixtures().join("bert-tiny").join(f), dst.join(f)).unwrap();
    }
}

#[test]
fn sentence_transformers_files_pick_the_defaults() {
    let d = tempfile::tempdir().unwrap();
    copy_dir(d.path());
    let open = || ModelDir::open(d.path(), Needs::Tokenizer).unwrap();
    // No modules.json: mean, no normalisation, tokenizer_config's model_max_length (64).
    let def = EncoderDefaults::read(&open()).unwrap();
    assert_eq!(
        def,
        EncoderDefaults {
            pooling: Pooling::Mean,
            normalize: false,
            max_len: 64
        }
    );

    std::fs::write(
        d.path().join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
    )
    .unwrap();
    std::fs::create_dir(d.path().join("1_Pooling")).unwrap();
    std::fs::write(
        d.path().join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 32, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
    )
    .unwrap();
    std::fs::write(
        d.path().join("sentence_bert_config.json"),
        r#"{"max_seq_length": 16}"#,
    )
    .unwrap();
    let def = EncoderDefaults::read(&open()).unwrap();
    assert_eq!(
        def,
        EncoderDefaults {
            pooling: Pooling::Cls,
            normalize: true,
            max_len: 16
        }
    );
    let enc = TextEncoder::load_default(&open(), &Device::Cpu).unwrap();
    let e = expected("bert_expected.json");
    let got = enc.embed(&strings(&e["sentences"])).unwrap();
    for (g, w) in got.iter().zip(rows(&e["cls"])) {
        let norm = w.iter().map(|x| x * x).sum::<f32>().sqrt();
        let w: Vec<f32> = w.iter().map(|x| x / norm).collect();
        assert_close("cls normalised", std::slice::from_ref(g), &[w], TOL);
    }

    std::fs::write(
        d.path().join("1_Pooling/config.json"),
        r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#,
    )
    .unwrap();
    let err = EncoderDefaults::read(&open()).unwrap_err().to_string();
    assert!(
        err.contains("1_Pooling/config.json") && err.contains("several pooling modes"),
        "{err}"
    );

    std::fs::write(
        d.path().join("modules.json"),
        r#"[{"path":"","type":"sentence_transformers.models.Transformer"},
            {"path":"2_Dense","type":"sentence_transformers.models.Dense"}]"#,
    )
    .unwrap();
    let err = EncoderDefaults::read(&open()).unwrap_err().to_string();
    assert!(
        err.contains("modules.json") && err.contains("models.Dense"),
        "{err}"
    );
}

#[test]
fn unknown_model_types_are_refused() {
    let d = tempfile::tempdir().unwrap();
    copy_dir(d.path());
    let config = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    std::fs::write(
        d.path().join("config.json"),
        config.replace("\"model_type\": \"bert\"", "\"model_type\": \"t5\""),
    )
    .unwrap();
    let dir = ModelDir::open(d.path(), Needs::Tokenizer).unwrap();
    let err = TextEncoder::load(&dir, &Device::Cpu, Pooling::Mean, false, 16)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model_type `t5`")
            && err.contains("config.json")
            && err.contains("deberta-v2"),
        "{err}"
    );
}
