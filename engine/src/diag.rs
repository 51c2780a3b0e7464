//! Diagnostics for pipeline files: every problem at once, each with file:line:column and a hint.

use std::fmt;

/// A place in a pipeline file (1-based line and column; 0 when unknown).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Loc {
    pub line: u32,
    pub column: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub loc: Loc,
    pub message: String,
    pub hint: Option<String>,
}

/// All problems found in one file.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Diagnostics {
    pub file: String,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(file: impl Into<String>) -> Diagnostics {
        Diagnostics {
            file: file.into(),
            items: Vec::new(),
        }
    }

    pub fn push(&mut self, loc: &Loc, message: impl Into<String>, hint: Option<String>) {
        self.items.push(Diagnostic {
            loc: loc.clone(),
            message: message.into(),
            hint,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sorts by position so output is stable.
    pub fn sort(&mut self) {
        self.items.sort_by_key(|d| (d.loc.line, d.loc.column));
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.items.len();
        writeln!(
            f,
            "{} has {} problem{}:",
            self.file,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.items {
            if d.loc.line == 0 {
                // Not from the file (a `--set` override).
                write!(f, "{}: {}", self.file, d.message)?;
            } else {
                write!(
                    f,
                    "{}:{}:{}: {}",
                    self.file, d.loc.line, d.loc.column, d.message
                )?;
            }
            if let Some(h) = &d.hint {
                write!(f, "\n    hint: {h}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Suggests the closest of `candidates` to `word` (edit distance at most 2 or a prefix).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(word, c);
        let ok = d <= 2.max(word.len() / 4) || c.starts_with(word) || word.starts_with(c);
        if ok && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names() {
        assert_eq!(
            closest("tabel.filter", ["table.filter", "load"]),
            Some("table.filter")
        );
        assert_eq!(closest("zzz", ["table.filter", "load"]), None);
    }
}
