//! `mac.vary_templates`: prompt-template variation. Each item is re-rendered with
//! `per_item` of the `templates` given in YAML (0: all of them), chosen per item by
//! rank(seed, id, template name); the copies get id `<id>#tpl-<name>` and variant
//! `tpl-<name>` (appended to an earlier variant with `+`), in the order the templates are
//! listed.
//!
//! A template is a map with `name` (required, unique) and any of `system`, `image2text`,
//! `text2image`, `option`, `output`; missing fields take the defaults of
//! [`super::Template`]. Placeholders: `{question}`, `{options}`, `{story}`, `{images}` (one
//! `<image>` per image), `{letter}`/`{text}` in `option`, `{answer}` in `output`. Each is
//! checked when the pipeline is compiled: unknown placeholders and `<image>` counts other
//! than 1 (image2text) and 4 (text2image) are errors.
//!
//! ```yaml
//! templates:
//!   - name: terse
//!     system: "Reply with A, B, C or D."
//!     image2text: "{images}{question}\n{options}"
//!   - name: story_first
//!     text2image: "Story: {story}\n{images}\n{question}"
//!     option: "({letter}) {text}"
//! ```

use std::collections::BTreeSet;

use expflow_engine::{
    Context, Determinism, OpError, Operator, ParamKind, ParamSpec, Port, PortType, Ports,
    Resources, Signature,
};
use serde_json::{Map, Value, json};

use super::{Item, Template, rank, read_items, write_items};
use crate::error::{OperatorError, Result};
use crate::params::{Params, problems};

pub struct VaryTemplates;

const KIND: &str = "mac.vary_templates";

pub struct Config {
    pub templates: Vec<Template>,
    pub per_item: usize,
    pub seed: u64,
    pub keep_original: bool,
}

impl Config {
    pub fn parse(map: &Map<String, Value>) -> Result<Config> {
        let p = Params::new(KIND, map);
        let list = match p.get("templates") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(v) => {
                return Err(OperatorError::param(
                    KIND,
                    "templates",
                    format!("must be a non-empty list of template maps, got {v}"),
                ));
            }
            None => return Err(p.missing("templates")),
        };
        let mut templates = Vec::new();
        let mut names = BTreeSet::new();
        for v in list {
            if v.get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(OperatorError::param(
                    KIND,
                    "templates",
                    "has a template without a `name`",
                ));
            }
            let t = Template::from_value(KIND, "templates", v)?;
            if !names.insert(t.name.clone()) {
                return Err(OperatorError::param(
                    KIND,
                    "templates",
                    format!("names `{}` twice", t.name),
                ));
            }
            templates.push(t);
        }
        Ok(Config {
            templates,
            per_item: p.u64("per_item")? as usize,
            seed: p.u64("seed")?,
            keep_original: p.bool("keep_original")?,
        })
    }
}

/// The re-rendered copies of `items` (without the originals).
pub fn vary(items: &[Item], cfg: &Config) -> Vec<Item> {
    let n = if cfg.per_item == 0 {
        cfg.templates.len()
    } else {
        cfg.per_item.min(cfg.templates.len())
    };
    let mut out = Vec::new();
    for it in items {
        let mut order: Vec<([u8; 32], usize)> = cfg
            .templates
            .iter()
            .enumerate()
            .map(|(i, t)| (rank(cfg.seed, &[it.id.as_bytes(), t.name.as_bytes()]), i))
            .collect();
        order.sort();
        let mut chosen: Vec<usize> = order.into_iter().take(n).map(|(_, i)| i).collect();
        chosen.sort_unstable();
        for i in chosen {
            let t = &cfg.templates[i];
            let mut c = it.derive(&format!("tpl-{}", t.name));
            t.render(&mut c);
            out.push(c);
        }
    }
    out
}

impl Operator for VaryTemplates {
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
                "the originals (with keep_original) and the re-rendered copies",
            )]),
            params: vec![
                ParamSpec::required(
                    "templates",
                    ParamKind::List,
                    "template maps: name, system, image2text, text2image, option, output",
                ),
                ParamSpec::with_default(
                    "per_item",
                    ParamKind::Int,
                    json!(1),
                    "templates per item, chosen by seed; 0: all",
                ),
                ParamSpec::with_default("seed", ParamKind::Int, json!(0), "selects the templates"),
                ParamSpec::with_default(
                    "keep_original",
                    ParamKind::Bool,
                    json!(true),
                    "also output the input items, first",
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
        let items = read_items(ctx, KIND, "table")?;
        let copies = vary(&items, &cfg);
        let mut out = if cfg.keep_original { items } else { Vec::new() };
        out.extend(copies);
        write_items(ctx, KIND, "table", &out)
    }
}
