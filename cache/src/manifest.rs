//! Directory manifests: the Merkle node of a directory artifact.
//!
//! Canonical text: one line per regular file, sorted by path,
//! `"{mode:o} {digest} {size} {path}\n"`. The directory's digest is the BLAKE3 of this text,
//! stored as a blob of its own, so `b3sum` checks it like any other blob.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{CacheError, Result};
use crate::walk::check_rel_path;

/// One file of a directory artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative, '/'-separated path.
    pub path: String,
    /// 0o755 if the file had any execute bit, else 0o644.
    pub mode: u32,
    pub digest: Digest,
    pub size: u64,
}

/// The files of a directory artifact.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// The canonical text (entries sorted by path, whatever their order in `entries`).
    pub fn to_text(&self) -> String {
        let mut sorted: Vec<&ManifestEntry> = self.entries.iter().collect();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        let mut out = String::new();
        for e in sorted {
            out.push_str(&format!(
                "{:o} {} {} {}\n",
                e.mode, e.digest, e.size, e.path
            ));
        }
        out
    }

    /// The directory digest: BLAKE3 of [`Manifest::to_text`].
    pub fn digest(&self) -> Digest {
        Digest::of_bytes(self.to_text().as_bytes())
    }

    /// Sum of the file sizes (saturating: a manifest read from bytes may claim any sizes).
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.size))
    }

    /// Checks that every path is a safe relative path, modes are 0o644 or 0o755, and no
    /// path is duplicated or lies inside another file's path.
    pub fn validate(&self) -> Result<()> {
        self.validate_for(None)
    }

    pub(crate) fn validate_for(&self, digest: Option<Digest>) -> Result<()> {
        let bad = |line: usize, reason: String| CacheError::BadManifest {
            digest,
            line,
            reason,
        };
        let mut files: HashSet<&str> = HashSet::with_capacity(self.entries.len());
        for (i, e) in self.entries.iter().enumerate() {
            let line = i + 1;
            check_rel_path(&e.path).map_err(|r| bad(line, format!("{r}: {:?}", e.path)))?;
            if e.mode != 0o644 && e.mode != 0o755 {
                return Err(bad(
                    line,
                    format!("mode {:o} is neither 644 nor 755", e.mode),
                ));
            }
            if !files.insert(&e.path) {
                return Err(bad(line, format!("duplicate path {:?}", e.path)));
            }
        }
        for (i, e) in self.entries.iter().enumerate() {
            let mut prefix_end = 0;
            while let Some(pos) = e.path[prefix_end..].find('/') {
                let parent = &e.path[..prefix_end + pos];
                if files.contains(parent) {
                    return Err(bad(
                        i + 1,
                        format!("{:?} lies inside {parent:?}, which is a file", e.path),
                    ));
                }
                prefix_end += pos + 1;
            }
        }
        Ok(())
    }

    /// Parses canonical manifest text. Anything that [`Manifest::to_text`] would not write
    /// back byte for byte (unsorted lines, upper-case hex, other modes) is rejected, so a
    /// manifest digest names exactly one directory tree.
    pub fn parse(text: &str) -> Result<Manifest> {
        Self::parse_for(text, None)
    }

    pub(crate) fn parse_for(text: &str, digest: Option<Digest>) -> Result<Manifest> {
        let bad = |line: usize, reason: String| CacheError::BadManifest {
            digest,
            line,
            reason,
        };
        if !text.is_empty() && !text.ends_with('\n') {
            return Err(bad(
                text.lines().count(),
                "the last line has no newline".into(),
            ));
        }
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let mut parts = line.splitn(4, ' ');
            let (Some(mode), Some(hex), Some(size), Some(path)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(n, "expected `MODE DIGEST SIZE PATH`".into()));
            };
            let mode = u32::from_str_radix(mode, 8)
                .map_err(|_| bad(n, format!("mode {mode:?} is not octal")))?;
            let digest_of_entry = Digest::from_hex(hex).map_err(|e| bad(n, e.to_string()))?;
            let size: u64 = size
                .parse()
                .map_err(|_| bad(n, format!("size {size:?} is not a number")))?;
            entries.push(ManifestEntry {
                path: path.to_string(),
                mode,
                digest: digest_of_entry,
                size,
            });
        }
        let m = Manifest { entries };
        m.validate_for(digest)?;
        if m.to_text() != text {
            let first_diff = m
                .to_text()
                .lines()
                .zip(text.lines())
                .position(|(a, b)| a != b)
                .map_or(1, |p| p + 1);
            return Err(bad(
                first_diff,
                "not canonical (lines must be sorted by path, hex lower-case, numbers without \
                 leading zeros)"
                    .into(),
            ));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, mode: u32, content: &[u8]) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            mode,
            digest: Digest::of_bytes(content),
            size: content.len() as u64,
        }
    }

    #[test]
    fn text_is_sorted_and_round_trips() {
        let a = Manifest {
            entries: vec![entry("b/c d.txt", 0o644, b"x"), entry("a", 0o755, b"yy")],
        };
        let text = a.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("755 "), "{text}");
        assert!(lines[0].ends_with(" 2 a"), "{text}");
        assert!(lines[1].ends_with(" 1 b/c d.txt"), "{text}");
        let parsed = Manifest::parse(&text).unwrap();
        assert_eq!(parsed.to_text(), text);
        assert_eq!(parsed.entries[1].path, "b/c d.txt");
        assert_eq!(parsed.total_size(), 3);

        let b = Manifest {
            entries: vec![a.entries[1].clone(), a.entries[0].clone()],
        };
        assert_eq!(a.digest(), b.digest(), "order of entries must not matter");
    }

    #[test]
    fn sizes_that_overflow_saturate() {
        let hex = Digest::of_bytes(b"x").to_hex();
        let text = format!("644 {hex} {max} a\n644 {hex} {max} b\n", max = u64::MAX);
        let m = Manifest::parse(&text).unwrap();
        assert_eq!(m.total_size(), u64::MAX);
    }

    #[test]
    fn empty_manifest_is_empty_text() {
        let m = Manifest::parse("").unwrap();
        assert!(m.entries.is_empty());
        assert_eq!(m.digest(), Digest::of_bytes(b""));
    }

    #[test]
    fn rejects_non_canonical_and_unsafe_text() {
        let d = Digest::of_bytes(b"x");
        let cases = [
            format!("644 {d} 1 b\n644 {d} 1 a\n"),              // unsorted
            format!("644 {} 1 a\n", d.to_hex().to_uppercase()), // upper-case hex
            format!("600 {d} 1 a\n"),                           // odd mode
            format!("644 {d} 01 a\n"),                          // leading zero
            format!("644 {d} 1 a"),                             // no final newline
            format!("644 {d} 1 ../etc/passwd\n"),               // escapes the root
            format!("644 {d} 1 /abs\n"),                        // absolute
            format!("644 {d} 1 a//b\n"),                        // empty component
            format!("644 {d} 1 a\n644 {d} 1 a\n"),              // duplicate
            format!("644 {d} 1 a\n644 {d} 1 a/b\n"),            // file inside a file
            format!("644 {d} 1\n"),                             // missing path
            "644 nothex 1 a\n".to_string(),
        ];
        for text in cases {
            let err = Manifest::parse(&text).expect_err(&text);
            assert!(
                matches!(err, CacheError::BadManifest { .. }),
                "{text}: {err}"
            );
        }
    }
}
