//! Evaluation metrics that agree with the field's reference implementations, without files
//! or tables (the `score.*` operators and `expflow score` apply them):
//!
//! Dependencies: none from expflow (plain Rust, rayon, and WordNet's files at run time).
//! `expflow-operators` and the cli depend on it; it must not depend on tables, models or the
//! engine.
//!
//! - [`bleu`]: sacrebleu 2.x BLEU (corpus and sentence; `13a`, `intl`, `zh`, `char`);
//! - [`rouge`]: Google rouge-score's ROUGE-L, with NLTK's Porter stemmer ([`porter`]);
//! - [`meteor`]: NLTK's `meteor_score`, with WordNet 3.0 from Debian's `wordnet-base`
//!   ([`wordnet`]);
//! - [`cider`]: pycocoevalcap's CIDEr-D;
//! - [`accuracy`]: MAC-Bench answer extraction and accuracy;
//! - [`sections`]: ExpStar's `<Narration>`/`<Principle>`/`<Safety>` sections;
//! - [`corpus`]: all text metrics over a corpus, per row and overall.
//!
//! It is its own crate so that scoring builds (and benchmarks in release) without the table
//! and model stacks.

pub mod accuracy;
pub mod bleu;
pub mod cider;
pub mod corpus;
pub mod error;
pub mod meteor;
pub mod porter;
pub mod rouge;
pub mod sections;
pub mod tokenize;
pub mod wordnet;

pub use error::MetricsError;
