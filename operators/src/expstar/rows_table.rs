//! ExpStar rows as Parquet tables: the form in which rows travel between the `expstar.*`
//! operators (and `expstar.rag_infer`, `expstar.reward`), written with the pinned writer of
//! [`crate::table_io`], and turned back into the very JSON rows they were made from.
//!
//! Each top-level key of the rows becomes a column, in the order the keys first appear. A
//! key gets a typed Arrow column when every row has it, non-null, in one shape:
//!
//! | JSON values                                   | Arrow type                       |
//! |-----------------------------------------------|----------------------------------|
//! | strings                                       | `utf8`                           |
//! | integers                                      | `int64`                          |
//! | fractional numbers                            | `float64`                        |
//! | booleans                                      | `bool`                           |
//! | lists of strings (`videos`, `images`)         | `list<utf8>`                     |
//! | lists of objects of strings with the same keys (`messages`) | `list<struct<role: utf8, content: utf8>>` |
//! | objects of strings with the same keys (`gt`)  | `struct<feedback: utf8>`         |
//!
//! Any other key (its shape varies from row to row, it is missing or null in some rows, or
//! it holds deeper JSON such as `evaluation_data`) becomes a `utf8` column named
//! `KEY.json` holding each row's value as compact JSON text, null where the row lacks the
//! key. Reading gives back every row with its keys, values and key order, so exporting the
//! rows as JSON Lines ([`super::py_json`]) writes the bytes the JSON Lines stage wrote.
//! `docs/decisions.md` says why nested values are columns and where JSON text is used.

use std::path::Path;

use polars::prelude::*;
use serde_json::{Map, Number, Value};

use crate::error::{OperatorError, Result};
use crate::table_io::{read_table, write_table};

/// Suffix of a column that holds JSON text.
pub const JSON_SUFFIX: &str = ".json";

const WHAT: &str = "expstar rows";

#[derive(Debug, Clone, PartialEq)]
enum Col {
    Str,
    Int,
    Float,
    Bool,
    StrList,
    StructList(Vec<String>),
    Struct(Vec<String>),
    Json,
}

/// The keys of an object whose values are all strings, or `None`.
fn string_keys(v: &Value) -> Option<Vec<String>> {
    let m = v.as_object()?;
    if m.is_empty() || !m.values().all(Value::is_string) {
        return None;
    }
    Some(m.keys().cloned().collect())
}

fn same_keys<'a>(mut objects: impl Iterator<Item = &'a Value>) -> Option<Vec<String>> {
    let first = string_keys(objects.next()?)?;
    objects
        .all(|o| string_keys(o).as_ref() == Some(&first))
        .then_some(first)
}

fn column_kind(values: &[Option<&Value>]) -> Col {
    let Some(values) = values
        .iter()
        .map(|v| v.filter(|v| !v.is_null()))
        .collect::<Option<Vec<&Value>>>()
    else {
        return Col::Json;
    };
    if values.iter().all(|v| v.is_string()) {
        Col::Str
    } else if values.iter().all(|v| v.is_i64()) {
        Col::Int
    } else if values.iter().all(|v| v.is_f64()) {
        Col::Float
    } else if values.iter().all(|v| v.is_boolean()) {
        Col::Bool
    } else if values.iter().all(|v| v.is_array()) {
        let mut items = values
            .iter()
            .flat_map(|v| v.as_array().into_iter().flatten());
        if items.clone().all(Value::is_string) {
            Col::StrList
        } else {
            match same_keys(&mut items) {
                Some(keys) => Col::StructList(keys),
                None => Col::Json,
            }
        }
    } else if values.iter().all(|v| v.is_object()) {
        match same_keys(values.iter().copied()) {
            Some(keys) => Col::Struct(keys),
            None => Col::Json,
        }
    } else {
        Col::Json
    }
}

fn polars_err(what: String) -> impl FnOnce(PolarsError) -> OperatorError {
    move |e| OperatorError::polars(WHAT, what, e)
}

/// A struct series of `n` rows from `objects` (objects of strings with `keys`).
fn struct_series(name: &str, keys: &[String], objects: &[&Value]) -> Result<Series> {
    let fields: Vec<Series> = keys
        .iter()
        .map(|k| {
            let vals: Vec<&str> = objects
                .iter()
                .map(|o| o.get(k).and_then(Value::as_str).unwrap_or_default())
                .collect();
            Series::new(k.as_str().into(), vals)
        })
        .collect();
    Ok(
        StructChunked::from_series(name.into(), objects.len(), fields.iter())
            .map_err(polars_err(format!("building column `{name}`")))?
            .into_series(),
    )
}

fn list_series(name: &str, inner: &DataType, lists: Vec<Series>) -> Result<Series> {
    let dtype = DataType::List(Box::new(inner.clone()));
    if lists.is_empty() {
        return Ok(Series::new_empty(name.into(), &dtype));
    }
    let mut ca: ListChunked = lists.into_iter().map(Some).collect();
    ca.rename(name.into());
    let s = ca.into_series();
    if s.dtype() == &dtype {
        return Ok(s);
    }
    s.cast(&dtype)
        .map_err(polars_err(format!("building column `{name}`")))
}

fn build_column(key: &str, kind: &Col, values: &[Option<&Value>]) -> Result<Series> {
    let present = || {
        values
            .iter()
            .map(|v| v.expect("typed columns are complete"))
    };
    let name: PlSmallStr = key.into();
    Ok(match kind {
        Col::Str => Series::new(
            name,
            present()
                .map(|v| v.as_str().unwrap_or_default())
                .collect::<Vec<_>>(),
        ),
        Col::Int => Series::new(
            name,
            present()
                .map(|v| v.as_i64().unwrap_or_default())
                .collect::<Vec<_>>(),
        ),
        Col::Float => Series::new(
            name,
            present()
                .map(|v| v.as_f64().unwrap_or_default())
                .collect::<Vec<_>>(),
        ),
        Col::Bool => Series::new(
            name,
            present()
                .map(|v| v.as_bool().unwrap_or_default())
                .collect::<Vec<_>>(),
        ),
        Col::StrList => {
            let lists = present()
                .map(|v| {
                    let items: Vec<&str> = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| s.as_str().unwrap_or_default())
                        .collect();
                    Series::new(PlSmallStr::EMPTY, items)
                })
                .collect();
            list_series(key, &DataType::String, lists)?
        }
        Col::StructList(keys) => {
            let inner = DataType::Struct(
                keys.iter()
                    .map(|k| Field::new(k.as_str().into(), DataType::String))
                    .collect(),
            );
            let mut lists = Vec::with_capacity(values.len());
            for v in present() {
                let items: Vec<&Value> = v.as_array().into_iter().flatten().collect();
                lists.push(struct_series("", keys, &items)?);
            }
            list_series(key, &inner, lists)?
        }
        Col::Struct(keys) => struct_series(key, keys, &present().collect::<Vec<_>>())?,
        Col::Json => Series::new(
            format!("{key}{JSON_SUFFIX}").into(),
            values
                .iter()
                .map(|v| v.map(|v| serde_json::to_string(v).unwrap_or_default()))
                .collect::<Vec<Option<String>>>(),
        ),
    })
}

/// The table of `rows` (JSON objects; see the module docs for the column types).
pub fn rows_frame(rows: &[Value]) -> Result<DataFrame> {
    let mut keys: Vec<&str> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let m = row.as_object().ok_or_else(|| {
            OperatorError::data(WHAT, format!("row {} is not a JSON object", i + 1))
        })?;
        for k in m.keys() {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
    }
    let mut columns = Vec::with_capacity(keys.len());
    for key in keys {
        let values: Vec<Option<&Value>> = rows.iter().map(|r| r.get(key)).collect();
        let kind = column_kind(&values);
        columns.push(build_column(key, &kind, &values)?.into_column());
    }
    DataFrame::new(rows.len(), columns).map_err(polars_err("assembling the rows table".into()))
}

/// Each value of `s` as JSON (`None` for nulls).
fn column_values(s: &Series) -> Result<Vec<Option<Value>>> {
    let name = s.name().to_string();
    let err = || polars_err(format!("reading column `{name}`"));
    Ok(match s.dtype() {
        DataType::String => s
            .str()
            .map_err(err())?
            .iter()
            .map(|v| v.map(|v| Value::String(v.to_owned())))
            .collect(),
        DataType::Boolean => s
            .bool()
            .map_err(err())?
            .iter()
            .map(|v| v.map(Value::Bool))
            .collect(),
        DataType::UInt64 => s
            .u64()
            .map_err(err())?
            .iter()
            .map(|v| v.map(Value::from))
            .collect(),
        d if d.is_integer() => s
            .cast(&DataType::Int64)
            .map_err(err())?
            .i64()
            .map_err(err())?
            .iter()
            .map(|v| v.map(Value::from))
            .collect(),
        d if d.is_float() => s
            .cast(&DataType::Float64)
            .map_err(err())?
            .f64()
            .map_err(err())?
            .iter()
            .map(|v| v.map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)))
            .collect(),
        DataType::Null => vec![None; s.len()],
        DataType::List(_) => {
            let ca = s.list().map_err(err())?;
            let mut out = Vec::with_capacity(ca.len());
            for item in ca.series_iter() {
                out.push(match item {
                    Some(inner) => Some(Value::Array(
                        column_values(&inner)?
                            .into_iter()
                            .map(|v| v.unwrap_or(Value::Null))
                            .collect(),
                    )),
                    None => None,
                });
            }
            out
        }
        DataType::Struct(_) => {
            let ca = s.struct_().map_err(err())?;
            let fields = ca.fields_as_series();
            let mut names = Vec::with_capacity(fields.len());
            let mut cols = Vec::with_capacity(fields.len());
            for f in &fields {
                names.push(f.name().to_string());
                cols.push(column_values(f)?);
            }
            let nulls = s.is_null();
            (0..s.len())
                .map(|i| {
                    if nulls.get(i) == Some(true) {
                        return None;
                    }
                    let mut m = Map::new();
                    for (n, c) in names.iter().zip(&cols) {
                        m.insert(n.clone(), c[i].clone().unwrap_or(Value::Null));
                    }
                    Some(Value::Object(m))
                })
                .collect()
        }
        _ => column_values(&s.cast(&DataType::String).map_err(err())?)?,
    })
}

/// The JSON rows of a table written by [`rows_frame`] (or any table: a struct is an object,
/// a list an array, a null in a typed column `null`).
pub fn frame_rows(df: &DataFrame) -> Result<Vec<Value>> {
    let mut rows = vec![Map::new(); df.height()];
    for col in df.columns() {
        let s = col.as_materialized_series();
        let name = s.name().as_str();
        match name.strip_suffix(JSON_SUFFIX) {
            Some(key) if s.dtype() == &DataType::String => {
                let ca = s
                    .str()
                    .map_err(polars_err(format!("reading column `{name}`")))?;
                for (i, text) in ca.iter().enumerate() {
                    let Some(text) = text else { continue };
                    let v = serde_json::from_str(text).map_err(|e| {
                        OperatorError::data(
                            WHAT,
                            format!("row {} column `{name}` is not JSON: {e}", i + 1),
                        )
                    })?;
                    rows[i].insert(key.to_string(), v);
                }
            }
            _ => {
                for (i, v) in column_values(s)?.into_iter().enumerate() {
                    rows[i].insert(name.to_string(), v.unwrap_or(Value::Null));
                }
            }
        }
    }
    Ok(rows.into_iter().map(Value::Object).collect())
}

/// Writes `rows` as a table artifact (pinned Parquet) at `path`.
pub fn write_rows(path: &Path, rows: &[Value]) -> Result<()> {
    let mut df = rows_frame(rows)?;
    write_table(&mut df, path)
}

/// Reads the rows of a table artifact.
pub fn read_rows(path: &Path) -> Result<Vec<Value>> {
    frame_rows(&read_table(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expstar::py_json;
    use serde_json::json;

    fn sft(id: &str, content: &str) -> Value {
        json!({
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "<video>u ₂"}, {"role": "assistant", "content": content}],
            "videos": [format!("/path/to/{id}.mp4")],
            "id": id,
        })
    }

    fn round_trip(rows: &[Value]) -> Vec<Value> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        write_rows(&p, rows).unwrap();
        read_rows(&p).unwrap()
    }

    fn lines(rows: &[Value]) -> String {
        rows.iter().map(|r| py_json(r) + "\n").collect()
    }

    #[test]
    fn messages_and_videos_are_typed_columns() {
        let rows = [sft("a", "x"), sft("b", "y\n\"z\"")];
        let df = rows_frame(&rows).unwrap();
        let schema: Vec<String> = df
            .schema()
            .iter()
            .map(|(n, t)| format!("{n}: {t}"))
            .collect();
        assert_eq!(
            schema,
            ["messages: list[struct[2]]", "videos: list[str]", "id: str"]
        );
        assert_eq!(
            df.column("messages").unwrap().dtype(),
            &DataType::List(Box::new(DataType::Struct(vec![
                Field::new("role".into(), DataType::String),
                Field::new("content".into(), DataType::String),
            ])))
        );
        let back = round_trip(&rows);
        assert_eq!(lines(&back), lines(&rows));
    }

    #[test]
    fn varying_and_missing_keys_become_json_text_and_come_back_exactly() {
        let rows = [
            json!({"id": "a", "reward": 1, "evaluation_data": {"rounds": [{"role": "assistant", "content": "r"}], "n": 1.5}, "gt": {"feedback": "g"}, "empty": []}),
            json!({"reward": true, "evaluation_data": {"x": null}, "gt": {"feedback": "h"}, "empty": [], "extra": null}),
        ];
        let df = rows_frame(&rows).unwrap();
        let names: Vec<&str> = df.get_column_names().iter().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "id.json",
                "reward.json",
                "evaluation_data.json",
                "gt",
                "empty",
                "extra.json"
            ]
        );
        let back = round_trip(&rows);
        // Key order within a row follows the columns, so row 2 keeps its own order here.
        assert_eq!(back, rows);
        assert_eq!(lines(&back), lines(&rows));
    }

    #[test]
    fn numbers_keep_their_kind() {
        let rows = [
            json!({"i": 3, "f": 0.25, "b": false, "mixed": 1}),
            json!({"i": -4, "f": 1.0, "b": true, "mixed": 2.5}),
        ];
        let df = rows_frame(&rows).unwrap();
        assert_eq!(df.column("i").unwrap().dtype(), &DataType::Int64);
        assert_eq!(df.column("f").unwrap().dtype(), &DataType::Float64);
        assert!(df.column("mixed.json").is_ok());
        assert_eq!(lines(&round_trip(&rows)), lines(&rows));
    }

    #[test]
    fn no_rows_give_an_empty_table_and_equal_rows_equal_bytes() {
        assert!(round_trip(&[]).is_empty());
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write_rows(&a, &[sft("a", "x")]).unwrap();
        write_rows(&b, &[sft("a", "x")]).unwrap();
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    }

    #[test]
    fn a_row_that_is_not_an_object_is_named() {
        let e = rows_frame(&[json!({"a": 1}), json!([1])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 2 is not a JSON object"), "{e}");
    }
}
