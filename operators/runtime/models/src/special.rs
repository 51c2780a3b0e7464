//! Special tokens in decoded text: what vLLM's `skip_special_tokens` (its default) leaves
//! out of a reply. The native backend and `expflow serve` both decode this way, so a model
//! gives the same text in-process and served.

use tokenizers::Tokenizer;

/// The text of the tokenizer's added tokens marked special (`<|im_start|>`,
/// `<|endoftext|>`, ...), longest first so that no token is cut by a shorter one inside it.
pub fn special_texts(t: &Tokenizer) -> Vec<String> {
    let mut out: Vec<String> = t
        .get_added_tokens_decoder()
        .into_values()
        .filter(|a| a.special && !a.content.is_empty())
        .map(|a| a.content)
        .collect();
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

/// `text` without the special tokens' text. The tokenizer keeps special tokens whole, so
/// their text in a decoded reply is theirs.
pub fn strip_special(text: &str, special: &[String]) -> String {
    let mut out = text.to_string();
    for t in special {
        if out.contains(t.as_str()) {
            out = out.replace(t.as_str(), "");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longer_tokens_go_first_so_none_is_cut_by_one_inside_it() {
        let special = vec!["<|im_start|>x".to_string(), "<|im_start|>".to_string()];
        assert_eq!(
            strip_special("a<|im_start|>xb<|im_start|>c", &special),
            "abc"
        );
    }
}
