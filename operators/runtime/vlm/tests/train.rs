//! The tiny Qwen2.5-VL writer and the training interface: deterministic directories that
//! load, conversations with images labelled on assistant turns only, and batched training
//! logits equal to each sequence's own forward pass.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use expflow_models::{
    ChatMessage, ContentPart, GenRequest, IGNORE, ModelDir, Needs, Sampling, Trainable,
};
use expflow_vlm::{TinyVlmSpec, VisionLanguageModel, write_tiny_vlm};

fn corpus() -> Vec<String> {
    (0..30)
        .map(|i| format!("Which cover matches story {i}? A. the cell B. the star C. the river"))
        .collect()
}

fn image(i: usize) -> PathBuf {
    let name = if i == 0 { "a.png" } else { "b.png" };
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tiny() -> (tempfile::TempDir, VisionLanguageModel) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_vlm(dir.path(), &TinyVlmSpec::default(), &corpus()).unwrap();
    let md = ModelDir::open(dir.path(), Needs::Tokenizer).unwrap();
    let m = VisionLanguageModel::load(&md, &Device::Cpu).unwrap();
    (dir, m)
}

fn conversation(img: usize, answer: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage {
            role: "user".into(),
            content: vec![
                ContentPart::Image { path: image(img) },
                ContentPart::Text {
                    text: "Which story? A. the cell B. the star".into(),
                },
            ],
        },
        ChatMessage::text("assistant", answer),
    ]
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn the_tiny_writer_is_deterministic_and_loads() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let spec = TinyVlmSpec::default();
    write_tiny_vlm(a.path(), &spec, &corpus()).unwrap();
    write_tiny_vlm(b.path(), &spec, &corpus()).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(a.path().join(f)).unwrap(),
            std::fs::read(b.path().join(f)).unwrap(),
            "{f} differs between two writes"
        );
    }
    let other = tempfile::tempdir().unwrap();
    let mut seeded = spec.clone();
    seeded.text.seed = 1;
    write_tiny_vlm(other.path(), &seeded, &corpus()).unwrap();
    assert_ne!(
        std::fs::read(a.path().join("model.safetensors")).unwrap(),
        std::fs::read(other.path().join("model.safetensors")).unwrap()
    );
    let md = ModelDir::open(a.path(), Needs::Tokenizer).unwrap();
    let m = VisionLanguageModel::load(&md, &Device::Cpu).unwrap();
    let req = m.render_chat(&conversation(0, "A")[..1]).unwrap();
    let out = m.generate(&[req]).unwrap();
    assert_eq!(out[0].completions.len(), 1);
}

#[test]
fn image_tokens_and_prompts_are_not_labelled() {
    let (_d, m) = tiny();
    let seq = m
        .encode_chat(&conversation(0, "B. the star"), 4096)
        .unwrap();
    assert_eq!(seq.images, vec![image(0)]);
    let pad = m.config.image_token_id;
    let pads = seq.ids.iter().filter(|&&t| t == pad).count();
    let pv = m.process_images(&seq.images).unwrap();
    assert_eq!(pads, pv[0].num_tokens(m.config.vision.spatial_merge_size));
    let trained: Vec<u32> = seq
        .labels
        .iter()
        .filter(|&&l| l != IGNORE)
        .map(|&l| l as u32)
        .collect();
    assert_eq!(m.decode(&trained).unwrap(), "B. the star<|im_end|>\n");
    // The sequence is the rendered conversation with the placeholder expanded.
    let rendered = m.decode(&seq.ids).unwrap();
    assert!(rendered.starts_with("<|im_start|>system\nYou are a helpful assistant.<|im_end|>"));
    assert!(rendered.ends_with("<|im_start|>assistant\nB. the star<|im_end|>\n"));
    // A cut inside the image drops the image and cuts before its placeholder.
    let start = seq.ids.iter().position(|&t| t == pad).unwrap();
    let cut = m.encode_chat(&conversation(0, "B"), start + 2).unwrap();
    assert_eq!(cut.ids, seq.ids[..start]);
    assert!(cut.images.is_empty());
}

#[test]
fn batched_training_logits_match_each_sequence_alone() {
    let (_d, mut m) = tiny();
    m.set_differentiable(true);
    let a = m.encode_chat(&conversation(0, "A"), 4096).unwrap();
    let b = m
        .encode_chat(&conversation(1, "B. the star, long answer"), 4096)
        .unwrap();
    assert_ne!(a.ids.len(), b.ids.len());
    let both = m.train_logits(&[&a, &b]).unwrap();
    for (row, s) in [&a, &b].into_iter().enumerate() {
        let alone = m.train_logits(&[s]).unwrap();
        let n = s.ids.len();
        let part = both.narrow(0, row, 1).unwrap().narrow(1, 0, n).unwrap();
        let d = max_diff(&part, &alone);
        assert!(d < 1e-4, "row {row}: padding changed the logits by {d}");
        // And equal to the inference path's logits.
        let pv = m.process_images(&s.images).unwrap();
        let inf = m.prompt_logits(&s.ids, &pv).unwrap().unsqueeze(0).unwrap();
        let d = max_diff(&alone, &inf);
        assert!(
            d < 1e-4,
            "row {row}: training and inference logits differ by {d}"
        );
    }
}

#[test]
fn adapters_attach_to_the_language_model_only() {
    let (_d, mut m) = tiny();
    let names: Vec<String> = m.linears_mut().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"model.layers.0.self_attn.q_proj".to_string()));
    assert!(names.contains(&"lm_head".to_string()));
    assert!(names.iter().all(|n| !n.contains("visual")));
}

fn has_ffmpeg() -> bool {
    std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn videos_are_sampled_into_video_tokens_and_generate() {
    if !has_ffmpeg() {
        expflow_tests::skip::skip_or_fail("ffmpeg is not installed (apt-get install ffmpeg)");
        return;
    }
    let (dir, m) = tiny();
    // 2 s at 10 fps, 64 × 64: 4 frames at 2 fps, 56 × 56 after resizing, 2 temporal
    // patches of 4 × 4 patches: 2 · 16 / 4 = 8 video tokens.
    let video = dir.path().join("clip.mp4");
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=10",
        ])
        .args(["-t", "2", "-pix_fmt", "yuv420p", "-y"])
        .arg(&video)
        .status()
        .unwrap();
    assert!(status.success());
    let messages = vec![ChatMessage {
        role: "user".into(),
        content: vec![
            ContentPart::Video {
                path: video.clone(),
            },
            ContentPart::Text {
                text: "Narrate the step.".into(),
            },
        ],
    }];
    let req = m.render_chat(&messages).unwrap();
    assert_eq!(req.videos, vec![video.clone()]);
    let text_tokens = m.encode(&req.prompt).unwrap().len();
    let v = &m.process_videos(std::slice::from_ref(&video)).unwrap()[0];
    assert_eq!(v.pixels.grid_thw, [2, 4, 4]);
    assert!(
        (v.seconds_per_grid - 1.0).abs() < 1e-9,
        "{}",
        v.seconds_per_grid
    );
    let out = m.generate(std::slice::from_ref(&req)).unwrap();
    // The single placeholder became 8 video tokens.
    assert_eq!(out[0].prompt_tokens, text_tokens - 1 + 8);
    let again = m.generate(&[req]).unwrap();
    assert_eq!(
        out[0].completions[0].token_ids,
        again[0].completions[0].token_ids
    );
}

#[test]
fn next_token_logprobs_are_the_last_prompt_position_s() {
    let (_d, m) = tiny();
    let req = m.render_chat(&conversation(1, "A")[..1]).unwrap();
    let got = m.next_token_logprobs(&req, &["A", "B"]).unwrap();
    let pv = m.process_images(&req.images).unwrap();
    let ids = m.prompt_ids(&req.prompt, &pv).unwrap();
    let logits = m.prompt_logits(&ids, &pv).unwrap();
    let last: Vec<f32> = logits.get(ids.len() - 1).unwrap().to_vec1().unwrap();
    let max = last.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + last.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
    for (c, lp) in ["A", "B"].iter().zip(&got) {
        let id = m.encode(c).unwrap()[0] as usize;
        assert!(
            (lp - (last[id] - lse)).abs() < 1e-4,
            "{c}: {lp} vs {}",
            last[id] - lse
        );
    }
    assert!(got.iter().all(|l| *l < 0.0));
}

#[test]
fn batched_generation_equals_one_request_at_a_time() {
    let (_d, mut m) = tiny();
    let sampled = Sampling {
        max_new_tokens: 6,
        temperature: 1.0,
        seed: 3,
        n: 2,
        ..Sampling::default()
    };
    let greedy = Sampling {
        max_new_tokens: 9,
        logprobs: true,
        top_logprobs: 2,
        ..Sampling::default()
    };
    let reqs = vec![
        GenRequest {
            sampling: greedy.clone(),
            ..m.render_chat(&conversation(0, "A")[..1]).unwrap()
        },
        GenRequest {
            sampling: sampled,
            ..m.render_chat(&[ChatMessage::text("user", "Which story? A. the cell")])
                .unwrap()
        },
        GenRequest {
            sampling: greedy,
            ..m.render_chat(&conversation(1, "B")[..1]).unwrap()
        },
    ];
    m.max_batch = 8;
    let together = m.generate(&reqs).unwrap();
    m.max_batch = 1;
    let alone = m.generate(&reqs).unwrap();
    assert_eq!(together.len(), 3);
    assert_eq!(together[1].completions.len(), 2);
    for (t, a) in together.iter().zip(&alone) {
        assert_eq!(t.prompt_tokens, a.prompt_tokens);
        for (x, y) in t.completions.iter().zip(&a.completions) {
            assert_eq!(x.token_ids, y.token_ids);
            assert_eq!(x.text, y.text);
            if let (Some(lx), Some(ly)) = (&x.logprobs, &y.logprobs) {
                for (p, q) in lx.iter().zip(ly) {
                    assert!((p.logprob - q.logprob).abs() < 1e-4);
                }
            }
        }
    }
}
