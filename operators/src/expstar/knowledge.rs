//! The retrieval stage's inputs when no Wikipedia dump is at hand (spec §D):
//! - `expstar.knowledge`: judged retrieval results (`retrieval.json`, spec §C.5) → a passage
//!   table `{id, title, text}`, one row per distinct passage text in first-seen order, the id
//!   the first 16 hex digits of the text's BLAKE3 hash (stable whatever the order);
//! - `expstar.queries`: baseline-format rows `{id, messages, videos}` → a query table
//!   `{id, query, video_path}`; the query is the first user message without its `<video>`
//!   placeholder (the experiment title and the instruction: never the ground-truth
//!   narration, which would leak the answer, spec §D).

use std::collections::BTreeSet;

use expflow_engine::{
    Context, Determinism, OpError, Operator, Port, PortType, Ports, Resources, Signature,
};
use polars::prelude::{Column, DataFrame};
use serde_json::Value;

use super::read_json;
use super::rows_table::read_rows;
use crate::error::OperatorError;
use crate::table_io::write_table;

pub struct Knowledge;
pub struct Queries;

const KNOWLEDGE: &str = "expstar.knowledge";
const QUERIES: &str = "expstar.queries";

fn table(columns: Vec<(&str, Vec<String>)>, op: &'static str) -> Result<DataFrame, OpError> {
    let cols: Vec<Column> = columns
        .into_iter()
        .map(|(name, values)| Column::new(name.into(), values))
        .collect();
    DataFrame::new_infer_height(cols)
        .map_err(|e| OperatorError::polars(op, "building the table", e).into())
}

/// Passages of a judged retrieval file, deduplicated by text.
pub fn passages(doc: &Value) -> Result<Vec<(String, String, String)>, String> {
    let entries = doc
        .as_array()
        .ok_or("expected a JSON list of {video_path, documents} entries")?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let docs = entry
            .get("documents")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("entry {}: no `documents` list", i + 1))?;
        for (j, d) in docs.iter().enumerate() {
            let text = match d {
                Value::String(s) => s.as_str(),
                _ => d.get("text").and_then(Value::as_str).ok_or_else(|| {
                    format!("entry {}, document {}: no `text` string", i + 1, j + 1)
                })?,
            };
            let text = text
                .trim()
                .trim_start_matches("<paragraph>")
                .trim_end_matches("</paragraph>")
                .trim();
            if text.is_empty() || !seen.insert(text.to_string()) {
                continue;
            }
            let title = d.get("title").and_then(Value::as_str).unwrap_or("");
            let id = blake3::hash(text.as_bytes()).to_hex()[..16].to_string();
            out.push((id, title.to_string(), text.to_string()));
        }
    }
    Ok(out)
}

impl Operator for Knowledge {
    fn kind(&self) -> &'static str {
        KNOWLEDGE
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "retrieval",
                PortType::File,
                "judged retrieval results [{video_path, documents: [{text, title?}]}], JSON",
            )]),
            outputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "passages {id, title, text}",
            )]),
            params: vec![],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let path = &ctx.input("retrieval")?.path;
        let rows = passages(&read_json(path)?)
            .map_err(|e| OperatorError::data(KNOWLEDGE, format!("{}: {e}", path.display())))?;
        ctx.log(&format!("{} distinct passages", rows.len()));
        let mut df = table(
            vec![
                ("id", rows.iter().map(|r| r.0.clone()).collect()),
                ("title", rows.iter().map(|r| r.1.clone()).collect()),
                ("text", rows.iter().map(|r| r.2.clone()).collect()),
            ],
            KNOWLEDGE,
        )?;
        write_table(&mut df, &ctx.output("table")?.path)?;
        Ok(())
    }
}

/// `(id, query, video_path)` of one baseline-format row.
pub fn query(row: &Value, line: usize) -> Result<(String, String, String), String> {
    let id = row
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("line {line}: no string `id`"))?;
    let user = row
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| {
            m.iter()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("line {line}: no user message in `messages`"))?;
    let video = row
        .get("videos")
        .and_then(Value::as_array)
        .and_then(|v| v.first())
        .and_then(Value::as_str)
        .unwrap_or("");
    Ok((
        id.to_string(),
        user.replace("<video>", "").trim().to_string(),
        video.to_string(),
    ))
}

impl Operator for Queries {
    fn kind(&self) -> &'static str {
        QUERIES
    }

    fn version(&self) -> u32 {
        // 2: the rows arrive as a Parquet table, not JSON Lines (docs/decisions.md).
        2
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "rows",
                PortType::Table,
                "baseline-format rows {id, messages, videos}, a rows table",
            )]),
            outputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "queries {id, query, video_path}",
            )]),
            params: vec![],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let path = &ctx.input("rows")?.path;
        let mut rows = Vec::new();
        for (i, row) in read_rows(path)?.iter().enumerate() {
            rows.push(
                query(row, i + 1).map_err(|e| {
                    OperatorError::data(QUERIES, format!("{}: {e}", path.display()))
                })?,
            );
        }
        let mut df = table(
            vec![
                ("id", rows.iter().map(|r| r.0.clone()).collect()),
                ("query", rows.iter().map(|r| r.1.clone()).collect()),
                ("video_path", rows.iter().map(|r| r.2.clone()).collect()),
            ],
            QUERIES,
        )?;
        write_table(&mut df, &ctx.output("table")?.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{InputBytes, column_str, run_op, table_bytes, table_from_bytes};

    fn run_queries(rows: &str) -> Result<DataFrame, OpError> {
        let rows: Vec<Value> = rows
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let input = InputBytes {
            port: "rows",
            ty: PortType::Table,
            bytes: table_bytes(&crate::expstar::rows_table::rows_frame(&rows).unwrap()),
        };
        let out = run_op(&Queries, &[input], json!({}), &[])?;
        Ok(table_from_bytes(&out["table"]))
    }

    #[test]
    fn passages_are_deduplicated_by_text_with_stable_ids() {
        let doc = json!([
            {"video_path": "a.mp4", "documents": [{"text": " Alpha "}, {"text": "Beta", "title": "B"}]},
            {"video_path": "b.mp4", "documents": ["<paragraph> Alpha</paragraph>", {"text": "Gamma"}]}
        ]);
        let p = passages(&doc).unwrap();
        let texts: Vec<&str> = p.iter().map(|r| r.2.as_str()).collect();
        assert_eq!(texts, ["Alpha", "Beta", "Gamma"]);
        assert_eq!(p[1].1, "B");
        assert_eq!(p[0].0, blake3::hash(b"Alpha").to_hex()[..16]);
        let err = passages(&json!([{"video_path": "x"}])).unwrap_err();
        assert!(err.contains("entry 1: no `documents`"), "{err}");
    }

    #[test]
    fn queries_take_the_user_instruction_not_the_answer() {
        let rows = concat!(
            r#"{"id": "c_1", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "<video>Narrate \"Burning\"."}, {"role": "assistant", "content": "GT"}], "videos": ["/v/1.mp4"]}"#,
            "\n",
            r#"{"id": "c_2", "messages": [{"role": "user", "content": "Plain"}]}"#,
            "\n"
        );
        let df = run_queries(rows).unwrap();
        assert_eq!(
            column_str(&df, "query"),
            [Some("Narrate \"Burning\".".into()), Some("Plain".into())]
        );
        assert_eq!(
            column_str(&df, "video_path"),
            [Some("/v/1.mp4".into()), Some(String::new())]
        );
        let bad = run_queries(r#"{"messages": []}"#).unwrap_err();
        assert!(bad.to_string().contains("line 1: no string `id`"), "{bad}");
    }
}
