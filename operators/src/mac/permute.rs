//! `mac.permute_options`: seeded shuffles of the options A–D, the answer remapped.
//!
//! For each item and each copy `k` (1..=`copies`):
//!
//! 1. With `new_distractors: n > 0`, `n` of the three distractors are replaced. The slots are
//!    the distractor letters in order of rank(seed, id, k, "slot", letter); the new options are
//!    the candidates in order of rank(seed, id, k, "distractor", candidate). Candidates are the
//!    options (gold and distractors) of the items of the **same journal and task** in the
//!    input, minus the item's own four options, so a new distractor is always a story (or
//!    cover) of the same journal. When the journal has too few, fewer are replaced and the
//!    log says so.
//! 2. The four options are ordered by rank(seed, id, k, "perm", original letter); the answer
//!    follows its option.
//! 3. The item is re-rendered with `template` (its output becomes the template's answer
//!    text, as a rationale would name the old letters), id `<id>#perm<k>`, variant `perm<k>`.
//!
//! Ranks are [`super::rank`] (BLAKE3), so the result depends only on the input and the seed.
//! With `keep_original` the input items come first, then the copies, item by item.

use std::collections::{BTreeMap, BTreeSet};

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::{Item, LETTERS, Task, Template, rank, ranked, read_labelled, write_items};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct PermuteOptions;

const KIND: &str = "mac.permute_options";

pub struct Config {
    pub seed: u64,
    pub copies: u64,
    pub new_distractors: usize,
    pub keep_original: bool,
    pub template: Template,
}

impl Config {
    pub fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let n = p.u64("new_distractors")?;
        if n > 3 {
            return Err(OperatorError::param(
                KIND,
                "new_distractors",
                format!("is {n}; an item has 3 distractors"),
            ));
        }
        Ok(Config {
            seed: p.u64("seed")?,
            copies: p.u64("copies")?,
            new_distractors: n as usize,
            keep_original: p.bool("keep_original")?,
            template: Template::from_param(KIND, map, "template")?,
        })
    }
}

/// The letters (indices) ordered by rank(seed, id, k, salt, letter).
fn letter_order(seed: u64, id: &str, k: &[u8], salt: &[u8], letters: &[usize]) -> Vec<usize> {
    let mut s: Vec<([u8; 32], usize)> = letters
        .iter()
        .map(|&i| {
            let l = [LETTERS[i] as u8];
            (rank(seed, &[id.as_bytes(), k, salt, &l]), i)
        })
        .collect();
    s.sort();
    s.into_iter().map(|(_, i)| i).collect()
}

/// The permuted copies of `items` (without the originals), and how many distractor
/// replacements the journals could not supply.
pub fn permute(items: &[Item], cfg: &Config) -> (Vec<Item>, usize) {
    let mut pools: BTreeMap<(String, Task), BTreeSet<String>> = BTreeMap::new();
    for it in items {
        pools
            .entry((it.journal.clone(), it.task))
            .or_default()
            .extend(it.options.iter().cloned());
    }
    let mut out = Vec::new();
    let mut short = 0;
    for it in items {
        // Unanswered items are refused by `run` (see `Item::gold`).
        let Some(answer) = it.answer else { continue };
        for k in 1..=cfg.copies {
            let kb = k.to_le_bytes();
            let mut options = it.options.clone();
            if cfg.new_distractors > 0 {
                let own: BTreeSet<&String> = it.options.iter().collect();
                let pool: Vec<String> = pools[&(it.journal.clone(), it.task)]
                    .iter()
                    .filter(|c| !own.contains(c))
                    .cloned()
                    .collect();
                let candidates = ranked(cfg.seed, &[it.id.as_bytes(), &kb, b"distractor"], &pool);
                let distractors: Vec<usize> = (0..4).filter(|&i| i != answer).collect();
                let slots = letter_order(cfg.seed, &it.id, &kb, b"slot", &distractors);
                let mut cand = candidates.into_iter();
                for &slot in slots.iter().take(cfg.new_distractors) {
                    match cand.next() {
                        Some(c) => options[slot] = c,
                        None => short += 1,
                    }
                }
            }
            let order = letter_order(cfg.seed, &it.id, &kb, b"perm", &[0, 1, 2, 3]);
            let mut p = it.derive(&format!("perm{k}"));
            for (new, &old) in order.iter().enumerate() {
                p.options[new] = options[old].clone();
                if old == answer {
                    p.answer = Some(new);
                }
            }
            cfg.template.render(&mut p);
            out.push(p);
        }
    }
    (out, short)
}

impl Operator for PermuteOptions {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        1
    }

    fn signature(&self) -> Signature {
        Signature {
            inputs: Ports::Fixed(vec![Port::new("table", PortType::Table, "MAC items")]),
            outputs: Ports::Fixed(vec![Port::new(
                "table",
                PortType::Table,
                "the originals (with keep_original) and the permuted copies",
            )]),
            params: vec![
                ParamSpec::with_default("seed", ParamKind::Int, json!(0), "selects the shuffles"),
                ParamSpec::with_default(
                    "copies",
                    ParamKind::Int,
                    json!(1),
                    "permuted copies per item",
                ),
                ParamSpec::with_default(
                    "new_distractors",
                    ParamKind::Int,
                    json!(0),
                    "distractors (0–3) replaced by other options of the same journal",
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
                    "how copies are written (see mac.vary_templates); null: the default",
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
        let (copies, short) = permute(&items, &cfg);
        if short > 0 {
            ctx.log(&format!(
                "{short} distractor replacement(s) skipped: their journals have too few other options"
            ));
        }
        let mut out = if cfg.keep_original { items } else { Vec::new() };
        out.extend(copies);
        write_items(ctx, KIND, "table", &out)
    }
}
