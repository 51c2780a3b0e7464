//! `expstar.corpus`: a passages corpus (spec §D) → a passages table `{id, title, section,
//! text, contents}`, in file order, for the retrieval nodes.
//!
//! Two shapes, told apart by the first non-empty line (or the `format` parameter):
//! - Wikipedia-style `psgs_w100.tsv` (§D.1, Contriever's `load_passages`): a header naming
//!   `id`, `text` and `title` (any order), then one passage per line, tab-separated; a field
//!   in double quotes is unquoted (`""` is a quote). The id is the file's own.
//! - `kb.jsonl` (§D.2/§D.3): one JSON object per line with a `text` string and optional
//!   `title`, `section` and `id`. Without an id, the id is the first 16 hex digits of the
//!   BLAKE3 of `title \0 section \0 text`, stable whatever the line order.
//!
//! `contents` is what the retrievers index: `title text` for the TSV (Contriever embeds the
//! title before the text), `title section text` for the JSONL (as §D.2 encodes its KB), empty
//! parts left out. A malformed line, an empty text or a repeated id is an error naming
//! `file:line`.

use std::collections::HashMap;
use std::path::Path;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use polars::prelude::{Column, DataFrame};
use serde_json::{Map, Value, json};

use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::write_table;

pub struct Corpus;

const KIND: &str = "expstar.corpus";

/// The corpus shapes `format` names.
pub const FORMATS: [&str; 3] = ["auto", "tsv", "jsonl"];

/// One passage of the corpus.
#[derive(Clone, Debug, PartialEq)]
pub struct Passage {
    pub id: String,
    pub title: String,
    pub section: String,
    pub text: String,
    pub contents: String,
}

fn joined(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A TSV field without its surrounding double quotes (`""` inside is one quote).
fn unquote(field: &str) -> String {
    let f = field.trim_end_matches('\r');
    if f.len() >= 2 && f.starts_with('"') && f.ends_with('"') {
        f[1..f.len() - 1].replace("\"\"", "\"")
    } else {
        f.to_string()
    }
}

/// The passages of a `psgs_w100.tsv`-style file; `name` names it in errors.
pub fn parse_tsv(content: &str, name: &str) -> std::result::Result<Vec<Passage>, String> {
    let mut lines = content
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (hline, header) = lines
        .next()
        .ok_or_else(|| format!("{name}: the corpus is empty; give a header `id\\ttext\\ttitle` and one passage per line"))?;
    let cols: Vec<String> = header
        .split('\t')
        .map(|c| unquote(c).trim().to_string())
        .collect();
    let find = |want: &str| {
        cols.iter().position(|c| c == want).ok_or_else(|| {
            format!(
                "{name}:{}: the header has no `{want}` column (it has: {}); a psgs_w100.tsv corpus starts with `id\\ttext\\ttitle`",
                hline + 1,
                cols.join(", ")
            )
        })
    };
    let (ci, ct, cl) = (find("id")?, find("text")?, find("title")?);
    let mut out = Vec::new();
    for (i, line) in lines {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != cols.len() {
            return Err(format!(
                "{name}:{}: {} tab-separated fields, but the header has {} ({}); a tab inside a passage must not split it",
                i + 1,
                fields.len(),
                cols.len(),
                cols.join(", ")
            ));
        }
        let id = unquote(fields[ci]).trim().to_string();
        let text = unquote(fields[ct]);
        let title = unquote(fields[cl]);
        if id.is_empty() {
            return Err(format!("{name}:{}: the `id` field is empty", i + 1));
        }
        if text.trim().is_empty() {
            return Err(format!(
                "{name}:{}: passage `{id}` has an empty `text`",
                i + 1
            ));
        }
        let contents = joined(&[title.as_str(), text.as_str()]);
        out.push(Passage {
            id,
            title,
            section: String::new(),
            text,
            contents,
        });
    }
    Ok(out)
}

/// The passages of a `kb.jsonl`-style file; `name` names it in errors.
pub fn parse_jsonl(content: &str, name: &str) -> std::result::Result<Vec<Passage>, String> {
    let mut out = Vec::new();
    for (i, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{name}:{}", i + 1);
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{at}: not a JSON object: {e}"))?;
        let obj = v.as_object().ok_or_else(|| {
            format!("{at}: not a JSON object; each line is {{\"title\", \"section\", \"text\"}}")
        })?;
        let field = |k: &str| -> std::result::Result<String, String> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(format!("{at}: `{k}` is {other}, not a string")),
            }
        };
        let (title, section, text) = (field("title")?, field("section")?, field("text")?);
        if text.trim().is_empty() {
            return Err(format!(
                "{at}: no `text` string (or an empty one); each line needs the passage's text"
            ));
        }
        let id = match obj.get("id") {
            None | Some(Value::Null) => {
                let key = format!("{title}\0{section}\0{text}");
                blake3::hash(key.as_bytes()).to_hex()[..16].to_string()
            }
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                return Err(format!(
                    "{at}: `id` is {other}; give a non-empty string or a number, or leave it out"
                ));
            }
        };
        let contents = joined(&[title.as_str(), section.as_str(), text.as_str()]);
        out.push(Passage {
            id,
            title,
            section,
            text,
            contents,
        });
    }
    if out.is_empty() {
        return Err(format!("{name}: the corpus has no passages"));
    }
    Ok(out)
}

/// The passages of `content` in `format` (`auto`: JSON Lines when the first non-empty line
/// starts with `{`, else TSV), every id distinct.
pub fn parse(content: &str, format: &str, name: &str) -> std::result::Result<Vec<Passage>, String> {
    let jsonl = match format {
        "jsonl" => true,
        "tsv" => false,
        _ => content
            .lines()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim_start().starts_with('{')),
    };
    let passages = if jsonl {
        parse_jsonl(content, name)?
    } else {
        parse_tsv(content, name)?
    };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (n, p) in passages.iter().enumerate() {
        if let Some(first) = seen.insert(p.id.as_str(), n) {
            return Err(format!(
                "{name}: passage id `{}` appears twice (passages {} and {}); ids must be unique (in a kb.jsonl, a repeated passage without `id` repeats its hashed id: remove the copy)",
                p.id,
                first + 1,
                n + 1
            ));
        }
    }
    Ok(passages)
}

fn read(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| OperatorError::io("reading", path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        OperatorError::data(
            KIND,
            format!(
                "{}: not UTF-8 text ({e}); save the corpus as UTF-8",
                path.display()
            ),
        )
    })
}

/// The passages as a table.
pub fn table(passages: &[Passage]) -> Result<DataFrame> {
    let col = |name: &str, f: fn(&Passage) -> &str| {
        Column::new(
            name.into(),
            passages
                .iter()
                .map(|p| f(p).to_string())
                .collect::<Vec<_>>(),
        )
    };
    DataFrame::new_infer_height(vec![
        col("id", |p| p.id.as_str()),
        col("title", |p| p.title.as_str()),
        col("section", |p| p.section.as_str()),
        col("text", |p| p.text.as_str()),
        col("contents", |p| p.contents.as_str()),
    ])
    .map_err(|e| OperatorError::polars(KIND, "building the passages table", e))
}

impl Operator for Corpus {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "passages",
                PortType::File,
                "a corpus: psgs_w100.tsv (id, text, title, with a header) or kb.jsonl (title, section, text)",
            )]),
            outputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "passages {id, title, section, text, contents}",
            )]),
            params: vec![ParamSpec::with_default(
                "format",
                ParamKind::String,
                json!("auto"),
                "auto (JSON Lines when the first line starts with `{`, else TSV), tsv or jsonl",
            )],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Params::new(KIND, params).choice("format", &FORMATS))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let format = Params::new(KIND, ctx.params()).choice("format", &FORMATS)?;
        let path = &ctx.input("passages")?.path;
        let passages = parse(&read(path)?, format, &path.display().to_string())
            .map_err(|e| OperatorError::data(KIND, e))?;
        ctx.log(&format!("{} passages", passages.len()));
        write_table(&mut table(&passages)?, &ctx.output("table")?.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{InputBytes, column_str, run_op, table_from_bytes};

    fn run_file_op(op: &Corpus, content: &str, params: Value) -> Result<DataFrame, OpError> {
        let input = InputBytes {
            port: "passages",
            ty: PortType::File,
            bytes: content.as_bytes().to_vec(),
        };
        let out = run_op(op, &[input], params, &[])?;
        Ok(table_from_bytes(&out["table"]))
    }

    #[test]
    fn tsv_keeps_its_ids_and_unquotes_fields() {
        let tsv = "id\ttext\ttitle\n1\t\"Fire needs \"\"oxygen\"\".\"\tCombustion\n\n2\tSalt dissolves.\tSolution\r\n";
        let p = parse(tsv, "auto", "psgs.tsv").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].id, "1");
        assert_eq!(p[0].text, "Fire needs \"oxygen\".");
        assert_eq!(p[0].contents, "Combustion Fire needs \"oxygen\".");
        assert_eq!(p[1].title, "Solution");
        // The header's order is read, not assumed.
        let q = parse("title\tid\ttext\nT\t7\tX\n", "tsv", "t.tsv").unwrap();
        assert_eq!(
            (q[0].id.as_str(), q[0].title.as_str(), q[0].text.as_str()),
            ("7", "T", "X")
        );
    }

    #[test]
    fn malformed_tsv_lines_name_file_and_line() {
        let e = parse(
            "id\ttext\ttitle\n1\tok\tT\n2\tno title\n",
            "auto",
            "psgs.tsv",
        )
        .unwrap_err();
        assert!(e.starts_with("psgs.tsv:3: 2 tab-separated fields"), "{e}");
        let e = parse("id\tbody\ttitle\n", "tsv", "p.tsv").unwrap_err();
        assert!(
            e.contains("p.tsv:1: the header has no `text` column"),
            "{e}"
        );
        let e = parse("id\ttext\ttitle\n1\t \tT\n", "tsv", "p.tsv").unwrap_err();
        assert!(
            e.contains("p.tsv:2: passage `1` has an empty `text`"),
            "{e}"
        );
        let e = parse("id\ttext\ttitle\n1\ta\tT\n1\tb\tT\n", "tsv", "p.tsv").unwrap_err();
        assert!(
            e.contains("passage id `1` appears twice (passages 1 and 2)"),
            "{e}"
        );
    }

    #[test]
    fn jsonl_ids_are_stable_hashes_whatever_the_order() {
        let a =
            r#"{"title": "Combustion", "section": "Limits", "text": "Gas burns within limits."}"#;
        let b = r#"{"title": "Ink", "text": "Ink diffuses.", "id": 12}"#;
        let one = parse(&format!("{a}\n{b}\n"), "auto", "kb.jsonl").unwrap();
        let two = parse(&format!("{b}\n\n{a}\n"), "auto", "kb.jsonl").unwrap();
        assert_eq!(one[0], two[1]);
        assert_eq!(one[1].id, "12");
        assert_eq!(
            one[0].id,
            blake3::hash(b"Combustion\0Limits\0Gas burns within limits.").to_hex()[..16]
        );
        assert_eq!(
            one[0].contents,
            "Combustion Limits Gas burns within limits."
        );
        assert_eq!(one[1].section, "");
    }

    #[test]
    fn malformed_jsonl_lines_name_file_and_line() {
        let ok = r#"{"title": "T", "text": "x"}"#;
        let e = parse(&format!("{ok}\n{{\"title\": \"T\"\n"), "jsonl", "kb.jsonl").unwrap_err();
        assert!(e.starts_with("kb.jsonl:2: not a JSON object"), "{e}");
        let e = parse(
            &format!("{ok}\n\n{{\"title\": \"T\"}}\n"),
            "jsonl",
            "kb.jsonl",
        )
        .unwrap_err();
        assert!(e.starts_with("kb.jsonl:3: no `text` string"), "{e}");
        let e = parse("{\"text\": 3}\n", "auto", "kb.jsonl").unwrap_err();
        assert!(
            e.starts_with("kb.jsonl:1: `text` is 3, not a string"),
            "{e}"
        );
        let e = parse(&format!("{ok}\n{ok}\n"), "auto", "kb.jsonl").unwrap_err();
        assert!(e.contains("appears twice (passages 1 and 2)"), "{e}");
    }

    #[test]
    fn the_operator_writes_the_passages_table_and_reports_errors() {
        let df = run_file_op(
            &Corpus,
            "{\"title\": \"Ink\", \"section\": \"Diffusion\", \"text\": \"Ink spreads in water.\"}\n",
            json!({}),
        )
        .unwrap();
        assert_eq!(column_str(&df, "title"), [Some("Ink".into())]);
        assert_eq!(
            column_str(&df, "contents"),
            [Some("Ink Diffusion Ink spreads in water.".into())]
        );
        let e = run_file_op(&Corpus, "id\ttext\ttitle\n1\tx\n", json!({}))
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2: 2 tab-separated fields"), "{e}");
    }
}
