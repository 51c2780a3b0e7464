//! The pipelines users run, end to end through the real binary, on copies of
//! `pipelines/`: ExpStar on the demo tree (data → retrieval → tiny model → SFT → DPO →
//! retrieval-aware inference → scores) and MAC-Bench on its synthetic data in the task's
//! six-file layout (its train/dev/test split → augmentation → three recipes of
//! vision-language SFT → answering strategies → the graded answer files). A second run
//! executes nothing; `expflow audit --fraction 1` then re-executes every node and finds
//! nothing changed; changing one SFT hyperparameter re-runs training and what follows it,
//! nothing before it.

use std::path::Path;

use expflow_tests::Project;
use serde_json::Value;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

fn pipelines() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../pipelines"))
}

fn has_ffmpeg() -> bool {
    std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Nodes of a run that executed, sorted.
fn executed(p: &Project, extra: &[&str], pipeline: &str) -> Vec<String> {
    let r = p.run(pipeline, extra);
    r.expect_code(0);
    r.executed()
}

fn read_json(p: &Project, rel: &str) -> Value {
    serde_json::from_str(&p.read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `expflow audit --fraction 1` after a normal run: every recorded node re-executes and
/// compares clean (no mismatch, no failure), and `expflow log NODE` after a run that found
/// NODE cached names the run that produced its record.
fn audit_is_clean_and_logs_name_their_run(p: &Project, first_run: &str, node: &str) {
    let out = p.expflow(&["audit", "--fraction", "1", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "audit: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&text).unwrap();
    let summary = &report["summary"];
    let audited = report["audited"].as_array().unwrap();
    assert_eq!(summary["mismatch"], 0, "{text}");
    assert_eq!(summary["failed"], 0, "{text}");
    assert!(
        summary["exact"].as_u64().unwrap() > 10,
        "most nodes compare exactly: {summary}"
    );
    let counted = ["exact", "within_tolerance", "skipped"]
        .iter()
        .map(|k| summary[*k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(counted, audited.len() as u64, "{summary}");
    let log = p.expflow(&["log", node]);
    let log = String::from_utf8_lossy(&log.stdout);
    let head = log.lines().next().unwrap_or_default();
    assert!(
        head.contains(&format!(
            "from run {first_run}, which produced its current record"
        )) && head.contains("found it cached"),
        "{head}"
    );
}

/// `expflow report` of the run after the SFT edit, against the first run, loads in headless
/// chromium with nothing fetched and no error, its DAG drawn, SFT's training curves
/// plotted, and a before/after chart of the changed curves (`tests/src/browser.rs`).
fn report_renders_in_chromium(p: &Project, name: &str, first_run: &str) {
    let Some(browser) = expflow_tests::browser::Browser::find() else {
        return;
    };
    let seen = expflow_tests::browser::check_report(p, &browser, name, &["--baseline", first_run]);
    assert!(
        seen["diffCharts"].as_u64().unwrap_or(0) > 0,
        "SFT's curves changed: {seen}"
    );
    assert!(seen["ganttBars"].as_u64().unwrap_or(0) > 0, "{seen}");
}

/// `results/expstar/scores.csv`: the original's columns, one `all` row and one row per
/// subject for each arm, with scores that were computed.
fn results_table_has_both_arms(p: &Project) {
    let csv = p.read("results/expstar/scores.csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    for col in [
        "experiment",
        "data_type",
        "BLEU-1",
        "BLEU-4",
        "METEOR",
        "ROUGE-L-F",
        "CIDer",
        "BERTScore-f1",
    ] {
        assert!(header.contains(&col), "{col} in {header:?}");
    }
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let subjects: std::collections::BTreeSet<String> = p
        .read("results/expstar/baseline_test.jsonl")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let path = v["videos"][0].as_str().unwrap().to_string();
            let parts: Vec<&str> = path.split('/').collect();
            parts[parts.len() - 5].to_string()
        })
        .collect();
    for arm in ["baseline", "expstar"] {
        let mine: Vec<&Vec<&str>> = rows.iter().filter(|r| r[0] == arm).collect();
        let types: Vec<&str> = mine.iter().map(|r| r[1]).collect();
        let mut want = vec!["all".to_string()];
        want.extend(subjects.iter().cloned());
        assert_eq!(types, want, "{arm}: {csv}");
        let rouge = header.iter().position(|c| *c == "ROUGE-L-F").unwrap();
        for r in &mine {
            let v: f64 = r[rouge].parse().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v >= 0.0, "{arm}: {csv}");
        }
    }
}

/// The DPO candidates: `dpo_samples` sampled answers per training prompt, not all alike,
/// each prompt's best (by ROUGE-L) rewarded, and the pairs built from them.
fn candidates_were_sampled_and_rewarded(p: &Project) {
    let rows: Vec<Value> = p
        .read("results/expstar/dpo_candidates.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut by: std::collections::BTreeMap<String, Vec<&Value>> = Default::default();
    for r in &rows {
        by.entry(r["id"].as_str().unwrap().to_string())
            .or_default()
            .push(r);
    }
    let mut pairs = 0;
    for (id, c) in &by {
        assert_eq!(c.len(), 4, "{id}: dpo_samples answers");
        let best = c
            .iter()
            .map(|r| r["score"].as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        for r in c {
            let positive = r["reward"].as_bool().unwrap();
            let differs = c.iter().any(|o| o["score"] != c[0]["score"]);
            assert_eq!(
                positive,
                differs && r["score"].as_f64() == Some(best),
                "{id}: {r}"
            );
        }
        let pos = c.iter().filter(|r| r["reward"] == true).count();
        pairs += pos * (c.len() - pos);
    }
    let distinct: std::collections::BTreeSet<&str> = rows
        .iter()
        .map(|r| r["response"].as_str().unwrap())
        .collect();
    assert!(distinct.len() > by.len(), "samples differ");
    assert!(pairs > 0);
    let dpo = p.read("results/expstar/swift_dpo.jsonl");
    assert_eq!(dpo.lines().count(), pairs, "every positive × negative pair");
}

/// The training clips' passages come from the corpus, judged: every clip has `is_rag` and
/// every passage a grade 1-5, and the SFT rows carry those passages with their verdicts.
fn retrieval_came_from_the_corpus(p: &Project) {
    let corpus = p.read("expstar-demo/passages.tsv");
    let judged = read_json(p, "results/expstar/train_retrieval_judged.json");
    let entries = judged.as_array().unwrap();
    let train = p
        .read("results/expstar/baseline_train.jsonl")
        .lines()
        .count();
    assert_eq!(entries.len(), train, "one entry per training row");
    let mut passages = 0;
    for e in entries {
        assert!(e["is_rag"].is_boolean(), "{e}");
        for d in e["documents"].as_array().unwrap() {
            let g = d["relevant"].as_u64().unwrap();
            assert!((1..=5).contains(&g), "{d}");
            assert!(corpus.contains(d["text"].as_str().unwrap()), "{d}");
            passages += 1;
        }
    }
    assert!(passages > 0);
    let sft = p.read("results/expstar/swift_sft.jsonl");
    let filled = sft
        .lines()
        .filter(|l| l.contains("[Relevant]") || l.contains("[Irrelevant]"))
        .count();
    assert!(filled > 0, "the SFT rows carry judged passages");
    let retrieved = read_json(p, "results/expstar/retrieval_results.json");
    for e in retrieved.as_array().unwrap() {
        for d in e["documents"].as_array().unwrap() {
            assert!(corpus.contains(d["text"].as_str().unwrap()), "{d}");
        }
    }
}

/// Moves every entry of the project directory into a new one; the old one is left empty.
fn move_project(p: Project) -> Project {
    let q = Project::new();
    for e in std::fs::read_dir(p.dir.path()).unwrap() {
        let e = e.unwrap();
        std::fs::rename(e.path(), q.dir.path().join(e.file_name())).unwrap();
    }
    q
}

/// Every video path of a LLaMA-Factory dataset is relative and names a file inside it.
fn dataset_videos_resolve(p: &Project, dir: &str, file: &str) {
    let data = read_json(p, &format!("{dir}/{file}"));
    let rows = data.as_array().unwrap();
    assert!(!rows.is_empty());
    for r in rows {
        for v in r["videos"].as_array().unwrap() {
            let v = v.as_str().unwrap();
            assert!(!v.starts_with('/'), "{v}");
            assert!(p.path(dir).join(v).is_file(), "{dir}/{v}");
        }
    }
}

#[test]
fn expstar_runs_end_to_end_and_reruns_only_what_an_sft_edit_changes() {
    if !has_ffmpeg() {
        expflow_tests::skip::skip_or_fail("ffmpeg is not installed (apt-get install ffmpeg)");
        return;
    }
    let p = Project::new();
    std::fs::copy(pipelines().join("expstar.yaml"), p.path("expstar.yaml")).unwrap();
    copy_dir(&pipelines().join("expstar-demo"), &p.path("expstar-demo"));

    let first = p.run("expstar.yaml", &[]);
    first.expect_code(0);
    for node in [
        "base",
        "sft",
        "dpo_train",
        "infer",
        "scores",
        "baseline_sft",
        "baseline_infer",
        "baseline_scores",
        "results",
        "candidates",
        "rewarded",
        "corpus",
        "judge_model",
        "judged",
    ] {
        assert!(
            first.executed().contains(&node.to_string()),
            "{node} did not run: {:?}",
            first.executed()
        );
    }
    let scores = read_json(&p, "results/expstar/scores.json");
    let n = scores["n"].as_u64().expect("scores.n");
    let test_rows = p
        .read("results/expstar/baseline_test.jsonl")
        .lines()
        .count() as u64;
    assert_eq!(n, test_rows, "every test row is scored: {scores}");
    for metric in ["bleu", "rouge_l", "meteor", "cider_d"] {
        let v = scores[metric].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v >= 0.0, "{metric} = {v}");
    }
    let predictions = p.read("results/expstar/predictions.jsonl");
    assert_eq!(predictions.lines().count() as u64, test_rows);
    let baseline = p.read("results/expstar/baseline_predictions.jsonl");
    assert_eq!(baseline.lines().count() as u64, test_rows);
    results_table_has_both_arms(&p);
    candidates_were_sampled_and_rewarded(&p);
    retrieval_came_from_the_corpus(&p);

    assert!(
        executed(&p, &[], "expstar.yaml").is_empty(),
        "a second run executes nothing"
    );
    let first_id = first.summary["run_id"].as_str().unwrap();
    // Move the whole project (workspace included) elsewhere: nothing re-runs, the store
    // verifies, and the exported dataset still finds its clips.
    let p = move_project(p);
    assert!(
        executed(&p, &[], "expstar.yaml").is_empty(),
        "after the move, a run executes nothing"
    );
    let verify = p.expflow(&["verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    dataset_videos_resolve(&p, "results/expstar/llamafactory_sft", "expstar_sft.json");
    audit_is_clean_and_logs_name_their_run(&p, first_id, "infer");

    let after_edit = executed(&p, &["--set", "sft_lr=0.003"], "expstar.yaml");
    let mut want: Vec<String> = [
        "sft",
        "reference",
        "dpo_train",
        "infer",
        "infer_post",
        "infer_eval",
        "predictions_jsonl",
        "scores",
        "baseline_sft",
        "baseline_infer",
        "baseline_eval",
        "baseline_predictions_jsonl",
        "baseline_scores",
        "results",
        "candidates",
        "candidates_post",
        "rewarded",
        "dpo_candidates_jsonl",
        "dpo",
        "swift_dpo",
        "llamafactory_dpo",
    ]
    .map(String::from)
    .to_vec();
    want.sort();
    // Nodes downstream of SFT whose inputs come out byte-identical stop the wave early, so
    // the re-run is SFT plus a prefix of what follows; nothing before SFT runs.
    assert!(after_edit.contains(&"sft".to_string()), "{after_edit:?}");
    for node in &after_edit {
        assert!(
            want.contains(node),
            "{node} re-ran after an SFT edit: {after_edit:?}"
        );
    }
    report_renders_in_chromium(&p, "expstar", first_id);
}

#[test]
fn macbench_runs_end_to_end_and_reruns_only_what_an_sft_edit_changes() {
    let p = Project::new();
    std::fs::copy(pipelines().join("macbench.yaml"), p.path("macbench.yaml")).unwrap();
    copy_dir(&pipelines().join("data/macbench"), &p.path("data/macbench"));

    // Both configurations check; the GPU one also with its model inputs present (so the ports
    // they feed are type-checked: a directory input reaches a `model` port through `base`).
    std::fs::create_dir_all(p.path("qwen")).unwrap();
    p.write("qwen/config.json", "{}");
    for extra in [
        &[][..],
        &["--profile", "gpu"][..],
        &[
            "--profile",
            "gpu",
            "--input",
            "base_model=qwen",
            "--input",
            "clip=data/macbench/clip-tiny",
        ][..],
    ] {
        let out = p.expflow(&[&["check", "macbench.yaml"][..], extra].concat());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{extra:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The task's own files are the inputs: a training record without a letter fails the run
    // before anything trains, naming the file and the record.
    copy_dir(&p.path("data/macbench/datasets"), &p.path("bad"));
    let mut recs: Value = read_json(&p, "bad/image2text_train.json");
    recs[3]["output"] = Value::Null;
    p.write("bad/image2text_train.json", &recs.to_string());
    let bad = p.run("macbench.yaml", &["--input", "datasets=bad"]);
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("image2text_train.json")
            && bad.stderr.contains("record 3 ")
            && bad.stderr.contains("no `output`"),
        "{}",
        bad.stderr
    );
    assert!(!bad.executed().iter().any(|n| n.starts_with("sft")));

    let first = p.run("macbench.yaml", &[]);
    first.expect_code(0);
    for node in [
        "train",
        "dev",
        "test",
        "base",
        "sft[recipe=original]",
        "sft[recipe=templated]",
        "sft[recipe=augmented]",
        "answer_test[recipe=augmented]",
        "hardened",
        "recipes",
    ] {
        assert!(
            first.executed().contains(&node.to_string()),
            "{node} did not run: {:?}",
            first.executed()
        );
    }
    // The model is a Qwen2.5-VL and training saw the images.
    let out = p.expflow(&["log", "sft[recipe=augmented]"]);
    let log = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(log.contains("Qwen2.5-VL"), "{log}");
    let losses: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("step ") && l.contains(" loss "))
        .filter_map(|l| {
            l.split(" loss ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(losses.len() > 4, "{log}");
    assert!(
        losses[losses.len() - 1] < losses[0] * 0.7,
        "training on the images and answers lowers the loss: {losses:?}"
    );
    // Dev accuracy at every evaluation and the kept step in the training curve.
    assert!(
        log.contains("eval_choice_accuracy") && log.contains("kept the adapter of step"),
        "{log}"
    );
    // The task's split is used as given: training rows are the train files' items (and,
    // for the augmented recipe, what was made from them), the dev set is the dev files'.
    let n = |rel: &str| read_json(&p, rel).as_array().unwrap().len();
    let (train_n, dev_n) = (
        n("data/macbench/datasets/image2text_train.json")
            + n("data/macbench/datasets/text2image_train.json"),
        n("data/macbench/datasets/image2text_dev.json")
            + n("data/macbench/datasets/text2image_dev.json"),
    );
    let original =
        String::from_utf8_lossy(&p.expflow(&["log", "sft[recipe=original]"]).stdout).to_string();
    assert!(
        original.contains(&format!("SFT: {train_n} rows"))
            && original.contains(&format!("{dev_n} dev rows")),
        "{original}"
    );

    // The graded answer files, per recipe: every test record in input order, a letter each;
    // the synthetic key (withheld from the test files) scores them.
    let key_i2t = read_json(&p, "data/macbench/datasets/image2text_test_key.json");
    let key_t2i = read_json(&p, "data/macbench/datasets/text2image_test_key.json");
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    let test_ids = ids(&read_json(
        &p,
        "data/macbench/datasets/image2text_test.json",
    ));
    assert_eq!(test_ids, ids(&key_i2t), "the key is in test order");
    let report = read_json(&p, "results/macbench/answer_report.json");
    let mut correct = 0;
    for dir in [
        "results/macbench",
        "results/macbench/original",
        "results/macbench/templated",
    ] {
        for (file, key) in [
            ("image2text_answer.json", &key_i2t),
            ("text2image_answer.json", &key_t2i),
        ] {
            let answers = read_json(&p, &format!("{dir}/{file}"));
            assert_eq!(ids(&answers), ids(key), "{dir}/{file}");
            let answers = answers.as_array().unwrap();
            assert!(
                answers
                    .iter()
                    .all(|e| matches!(e["output"].as_str(), Some("A" | "B" | "C" | "D"))),
                "{dir}/{file}: {answers:?}"
            );
            if dir == "results/macbench" {
                correct += answers
                    .iter()
                    .zip(key.as_array().unwrap())
                    .filter(|(a, k)| a["output"] == k["output"])
                    .count() as u64;
            }
        }
    }
    let total = (ids(&key_i2t).len() + ids(&key_t2i).len()) as u64;
    assert_eq!(report["items"].as_u64(), Some(total), "{report}");
    assert_eq!(report["scored"].as_u64(), Some(total), "{report}");
    assert_eq!(
        report["correct"].as_u64(),
        Some(correct),
        "the report scores the answer files against the key: {report}"
    );
    assert_eq!(
        report["from_text"].as_u64().unwrap() + report["fallback"].as_u64().unwrap(),
        total,
        "{report}"
    );
    // Strategy x task on dev: five strategies, two tasks and `all` each.
    let table = p.read("results/macbench/strategies.csv");
    let mut lines = table.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("node,strategy,task,items,scored,accuracy"),
        "{table}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 5 * 3, "{table}");
    for s in [
        "direct",
        "choice_prob",
        "self_consistency",
        "verify",
        "describe_then_answer",
    ] {
        assert!(
            rows.iter().any(|r| r.contains(&format!(",{s},all,"))),
            "{s}: {table}"
        );
    }
    // Recipes side by side: each recipe's dev accuracy, per task and overall.
    let table = p.read("results/macbench/recipes.csv");
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 3 * 3, "{table}");
    for recipe in ["original", "templated", "augmented"] {
        let all = rows
            .iter()
            .find(|r| r.starts_with(&format!("recipe_dev[recipe={recipe}],choice_prob,all,")))
            .unwrap_or_else(|| panic!("{recipe}: {table}"));
        let cols: Vec<&str> = all.split(',').collect();
        assert_eq!(cols[3], dev_n.to_string(), "{table}");
        let acc: f64 = cols[5].parse().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{table}");
    }

    assert!(
        executed(&p, &[], "macbench.yaml").is_empty(),
        "a second run executes nothing"
    );
    let first_id = first.summary["run_id"].as_str().unwrap();
    audit_is_clean_and_logs_name_their_run(&p, first_id, "answer_test[recipe=augmented]");
    let after_edit = executed(&p, &["--set", "sft_lr=0.02"], "macbench.yaml");
    assert!(
        after_edit.contains(&"sft[recipe=augmented]".to_string()),
        "{after_edit:?}"
    );
    for node in &after_edit {
        assert!(
            ["strategies", "strategies_csv", "recipes", "recipes_csv"].contains(&node.as_str())
                || [
                    "sft[",
                    "answer_dev[",
                    "answer_test[",
                    "answer_file_i2t[",
                    "answer_file_t2i[",
                    "recipe_dev[",
                ]
                .iter()
                .any(|p| node.starts_with(p)),
            "{node} re-ran after an SFT edit: {after_edit:?}"
        );
    }
    report_renders_in_chromium(&p, "macbench", first_id);
}
