//! Filling parameter defaults and checking parameters against a signature.

use serde_json::{Map, Value};

use crate::operator::Signature;

/// Returns `given` with the signature's defaults filled in, canonicalised, and the list of
/// problems (unknown names, missing required values, wrong kinds). Names starting with `_`
/// are reserved and rejected.
pub fn fill_defaults(
    sig: &Signature,
    given: &Map<String, Value>,
) -> (Map<String, Value>, Vec<ParamProblem>) {
    let mut problems = Vec::new();
    let mut out = Map::new();
    for (name, value) in given {
        match sig.param(name) {
            None => problems.push(ParamProblem::Unknown(name.clone())),
            Some(spec) => {
                if !spec.kind.accepts(value) && !value.is_null() {
                    problems.push(ParamProblem::WrongKind {
                        name: name.clone(),
                        want: spec.kind.as_str(),
                        got: kind_name(value),
                    });
                }
                out.insert(name.clone(), crate::canonical::normalise(value));
            }
        }
    }
    for spec in &sig.params {
        if out.contains_key(spec.name) {
            continue;
        }
        match &spec.default {
            Some(d) => {
                out.insert(spec.name.to_string(), crate::canonical::normalise(d));
            }
            None if spec.optional => {}
            None => problems.push(ParamProblem::Missing(spec.name.to_string())),
        }
    }
    let mut sorted: Vec<(String, Value)> = out.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    (sorted.into_iter().collect(), problems)
}

/// A problem with one parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamProblem {
    Unknown(String),
    Missing(String),
    WrongKind {
        name: String,
        want: &'static str,
        got: &'static str,
    },
}

/// A short name for the JSON type of `v`.
pub fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}
