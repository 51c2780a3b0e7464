//! The MAC-Bench data stages (`../shared/specs/macbench-llamafactory.md` §1–2), one operator
//! per module:
//!
//! - `mac.load`: LLaMA-Factory alpaca JSON / JSON Lines or MAC's CSV → an item table, with
//!   the `<image>` count and the A–D options checked per record;
//! - `mac.load_split`: one split (train, dev, test) of the task's six-file directory, test
//!   items unanswered unless a key file is beside them;
//! - `mac.permute_options`: seeded shuffles of A–D (answer remapped), optionally with new
//!   distractors drawn from the same journal;
//! - `mac.vary_templates`: re-renders items with prompt templates given in YAML;
//! - `mac.recombine`: image2text ↔ text2image items built from the same (cover, story) pairs;
//! - `mac.hard_distractors`: distractors ranked by CLIP similarity within the journal, a
//!   difficulty per item, and a curriculum;
//! - `mac.cot`: chain-of-thought rationales from a teacher model behind an OpenAI-compatible
//!   endpoint, memoised per request, kept only when their final letter is the gold one;
//! - `mac.export_llamafactory`, `mac.export_answers`: the trainer's dataset directory and the
//!   grader's `[{"id", "output"}]` file.
//!
//! Every operator exchanges the same item table ([`COLUMNS`]); [`Item`] is one row.
//! Seeded choices use BLAKE3 ranks ([`rank`]), never an RNG, so they are identical on every
//! platform. `docs/macbench.md` records the decisions.

use std::path::Path;

use expflow_engine::{Context, OpError};
use polars::prelude::*;
use serde_json::{Map, Value};

use crate::error::{OperatorError, Result};
use crate::table_io::{read_table, write_table};

pub mod cot;
pub mod export_answers;
pub mod export_llamafactory;
pub mod hard;
pub mod load;
pub mod load_split;
pub mod permute;
pub mod png;
pub mod recombine;
pub mod synth;
pub mod templates;

pub use cot::Cot;
pub use export_answers::ExportAnswers;
pub use export_llamafactory::ExportLlamaFactory;
pub use hard::HardDistractors;
pub use load::Load;
pub use load_split::LoadSplit;
pub use permute::PermuteOptions;
pub use recombine::Recombine;
pub use templates::VaryTemplates;

/// The option letters, in order.
pub const LETTERS: [char; 4] = ['A', 'B', 'C', 'D'];
/// The placeholder LLaMA-Factory expects once per image (spec §2.3).
pub const IMAGE: &str = "<image>";
/// MAC's two questions (spec §1.2).
pub const I2T_QUESTION: &str = "Which of the following options best describe the cover image?";
pub const T2I_QUESTION: &str = "Which of the following options best describe the cover story?";

/// The columns of the item table, in order.
pub const COLUMNS: [&str; 18] = [
    "id",
    "source_id",
    "pair_id",
    "variant",
    "journal",
    "task",
    "question",
    "cover_image",
    "story",
    "option_A",
    "option_B",
    "option_C",
    "option_D",
    "answer",
    "system",
    "input",
    "output",
    "images",
];

/// The two MAC tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Task {
    /// One cover image; four story texts as options.
    ImageToText,
    /// One story text; four cover images as options.
    TextToImage,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::ImageToText => "image2text",
            Task::TextToImage => "text2image",
        }
    }

    pub fn parse(s: &str) -> Option<Task> {
        match s {
            "image2text" => Some(Task::ImageToText),
            "text2image" => Some(Task::TextToImage),
            _ => None,
        }
    }

    /// How many images an item of this task carries.
    pub fn image_count(self) -> usize {
        match self {
            Task::ImageToText => 1,
            Task::TextToImage => 4,
        }
    }
}

/// One MAC item (a row of the item table).
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub id: String,
    /// The id of the loaded record this item derives from (equal to `id` for loaded ones).
    pub source_id: String,
    /// `original`, or the augmentations applied, joined by `+` (e.g. `perm1+tpl-short`).
    pub variant: String,
    pub journal: String,
    pub task: Task,
    pub question: String,
    /// image2text: the cover image path.
    pub cover_image: Option<String>,
    /// text2image: the cover story.
    pub story: Option<String>,
    /// Story texts (image2text) or image paths (text2image), A to D.
    pub options: [String; 4],
    /// Index of the gold option (0 = A); `None` for a test item given without its answer.
    pub answer: Option<usize>,
    pub system: String,
    pub input: String,
    pub output: String,
    pub images: Vec<String>,
}

impl Item {
    /// The gold letter, or the empty string for an unanswered (test) item.
    pub fn answer_letter(&self) -> String {
        self.answer
            .map(|a| LETTERS[a].to_string())
            .unwrap_or_default()
    }

    /// The gold option's index, or an error naming the item when it has none (augmenting
    /// needs the answer; test items are answered, never augmented).
    pub fn gold(&self, op: &'static str) -> Result<usize> {
        self.answer.ok_or_else(|| {
            OperatorError::data(
                op,
                format!(
                    "item `{}` has no answer (a test item); augment the training items only",
                    self.id
                ),
            )
        })
    }

    /// What the item gives: its cover image (image2text) or its story (text2image).
    pub fn given(&self) -> String {
        match self.task {
            Task::ImageToText => self.cover_image.clone().unwrap_or_default(),
            Task::TextToImage => self.story.clone().unwrap_or_default(),
        }
    }

    /// The (cover image, story) pair the item asks about; for an unanswered item only the
    /// given side is known (the other is empty).
    pub fn pair(&self) -> (String, String) {
        let gold = self
            .answer
            .map(|a| self.options[a].clone())
            .unwrap_or_default();
        match self.task {
            Task::ImageToText => (self.cover_image.clone().unwrap_or_default(), gold),
            Task::TextToImage => (gold, self.story.clone().unwrap_or_default()),
        }
    }

    /// A key of the (cover image, story) pair, equal for both tasks' items about one pair:
    /// the first 16 hex digits of BLAKE3(cover ‖ 0x00 ‖ story). Split by it to keep a pair,
    /// in both tasks and all augmentations, on one side. An unanswered item hashes its task
    /// and given side instead (0x01 ‖ task ‖ 0x00 ‖ given), its own group.
    pub fn pair_id(&self) -> String {
        let mut h = blake3::Hasher::new();
        if self.answer.is_some() {
            let (cover, story) = self.pair();
            h.update(cover.as_bytes());
            h.update(&[0]);
            h.update(story.as_bytes());
        } else {
            h.update(&[1]);
            h.update(self.task.as_str().as_bytes());
            h.update(&[0]);
            h.update(self.given().as_bytes());
        }
        h.finalize().to_hex()[..16].to_string()
    }

    /// The id and variant of an item derived from this one by augmentation `tag`.
    pub fn derive(&self, tag: &str) -> Item {
        let mut it = self.clone();
        it.id = format!("{}#{tag}", self.id);
        it.variant = if self.variant == "original" {
            tag.to_string()
        } else {
            format!("{}+{tag}", self.variant)
        };
        it
    }

    /// Checks the invariants LLaMA-Factory and the grader rely on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let placeholders = count_images(&self.input);
        if placeholders != self.images.len() {
            return Err(format!(
                "{placeholders} `<image>` placeholder(s) in the text for {} image path(s)",
                self.images.len()
            ));
        }
        if self.images.len() != self.task.image_count() {
            return Err(format!(
                "a {} item needs {} image(s), it has {}",
                self.task.as_str(),
                self.task.image_count(),
                self.images.len()
            ));
        }
        if let Some(a) = self.answer
            && a >= 4
        {
            return Err(format!("answer index {a} is not A–D"));
        }
        Ok(())
    }
}

/// `record N (id `X`)`, the way every per-record message names a record.
pub fn record_name(index: usize, id: &str) -> String {
    format!("record {index} (id `{id}`)")
}

/// The number of `<image>` placeholders in `text`.
pub fn count_images(text: &str) -> usize {
    text.matches(IMAGE).count()
}

/// A seeded rank: BLAKE3(seed as u64 LE ‖ for each part: its length as u64 LE ‖ its bytes).
/// Ranks compare as byte strings; the length prefixes keep `["ab","c"]` apart from `["a","bc"]`.
pub fn rank(seed: u64, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    *h.finalize().as_bytes()
}

/// `items` sorted by their rank under `seed` and `salt` (ties by the item itself).
pub fn ranked<T: Clone + Ord + AsRef<[u8]>>(seed: u64, salt: &[&[u8]], items: &[T]) -> Vec<T> {
    let mut keyed: Vec<([u8; 32], T)> = items
        .iter()
        .map(|t| {
            let mut parts: Vec<&[u8]> = salt.to_vec();
            parts.push(t.as_ref());
            (rank(seed, &parts), t.clone())
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, t)| t).collect()
}

/// The final answer letter in a model's or a record's output, or `None`.
///
/// In order: the whole text is one letter (optionally followed by `.` or `)`, or wrapped in
/// `(`…`)`); the last `answer` (any case) followed within a few characters of `:`, `is`,
/// spaces, `*`, `(` or quotes by a standalone letter A–D; MAC's probability JSON
/// (`{"A": p, …}`, argmax, first on ties); a standalone letter A–D alone on the last
/// non-blank line.
pub fn extract_answer(text: &str) -> Option<usize> {
    let t = text.trim();
    let bare = t
        .trim_start_matches('(')
        .trim_end_matches(['.', ')'])
        .trim();
    if let Some(i) = letter_index(bare) {
        return Some(i);
    }
    if let Some(i) = after_answer_word(t) {
        return Some(i);
    }
    if let Some(i) = probability_json(t) {
        return Some(i);
    }
    let last = t.lines().rev().find(|l| !l.trim().is_empty())?;
    let stripped = last
        .trim()
        .trim_matches(|c: char| !c.is_ascii_alphanumeric());
    letter_index(stripped)
}

fn letter_index(s: &str) -> Option<usize> {
    let mut chars = s.chars();
    let c = chars.next()?;
    if chars.next().is_some() {
        return None;
    }
    LETTERS.iter().position(|&l| l == c)
}

fn after_answer_word(t: &str) -> Option<usize> {
    let lower = t.to_ascii_lowercase();
    let bytes = t.as_bytes();
    let mut found = None;
    let mut from = 0;
    while let Some(pos) = lower[from..].find("answer") {
        let start = from + pos + "answer".len();
        from = start;
        let mut j = start;
        let mut skipped = 0;
        // Skip `:`, `is`, spaces, `*`, `(`, quotes, and the plural `s`.
        while j < bytes.len() && skipped < 12 {
            let c = bytes[j];
            if c == b':' || c == b' ' || c == b'*' || c == b'(' || c == b'"' || c == b'\'' {
                j += 1;
                skipped += 1;
            } else if lower[j..].starts_with("is ") {
                j += 3;
                skipped += 3;
            } else if c == b's' && skipped == 0 {
                j += 1;
                skipped += 1;
            } else {
                break;
            }
        }
        if j < bytes.len() {
            let c = bytes[j];
            let next_ok = bytes.get(j + 1).is_none_or(|n| !n.is_ascii_alphanumeric());
            if (b'A'..=b'D').contains(&c) && next_ok {
                found = Some((c - b'A') as usize);
            }
        }
    }
    found
}

fn probability_json(t: &str) -> Option<usize> {
    let s = t
        .trim_start_matches("```json")
        .trim_start_matches("```")
        .trim_end_matches("```")
        .trim();
    let start = s.find('{')?;
    let end = s.rfind('}')?;
    let v: Value = serde_json::from_str(s.get(start..=end)?).ok()?;
    let obj = v.as_object()?;
    if LETTERS.iter().all(|l| obj.get(&l.to_string()).is_none()) {
        return None;
    }
    let mut best: Option<(usize, f64)> = None;
    for (i, l) in LETTERS.iter().enumerate() {
        let p = obj
            .get(&l.to_string())
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        if best.is_none_or(|(_, b)| p > b) {
            best = Some((i, p));
        }
    }
    best.map(|(i, _)| i)
}

/// A prompt template (spec §1.2 and §2.2): how an item is written as `system`, `input` and
/// `output`. Placeholders: `{question}`, `{options}` (the option lines), `{story}`,
/// `{images}` (one `<image>` per image), in `option` `{letter}` and `{text}`, in `output`
/// `{answer}` (the letter).
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    pub name: String,
    pub system: String,
    pub image2text: String,
    pub text2image: String,
    pub option: String,
    pub output: String,
}

impl Default for Template {
    fn default() -> Self {
        Template {
            name: "default".into(),
            system: "Answer with one letter.".into(),
            image2text: "{images}{question}\n{options}".into(),
            text2image: "{story}\n{question}\nThe images are, in order, A, B, C and D.\n{images}"
                .into(),
            option: "{letter}: {text}".into(),
            output: "{answer}".into(),
        }
    }
}

impl Template {
    /// A template from a YAML map; missing fields take the defaults.
    pub fn from_value(op: &'static str, param: &str, v: &Value) -> Result<Template> {
        let m = v.as_object().ok_or_else(|| {
            OperatorError::param(
                op,
                param,
                format!("must be a map of template fields, got {v}"),
            )
        })?;
        let mut t = Template::default();
        for (k, val) in m {
            let s = val.as_str().ok_or_else(|| {
                OperatorError::param(op, param, format!("field `{k}` must be a string"))
            })?;
            match k.as_str() {
                "name" => t.name = s.into(),
                "system" => t.system = s.into(),
                "image2text" => t.image2text = s.into(),
                "text2image" => t.text2image = s.into(),
                "option" => t.option = s.into(),
                "output" => t.output = s.into(),
                other => {
                    return Err(OperatorError::param(
                        op,
                        param,
                        format!(
                            "has an unknown field `{other}`; use name, system, image2text, text2image, option, output"
                        ),
                    ));
                }
            }
        }
        t.check().map_err(|e| OperatorError::param(op, param, e))?;
        Ok(t)
    }

    /// An optional template parameter (`null` gives the default).
    pub fn from_param(op: &'static str, map: &Map<String, Value>, name: &str) -> Result<Template> {
        match map.get(name).filter(|v| !v.is_null()) {
            None => Ok(Template::default()),
            Some(v) => Template::from_value(op, name, v),
        }
    }

    /// Placeholders known and `<image>` counts right (1 for image2text, 4 for text2image).
    pub fn check(&self) -> std::result::Result<(), String> {
        let fields: [(&str, &str, &[&str]); 5] = [
            ("system", &self.system, &[]),
            (
                "image2text",
                &self.image2text,
                &["question", "options", "images"],
            ),
            (
                "text2image",
                &self.text2image,
                &["question", "story", "images"],
            ),
            ("option", &self.option, &["letter", "text"]),
            ("output", &self.output, &["answer"]),
        ];
        for (field, text, known) in fields {
            fill(text, &|name| known.contains(&name).then(String::new)).map_err(|p| {
                format!(
                    "template `{}`: field `{field}` has an unknown placeholder `{{{p}}}`",
                    self.name
                )
            })?;
        }
        for (field, text, task) in [
            ("image2text", &self.image2text, Task::ImageToText),
            ("text2image", &self.text2image, Task::TextToImage),
        ] {
            let expanded = if text.contains("{images}") {
                task.image_count()
            } else {
                0
            };
            let n = count_images(text) + expanded;
            if n != task.image_count() {
                return Err(format!(
                    "template `{}`: field `{field}` gives {n} `<image>` placeholder(s), {} needed (write `{{images}}`)",
                    self.name,
                    task.image_count()
                ));
            }
        }
        Ok(())
    }

    /// Writes `system`, `input`, `output` and `images` of `item` from its structured fields.
    pub fn render(&self, item: &mut Item) {
        let images = IMAGE.repeat(item.task.image_count());
        let options: Vec<String> = LETTERS
            .iter()
            .zip(&item.options)
            .map(|(l, text)| {
                fill_known(&self.option, &|n| match n {
                    "letter" => Some(l.to_string()),
                    "text" => Some(text.clone()),
                    _ => None,
                })
            })
            .collect();
        let options = options.join("\n");
        let story = item.story.clone().unwrap_or_default();
        let question = item.question.clone();
        let lookup = |n: &str| match n {
            "question" => Some(question.clone()),
            "options" => Some(options.clone()),
            "story" => Some(story.clone()),
            "images" => Some(images.clone()),
            _ => None,
        };
        let (user, imgs) = match item.task {
            Task::ImageToText => (
                fill_known(&self.image2text, &lookup),
                vec![item.cover_image.clone().unwrap_or_default()],
            ),
            Task::TextToImage => (fill_known(&self.text2image, &lookup), item.options.to_vec()),
        };
        item.system = self.system.clone();
        item.input = user;
        item.images = imgs;
        // An unanswered (test) item has no output to write.
        item.output = match item.answer {
            Some(_) => {
                let letter = item.answer_letter();
                fill_known(&self.output, &|n| (n == "answer").then(|| letter.clone()))
            }
            None => String::new(),
        };
    }
}

/// Replaces `{name}` placeholders; a `{word}` that `lookup` does not know is an error
/// naming it. Braces not around a plain word stay as they are.
pub fn fill(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.find('}') {
            Some(j)
                if j > 0
                    && after[..j]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                let name = &after[..j];
                out.push_str(&lookup(name).ok_or_else(|| name.to_string())?);
                rest = &after[j + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// [`fill`] for a template already checked: unknown placeholders stay as written.
fn fill_known(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    fill(text, &|n| lookup(n).or_else(|| Some(format!("{{{n}}}")))).unwrap_or_default()
}

// ---- the item table ----

/// The item table of `items`.
pub fn items_to_df(op: &'static str, items: &[Item]) -> Result<DataFrame> {
    let s = |f: &dyn Fn(&Item) -> String| -> Vec<String> { items.iter().map(f).collect() };
    let o = |f: &dyn Fn(&Item) -> Option<String>| -> Vec<Option<String>> {
        items.iter().map(f).collect()
    };
    let mut images = ListStringChunkedBuilder::new("images".into(), items.len(), items.len() * 4);
    for it in items {
        images.append_values_iter(it.images.iter().map(String::as_str));
    }
    let columns = vec![
        Column::new("id".into(), s(&|i| i.id.clone())),
        Column::new("source_id".into(), s(&|i| i.source_id.clone())),
        Column::new("pair_id".into(), s(&|i| i.pair_id())),
        Column::new("variant".into(), s(&|i| i.variant.clone())),
        Column::new("journal".into(), s(&|i| i.journal.clone())),
        Column::new("task".into(), s(&|i| i.task.as_str().to_string())),
        Column::new("question".into(), s(&|i| i.question.clone())),
        Column::new("cover_image".into(), o(&|i| i.cover_image.clone())),
        Column::new("story".into(), o(&|i| i.story.clone())),
        Column::new("option_A".into(), s(&|i| i.options[0].clone())),
        Column::new("option_B".into(), s(&|i| i.options[1].clone())),
        Column::new("option_C".into(), s(&|i| i.options[2].clone())),
        Column::new("option_D".into(), s(&|i| i.options[3].clone())),
        Column::new(
            "answer".into(),
            o(&|i| i.answer.map(|a| LETTERS[a].to_string())),
        ),
        Column::new("system".into(), s(&|i| i.system.clone())),
        Column::new("input".into(), s(&|i| i.input.clone())),
        Column::new("output".into(), s(&|i| i.output.clone())),
        images.finish().into_series().into_column(),
    ];
    DataFrame::new(items.len(), columns)
        .map_err(|e| OperatorError::polars(op, "building the item table", e))
}

fn str_column(op: &'static str, df: &DataFrame, name: &str) -> Result<Vec<Option<String>>> {
    let col = df.column(name).map_err(|_| {
        OperatorError::data(
            op,
            format!(
                "the input table has no `{name}` column; is it an item table from `mac.load`? (columns: {})",
                df.get_column_names()
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let col = col
        .cast(&DataType::String)
        .map_err(|e| OperatorError::polars(op, format!("reading column `{name}` as text"), e))?;
    let ca = col
        .str()
        .map_err(|e| OperatorError::polars(op, format!("reading column `{name}`"), e))?;
    Ok(ca.iter().map(|v| v.map(str::to_owned)).collect())
}

/// The items of an item table. `source_id` and `variant` may be missing (then `id` and
/// `original`); `pair_id` is ignored (it is recomputed on write); every other column of
/// [`COLUMNS`] is required.
pub fn df_to_items(op: &'static str, df: &DataFrame) -> Result<Vec<Item>> {
    let n = df.height();
    let get = |name: &str| str_column(op, df, name);
    let id = get("id")?;
    let has = |name: &str| df.column(name).is_ok();
    let source_id = if has("source_id") {
        get("source_id")?
    } else {
        id.clone()
    };
    let variant = if has("variant") {
        get("variant")?
    } else {
        vec![Some("original".into()); n]
    };
    let journal = get("journal")?;
    let task = get("task")?;
    let question = get("question")?;
    let cover = get("cover_image")?;
    let story = get("story")?;
    let opts = [
        get("option_A")?,
        get("option_B")?,
        get("option_C")?,
        get("option_D")?,
    ];
    let answer = get("answer")?;
    let system = get("system")?;
    let input = get("input")?;
    let output = get("output")?;
    let images_col = df.column("images").map_err(|_| {
        OperatorError::data(
            op,
            "the input table has no `images` column; is it an item table from `mac.load`?",
        )
    })?;
    let images_ca = images_col
        .list()
        .map_err(|e| OperatorError::polars(op, "reading column `images` (a list of paths)", e))?;
    let mut items = Vec::with_capacity(n);
    for i in 0..n {
        let mut images = Vec::new();
        if let Some(s) = images_ca.get_as_series(i) {
            let ca = s
                .str()
                .map_err(|e| OperatorError::polars(op, "reading column `images`", e))?;
            images.extend(ca.iter().map(|p| p.unwrap_or_default().to_string()));
        }
        let idv = id[i].clone().unwrap_or_default();
        let bad =
            |what: String| OperatorError::data(op, format!("{}: {what}", record_name(i, &idv)));
        let t = task[i].as_deref().unwrap_or_default();
        let task = Task::parse(t)
            .ok_or_else(|| bad(format!("task `{t}` is neither image2text nor text2image")))?;
        let answer =
            match answer[i].as_deref().map(str::trim) {
                None | Some("") => None,
                Some(a) => Some(letter_index(a).ok_or_else(|| {
                    bad(format!("answer `{a}` is not A–D (or empty: unanswered)"))
                })?),
            };
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        items.push(Item {
            id: idv.clone(),
            source_id: source_id[i].clone().unwrap_or_else(|| idv.clone()),
            variant: variant[i].clone().unwrap_or_else(|| "original".into()),
            journal: text(&journal[i]),
            task,
            question: text(&question[i]),
            cover_image: cover[i].clone(),
            story: story[i].clone(),
            options: [
                text(&opts[0][i]),
                text(&opts[1][i]),
                text(&opts[2][i]),
                text(&opts[3][i]),
            ],
            answer,
            system: text(&system[i]),
            input: text(&input[i]),
            output: text(&output[i]),
            images,
        });
    }
    Ok(items)
}

/// Reads the item table on input `port`.
pub fn read_items(ctx: &Context, op: &'static str, port: &str) -> Result<Vec<Item>, OpError> {
    let df = read_table(&ctx.input(port)?.path)?;
    Ok(df_to_items(op, &df)?)
}

/// Reads the item table on input `port`, every item with its answer (augmenting needs it).
pub fn read_labelled(ctx: &Context, op: &'static str, port: &str) -> Result<Vec<Item>, OpError> {
    let items = read_items(ctx, op, port)?;
    for it in &items {
        it.gold(op)?;
    }
    Ok(items)
}

/// Writes `items` as an item table to output `port`.
pub fn write_items(
    ctx: &Context,
    op: &'static str,
    port: &str,
    items: &[Item],
) -> Result<(), OpError> {
    let mut df = items_to_df(op, items)?;
    ctx.log(&format!("{port}: {} items", items.len()));
    write_table(&mut df, &ctx.output(port)?.path)?;
    Ok(())
}

/// Writes `bytes` to `path`, naming the path on failure.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| OperatorError::io("cannot create directory", parent, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| OperatorError::io("cannot write", path, e))
}

/// Pretty JSON (two-space indent, UTF-8 as is) with a final newline.
pub fn pretty(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).unwrap_or_default();
    s.push(b'\n');
    s
}

/// The journal of an image path laid out as `…/<journal>/<issue>.png` (MAC's `Cover/`
/// layout), or `unknown`.
pub fn journal_of(path: &str) -> String {
    Path::new(path)
        .parent()
        .and_then(Path::file_name)
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Whether `s` looks like an image path (by extension).
pub fn is_image_path(s: &str) -> bool {
    let lower = s.trim().to_ascii_lowercase();
    [".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"]
        .iter()
        .any(|e| lower.ends_with(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_extracted_in_the_documented_order() {
        assert_eq!(extract_answer("C"), Some(2));
        assert_eq!(extract_answer(" (B). "), Some(1));
        assert_eq!(
            extract_answer("A cell divides.\nSo the answer is D."),
            Some(3)
        );
        assert_eq!(extract_answer("Final answer: **B**"), Some(1));
        assert_eq!(
            extract_answer("```json\n{\"A\": 0.1, \"B\": 0.2, \"C\": 0.6, \"D\": 0.1}\n```"),
            Some(2)
        );
        assert_eq!(extract_answer("reasoning...\nA"), Some(0));
        assert_eq!(extract_answer("A cell divides."), None);
        assert_eq!(extract_answer("Answer: Dna"), None);
        assert_eq!(extract_answer(""), None);
    }

    #[test]
    fn templates_check_placeholders_and_image_counts() {
        assert_eq!(Template::default().check(), Ok(()));
        let bad = Template {
            image2text: "{question}\n{options}".into(),
            ..Template::default()
        };
        assert!(bad.check().unwrap_err().contains("0 `<image>`"));
        let bad = Template {
            output: "{answr}".into(),
            ..Template::default()
        };
        assert!(bad.check().unwrap_err().contains("`{answr}`"));
        assert_eq!(
            fill("a {x} {not a placeholder}", &|_| Some("1".into())),
            Ok("a 1 {not a placeholder}".into())
        );
    }

    #[test]
    fn ranks_are_length_prefixed() {
        assert_ne!(rank(1, &[b"ab", b"c"]), rank(1, &[b"a", b"bc"]));
        assert_ne!(rank(1, &[b"x"]), rank(2, &[b"x"]));
    }
}
