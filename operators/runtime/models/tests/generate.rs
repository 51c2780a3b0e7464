//! Generation behaviour on tiny random-weight models written by `tiny::write_tiny_qwen2`.

use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use expflow_models::{
    ChatMessage, FinishReason, GenRequest, Generator, ModelDir, Needs, Sampling, TinySpec,
    write_tiny_qwen2,
};

fn corpus() -> Vec<String> {
    let words = [
        "the",
        "cat",
        "reads",
        "a",
        "model",
        "river",
        "answers",
        "question",
        "retrieval",
        "paper",
    ];
    (0..200)
        .map(|i| {
            let mut s = String::new();
            for k in 0..8 {
                s.push_str(words[(i * 7 + k * k * 3 + i / 5) % words.len()]);
                s.push(' ');
            }
            s.push_str(&format!("number {i}."));
            s
        })
        .collect()
}

fn tiny(dir: &Path, seed: u64) -> Generator {
    let spec = TinySpec {
        seed,
        ..TinySpec::default()
    };
    write_tiny_qwen2(dir, &spec, &corpus()).unwrap();
    let d = ModelDir::open(dir, Needs::Tokenizer).unwrap();
    Generator::load(&d, &Device::Cpu).unwrap()
}

fn req(prompt: &str, sampling: Sampling) -> GenRequest {
    GenRequest {
        prompt: prompt.to_string(),
        images: vec![],
        videos: Vec::new(),
        sampling,
    }
}

fn greedy(max_new_tokens: usize) -> Sampling {
    Sampling {
        max_new_tokens,
        ..Sampling::default()
    }
}

const PROMPTS: [&str; 4] = [
    "the cat reads",
    "<|im_start|>user\na model answers the question number 12<|im_end|>\n<|im_start|>assistant\n",
    "river",
    "a paper on retrieval and the river and the cat",
];

#[test]
fn tiny_models_are_deterministic_and_fast() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let started = Instant::now();
    write_tiny_qwen2(a.path(), &spec, &corpus()).unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!("write_tiny_qwen2 took {secs:.3} s");
    // A debug build is several times slower than release, where this takes well under 1 s.
    assert!(secs < 5.0, "writing a tiny model took {secs} s");
    write_tiny_qwen2(b.path(), &spec, &corpus()).unwrap();
    let files = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ];
    for f in files {
        let x = std::fs::read(a.path().join(f)).unwrap();
        let y = std::fs::read(b.path().join(f)).unwrap();
        assert!(x == y, "{f} differs between two writes of the same spec");
    }
    let c = tempfile::tempdir().unwrap();
    write_tiny_qwen2(
        c.path(),
        &TinySpec {
            seed: 1,
            ..spec.clone()
        },
        &corpus(),
    )
    .unwrap();
    let x = std::fs::read(a.path().join("model.safetensors")).unwrap();
    let y = std::fs::read(c.path().join("model.safetensors")).unwrap();
    assert_ne!(x, y, "another seed must give other weights");

    let d = ModelDir::open(a.path(), Needs::Tokenizer).unwrap();
    let params: usize = d
        .tensors
        .values()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    assert!((50_000..200_000).contains(&params), "{params} parameters");
    let tok = d.tokenizer().unwrap();
    for special in [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "[Retrieval]",
        "[No Retrieval]",
        "[Relevant]",
        "[Irrelevant]",
        "<paragraph>",
        "</paragraph>",
    ] {
        let enc = tok.encode(format!("x {special} y"), false).unwrap();
        let id = tok.token_to_id(special).unwrap();
        assert!(enc.get_ids().contains(&id), "{special} is not one token");
    }
    assert!(tok.get_vocab_size(true) <= spec.vocab);
}

#[test]
fn batched_greedy_equals_unbatched_greedy() {
    let tmp = tempfile::tempdir().unwrap();
    let g = tiny(tmp.path(), 3);
    let reqs: Vec<GenRequest> = PROMPTS.iter().map(|p| req(p, greedy(16))).collect();
    let together = g.generate(&reqs).unwrap();
    for (r, t) in reqs.iter().zip(&together) {
        let alone = g.generate(std::slice::from_ref(r)).unwrap();
        assert_eq!(alone[0], *t, "prompt {:?}", r.prompt);
        assert_eq!(t.prompt_tokens, g.encode(&r.prompt).unwrap().len());
    }
    // Some prompt must actually produce tokens, or the comparison shows nothing.
    assert!(
        together
            .iter()
            .any(|t| t.completions[0].token_ids.len() >= 4)
    );
}

#[test]
fn max_new_tokens_and_eos_end_completions() {
    let tmp = tempfile::tempdir().unwrap();
    let g = tiny(tmp.path(), 5);
    let out = g
        .generate(&[req(PROMPTS[0], greedy(3)), req(PROMPTS[0], greedy(0))])
        .unwrap();
    let c = &out[0].completions[0];
    if c.finish_reason == FinishReason::Length {
        assert_eq!(c.token_ids.len(), 3);
    }
    assert_eq!(out[1].completions[0].token_ids, Vec::<u32>::new());
    assert_eq!(out[1].completions[0].finish_reason, FinishReason::Length);

    // Make the third greedy token an end-of-sequence token: generation stops before it.
    let long = g.generate(&[req(PROMPTS[1], greedy(8))]).unwrap();
    let ids = &long[0].completions[0].token_ids;
    assert!(ids.len() >= 3, "{ids:?}");
    let cut = ids.iter().position(|t| *t == ids[2]).unwrap();
    let gc = tmp.path().join("generation_config.json");
    std::fs::write(&gc, format!("{{\"eos_token_id\": [{}]}}", ids[2])).unwrap();
    let d = ModelDir::open(tmp.path(), Needs::Tokenizer).unwrap();
    let g2 = Generator::load(&d, &Device::Cpu).unwrap();
    assert!(g2.eos_ids().contains(&ids[2]));
    let out = g2.generate(&[req(PROMPTS[1], greedy(8))]).unwrap();
    let c = &out[0].completions[0];
    assert_eq!(c.token_ids, ids[..cut].to_vec());
    assert_eq!(c.finish_reason, FinishReason::Stop);
}

#[test]
fn stop_strings_cut_the_text() {
    let tmp = tempfile::tempdir().unwrap();
    let g = tiny(tmp.path(), 7);
    let free = g.generate(&[req(PROMPTS[3], greedy(12))]).unwrap();
    let text = free[0].completions[0].text.clone();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 6, "{text:?}");
    let stop: String = chars[3..5].iter().collect();
    let at = text.find(&stop).unwrap();
    let s = Sampling {
        stop: vec!["never appears \u{1F600}".into(), stop.clone()],
        ..greedy(12)
    };
    let out = g.generate(&[req(PROMPTS[3], s)]).unwrap();
    let c = &out[0].completions[0];
    assert_eq!(c.text, text[..at]);
    assert_eq!(c.finish_reason, FinishReason::Stop);
    assert!(c.token_ids.len() <= free[0].completions[0].token_ids.len());
}

#[test]
fn seeded_sampling_is_reproducible_and_independent_of_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = tiny(tmp.path(), 11);
    let s = Sampling {
        temperature: 1.0,
        top_p: 0.95,
        top_k: 50,
        n: 3,
        seed: 42,
        ..greedy(10)
    };
    let r = req(PROMPTS[0], s.clone());
    let alone = g.generate(std::slice::from_ref(&r)).unwrap();
    assert_eq!(alone[0].completions.len(), 3);
    let texts: Vec<&Vec<u32>> = alone[0].completions.iter().map(|c| &c.token_ids).collect();
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "three samples all equal: {texts:?}"
    );
    let mixed = g
        .generate(&[
            req(PROMPTS[2], s.clone()),
            r.clone(),
            req(PROMPTS[1], greedy(5)),
        ])
        .unwrap();
    assert_eq!(mixed[1], alone[0]);
    g.max_batch = 2;
    let chunked = g
        .generate(&[req(PROMPTS[3], s.clone()), r.clone()])
        .unwrap();
    assert_eq!(chunked[1], alone[0]);
    let other_seed = g
        .generate(&[req(PROMPTS[0], Sampling { seed: 43, ..s })])
        .unwrap();
    assert_ne!(other_seed[0], alone[0]);
}

#[test]
fn logprobs_agree_with_scoring_the_continuation() {
    let tmp = tempfile::tempdir().unwrap();
    let g = tiny(tmp.path(), 13);
    let s = Sampling {
        logprobs: true,
        top_logprobs: 3,
        ..greedy(8)
    };
    let out = g.generate(&[req(PROMPTS[1], s)]).unwrap();
    let c = &out[0].completions[0];
    let lps = c.logprobs.as_ref().unwrap();
    assert_eq!(lps.len(), c.token_ids.len());
    for (lp, id) in lps.iter().zip(&c.token_ids) {
        assert_eq!(lp.id, *id);
        assert_eq!(lp.top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert!((lp.top[0].1 - lp.logprob).abs() < 1e-6);
        assert!(lp.top[0].1 >= lp.top[1].1 && lp.top[1].1 >= lp.top[2].1);
        assert!(lp.logprob <= 0.0);
    }
    // Scoring the generated text in one pass gives the same numbers as the cached decode,
    // over the longest prefix whose text re-tokenises to the same ids (random byte-level
    // tokens need not form valid UTF-8).
    let k = (1..=c.token_ids.len())
        .rev()
        .find(|&k| g.encode(&g.decode(&c.token_ids[..k]).unwrap()).unwrap() == c.token_ids[..k])
        .unwrap_or(0);
    assert!(k >= 2, "only {k} tokens re-tokenise: {:?}", c.token_ids);
    let text = g.decode(&c.token_ids[..k]).unwrap();
    let scored = g
        .continuation_logprobs(PROMPTS[1], &[text.as_str()])
        .unwrap();
    assert_eq!(scored[0].len(), k);
    for (a, b) in scored[0].iter().zip(lps) {
        assert!((a - b.logprob).abs() < 1e-4, "{a} vs {}", b.logprob);
    }
    let none = g.generate(&[req(PROMPTS[1], greedy(2))]).unwrap();
    assert!(none[0].completions[0].logprobs.is_none());
}

#[test]
fn continuation_and_next_token_scores_do_not_depend_on_batching() {
    let tmp = tempfile::tempdir().unwrap();
    let g = tiny(tmp.path(), 17);
    let prompt = "a model answers";
    let conts = [
        " the question",
        " river",
        "[Retrieval] the cat reads a paper",
        "",
    ];
    let together = g.continuation_logprobs(prompt, &conts).unwrap();
    assert_eq!(together[3], Vec::<f32>::new());
    for (c, t) in conts.iter().zip(&together) {
        let alone = g.continuation_logprobs(prompt, &[c]).unwrap();
        assert_eq!(alone[0].len(), g.encode(c).unwrap().len());
        for (a, b) in alone[0].iter().zip(t) {
            assert!((a - b).abs() < 1e-5, "{c:?}: {a} vs {b}");
        }
    }
    let cands = ["[Retrieval]", "[No Retrieval]", " the", " river"];
    let next = g.next_token_logprobs(prompt, &cands).unwrap();
    let total: f64 = next.iter().map(|&v| (v as f64).exp()).sum();
    assert!(total > 0.0 && total <= 1.0 + 1e-6);
    for (c, n) in cands.iter().zip(&next) {
        let first = g.continuation_logprobs(prompt, &[c]).unwrap()[0][0];
        assert!((first - n).abs() < 1e-5, "{c}: {first} vs {n}");
    }
    assert!(g.next_token_logprobs(prompt, &[""]).is_err());
    assert!(g.continuation_logprobs("", &["x"]).is_err());
}

#[test]
fn a_generator_is_shared_across_threads_and_renders_chat() {
    fn assert_sync<T: Send + Sync>(_: &T) {}
    let tmp = tempfile::tempdir().unwrap();
    let g = tiny(tmp.path(), 19);
    assert_sync(&g);
    let msgs = [
        ChatMessage::text("system", "Be brief."),
        ChatMessage::text("user", "the cat?"),
    ];
    let prompt = g.render_chat(&msgs, true).unwrap();
    assert_eq!(prompt, expflow_models::chat::chatml(&msgs, true));
    let want = g.generate(&[req(&prompt, greedy(6))]).unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| g.generate(&[req(&prompt, greedy(6))]).unwrap()))
            .collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), want);
        }
    });
    let with_image = GenRequest {
        images: vec!["a.png".into()],
        videos: Vec::new(),
        ..req(&prompt, greedy(2))
    };
    let e = g.generate(&[with_image]).unwrap_err().to_string();
    assert!(e.contains("text-only"), "{e}");
}
