//! NLTK's `PorterStemmer` in its default `NLTK_EXTENSIONS` mode, ported rule for rule.
//! rouge-score and NLTK's METEOR both use it; it differs from the Snowball "porter"
//! (rust-stemmers) on words such as `dying`, `skies` and `generously`.

const VOWELS: [char; 5] = ['a', 'e', 'i', 'o', 'u'];

fn is_vowel(c: char) -> bool {
    VOWELS.contains(&c)
}

fn is_consonant(w: &[char], mut i: usize) -> bool {
    if is_vowel(w[i]) {
        return false;
    }
    if w[i] == 'y' {
        let mut negate = false;
        while i > 0 && w[i] == 'y' {
            negate = !negate;
            i -= 1;
        }
        // Python: `(word[i] not in vowels) != negate`.
        return is_vowel(w[i]) == negate;
    }
    true
}

fn consonant_flags(w: &[char]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let f = if is_vowel(c) {
            false
        } else if c == 'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(f);
    }
    flags
}

fn measure(stem: &[char]) -> usize {
    let f = consonant_flags(stem);
    f.windows(2).filter(|p| !p[0] && p[1]).count()
}

fn positive_measure(stem: &[char]) -> bool {
    measure(stem) > 0
}

fn contains_vowel(stem: &[char]) -> bool {
    !consonant_flags(stem).iter().all(|&c| c)
}

fn ends_double_consonant(w: &[char]) -> bool {
    w.len() >= 2 && w[w.len() - 1] == w[w.len() - 2] && is_consonant(w, w.len() - 1)
}

fn ends_cvc(w: &[char]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], 'w' | 'x' | 'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

fn ends_with(w: &[char], suffix: &str) -> bool {
    let n = suffix.chars().count();
    w.len() >= n && w[w.len() - n..].iter().copied().eq(suffix.chars())
}

fn strip(w: &[char], suffix: &str) -> Vec<char> {
    w[..w.len() - suffix.chars().count()].to_vec()
}

fn with(stem: &[char], rep: &str) -> Vec<char> {
    let mut v = stem.to_vec();
    v.extend(rep.chars());
    v
}

type CondFn<'a> = &'a dyn Fn(&[char]) -> bool;

enum Cond<'a> {
    Always,
    PositiveMeasure,
    MeasureGt1,
    Fn(CondFn<'a>),
}

impl Cond<'_> {
    fn ok(&self, stem: &[char]) -> bool {
        match self {
            Cond::Always => true,
            Cond::PositiveMeasure => positive_measure(stem),
            Cond::MeasureGt1 => measure(stem) > 1,
            Cond::Fn(f) => f(stem),
        }
    }
}

/// `_apply_rule_list`: the first rule whose suffix matches decides, whether or not its
/// condition holds. The suffix `*d` means "ends in a double consonant".
fn apply_rules(w: &[char], rules: &[(&str, &str, Cond<'_>)]) -> Vec<char> {
    for (suffix, rep, cond) in rules {
        if *suffix == "*d" && ends_double_consonant(w) {
            let stem = &w[..w.len() - 2];
            return if cond.ok(stem) {
                with(stem, rep)
            } else {
                w.to_vec()
            };
        }
        if ends_with(w, suffix) {
            let stem = strip(w, suffix);
            return if cond.ok(&stem) {
                with(&stem, rep)
            } else {
                w.to_vec()
            };
        }
    }
    w.to_vec()
}

fn step1a(w: &[char]) -> Vec<char> {
    if ends_with(w, "ies") && w.len() == 4 {
        return with(&strip(w, "ies"), "ie");
    }
    apply_rules(
        w,
        &[
            ("sses", "ss", Cond::Always),
            ("ies", "i", Cond::Always),
            ("ss", "ss", Cond::Always),
            ("s", "", Cond::Always),
        ],
    )
}

fn step1b(w: &[char]) -> Vec<char> {
    if ends_with(w, "ied") {
        return if w.len() == 4 {
            with(&strip(w, "ied"), "ie")
        } else {
            with(&strip(w, "ied"), "i")
        };
    }
    if ends_with(w, "eed") {
        let stem = strip(w, "eed");
        return if measure(&stem) > 0 {
            with(&stem, "ee")
        } else {
            w.to_vec()
        };
    }
    let mut inter = None;
    for suffix in ["ed", "ing"] {
        if ends_with(w, suffix) {
            let s = strip(w, suffix);
            if contains_vowel(&s) {
                inter = Some(s);
                break;
            }
        }
    }
    let Some(inter) = inter else {
        return w.to_vec();
    };
    let last = inter.last().copied().unwrap_or(' ');
    let last_s = last.to_string();
    let not_lsz = move |_: &[char]| !matches!(last, 'l' | 's' | 'z');
    let cvc1 = |stem: &[char]| measure(stem) == 1 && ends_cvc(stem);
    apply_rules(
        &inter,
        &[
            ("at", "ate", Cond::Always),
            ("bl", "ble", Cond::Always),
            ("iz", "ize", Cond::Always),
            ("*d", &last_s, Cond::Fn(&not_lsz)),
            ("", "e", Cond::Fn(&cvc1)),
        ],
    )
}

fn step1c(w: &[char]) -> Vec<char> {
    let cond = |stem: &[char]| stem.len() > 1 && is_consonant(stem, stem.len() - 1);
    apply_rules(w, &[("y", "i", Cond::Fn(&cond))])
}

fn step2(w: &[char]) -> Vec<char> {
    if ends_with(w, "alli") && positive_measure(&strip(w, "alli")) {
        return step2(&with(&strip(w, "alli"), "al"));
    }
    let logi = |_: &[char]| positive_measure(&w[..w.len() - 3]);
    use Cond::PositiveMeasure as P;
    apply_rules(
        w,
        &[
            ("ational", "ate", P),
            ("tional", "tion", P),
            ("enci", "ence", P),
            ("anci", "ance", P),
            ("izer", "ize", P),
            ("bli", "ble", P),
            ("alli", "al", P),
            ("entli", "ent", P),
            ("eli", "e", P),
            ("ousli", "ous", P),
            ("ization", "ize", P),
            ("ation", "ate", P),
            ("ator", "ate", P),
            ("alism", "al", P),
            ("iveness", "ive", P),
            ("fulness", "ful", P),
            ("ousness", "ous", P),
            ("aliti", "al", P),
            ("iviti", "ive", P),
            ("biliti", "ble", P),
            ("fulli", "ful", P),
            ("logi", "log", Cond::Fn(&logi)),
        ],
    )
}

fn step3(w: &[char]) -> Vec<char> {
    use Cond::PositiveMeasure as P;
    apply_rules(
        w,
        &[
            ("icate", "ic", P),
            ("ative", "", P),
            ("alize", "al", P),
            ("iciti", "ic", P),
            ("ical", "ic", P),
            ("ful", "", P),
            ("ness", "", P),
        ],
    )
}

fn step4(w: &[char]) -> Vec<char> {
    use Cond::MeasureGt1 as M;
    let ion = |stem: &[char]| measure(stem) > 1 && matches!(stem.last(), Some('s' | 't'));
    apply_rules(
        w,
        &[
            ("al", "", M),
            ("ance", "", M),
            ("ence", "", M),
            ("er", "", M),
            ("ic", "", M),
            ("able", "", M),
            ("ible", "", M),
            ("ant", "", M),
            ("ement", "", M),
            ("ment", "", M),
            ("ent", "", M),
            ("ion", "", Cond::Fn(&ion)),
            ("ou", "", M),
            ("ism", "", M),
            ("ate", "", M),
            ("iti", "", M),
            ("ous", "", M),
            ("ive", "", M),
            ("ize", "", M),
        ],
    )
}

fn step5a(w: &[char]) -> Vec<char> {
    if ends_with(w, "e") {
        let stem = strip(w, "e");
        let m = measure(&stem);
        if m > 1 || (m == 1 && !ends_cvc(&stem)) {
            return stem;
        }
    }
    w.to_vec()
}

fn step5b(w: &[char]) -> Vec<char> {
    let cond = |_: &[char]| measure(&w[..w.len() - 1]) > 1;
    apply_rules(w, &[("ll", "l", Cond::Fn(&cond))])
}

fn irregular(w: &str) -> Option<&'static str> {
    Some(match w {
        "sky" | "skies" => "sky",
        "dying" => "die",
        "lying" => "lie",
        "tying" => "tie",
        "news" => "news",
        "innings" | "inning" => "inning",
        "outings" | "outing" => "outing",
        "cannings" | "canning" => "canning",
        "howe" => "howe",
        "proceed" => "proceed",
        "exceed" => "exceed",
        "succeed" => "succeed",
        _ => return None,
    })
}

/// `PorterStemmer().stem(word)` (lower-cases first, as NLTK does).
pub fn stem(word: &str) -> String {
    let lower = crate::tokenize::py_lower(word);
    if let Some(s) = irregular(&lower) {
        return s.to_string();
    }
    if word.chars().count() <= 2 {
        return lower;
    }
    let w: Vec<char> = lower.chars().collect();
    let w = step1a(&w);
    let w = step1b(&w);
    let w = step1c(&w);
    let w = step2(&w);
    let w = step3(&w);
    let w = step4(&w);
    let w = step5a(&w);
    let w = step5b(&w);
    w.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn matches_nltk_on_known_words() {
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("running", "run"),
            ("relational", "relat"),
            ("hopping", "hop"),
            ("filing", "file"),
            ("dying", "die"),
            ("skies", "sky"),
            ("happy", "happi"),
        ] {
            assert_eq!(stem(w), s, "{w}");
        }
    }
}
