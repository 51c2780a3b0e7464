//! Parity with Hugging Face transformers on the tiny random-weight fixtures written by
//! `tests/fixtures/qwen2/make_fixture.py`: logits (alone and in a left-padded batch), greedy
//! continuations, tokenisation and chat-template rendering.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use expflow_models::{
    ChatMessage, ChatTemplate, ContentPart, GenRequest, Generator, ModelDir, Needs, Qwen2, Sampling,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut m = 0f32;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(y) {
            m = m.max((p - q).abs());
        }
    }
    m
}

fn load(name: &str) -> (ModelDir, Qwen2) {
    let dir = ModelDir::open(fixtures().join(name), Needs::Tokenizer).unwrap();
    let model = Qwen2::load(&dir, candle_core::DType::F32, &Device::Cpu).unwrap();
    (dir, model)
}

/// Logits of one unpadded sequence.
fn single_logits(model: &Qwen2, seq: &[u32]) -> Vec<Vec<f32>> {
    let n = seq.len();
    let ids = Tensor::from_slice(seq, (1, n), &Device::Cpu).unwrap();
    let pos = Tensor::from_vec((0..n as u32).collect::<Vec<_>>(), (1, n), &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, n), candle_core::DType::U8, &Device::Cpu).unwrap();
    let lg = model.forward(&ids, &pos, &mask, None).unwrap();
    lg.squeeze(0).unwrap().to_vec2::<f32>().unwrap()
}

#[test]
fn logits_match_transformers_untied_and_tied() {
    let e = expected();
    for name in ["tiny", "tiny_tied"] {
        let (_, model) = load(name);
        assert_eq!(model.config.tie_word_embeddings, name == "tiny_tied");
        assert_eq!(
            model.config.rope_theta, 1e6,
            "rope_theta from transformers 5's rope_parameters"
        );
        for case in e[name]["single"].as_array().unwrap() {
            let got = single_logits(&model, &ids(&case["ids"]));
            let d = max_diff(&got, &rows(&case["logits"]));
            assert!(d <= 1e-4, "{name}: max |logit diff| {d}");
        }
    }
}

#[test]
fn left_padded_batch_matches_transformers() {
    let e = expected();
    let (_, model) = load("tiny");
    let b = &e["tiny"]["batch"];
    let seqs: Vec<Vec<u32>> = b["ids"].as_array().unwrap().iter().map(ids).collect();
    let masks: Vec<Vec<u32>> = b["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let pos: Vec<Vec<u32>> = b["position_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let (n, len) = (seqs.len(), seqs[0].len());
    let t = |v: &Vec<Vec<u32>>| Tensor::from_vec(v.concat(), (n, len), &Device::Cpu).unwrap();
    let lg = model
        .forward(&t(&seqs), &t(&pos), &t(&masks), None)
        .unwrap();
    let lg = lg.to_vec3::<f32>().unwrap();
    for (r, want) in b["logits_real_positions"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let want = rows(want);
        let got = &lg[r][len - want.len()..];
        let d = max_diff(got, &want);
        assert!(d <= 1e-4, "row {r}: max |logit diff| {d}");
    }
}

#[test]
fn incremental_decoding_with_the_cache_matches_a_full_pass() {
    let e = expected();
    let (_, model) = load("tiny");
    let seq = ids(&e["tiny"]["single"][0]["ids"]);
    let full = single_logits(&model, &seq);
    let mut cache = model.new_cache();
    let split = 4;
    let dev = Device::Cpu;
    let mut got = Vec::new();
    for (start, end) in [(0, split), (split, split + 1), (split + 1, seq.len())] {
        let n = end - start;
        let ids = Tensor::from_slice(&seq[start..end], (1, n), &dev).unwrap();
        let pos =
            Tensor::from_vec((start as u32..end as u32).collect::<Vec<_>>(), (1, n), &dev).unwrap();
        let mask = Tensor::ones((1, end), candle_core::DType::U8, &dev).unwrap();
        let lg = model.forward(&ids, &pos, &mask, Some(&mut cache)).unwrap();
        got.extend(lg.squeeze(0).unwrap().to_vec2::<f32>().unwrap());
        assert_eq!(cache.len(), end);
    }
    assert!(max_diff(&got, &full) <= 1e-5);
}

#[test]
fn greedy_continuations_match_transformers_generate() {
    let e = expected();
    for name in ["tiny", "tiny_tied"] {
        let dir = ModelDir::open(fixtures().join(name), Needs::Tokenizer).unwrap();
        let g = Generator::load(&dir, &Device::Cpu).unwrap();
        let cases = e[name]["greedy"].as_array().unwrap();
        let sampling = Sampling {
            max_new_tokens: 12,
            ..Sampling::default()
        };
        let reqs: Vec<GenRequest> = cases
            .iter()
            .map(|c| GenRequest {
                prompt: c["prompt"].as_str().unwrap().to_string(),
                images: vec![],
                videos: Vec::new(),
                sampling: sampling.clone(),
            })
            .collect();
        let out = g.generate(&reqs).unwrap();
        for (c, generation) in cases.iter().zip(&out) {
            assert_eq!(
                g.encode(c["prompt"].as_str().unwrap()).unwrap(),
                ids(&c["prompt_ids"])
            );
            assert_eq!(generation.prompt_tokens, ids(&c["prompt_ids"]).len());
            let comp = &generation.completions[0];
            assert_eq!(
                comp.token_ids,
                ids(&c["new_ids"]),
                "{name}: {}",
                c["prompt"]
            );
            let stopped = comp.finish_reason == expflow_models::FinishReason::Stop;
            assert_eq!(stopped, c["hit_eos"].as_bool().unwrap());
        }
    }
}

#[test]
fn tokenizer_and_chat_templates_match_transformers() {
    let e = expected();
    let dir = ModelDir::open(fixtures().join("tiny"), Needs::Tokenizer).unwrap();
    let g = Generator::load(&dir, &Device::Cpu).unwrap();
    for (text, want) in e["tokenized"].as_object().unwrap() {
        assert_eq!(g.encode(text).unwrap(), ids(want), "{text:?}");
    }
    // transformers 5 saves the template as chat_template.jinja.
    assert!(dir.chat_template.is_some());
    for case in e["chat"].as_array().unwrap() {
        let t = ChatTemplate::new(
            Some(case["template"].as_str().unwrap()),
            "",
            "<|im_end|>",
            &dir.root,
        )
        .unwrap();
        let msgs: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage {
                role: m["role"].as_str().unwrap().to_string(),
                content: match &m["content"] {
                    Value::String(s) => vec![ContentPart::Text { text: s.clone() }],
                    Value::Array(parts) => parts
                        .iter()
                        .map(|p| match p["type"].as_str().unwrap() {
                            "text" => ContentPart::Text {
                                text: p["text"].as_str().unwrap().into(),
                            },
                            "image" => ContentPart::Image {
                                path: p["image"].as_str().unwrap().into(),
                            },
                            _ => ContentPart::Video {
                                path: p["video"].as_str().unwrap().into(),
                            },
                        })
                        .collect(),
                    other => panic!("{other}"),
                },
            })
            .collect();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let got = t.render(&msgs, agp).unwrap();
        assert_eq!(
            got,
            case["rendered"].as_str().unwrap(),
            "template {}",
            case["name"]
        );
    }
}

#[test]
fn a_directory_of_another_shape_fails_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixtures().join("tiny").join(f), tmp.path().join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(tmp.path().join("config.json")).unwrap();
    let cfg = cfg.replace("\"intermediate_size\": 128", "\"intermediate_size\": 96");
    std::fs::write(tmp.path().join("config.json"), cfg).unwrap();
    let dir = ModelDir::open(tmp.path(), Needs::Tokenizer).unwrap();
    let e = Generator::load(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[96, 64]"),
        "{e}"
    );
}
