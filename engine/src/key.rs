//! Node keys: BLAKE3 over the canonical encoding of one [`KeyMaterial`].
//!
//! See `docs/key-schema.md` for what is and is not in a key. The struct is destructured in
//! [`KeyMaterial::key`], so adding a field does not compile until it is hashed or left out
//! on purpose.

use std::collections::BTreeMap;

use expflow_cache::Digest;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::canonical;
use crate::operator::PortType;

/// Bumped when the meaning of key material changes; every key changes with it.
pub const KEY_SCHEMA: u32 = 1;

const DOMAIN: &[u8] = b"expflow-node-key\0";

/// Everything a node's output depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyMaterial {
    pub schema: u32,
    /// Operator kind and version.
    pub op: String,
    pub op_version: u32,
    /// Parameters with defaults filled in, canonical. A `command`'s `run` is here with
    /// `${params..}` and `${matrix..}` expanded and `${in..}`/`${out..}` left as written,
    /// so keys do not depend on where the workspace is.
    pub params: Map<String, Value>,
    /// Content digest of every input artifact, by port.
    pub inputs: BTreeMap<String, Digest>,
    /// Output ports and their types (declared outputs of `command` change its result).
    pub outputs: BTreeMap<String, PortType>,
    /// Declared environment: tool versions, model weight digests.
    pub env: BTreeMap<String, String>,
    /// The seed, for seeded operators.
    pub seed: Option<u64>,
    /// Output ports named under the node's `metrics:` (sorted). In the key only when some
    /// are named, so that nodes without `metrics:` keep their keys; naming them changes what
    /// the record holds, so the node runs once more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
    /// Not in the key: the type of each input (implied by its content digest).
    #[serde(default)]
    pub input_types: BTreeMap<String, PortType>,
    /// Not in the key: where each input came from (`inputs.raw`, `steps.rows`), for lineage.
    #[serde(default)]
    pub sources: BTreeMap<String, String>,
}

/// What a node key is computed from, borrowed: a no-op re-run computes every node's key
/// and needs the rest of [`KeyMaterial`] (owned copies of the parameters, lineage) only for
/// the nodes that execute.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    pub schema: u32,
    pub op: &'a str,
    pub op_version: u32,
    pub params: &'a Map<String, Value>,
    pub inputs: &'a BTreeMap<String, Digest>,
    pub outputs: &'a BTreeMap<String, PortType>,
    pub env: &'a BTreeMap<String, String>,
    pub seed: Option<u64>,
    pub metrics: &'a [String],
}

impl KeyParts<'_> {
    /// The node key.
    pub fn key(&self) -> Digest {
        let KeyParts {
            schema,
            op,
            op_version,
            params,
            inputs,
            outputs,
            env,
            seed,
            metrics,
        } = *self;
        // The canonical encoding of the object {schema, op, op_version, params, inputs,
        // outputs, env, seed[, metrics]} (see [`canonical`]), written field by field in
        // sorted order rather than built as a JSON value first: a no-op re-run computes a
        // key per node. `key_of_value` in the tests checks it against the value's encoding.
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(DOMAIN);
        out.extend_from_slice(b"{\"env\":{");
        for (i, (k, v)) in env.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            canonical::write_str(k, &mut out);
            out.push(b':');
            canonical::write_str(v, &mut out);
        }
        out.extend_from_slice(b"},\"inputs\":{");
        for (i, (k, d)) in inputs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            canonical::write_str(k, &mut out);
            out.extend_from_slice(b":\"");
            out.extend_from_slice(d.to_hex().as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
        if !metrics.is_empty() {
            out.extend_from_slice(b",\"metrics\":[");
            for (i, m) in metrics.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical::write_str(m, &mut out);
            }
            out.push(b']');
        }
        out.extend_from_slice(b",\"op\":");
        canonical::write_str(op, &mut out);
        out.extend_from_slice(format!(",\"op_version\":{op_version},\"outputs\":{{").as_bytes());
        for (i, (k, t)) in outputs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            canonical::write_str(k, &mut out);
            out.push(b':');
            canonical::write_str(t.as_str(), &mut out);
        }
        out.extend_from_slice(b"},\"params\":");
        canonical::write_map(params, &mut out);
        out.extend_from_slice(format!(",\"schema\":{schema},\"seed\":").as_bytes());
        match seed {
            Some(s) => out.extend_from_slice(s.to_string().as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
        Digest::of_bytes(&out)
    }
}

impl KeyMaterial {
    /// The node key.
    pub fn key(&self) -> Digest {
        self.parts().key()
    }

    /// The parts of this material that make the key.
    pub fn parts(&self) -> KeyParts<'_> {
        KeyParts {
            schema: self.schema,
            op: &self.op,
            op_version: self.op_version,
            params: &self.params,
            inputs: &self.inputs,
            outputs: &self.outputs,
            env: &self.env,
            seed: self.seed,
            metrics: &self.metrics,
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    pub fn from_json(v: &Value) -> Option<KeyMaterial> {
        serde_json::from_value(v.clone()).ok()
    }

    /// Field-by-field differences from `old` to `self`, in words:
    /// `param lr: 0.0001 → 0.0002`, `input rows changed (3f2a… → 9bc1…)`.
    pub fn diff(&self, old: &KeyMaterial) -> Vec<String> {
        let mut out = Vec::new();
        if self.schema != old.schema {
            out.push(format!("key schema {} → {}", old.schema, self.schema));
        }
        if self.op != old.op {
            out.push(format!("operator {} → {}", old.op, self.op));
        }
        if self.op_version != old.op_version {
            out.push(format!(
                "operator version {} → {}",
                old.op_version, self.op_version
            ));
        }
        diff_maps("param", &old.params, &self.params, &mut out, compact);
        for (port, new) in &self.inputs {
            match old.inputs.get(port) {
                Some(o) if o == new => {}
                Some(o) => out.push(format!(
                    "input {port} changed ({} → {})",
                    o.short(),
                    new.short()
                )),
                None => out.push(format!("input {port} added ({})", new.short())),
            }
        }
        for port in old.inputs.keys().filter(|p| !self.inputs.contains_key(*p)) {
            out.push(format!("input {port} removed"));
        }
        let outs = |m: &BTreeMap<String, PortType>| -> Map<String, Value> {
            m.iter()
                .map(|(k, t)| (k.clone(), Value::String(t.as_str().into())))
                .collect()
        };
        diff_maps(
            "output",
            &outs(&old.outputs),
            &outs(&self.outputs),
            &mut out,
            compact,
        );
        let env = |m: &BTreeMap<String, String>| -> Map<String, Value> {
            m.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect()
        };
        diff_maps("env", &env(&old.env), &env(&self.env), &mut out, compact);
        if self.seed != old.seed {
            let show = |s: Option<u64>| s.map_or("none".to_string(), |v| v.to_string());
            out.push(format!("seed {} → {}", show(old.seed), show(self.seed)));
        }
        if self.metrics != old.metrics {
            let show = |m: &[String]| {
                if m.is_empty() {
                    "none".to_string()
                } else {
                    m.join(", ")
                }
            };
            out.push(format!(
                "metrics outputs {} → {}",
                show(&old.metrics),
                show(&self.metrics)
            ));
        }
        out
    }
}

fn diff_maps(
    what: &str,
    old: &Map<String, Value>,
    new: &Map<String, Value>,
    out: &mut Vec<String>,
    show: fn(&Value) -> String,
) {
    for (k, v) in new {
        match old.get(k) {
            Some(o) if canonical::normalise(o) == canonical::normalise(v) => {}
            Some(o) => out.push(format!("{what} {k}: {} → {}", show(o), show(v))),
            None => out.push(format!("{what} {k} added: {}", show(v))),
        }
    }
    for (k, o) in old {
        if !new.contains_key(k) {
            out.push(format!("{what} {k} removed (was {})", show(o)));
        }
    }
}

/// A value in one line, strings unquoted, long values cut.
fn compact(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(79).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The key as the canonical encoding of the material built as one JSON value (how keys
    /// were computed before they were written field by field).
    fn key_of_value(m: &KeyMaterial) -> Digest {
        let mut v = json!({
            "schema": m.schema,
            "op": m.op,
            "op_version": m.op_version,
            "params": m.params,
            "inputs": m.inputs.iter().map(|(k, d)| (k.clone(), Value::String(d.to_hex()))).collect::<Map<_, _>>(),
            "outputs": m.outputs.iter().map(|(k, t)| (k.clone(), Value::String(t.as_str().into()))).collect::<Map<_, _>>(),
            "env": m.env,
            "seed": m.seed,
        });
        if !m.metrics.is_empty() {
            v["metrics"] = json!(m.metrics);
        }
        Digest::of_bytes(&canonical::encode(&v, DOMAIN))
    }

    fn material(i: u64) -> KeyMaterial {
        let params = json!({
            "run": format!("echo \"${{in.a}}\" > ${{out.b}} # ü\t{i}"),
            "lr": 1e-4 * i as f64,
            "epochs": 3.0,
            "nested": {"z": [1, 2.5, null, true], "a": {"é": "x"}},
        });
        KeyMaterial {
            schema: KEY_SCHEMA,
            op: "train.sft".into(),
            op_version: 7 + i as u32,
            params: params.as_object().unwrap().clone(),
            inputs: (0..i)
                .map(|k| (format!("in{k}"), Digest::of_bytes(&k.to_le_bytes())))
                .collect(),
            outputs: [
                ("model".to_string(), PortType::Model),
                ("scores \"q\"".to_string(), PortType::Metrics),
            ]
            .into_iter()
            .collect(),
            env: if i.is_multiple_of(2) {
                BTreeMap::new()
            } else {
                [("python".to_string(), "3.11".to_string())]
                    .into_iter()
                    .collect()
            },
            seed: i.is_multiple_of(3).then_some(i * 1_000_003),
            metrics: if i % 2 == 1 {
                vec!["scores \"q\"".into(), "z".into()]
            } else {
                Vec::new()
            },
            input_types: BTreeMap::new(),
            sources: BTreeMap::new(),
        }
    }

    #[test]
    fn written_key_equals_the_encoded_value() {
        for i in 0..8 {
            let m = material(i);
            assert_eq!(m.key(), key_of_value(&m), "material {i}");
        }
    }
}
