//! Tokenisers shared by the metrics: sacrebleu's `13a`, `intl`, `zh` and `char`, Python's
//! `str.split()` whitespace, and a token interner with a fast hasher for n-gram tables.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

/// Python's `str.isspace()` (Unicode White_Space plus the separators U+001C..U+001F).
pub fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()`: runs of whitespace separate tokens, none empty.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_space).filter(|t| !t.is_empty())
}

/// Python's `s.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_space)
}

/// Python's `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// Python's `s.lower()` (full Unicode lower-casing, final sigma included).
pub fn py_lower(s: &str) -> String {
    if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        s.to_lowercase()
    }
}

/// The sacrebleu tokenisers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokenizer {
    /// `none`: split on whitespace only.
    None,
    /// `13a`: mteval-v13a, sacrebleu's default.
    T13a,
    /// `intl`: mteval-v14 international (Unicode punctuation and symbols).
    Intl,
    /// `zh`: each CJK character on its own, the rest as `13a`.
    Zh,
    /// `char`: every character is a token.
    Char,
}

impl Tokenizer {
    pub const NAMES: [&'static str; 5] = ["13a", "intl", "zh", "char", "none"];

    pub fn parse(s: &str) -> Option<Tokenizer> {
        Some(match s {
            "13a" => Tokenizer::T13a,
            "intl" => Tokenizer::Intl,
            "zh" => Tokenizer::Zh,
            "char" => Tokenizer::Char,
            "none" => Tokenizer::None,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tokenizer::T13a => "13a",
            Tokenizer::Intl => "intl",
            Tokenizer::Zh => "zh",
            Tokenizer::Char => "char",
            Tokenizer::None => "none",
        }
    }

    /// The tokenised line as sacrebleu produces it (tokens joined by single spaces).
    pub fn apply(self, line: &str) -> String {
        match self {
            Tokenizer::T13a => tok_13a(line),
            Tokenizer::Intl => tok_intl(line),
            Tokenizer::Zh => tok_zh(line),
            Tokenizer::Char => {
                let mut out = String::with_capacity(line.len() * 2);
                for (i, c) in line.chars().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push(c);
                }
                out
            }
            Tokenizer::None => join_split(line),
        }
    }

    /// sacrebleu's BLEU preprocessing: optional lower-casing, `rstrip`, then the tokeniser;
    /// returns the tokens.
    pub fn tokens(self, line: &str, lowercase: bool) -> Vec<String> {
        let lowered;
        let line = if lowercase {
            lowered = py_lower(line);
            lowered.as_str()
        } else {
            line
        };
        let tokenized = self.apply(py_rstrip(line));
        py_split(&tokenized).map(str::to_string).collect()
    }
}

fn join_split(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for t in py_split(s) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(t);
    }
    out
}

/// sacrebleu's `Tokenizer13a`.
pub fn tok_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    tok_regexp(&format!(" {line} "))
}

/// sacrebleu's `TokenizerRegexp`: four substitutions applied one after the other, with
/// Python `re.sub`'s left-to-right, non-overlapping scan.
///
/// The passes run on UTF-8 bytes: every character the patterns name is ASCII, and a
/// multi-byte character behaves as a run of "other" bytes, so the result is the same as on
/// characters (spaces are only inserted at character boundaries).
pub fn tok_regexp(line: &str) -> String {
    let b = line.as_bytes();
    // 1. ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> ' \1 '
    let mut s1: Vec<u8> = Vec::with_capacity(b.len() + b.len() / 2 + 8);
    for &c in b {
        let hit =
            matches!(c, 0x7B..=0x7E | 0x5B..=0x60 | 0x20..=0x26 | 0x28..=0x2B | 0x3A..=0x40 | 0x2F);
        if hit {
            s1.extend_from_slice(&[b' ', c, b' ']);
        } else {
            s1.push(c);
        }
    }
    // 2. ([^0-9])([\.,]) -> '\1 \2 '
    let mut s2: Vec<u8> = Vec::with_capacity(s1.len() + 16);
    let mut i = 0;
    while i < s1.len() {
        if i + 1 < s1.len() && !s1[i].is_ascii_digit() && matches!(s1[i + 1], b'.' | b',') {
            s2.extend_from_slice(&[s1[i], b' ', s1[i + 1], b' ']);
            i += 2;
        } else {
            s2.push(s1[i]);
            i += 1;
        }
    }
    // 3. ([\.,])([^0-9]) -> ' \1 \2'
    let mut s3: Vec<u8> = Vec::with_capacity(s2.len() + 16);
    let mut i = 0;
    while i < s2.len() {
        if i + 1 < s2.len() && matches!(s2[i], b'.' | b',') && !s2[i + 1].is_ascii_digit() {
            s3.extend_from_slice(&[b' ', s2[i], b' ', s2[i + 1]]);
            i += 2;
        } else {
            s3.push(s2[i]);
            i += 1;
        }
    }
    // 4. ([0-9])(-) -> '\1 \2 '
    let mut s4: Vec<u8> = Vec::with_capacity(s3.len() + 16);
    let mut i = 0;
    while i < s3.len() {
        if i + 1 < s3.len() && s3[i].is_ascii_digit() && s3[i + 1] == b'-' {
            s4.extend_from_slice(&[s3[i], b' ', b'-', b' ']);
            i += 2;
        } else {
            s4.push(s3[i]);
            i += 1;
        }
    }
    let s4 = String::from_utf8(s4).expect("spaces are inserted at character boundaries");
    join_split(&s4)
}

/// sacrebleu's `TokenizerV14International`.
pub fn tok_intl(line: &str) -> String {
    static RES: OnceLock<[regex::Regex; 3]> = OnceLock::new();
    let res = RES.get_or_init(|| {
        [
            regex::Regex::new(r"(\P{N})(\p{P})").expect("valid regex"),
            regex::Regex::new(r"(\p{P})(\P{N})").expect("valid regex"),
            regex::Regex::new(r"(\p{S})").expect("valid regex"),
        ]
    });
    let a = res[0].replace_all(line, "${1} ${2} ");
    let b = res[1].replace_all(&a, " ${1} ${2}");
    let c = res[2].replace_all(&b, " ${1} ");
    join_split(&c)
}

/// The `_is_chinese_char` ranges of sacrebleu's `TokenizerZh`, as Python compares them.
/// Two entries are written in the source as 5-hex-digit `\u` escapes, which Python reads
/// as a 4-digit escape plus a digit or letter; comparing one character against such a
/// 2-character string makes the ranges (U+2000, U+2A6D] and (U+2F80, U+2FA1].
fn is_chinese_char(c: char) -> bool {
    const RANGES: [(u32, u32); 22] = [
        (0x3400, 0x4db5),
        (0x4e00, 0x9fa5),
        (0x9fa6, 0x9fbb),
        (0xf900, 0xfa2d),
        (0xfa30, 0xfa6a),
        (0xfa70, 0xfad9),
        (0x2001, 0x2a6d),
        (0x2f81, 0x2fa1),
        (0xff00, 0xffef),
        (0x2e80, 0x2eff),
        (0x3000, 0x303f),
        (0x31c0, 0x31ef),
        (0x2f00, 0x2fdf),
        (0x2ff0, 0x2fff),
        (0x3100, 0x312f),
        (0x31a0, 0x31bf),
        (0xfe10, 0xfe1f),
        (0xfe30, 0xfe4f),
        (0x2600, 0x26ff),
        (0x2700, 0x27bf),
        (0x3200, 0x32ff),
        (0x3300, 0x33ff),
    ];
    let u = c as u32;
    RANGES.iter().any(|&(a, b)| a <= u && u <= b)
}

/// sacrebleu's `TokenizerZh`.
pub fn tok_zh(line: &str) -> String {
    let line = py_strip(line);
    let mut s = String::with_capacity(line.len() * 2);
    for c in line.chars() {
        if is_chinese_char(c) {
            s.push(' ');
            s.push(c);
            s.push(' ');
        } else {
            s.push(c);
        }
    }
    tok_regexp(&s)
}

/// A small multiply-rotate hasher (FxHash) for n-gram tables; not DoS-resistant, which is
/// fine for scoring.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

const SEED: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(SEED);
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u128(&mut self, i: u128) {
        self.write_u64(i as u64);
        self.write_u64((i >> 64) as u64);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;
pub type FxMap<K, V> = HashMap<K, V, FxBuild>;

/// Token strings to small integers, so n-grams are packed `u128` keys.
#[derive(Default)]
pub struct Interner {
    ids: FxMap<String, u32>,
}

impl Interner {
    pub fn id(&mut self, token: &str) -> u32 {
        if let Some(&id) = self.ids.get(token) {
            return id;
        }
        let id = self.ids.len() as u32 + 1;
        self.ids.insert(token.to_string(), id);
        id
    }

    pub fn ids<S: AsRef<str>>(&mut self, tokens: &[S]) -> Vec<u32> {
        tokens.iter().map(|t| self.id(t.as_ref())).collect()
    }
}

/// The n-gram of `ids` (1 to 4 tokens, ids non-zero) as one key; the order is implied.
pub fn ngram_key(ids: &[u32]) -> u128 {
    let mut k = 0u128;
    for &id in ids {
        k = (k << 32) | u128::from(id);
    }
    k
}

/// The order (1-4) of a key made by [`ngram_key`].
pub fn ngram_order(key: u128) -> usize {
    (128 - key.leading_zeros() as usize).div_ceil(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_13a_splits_punctuation_but_not_numbers() {
        assert_eq!(
            tok_13a("Hello, world. 3.5 and 1,000-2"),
            "Hello , world . 3.5 and 1,000 - 2"
        );
        assert_eq!(
            tok_13a("<Narration>\nAdd &amp; mix"),
            "< Narration > Add & mix"
        );
    }

    #[test]
    fn zh_ranges_follow_python_string_comparison() {
        assert!(is_chinese_char('中'));
        assert!(is_chinese_char('\u{2192}')); // → falls in (U+2000, U+2A6D]
        assert!(!is_chinese_char('\u{2000}'));
        assert!(!is_chinese_char('\u{20000}'));
    }

    #[test]
    fn ngram_keys_know_their_order() {
        assert_eq!(ngram_order(ngram_key(&[7])), 1);
        assert_eq!(ngram_order(ngram_key(&[7, 1])), 2);
        assert_eq!(ngram_order(ngram_key(&[u32::MAX, 1, 1, 1])), 4);
    }
}
