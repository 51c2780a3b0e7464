//! The pipelines users run, end to end through the real binary, on copies of
//! `pipelines/`: ExpStar on the demo tree (data → retrieval → tiny model → SFT → DPO →
//! retrieval-aware inference → scores) and MAC-Bench on its synthetic data (augmentation →
//! vision-language SFT → inference → accuracy). A second run executes nothing; `expflow
//! audit --fraction 1` then re-executes every node and finds nothing changed; changing one
//! SFT hyperparameter re-runs training and what follows it, nothing before it.

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
        "infer_table",
        "scores",
        "baseline_sft",
        "baseline_infer",
        "baseline_eval",
        "baseline_table",
        "baseline_scores",
        "results",
        "candidates",
        "candidates_post",
        "rewarded",
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

    let first = p.run("macbench.yaml", &[]);
    first.expect_code(0);
    for node in ["base", "sft", "answers_i2t", "answers_t2i", "accuracy"] {
        assert!(
            first.executed().contains(&node.to_string()),
            "{node} did not run: {:?}",
            first.executed()
        );
    }
    // The model is a Qwen2.5-VL and training saw the images.
    let out = p.expflow(&["log", "sft"]);
    let log = String::from_utf8_lossy(&out.stdout);
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
    let metrics = read_json(&p, "results/macbench/accuracy.json");
    let key_i2t = read_json(&p, "results/macbench/key_image2text.json");
    let key_t2i = read_json(&p, "results/macbench/key_text2image.json");
    let keys = |v: &Value| {
        v.as_object()
            .map(|o| o.len())
            .or_else(|| v.as_array().map(Vec::len))
            .unwrap() as u64
    };
    assert_eq!(
        metrics["n"].as_u64(),
        Some(keys(&key_i2t) + keys(&key_t2i)),
        "every test item of both tasks is scored: {metrics}"
    );
    let acc = metrics["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{metrics}");
    assert!(
        p.read("results/macbench/accuracy.csv")
            .starts_with("group,name")
    );
    // The graded answer files: every test item in key order, a letter each.
    let report = read_json(&p, "results/macbench/answer_report.json");
    for (file, key) in [
        ("image2text_answer.json", &key_i2t),
        ("text2image_answer.json", &key_t2i),
    ] {
        let answers = read_json(&p, &format!("results/macbench/{file}"));
        let ids = |v: &Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(ids(&answers), ids(key), "{file}");
        assert!(
            answers
                .as_array()
                .unwrap()
                .iter()
                .all(|e| matches!(e["output"].as_str(), Some("A" | "B" | "C" | "D"))),
            "{file}: {answers}"
        );
    }
    assert_eq!(
        report["items"].as_u64(),
        Some(keys(&key_i2t) + keys(&key_t2i)),
        "{report}"
    );
    assert_eq!(
        report["from_text"].as_u64().unwrap() + report["fallback"].as_u64().unwrap(),
        report["items"].as_u64().unwrap(),
        "{report}"
    );
    // Dev accuracy at every evaluation and the kept step in the training curve.
    let log = String::from_utf8_lossy(&p.expflow(&["log", "sft"]).stdout).to_string();
    assert!(
        log.contains("eval_choice_accuracy") && log.contains("kept the adapter of step"),
        "{log}"
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

    assert!(
        executed(&p, &[], "macbench.yaml").is_empty(),
        "a second run executes nothing"
    );
    let first_id = first.summary["run_id"].as_str().unwrap();
    audit_is_clean_and_logs_name_their_run(&p, first_id, "answers_i2t");
    let after_edit = executed(&p, &["--set", "sft_lr=0.02"], "macbench.yaml");
    assert!(after_edit.contains(&"sft".to_string()), "{after_edit:?}");
    for node in &after_edit {
        assert!(
            [
                "sft",
                "answers_i2t",
                "answers_t2i",
                "answers",
                "accuracy",
                "strategies",
                "strategies_csv",
                "answer_test",
                "answer_file_i2t",
                "answer_file_t2i",
            ]
            .contains(&node.as_str())
                || node.starts_with("answer_dev["),
            "{node} re-ran after an SFT edit: {after_edit:?}"
        );
    }
    report_renders_in_chromium(&p, "macbench", first_id);
}
