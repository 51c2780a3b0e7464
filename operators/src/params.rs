//! Typed access to an operator's parameters, with errors that name the operator and the
//! parameter. The same readers serve `Operator::check` (compile time) and `run`.
//!
//! A JSON `null` counts as "not given", so optional parameters default to `null` in the
//! signature.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{OperatorError, Result};

/// The parameters of one operator invocation.
#[derive(Clone, Copy)]
pub struct Params<'a> {
    op: &'static str,
    map: &'a Map<String, Value>,
}

impl<'a> Params<'a> {
    pub fn new(op: &'static str, map: &'a Map<String, Value>) -> Params<'a> {
        Params { op, map }
    }

    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The value of `name`, or `None` when it is absent or null.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn wrong(&self, name: &str, want: &str, got: &Value) -> OperatorError {
        OperatorError::param(self.op, name, format!("must be {want}, got {got}"))
    }

    pub fn missing(&self, name: &str) -> OperatorError {
        OperatorError::param(self.op, name, "is required: add it under `params:`")
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(name, "a string", v)),
        }
    }

    pub fn str(&self, name: &str) -> Result<&'a str> {
        self.opt_str(name)?.ok_or_else(|| self.missing(name))
    }

    pub fn bool(&self, name: &str) -> Result<bool> {
        match self.get(name) {
            None => Err(self.missing(name)),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.wrong(name, "true or false", v)),
        }
    }

    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.wrong(name, "a non-negative integer", v)),
        }
    }

    pub fn u64(&self, name: &str) -> Result<u64> {
        self.opt_u64(name)?.ok_or_else(|| self.missing(name))
    }

    pub fn opt_f64(&self, name: &str) -> Result<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong(name, "a number", v)),
        }
    }

    pub fn f64(&self, name: &str) -> Result<f64> {
        self.opt_f64(name)?.ok_or_else(|| self.missing(name))
    }

    /// A list of strings; a single string counts as a list of one.
    pub fn opt_strings(&self, name: &str) -> Result<Option<Vec<String>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        self.wrong(name, "a list of strings", &Value::Array(items.clone()))
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.wrong(name, "a list of strings", v)),
        }
    }

    /// A non-empty list of strings.
    pub fn strings(&self, name: &str) -> Result<Vec<String>> {
        let list = self.opt_strings(name)?.ok_or_else(|| self.missing(name))?;
        if list.is_empty() {
            return Err(OperatorError::param(
                self.op,
                name,
                "is an empty list: name at least one column",
            ));
        }
        Ok(list)
    }

    /// A boolean, or a list of booleans of length `n` (a single boolean is repeated `n` times).
    pub fn bools(&self, name: &str, n: usize) -> Result<Vec<bool>> {
        match self.get(name) {
            None => Err(self.missing(name)),
            Some(Value::Bool(b)) => Ok(vec![*b; n]),
            Some(Value::Array(items)) => {
                let list = items
                    .iter()
                    .map(Value::as_bool)
                    .collect::<Option<Vec<bool>>>()
                    .ok_or_else(|| {
                        self.wrong(
                            name,
                            "true, false or a list of them",
                            &Value::Array(items.clone()),
                        )
                    })?;
                if list.len() != n {
                    return Err(OperatorError::param(
                        self.op,
                        name,
                        format!(
                            "has {} values but {n} are needed (one per column)",
                            list.len()
                        ),
                    ));
                }
                Ok(list)
            }
            Some(v) => Err(self.wrong(name, "true, false or a list of them", v)),
        }
    }

    /// A map of string values, sorted by key.
    pub fn string_map(&self, name: &str) -> Result<BTreeMap<String, String>> {
        match self.get(name) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(OperatorError::param(
                        self.op,
                        name,
                        format!("must map names to strings; `{k}` is {other}"),
                    )),
                })
                .collect(),
            Some(v) => Err(self.wrong(name, "a map of strings", v)),
        }
    }

    /// One of `choices`.
    pub fn choice(&self, name: &str, choices: &[&'static str]) -> Result<&'static str> {
        let given = self.str(name)?;
        choices
            .iter()
            .copied()
            .find(|c| *c == given)
            .ok_or_else(|| {
                OperatorError::param(
                    self.op,
                    name,
                    format!("is `{given}`; use one of: {}", choices.join(", ")),
                )
            })
    }
}

/// Turns the result of a parameter parse into `check`'s list of messages.
pub fn problems<T>(result: Result<T>) -> Vec<String> {
    match result {
        Ok(_) => Vec::new(),
        Err(e) => vec![e.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test literal is an object"),
        }
    }

    #[test]
    fn readers_accept_the_right_shapes_and_name_the_parameter() {
        let m = map(json!({"a": "x", "l": ["p", "q"], "b": [true, false], "n": null, "i": -1}));
        let p = Params::new("demo", &m);
        assert_eq!(p.opt_strings("a").unwrap(), Some(vec!["x".to_string()]));
        assert_eq!(p.strings("l").unwrap(), vec!["p", "q"]);
        assert_eq!(p.bools("b", 2).unwrap(), vec![true, false]);
        assert_eq!(p.opt_str("n").unwrap(), None);
        let e = p.bools("b", 3).unwrap_err().to_string();
        assert!(e.contains("demo: parameter `b` has 2 values but 3"), "{e}");
        let e = p.u64("i").unwrap_err().to_string();
        assert!(
            e.contains("`i` must be a non-negative integer, got -1"),
            "{e}"
        );
        let e = p.str("n").unwrap_err().to_string();
        assert!(e.contains("`n` is required"), "{e}");
        let e = p.choice("a", &["y", "z"]).unwrap_err().to_string();
        assert!(e.contains("is `x`; use one of: y, z"), "{e}");
    }
}
