//! expflow's encoders on candle: BERT-family text encoders, CLIP image and text towers, video
//! embeddings from frames sampled with ffmpeg, and BERTScore.
//!
//! Dependencies: candle and `expflow-models` (model directories, devices). It knows nothing of
//! pipelines: the engine and cache must not be needed here. `expflow-vlm`, `expflow-serve` and
//! `expflow-operators` depend on it.
//!
//! - [`text`]: [`TextEncoder`] (BERT, RoBERTa, DeBERTa v1/v2/v3), mean / CLS / last-token /
//!   max pooling, optional L2;
//! - [`bert_cpu`]: BERT on the runtime's fused CPU kernels (what [`TextEncoder`] runs on the CPU);
//! - [`deberta`]: DeBERTa v1 (`microsoft/deberta-large-mnli`), which candle-transformers lacks;
//! - [`defaults`]: the pooling and normalisation a sentence-transformers directory asks for;
//! - [`clip`]: [`ClipModel`], both towers with their projections;
//! - [`preprocess`]: CLIP image preprocessing matching transformers' PIL backend;
//! - [`video`]: frames sampled with ffmpeg, embedded with the CLIP image tower, pooled;
//! - [`bertscore`]: [`BertScorer`], BERTScore P/R/F1 with idf and baseline rescaling;
//! - [`pooling`]: the pooling and normalisation functions themselves.

pub mod bert_cpu;
pub mod bertscore;
pub mod clip;
pub mod deberta;
pub mod defaults;
pub mod error;
pub mod pooling;
pub mod preprocess;
pub mod text;
pub mod video;

pub use bertscore::{Baseline, BertScorer, BertScores, IdfWeights};
pub use clip::{ClipModel, ClipSettings, TextPoolRule};
pub use defaults::EncoderDefaults;
pub use error::{EncoderError, Result};
pub use expflow_models::Pooling;
pub use preprocess::ImagePreprocess;
pub use text::{Architecture, TextEncoder, TokenStates};
pub use video::{FrameSampling, VideoOptions};
