//! `score`: the operators that apply the metrics of `expflow-metrics` (re-exported here).
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
//! Operators: `score.text` ([`ScoreText`]) and `score.accuracy` ([`ScoreAccuracy`]);
//! [`evaluate_text`] and [`evaluate_accuracy`] are what they compute, without files (the
//! `expflow score` command uses them).

pub use expflow_metrics::{
    accuracy, bleu, cider, corpus, meteor, porter, rouge, sections, tokenize, wordnet,
};

mod accuracy_op;
mod text_op;

pub use accuracy_op::{AccuracyResult, ScoreAccuracy, evaluate as evaluate_accuracy};
pub use text_op::{
    BertRows, CSV_HEADER, ScoreText, TextResult, evaluate as evaluate_text, evaluate_with_bertscore,
};
