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

mod quick;

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
        budget: Some(budget.clone()),
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
    let max_depth = PLAIN_MAX_DEPTH.min(budget.max_depth / 2);
    if let Some(node) = quick::read(text, max_depth, budget.max_total_scalar_bytes) {
        return Ok(node);
    }
    if let Some(node) = parse_plain(text, &budget, options.strict_indentation) {
        return Ok(node);
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

/// The value of `key` in the document's top-level mapping, when it is a scalar, read from
/// the parser's events only as far as that entry: a hint such as a pipeline file's name
/// (usually its first line) before the whole file has been parsed. `None` when the key is
/// absent or not a scalar, or the text does not parse as far as it.
pub fn top_level_scalar(text: &str, key: &str) -> Option<String> {
    use serde_saphyr::granit_parser::{Event, Parser};
    let mut depth = 0usize;
    let mut expect_key = true;
    let mut matched = false;
    for item in Parser::new_from_str(text) {
        let (event, _) = item.ok()?;
        match event {
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(event, Event::MappingStart(..));
                match depth {
                    0 if !is_map => return None,
                    1 if expect_key || matched => return None,
                    _ => {}
                }
                depth += 1;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                depth = depth.checked_sub(1)?;
                match depth {
                    0 => return None,
                    1 => expect_key = true,
                    _ => {}
                }
            }
            Event::Scalar(value, ..) if depth == 1 => {
                if expect_key {
                    matched = value == key;
                    expect_key = false;
                } else if matched {
                    return Some(value.into_owned());
                } else {
                    expect_key = true;
                }
            }
            Event::Alias(..) if depth == 1 => {
                if matched || expect_key {
                    return None;
                }
                expect_key = true;
            }
            Event::StreamEnd => return None,
            _ => {}
        }
    }
    None
}

/// Containers nested deeper than this go to serde-saphyr, which enforces its own depth
/// budget (64 by default; the lower of the two halves applies, so the direct reader never
/// takes a document near that limit).
const PLAIN_MAX_DEPTH: usize = 32;

/// A container being built by [`parse_plain`].
enum Open {
    Seq(Loc, Vec<Node>),
    /// Entries so far and a key waiting for its value.
    Map(Loc, Vec<(Node, Node)>, Option<Node>),
}

/// Builds the tree straight from the parser's events, for documents made of nothing but
/// maps, lists and scalars whose meaning cannot be in doubt (see [`plain_scalar`]); every
/// other document (anchors, aliases, tags, merge keys, several documents, a syntax error,
/// a scalar such as `~`, `0x1F` or `.5`) returns `None` and goes through serde-saphyr,
/// whose answer (tree or error) stays the reference. Locations are serde-saphyr's: the
/// event's start, line 1-based, column 0-based plus one. Pipeline files are mostly such
/// documents, and this skips serde-saphyr's per-node work (peeking, scalar resolution, key
/// capture), most of what parsing cost.
fn parse_plain(
    text: &str,
    budget: &serde_saphyr::Budget,
    strict_indentation: bool,
) -> Option<Node> {
    use serde_saphyr::granit_parser::{self, Event, Parser, ScalarStyle};
    // The parser's limits as serde-saphyr sets them from the budget.
    let mut options = granit_parser::Options::default();
    options.simple_key_max_lookahead = budget.simple_key_max_lookahead;
    options.flow_nesting_limit = budget.flow_nesting_limit;
    options.block_nesting_limit = options
        .block_nesting_limit
        .max(budget.max_depth.saturating_add(1));
    options.strict_indentation = strict_indentation;
    let max_depth = PLAIN_MAX_DEPTH.min(budget.max_depth / 2);
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    let mut scalar_bytes = 0usize;
    for item in Parser::new_from_str_with_options(text, options) {
        let (event, span) = item.ok()?;
        let loc = Loc {
            line: span.start.line() as u32,
            column: (span.start.col() + 1) as u32,
        };
        let node = match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => continue,
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return None;
                }
                continue;
            }
            Event::Scalar(value, style, anchor, tag) => {
                if anchor != 0 || tag.is_some() {
                    return None;
                }
                scalar_bytes += value.len();
                let value = match style {
                    ScalarStyle::Plain => plain_scalar(&value)?,
                    _ => YValue::Str(value.into_owned()),
                };
                Node { loc, value }
            }
            Event::SequenceStart(_, anchor, tag) => {
                if anchor != 0 || tag.is_some() || stack.len() >= max_depth {
                    return None;
                }
                stack.push(Open::Seq(loc, Vec::new()));
                continue;
            }
            Event::MappingStart(_, anchor, tag) => {
                if anchor != 0 || tag.is_some() || stack.len() >= max_depth {
                    return None;
                }
                stack.push(Open::Map(loc, Vec::new(), None));
                continue;
            }
            Event::SequenceEnd => match stack.pop()? {
                Open::Seq(loc, items) => Node {
                    loc,
                    value: YValue::Seq(items),
                },
                Open::Map(..) => return None,
            },
            Event::MappingEnd => match stack.pop()? {
                Open::Map(loc, entries, None) => Node {
                    loc,
                    value: YValue::Map(entries),
                },
                _ => return None,
            },
            _ => return None,
        };
        match stack.last_mut() {
            None if root.is_none() => root = Some(node),
            None => return None,
            Some(Open::Seq(_, items)) => items.push(node),
            Some(Open::Map(_, entries, key)) => match key.take() {
                Some(k) => entries.push((k, node)),
                // Keys are strings here; `<<` (a merge) is left to serde-saphyr.
                None => match &node.value {
                    YValue::Str(k) if k != "<<" => *key = Some(node),
                    _ => return None,
                },
            },
        }
    }
    if !stack.is_empty() || scalar_bytes > budget.max_total_scalar_bytes {
        return None;
    }
    root
}

/// The value of a plain scalar when it cannot be in doubt: `null`, `true` and `false` in
/// lower case, a word starting with a letter (or any character beyond ASCII) that YAML
/// 1.2 with strict booleans reads as nothing but a string, a decimal integer without leading zeros that fits 18 digits, or a decimal
/// fraction such as `0.006` (read as serde-saphyr reads it, by `str::parse`). `None` for
/// everything else (other spellings of nulls and booleans, exponents, other bases, empty
/// scalars), which serde-saphyr resolves.
fn plain_scalar(v: &str) -> Option<YValue> {
    // With strict booleans, `yes`, `no`, `on`, `off`, `y` and `n` are strings.
    const WORDS: [&str; 6] = ["null", "true", "false", "inf", "infinity", "nan"];
    match v {
        "null" => return Some(YValue::Null),
        "true" => return Some(YValue::Bool(true)),
        "false" => return Some(YValue::Bool(false)),
        _ => {}
    }
    let numeric = v.starts_with(|c: char| c.is_ascii_digit() || c == '-');
    if let Some((whole, fraction)) = v.split_once('.').filter(|_| numeric) {
        let digits = whole.strip_prefix('-').unwrap_or(whole);
        let decimal = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (!digits.starts_with('0') || digits == "0")
            && !fraction.is_empty()
            && fraction.len() <= 40
            && fraction.bytes().all(|b| b.is_ascii_digit());
        return if decimal {
            v.parse()
                .ok()
                .filter(|f: &f64| f.is_finite())
                .map(YValue::Float)
        } else {
            None
        };
    }
    let first = *v.as_bytes().first()?;
    if first.is_ascii_alphabetic() || !first.is_ascii() {
        if WORDS.iter().any(|w| w.eq_ignore_ascii_case(v)) {
            return None;
        }
        return Some(YValue::Str(v.to_string()));
    }
    let digits = v.strip_prefix('-').unwrap_or(v);
    let canonical = !digits.is_empty()
        && digits.len() <= 18
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (!digits.starts_with('0') || v == "0");
    if canonical {
        return v.parse().ok().map(YValue::Int);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_top_level_scalar_is_found_wherever_the_entry_is() {
        let name = |t: &str| top_level_scalar(t, "pipeline");
        assert_eq!(name("pipeline: tree\nnodes: {}\n").as_deref(), Some("tree"));
        assert_eq!(
            name("nodes:\n  a: {op: x, params: {pipeline: no}}\n  b: [pipeline, no]\npipeline: 'late'\n")
                .as_deref(),
            Some("late")
        );
        // Not at the top level, not a scalar, absent, not a mapping, broken before it.
        assert_eq!(name("nodes: {pipeline: inner}\n"), None);
        assert_eq!(name("pipeline: [a, b]\n"), None);
        assert_eq!(name("pipeline: {a: b}\n"), None);
        assert_eq!(name("nodes: {}\n"), None);
        assert_eq!(name("- pipeline\n- x\n"), None);
        assert_eq!(name("a: [unclosed\npipeline: x\n"), None);
        assert_eq!(name(""), None);
        // A value after a nested one is still paired with its own key.
        assert_eq!(
            name("a: {b: c}\nd: pipeline\npipeline: p\n").as_deref(),
            Some("p")
        );
    }

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

    /// The tree as serde-saphyr's public `Spanned<T>` reads it (what this module did before
    /// it read the span map itself): the reference the faster reader must equal.
    #[derive(Clone, Debug, PartialEq)]
    struct RefNode(Loc, RefValue);

    #[derive(Clone, Debug, PartialEq)]
    enum RefValue {
        Scalar(YValue),
        Seq(Vec<RefNode>),
        Map(Vec<(RefNode, RefNode)>),
    }

    impl<'de> Deserialize<'de> for RefNode {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = serde_saphyr::Spanned::<RefValue>::deserialize(d)?;
            let loc = Loc {
                line: s.referenced.line() as u32,
                column: s.referenced.column() as u32,
            };
            Ok(RefNode(loc, s.value))
        }
    }

    impl<'de> Deserialize<'de> for RefValue {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = RefValue;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("any YAML value")
                }
                fn visit_unit<E: de::Error>(self) -> Result<RefValue, E> {
                    Ok(RefValue::Scalar(YValue::Null))
                }
                fn visit_none<E: de::Error>(self) -> Result<RefValue, E> {
                    Ok(RefValue::Scalar(YValue::Null))
                }
                fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RefValue, D::Error> {
                    RefValue::deserialize(d)
                }
                fn visit_bool<E: de::Error>(self, v: bool) -> Result<RefValue, E> {
                    Ok(RefValue::Scalar(YValue::Bool(v)))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<RefValue, E> {
                    Ok(RefValue::Scalar(YValue::Int(v)))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<RefValue, E> {
                    Ok(RefValue::Scalar(
                        i64::try_from(v).map_or(YValue::UInt(v), YValue::Int),
                    ))
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<RefValue, E> {
                    Ok(RefValue::Scalar(YValue::Float(v)))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<RefValue, E> {
                    Ok(RefValue::Scalar(YValue::Str(v.to_string())))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RefValue, A::Error> {
                    let mut items = Vec::new();
                    while let Some(n) = seq.next_element::<RefNode>()? {
                        items.push(n);
                    }
                    Ok(RefValue::Seq(items))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RefValue, A::Error> {
                    let mut entries = Vec::new();
                    while let Some(k) = map.next_key::<RefNode>()? {
                        entries.push((k, map.next_value::<RefNode>()?));
                    }
                    Ok(RefValue::Map(entries))
                }
            }
            d.deserialize_any(V)
        }
    }

    fn as_ref_node(n: &Node) -> RefNode {
        let v = match &n.value {
            YValue::Seq(items) => RefValue::Seq(items.iter().map(as_ref_node).collect()),
            YValue::Map(entries) => RefValue::Map(
                entries
                    .iter()
                    .map(|(k, v)| (as_ref_node(k), as_ref_node(v)))
                    .collect(),
            ),
            // NaN is not equal to itself; compare its meaning instead.
            YValue::Float(f) if f.is_nan() => RefValue::Scalar(YValue::Str("NaN".into())),
            other => RefValue::Scalar(other.clone()),
        };
        RefNode(n.loc.clone(), v)
    }

    fn nan_free(n: RefNode) -> RefNode {
        let RefNode(loc, v) = n;
        let v = match v {
            RefValue::Scalar(YValue::Float(f)) if f.is_nan() => {
                RefValue::Scalar(YValue::Str("NaN".into()))
            }
            RefValue::Seq(items) => RefValue::Seq(items.into_iter().map(nan_free).collect()),
            RefValue::Map(entries) => RefValue::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (nan_free(k), nan_free(v)))
                    .collect(),
            ),
            other => other,
        };
        RefNode(loc, v)
    }

    /// Which of the two fast readers took a document.
    #[derive(Clone, Copy, Default)]
    struct Taken {
        /// [`parse_plain`], from the parser's events.
        events: bool,
        /// [`quick::read`], from the bytes.
        quick: bool,
    }

    /// Parses `text` both ways (same options) and asserts the same tree or the same error;
    /// where a fast reader takes the document, asserts its tree too. Returns which did.
    fn same_as_spanned(text: &str) -> Taken {
        let ours = parse(text);
        if text.trim().is_empty() {
            return Taken::default();
        }
        let mut taken = Taken::default();
        let mut budget = serde_saphyr::Budget::default();
        budget.max_nodes = budget.max_nodes.max(text.len());
        budget.max_events = budget.max_events.max(2 * text.len());
        let options: Options = serde_saphyr::options! {
            budget: Some(budget),
            strict_booleans: true,
            duplicate_keys: DuplicateKeyPolicy::PassThrough,
            with_snippet: false,
        };
        let theirs = serde_saphyr::from_str_with_options::<RefNode>(text, options.clone());
        if let Some(plain) = parse_plain(
            text,
            options.budget.as_ref().unwrap(),
            options.strict_indentation,
        ) {
            let Ok(reference) = &theirs else {
                panic!("{text}: the direct reader accepted what serde-saphyr refuses: {theirs:?}")
            };
            let reference = nan_free(reference.clone());
            assert_eq!(as_ref_node(&plain), reference, "{text}");
            taken.events = true;
        }
        let budget = options.budget.as_ref().unwrap();
        let max_depth = PLAIN_MAX_DEPTH.min(budget.max_depth / 2);
        if let Some(quick) = quick::read(text, max_depth, budget.max_total_scalar_bytes) {
            let Ok(reference) = &theirs else {
                panic!("{text}: the quick reader accepted what serde-saphyr refuses: {theirs:?}")
            };
            assert_eq!(as_ref_node(&quick), nan_free(reference.clone()), "{text}");
            taken.quick = true;
        }
        match (ours, theirs) {
            (Ok(a), Ok(b)) => assert_eq!(as_ref_node(&a), nan_free(b), "{text}"),
            (Err(a), Err(b)) => {
                let loc = b.location().map(|l| Loc {
                    line: l.line() as u32,
                    column: l.column() as u32,
                });
                assert_eq!(a.loc, loc.unwrap_or_default(), "{text}");
                let msg = b.to_string();
                let first = msg.lines().next().unwrap_or_default().trim();
                assert!(first.starts_with(&a.message), "{text}: {a:?} vs {msg}");
            }
            (a, b) => panic!("{text}: ours {a:?}, serde-saphyr's Spanned {b:?}"),
        }
        taken
    }

    #[test]
    fn same_tree_as_spanned_on_samples() {
        for text in [
            "a: 1\nb:\n  c: [x, 2.5]\n  d: yes\n",
            "x: &a {k: [1, 2]}\ny: *a\nz: *a\n",
            "base: &b {op: command, params: {v: 1}}\nn: {<<: *b, out: {o: file}}\n",
            "- !!str 12\n- ~\n- null\n- .inf\n- -.inf\n- .nan\n- 0x1F\n- 0o17\n- 1e3\n",
            "- \"q\"\n- 'single'\n- |\n  lit\n  block\n- >\n  folded\n  text\n",
            "? [complex, key]\n: v\n18446744073709551615: big\n-3: neg\ntrue: t\n",
            "a: 1\na: 2\n",
            "a: [1, 2\nb: 3\n",
            "a: *missing\n",
            "key: value\n  bad: indent\n",
            "a: 1\n---\nb: 2\n",
            "",
            "# only a comment\n",
            "plain scalar\n",
            "a:\n  - -0\n  - 007\n  - -12\n  - 999999999999999999\n  - Null\n  - NO\n  - y\n",
            "\"quoted key\": 'v'\nk2: [a, \"1\", b.c, ${x}]\nk3: {x: {y: [1, {z: w}]}}\n",
            "a: 1 # comment\n# another\nb: text with spaces\n  continued\n",
            "- [yes, no, on, off, y, n, Y, N, YES, On, oFF]\n- [True, TRUE, False, FALSE, Null, NULL, ~]\n- [inf, Inf, nan, NaN, infinity, .inf, -.inf, .nan]\n",
            "- [0.5, -0.25, 0.0, 10.125, 00.5, 1., .5, -.5, 1.5e3, 1e3, 0.1e-2, +1.5, 1_000.5]\n- [3.141592653589793238462643383279, 1.7976931348623157, 0.000000000000000000000001]\n",
            "a: \"\\0\\a\\b\\t\\n\\v\\f\\r\\e\\ \\\"\\/\\\\\\N\\_\\L\\P\\x41\\xe9\\u00e9\\U0001F600\"\nb: \"\\q\"\nc: \"\\ud800\"\n",
            "a: 'it''s'\nb: '\"'\nc: \"'\"\nd: it's\ne: a\"b\n",
            "a: b # c\nd: e#f\ng: 'h'# i\nj: [k]# l\nm: {n: o} # p\nq: # r\n  s: t\n",
            "- a\n- b: c\n  d: e\n-   f: g\n    h: [i,\n      j]\n- - k\n",
            "key:\n- a\n- b\nnext: c\nlist:\n  - x\n  -\n    y: z\n",
            "key:\n-\n  y: z\n- [a]\n",
            "key:\n- - a\n",
            "key:\n- {a: b}\n",
            "key:\n- 'a'\n",
            "key:\n- # c\n  a\n",
            "- # c\n  a\n",
            "a:\n  # c\n  - b\n",
            "a : b\n'c' : d\n\"e\": f\n{g: h}: i\n",
            "a: {b: c,}\n",
            "a: [b, c,]\n",
            "a: {b}\n",
            "a: {b: }\n",
            "a: [b: c]\n",
            "a: {'b':c}\n",
            "a: {b: c,\n  d: e}\nf: [g,\n# comment\n  h]\n",
            "a: {b: c,\nd: e}\n",
            "a: [b,\n c\n d]\n",
            "a: http://x.y/z?q=1\nb: {u: http://x}\nc: [x:y, 'z']\n",
            "é: ü\nü: {ä: [ö, ß]}\n'日本': \"語\"\n  ",
            "a:\n  b\nc:\n    - d\n",
            "- a\n  - b\n",
            "a:\n  b: 1\n   c: 2\n",
            "a:\n  - b\n - c\n",
            "a: b\n  c: d\n",
            "<<: {a: b}\n",
            "'<<': x\n",
            "1: a\n",
            "a: |\n  b\n",
            "a: >\n  b\n",
            "a: &x b\nc: *x\n",
            "a: !t b\n",
            "? a\n: b\n",
            "a: b\n---\nc: d\n",
            "%YAML 1.2\n---\na: b\n",
            "a: 'b\n  c'\n",
            "a:\tb\n",
            "a: b\r\nc: d\r\n",
            "\u{feff}a: b\n",
            "a: -\n",
            "a: - b\n",
            "a: b: c\n",
            "-1\n",
            "- -1\n- -x\n- --\n",
            "{a: b}\n",
            "[a, b]\n",
            "'x'\n",
            "x\n",
            "a: [[[[1]]]]\n",
            "a: []\nb: {}\nc: [ ]\nd: { }\n",
        ] {
            same_as_spanned(text);
        }
        // Nesting around both depth limits (the direct reader's and serde-saphyr's budget).
        // serde-saphyr recurses per level, deeply in a debug build: give it room.
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(|| {
                for depth in [31, 32, 33, 63, 64, 65, 66] {
                    same_as_spanned(&format!("{}1{}", "[".repeat(depth), "]".repeat(depth)));
                    let block: String = (0..depth)
                        .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
                        .collect();
                    same_as_spanned(&format!("{block}{}v: 1\n", "  ".repeat(depth)));
                }
            })
            .unwrap()
            .join()
            .unwrap();
        // What the direct reader must take: the shape of generated and example pipelines.
        for text in [
            "pipeline: gen\nparams:\n  v: 1\nnodes:\n  n0:\n    op: bench.const\n    params: {value: \"${params.v}-0\"}\n  n1:\n    op: bench.const\n    in: {a: n0.out}\n",
            "k: [a, \"1\", b.c]\nm: {x: {q: [1, -2, {z: w}]}}\n",
        ] {
            let taken = same_as_spanned(text);
            assert!(taken.events && taken.quick, "{text}");
        }
    }

    /// Documents drawn from a small grammar of block and flow collections, scalars of every
    /// kind the quick reader decides on (and some it must leave alone), comments and blank
    /// lines, nested in every order: where the quick reader answers, its answer is
    /// serde-saphyr's.
    #[test]
    fn same_tree_as_spanned_on_generated_documents() {
        struct Gen(u64);
        impl Gen {
            fn next(&mut self) -> u64 {
                // xorshift64*: deterministic, no dependency.
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
            }
            fn below(&mut self, n: usize) -> usize {
                (self.next() % n as u64) as usize
            }
            fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
                items[self.below(items.len())]
            }
            fn scalar(&mut self) -> String {
                // Scalars the quick reader decides on, and (one draw in twenty) ones it
                // leaves to serde-saphyr or that are not YAML where they land.
                const PLAIN: [&str; 20] = [
                    "word",
                    "two words",
                    "x.y",
                    "${params.v}",
                    "-3",
                    "0",
                    "42",
                    "0.5",
                    "-0.25",
                    "true",
                    "false",
                    "null",
                    "yes",
                    "n",
                    "é",
                    "'quoted'",
                    "'it''s'",
                    "\"dq\"",
                    "\"a\\tb\\u00e9\"",
                    "http://h/p",
                ];
                const ODD: [&str; 11] = [
                    "a#b", "1e3", "007", ".5", "~", "True", "<<", "-", "a: b", "[x]", "",
                ];
                if self.below(20) == 0 {
                    self.pick(&ODD).to_string()
                } else {
                    self.pick(&PLAIN).to_string()
                }
            }
            fn key(&mut self) -> String {
                const KEYS: [&str; 8] =
                    ["k", "op", "two words", "x.y", "é", "'q k'", "\"dq\"", "yes"];
                if self.below(20) == 0 {
                    self.scalar()
                } else {
                    self.pick(&KEYS).to_string()
                }
            }
            fn flow(&mut self, depth: usize, indent: usize) -> String {
                let n = self.below(4);
                let map = self.below(2) == 0;
                let mut parts = Vec::new();
                for _ in 0..n {
                    let value = if depth < 3 && self.below(4) == 0 {
                        self.flow(depth + 1, indent)
                    } else {
                        self.scalar()
                    };
                    parts.push(if map {
                        format!("{}: {value}", self.key())
                    } else {
                        value
                    });
                }
                let sep = if self.below(5) == 0 {
                    format!(",\n{}", " ".repeat(indent + 1 + self.below(3)))
                } else {
                    ", ".to_string()
                };
                let (open, close) = if map { ("{", "}") } else { ("[", "]") };
                format!("{open}{}{close}", parts.join(&sep))
            }
            fn inline(&mut self, depth: usize, indent: usize) -> String {
                let comment = if self.below(6) == 0 { " # note" } else { "" };
                let v = if self.below(3) == 0 {
                    self.flow(depth, indent)
                } else {
                    self.scalar()
                };
                format!("{v}{comment}")
            }
            fn block(&mut self, out: &mut String, depth: usize, indent: usize) {
                let pad = " ".repeat(indent);
                let seq = self.below(3) == 0;
                for _ in 0..1 + self.below(3) {
                    if self.below(8) == 0 {
                        out.push_str(if self.below(2) == 0 { "\n" } else { "# c\n" });
                    }
                    if seq {
                        out.push_str(&format!("{pad}-"));
                        match self.below(4) {
                            0 if depth < 4 => {
                                out.push('\n');
                                self.block(out, depth + 1, indent + 2);
                            }
                            1 if depth < 4 => {
                                // A compact mapping: its first key on the dash's line.
                                let key = self.key();
                                let value = self.inline(depth, indent + 2);
                                out.push_str(&format!(" {key}: {value}\n"));
                                for _ in 0..self.below(3) {
                                    let key = self.key();
                                    let value = self.inline(depth, indent + 2);
                                    out.push_str(&format!("{pad}  {key}: {value}\n"));
                                }
                            }
                            _ => {
                                let value = self.inline(depth, indent);
                                out.push_str(&format!(" {value}\n"));
                            }
                        }
                    } else {
                        let key = self.key();
                        out.push_str(&format!("{pad}{key}:"));
                        if depth < 4 && self.below(3) == 0 {
                            out.push('\n');
                            // A sequence may sit at its key's own indentation.
                            let inner = if self.below(4) == 0 {
                                indent
                            } else {
                                indent + 2
                            };
                            self.block(out, depth + 1, inner);
                        } else {
                            let value = self.inline(depth, indent);
                            out.push_str(&format!(" {value}\n"));
                        }
                    }
                }
            }
        }
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let (mut n, mut taken) = (0, 0);
        for _ in 0..5000 {
            let mut doc = String::new();
            g.block(&mut doc, 0, 0);
            taken += usize::from(same_as_spanned(&doc).quick);
            n += 1;
        }
        assert!(
            taken > n / 3,
            "only {taken} of {n} generated documents read quickly"
        );
        println!("{taken} of {n} generated documents read quickly");
    }

    /// Every one-byte deletion, insertion and replacement of documents of the quick
    /// reader's shape: where it still answers, its answer is serde-saphyr's.
    #[test]
    fn same_tree_as_spanned_on_mutations() {
        let bases = [
            "pipeline: gen\nparams: {v: 1, w: 0.5, f: false}\nnodes:\n  n0:\n    op: bench.const\n    params: {value: \"${params.v}-0\", s: 'it''s'} # c\n  n1:\n    in: {a: n0.out}\n    matrix: {n: [2, 4]}\n",
            "s:\n- a\n- b: c\n  d: [e, {f: g},\n    h]\nk:\n  - x\n  - y: null\n",
            "é: 'ü'\nq: \"a\\tb\\u00e9\"\nu: http://x/y\n",
        ];
        let edits = b" :-#{}[],'\"\nx.0\\";
        let mut taken = 0;
        let mut n = 0;
        for base in bases {
            assert!(same_as_spanned(base).quick, "{base}");
            let bytes = base.as_bytes();
            for at in 0..=bytes.len() {
                let mut variants = Vec::new();
                if at < bytes.len() {
                    variants.push([&bytes[..at], &bytes[at + 1..]].concat());
                }
                for &e in edits {
                    variants.push([&bytes[..at], &[e], &bytes[at..]].concat());
                    if at < bytes.len() {
                        variants.push([&bytes[..at], &[e], &bytes[at + 1..]].concat());
                    }
                }
                for v in variants {
                    if let Ok(text) = String::from_utf8(v) {
                        taken += usize::from(same_as_spanned(&text).quick);
                        n += 1;
                    }
                }
            }
        }
        // Many edits keep a document of the shape; many do not.
        assert!(
            taken > n / 4 && taken < n,
            "{taken} of {n} mutations read quickly"
        );
        println!("{taken} of {n} mutations read quickly");
    }

    #[test]
    fn same_tree_as_spanned_on_the_fuzz_corpus_and_fixtures() {
        fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries {
                let path = e.unwrap().path();
                if path.is_dir() {
                    files(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut paths = Vec::new();
        files(&root.join("fuzz/corpus/pipeline"), &mut paths);
        let mut yaml = Vec::new();
        files(&root.join("../pipelines"), &mut yaml);
        paths.extend(
            yaml.into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml")),
        );
        let mut n = 0;
        let mut direct = 0;
        let mut quick = 0;
        let mut pipelines = 0;
        for path in paths {
            if let Ok(text) = String::from_utf8(std::fs::read(&path).unwrap()) {
                let taken = same_as_spanned(&text);
                direct += usize::from(taken.events);
                quick += usize::from(taken.quick);
                // Anchors and aliases are left to serde-saphyr; the rest is the quick
                // reader's.
                if path.starts_with(root.join("../pipelines")) && !text.contains(": &") {
                    assert!(
                        taken.quick,
                        "{} is not of the quick reader's shape",
                        path.display()
                    );
                    pipelines += 1;
                }
                n += 1;
            }
        }
        assert!(n >= 50, "only {n} files compared");
        assert!(pipelines >= 1, "only {pipelines} pipelines compared");
        assert!(
            direct >= 10,
            "the direct reader took only {direct} of {n} files"
        );
        assert!(
            quick >= 10,
            "the quick reader took only {quick} of {n} files"
        );
        println!("{direct} of {n} files read from events, {quick} from bytes");
    }

    #[test]
    fn syntax_errors_have_locations() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.loc.line >= 1, "{e:?}");
        assert!(!e.message.is_empty());
    }
}
