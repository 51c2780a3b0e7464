//! Reading CSV into a table, with errors that point at the offending line.
//!
//! Column types are inferred from every row (not a sample), so a late odd value widens its
//! column instead of failing the read. Polars' CSV errors do not say where they happened; on
//! failure the text is scanned for the first record with more fields than the first one, or a
//! quoted field that never closes, and the message names its line.

use std::io::Cursor;
use std::path::Path;

use polars::prelude::*;

use crate::error::{OperatorError, Result};

/// Reads CSV `bytes` (from the file at `path`, which messages name).
pub fn read_csv(bytes: &[u8], path: &Path, separator: u8, has_header: bool) -> Result<DataFrame> {
    CsvReadOptions::default()
        .with_has_header(has_header)
        // Every row decides the column types, not a sample of the first ones.
        .with_infer_schema_length(None)
        .with_parse_options(CsvParseOptions::default().with_separator(separator))
        .into_reader_with_file_handle(Cursor::new(bytes))
        .finish()
        .map_err(|e| {
            let (location, message) = match locate_csv_problem(bytes, separator) {
                Some((line, problem)) => (format!("line {line}: "), problem),
                None => (String::new(), first_paragraph(&e)),
            };
            OperatorError::Parse {
                path: path.to_path_buf(),
                format: "CSV",
                location,
                message: format!(
                    "{message}; set `format` if this is not CSV, or `separator`/`has_header` if it is"
                ),
            }
        })
}

/// The first paragraph of a Polars error; the rest gives hints for Polars' Python API.
fn first_paragraph(e: &PolarsError) -> String {
    let text = e.to_string();
    text.split("\n\n").next().unwrap_or_default().to_string()
}

/// Finds the first CSV record that cannot be read: one with more fields than the first
/// record, or a quoted field that is never closed. Returns its first line (1-based) and the
/// problem. Fields that start with `"` are quoted; `""` inside them is a literal quote.
fn locate_csv_problem(bytes: &[u8], separator: u8) -> Option<(usize, String)> {
    let mut line = 1;
    let mut record_line = 1;
    let mut fields = 1;
    let mut expected: Option<usize> = None;
    let mut field_start = true;
    let mut quoted = false;
    let mut in_quotes = false;
    let mut end_record = |fields: usize, record_line: usize| -> Option<(usize, String)> {
        match expected {
            None => {
                expected = Some(fields);
                None
            }
            Some(want) if fields > want => Some((
                record_line,
                format!(
                    "{fields} fields, but the first line has {want}; quote fields that contain the separator"
                ),
            )),
            Some(_) => None,
        }
    };
    for &b in bytes {
        if b == b'\n' {
            line += 1;
        }
        if in_quotes {
            in_quotes = b != b'"';
            continue;
        }
        match b {
            b'"' if field_start || quoted => {
                quoted = true;
                in_quotes = true;
            }
            b'\n' => {
                if let Some(problem) = end_record(fields, record_line) {
                    return Some(problem);
                }
                fields = 1;
                quoted = false;
                record_line = line;
                field_start = true;
                continue;
            }
            b if b == separator => {
                fields += 1;
                quoted = false;
                field_start = true;
                continue;
            }
            b'\r' => continue,
            _ => {}
        }
        field_start = false;
    }
    if in_quotes {
        return Some((
            record_line,
            "a quoted field opened here is never closed".to_string(),
        ));
    }
    if field_start && fields == 1 {
        return None;
    }
    end_record(fields, record_line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Load;
    use crate::testing::run_file_op;
    use serde_json::json;

    #[test]
    fn csv_errors_name_the_line() {
        let e = run_file_op(&Load, "a,b\n1,2\n3,4,5\n", json!({"format": "csv"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("as CSV: line 3: 3 fields, but the first line has 2"),
            "{e}"
        );
        let e = run_file_op(&Load, "a,b\n\"x\"\"y\",1\n\"open,2\n", json!({}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("as CSV: line 3: a quoted field opened here is never closed"),
            "{e}"
        );
    }

    #[test]
    fn csv_locator_understands_quotes() {
        assert_eq!(
            locate_csv_problem(b"a,b\n\"1,2\",3\n\"x\"\"\",4", b','),
            None
        );
        assert_eq!(
            locate_csv_problem(b"a;b\n\"multi\nline\";1\n1;2;3", b';').map(|p| p.0),
            Some(4)
        );
    }
}
