//! The inference operators against `expflow serve`'s library on 127.0.0.1 and against the
//! native runtime: `infer.chat` (openai and native backends agree; the memo makes a re-run
//! send nothing; the API key stays out of logs and outputs) and `expstar.rag_infer` (native,
//! with the retrieval-token threshold) feeding `expstar.postprocess`.
//!
//! One test per file section sets an environment variable; they use distinct names.

mod common;

use std::path::{Path, PathBuf};

use expflow_engine::PortType;
use expflow_engine::harness::Harness;
use expflow_operators::expstar::{self, Postprocess};
use expflow_operators::infer::{Chat, RagInfer};
use expflow_operators::io::{Export, Load};
use serde_json::{Value, json};

use common::{start, tiny_model};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn jsonl(rows: &[Value]) -> String {
    rows.iter().map(|r| r.to_string() + "\n").collect()
}

fn read_jsonl(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn table(h: &mut Harness, src: &Path) -> PathBuf {
    h.run(&Load, &[("src", PortType::File, src)], json!({}), &[])
        .unwrap()
        .outputs["table"]
        .clone()
}

fn rows_of(h: &mut Harness, t: &Path) -> Vec<Value> {
    let f = h
        .run(
            &Export,
            &[("table", PortType::Table, t)],
            json!({"format": "jsonl"}),
            &[],
        )
        .unwrap()
        .outputs["file"]
        .clone();
    read_jsonl(&f)
}

fn report(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

const KEY_VAR: &str = "EXPFLOW_TEST_SERVE_CHAT_KEY";
const KEY: &str = "sk-serve-test-4242";

#[test]
fn infer_chat_over_http_memoises_and_matches_the_native_backend() {
    // SAFETY: the only environment write in this test binary, before any thread reads it.
    unsafe { std::env::set_var(KEY_VAR, KEY) };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    tiny_model(&model);
    let server = start(&model, 8, 50);
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let prompts = write(
        dir.path(),
        "prompts.jsonl",
        &jsonl(&[
            json!({"id": "a", "system": "You narrate experiments.", "user": "Heat the tube."}),
            json!({"id": "b", "system": "You narrate experiments.", "user": "Add yeast."}),
            json!({"id": "c", "system": "You narrate experiments.", "user": "Wear goggles."}),
        ]),
    );
    let t = table(&mut h, &prompts);
    let params = json!({
        "backend": "openai", "base_url": server.base_url(), "model": "tiny",
        "api_key_env": KEY_VAR, "max_tokens": 8, "concurrency": 3, "timeout_s": 60,
    });
    let run = h
        .run(
            &Chat,
            &[("prompts", PortType::Table, &t)],
            params.clone(),
            &[],
        )
        .unwrap();
    assert_eq!(run.memo, (0, 3), "each prompt asked once");
    let rep = report(&run.outputs["report"]);
    assert_eq!(rep["rows"], 3, "{rep}");
    // Request counts describe the run, not the replies: a note, not part of the report.
    assert_eq!(run.notes["http_requests"], 3, "{:?}", run.notes);
    assert_eq!(server.stats().requests, 3);
    let remote = rows_of(&mut h, &run.outputs["table"]);
    assert_eq!(remote.len(), 3);
    assert_eq!(remote[1]["id"], "b", "input columns are kept, in order");
    assert!(
        remote
            .iter()
            .all(|r| r["finish_reason"] == "length" && r["completion_tokens"] == 8)
    );

    // The key reaches no log line and no output.
    assert!(!run.log.contains(KEY), "{}", run.log);
    for p in run.outputs.values() {
        assert!(!String::from_utf8_lossy(&std::fs::read(p).unwrap()).contains(KEY));
    }

    // Same prompts again: all from the memo, no request reaches the server.
    let again = h
        .run(
            &Chat,
            &[("prompts", PortType::Table, &t)],
            params.clone(),
            &[],
        )
        .unwrap();
    assert_eq!(again.memo, (3, 0));
    assert_eq!(again.notes["http_requests"], 0);
    assert_eq!(
        again.digests, run.digests,
        "outputs do not depend on the memo"
    );
    assert_eq!(server.stats().requests, 3);
    assert_eq!(
        std::fs::read(&again.outputs["table"]).unwrap(),
        std::fs::read(&run.outputs["table"]).unwrap()
    );

    // The native backend, greedy, gives the same replies in-process.
    let native = h
        .run(
            &Chat,
            &[
                ("prompts", PortType::Table, &t),
                ("model", PortType::Model, &model),
            ],
            json!({"backend": "native", "max_tokens": 8, "batch_size": 2}),
            &[],
        )
        .unwrap();
    let local = rows_of(&mut h, &native.outputs["table"]);
    let texts = |rows: &[Value]| {
        rows.iter()
            .map(|r| r["response"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&local), texts(&remote));
    assert!(native.log.contains("native backend"), "{}", native.log);

    // n > 1 with a seed and logprobs over HTTP: a list of n replies, logprobs per reply.
    let sampled = h
        .run(
            &Chat,
            &[("prompts", PortType::Table, &t)],
            json!({
                "backend": "openai", "base_url": server.base_url(), "model": "tiny",
                "max_tokens": 4, "temperature": 1.0, "n": 2, "sampling_seed": 3,
                "logprobs": true, "top_logprobs": 2,
            }),
            &[],
        )
        .unwrap();
    let rows = rows_of(&mut h, &sampled.outputs["table"]);
    for r in &rows {
        assert_eq!(r["responses"].as_array().unwrap().len(), 2, "{r}");
        assert_eq!(r["responses"][0], r["response"]);
        let lp: Value = serde_json::from_str(r["logprobs"].as_str().unwrap()).unwrap();
        assert_eq!(lp.as_array().unwrap().len(), 2);
        assert_eq!(lp[0][0]["top_logprobs"].as_array().unwrap().len(), 2);
    }

    // A server that is not there: the error names the URL and the row after the retries.
    let e = h
        .run(
            &Chat,
            &[("prompts", PortType::Table, &t)],
            json!({
                "backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "tiny",
                "max_tokens": 3, "max_retries": 1, "backoff_ms": 1, "timeout_s": 5,
            }),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("127.0.0.1:9") && e.contains("after 2 attempts"),
        "{e}"
    );
    server.stop().unwrap();
}

#[test]
fn rag_infer_native_with_a_threshold_feeds_postprocess() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    tiny_model(&model);
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let row = |id: &str, video: &str| {
        json!({
            "id": id,
            "messages": [
                {"role": "system", "content": "You narrate experiments."},
                {"role": "user", "content": format!("<video>Please narrate step {id}.")},
                {"role": "assistant", "content": format!("<Narration>\nstep {id}\n<Principle>\nwhy {id}\n")},
            ],
            "videos": [video],
        })
    };
    let rows = dir.path().join("rows.parquet");
    expstar::write_rows(
        &rows,
        &[
            row("s1", "/data/./clips/a.mp4"),
            row("s2", "/data/clips/b.mp4"),
        ],
    )
    .unwrap();
    // s1 by id; s2 by its normalised video path.
    let retrieval = write(
        dir.path(),
        "retrieval.json",
        &json!([
            {"id": "s1", "query": "q1", "video_path": "/elsewhere.mp4",
             "documents": [{"text": "Yeast ferments sugar."}, {"text": "Goggles protect eyes."}, {"text": "unused"}]},
            {"query": "q2", "video_path": "/data/clips/../clips/b.mp4", "documents": ["Heat expands gas."]},
        ])
        .to_string(),
    );
    let inputs = [
        ("rows", PortType::Table, rows.as_path()),
        ("retrieval", PortType::File, retrieval.as_path()),
        ("model", PortType::Model, model.as_path()),
    ];
    let base = json!({"backend": "native", "media": "none", "max_tokens": 6, "passages": 2});
    let with = |t: f64| {
        let mut p = base.clone();
        p["threshold"] = json!(t);
        p
    };

    // Threshold 0: every row retrieves; one turn per passage (at most `passages`).
    let all = h.run(&RagInfer, &inputs, with(0.0), &[]).unwrap();
    let out = expstar::read_rows(&all.outputs["results"]).unwrap();
    assert_eq!(out.len(), 2);
    for r in &out {
        assert_eq!(r["is_retrieval"], true, "{r}");
        let rounds = r["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 2);
        assert!(
            rounds[0]["content"]
                .as_str()
                .unwrap()
                .ends_with("[Retrieval]")
        );
        assert!(r["gt"].as_array().unwrap().len() == 3);
    }
    assert_eq!(
        out[0]["rag_passages"],
        json!([
            "<paragraph>Yeast ferments sugar.</paragraph>",
            "<paragraph>Goggles protect eyes.</paragraph>"
        ])
    );
    assert_eq!(
        out[1]["rag_passages"],
        json!(["<paragraph>Heat expands gas.</paragraph>"])
    );
    let rep = report(&all.outputs["report"]);
    assert_eq!(
        (rep["retrieval"].as_u64(), rep["passages"].as_u64()),
        (Some(2), Some(3)),
        "{rep}"
    );
    assert_eq!(
        all.memo,
        (0, 2 + 3),
        "2 first turns and 3 passage turns generated"
    );
    assert!(all.log.contains("P([Retrieval])"), "{}", all.log);

    // Threshold 1: no row retrieves; one round ending in [No Retrieval].
    let none = h.run(&RagInfer, &inputs, with(1.0), &[]).unwrap();
    let out_none = expstar::read_rows(&none.outputs["results"]).unwrap();
    for r in &out_none {
        assert_eq!(r["is_retrieval"], false);
        let rounds = r["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 1);
        assert!(
            rounds[0]["content"]
                .as_str()
                .unwrap()
                .ends_with("[No Retrieval]")
        );
        assert_eq!(r["rag_passages"], json!([]));
    }
    // The first turns were memoised by the first run (same prompt, same sampling).
    assert_eq!(none.memo, (2, 0));

    // Re-running is free and gives the same bytes.
    let again = h.run(&RagInfer, &inputs, with(0.0), &[]).unwrap();
    assert_eq!(again.memo, (5, 0));
    assert_eq!(
        std::fs::read(&again.outputs["results"]).unwrap(),
        std::fs::read(&all.outputs["results"]).unwrap()
    );

    // expstar.postprocess reads the rows: ids kept, tokens stripped, labels from gt.
    let post = h
        .run(
            &Postprocess,
            &[("results", PortType::Table, &all.outputs["results"])],
            json!({}),
            &[],
        )
        .unwrap();
    let evals = expstar::read_rows(&post.outputs["rows"]).unwrap();
    assert_eq!(evals[0]["id"], "s1");
    assert_eq!(evals[1]["id"], "s2");
    for (e, r) in evals.iter().zip(&out) {
        let rounds: Vec<&str> = r["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["content"].as_str().unwrap())
            .collect();
        assert_eq!(e["full_dialogue"], rounds.join(" "));
        assert!(!e["response"].as_str().unwrap().contains("[Retrieval]"));
        assert_eq!(e["labels"], r["gt"][2]["content"]);
        assert_eq!(e["evaluation_data"]["is_retrieval"], true);
    }

    // A threshold with the openai backend is refused when the node is checked.
    let e = h
        .run(
            &RagInfer,
            &inputs[..2],
            json!({"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "threshold": 0.5}),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("threshold") && e.contains("native"), "{e}");
}
