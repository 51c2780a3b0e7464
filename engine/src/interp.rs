//! `${...}` interpolation: one syntax for `params`, `matrix`, `in`, `out` and `secrets`.
//!
//! `${params.a.b}` reads a global parameter, `${matrix.lr}` the node's sweep point, and inside
//! a `command`'s `run`, `${in.port}` and `${out.port}` expand to (shell-quoted) paths at run
//! time. `${secrets.NAME}` stays as written until the operator that needs the value asks for
//! it at run time (see [`crate::secrets`]). `$${` writes a literal `${`.

use serde_json::Value;

/// One `${...}` reference found in a string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Namespace: `params`, `matrix`, `in`, `out` or `secrets`.
    pub ns: String,
    /// The dotted path after the namespace (`a.b` in `${params.a.b}`).
    pub path: String,
    /// Byte range of the whole `${...}` in the string.
    pub start: usize,
    pub end: usize,
}

/// A piece of an interpolated string.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    /// `$${`, a literal `${`.
    Escape,
    Ref(Reference),
}

/// Syntax error in an interpolation: message and byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterpError {
    pub message: String,
    pub offset: usize,
}

fn pieces(s: &str) -> Result<Vec<Piece<'_>>, InterpError> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut text_start = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'$') && bytes.get(i + 2) == Some(&b'{') {
            out.push(Piece::Text(&s[text_start..i]));
            out.push(Piece::Escape);
            i += 3;
            text_start = i;
            continue;
        }
        if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'{') {
            let close = s[i + 2..].find('}').ok_or_else(|| InterpError {
                message: "unclosed `${`: add the closing `}`".into(),
                offset: i,
            })?;
            let inner = &s[i + 2..i + 2 + close];
            let end = i + 2 + close + 1;
            let (ns, path) = inner.split_once('.').unwrap_or((inner, ""));
            let valid = |p: &str| {
                !p.is_empty()
                    && p.split('.').all(|seg| {
                        !seg.is_empty()
                            && seg
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    })
            };
            if !matches!(ns, "params" | "matrix" | "in" | "out" | "secrets") || !valid(path) {
                return Err(InterpError {
                    message: format!(
                        "`${{{inner}}}` is not a reference: use ${{params.NAME}}, ${{matrix.NAME}}, ${{in.PORT}}, ${{out.PORT}} or ${{secrets.NAME}}"
                    ),
                    offset: i,
                });
            }
            out.push(Piece::Text(&s[text_start..i]));
            out.push(Piece::Ref(Reference {
                ns: ns.to_string(),
                path: path.to_string(),
                start: i,
                end,
            }));
            i = end;
            text_start = i;
            continue;
        }
        i += 1;
    }
    out.push(Piece::Text(&s[text_start..]));
    out.retain(|p| !matches!(p, Piece::Text("")));
    Ok(out)
}

/// All references in `s`.
pub fn references(s: &str) -> Result<Vec<Reference>, InterpError> {
    Ok(pieces(s)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Ref(r) => Some(r),
            Piece::Text(_) | Piece::Escape => None,
        })
        .collect())
}

/// Expands the references that `resolve` knows (it returns `None` to leave one as written).
///
/// A string that is exactly one reference resolving to a non-string keeps that value's type
/// (`"${params.n}"` with `n: 5` gives the number 5).
pub fn expand<F>(s: &str, resolve: F) -> Result<Value, InterpError>
where
    F: FnMut(&Reference) -> Result<Option<Value>, InterpError>,
{
    expand_with(s, resolve, "${")
}

/// Like [`expand`], but keeps `$${` escapes as written, for strings that a later stage
/// expands again (a `command`'s `run`, whose `${in..}`/`${out..}` expand at run time).
pub fn expand_partial<F>(s: &str, resolve: F) -> Result<Value, InterpError>
where
    F: FnMut(&Reference) -> Result<Option<Value>, InterpError>,
{
    expand_with(s, resolve, "$${")
}

fn expand_with<F>(s: &str, mut resolve: F, escape: &str) -> Result<Value, InterpError>
where
    F: FnMut(&Reference) -> Result<Option<Value>, InterpError>,
{
    let ps = pieces(s)?;
    if let [Piece::Ref(r)] = ps.as_slice()
        && let Some(v) = resolve(r)?
    {
        return Ok(v);
    }
    let mut out = String::with_capacity(s.len());
    for p in &ps {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Escape => out.push_str(escape),
            Piece::Ref(r) => match resolve(r)? {
                Some(Value::String(v)) => out.push_str(&v),
                Some(v) => out.push_str(&v.to_string()),
                None => out.push_str(&s[r.start..r.end]),
            },
        }
    }
    Ok(Value::String(out))
}

/// Quotes `s` for `sh` with single quotes.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(r: &Reference) -> Result<Option<Value>, InterpError> {
        Ok(match (r.ns.as_str(), r.path.as_str()) {
            ("params", "n") => Some(json!(5)),
            ("params", "name") => Some(json!("abc")),
            _ => None,
        })
    }

    #[test]
    fn whole_reference_keeps_type() {
        assert_eq!(expand("${params.n}", params).unwrap(), json!(5));
    }

    #[test]
    fn embedded_references_become_text_and_unknown_stay() {
        assert_eq!(
            expand("head -n ${params.n} ${in.rows} > ${out.x} $${HOME}", params).unwrap(),
            json!("head -n 5 ${in.rows} > ${out.x} ${HOME}")
        );
    }

    #[test]
    fn partial_expansion_keeps_escapes() {
        assert_eq!(
            expand_partial("echo $${HOME} ${params.n} ${in.x}", params).unwrap(),
            json!("echo $${HOME} 5 ${in.x}")
        );
    }

    #[test]
    fn bad_references_are_errors_with_offsets() {
        let e = references("abc ${params.n").unwrap_err();
        assert_eq!(e.offset, 4);
        assert!(e.message.contains("unclosed"));
        let e = references("${foo.bar}").unwrap_err();
        assert!(e.message.contains("${params.NAME}"), "{}", e.message);
        assert!(references("${params.}").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b.txt"), "/a/b.txt");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
