//! WordNet 3.0 read from the Debian package `wordnet-base` (`/usr/share/wordnet`), enough
//! for NLTK's METEOR: `wordnet.synsets(word)` over all parts of speech, with NLTK's
//! `_morphy` (the exception list, else one round of detachment rules), and the lemma names
//! of each synset.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::MetricsError;
use crate::tokenize::{FxMap, py_lower};

/// Where Debian installs WordNet 3.0.
pub const DEFAULT_DIR: &str = "/usr/share/wordnet";

/// Parts of speech in NLTK's `POS_LIST` order: noun, verb, adjective, adverb.
const SUFFIXES: [&str; 4] = ["noun", "verb", "adj", "adv"];

fn substitutions(pos: usize) -> &'static [(&'static str, &'static str)] {
    match pos {
        0 => &[
            ("s", ""),
            ("ses", "s"),
            ("ves", "f"),
            ("xes", "x"),
            ("zes", "z"),
            ("ches", "ch"),
            ("shes", "sh"),
            ("men", "man"),
            ("ies", "y"),
        ],
        1 => &[
            ("s", ""),
            ("ies", "y"),
            ("es", "e"),
            ("es", ""),
            ("ed", "e"),
            ("ed", ""),
            ("ing", "e"),
            ("ing", ""),
        ],
        2 => &[("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
        _ => &[],
    }
}

type Synonyms = Arc<Vec<String>>;

pub struct WordNet {
    /// lemma -> synset offsets per part of speech.
    index: FxMap<String, [Vec<u32>; 4]>,
    exceptions: [FxMap<String, Vec<String>>; 4],
    data: [Vec<u8>; 4],
    synonyms: Mutex<FxMap<String, Synonyms>>,
}

fn unreadable(dir: &Path, file: &str, e: &std::io::Error) -> String {
    format!(
        "WordNet 3.0 is not readable at {}: {file}: {e}; METEOR needs it: install the Debian \
         package `wordnet-base` (apt-get install wordnet-base), or set `wordnet_dir` to a \
         WordNet 3.0 dict directory",
        dir.display()
    )
}

fn parse_index(
    dir: &Path,
    suffix: &str,
    text: &str,
    p: usize,
    index: &mut FxMap<String, [Vec<u32>; 4]>,
) -> Result<(), String> {
    for (lineno, line) in text.lines().enumerate() {
        if line.starts_with(' ') || line.is_empty() {
            continue;
        }
        let bad = || {
            format!(
                "{}: index.{suffix} line {}: malformed",
                dir.display(),
                lineno + 1
            )
        };
        let mut it = line.split_ascii_whitespace();
        let lemma = it.next().ok_or_else(bad)?;
        let _pos = it.next().ok_or_else(bad)?;
        let n_synsets: usize = it.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        let n_ptrs: usize = it.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        for _ in 0..n_ptrs {
            it.next().ok_or_else(bad)?;
        }
        let _n_senses = it.next().ok_or_else(bad)?;
        let _tagged = it.next().ok_or_else(bad)?;
        let mut offs = Vec::with_capacity(n_synsets);
        for _ in 0..n_synsets {
            offs.push(it.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?);
        }
        index.entry(lemma.to_string()).or_default()[p] = offs;
    }
    Ok(())
}

impl WordNet {
    pub fn load(dir: &Path) -> Result<WordNet, MetricsError> {
        Self::read(dir).map_err(MetricsError::WordNet)
    }

    fn read(dir: &Path) -> Result<WordNet, String> {
        let read =
            |file: String| std::fs::read(dir.join(&file)).map_err(|e| unreadable(dir, &file, &e));
        let mut index: FxMap<String, [Vec<u32>; 4]> = FxMap::default();
        let mut exceptions: [FxMap<String, Vec<String>>; 4] = Default::default();
        let mut data: [Vec<u8>; 4] = Default::default();
        for (p, suffix) in SUFFIXES.iter().enumerate() {
            let bytes = read(format!("index.{suffix}"))?;
            parse_index(dir, suffix, &String::from_utf8_lossy(&bytes), p, &mut index)?;
            let exc = read(format!("{suffix}.exc"))?;
            for line in String::from_utf8_lossy(&exc).lines() {
                let mut terms = line.split_whitespace();
                if let Some(first) = terms.next() {
                    exceptions[p].insert(first.to_string(), terms.map(str::to_string).collect());
                }
            }
            data[p] = read(format!("data.{suffix}"))?;
        }
        Ok(WordNet {
            index,
            exceptions,
            data,
            synonyms: Mutex::new(FxMap::default()),
        })
    }

    /// One loaded copy per directory for the whole process.
    pub fn shared(dir: &Path) -> Result<Arc<WordNet>, MetricsError> {
        static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<WordNet>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(wn) = map.get(dir) {
            return Ok(wn.clone());
        }
        let wn = Arc::new(WordNet::load(dir)?);
        map.insert(dir.to_path_buf(), wn.clone());
        Ok(wn)
    }

    fn has(&self, form: &str, pos: usize) -> bool {
        self.index.get(form).is_some_and(|o| !o[pos].is_empty())
    }

    /// NLTK's `_morphy(form, pos)`.
    fn morphy(&self, form: &str, pos: usize) -> Vec<String> {
        let mut forms = vec![form.to_string()];
        if let Some(exc) = self.exceptions[pos].get(form) {
            forms.extend(exc.iter().cloned());
        } else {
            for (old, new) in substitutions(pos) {
                if let Some(stem) = form.strip_suffix(old) {
                    forms.push(format!("{stem}{new}"));
                }
            }
        }
        let mut out: Vec<String> = Vec::new();
        for f in forms {
            if self.has(&f, pos) && !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }

    /// The lemma names of the synset at `offset` in `data.<pos>`, syntactic markers removed.
    fn lemma_names(&self, pos: usize, offset: u32, out: &mut Vec<String>) {
        let data = &self.data[pos];
        let start = offset as usize;
        if start >= data.len() {
            return;
        }
        let end = data[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |e| start + e);
        let line = String::from_utf8_lossy(&data[start..end]);
        let mut it = line.split_ascii_whitespace();
        let (_off, _lex, _ty) = (it.next(), it.next(), it.next());
        let Some(n) = it.next().and_then(|t| usize::from_str_radix(t, 16).ok()) else {
            return;
        };
        for _ in 0..n {
            let Some(name) = it.next() else { return };
            let _lex_id = it.next();
            out.push(strip_marker(name).to_string());
        }
    }

    /// The names of the lemmas of `wordnet.synsets(word)` that contain no `_`, sorted.
    pub fn synonyms(&self, word: &str) -> Synonyms {
        if let Some(s) = self
            .synonyms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(word)
        {
            return s.clone();
        }
        let lemma = py_lower(word);
        let mut names = Vec::new();
        for pos in 0..4 {
            for form in self.morphy(&lemma, pos) {
                if let Some(offs) = self.index.get(&form) {
                    for &o in &offs[pos] {
                        self.lemma_names(pos, o, &mut names);
                    }
                }
            }
        }
        names.retain(|n| !n.contains('_'));
        names.sort_unstable();
        names.dedup();
        let names = Arc::new(names);
        self.synonyms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(word.to_string(), names.clone());
        names
    }
}

/// `re.match(r"(.*?)(\([^()]*\))?$", name).group(1)`.
fn strip_marker(name: &str) -> &str {
    if name.ends_with(')')
        && let Some(open) = name.rfind('(')
    {
        let inner = &name[open + 1..name.len() - 1];
        if !inner.contains(['(', ')']) {
            return &name[..open];
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_stripped() {
        assert_eq!(strip_marker("galore(ip)"), "galore");
        assert_eq!(strip_marker("dog"), "dog");
    }

    #[test]
    fn missing_wordnet_names_the_package() {
        let e = WordNet::load(Path::new("/nonexistent/wordnet"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("wordnet-base"), "{e}");
    }

    #[test]
    fn synonyms_from_debian_wordnet() {
        let dir = Path::new(DEFAULT_DIR);
        if !dir.join("index.noun").exists() {
            expflow_tests::skip::skip_or_fail(
                "WordNet is not installed (apt-get install wordnet-base)",
            );
            return;
        }
        let wn = WordNet::shared(dir).unwrap();
        assert!(wn.synonyms("dogs").contains(&"frump".to_string()));
        assert!(wn.synonyms("kitten").contains(&"kitty".to_string()));
    }
}
