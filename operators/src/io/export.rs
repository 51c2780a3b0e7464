//! `export`: a table into a file in an exchange format (JSON, JSON Lines, CSV or Parquet).
//!
//! `export` writes its `file` output into the store like every other artifact; it does not
//! choose where the file ends up. To place it at a path of yours, name it in the pipeline's
//! `outputs:` section (`results/rows.jsonl: my_export.file`), which materialises the artifact
//! there after the run.
//!
//! The bytes are deterministic: rows in table order, columns in schema order.
//! - `json`: one JSON array of row objects (`[{"a":1},{"a":2}]`, no whitespace, no trailing
//!   newline);
//! - `jsonl`: one object per line, every line ending in `\n` (an empty table gives an empty
//!   file);
//! - `csv`: a header line, `,` separators, `\n` line ends, quotes only where needed, empty
//!   fields for nulls; nested (struct/list) columns cannot be written as CSV;
//! - `parquet`: the table artifact's own pinned Parquet encoding.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use polars::prelude::*;
use serde_json::{Map, Value};

use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};
use crate::table_io::{read_table, write_table};

pub struct Export;

const KIND: &str = "export";
const FORMATS: [&str; 4] = ["json", "jsonl", "csv", "parquet"];

fn write_text(df: &mut DataFrame, path: &Path, format: &str) -> Result<()> {
    if format == "csv"
        && let Some(nested) = df.columns().iter().find(|c| c.dtype().is_nested())
    {
        return Err(OperatorError::data(
            KIND,
            format!(
                "column `{}` is {} and CSV holds only flat values; export as json/jsonl/parquet, or select other columns first",
                nested.name(),
                nested.dtype()
            ),
        ));
    }
    let file = File::create(path).map_err(|e| OperatorError::io("cannot create", path, e))?;
    let mut out = BufWriter::new(file);
    df.rechunk_mut();
    let written = match format {
        "json" => JsonWriter::new(&mut out)
            .with_json_format(JsonFormat::Json)
            .finish(df),
        "jsonl" => JsonWriter::new(&mut out)
            .with_json_format(JsonFormat::JsonLines)
            .finish(df),
        _ => CsvWriter::new(&mut out)
            .include_header(true)
            .with_separator(b',')
            .with_line_terminator("\n".into())
            .n_threads(1)
            .finish(df),
    };
    written.map_err(|e| OperatorError::polars(KIND, format!("writing {format}"), e))?;
    out.flush()
        .map_err(|e| OperatorError::io("cannot write", path, e))?;
    Ok(())
}

impl Operator for Export {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "the rows to export",
            )]),
            outputs: Ports::Fixed(vec![Port::new(
                "file",
                PortType::File,
                "the exported file (place it with the pipeline's `outputs:`)",
            )]),
            params: vec![ParamSpec::required(
                "format",
                ParamKind::String,
                "json, jsonl, csv or parquet",
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
        let mut df = read_table(&ctx.input("table")?.path)?;
        let path = &ctx.output("file")?.path;
        match format {
            "parquet" => write_table(&mut df, path)?,
            text => write_text(&mut df, path, text)?,
        }
        ctx.log(&format!("exported {} rows as {format}", df.height()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{InputBytes, run_op, table_bytes, table_from_bytes};
    use serde_json::json;

    fn export(df: &DataFrame, format: &str) -> Result<Vec<u8>, OpError> {
        let input = InputBytes {
            port: "table",
            ty: PortType::Table,
            bytes: table_bytes(df),
        };
        let mut out = run_op(&Export, &[input], json!({ "format": format }), &[])?;
        out.remove("file").ok_or_else(|| "no file output".into())
    }

    fn frame() -> DataFrame {
        df!(
            "id" => [1i64, 2],
            "text" => [Some("a,b"), None],
        )
        .unwrap()
    }

    #[test]
    fn json_is_an_array_of_row_objects() {
        let bytes = export(&frame(), "json").unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"[{"id":1,"text":"a,b"},{"id":2,"text":null}]"#
        );
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!([{"id": 1, "text": "a,b"}, {"id": 2, "text": null}])
        );
    }

    #[test]
    fn jsonl_ends_every_line_with_a_newline() {
        let text = String::from_utf8(export(&frame(), "jsonl").unwrap()).unwrap();
        assert_eq!(
            text,
            "{\"id\":1,\"text\":\"a,b\"}\n{\"id\":2,\"text\":null}\n"
        );
    }

    #[test]
    fn csv_quotes_where_needed() {
        let text = String::from_utf8(export(&frame(), "csv").unwrap()).unwrap();
        assert_eq!(text, "id,text\n1,\"a,b\"\n2,\n");
    }

    #[test]
    fn parquet_round_trips_and_bytes_repeat() {
        let a = export(&frame(), "parquet").unwrap();
        assert_eq!(table_from_bytes(&a), frame());
        assert_eq!(a, export(&frame(), "parquet").unwrap());
        assert_eq!(
            export(&frame(), "json").unwrap(),
            export(&frame(), "json").unwrap()
        );
    }

    #[test]
    fn nested_columns_cannot_be_csv() {
        let mut df = frame();
        let tags = Series::new(
            "tags".into(),
            [
                Series::new("".into(), ["x"]),
                Series::new("".into(), ["y", "z"]),
            ],
        );
        df.with_column(tags.into_column()).unwrap();
        let e = export(&df, "csv").unwrap_err().to_string();
        assert!(
            e.contains("column `tags`") && e.contains("export as json"),
            "{e}"
        );
        let text = String::from_utf8(export(&df, "jsonl").unwrap()).unwrap();
        assert!(text.contains("\"tags\":[\"y\",\"z\"]"), "{text}");
    }

    #[test]
    fn unknown_format_is_rejected() {
        let e = export(&frame(), "xlsx").unwrap_err().to_string();
        assert!(
            e.contains("`format` is `xlsx`; use one of: json, jsonl, csv, parquet"),
            "{e}"
        );
    }
}
