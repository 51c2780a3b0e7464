//! Tokenisation for BM25: Unicode word segmentation (UAX #29), lowercased, with every CJK
//! character a token of its own so that Chinese and Japanese text is searchable without a
//! dictionary segmenter.

use unicode_segmentation::UnicodeSegmentation;

/// Whether `c` is a CJK ideograph, kana or Hangul syllable (each becomes its own token).
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF     // Hiragana, Katakana
        | 0x3400..=0x4DBF   // CJK Extension A
        | 0x4E00..=0x9FFF   // CJK Unified Ideographs
        | 0xAC00..=0xD7AF   // Hangul syllables
        | 0xF900..=0xFAFF   // CJK Compatibility Ideographs
        | 0x20000..=0x2FA1F // Extensions B–F, Compatibility Supplement
    )
}

/// The lowercased tokens of `text`: UAX #29 words that contain a letter or digit, with CJK
/// characters split out one per token (runs of other characters stay whole).
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split_word_bounds() {
        if !word.chars().any(char::is_alphanumeric) {
            continue;
        }
        let mut run = String::new();
        for c in word.chars() {
            if is_cjk(c) {
                flush(&mut run, &mut out);
                out.push(c.to_string());
            } else {
                run.push(c);
            }
        }
        flush(&mut run, &mut out);
    }
    out
}

fn flush(run: &mut String, out: &mut Vec<String>) {
    if run.chars().any(char::is_alphanumeric) {
        out.push(run.to_lowercase());
    }
    run.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lowercased_and_punctuation_dropped() {
        assert_eq!(
            tokenize("Red ink, in SALT-water: it's 3.5 cm!"),
            ["red", "ink", "in", "salt", "water", "it's", "3.5", "cm"]
        );
    }

    #[test]
    fn cjk_characters_are_single_tokens() {
        assert_eq!(
            tokenize("燃烧是化学反应"),
            ["燃", "烧", "是", "化", "学", "反", "应"]
        );
        assert_eq!(
            tokenize("用NaOH溶液 titration"),
            ["用", "naoh", "溶", "液", "titration"]
        );
    }

    #[test]
    fn empty_and_symbol_only_text_gives_no_tokens() {
        assert!(tokenize("").is_empty());
        assert!(tokenize(" -- ,,, ... ").is_empty());
    }
}
