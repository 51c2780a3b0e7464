//! Parity with transformers' Qwen2.5-VL on the tiny random model of
//! `tests/fixtures/make_fixture.py`: image processing, the vision tower, rope positions,
//! prompt logits and greedy generation.

use std::path::{Path, PathBuf};

use candle_core::Device;
use expflow_models::{ChatMessage, ContentPart, GenRequest, ModelDir, Needs, Sampling};
use expflow_vlm::VisionLanguageModel;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn load() -> VisionLanguageModel {
    let dir = ModelDir::open(fixtures().join("tiny"), Needs::Tokenizer).unwrap();
    VisionLanguageModel::load(&dir, &Device::Cpu).unwrap()
}

fn images() -> Vec<PathBuf> {
    vec![fixtures().join("a.png"), fixtures().join("b.png")]
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn pixel_values_match_transformers() {
    let m = load();
    let exp = &expected()["pixels"];
    let pv = m.process_images(&images()).unwrap();
    let grids: Vec<Vec<i64>> = pv
        .iter()
        .map(|p| p.grid_thw.iter().map(|&x| x as i64).collect())
        .collect();
    let want: Vec<Vec<i64>> = exp["image_grid_thw"]
        .as_array()
        .unwrap()
        .iter()
        .map(ints)
        .collect();
    assert_eq!(grids, want);
    let all: Vec<f32> = pv.iter().flat_map(|p| p.data.iter().copied()).collect();
    let dim = pv[0].patch_dim;
    assert_eq!(
        vec![all.len() / dim, dim],
        ints(&exp["shape"])
            .iter()
            .map(|&x| x as usize)
            .collect::<Vec<_>>()
    );
    let row_sums: Vec<f32> = all
        .chunks(dim)
        .map(|r| r.iter().map(|&x| x as f64).sum::<f64>() as f32)
        .collect();
    let d = max_abs_diff(&row_sums, &floats(&exp["row_sums"]));
    assert!(d < 1e-3, "row sums differ by {d}");
    let stride = exp["stride"].as_u64().unwrap() as usize;
    let strided: Vec<f32> = all.iter().step_by(stride).copied().collect();
    let d = max_abs_diff(&strided, &floats(&exp["strided"]));
    assert!(d < 1e-6, "sampled pixel values differ by {d}");
}

#[test]
fn vision_tower_matches_transformers() {
    let m = load();
    let exp = &expected()["vision"];
    let pv = m.process_images(&images()).unwrap();
    let out = m.vision_features(&pv).unwrap();
    let shape: Vec<i64> = out.dims().iter().map(|&x| x as i64).collect();
    assert_eq!(shape, ints(&exp["shape"]));
    let got: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    let d = max_abs_diff(&got, &floats(&exp["values"]));
    eprintln!("vision output: max abs diff {d:e}");
    assert!(d <= 1e-4, "vision output differs by {d}");
}

#[test]
fn chat_rendering_and_rope_positions_match_transformers() {
    let m = load();
    let exp = &expected()["prompt"];
    let messages: Vec<ChatMessage> = vec![ChatMessage {
        role: "user".into(),
        content: vec![
            ContentPart::Image {
                path: images()[0].clone(),
            },
            ContentPart::Text {
                text: "What is in it? And".into(),
            },
            ContentPart::Image {
                path: images()[1].clone(),
            },
            ContentPart::Text {
                text: " the cat?".into(),
            },
        ],
    }];
    let req = m.render_chat(&messages).unwrap();
    assert_eq!(req.prompt, exp["expanded"].as_str().unwrap());
    assert_eq!(req.images, images());
    let pv = m.process_images(&req.images).unwrap();
    let ids = m.prompt_ids(&req.prompt, &pv).unwrap();
    let want_ids: Vec<u32> = ints(&exp["ids"]).iter().map(|&x| x as u32).collect();
    assert_eq!(ids, want_ids);
    // The unexpanded prompt (one pad per image) gives the same ids.
    let short = m
        .prompt_ids(exp["rendered"].as_str().unwrap(), &pv)
        .unwrap();
    assert_eq!(short, want_ids);
    let pos = m.positions(&ids, &pv).unwrap();
    let want: Vec<Vec<i64>> = exp["position_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ints)
        .collect();
    assert_eq!(pos.rows.to_vec(), want);
    assert_eq!(pos.delta, exp["rope_delta"].as_i64().unwrap());
}

#[test]
fn prompt_logits_match_transformers() {
    let m = load();
    let exp = &expected()["prompt"];
    let pv = m.process_images(&images()).unwrap();
    let ids: Vec<u32> = ints(&exp["ids"]).iter().map(|&x| x as u32).collect();
    let logits = m.prompt_logits(&ids, &pv).unwrap();
    let shape: Vec<i64> = logits.dims().iter().map(|&x| x as i64).collect();
    assert_eq!(shape, ints(&exp["logits_shape"]));
    let got: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
    let d = max_abs_diff(&got, &floats(&exp["logits"]));
    eprintln!("prompt logits: max abs diff {d:e}");
    assert!(d <= 1e-4, "logits differ by {d}");
}

#[test]
fn greedy_generation_matches_transformers() {
    let m = load();
    let exp = &expected()["prompt"];
    let want: Vec<u32> = ints(&exp["greedy_new_ids"])
        .iter()
        .map(|&x| x as u32)
        .collect();
    let req = GenRequest {
        prompt: exp["rendered"].as_str().unwrap().to_string(),
        images: images(),
        videos: Vec::new(),
        sampling: Sampling {
            max_new_tokens: want.len(),
            ..Sampling::default()
        },
    };
    let out = m.generate(std::slice::from_ref(&req)).unwrap();
    assert_eq!(out[0].prompt_tokens, exp["ids"].as_array().unwrap().len());
    assert_eq!(out[0].completions[0].token_ids, want);
    assert_eq!(out[0].completions[0].text, m.decode(&want).unwrap());
}

#[test]
fn seeded_sampling_is_reproducible_and_stop_strings_cut() {
    let m = load();
    let exp = &expected()["prompt"];
    let sampling = Sampling {
        temperature: 1.0,
        max_new_tokens: 8,
        n: 2,
        seed: 11,
        logprobs: true,
        ..Sampling::default()
    };
    let req = GenRequest {
        prompt: exp["rendered"].as_str().unwrap().to_string(),
        images: images(),
        videos: Vec::new(),
        sampling,
    };
    let a = m.generate(std::slice::from_ref(&req)).unwrap();
    let b = m.generate(std::slice::from_ref(&req)).unwrap();
    assert_eq!(a, b);
    let c = &a[0].completions;
    assert_eq!(c.len(), 2);
    assert_ne!(
        c[0].token_ids, c[1].token_ids,
        "two samples with different indices should differ"
    );
    let lp = c[0].logprobs.as_ref().unwrap();
    assert_eq!(lp.len(), c[0].token_ids.len());
    assert!(lp.iter().all(|t| t.logprob <= 0.0));

    // A stop string taken from the greedy text cuts the completion before it.
    let greedy = GenRequest {
        sampling: Sampling {
            max_new_tokens: 10,
            ..Sampling::default()
        },
        ..req.clone()
    };
    let full = m.generate(std::slice::from_ref(&greedy)).unwrap()[0].completions[0]
        .text
        .clone();
    let stop: String = full.chars().skip(3).take(2).collect();
    assert!(!stop.is_empty(), "greedy text too short: {full:?}");
    let cut_at = full.find(&stop).unwrap();
    let stopped = GenRequest {
        sampling: Sampling {
            max_new_tokens: 10,
            stop: vec![stop.clone()],
            ..Sampling::default()
        },
        ..req
    };
    let s = &m.generate(std::slice::from_ref(&stopped)).unwrap()[0].completions[0];
    assert_eq!(s.text, full[..cut_at]);
    assert_eq!(s.finish_reason, expflow_models::FinishReason::Stop);
}

#[test]
fn mismatched_images_are_refused() {
    let m = load();
    let exp = &expected()["prompt"];
    let req = GenRequest {
        prompt: exp["rendered"].as_str().unwrap().to_string(),
        images: images()[..1].to_vec(),
        videos: Vec::new(),
        sampling: Sampling {
            max_new_tokens: 2,
            ..Sampling::default()
        },
    };
    let e = m.generate(&[req]).unwrap_err().to_string();
    assert!(e.contains("image placeholders"), "{e}");
}
