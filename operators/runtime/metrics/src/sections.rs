//! ExpStar's output sections. Texts are `<Narration>\n...`, `<Principle>\n...` and
//! `<Safety>\n...` blocks; the original scores the whole text (tags included), and expflow
//! also scores each section on its own.

/// The section tags, in their usual order.
pub const SECTIONS: [&str; 3] = ["Narration", "Principle", "Safety"];

/// The text of section `name` (between its tag and the next tag or the end), trimmed;
/// `None` when the tag does not occur. A repeated tag's blocks are joined by newlines.
pub fn section(text: &str, name: &str) -> Option<String> {
    let mut out: Option<String> = None;
    let tag = format!("<{name}>");
    let mut rest = text;
    while let Some(at) = rest.find(&tag) {
        let body = &rest[at + tag.len()..];
        let end = SECTIONS
            .iter()
            .filter_map(|s| body.find(&format!("<{s}>")))
            .min()
            .unwrap_or(body.len());
        let block = body[..end].trim();
        match &mut out {
            Some(o) => {
                o.push('\n');
                o.push_str(block);
            }
            None => out = Some(block.to_string()),
        }
        rest = &body[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sections() {
        let t = "<Narration>\nAdd yeast.\n \n<Principle>\nC6H12O6 -> 2CO2\n";
        assert_eq!(section(t, "Narration").as_deref(), Some("Add yeast."));
        assert_eq!(section(t, "Principle").as_deref(), Some("C6H12O6 -> 2CO2"));
        assert_eq!(section(t, "Safety"), None);
    }
}
