//! `mac.recombine`: image2text ↔ text2image items made from the same (cover, story) pairs.
//!
//! Every item names one pair: image2text (its cover, its gold story), text2image (its gold
//! cover, its story). Within a journal the pairs of all input items give a story → cover and
//! a cover → story map. An image2text item becomes a text2image item about the same pair:
//! the story is given, the gold option is the cover, at the **same letter**, and each
//! distractor story is replaced by its own cover when the map knows it (so hard negatives
//! stay hard). Slots whose counterpart is unknown, or already used, are filled with other
//! covers of the same journal in order of rank(seed, id, "recombine", letter, candidate).
//! text2image → image2text is symmetric. An item whose journal cannot supply four distinct
//! options is skipped (logged), and so is one whose pair the input already asks about in
//! the target task.
//!
//! The new items: id `<id>#t2i` / `<id>#i2t`, variant `t2i` / `i2t`, `source_id` kept (and
//! `pair_id` equal, so a split by `pair_id` keeps both directions of a pair on one side), the
//! MAC question of the target task, rendered with `template`.

use std::collections::{BTreeMap, BTreeSet};

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::{
    I2T_QUESTION, Item, LETTERS, T2I_QUESTION, Task, Template, ranked, read_items, read_labelled,
    write_items,
};
use crate::error::Result;
use crate::params::{Params, problems};

pub struct Recombine;

const KIND: &str = "mac.recombine";

pub struct Config {
    pub seed: u64,
    pub to: &'static str,
    pub keep_original: bool,
    pub template: Template,
    pub image2text_question: String,
    pub text2image_question: String,
}

impl Config {
    pub fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        Ok(Config {
            seed: p.u64("seed")?,
            to: p.choice("to", &["both", "image2text", "text2image"])?,
            keep_original: p.bool("keep_original")?,
            template: Template::from_param(KIND, map, "template")?,
            image2text_question: p.str("image2text_question")?.to_string(),
            text2image_question: p.str("text2image_question")?.to_string(),
        })
    }
}

#[derive(Default)]
struct Journal {
    story_to_cover: BTreeMap<String, String>,
    cover_to_story: BTreeMap<String, String>,
    covers: BTreeSet<String>,
    stories: BTreeSet<String>,
    /// (task, cover, story) already asked.
    asked: BTreeSet<(Task, String, String)>,
}

/// The recombined items (without the originals) and how many items were skipped.
pub fn recombine(items: &[Item], cfg: &Config) -> (Vec<Item>, usize) {
    let mut journals: BTreeMap<String, Journal> = BTreeMap::new();
    for it in items {
        let j = journals.entry(it.journal.clone()).or_default();
        let (cover, story) = it.pair();
        j.story_to_cover
            .entry(story.clone())
            .or_insert(cover.clone());
        j.cover_to_story
            .entry(cover.clone())
            .or_insert(story.clone());
        j.asked.insert((it.task, cover.clone(), story.clone()));
        j.covers.insert(cover);
        j.stories.insert(story);
        match it.task {
            Task::ImageToText => j.stories.extend(it.options.iter().cloned()),
            Task::TextToImage => j.covers.extend(it.options.iter().cloned()),
        }
    }
    let mut out = Vec::new();
    let mut skipped = 0;
    for it in items {
        let target = match it.task {
            Task::ImageToText => Task::TextToImage,
            Task::TextToImage => Task::ImageToText,
        };
        if cfg.to != "both" && cfg.to != target.as_str() {
            continue;
        }
        // Unanswered items are refused by `run` (see `Item::gold`).
        let Some(answer) = it.answer else { continue };
        let j = &journals[&it.journal];
        let (cover, story) = it.pair();
        if j.asked.contains(&(target, cover.clone(), story.clone())) {
            skipped += 1;
            continue;
        }
        let (map, pool, gold) = match target {
            Task::TextToImage => (&j.story_to_cover, &j.covers, cover.clone()),
            Task::ImageToText => (&j.cover_to_story, &j.stories, story.clone()),
        };
        let mut options: [Option<String>; 4] = Default::default();
        let mut used: BTreeSet<String> = BTreeSet::new();
        options[answer] = Some(gold.clone());
        used.insert(gold);
        for (i, o) in it.options.iter().enumerate() {
            if i == answer {
                continue;
            }
            if let Some(c) = map.get(o)
                && !used.contains(c)
            {
                used.insert(c.clone());
                options[i] = Some(c.clone());
            }
        }
        let free: Vec<String> = pool
            .iter()
            .filter(|c| !used.contains(*c))
            .cloned()
            .collect();
        let mut ok = true;
        for (i, slot) in options.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            let l = [LETTERS[i] as u8];
            let next = ranked(cfg.seed, &[it.id.as_bytes(), b"recombine", &l], &free)
                .into_iter()
                .find(|c| !used.contains(c));
            match next {
                Some(c) => {
                    used.insert(c.clone());
                    *slot = Some(c);
                }
                None => ok = false,
            }
        }
        if !ok {
            skipped += 1;
            continue;
        }
        let tag = match target {
            Task::TextToImage => "t2i",
            Task::ImageToText => "i2t",
        };
        let mut n = it.derive(tag);
        n.task = target;
        n.options = options.map(Option::unwrap_or_default);
        match target {
            Task::TextToImage => {
                n.question = cfg.text2image_question.clone();
                n.story = Some(story);
                n.cover_image = None;
            }
            Task::ImageToText => {
                n.question = cfg.image2text_question.clone();
                n.cover_image = Some(cover);
                n.story = None;
            }
        }
        cfg.template.render(&mut n);
        out.push(n);
    }
    (out, skipped)
}

impl Operator for Recombine {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![
                Port::new("table", PortType::Table, "MAC items"),
                Port::new(
                    "exclude",
                    PortType::Table,
                    "held-out items (dev, test; answers not needed): no new item gives the cover or story one of them gives in its task",
                )
                .optional(),
            ]),
            outputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "the originals (with keep_original) and the recombined items",
            )]),
            params: vec![
                ParamSpec::with_default("seed", ParamKind::Int, json!(0), "orders fill-in options"),
                ParamSpec::with_default(
                    "to",
                    ParamKind::String,
                    json!("both"),
                    "which items to make: both, image2text or text2image",
                ),
                ParamSpec::with_default(
                    "keep_original",
                    ParamKind::Bool,
                    json!(true),
                    "also output the input items, first",
                ),
                ParamSpec::with_default(
                    "template",
                    ParamKind::Map,
                    Value::Null,
                    "how new items are written (see mac.vary_templates); null: the default",
                ),
                ParamSpec::with_default(
                    "image2text_question",
                    ParamKind::String,
                    json!(I2T_QUESTION),
                    "the question of new image2text items",
                ),
                ParamSpec::with_default(
                    "text2image_question",
                    ParamKind::String,
                    json!(T2I_QUESTION),
                    "the question of new text2image items",
                ),
            ],
            determinism: Determinism::Seeded,
            resources: Resources::default(),
        }
    }

    fn check(&self, params: &Map<String, Value>) -> Vec<String> {
        problems(Config::parse(params))
    }

    fn run(&self, ctx: &Context) -> Result<(), OpError> {
        let cfg = Config::parse(ctx.params())?;
        let items = read_labelled(ctx, KIND, "table")?;
        let (mut new, skipped) = recombine(&items, &cfg);
        if skipped > 0 {
            ctx.log(&format!(
                "{skipped} item(s) not recombined: the pair is already asked the other way, or the journal has fewer than 4 options"
            ));
        }
        if ctx.inputs().contains_key("exclude") {
            let held: BTreeSet<(Task, String)> = read_items(ctx, KIND, "exclude")?
                .iter()
                .map(|it| (it.task, it.given()))
                .collect();
            let before = new.len();
            new.retain(|n| !held.contains(&(n.task, n.given())));
            let dropped = before - new.len();
            ctx.note("held_out", dropped as u64);
            if dropped > 0 {
                ctx.log(&format!(
                    "{dropped} recombined item(s) dropped: a held-out item asks the same question (its cover or story)"
                ));
            }
        }
        let mut out = if cfg.keep_original { items } else { Vec::new() };
        out.extend(new);
        write_items(ctx, KIND, "table", &out)
    }
}
