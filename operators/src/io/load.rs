//! `load`: a file (JSON, JSON Lines, CSV or Parquet) into a table.
//!
//! Input files sit in the store under their digest, without an extension, so `format: auto`
//! looks at the content: the Parquet magic `PAR1` means Parquet; otherwise, after an optional
//! UTF-8 byte-order mark and leading whitespace, `[` means a JSON array and `{` means JSON
//! Lines; anything else is read as CSV. A file that is empty or blank is an error in `auto`
//! (there is nothing to tell the format by); with an explicit `json`/`jsonl` it gives an empty
//! table.

use std::io::Cursor;
use std::path::Path;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use polars::prelude::*;
use serde_json::{Map, Value, json};

use super::csv::read_csv;
use super::json::{read_json, read_jsonl};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::write_table;

pub struct Load;

const KIND: &str = "load";
const FORMATS: [&str; 5] = ["auto", "json", "jsonl", "csv", "parquet"];

/// A concrete file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    JsonLines,
    Csv,
    Parquet,
}

/// How to read the file.
struct Config {
    format: Option<Format>,
    separator: u8,
    has_header: bool,
}

impl Config {
    fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let format = match p.choice("format", &FORMATS)? {
            "json" => Some(Format::Json),
            "jsonl" => Some(Format::JsonLines),
            "csv" => Some(Format::Csv),
            "parquet" => Some(Format::Parquet),
            _ => None,
        };
        let sep = p.str("separator")?;
        let separator = match sep.as_bytes() {
            [b] if b.is_ascii() => *b,
            _ => {
                return Err(OperatorError::param(
                    KIND,
                    "separator",
                    format!("is {sep:?}; use one ASCII character such as \",\", \";\" or \"\\t\""),
                ));
            }
        };
        Ok(Config {
            format,
            separator,
            has_header: p.bool("has_header")?,
        })
    }
}

/// Guesses the format of `bytes` (see the module docs).
pub fn detect(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(b"PAR1") {
        return Some(Format::Parquet);
    }
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match text.iter().find(|b| !b.is_ascii_whitespace()) {
        None => None,
        Some(b'[') => Some(Format::Json),
        Some(b'{') => Some(Format::JsonLines),
        Some(_) => Some(Format::Csv),
    }
}

fn read(path: &Path, cfg: &Config) -> Result<DataFrame> {
    let bytes = std::fs::read(path).map_err(|e| OperatorError::io("cannot read", path, e))?;
    let format = match cfg.format {
        Some(f) => f,
        None => detect(&bytes).ok_or_else(|| {
            OperatorError::data(
                KIND,
                format!("{} is empty: there is no table to load", path.display()),
            )
        })?,
    };
    tracing::debug!(path = %path.display(), ?format, "loading table");
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    match format {
        Format::Json => read_json(text, path),
        Format::JsonLines => read_jsonl(text, path),
        Format::Csv => read_csv(text, path, cfg.separator, cfg.has_header),
        Format::Parquet => {
            ParquetReader::new(Cursor::new(text))
                .finish()
                .map_err(|e| OperatorError::Parse {
                    path: path.to_path_buf(),
                    format: "Parquet",
                    location: String::new(),
                    message: e.to_string(),
                })
        }
    }
}

impl Operator for Load {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new("src", PortType::File, "the file to load")]),
            outputs: Ports::Fixed(vec![Port::new("table", PortType::Table, "the loaded rows")]),
            params: vec![
                ParamSpec::with_default(
                    "format",
                    ParamKind::String,
                    json!("auto"),
                    "auto, json, jsonl, csv or parquet; auto looks at the content",
                ),
                ParamSpec::with_default(
                    "separator",
                    ParamKind::String,
                    json!(","),
                    "CSV field separator (one ASCII character)",
                ),
                ParamSpec::with_default(
                    "has_header",
                    ParamKind::Bool,
                    json!(true),
                    "whether the first CSV line names the columns",
                ),
            ],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let src = ctx.input("src")?;
        let mut df = read(&src.path, &cfg)?;
        ctx.log(&format!(
            "loaded {} rows, {} columns",
            df.height(),
            df.width()
        ));
        write_table(&mut df, &ctx.output("table")?.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{column_i64, column_str, run_file_op};
    use serde_json::json;

    #[test]
    fn detection_looks_at_content() {
        assert_eq!(detect(b"PAR1...."), Some(Format::Parquet));
        assert_eq!(detect(b"\xEF\xBB\xBF  [{}]"), Some(Format::Json));
        assert_eq!(detect(b"\n\n{\"a\":1}\n"), Some(Format::JsonLines));
        assert_eq!(detect(b"a,b\n1,2\n"), Some(Format::Csv));
        assert_eq!(detect(b" \n\t"), None);
    }

    #[test]
    fn auto_reads_each_format() {
        let jsonl = run_file_op(
            &Load,
            "{\"id\": 1, \"t\": \"a\"}\n\n{\"id\": 2, \"t\": \"b\"}",
            json!({}),
        )
        .unwrap();
        assert_eq!(column_i64(&jsonl, "id"), [Some(1), Some(2)]);
        let arr = run_file_op(&Load, r#"[{"id": 3, "t": "c"}]"#, json!({})).unwrap();
        assert_eq!(column_str(&arr, "t"), [Some("c".to_string())]);
        let csv = run_file_op(&Load, "id,t\n4,d\n5,\n", json!({})).unwrap();
        assert_eq!(column_i64(&csv, "id"), [Some(4), Some(5)]);
        assert_eq!(column_str(&csv, "t"), [Some("d".to_string()), None]);
    }

    #[test]
    fn auto_reads_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        let mut df = df!("x" => [1i64, 2]).unwrap();
        write_table(&mut df, &p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let out = crate::testing::run_file_op_bytes(&Load, &bytes, json!({})).unwrap();
        assert_eq!(out, df);
    }

    #[test]
    fn csv_options_apply() {
        let out = run_file_op(
            &Load,
            "1;x\n2;y\n",
            json!({"format": "csv", "separator": ";", "has_header": false}),
        )
        .unwrap();
        assert_eq!(out.shape(), (2, 2));
        assert_eq!(column_i64(&out, "column_1"), [Some(1), Some(2)]);
    }

    #[test]
    fn parse_errors_name_file_and_line() {
        let e = run_file_op(&Load, "{\"a\": 1}\n{\"a\": 2\n", json!({}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("as JSON Lines: line 2:"), "{e}");
        let e = run_file_op(&Load, "a,b\n1,2\n", json!({"format": "json"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("as JSON: line 1:"), "{e}");
    }

    #[test]
    fn bad_parameters_are_reported_at_check_time() {
        let mut m = Map::new();
        m.insert("format".into(), json!("xml"));
        m.insert("separator".into(), json!(","));
        m.insert("has_header".into(), json!(true));
        assert_eq!(
            Load.check(&m),
            ["load: parameter `format` is `xml`; use one of: auto, json, jsonl, csv, parquet"]
        );
        m.insert("format".into(), json!("csv"));
        m.insert("separator".into(), json!(";;"));
        assert!(Load.check(&m)[0].contains("`separator` is \";;\""));
    }

    #[test]
    fn null_only_and_empty_object_columns_load() {
        let out = run_file_op(
            &Load,
            "{\"a\": null, \"o\": {}, \"big\": 18446744073709551615}\r\n{\"a\": null, \"o\": {}, \"big\": 1}\r\n",
            json!({}),
        )
        .unwrap();
        assert_eq!(out.shape(), (2, 3));
        assert_eq!(out.column("a").unwrap().null_count(), 2);
        assert_eq!(out.column("big").unwrap().dtype(), &DataType::Float64);
    }

    #[test]
    fn empty_file_is_an_error_in_auto() {
        let e = run_file_op(&Load, "\n  \n", json!({}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is empty"), "{e}");
        let out = run_file_op(&Load, "\n", json!({"format": "jsonl"})).unwrap();
        assert_eq!(out.shape(), (0, 0));
    }
}
