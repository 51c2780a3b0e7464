//! A YAML value tree in which every node knows its line and column.
//!
//! Parsing goes through serde-saphyr with strict booleans (`yes`/`no` stay strings) and
//! duplicate keys passed through, so that the spec checker can report every duplicate with
//! both places instead of stopping at the first.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::{DuplicateKeyPolicy, Options};

use crate::diag::Loc;

/// One node of the tree.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub loc: Loc,
    pub value: YValue,
}

#[derive(Clone, Debug, PartialEq)]
pub enum YValue {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order; duplicates are kept.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The key as a string, if it is a scalar.
    pub fn as_key(&self) -> Option<String> {
        match &self.value {
            YValue::Str(s) => Some(s.clone()),
            YValue::Int(i) => Some(i.to_string()),
            YValue::UInt(u) => Some(u.to_string()),
            YValue::Bool(b) => Some(b.to_string()),
            YValue::Float(f) => Some(f.to_string()),
            _ => None,
        }
    }

    /// [`Node::as_key`] without copying a string key.
    pub fn key_str(&self) -> Option<std::borrow::Cow<'_, str>> {
        match &self.value {
            YValue::Str(s) => Some(std::borrow::Cow::Borrowed(s)),
            _ => self.as_key().map(std::borrow::Cow::Owned),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            YValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            YValue::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, YValue::Null)
    }

    /// A word for the kind of value, for error messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            YValue::Null => "nothing",
            YValue::Bool(_) => "a boolean",
            YValue::Int(_) | YValue::UInt(_) => "an integer",
            YValue::Float(_) => "a number",
            YValue::Str(_) => "a string",
            YValue::Seq(_) => "a list",
            YValue::Map(_) => "a map",
        }
    }

    /// Converts to JSON. Map keys become strings; for duplicate keys the last one wins (the
    /// checker reports duplicates separately).
    pub fn to_json(&self) -> Value {
        match &self.value {
            YValue::Null => Value::Null,
            YValue::Bool(b) => Value::Bool(*b),
            YValue::Int(i) => Value::from(*i),
            YValue::UInt(u) => Value::from(*u),
            YValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            YValue::Str(s) => Value::String(s.clone()),
            YValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            YValue::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.as_key().unwrap_or_default(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // serde-saphyr's `Spanned<T>` asks for this internal newtype and is handed a
        // synthesised map `{marker, value, referenced, defined}`. Reading that map here,
        // rather than through `Spanned<YValue>`, keeps the same locations while skipping
        // what `Spanned` costs per node: an allocated `String` for the marker key and two
        // full `Location`s (each with its span) of which only one line and column are used.
        d.deserialize_newtype_struct(SPANNED, SpannedVisitor)
    }
}

/// The newtype name serde-saphyr answers with a value and its location (what
/// `serde_saphyr::Spanned` uses).
const SPANNED: &str = "__yaml_spanned";

struct SpannedVisitor;

impl<'de> Visitor<'de> for SpannedVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value with its location")
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(SpannedFields)
    }
}

/// The fields of serde-saphyr's synthesised span map.
enum Field {
    Value,
    /// Where the node is used (for an alias, the alias): the location `Spanned` calls
    /// `referenced`, and the one a [`Node`] keeps.
    Referenced,
    /// Where the node is defined (for an alias, its anchor).
    Defined,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a span field")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "value" => Field::Value,
                    "referenced" => Field::Referenced,
                    "defined" => Field::Defined,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(FieldVisitor)
    }
}

struct SpannedFields;

impl<'de> Visitor<'de> for SpannedFields {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value with its location")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut value = None;
        let mut loc = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Value => value = Some(map.next_value::<YValue>()?),
                Field::Referenced => loc = Some(map.next_value::<LineColumn>()?.0),
                Field::Defined => {
                    map.next_value::<LineColumn>()?;
                }
                Field::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
            // `defined` is not needed: stop once both are known.
            if value.is_some() && loc.is_some() {
                break;
            }
        }
        match (value, loc) {
            (Some(value), Some(loc)) => Ok(Node { loc, value }),
            (None, _) => Err(de::Error::missing_field("value")),
            (_, None) => Err(de::Error::missing_field("referenced")),
        }
    }
}

/// The line and column of a serde-saphyr `Location`; its span is not read.
struct LineColumn(Loc);

impl<'de> Deserialize<'de> for LineColumn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct(
            "Location",
            &["line", "column", "span", "source_id"],
            LineColumnVisitor,
        )
    }
}

struct LineColumnVisitor;

impl<'de> Visitor<'de> for LineColumnVisitor {
    type Value = LineColumn;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a location")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LineColumn, A::Error> {
        let mut line = None;
        let mut column = None;
        while let Some(key) = map.next_key::<LocField>()? {
            match key {
                LocField::Line => line = Some(map.next_value::<u64>()?),
                LocField::Column => column = Some(map.next_value::<u64>()?),
                // The span would be next; it is not needed.
                LocField::Other => break,
            }
            if line.is_some() && column.is_some() {
                break;
            }
        }
        match (line, column) {
            (Some(line), Some(column)) => Ok(LineColumn(Loc {
                line: line as u32,
                column: column as u32,
            })),
            (None, _) => Err(de::Error::missing_field("line")),
            (_, None) => Err(de::Error::missing_field("column")),
        }
    }
}

enum LocField {
    Line,
    Column,
    Other,
}

impl<'de> Deserialize<'de> for LocField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LocFieldVisitor;
        impl Visitor<'_> for LocFieldVisitor {
            type Value = LocField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a location field")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LocField, E> {
                Ok(match v {
                    "line" => LocField::Line,
                    "column" => LocField::Column,
                    _ => LocField::Other,
                })
            }
        }
        d.deserialize_identifier(LocFieldVisitor)
    }
}

impl<'de> Deserialize<'de> for YValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(YVisitor)
    }
}

struct YVisitor;

impl<'de> Visitor<'de> for YVisitor {
    type Value = YValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<YValue, E> {
        Ok(YValue::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<YValue, E> {
        Ok(YValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<YValue, D::Error> {
        YValue::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<YValue, E> {
        Ok(YValue::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<YValue, E> {
        Ok(YValue::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<YValue, E> {
        Ok(i64::try_from(v).map_or(YValue::UInt(v), YValue::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<YValue, E> {
        Ok(YValue::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<YValue, E> {
        Ok(YValue::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<YValue, E> {
        Ok(YValue::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<YValue, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            items.push(n);
        }
        Ok(YValue::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<YValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Node>()? {
            let v = map.next_value::<Node>()?;
            entries.push((k, v));
        }
        Ok(YValue::Map(entries))
    }
}

/// A YAML syntax error: where, and the parser's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub loc: Loc,
    pub message: String,
}

/// Parses a whole document. An empty document is `Null`.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    // The default budget (250,000 nodes) would refuse pipelines of ~100,000 nodes. Every
    // YAML node takes at least a byte, so a budget proportional to the text still stops
    // alias bombs (whose limits stay at their defaults) without limiting honest files.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = budget.max_nodes.max(text.len());
    budget.max_events = budget.max_events.max(2 * text.len());
    let options: Options = serde_saphyr::options! {
        budget: Some(budget),
        strict_booleans: true,
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        with_snippet: false,
    };
    if text.trim().is_empty() {
        return Ok(Node {
            loc: Loc { line: 1, column: 1 },
            value: YValue::Null,
        });
    }
    serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|e| {
        let loc = e
            .location()
            .map(|l| Loc {
                line: l.line() as u32,
                column: l.column() as u32,
            })
            .unwrap_or_default();
        let message = e.to_string();
        // Drop the location prefix/suffix saphyr adds; we print file:line:col ourselves.
        let mut message = message
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        if let Some(at) = message.rfind(" at line ") {
            message.truncate(at);
        }
        SyntaxError { loc, message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_of_keys_and_values() {
        let n = parse("a: 1\nb:\n  c: [x, 2.5]\n  d: yes\n").unwrap();
        let m = n.as_map().unwrap();
        assert_eq!(m[0].0.loc, Loc { line: 1, column: 1 });
        assert_eq!(m[0].1.value, YValue::Int(1));
        assert_eq!(m[1].0.loc.line, 2);
        let inner = m[1].1.as_map().unwrap();
        assert_eq!(inner[0].0.loc, Loc { line: 3, column: 3 });
        let YValue::Seq(items) = &inner[0].1.value else {
            panic!("not a seq")
        };
        assert_eq!(items[1].value, YValue::Float(2.5));
        assert_eq!(items[1].loc.line, 3);
        // strict booleans: `yes` stays a string
        assert_eq!(inner[1].1.value, YValue::Str("yes".into()));
    }

    #[test]
    fn duplicates_are_kept_for_the_checker() {
        let n = parse("a: 1\na: 2\n").unwrap();
        assert_eq!(n.as_map().unwrap().len(), 2);
    }

    #[test]
    fn syntax_errors_have_locations() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.loc.line >= 1, "{e:?}");
        assert!(!e.message.is_empty());
    }
}
