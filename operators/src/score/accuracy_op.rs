//! `score.accuracy`: MAC-Bench accuracy of model responses, per task, per journal and
//! overall (weighted by items).

use std::collections::BTreeMap;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::accuracy::{Method, Tally, extract};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::{read_table, write_table};

pub struct ScoreAccuracy;

const KIND: &str = "score.accuracy";

struct Config {
    response: String,
    answer: String,
    journal: String,
    task: String,
    letters: String,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let letters = p.str("letters")?.to_string();
        if letters.is_empty() || !letters.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(OperatorError::param(
                KIND,
                "letters",
                "must be upper-case ASCII letters, e.g. `ABCD`",
            ));
        }
        Ok(Config {
            response: p.str("response")?.to_string(),
            answer: p.str("answer")?.to_string(),
            journal: p.str("journal")?.to_string(),
            task: p.str("task")?.to_string(),
            letters,
        })
    }
}

fn text_column(df: &DataFrame, name: &str, required: bool) -> Result<Option<Vec<String>>> {
    let Ok(c) = df.column(name) else {
        if required {
            let names: Vec<&str> = df.get_column_names().iter().map(|n| n.as_str()).collect();
            return Err(OperatorError::data(
                KIND,
                format!(
                    "column `{name}` not found; available columns: {}",
                    names.join(", ")
                ),
            ));
        }
        return Ok(None);
    };
    let s = c
        .as_materialized_series()
        .cast(&DataType::String)
        .map_err(|e| OperatorError::polars(KIND, format!("reading `{name}` as text"), e))?;
    let ca = s
        .str()
        .map_err(|e| OperatorError::polars(KIND, format!("reading `{name}`"), e))?;
    Ok(Some(
        ca.iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect(),
    ))
}

/// Per-item results, the metrics object and the results CSV.
pub struct AccuracyResult {
    pub extracted: Vec<Option<char>>,
    pub methods: Vec<Method>,
    pub correct: Vec<bool>,
    pub metrics: Map<String, Value>,
    pub csv: String,
}

fn tally_json(t: &Tally) -> Value {
    json!({"accuracy": t.accuracy(), "correct": t.correct, "total": t.total, "invalid": t.invalid})
}

fn csv_name(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Extracts every answer and tallies accuracy overall, per task and per journal. An answer
/// is correct when the extracted letter equals the trimmed `answers` entry.
pub fn evaluate(
    responses: &[String],
    answers: &[String],
    journals: Option<&[String]>,
    tasks: Option<&[String]>,
    letters: &str,
) -> std::result::Result<AccuracyResult, String> {
    let mut all = Tally::default();
    let mut by_task: BTreeMap<String, Tally> = BTreeMap::new();
    let mut by_journal: BTreeMap<String, Tally> = BTreeMap::new();
    let (mut extracted, mut methods, mut correct) = (vec![], vec![], vec![]);
    for (i, (resp, ans)) in responses.iter().zip(answers).enumerate() {
        let (letter, method) = extract(resp, letters).map_err(|e| e.to_string())?;
        let gold = ans.trim();
        let ok = letter.is_some_and(|l| gold.len() == 1 && gold.starts_with(l));
        let invalid = method == Method::Invalid;
        all.add(ok, invalid);
        if let Some(t) = tasks {
            by_task.entry(t[i].clone()).or_default().add(ok, invalid);
        }
        if let Some(j) = journals {
            by_journal.entry(j[i].clone()).or_default().add(ok, invalid);
        }
        extracted.push(letter);
        methods.push(method);
        correct.push(ok);
    }
    let mut m = Map::new();
    m.insert("n".into(), json!(all.total));
    m.insert("accuracy".into(), json!(all.accuracy()));
    m.insert("correct".into(), json!(all.correct));
    m.insert("invalid".into(), json!(all.invalid));
    let group = |g: &BTreeMap<String, Tally>| {
        Value::Object(g.iter().map(|(k, t)| (k.clone(), tally_json(t))).collect())
    };
    if tasks.is_some() {
        m.insert("tasks".into(), group(&by_task));
    }
    if journals.is_some() {
        m.insert("journals".into(), group(&by_journal));
    }
    let mut csv = String::from("group,name,correct,total,invalid,accuracy\n");
    let mut line = |g: &str, name: &str, t: &Tally| {
        csv.push_str(&format!(
            "{g},{},{},{},{},{:.2}\n",
            csv_name(name),
            t.correct,
            t.total,
            t.invalid,
            t.accuracy() * 100.0
        ));
    };
    line("overall", "all", &all);
    for (k, t) in &by_task {
        line("task", k, t);
    }
    for (k, t) in &by_journal {
        line("journal", k, t);
    }
    Ok(AccuracyResult {
        extracted,
        methods,
        correct,
        metrics: m,
        csv,
    })
}

impl Operator for ScoreAccuracy {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        let s = |name, default: Value, doc| {
            ParamSpec::with_default(name, ParamKind::String, default, doc)
        };
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "model responses and the correct letters",
            )]),
            outputs: Ports::Fixed(vec![
                Port::new(
                    "scores",
                    PortType::Table,
                    "per-row extracted answer, method and correctness",
                ),
                Port::new(
                    "metrics",
                    PortType::Metrics,
                    "accuracy overall, per task and per journal (JSON)",
                ),
                Port::new(
                    "results",
                    PortType::File,
                    "accuracy CSV (×100, two decimals)",
                ),
            ]),
            params: vec![
                s("response", json!("response"), "the model response column"),
                s("answer", json!("answer"), "the correct letter column"),
                s(
                    "journal",
                    json!("journal"),
                    "the journal column (skipped when absent)",
                ),
                s(
                    "task",
                    json!("task"),
                    "the task column (skipped when absent)",
                ),
                s("letters", json!("ABCD"), "the option letters"),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> std::result::Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let df = read_table(&ctx.input("table")?.path)?;
        let responses = text_column(&df, &cfg.response, true)?.unwrap_or_default();
        let answers = text_column(&df, &cfg.answer, true)?.unwrap_or_default();
        let journals = text_column(&df, &cfg.journal, false)?;
        let tasks = text_column(&df, &cfg.task, false)?;
        let r = evaluate(
            &responses,
            &answers,
            journals.as_deref(),
            tasks.as_deref(),
            &cfg.letters,
        )
        .map_err(|e| OperatorError::param(KIND, "letters", e))?;
        ctx.log(&format!(
            "{} rows, accuracy {}",
            responses.len(),
            r.metrics["accuracy"]
        ));
        let n = responses.len();
        let mut table = DataFrame::new(
            n,
            vec![
                Column::new("row".into(), (0..n as i64).collect::<Vec<_>>()),
                Column::new(
                    "extracted".into(),
                    r.extracted
                        .iter()
                        .map(|l| l.map(|c| c.to_string()))
                        .collect::<Vec<_>>(),
                ),
                Column::new(
                    "method".into(),
                    r.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                ),
                Column::new("correct".into(), r.correct.clone()),
            ],
        )
        .map_err(|e| OperatorError::polars(KIND, "building the scores table", e))?;
        write_table(&mut table, &ctx.output("scores")?.path)?;
        let path = &ctx.output("metrics")?.path;
        let mut bytes = serde_json::to_vec_pretty(&Value::Object(r.metrics))
            .map_err(|e| OperatorError::data(KIND, e.to_string()))?;
        bytes.push(b'\n');
        std::fs::write(path, bytes).map_err(|e| OperatorError::io("writing", path, e))?;
        let path = &ctx.output("results")?.path;
        std::fs::write(path, r.csv).map_err(|e| OperatorError::io("writing", path, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use expflow_engine::PortType;

    use super::*;
    use crate::testing::{InputBytes, run_op, table_bytes, table_from_bytes};

    #[test]
    fn accuracy_per_task_and_journal() {
        let df = df!(
            "response" => ["{\"A\": 0.1, \"B\": 0.9}", "Final answer: C", "no idea", "D"],
            "answer" => ["B", "A", "C", "D"],
            "journal" => ["Cell", "Cell", "Nature", "Nature"],
            "task" => ["image2text", "text2image", "image2text", "image2text"],
        )
        .unwrap();
        let out = run_op(
            &ScoreAccuracy,
            &[InputBytes {
                port: "table",
                ty: PortType::Table,
                bytes: table_bytes(&df),
            }],
            json!({}),
            &[],
        )
        .unwrap();
        let m: Value = serde_json::from_slice(&out["metrics"]).unwrap();
        assert_eq!(m["accuracy"], json!(0.5));
        assert_eq!(m["invalid"], json!(1));
        assert_eq!(m["journals"]["Cell"]["accuracy"], json!(0.5));
        assert_eq!(m["tasks"]["image2text"]["correct"], json!(2));
        let csv = String::from_utf8(out["results"].clone()).unwrap();
        assert!(csv.contains("overall,all,2,4,1,50.00"), "{csv}");
        let t = table_from_bytes(&out["scores"]);
        assert_eq!(t.height(), 4);
    }
}
