//! Property tests of key canonicalisation (proptest): a node's key does not depend on how its
//! parameters are written in the pipeline file (block or flow style, map order, quoting,
//! number spelling, comments, `${params.…}` indirection), and different parameters give
//! different keys.

use std::sync::Arc;

use expflow_cache::Digest;
use expflow_engine::fuzzing::{PIPELINE_FILE, bare_key};
use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports, Registry,
    Resources, Signature, canonical, compile,
};
use proptest::prelude::*;
use serde_json::{Map, Number, Value, json};

/// An operator with one parameter of any kind; it is compiled, never run.
struct Take;

impl Operator for Take {
    fn kind(&self) -> &'static str {
        "prop.take"
    }
    fn version(&self) -> u32 {
        1
    }
    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(Vec::new()),
            outputs: Ports::Fixed(vec![Port::new("out", PortType::File, "nothing")]),
            params: vec![ParamSpec::with_default(
                "value",
                ParamKind::Any,
                json!(null),
                "hashed into the key",
            )],
            determinism: Determinism::Deterministic,
            resources: Resources::default(),
        }
    }
    fn run(&self, _ctx: &Context) -> Result<(), OpError> {
        Ok(())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(Take));
    r
}

/// The key of the only node of `yaml`, or the compiler's messages.
fn key_of(reg: &Registry, yaml: &str) -> Result<Digest, String> {
    let p = compile::compile(std::path::Path::new(PIPELINE_FILE), yaml, reg, &[])
        .map_err(|d| format!("{d:?}\n--- yaml ---\n{yaml}"))?;
    assert_eq!(p.nodes.len(), 1);
    Ok(bare_key(&p, 0))
}

// ---- values -------------------------------------------------------------------------------

/// Integers whose float spelling (`3.0`, `3e0`) the canonical form turns back into the
/// integer: the canonicaliser promises that below 9e15 in magnitude.
const EXACT: i64 = 9_000_000_000_000_000 - 1;

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        (-1000i64..1000).prop_map(|i| json!(i)),
        (-EXACT..EXACT).prop_map(|i| json!(i)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Value::Number(Number::from_f64(f).unwrap())),
        (-1.0e6..1.0e6f64).prop_map(|f| Value::Number(Number::from_f64(f).unwrap())),
        text().prop_map(Value::String),
    ]
}

/// Strings: words, and arbitrary text without control characters, `$` (interpolation) or
/// the characters YAML treats as line breaks or byte-order marks.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z_]{0,8}",
        "[ -#%-~]{0,12}",
        "[^\\p{C}$\u{2028}\u{2029}\u{85}\u{feff}]{0,12}",
    ]
}

fn key_name() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[a-z_][a-z0-9_]{0,6}", 1 => text()]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key_name(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

// ---- rendering ----------------------------------------------------------------------------

/// The choices a rendering makes, drawn in turn from random bytes.
struct Choices {
    bytes: Vec<u8>,
    at: usize,
}

impl Choices {
    fn new(bytes: Vec<u8>) -> Choices {
        Choices { bytes, at: 0 }
    }

    fn pick(&mut self, n: usize) -> usize {
        if self.bytes.is_empty() {
            return 0;
        }
        let b = self.bytes[self.at % self.bytes.len()];
        self.at += 1;
        b as usize % n
    }
}

fn is_plain_safe(s: &str) -> bool {
    let reserved = ["null", "true", "false", "y", "n", "yes", "no", "on", "off"];
    !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !reserved.contains(&s)
}

fn string(s: &str, c: &mut Choices) -> String {
    let printable = s.chars().all(|c| !c.is_control());
    match c.pick(3) {
        0 if is_plain_safe(s) => s.to_string(),
        1 if printable => format!("'{}'", s.replace('\'', "''")),
        _ => serde_json::to_string(s).unwrap(),
    }
}

fn number(n: &Number, c: &mut Choices) -> String {
    if let Some(i) = n.as_i64() {
        let exact = (-EXACT..=EXACT).contains(&i);
        return match c.pick(5) {
            1 if exact => format!("{i}.0"),
            2 if exact => format!("{i}e0"),
            3 if exact => format!("{i}.0E+0"),
            4 if i > 0 => format!("+{i}"),
            _ => i.to_string(),
        };
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    let f = n.as_f64().unwrap();
    match c.pick(3) {
        0 => format!("{f:?}"),
        1 => format!("{f:e}"),
        _ => format!("{f:E}"),
    }
}

fn scalar(v: &Value, c: &mut Choices) -> String {
    match v {
        Value::Null => ["null", "~"][c.pick(2)].to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number(n, c),
        Value::String(s) => string(s, c),
        Value::Array(_) | Value::Object(_) => unreachable!(),
    }
}

/// `v` in flow style: `[a, {b: 1}]`.
fn flow(v: &Value, c: &mut Choices) -> String {
    let sp = [" ", "", "  "][c.pick(3)];
    match v {
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(|i| flow(i, c)).collect();
            format!("[{sp}{}{sp}]", parts.join(&format!(",{sp}")))
        }
        Value::Object(m) => {
            let parts: Vec<String> = permuted(m, c)
                .into_iter()
                .map(|(k, v)| format!("{}: {}", string(k, c), flow(v, c)))
                .collect();
            format!("{{{sp}{}{sp}}}", parts.join(&format!(",{sp}")))
        }
        other => scalar(other, c),
    }
}

/// The entries of `m` in an order drawn from `c`.
fn permuted<'a>(m: &'a Map<String, Value>, c: &mut Choices) -> Vec<(&'a String, &'a Value)> {
    let mut entries: Vec<(&String, &Value)> = m.iter().collect();
    for i in (1..entries.len()).rev() {
        let j = c.pick(i + 1);
        entries.swap(i, j);
    }
    entries
}

/// `v` as the value after `key:` or `-` at nesting `indent`: either inline text (starting
/// with a space) or a block on the following lines.
fn node(v: &Value, indent: usize, c: &mut Choices) -> String {
    let empty = match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => true,
    };
    if empty || c.pick(3) == 0 {
        if v.is_null() && c.pick(2) == 0 {
            return String::new(); // `key:` with nothing after it is null
        }
        let comment = if c.pick(4) == 0 { "  # note" } else { "" };
        return format!(" {}{comment}", flow(v, c));
    }
    let pad = " ".repeat(indent);
    let mut out = String::new();
    match v {
        Value::Array(items) => {
            for i in items {
                out.push_str(&format!("\n{pad}-{}", node(i, indent + 2, c)));
            }
        }
        Value::Object(m) => {
            for (k, v) in permuted(m, c) {
                if c.pick(5) == 0 {
                    out.push_str(&format!("\n{pad}# a comment"));
                }
                out.push_str(&format!(
                    "\n{pad}{}:{}",
                    string(k, c),
                    node(v, indent + 2, c)
                ));
            }
        }
        _ => unreachable!(),
    }
    out
}

/// A pipeline whose one node has `value: v`, written with the choices in `c`: directly or
/// through a global parameter, with the top-level and node keys in either order.
fn pipeline(v: &Value, c: &mut Choices) -> String {
    let indirect = c.pick(2) == 0;
    let value = if indirect {
        " \"${params.v}\"".to_string()
    } else {
        node(v, 8, c)
    };
    let node_lines = if c.pick(2) == 0 {
        format!("    op: prop.take\n    params:\n      value:{value}\n")
    } else {
        format!("    params:\n      value:{value}\n    op: prop.take\n")
    };
    let nodes = format!("nodes:\n  n:\n{node_lines}");
    let params = if indirect {
        format!("params:\n  v:{}\n", node(v, 4, c))
    } else {
        String::new()
    };
    if c.pick(2) == 0 {
        format!("pipeline: p\n{params}{nodes}")
    } else {
        format!("{nodes}{params}pipeline: p\n")
    }
}

/// `v` with the scalar at a position drawn from `c` replaced by `new`.
fn replace_leaf(v: &Value, new: &Value, c: &mut Choices) -> Value {
    match v {
        Value::Array(items) if !items.is_empty() => {
            let i = c.pick(items.len());
            let mut items = items.clone();
            items[i] = replace_leaf(&items[i], new, c);
            Value::Array(items)
        }
        Value::Object(m) if !m.is_empty() => {
            let k = m.keys().nth(c.pick(m.len())).unwrap().clone();
            let mut m = m.clone();
            let inner = replace_leaf(&m[&k], new, c);
            m.insert(k, inner);
            Value::Object(m)
        }
        _ => new.clone(),
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_key_does_not_depend_on_how_the_parameters_are_written(
        v in value(),
        a in prop::collection::vec(any::<u8>(), 1..64),
        b in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let reg = registry();
        let ya = pipeline(&v, &mut Choices::new(a));
        let yb = pipeline(&v, &mut Choices::new(b));
        let ka = key_of(&reg, &ya).map_err(TestCaseError::fail)?;
        let kb = key_of(&reg, &yb).map_err(TestCaseError::fail)?;
        prop_assert_eq!(ka, kb, "\n--- a ---\n{}\n--- b ---\n{}", ya, yb);
        // And it is the key of the value as JSON, written canonically.
        let json = format!("pipeline: p\nnodes:\n  n:\n    op: prop.take\n    params:\n      value: {}\n", serde_json::to_string(&v).unwrap());
        prop_assert_eq!(key_of(&reg, &json).map_err(TestCaseError::fail)?, ka);
    }

    #[test]
    fn different_parameters_give_different_keys(
        v in value(),
        w in value(),
        a in prop::collection::vec(any::<u8>(), 1..64),
        b in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        prop_assume!(canonical::normalise(&v) != canonical::normalise(&w));
        let reg = registry();
        let yv = pipeline(&v, &mut Choices::new(a));
        let yw = pipeline(&w, &mut Choices::new(b));
        prop_assert_ne!(
            key_of(&reg, &yv).map_err(TestCaseError::fail)?,
            key_of(&reg, &yw).map_err(TestCaseError::fail)?,
            "\n--- v ---\n{}\n--- w ---\n{}", yv, yw
        );
    }

    #[test]
    fn changing_one_leaf_changes_the_key(
        v in value(),
        new in leaf(),
        path in prop::collection::vec(any::<u8>(), 1..16),
        a in prop::collection::vec(any::<u8>(), 1..64),
        b in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let w = replace_leaf(&v, &new, &mut Choices::new(path));
        prop_assume!(canonical::normalise(&v) != canonical::normalise(&w));
        let reg = registry();
        let yv = pipeline(&v, &mut Choices::new(a));
        let yw = pipeline(&w, &mut Choices::new(b));
        prop_assert_ne!(
            key_of(&reg, &yv).map_err(TestCaseError::fail)?,
            key_of(&reg, &yw).map_err(TestCaseError::fail)?,
            "\n--- v ---\n{}\n--- w ---\n{}", yv, yw
        );
    }
}

/// Values the random ones rarely hit: each pair looks alike and must still differ.
#[test]
fn look_alikes_have_different_keys() {
    let reg = registry();
    let values = [
        "1",
        "\"1\"",
        "1.5",
        "\"1.5\"",
        "true",
        "\"true\"",
        "null",
        "\"null\"",
        "\"\"",
        "[]",
        "{}",
        "[null]",
        "[[]]",
        "{a: null}",
        "{a: []}",
        "[1, 2]",
        "[2, 1]",
        "{a: 1, b: 2}",
        "{a: 2, b: 1}",
        "-1",
        "0.1",
        "0.10000000000000002",
    ];
    let keys: Vec<Digest> = values
        .iter()
        .map(|v| {
            key_of(
                &reg,
                &format!("pipeline: p\nnodes:\n  n: {{op: prop.take, params: {{value: {v}}}}}\n"),
            )
            .unwrap()
        })
        .collect();
    for i in 0..keys.len() {
        for j in i + 1..keys.len() {
            assert_ne!(keys[i], keys[j], "{} and {}", values[i], values[j]);
        }
    }
}
