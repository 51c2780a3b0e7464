//! Pipeline secrets: `secrets: [NAME, ...]` names environment variables (API keys, tokens)
//! whose values a run reads when it starts and hands only to what needs them: a command's
//! environment (and, through a variable reference, its `run` text) and an API client's
//! `Authorization` header.
//!
//! - Everywhere expflow writes (parameters, keys, records, the journal, events, explain and
//!   lineage), a secret is its placeholder `${secrets.NAME}`: a node's key depends on the
//!   secret's name only.
//! - `run` refuses to start when a declared secret is not set ([`Secrets::from_env`]).
//! - What a node writes to its log, and the error it fails with, has every secret value
//!   replaced by `***` ([`scrub`]; [`Scrubber`] for a child's output streams).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::diag::{Diagnostics, Loc};
use crate::error::EngineError;
use crate::interp::{InterpError, Reference};
use crate::yaml::{Node, YValue};

/// What replaces a secret value in logs and errors.
pub const MASK: &str = "***";

/// Whether `s` is a valid secret name: an environment variable name,
/// `[A-Za-z_][A-Za-z0-9_]*`.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reads the `secrets:` list of a pipeline file.
pub(crate) fn read_names(v: &Node, diags: &mut Diagnostics) -> Vec<(String, Loc)> {
    let items = match &v.value {
        YValue::Null => return Vec::new(),
        YValue::Seq(items) => items,
        _ => {
            diags.push(
                &v.loc,
                format!(
                    "`secrets` must be a list of names, found {}",
                    crate::spec::describe(v)
                ),
                Some("for example `secrets: [OPENAI_API_KEY]`".into()),
            );
            return Vec::new();
        }
    };
    let mut out: Vec<(String, Loc)> = Vec::new();
    for item in items {
        let Some(name) = item.as_str() else {
            diags.push(
                &item.loc,
                format!(
                    "a secret must be a name, found {}",
                    crate::spec::describe(item)
                ),
                None,
            );
            continue;
        };
        if !valid_name(name) {
            diags.push(
                &item.loc,
                format!("secret name `{name}` is not valid"),
                Some(
                    "a secret is an environment variable: letters, digits and `_`, not starting with a digit"
                        .into(),
                ),
            );
        } else if let Some((_, first)) = out.iter().find(|(n, _)| n == name) {
            diags.push(
                &item.loc,
                format!(
                    "duplicate secret `{name}` (first declared at line {}, column {})",
                    first.line, first.column
                ),
                Some("declare each secret once".into()),
            );
        } else {
            out.push((name.to_string(), item.loc.clone()));
        }
    }
    out
}

/// Whether `s` holds a `${secrets.` placeholder (or its `$${` escape): such a parameter
/// string keeps its escapes until [`reveal`] expands it at run time.
pub fn mentions(s: &str) -> bool {
    s.contains("${secrets.")
}

/// The names in the `${secrets.NAME}` placeholders of `s`, in order (a `command`'s `run`
/// may hold other shell text in braces, so this scans instead of parsing).
pub fn placeholders(s: &str) -> Vec<String> {
    s.match_indices("${secrets.")
        .filter_map(|(i, m)| {
            let rest = &s[i + m.len()..];
            let end = rest.find('}')?;
            let name = &rest[..end];
            valid_name(name).then(|| name.to_string())
        })
        .collect()
}

/// Checks a `${secrets.NAME}` reference when a pipeline is compiled: the secret must be
/// declared and the parameter must take credentials (`allowed`). It stays as written.
pub(crate) fn check_reference(
    r: &Reference,
    declared: &[(String, Loc)],
    allowed: bool,
) -> Result<Option<Value>, InterpError> {
    let err = |message: String| InterpError {
        message,
        offset: r.start,
    };
    if !declared.iter().any(|(n, _)| *n == r.path) {
        let hint = match crate::diag::closest(&r.path, declared.iter().map(|(n, _)| n.as_str())) {
            Some(c) => format!("did you mean `${{secrets.{c}}}`?"),
            None => format!("declare it: `secrets: [{}]` at the top of the file", r.path),
        };
        return Err(err(format!(
            "`${{secrets.{}}}`: no secret `{}` is declared; {hint}",
            r.path, r.path
        )));
    }
    if !allowed {
        return Err(err(format!(
            "`${{secrets.{}}}` can only be used where a credential goes (a command's `run` and `env`, an API client's `api_key`), so that its value is never stored",
            r.path
        )));
    }
    Ok(None)
}

/// Expands the `${secrets.NAME}` placeholders of a parameter string with `lookup` (and its
/// `$${` escapes to `${`); a string without a placeholder is returned as it is, since the
/// engine expanded its escapes already.
pub fn reveal<F>(text: &str, mut lookup: F) -> Result<String, String>
where
    F: FnMut(&str) -> Result<String, String>,
{
    if !mentions(text) {
        return Ok(text.to_string());
    }
    let mut failure = None;
    let expanded = crate::interp::expand(text, |r| {
        if r.ns != "secrets" {
            return Ok(None);
        }
        match lookup(&r.path) {
            Ok(v) => Ok(Some(Value::String(v))),
            Err(e) => {
                failure = Some(e);
                Ok(Some(Value::String(String::new())))
            }
        }
    })
    .map_err(|e| e.message)?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(match expanded {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

/// Secret values by name. `Debug` shows the names only.
#[derive(Clone, Default)]
pub struct Secrets {
    pairs: Arc<Vec<(String, String)>>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.pairs.iter().map(|(n, _)| n))
            .finish()
    }
}

impl Secrets {
    /// Secrets from (name, value) pairs (tests, the harness).
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Secrets {
        Secrets {
            pairs: Arc::new(pairs.into_iter().collect()),
        }
    }

    /// Reads each of `names` from the environment variable of that name. One that is unset
    /// or empty is a usage error naming every such secret and how to set it; `file` is the
    /// pipeline file that declares them.
    pub fn from_env(names: &[String], file: &Path) -> Result<Secrets, EngineError> {
        let mut pairs = Vec::with_capacity(names.len());
        let mut problems = Vec::new();
        for name in names {
            match std::env::var(name) {
                Ok(v) if !v.is_empty() => pairs.push((name.clone(), v)),
                Ok(_) => problems.push(format!("`{name}` is set but empty")),
                Err(_) => problems.push(format!("`{name}` is not set")),
            }
        }
        if problems.is_empty() {
            return Ok(Secrets::new(pairs));
        }
        let file = file.file_name().map_or_else(
            || file.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        Err(EngineError::Usage(format!(
            "{file} declares secrets (`secrets:`) that the environment does not give: {}; export each one before `expflow run` (e.g. `export {}=...`); nothing was run",
            problems.join(", "),
            names[0]
        )))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(n, _)| n.as_str())
    }

    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(_, v)| v.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// `bytes` with every occurrence of any of `values` replaced by [`MASK`] (at each position
/// the longest value that matches; empty values are ignored).
pub fn scrub_bytes<V: AsRef<[u8]>>(bytes: &[u8], values: &[V]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    'outer: while i < bytes.len() {
        let mut best = 0;
        for v in values {
            let v = v.as_ref();
            if !v.is_empty() && v.len() > best && bytes[i..].starts_with(v) {
                best = v.len();
            }
        }
        if best > 0 {
            out.extend_from_slice(MASK.as_bytes());
            i += best;
            continue 'outer;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// `text` with every secret value in `values` replaced by [`MASK`].
pub fn scrub<V: AsRef<[u8]>>(text: &str, values: &[V]) -> String {
    if values.iter().all(|v| v.as_ref().is_empty()) {
        return text.to_string();
    }
    // Values are whole UTF-8 strings, so the result is UTF-8 again.
    String::from_utf8_lossy(&scrub_bytes(text.as_bytes(), values)).into_owned()
}

/// Scrubs a byte stream that arrives in chunks: a value split across two reads is still
/// found, because a tail that could be the start of a value is held back until more
/// arrives. Output is released at line ends where possible.
pub struct Scrubber {
    values: Vec<Vec<u8>>,
    pending: Vec<u8>,
}

/// Output without a line end is released once this much is pending.
const RELEASE_BYTES: usize = 64 * 1024;

impl Scrubber {
    pub fn new<V: AsRef<[u8]>>(values: &[V]) -> Scrubber {
        let values: Vec<Vec<u8>> = values
            .iter()
            .map(|v| v.as_ref().to_vec())
            .filter(|v| !v.is_empty())
            .collect();
        Scrubber {
            values,
            pending: Vec::new(),
        }
    }

    /// Where the pending bytes end in a proper prefix of a value (which the next chunk may
    /// complete); their length when they do not.
    fn partial_start(&self) -> usize {
        let len = self.pending.len();
        let longest = self.values.iter().map(Vec::len).max().unwrap_or(0);
        (len.saturating_sub(longest.saturating_sub(1))..len)
            .find(|&p| {
                let tail = &self.pending[p..];
                self.values
                    .iter()
                    .any(|v| v.len() > tail.len() && v.starts_with(tail))
            })
            .unwrap_or(len)
    }

    /// Takes a chunk; returns the scrubbed bytes that are safe to write now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        self.pending = scrub_bytes(&self.pending, &self.values);
        // Every whole value in the pending bytes has been replaced; only one that starts at
        // `safe` or later can still be completed by the next chunk.
        let safe = self.partial_start();
        let cut = match self.pending[..safe].iter().rposition(|b| *b == b'\n') {
            Some(nl) => nl + 1,
            None if safe >= RELEASE_BYTES => safe,
            None => 0,
        };
        self.pending.drain(..cut).collect()
    }

    /// The rest, at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_environment_variable_names() {
        for ok in ["TOKEN", "openai_api_key", "_X1"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "1ABC", "A-B", "A.B", "A B"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn scrub_replaces_every_value_longest_first() {
        let values = ["abc", "abcdef", ""];
        assert_eq!(scrub("x abcdef y abc abcab", &values), "x *** y *** ***ab");
        assert_eq!(scrub("nothing here", &[""; 0]), "nothing here");
        assert_eq!(scrub("é-sécret-é", &["sécret"]), "é-***-é");
    }

    #[test]
    fn a_value_split_across_chunks_is_still_masked() {
        let secret = "s3cr3t-VALUE-42";
        let text = format!("first line\ntoken={secret} and again {secret}\nlast {secret}");
        let want = scrub(&text, &[secret]);
        assert!(!want.contains(secret));
        let bytes = text.as_bytes();
        // Every split point, and every chunk size from 1 byte up.
        for at in 0..=bytes.len() {
            let mut s = Scrubber::new(&[secret]);
            let mut out = s.push(&bytes[..at]);
            out.extend(s.push(&bytes[at..]));
            out.extend(s.finish());
            assert_eq!(String::from_utf8(out).unwrap(), want, "split at {at}");
        }
        for size in 1..8 {
            let mut s = Scrubber::new(&[secret]);
            let mut out = Vec::new();
            for c in bytes.chunks(size) {
                out.extend(s.push(c));
            }
            out.extend(s.finish());
            assert_eq!(String::from_utf8(out).unwrap(), want, "chunks of {size}");
        }
    }

    #[test]
    fn whole_lines_are_released_as_they_arrive() {
        let mut s = Scrubber::new(&["secret"]);
        assert_eq!(s.push(b"one\ntwo"), b"one\n");
        assert_eq!(s.push(b" sec"), b"", "`sec` may begin the secret");
        assert_eq!(s.push(b"ret\nthree\nfour"), b"two ***\nthree\n");
        assert_eq!(s.finish(), b"four");
    }

    #[test]
    fn reveal_expands_placeholders_and_escapes_only_where_there_are_placeholders() {
        let look = |n: &str| match n {
            "TOKEN" => Ok("v4lue".to_string()),
            other => Err(format!("no secret `{other}`")),
        };
        assert_eq!(
            reveal("Bearer ${secrets.TOKEN} $${HOME}", look).unwrap(),
            "Bearer v4lue ${HOME}"
        );
        assert_eq!(reveal("${HOME} plain", look).unwrap(), "${HOME} plain");
        assert_eq!(
            reveal("x ${secrets.OTHER}", look).unwrap_err(),
            "no secret `OTHER`"
        );
    }

    #[test]
    fn missing_secrets_are_named_and_debug_hides_values() {
        let name = "EXPFLOW_TEST_SECRET_NEVER_SET_7d1f";
        let e = Secrets::from_env(&[name.to_string()], Path::new("/x/pipe.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("`{name}` is not set")), "{e}");
        assert!(e.contains("pipe.yaml") && e.contains("export"), "{e}");
        let s = Secrets::new([("TOKEN".to_string(), "hunter2".to_string())]);
        assert_eq!(format!("{s:?}"), r#"["TOKEN"]"#);
        assert_eq!(s.get("TOKEN"), Some("hunter2"));
    }
}
