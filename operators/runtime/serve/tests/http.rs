//! The server over real HTTP on 127.0.0.1 with a tiny random-weight Qwen2: models list,
//! greedy and seeded completions equal to the generator's own, stop strings, logprobs,
//! usage, batching of concurrent requests, and OpenAI error objects.

mod common;

use expflow_models::{ChatMessage, GenRequest, Generator, ModelDir, Needs, Sampling};
use serde_json::{Value, json};

use common::{get, post, post_raw, start, tiny_model};

fn chat_body(user: &str, extra: Value) -> Value {
    let mut b = json!({
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "You narrate experiments."},
            {"role": "user", "content": user},
        ],
    });
    if let (Some(o), Value::Object(e)) = (b.as_object_mut(), extra) {
        o.extend(e);
    }
    b
}

fn texts(resp: &Value) -> Vec<String> {
    resp["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap().to_string())
        .collect()
}

fn direct(g: &Generator, user: &str, sampling: Sampling) -> Vec<String> {
    let msgs = [
        ChatMessage::text("system", "You narrate experiments."),
        ChatMessage::text("user", user),
    ];
    let prompt = g.render_chat(&msgs, true).unwrap();
    let out = g
        .generate(&[GenRequest {
            prompt,
            images: vec![],
            videos: Vec::new(),
            sampling,
        }])
        .unwrap();
    // As the server decodes by default (`skip_special_tokens`).
    let special = expflow_models::special::special_texts(g.tokenizer());
    out[0]
        .completions
        .iter()
        .map(|c| expflow_models::special::strip_special(&c.text, &special))
        .collect()
}

#[test]
fn chat_completions_match_the_generator_and_batch_concurrent_requests() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path());
    let g = Generator::load(
        &ModelDir::open(dir.path(), Needs::Tokenizer).unwrap(),
        &expflow_models::default_device().unwrap(),
    )
    .unwrap();
    let server = start(dir.path(), 8, 300);
    let base = server.base_url();
    let url = format!("{base}/chat/completions");

    // GET /v1/models
    let (status, models) = get(&format!("{base}/models"));
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], "tiny");

    // Greedy: the same request twice gives the same text, equal to generate() directly.
    let greedy = json!({"temperature": 0, "max_tokens": 12});
    let (s1, r1) = post(&url, &chat_body("Heat the tube.", greedy.clone()));
    let (s2, r2) = post(&url, &chat_body("Heat the tube.", greedy.clone()));
    assert_eq!((s1, s2), (200, 200), "{r1}");
    assert_eq!(texts(&r1), texts(&r2));
    let want = direct(
        &g,
        "Heat the tube.",
        Sampling {
            max_new_tokens: 12,
            ..Sampling::default()
        },
    );
    assert_eq!(texts(&r1), want);
    assert_eq!(r1["object"], "chat.completion");
    assert_eq!(r1["model"], "tiny");
    let usage = &r1["usage"];
    let prompt = g
        .render_chat(
            &[
                ChatMessage::text("system", "You narrate experiments."),
                ChatMessage::text("user", "Heat the tube."),
            ],
            true,
        )
        .unwrap();
    assert_eq!(usage["prompt_tokens"], g.encode(&prompt).unwrap().len());
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );

    // n > 1 with a seed: reproducible, equal to generate() with the same sampling, and the
    // seed matters.
    let sampled = json!({"temperature": 1.0, "n": 3, "seed": 5, "max_tokens": 8});
    let (_, a) = post(&url, &chat_body("Add yeast.", sampled.clone()));
    let (_, b) = post(&url, &chat_body("Add yeast.", sampled));
    assert_eq!(texts(&a).len(), 3);
    assert_eq!(texts(&a), texts(&b));
    let want = direct(
        &g,
        "Add yeast.",
        Sampling {
            temperature: 1.0,
            n: 3,
            seed: 5,
            max_new_tokens: 8,
            ..Sampling::default()
        },
    );
    assert_eq!(texts(&a), want);
    let (_, c) = post(
        &url,
        &chat_body(
            "Add yeast.",
            json!({"temperature": 1.0, "n": 3, "seed": 6, "max_tokens": 8}),
        ),
    );
    assert_ne!(texts(&a), texts(&c), "another seed samples other tokens");

    // stop: the text ends before the first occurrence of the stop string.
    let full = texts(&r1)[0].clone();
    let chars: Vec<char> = full.chars().collect();
    assert!(
        chars.len() >= 4,
        "the greedy text is long enough to cut: {full:?}"
    );
    let stop: String = chars[2..4].iter().collect();
    let (_, cut) = post(
        &url,
        &chat_body(
            "Heat the tube.",
            json!({"temperature": 0, "max_tokens": 12, "stop": [stop.clone()]}),
        ),
    );
    let expected = &full[..full.find(&stop).unwrap()];
    assert_eq!(texts(&cut)[0], expected);
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        r1["choices"][0]["finish_reason"], "length",
        "12 tokens of a random model"
    );

    // logprobs: one entry per completion token; greedy picks the most likely token.
    let (_, lp) = post(
        &url,
        &chat_body(
            "Heat the tube.",
            json!({"temperature": 0, "max_tokens": 6, "logprobs": true, "top_logprobs": 3}),
        ),
    );
    let content = lp["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        lp["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let chosen = t["logprob"].as_f64().unwrap();
        assert!(chosen <= 0.0);
        assert!(
            (top[0]["logprob"].as_f64().unwrap() - chosen).abs() < 1e-5,
            "{t}"
        );
    }
    assert!(
        r1["choices"][0]["logprobs"].is_null(),
        "not asked for, not sent"
    );

    // Concurrent requests are batched, and batching does not change greedy answers.
    let prompts = [
        "Heat the tube.",
        "Add yeast.",
        "Wear goggles.",
        "Stir slowly.",
        "Cool it.",
        "Weigh the salt.",
    ];
    let solo: Vec<Vec<String>> = prompts
        .iter()
        .map(|p| {
            direct(
                &g,
                p,
                Sampling {
                    max_new_tokens: 10,
                    ..Sampling::default()
                },
            )
        })
        .collect();
    let before = server.stats();
    let answers: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let url = url.clone();
                s.spawn(move || {
                    let (st, r) = post(
                        &url,
                        &chat_body(p, json!({"temperature": 0, "max_tokens": 10})),
                    );
                    assert_eq!(st, 200, "{r}");
                    texts(&r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(answers, solo);
    let after = server.stats();
    assert_eq!(
        after.batched_requests - before.batched_requests,
        prompts.len() as u64
    );
    assert!(
        after.max_batch > 1,
        "concurrent requests shared a generate call: {after:?}"
    );
    assert!(
        after.batches - before.batches < prompts.len() as u64,
        "fewer generate calls than requests: {before:?} → {after:?}"
    );
    let (_, stats) = get(&format!("http://{}/stats", server.addr));
    assert_eq!(stats["max_batch"].as_u64(), Some(after.max_batch));

    server.stop().unwrap();
}

#[test]
fn bad_requests_get_openai_error_objects() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path());
    let server = start(dir.path(), 4, 5);
    let base = server.base_url();
    let url = format!("{base}/chat/completions");
    let err = |status: u16, body: &Value| {
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        status
    };

    let (s, b) = post_raw(&url, b"{not json");
    assert_eq!(err(s, &b), 400);
    assert_eq!(b["error"]["type"], "invalid_request_error");

    let (s, b) = post(&url, &chat_body("x", json!({"temperature": 5})));
    assert_eq!(err(s, &b), 400);
    assert_eq!(b["error"]["param"], "temperature");

    let (s, b) = post(
        &url,
        &json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(err(s, &b), 404);
    assert_eq!(b["error"]["code"], "model_not_found");

    let (s, b) = post(
        &format!("{base}/embeddings"),
        &json!({"model": "tiny", "input": "x"}),
    );
    assert_eq!(err(s, &b), 404);
    assert_eq!(b["error"]["code"], "wrong_model_kind");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("chat/completions")
    );

    let (s, b) = get(&format!("{base}/nothing"));
    assert_eq!(err(s, &b), 404);

    // An image for a text-only model: the runtime's refusal, as a 400.
    let img = dir.path().join("pic.png");
    std::fs::write(&img, b"not really a png").unwrap();
    let (s, b) = post(
        &url,
        &json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": format!("file://{}", img.display())}},
            {"type": "text", "text": "what is this?"}
        ]}], "max_tokens": 2}),
    );
    assert_eq!(err(s, &b), 400, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("text-only"),
        "{b}"
    );

    // A missing image file is named.
    let (s, b) = post(
        &url,
        &json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "/no/such/file.png"}}
        ]}]}),
    );
    assert_eq!(err(s, &b), 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/no/such/file.png")
    );

    // The server still answers after all that.
    let (s, _) = post(&url, &chat_body("x", json!({"max_tokens": 2})));
    assert_eq!(s, 200);
    server.stop().unwrap();
}

/// The BERT fixture of the encoders crate (random weights, a real WordPiece tokenizer).
fn bert_fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../encoders/tests/fixtures/bert-tiny")
}

#[test]
fn encoders_serve_embeddings_equal_to_the_encoder() {
    let dir = bert_fixture();
    let loaded = expflow_serve::load(&dir, None, 16).unwrap();
    assert_eq!(loaded.name, "bert-tiny", "named after the directory");
    let server = expflow_serve::spawn(
        loaded,
        &expflow_serve::ServeConfig {
            port: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let base = server.base_url();
    let texts = ["yeast ferments sugar", "wear goggles"];
    let (s, r) = post(
        &format!("{base}/embeddings"),
        &json!({"model": "bert-tiny", "input": texts}),
    );
    assert_eq!(s, 200, "{r}");
    let md = ModelDir::open(&dir, Needs::Tokenizer).unwrap();
    let enc = expflow_encoders::TextEncoder::load_default(
        &md,
        &expflow_models::default_device().unwrap(),
    )
    .unwrap();
    let owned: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
    let want = enc.embed(&owned).unwrap();
    let data = r["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, (d, w)) in data.iter().zip(&want).enumerate() {
        assert_eq!(d["index"], i);
        let got: Vec<f32> = d["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(&got, w);
    }
    let tokens: usize = enc.tokenize(&owned).unwrap().iter().map(Vec::len).sum();
    assert_eq!(r["usage"]["prompt_tokens"], tokens);

    // One string works too; chat on an encoder and bad inputs are errors.
    let (s, one) = post(
        &format!("{base}/embeddings"),
        &json!({"input": "wear goggles"}),
    );
    assert_eq!(s, 200);
    let alone = enc.embed(&["wear goggles".to_string()]).unwrap();
    let got: Vec<f32> = one["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(got, alone[0]);
    // Padding in a batch of two changes the sums only in the last bits.
    assert!(got.iter().zip(&want[1]).all(|(a, b)| (a - b).abs() < 1e-5));
    let (s, b) = post(
        &format!("{base}/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(s, 404);
    assert_eq!(b["error"]["code"], "wrong_model_kind");
    let (s, b) = post(&format!("{base}/embeddings"), &json!({"input": [1, 2]}));
    assert_eq!(s, 400);
    assert_eq!(b["error"]["param"], "input");
    server.stop().unwrap();
}

/// Sampled replies of the tiny model, long enough to contain special tokens.
fn sampled_texts(url: &str, skip: Option<bool>) -> Vec<String> {
    let mut extra = json!({"temperature": 2.0, "n": 16, "seed": 11, "max_tokens": 48});
    if let Some(s) = skip {
        extra["skip_special_tokens"] = json!(s);
    }
    let (status, r) = post(url, &chat_body("Add yeast.", extra));
    assert_eq!(status, 200, "{r}");
    texts(&r)
}

#[test]
fn special_tokens_are_skipped_unless_the_request_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path());
    let server = start(dir.path(), 4, 5);
    let url = format!("{}/chat/completions", server.base_url());
    let special: Vec<&str> = expflow_models::tiny::SPECIAL_TOKENS.to_vec();

    // Kept: the same seeded sampling shows special tokens in the text.
    let kept = sampled_texts(&url, Some(false));
    let with_special = kept
        .iter()
        .filter(|t| special.iter().any(|s| t.contains(s)))
        .count();
    assert!(
        with_special > 0,
        "the sampled replies contain special tokens: {kept:?}"
    );

    // Default (vLLM's): none in `content`; the rest of the text is unchanged.
    let skipped = sampled_texts(&url, None);
    let explicit = sampled_texts(&url, Some(true));
    assert_eq!(skipped, explicit, "true is the default");
    assert_eq!(skipped.len(), kept.len());
    for (s, k) in skipped.iter().zip(&kept) {
        assert!(!special.iter().any(|t| s.contains(t)), "{s:?}");
        let mut stripped = k.clone();
        for t in &special {
            stripped = stripped.replace(t, "");
        }
        assert_eq!(s, &stripped);
    }

    // A bad value is a 400 naming the field.
    let (s, b) = post(&url, &chat_body("x", json!({"skip_special_tokens": "yes"})));
    assert_eq!(s, 400);
    assert_eq!(b["error"]["param"], "skip_special_tokens");
    server.stop().unwrap();
}

#[test]
fn an_api_key_guards_the_v1_routes() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path());
    let loaded = expflow_serve::load(dir.path(), Some("tiny".into()), 4).unwrap();
    let server = expflow_serve::spawn(
        loaded,
        &expflow_serve::ServeConfig {
            port: 0,
            api_key: Some(expflow_serve::ApiKey("k-123".into())),
            ..Default::default()
        },
    )
    .unwrap();
    let base = server.base_url();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let status = |auth: Option<&str>| {
        let mut req = agent.get(format!("{base}/models"));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        req.call().unwrap().status().as_u16()
    };
    assert_eq!(status(None), 401);
    assert_eq!(status(Some("Bearer k-12")), 401);
    assert_eq!(status(Some("Bearer k-1234")), 401);
    assert_eq!(status(Some("Bearer k-123")), 200);
    let (s, b) = post(
        &format!("{base}/chat/completions"),
        &chat_body("x", json!({"max_tokens": 2})),
    );
    assert_eq!(s, 401);
    assert_eq!(b["error"]["code"], "invalid_api_key");
    let (s, _) = get(&format!("http://{}/health", server.addr));
    assert_eq!(s, 200, "health needs no key");
    server.stop().unwrap();
}
