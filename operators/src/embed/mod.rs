//! `embed`: vectors from the encoders of `expflow-encoders`, and BERTScore.
//!
//! - `embed.text` ([`EmbedText`]): a text column through a BERT-family encoder;
//! - `embed.image` ([`EmbedImage`]) and `embed.video` ([`EmbedVideo`]): a column of image or
//!   video paths through CLIP's image tower;
//! - `score.bertscore` ([`ScoreBertScore`]): BERTScore P/R/F per row and overall.
//!
//! The model arrives on the `model` input port; its content digest is in the node's key and
//! in every memo item, and its weight digest and the device are logged. Vectors are memoised
//! per distinct text or file, so an edit recomputes only what changed.

mod bertscore;
pub(crate) mod common;
mod image;
mod text;
mod video;

pub use bertscore::ScoreBertScore;
pub use image::EmbedImage;
pub use text::{EmbedText, POOLINGS};
pub use video::EmbedVideo;

#[cfg(test)]
mod tests;
