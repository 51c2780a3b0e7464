//! expflow's generic operators, one module each, grouped by family:
//! - `io`: `load` (a file into a table) and `export` (a table into a file);
//! - `table`: `table.select`, `table.filter`, `table.join`, `table.concat`, `table.sort`,
//!   `table.dedupe`, `table.sample`, `table.split`;
//! - `command`: run a shell command over the node's input and output paths;
//! - `embed`, `infer`, `retrieval`, `score`, `expstar`, `mac`: see docs/models.md and the family pages.
//!
//! [`registry`] returns all of them. Table artifacts are read and written through
//! [`table_io`], whose pinned Parquet writer makes equal content give equal bytes.
//!
//! Dependencies: the engine (the `Operator` trait, `Context`), the cache, polars, and the
//! model runtime crates under `operators/runtime/` (models, vlm, encoders, retrieval, train,
//! metrics), which it drives. Only the cli (and `expflow-serve`'s tests) depend on it; the
//! engine, the cache and the runtime crates must not. Inside the crate, families import the
//! shared modules (`error`, `params`, `table_io`, `train_io`) and a few others one way
//! (`train` uses `tools`, never the reverse); `tests/layout.rs` checks there is no circle.

use std::sync::Arc;

use expflow_engine::Registry;

pub mod command;
pub mod embed;
pub mod error;
pub mod expstar;
pub mod infer;
pub mod io;
pub mod mac;
pub mod mcq;
pub mod params;
pub mod retrieval;
pub mod score;
pub mod table;
pub mod table_io;
pub mod tools;
pub mod train;
pub mod train_io;

#[cfg(test)]
mod testing;

pub use error::OperatorError;

/// Every operator of this crate, by kind.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(io::Load));
    r.register(Arc::new(io::Export));
    r.register(Arc::new(table::Select));
    r.register(Arc::new(table::Filter));
    r.register(Arc::new(table::Join));
    r.register(Arc::new(table::Concat));
    r.register(Arc::new(table::Sort));
    r.register(Arc::new(table::Dedupe));
    r.register(Arc::new(table::Sample));
    r.register(Arc::new(table::Split));
    r.register(Arc::new(command::Command));
    r.register(Arc::new(expstar::Scan));
    r.register(Arc::new(expstar::CutClips));
    r.register(Arc::new(expstar::StepMeta));
    r.register(Arc::new(expstar::BaselineRows));
    r.register(Arc::new(expstar::TemplateRows));
    r.register(Arc::new(expstar::Split));
    r.register(Arc::new(expstar::ApplySplit));
    r.register(Arc::new(expstar::Merge));
    r.register(Arc::new(expstar::FromJsonl));
    r.register(Arc::new(expstar::ToJsonl));
    r.register(Arc::new(expstar::AddRag));
    r.register(Arc::new(expstar::DpoPairs));
    r.register(Arc::new(expstar::Postprocess));
    r.register(Arc::new(expstar::EvalRows));
    r.register(Arc::new(expstar::ExportSwift));
    r.register(Arc::new(expstar::ExportLlamaFactory));
    r.register(Arc::new(expstar::Corpus));
    r.register(Arc::new(expstar::Knowledge));
    r.register(Arc::new(expstar::Queries));
    r.register(Arc::new(expstar::Results));
    r.register(Arc::new(infer::Reward));
    r.register(Arc::new(infer::Relevance));
    r.register(Arc::new(score::ScoreText));
    r.register(Arc::new(score::ScoreAccuracy));
    r.register(Arc::new(embed::EmbedText));
    r.register(Arc::new(embed::EmbedImage));
    r.register(Arc::new(embed::EmbedVideo));
    r.register(Arc::new(embed::ScoreBertScore));
    r.register(Arc::new(mac::HardDistractors));
    r.register(Arc::new(mac::Load));
    r.register(Arc::new(mac::LoadSplit));
    r.register(Arc::new(mac::PermuteOptions));
    r.register(Arc::new(mac::VaryTemplates));
    r.register(Arc::new(mac::Recombine));
    r.register(Arc::new(mac::ExportLlamaFactory));
    r.register(Arc::new(mac::ExportAnswers));
    r.register(Arc::new(mac::Cot));
    r.register(Arc::new(mcq::Answer));
    r.register(Arc::new(mcq::Summary));
    r.register(Arc::new(infer::Chat));
    r.register(Arc::new(infer::RagInfer));
    r.register(Arc::new(train::TinyModel));
    r.register(Arc::new(train::Sft));
    r.register(Arc::new(train::ReferenceLogprobs));
    r.register(Arc::new(train::Dpo));
    r.register(Arc::new(tools::VllmInfer));
    r.register(Arc::new(retrieval::Bm25IndexOp));
    r.register(Arc::new(retrieval::VectorIndexOp));
    r.register(Arc::new(retrieval::Fuse));
    r.register(Arc::new(retrieval::Search));
    r.register(Arc::new(retrieval::ExpstarResults));
    r.register(Arc::new(infer::ServeModel));
    r
}

#[cfg(test)]
mod tests {
    use expflow_engine::params::fill_defaults;
    use expflow_engine::{Determinism, ParamKind};
    use serde_json::{Map, Value, json};

    use super::*;

    const KINDS: &[&str] = &[
        "command",
        "embed.image",
        "embed.text",
        "embed.video",
        "export",
        "expstar.add_rag",
        "expstar.apply_split",
        "expstar.baseline_rows",
        "expstar.corpus",
        "expstar.cut_clips",
        "expstar.dpo_pairs",
        "expstar.eval_rows",
        "expstar.export_llamafactory",
        "expstar.export_swift",
        "expstar.from_jsonl",
        "expstar.knowledge",
        "expstar.merge",
        "expstar.postprocess",
        "expstar.queries",
        "expstar.rag_infer",
        "expstar.relevance",
        "expstar.results",
        "expstar.reward",
        "expstar.scan",
        "expstar.split",
        "expstar.step_meta",
        "expstar.template_rows",
        "expstar.to_jsonl",
        "infer.chat",
        "infer.vllm_infer",
        "load",
        "mac.cot",
        "mac.export_answers",
        "mac.export_llamafactory",
        "mac.hard_distractors",
        "mac.load",
        "mac.load_split",
        "mac.permute_options",
        "mac.recombine",
        "mac.vary_templates",
        "mcq.answer",
        "mcq.summary",
        "retrieve.bm25_index",
        "retrieve.expstar_results",
        "retrieve.fuse",
        "retrieve.search",
        "retrieve.vector_index",
        "score.accuracy",
        "score.bertscore",
        "score.text",
        "serve.model",
        "table.concat",
        "table.dedupe",
        "table.filter",
        "table.join",
        "table.sample",
        "table.select",
        "table.sort",
        "table.split",
        "train.dpo",
        "train.reference_logprobs",
        "train.sft",
        "train.tiny_model",
    ];

    /// A valid value for each required parameter, by operator and name.
    fn required_value(kind: &str, name: &str) -> Value {
        match (kind, name) {
            ("export", "format") => json!("jsonl"),
            ("table.filter", "where") => json!("x > 1"),
            ("command", "run") => json!("cat ${in.a} > ${out.b}"),
            ("mac.cot", "base_url") => json!("http://127.0.0.1:8000/v1"),
            ("mac.cot", "model") => json!("teacher"),
            ("mac.load_split", "split") => json!("train"),
            ("infer.chat" | "expstar.rag_infer" | "mcq.answer", "backend") => json!("native"),
            ("mac.vary_templates", "templates") => json!([{"name": "t"}]),
            ("infer.vllm_infer", "script") => json!("/opt/LLaMA-Factory/scripts/vllm_infer.py"),
            ("infer.vllm_infer", "dataset_name") => json!("mac_test"),
            ("embed.text" | "embed.image" | "embed.video", "column") => json!("text"),
            (_, "columns" | "by") => json!(["x"]),
            (_, "group") => json!("x"),
            (k, n) => panic!("no test value for required parameter `{n}` of {k}"),
        }
    }

    #[test]
    fn registry_has_every_kind() {
        let r = registry();
        assert_eq!(r.kinds().collect::<Vec<_>>(), KINDS);
        for &kind in KINDS {
            assert_eq!(r.get(kind).unwrap().kind(), kind);
        }
    }

    /// The defaults of `kind`'s parameters, with a test value for each required one.
    fn filled(kind: &str) -> Map<String, Value> {
        let sig = registry().get(kind).unwrap().signature();
        let mut given = Map::new();
        for spec in &sig.params {
            if spec.default.is_none() && !spec.optional {
                given.insert(spec.name.to_string(), required_value(kind, spec.name));
            }
        }
        let (filled, problems) = fill_defaults(&sig, &given);
        assert!(problems.is_empty(), "{kind}: {problems:?}");
        filled
    }

    #[test]
    fn defaults_pass_the_schema_and_the_checks() {
        let r = registry();
        for kind in r.kinds() {
            let op = r.get(kind).unwrap();
            let sig = op.signature();
            for spec in &sig.params {
                if let Some(d) = &spec.default {
                    assert!(
                        d.is_null() || spec.kind.accepts(d),
                        "{kind}: default of `{}` is not a {}",
                        spec.name,
                        spec.kind.as_str()
                    );
                }
            }
            // Two operators need one of a pair of optional parameters.
            let mut filled = filled(kind);
            match kind {
                "table.sample" => filled.insert("n".into(), json!(3)),
                "table.join" => filled.insert("on".into(), json!(["x"])),
                _ => None,
            };
            assert_eq!(op.check(&filled), Vec::<String>::new(), "{kind}");
        }
    }

    #[test]
    fn seeded_operators_take_a_seed() {
        let r = registry();
        for kind in r.kinds() {
            let op = r.get(kind).unwrap();
            let sig = op.signature();
            let has_seed = sig.param("seed").is_some_and(|p| p.kind == ParamKind::Int);
            assert_eq!(
                op.determinism(&filled(kind)) == Determinism::Seeded,
                has_seed,
                "{kind}: seeded operators (with default parameters), and only they, have an integer `seed`"
            );
        }
    }
}
