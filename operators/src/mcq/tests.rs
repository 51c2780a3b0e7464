//! The option distribution, its uncertainty and the vote; `mcq.answer`'s strategies on a tiny
//! vision-language model through the harness; answer files from its predictions.

use std::path::{Path, PathBuf};

use expflow_engine::PortType;
use expflow_engine::harness::Harness;
use polars::prelude::*;
use serde_json::{Value, json};

use super::{Answer, argmax, entropy, from_top_logprobs, margin, softmax, vote};
use crate::testing::table_from_bytes;

#[test]
fn softmax_sums_to_one_and_uncertainty_follows_the_distribution() {
    let p = softmax(&[-0.1, -2.3, -1.0, -5.0]);
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{p:?}");
    assert_eq!(argmax(&p), 0);
    let uniform = [0.25; 4];
    assert!((entropy(&uniform) - 4f64.ln()).abs() < 1e-12);
    assert_eq!(margin(&uniform), 0.0);
    assert_eq!(entropy(&[1.0, 0.0, 0.0, 0.0]), 0.0);
    assert!((margin(&[0.1, 0.6, 0.25, 0.05]) - 0.35).abs() < 1e-12);
    assert!(entropy(&p) < entropy(&uniform));
}

#[test]
fn the_vote_takes_the_majority_and_breaks_ties_by_probability() {
    let p = [0.1, 0.2, 0.3, 0.4];
    assert_eq!(vote(&[Some(0), Some(0), Some(3)], &p), Some(0));
    // A and D two each: D is more probable.
    assert_eq!(
        vote(&[Some(0), Some(3), Some(0), Some(3), None], &p),
        Some(3)
    );
    // Equal probabilities too: the earlier letter.
    assert_eq!(vote(&[Some(2), Some(1)], &[0.25; 4]), Some(1));
    assert_eq!(vote(&[None, None], &p), None);
    assert_eq!(vote(&[], &p), None);
}

#[test]
fn top_logprobs_give_the_letters_renormalised() {
    let entry = |t: &str, lp: f64| json!({"token": t, "logprob": lp, "bytes": t.as_bytes()});
    let content = json!([{
        "token": "B", "logprob": -0.5,
        "top_logprobs": [entry("B", -0.5), entry(" A", -1.0), entry("a", -1.5), entry("A", -2.0), entry("Hello", -3.0)]
    }]);
    let p = from_top_logprobs(&content, &["A", "B", "C", "D"]).unwrap();
    let (a, b) = ((-1f64).exp() + (-2f64).exp(), (-0.5f64).exp());
    assert!((p[0] - a / (a + b)).abs() < 1e-12, "{p:?}");
    assert!((p[1] - b / (a + b)).abs() < 1e-12);
    assert_eq!(
        (p[2], p[3]),
        (0.0, 0.0),
        "absent letters get nothing; `a` is not `A`"
    );
    let yes = json!([{"token": "Y", "logprob": -0.2, "top_logprobs": [entry("Y", -0.2), entry(" no", -1.8)]}]);
    let p = from_top_logprobs(&yes, &["Yes", "No"]).unwrap();
    assert!(p[0] > p[1] && (p[0] + p[1] - 1.0).abs() < 1e-12, "{p:?}");
    assert!(from_top_logprobs(&json!([{"token": "x", "logprob": 0.0}]), &["A"]).is_none());
}

/// A media directory of coloured squares and an item table: four image2text items (one
/// without an answer, as a test item) and two text2image items.
fn items(dir: &Path) -> (PathBuf, PathBuf) {
    let media = dir.join("media");
    std::fs::create_dir_all(&media).unwrap();
    let colours = [[220u8, 30, 30], [30, 30, 220], [30, 200, 30], [20, 20, 20]];
    for (k, c) in colours.iter().enumerate() {
        let px: Vec<u8> = (0..16 * 16).flat_map(|_| *c).collect();
        std::fs::write(
            media.join(format!("c{k}.png")),
            crate::mac::png::encode_rgb(16, 16, &px),
        )
        .unwrap();
    }
    let i2t = |k: usize| {
        format!(
            "<image>Which of the following options best describe the cover image?\nA: a red cover\nB: a blue cover\nC: a green cover\nD: a black cover{}",
            if k == 0 { "" } else { " with stars" }
        )
    };
    let t2i = "A story about a red cell.\nWhich of the following options best describe the cover story?\n<image><image><image><image>";
    let mut id = Vec::new();
    let mut task = Vec::new();
    let mut input = Vec::new();
    let mut answer: Vec<Option<&str>> = Vec::new();
    let mut images: Vec<Vec<String>> = Vec::new();
    for k in 0..4 {
        id.push(format!("i2t-{k}"));
        task.push("image2text");
        input.push(i2t(k));
        answer.push(if k == 3 {
            None
        } else {
            Some(["A", "B", "C"][k])
        });
        images.push(vec![format!("c{k}.png")]);
    }
    for k in 0..2 {
        id.push(format!("t2i-{k}"));
        task.push("text2image");
        input.push(t2i.to_string());
        answer.push(Some(["A", "D"][k]));
        images.push((0..4).map(|j| format!("c{}.png", (j + k) % 4)).collect());
    }
    let n = id.len();
    let mut list = ListStringChunkedBuilder::new("images".into(), n, n * 4);
    for paths in &images {
        list.append_values_iter(paths.iter().map(String::as_str));
    }
    let mut df = DataFrame::new(
        n,
        vec![
            Column::new("id".into(), id),
            Column::new("task".into(), task),
            Column::new("system".into(), vec!["Answer with one letter."; n]),
            Column::new("input".into(), input),
            Column::new("answer".into(), answer),
            list.finish().into_series().into_column(),
        ],
    )
    .unwrap();
    let path = dir.join("items.parquet");
    crate::table_io::write_table(&mut df, &path).unwrap();
    (path, media)
}

fn tiny_vlm(h: &mut Harness, text: &Path) -> PathBuf {
    let run = h
        .run(
            &crate::train::TinyModel,
            &[("text", PortType::File, text)],
            json!({"kind": "vision_language", "params": 40000, "vocab": 300, "image_tokens": 4,
                   "columns": ["system", "input"], "seed": 1}),
            &[],
        )
        .unwrap();
    run.outputs["model"].clone()
}

struct Setup {
    _dir: tempfile::TempDir,
    h: Harness,
    items: PathBuf,
    media: PathBuf,
    model: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (items, media) = items(dir.path());
    let mut h = Harness::new(&dir.path().join("ws")).unwrap();
    let model = tiny_vlm(&mut h, &items);
    Setup {
        _dir: dir,
        h,
        items,
        media,
        model,
    }
}

/// Runs `mcq.answer` with `params` (native backend) and returns the predictions, the
/// metrics and the log.
fn answer(s: &mut Setup, params: Value) -> (DataFrame, Value, String, PathBuf) {
    let mut p = json!({"backend": "native", "max_tokens": 12, "answer_tokens": 4});
    for (k, v) in params.as_object().unwrap() {
        p[k] = v.clone();
    }
    let run =
        s.h.run(
            &Answer,
            &[
                ("items", PortType::Table, s.items.as_path()),
                ("model", PortType::Model, s.model.as_path()),
                ("media", PortType::Dir, s.media.as_path()),
            ],
            p,
            &[],
        )
        .unwrap();
    let path = run.outputs["predictions"].clone();
    let df = table_from_bytes(&std::fs::read(&path).unwrap());
    let m: Value =
        serde_json::from_slice(&std::fs::read(&run.outputs["metrics"]).unwrap()).unwrap();
    (df, m, run.log, path)
}

fn strings(df: &DataFrame, name: &str) -> Vec<Option<String>> {
    df.column(name)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect()
}

fn floats(df: &DataFrame, name: &str) -> Vec<f64> {
    df.column(name)
        .unwrap()
        .cast(&DataType::Float64)
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .map(|v| v.unwrap())
        .collect()
}

fn probs(df: &DataFrame) -> Vec<[f64; 4]> {
    let cols: Vec<Vec<f64>> = ["p_A", "p_B", "p_C", "p_D"]
        .iter()
        .map(|c| floats(df, c))
        .collect();
    (0..df.height())
        .map(|i| [cols[0][i], cols[1][i], cols[2][i], cols[3][i]])
        .collect()
}

/// Checks what every strategy promises: ids in input order, a letter for every item, the
/// distribution summing to one with its entropy and margin, and counts that match the rows.
fn check_common(df: &DataFrame, m: &Value) {
    assert_eq!(
        strings(df, "id").into_iter().flatten().collect::<Vec<_>>(),
        ["i2t-0", "i2t-1", "i2t-2", "i2t-3", "t2i-0", "t2i-1"]
    );
    let preds = strings(df, "pred");
    assert!(
        preds
            .iter()
            .all(|p| matches!(p.as_deref(), Some("A" | "B" | "C" | "D"))),
        "{preds:?}"
    );
    let (ent, mar) = (floats(df, "entropy"), floats(df, "margin"));
    for (i, p) in probs(df).iter().enumerate() {
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{p:?}");
        assert!((ent[i] - entropy(p)).abs() < 1e-12 && (mar[i] - margin(p)).abs() < 1e-12);
    }
    let parsed = strings(df, "parsed");
    let count = |w: &str| parsed.iter().filter(|p| p.as_deref() == Some(w)).count();
    assert_eq!(m["fallback"], count("fallback"));
    assert_eq!(m["from_text"], count("text"));
    let answers = strings(df, "answer");
    let right = answers
        .iter()
        .zip(&preds)
        .filter(|(a, p)| a.is_some() && a == p)
        .count();
    assert_eq!(m["scored"], 5, "the test item is not scored");
    assert_eq!(m["correct"], right);
    assert_eq!(m["tasks"]["text2image"]["items"], 2);
}

#[test]
fn choice_probability_and_direct_answers_on_a_tiny_vision_language_model() {
    let mut s = setup();
    let (df, m, _, _) = answer(&mut s, json!({"strategy": "choice_prob"}));
    check_common(&df, &m);
    let preds = strings(&df, "pred");
    for (p, pred) in probs(&df).iter().zip(&preds) {
        assert_eq!(pred.as_deref(), Some(["A", "B", "C", "D"][argmax(p)]));
    }
    assert_eq!(m["tokens"], 0, "one forward pass, nothing generated");
    assert_eq!(m["calls"], 6);
    // The distribution depends on the image: the same question about two covers differs.
    let p = probs(&df);
    assert_ne!(p[1], p[2]);

    let (direct, dm, _, _) = answer(&mut s, json!({"strategy": "direct"}));
    check_common(&direct, &dm);
    assert_eq!(
        probs(&direct),
        p,
        "direct answers keep the same distribution"
    );
    assert!(dm["tokens"].as_u64().unwrap() > 0);
    // A reply without a letter takes the most probable one.
    let parsed = strings(&direct, "parsed");
    for (i, pr) in parsed.iter().enumerate() {
        if pr.as_deref() == Some("fallback") {
            assert_eq!(strings(&direct, "pred")[i], preds[i]);
        }
    }
}

#[test]
fn self_consistency_is_seeded_per_item_and_votes() {
    let mut s = setup();
    let params = json!({"strategy": "self_consistency", "n": 3, "temperature": 1.0, "sampling_seed": 7, "batch_size": 1});
    let (df, m, log, path) = answer(&mut s, params.clone());
    check_common(&df, &m);
    let responses = strings(&df, "response");
    for r in &responses {
        let samples: Vec<String> = serde_json::from_str(r.as_deref().unwrap()).unwrap();
        assert_eq!(samples.len(), 3);
    }
    assert_eq!(m["calls"], 6 * (1 + 3));
    assert!(log.contains("chain-of-thought samples"), "{log}");
    // Same seed in a fresh workspace (nothing memoised): the same bytes.
    let dir = tempfile::tempdir().unwrap();
    let mut other = Setup {
        h: Harness::new(&dir.path().join("ws")).unwrap(),
        items: s.items.clone(),
        media: s.media.clone(),
        model: s.model.clone(),
        _dir: dir,
    };
    let (_, _, _, again) = answer(&mut other, params.clone());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&again).unwrap()
    );
    // Another seed samples other replies.
    let mut p2 = params;
    p2["sampling_seed"] = json!(8);
    let (df2, _, _, _) = answer(&mut other, p2);
    assert_ne!(strings(&df2, "response"), responses);
}

#[test]
fn verification_asks_doubtful_items_again_and_two_stage_describes_first() {
    let mut s = setup();
    let (all, m, _, _) = answer(&mut s, json!({"strategy": "verify", "threshold": 1.0}));
    check_common(&all, &m);
    let conf = floats(&all, "confidence");
    assert!(conf.iter().all(|c| (0.0..1.0).contains(c)), "{conf:?}");
    assert_eq!(m["reasked"], 6, "no probability of Yes reaches 1");
    let (none, m0, _, _) = answer(&mut s, json!({"strategy": "verify", "threshold": 0.0}));
    assert_eq!(m0["reasked"], 0);
    assert_eq!(
        floats(&none, "confidence"),
        conf,
        "the check does not depend on the threshold"
    );
    assert!(m["tokens"].as_u64() > m0["tokens"].as_u64());

    let (two, mt, log, _) = answer(&mut s, json!({"strategy": "describe_then_answer"}));
    check_common(&two, &mt);
    assert!(log.contains("description: 6 prompt(s)"), "{log}");
    assert_eq!(mt["calls"], 6 * 3, "describe, score, answer");
    let (direct, _, _, _) = answer(&mut s, json!({"strategy": "direct"}));
    assert_ne!(
        probs(&two),
        probs(&direct),
        "the second stage reads text, not images"
    );
}

#[test]
fn answer_files_list_every_test_item_in_order_with_a_letter() {
    let mut s = setup();
    let (_, m, _, path) = answer(&mut s, json!({"strategy": "direct"}));
    let run =
        s.h.run(
            &crate::mac::ExportAnswers,
            &[("table", PortType::Table, path.as_path())],
            json!({"column": "pred", "task": "image2text"}),
            &[],
        )
        .unwrap();
    let out: Value = serde_json::from_slice(&std::fs::read(&run.outputs["file"]).unwrap()).unwrap();
    let list = out.as_array().unwrap();
    assert_eq!(
        list.iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["i2t-0", "i2t-1", "i2t-2", "i2t-3"]
    );
    assert!(
        list.iter()
            .all(|e| matches!(e["output"].as_str(), Some("A" | "B" | "C" | "D")))
    );
    assert!(m["fallback"].as_u64().unwrap() + m["from_text"].as_u64().unwrap() == 6);
}

#[test]
fn a_bad_answer_letter_and_bad_parameters_are_refused() {
    use expflow_engine::Operator;
    let mut s = setup();
    let mut df = crate::table_io::read_table(&s.items).unwrap();
    df.with_column(Column::new(
        "answer".into(),
        vec!["A", "E", "B", "C", "D", "A"],
    ))
    .unwrap();
    let bad = s._dir.path().join("bad.parquet");
    crate::table_io::write_table(&mut df, &bad).unwrap();
    let err =
        s.h.run(
            &Answer,
            &[
                ("items", PortType::Table, bad.as_path()),
                ("model", PortType::Model, s.model.as_path()),
                ("media", PortType::Dir, s.media.as_path()),
            ],
            json!({"backend": "native"}),
            &[],
        )
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("row 1 (id `i2t-1`)") && err.contains("`E`"),
        "{err}"
    );
    let check = |given: Value| {
        let (filled, _) =
            expflow_engine::params::fill_defaults(&Answer.signature(), given.as_object().unwrap());
        Answer.check(&filled)
    };
    assert!(check(json!({"backend": "native"})).is_empty());
    let problems = check(json!({"backend": "native", "strategy": "beam"}));
    assert!(
        problems.iter().any(|p| p.contains("strategy")),
        "{problems:?}"
    );
    let problems = check(json!({"backend": "native", "verify_prompt": "Is it right?"}));
    assert!(
        problems.iter().any(|p| p.contains("{letter}")),
        "{problems:?}"
    );
}
