//! The canonical encoding of JSON values that keys are hashed over.
//!
//! Maps are sorted by key, there is no whitespace, strings use JSON escaping, and numbers are
//! normalised: a float with an integral value in the i64 range is written as that integer (so
//! `1`, `1.0` and `1e0` hash the same), other floats use the shortest representation that
//! round-trips (`1.0e-4` and `0.0001` hash the same). This format is part of the key schema:
//! changing it changes every key.

use serde_json::Value;

/// Encodes `v` canonically, after a domain-separation prefix.
pub fn encode(v: &Value, domain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(domain);
    write(v, &mut out);
    out
}

/// Returns `v` with its numbers normalised (see the module docs) and maps sorted.
pub fn normalise(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::Number(normal_number(n)),
        Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), normalise(&map[k])))
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

fn normal_number(n: &serde_json::Number) -> serde_json::Number {
    if n.is_i64() || n.is_u64() {
        return n.clone();
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => serde_json::Number::from(f as i64),
        _ => n.clone(),
    }
}

pub(crate) fn write(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            let n = normal_number(n);
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => write_map(map, out),
    }
}

/// A JSON object, its keys sorted.
pub(crate) fn write_map(map: &serde_json::Map<String, Value>, out: &mut Vec<u8>) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(k, out);
        out.push(b':');
        write(v, out);
    }
    out.push(b'}');
}

pub(crate) fn write_str(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is deterministic; reuse it (writing into a Vec cannot
    // fail).
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_are_sorted_and_numbers_normalised() {
        let a = json!({"b": 1.0, "a": [1e-4, "x"], "c": {"z": null, "y": true}});
        let b = json!({"c": {"y": true, "z": null}, "a": [0.0001, "x"], "b": 1});
        assert_eq!(encode(&a, b""), encode(&b, b""));
        assert_eq!(
            String::from_utf8(encode(&a, b"")).unwrap(),
            r#"{"a":[0.0001,"x"],"b":1,"c":{"y":true,"z":null}}"#
        );
    }

    #[test]
    fn distinct_values_encode_differently() {
        assert_ne!(encode(&json!(1), b""), encode(&json!("1"), b""));
        assert_ne!(encode(&json!(0.5), b""), encode(&json!(0.25), b""));
        assert_ne!(encode(&json!([1, 2]), b""), encode(&json!([2, 1]), b""));
    }

    #[test]
    fn domain_prefix_separates() {
        assert_ne!(encode(&json!(1), b"a"), encode(&json!(1), b"b"));
    }

    #[test]
    fn normalise_matches_encoding() {
        let v = json!({"b": 2.0, "a": 1.5});
        assert_eq!(
            serde_json::to_string(&normalise(&v)).unwrap(),
            r#"{"a":1.5,"b":2}"#
        );
    }
}
