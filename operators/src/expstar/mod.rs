//! The ExpStar data stages (`../shared/specs/expstar-pipeline.md`, stages A–C and nodes 1–12,
//! 20, 25, 29 and 31 of its DAG), one operator per module:
//!
//! - `expstar.scan`: a raw tree → one table row per step (matching rules, ASR alignment,
//!   derived step times, annotations);
//! - `expstar.cut_clips`: one clip per step with ffmpeg, memoised per step, checked with
//!   ffprobe;
//! - `expstar.step_meta`: the per-step metadata JSON files with their annotations;
//! - `expstar.baseline_rows`, `expstar.template_rows`: single-turn and self-RAG rows;
//! - `expstar.split`, `expstar.apply_split`, `expstar.merge`: the split by experiment;
//! - `expstar.add_rag`, `expstar.dpo_pairs`, `expstar.postprocess`, `expstar.eval_rows`;
//! - `expstar.export_swift`, `expstar.export_llamafactory`: the trainers' formats.
//! - `expstar.results`: every arm's results CSV in one table.
//! - `expstar.from_jsonl`, `expstar.to_jsonl`: rows from and to JSON Lines (the boundary).
//!
//! Rows travel between these operators as Parquet tables ([`rows_table`]: one column per
//! key, `messages` a list of structs, `videos` a list of strings, irregular values as JSON
//! text). JSON Lines appear only at the boundaries: `expstar.from_jsonl` reads a file of
//! rows, `expstar.to_jsonl` and the export operators write them like Python's
//! `json.dumps(ensure_ascii=False)` (see [`py_json`]), so they compare byte for byte with
//! the original scripts' output. `docs/expstar.md` lists every difference from the
//! original scripts.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{OperatorError, Result};

pub mod add_rag;
pub mod apply_split;
pub mod baseline_rows;
pub mod corpus;
pub mod cut_clips;
pub mod dpo_pairs;
pub mod eval_rows;
pub mod export_llamafactory;
pub mod export_swift;
pub mod jsonl;
pub mod knowledge;
pub mod merge;
pub mod postprocess;
pub mod prompts;
pub mod results;
pub mod rows_table;
pub mod scan;
pub mod split;
pub mod step_meta;
pub mod steps;
pub mod template_rows;

pub use add_rag::AddRag;
pub use apply_split::ApplySplit;
pub use baseline_rows::BaselineRows;
pub use corpus::Corpus;
pub use cut_clips::CutClips;
pub use dpo_pairs::DpoPairs;
pub use eval_rows::EvalRows;
pub use export_llamafactory::ExportLlamaFactory;
pub use export_swift::ExportSwift;
pub use jsonl::{FromJsonl, ToJsonl};
pub use knowledge::{Knowledge, Queries};
pub use merge::Merge;
pub use postprocess::Postprocess;
pub use results::Results;
pub use rows_table::{read_rows, write_rows};
pub use scan::Scan;
pub use split::Split;
pub use step_meta::StepMeta;
pub use template_rows::TemplateRows;

/// Seconds from a time written `H:MM:SS` (also `MM:SS`, `SS`, and a fractional last part,
/// which is truncated to whole seconds as the data never has one).
pub fn parse_time(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    let mut total = 0u64;
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let v = if last {
            let whole = p.split('.').next()?;
            whole.parse::<u64>().ok()?
        } else {
            p.parse::<u64>().ok()?
        };
        total = total * 60 + v;
    }
    Some(total)
}

/// `H:MM:SS`, the form the raw data and the step metadata use.
pub fn format_time(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, (secs / 60) % 60, secs % 60)
}

/// `value` as Python's `json.dumps(value, ensure_ascii=False)` writes it: separators `", "`
/// and `": "`, keys in insertion order, non-ASCII characters raw.
pub fn py_json(value: &Value) -> String {
    let mut out = String::new();
    write_py(value, None, 0, &mut out);
    out
}

/// As [`py_json`] with `indent=n` (item separator `","` then a newline).
pub fn py_json_indent(value: &Value, indent: usize) -> String {
    let mut out = String::new();
    write_py(value, Some(indent), 0, &mut out);
    out
}

fn write_py(value: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_py_str(s, out),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_py(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_py_str(k, out);
                out.push_str(": ");
                write_py(v, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

fn write_py_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Reads JSON Lines: blank lines are skipped and the last line may lack its newline (the
/// Demo files do). Errors name the file and the line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| OperatorError::io("cannot read", path, e))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| OperatorError::Parse {
            path: path.to_path_buf(),
            format: "JSON Lines",
            location: format!("line {}: ", i + 1),
            message: e.to_string(),
        })?;
        rows.push(v);
    }
    Ok(rows)
}

/// Reads one JSON document.
pub fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).map_err(|e| OperatorError::io("cannot read", path, e))?;
    serde_json::from_str(&text).map_err(|e| OperatorError::Parse {
        path: path.to_path_buf(),
        format: "JSON",
        location: String::new(),
        message: e.to_string(),
    })
}

/// Writes rows as JSON Lines in Python's style, each line ending with a newline.
pub fn write_jsonl(path: &Path, rows: &[Value]) -> Result<()> {
    let mut text = String::new();
    for row in rows {
        text.push_str(&py_json(row));
        text.push('\n');
    }
    write_file(path, text.as_bytes())
}

pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| OperatorError::io("cannot create directory", parent, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| OperatorError::io("cannot write", path, e))
}

/// Files under `dir` (recursively) whose names end with `ext`, sorted by path.
pub fn files_with_ext(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| OperatorError::io("cannot list", &d, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| OperatorError::io("cannot list", &d, e))?;
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(ext))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Splits a leading decimal number and a `-`/`_` separator off a name: `02-标题` →
/// `(2, "02", '-', "标题")`.
pub fn split_number(name: &str) -> Option<(u64, &str, char, &str)> {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let (num, rest) = name.split_at(digits);
    let mut chars = rest.chars();
    let sep = chars.next()?;
    if sep != '-' && sep != '_' {
        return None;
    }
    let title = chars.as_str();
    if title.is_empty() {
        return None;
    }
    Some((num.parse().ok()?, num, sep, title))
}

/// The string field `key` of a JSON object, or `""`.
pub fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The first message of `role` in a row's `messages`.
pub fn message<'a>(row: &'a Value, role: &str) -> Option<&'a str> {
    row.get("messages")?
        .as_array()?
        .iter()
        .find(|m| m.get("role").and_then(Value::as_str) == Some(role))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
}

/// `videos[0]` of a row.
pub fn first_video(row: &Value) -> Option<&str> {
    row.get("videos")?.as_array()?.first()?.as_str()
}

pub fn data(op: &'static str, message: impl Into<String>) -> OperatorError {
    OperatorError::data(op, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_round_trip() {
        assert_eq!(parse_time("0:00:25"), Some(25));
        assert_eq!(parse_time("1:02:03"), Some(3723));
        assert_eq!(parse_time("02:03"), Some(123));
        assert_eq!(parse_time("x"), None);
        assert_eq!(format_time(3723), "1:02:03");
        assert_eq!(format_time(25), "0:00:25");
    }

    #[test]
    fn python_style_json() {
        let v = json!({"a": "x\"y\n₂→", "b": [1, {"c": null}], "d": [], "e": true});
        assert_eq!(
            py_json(&v),
            r#"{"a": "x\"y\n₂→", "b": [1, {"c": null}], "d": [], "e": true}"#
        );
        assert_eq!(
            py_json_indent(&json!({"a": [1, 2], "b": {}}), 2),
            "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}"
        );
    }

    #[test]
    fn numbers_split_off_names() {
        assert_eq!(
            split_number("02-一氧化碳"),
            Some((2, "02", '-', "一氧化碳"))
        );
        assert_eq!(split_number("10_a_b"), Some((10, "10", '_', "a_b")));
        assert_eq!(split_number("a-1"), None);
        assert_eq!(split_number("3-"), None);
    }
}
