//! Choice-probability scoring through `expflow serve` over HTTP: `mcq.answer` with the
//! OpenAI-compatible backend (a one-token request with `logprobs` / `top_logprobs`) gives
//! the letter distribution the native runtime computes in one forward pass on the same
//! model, and a direct answer with the letter-probability fallback.

use expflow_tests::Project;
use expflow_tests::server::{Server, fixture};
use serde_json::{Value, json};

const PIPE: &str = r#"
pipeline: mcq_served
inputs:
  items: items.jsonl
  model: MODEL
nodes:
  items:
    op: load
    in: {src: inputs.items}
  model:
    op: command
    in: {src: inputs.model}
    out: {dir: model}
    params: {run: "mkdir -p ${out.dir} && cp -r ${in.src}/. ${out.dir}"}
  native:
    op: mcq.answer
    in: {items: items.table, model: model.dir}
    params: {backend: native, strategy: STRATEGY, answer_tokens: 4}
  served:
    op: mcq.answer
    in: {items: items.table}
    params: {backend: openai, base_url: URL, model: tiny, top_logprobs: 400, strategy: STRATEGY, answer_tokens: 4}
  native_out:
    op: export
    in: {table: native.predictions}
    params: {format: jsonl}
  served_out:
    op: export
    in: {table: served.predictions}
    params: {format: jsonl}
outputs:
  out/native.jsonl: native_out.file
  out/served.jsonl: served_out.file
  out/served_metrics.json: served.metrics
"#;

fn rows(p: &Project, rel: &str) -> Vec<Value> {
    p.read(rel)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn served_logprobs_give_the_native_choice_probabilities() {
    // The tiny fixture's vocabulary has 320 tokens: with --max-logprobs 400 every letter is
    // among the alternatives, so nothing is cut off.
    let server = Server::start_with(&fixture("tiny"), "tiny", 0, &[], &["--max-logprobs", "400"]);
    let p = Project::new();
    let items = [
        (
            "q1",
            "Which step heats the flask?\nA: cool it\nB: heat it\nC: stir it\nD: weigh it",
            "B",
        ),
        (
            "q2",
            "Which reagent is yeast?\nA: salt\nB: sugar\nC: yeast\nD: water",
            "C",
        ),
        (
            "q3",
            "Pick the first letter.\nA: one\nB: two\nC: three\nD: four",
            "",
        ),
    ];
    p.write(
        "items.jsonl",
        &items
            .iter()
            .map(|(id, q, a)| {
                json!({"id": id, "task": "text", "system": "Answer with one letter.", "input": q, "answer": a})
                    .to_string()
                    + "\n"
            })
            .collect::<String>(),
    );
    for strategy in ["choice_prob", "direct"] {
        p.write(
            "pipe.yaml",
            &PIPE
                .replace("URL", &server.base_url())
                .replace("MODEL", &fixture("tiny").to_string_lossy())
                .replace("STRATEGY", strategy),
        );
        p.run("pipe.yaml", &[]).expect_code(0);
        let (native, served) = (rows(&p, "out/native.jsonl"), rows(&p, "out/served.jsonl"));
        assert_eq!(native.len(), 3);
        for (n, s) in native.iter().zip(&served) {
            assert_eq!(n["id"], s["id"]);
            let mut sum = 0.0;
            for l in ["p_A", "p_B", "p_C", "p_D"] {
                let (a, b) = (n[l].as_f64().unwrap(), s[l].as_f64().unwrap());
                assert!(
                    (a - b).abs() < 1e-4,
                    "{strategy} {l}: native {a}, served {b}"
                );
                sum += b;
            }
            assert!((sum - 1.0).abs() < 1e-9, "{s}");
            assert_eq!(n["pred"], s["pred"], "{strategy}: {n} vs {s}");
            assert!(matches!(s["pred"].as_str(), Some("A" | "B" | "C" | "D")));
        }
        let m: Value = serde_json::from_str(&p.read("out/served_metrics.json")).unwrap();
        assert_eq!(m["scored"], 2, "the item without an answer is not scored");
        if strategy == "direct" {
            let fallback = served.iter().filter(|r| r["parsed"] == "fallback").count();
            assert_eq!(m["fallback"], fallback);
            assert!(m["tokens"].as_u64().unwrap() > 0);
        }
    }
    // Beyond its --max-logprobs the server refuses the request, as vLLM does.
    let (status, err) = server.http(
        "POST",
        "/v1/chat/completions",
        Some(
            &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1,
                     "logprobs": true, "top_logprobs": 401}),
        ),
    );
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "top_logprobs");
}
