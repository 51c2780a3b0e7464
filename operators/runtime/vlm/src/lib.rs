//! Qwen2.5-VL on candle, written for expflow (candle-transformers has no `qwen2_5_vl`).
//!
//! Dependencies: candle, `expflow-models` (the decoder, chat templates) and `expflow-encoders`
//! (video frame sampling through ffmpeg). No engine. `expflow-serve` and `expflow-operators`
//! depend on it.
//!
//! - [`config`]: the text, vision and preprocessor configs (hub 4.x and transformers 5 layouts);
//! - [`image`]: `Qwen2VLImageProcessor` semantics: smart resize, Pillow-exact bicubic,
//!   CLIP normalisation, temporal patches, patchify;
//! - [`vision`]: the vision tower (window attention, 2-D rotary embeddings, patch merger);
//! - [`rope`]: multimodal rotary positions (`get_rope_index`) and their cos/sin tables;
//! - the decoder is `expflow_models::Qwen2`, fed with embeddings and M-RoPE tables;
//! - [`model`]: [`VisionLanguageModel`]: loading, forward, chat rendering, generation.

pub mod config;
pub mod error;
pub mod image;
pub mod model;
pub mod rope;
pub mod tiny;
mod train;
pub mod video;
pub mod vision;

pub use config::{TextConfig, VisionConfig, VlmConfig};
pub use error::{Result, VlmError};
pub use image::{ImageProcessor, PixelValues, smart_resize};
pub use model::{VisionLanguageModel, is_qwen2_5_vl};
pub use tiny::{TinyVlmSpec, write_tiny_vlm};
pub use vision::VisionTower;
