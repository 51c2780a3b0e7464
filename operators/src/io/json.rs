//! Reading JSON (an array of objects) and JSON Lines into a table.
//!
//! Records are first parsed with `serde_json`, which gives exact line numbers for syntax
//! errors and keeps each object's key order. The schema is inferred here, over every record,
//! by a fixed rule, so column order and types never depend on hashing or sampling:
//! - columns appear in the order their keys are first seen; nested objects become struct
//!   columns (fields in first-seen order) and arrays become list columns;
//! - `null` adds no type; integers and floats together give a float; other mixes of
//!   scalars (booleans, numbers, strings) give a string column with the values' JSON text;
//! - a key that holds a list in one record and a scalar or object in another is an error;
//! - an object key that only ever holds `{}` becomes a null column.
//!
//! Polars then decodes the records, one normalised object per line, against that schema.

use std::io::Cursor;
use std::path::Path;

use polars::prelude::*;
use serde_json::Value;

use crate::error::{OperatorError, Result};

/// An inferred JSON type.
#[derive(Clone, Debug, PartialEq)]
enum Ty {
    Null,
    Bool,
    Int,
    Float,
    Str,
    List(Box<Ty>),
    Struct(Vec<(String, Ty)>),
}

impl Ty {
    /// The type of `v`; `path` names where it sits (for conflict messages).
    fn of(v: &Value, path: &str) -> std::result::Result<Ty, Conflict> {
        Ok(match v {
            Value::Null => Ty::Null,
            Value::Bool(_) => Ty::Bool,
            Value::Number(n) if n.is_i64() => Ty::Int,
            Value::Number(_) => Ty::Float,
            Value::String(_) => Ty::Str,
            Value::Array(items) => {
                let mut inner = Ty::Null;
                for item in items {
                    inner = merge_at(inner, Ty::of(item, path)?, path)?;
                }
                Ty::List(Box::new(inner))
            }
            Value::Object(map) => Ty::Struct(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), Ty::of(v, &join(path, k))?)))
                    .collect::<std::result::Result<_, Conflict>>()?,
            ),
        })
    }

    /// The type of a value only for naming it in a message.
    fn name_of(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "a list",
            Value::Object(_) => "an object",
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Ty::Null => "null",
            Ty::Bool => "a boolean",
            Ty::Int | Ty::Float => "a number",
            Ty::Str => "a string",
            Ty::List(_) => "a list",
            Ty::Struct(_) => "an object",
        }
    }

    fn is_scalar(&self) -> bool {
        matches!(self, Ty::Bool | Ty::Int | Ty::Float | Ty::Str)
    }

    fn dtype(&self) -> DataType {
        match self {
            Ty::Null => DataType::Null,
            Ty::Bool => DataType::Boolean,
            Ty::Int => DataType::Int64,
            Ty::Float => DataType::Float64,
            Ty::Str => DataType::String,
            Ty::List(inner) => DataType::List(Box::new(inner.dtype())),
            Ty::Struct(fields) if fields.is_empty() => DataType::Null,
            Ty::Struct(fields) => DataType::Struct(
                fields
                    .iter()
                    .map(|(k, t)| Field::new(k.as_str().into(), t.dtype()))
                    .collect(),
            ),
        }
    }
}

/// Two types that cannot share a column: the one seen first and the new one.
struct Conflict {
    path: String,
    have: &'static str,
    got: &'static str,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn merge_at(a: Ty, b: Ty, path: &str) -> std::result::Result<Ty, Conflict> {
    Ok(match (a, b) {
        (Ty::Null, t) | (t, Ty::Null) => t,
        (a, b) if a == b && a.is_scalar() => a,
        (Ty::Int, Ty::Float) | (Ty::Float, Ty::Int) => Ty::Float,
        (a, b) if a.is_scalar() && b.is_scalar() => Ty::Str,
        (Ty::List(a), Ty::List(b)) => Ty::List(Box::new(merge_at(*a, *b, path)?)),
        (Ty::Struct(mut have), Ty::Struct(new)) => {
            for (i, (key, t)) in new.into_iter().enumerate() {
                let sub = join(path, &key);
                // Records usually list the same keys in the same order: try position `i` first.
                let slot = match have.get(i) {
                    Some((k, _)) if *k == key => Some(i),
                    _ => have.iter().position(|(k, _)| *k == key),
                };
                match slot.map(|j| &mut have[j]) {
                    Some((_, slot)) => {
                        let old = std::mem::replace(slot, Ty::Null);
                        *slot = merge_at(old, t, &sub)?;
                    }
                    None => have.push((key, t)),
                }
            }
            Ty::Struct(have)
        }
        (a, b) => {
            return Err(Conflict {
                path: path.to_string(),
                have: a.name(),
                got: b.name(),
            });
        }
    })
}

/// Infers the type of all `records` (each with its location for messages): an object type.
fn infer<'a>(
    records: impl Iterator<Item = (String, &'a Value)>,
    path: &Path,
    format: &'static str,
) -> Result<Ty> {
    let mut schema = Ty::Struct(Vec::new());
    for (location, record) in records {
        if !record.is_object() {
            return Err(OperatorError::Parse {
                path: path.to_path_buf(),
                format,
                location: format!("{location}: "),
                message: format!(
                    "expected an object (one row), found {}",
                    Ty::name_of(record)
                ),
            });
        }
        let old = std::mem::replace(&mut schema, Ty::Null);
        schema = Ty::of(record, "")
            .and_then(|t| merge_at(old, t, ""))
            .map_err(|c| OperatorError::Parse {
                path: path.to_path_buf(),
                format,
                location: format!("{location}: "),
                message: format!(
                    "key `{}` holds {} and {}; make the values agree",
                    c.path, c.have, c.got
                ),
            })?;
    }
    Ok(schema)
}

/// Makes `value` decodable as `ty`: an object whose type has no fields (it was `{}` wherever
/// it occurred) becomes null, since a column of empty objects is stored as a null column.
fn conform(value: &mut Value, ty: &Ty) {
    match (ty, value) {
        (Ty::Struct(fields), v) if fields.is_empty() => *v = Value::Null,
        (Ty::Struct(fields), Value::Object(map)) => {
            for (key, t) in fields {
                if let Some(v) = map.get_mut(key) {
                    conform(v, t);
                }
            }
        }
        (Ty::List(inner), Value::Array(items)) => items.iter_mut().for_each(|v| conform(v, inner)),
        _ => {}
    }
}

/// Decodes parsed records (each with its location) into a table with the inferred schema.
fn to_frame(records: Vec<(String, Value)>, path: &Path, format: &'static str) -> Result<DataFrame> {
    let ty = infer(records.iter().map(|(l, r)| (l.clone(), r)), path, format)?;
    if records.is_empty() {
        return Ok(DataFrame::empty());
    }
    let Ty::Struct(fields) = &ty else {
        unreachable!("merging objects gives an object")
    };
    let schema: Schema = fields
        .iter()
        .map(|(k, t)| Field::new(k.as_str().into(), t.dtype()))
        .collect();
    // Polars decodes one normalised object per line.
    let mut lines = Vec::new();
    for (_, mut record) in records {
        conform(&mut record, &ty);
        serde_json::to_writer(&mut lines, &record).map_err(|e| OperatorError::Parse {
            path: path.to_path_buf(),
            format,
            location: String::new(),
            message: e.to_string(),
        })?;
        lines.push(b'\n');
    }
    JsonReader::new(Cursor::new(lines))
        .with_json_format(JsonFormat::JsonLines)
        .with_schema(Arc::new(schema))
        .finish()
        .map_err(|e| OperatorError::Parse {
            path: path.to_path_buf(),
            format,
            location: String::new(),
            message: e.to_string(),
        })
}

fn syntax_error(
    path: &Path,
    format: &'static str,
    line: usize,
    e: serde_json::Error,
) -> OperatorError {
    OperatorError::Parse {
        path: path.to_path_buf(),
        format,
        location: format!("line {line}: "),
        message: e.to_string(),
    }
}

/// Reads a JSON array of objects.
pub fn read_json(bytes: &[u8], path: &Path) -> Result<DataFrame> {
    const FORMAT: &str = "JSON";
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| syntax_error(path, FORMAT, e.line(), e))?;
    let Value::Array(records) = value else {
        return Err(OperatorError::Parse {
            path: path.to_path_buf(),
            format: FORMAT,
            location: String::new(),
            message: format!(
                "expected an array of objects, found {}; for one object per line use format `jsonl`",
                Ty::name_of(&value)
            ),
        });
    };
    let records = records
        .into_iter()
        .enumerate()
        .map(|(i, r)| (format!("record {}", i + 1), r))
        .collect();
    to_frame(records, path, FORMAT)
}

/// Reads JSON Lines: one object per line; blank lines are skipped and the last line may lack
/// its newline.
pub fn read_jsonl(bytes: &[u8], path: &Path) -> Result<DataFrame> {
    const FORMAT: &str = "JSON Lines";
    let text = std::str::from_utf8(bytes).map_err(|e| OperatorError::Parse {
        path: path.to_path_buf(),
        format: FORMAT,
        location: String::new(),
        message: format!("not UTF-8 text: {e}"),
    })?;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Value =
            serde_json::from_str(line).map_err(|e| syntax_error(path, FORMAT, i + 1, e))?;
        records.push((format!("line {}", i + 1), record));
    }
    to_frame(records, path, FORMAT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/data/rows")
    }

    #[test]
    fn jsonl_skips_blank_lines_and_accepts_a_missing_final_newline() {
        let df = read_jsonl(b"{\"a\": 1, \"b\": \"x\"}\n\n  \n{\"a\": 2.5}", p()).unwrap();
        assert_eq!(df.height(), 2);
        assert_eq!(df.column("a").unwrap().dtype(), &DataType::Float64);
        assert_eq!(df.column("b").unwrap().null_count(), 1);
        let names: Vec<&str> = df.get_column_names().iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn nested_values_become_struct_and_list_columns() {
        let df = read_json(
            br#"[{"m": {"x": 1}, "tags": ["a", "b"]}, {"m": {"y": "q"}, "tags": []}]"#,
            p(),
        )
        .unwrap();
        let m = df.column("m").unwrap().dtype().clone();
        let DataType::Struct(fields) = m else {
            panic!("m is {m:?}")
        };
        let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["x", "y"]);
        assert_eq!(
            df.column("tags").unwrap().dtype(),
            &DataType::List(Box::new(DataType::String))
        );
    }

    #[test]
    fn mixed_scalars_become_strings() {
        let df = read_jsonl(b"{\"v\": 1}\n{\"v\": \"one\"}\n{\"v\": true}\n", p()).unwrap();
        let v: Vec<Option<&str>> = df.column("v").unwrap().str().unwrap().iter().collect();
        assert_eq!(v, [Some("1"), Some("one"), Some("true")]);
    }

    #[test]
    fn errors_name_the_file_and_the_line_or_record() {
        let e = read_jsonl(b"{\"a\": 1}\n{\"a\": \n", p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/data/rows") && e.contains("line 2:"), "{e}");
        let e = read_jsonl(b"{\"a\": 1}\n[1, 2]\n", p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2: expected an object"), "{e}");
        let e = read_json(br#"[{"a": [1]}, {"a": 2}]"#, p())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("record 2: key `a` holds a list and a number"),
            "{e}"
        );
        let e = read_json(b"[{\"a\": 1},\n {\"a\" 2}]", p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2:"), "{e}");
    }
}
