//! What the server needs from a loaded model: a chat model renders and generates, an
//! encoder embeds. [`crate::native`] implements both on the native runtime.

use expflow_models::{ChatMessage, GenRequest, Generation};

/// Why a model call failed, and whose fault it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub message: String,
    /// The request asked for something the model cannot do (HTTP 400), rather than the
    /// server failing (HTTP 500).
    pub client: bool,
}

impl Failure {
    pub fn client(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            client: true,
        }
    }

    pub fn server(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            client: false,
        }
    }
}

/// A generative model.
pub trait ChatModel: Send + Sync + 'static {
    /// The prompt for `messages` with the chat template and the generation prompt.
    fn render(&self, messages: &[ChatMessage]) -> Result<String, Failure>;
    /// Completes a batch of prompts; one [`Generation`] per request, in order.
    fn generate(&self, batch: &[GenRequest]) -> Result<Vec<Generation>, Failure>;
    /// The text of the tokenizer's special tokens (`<|im_start|>`, `<|endoftext|>`), which
    /// `skip_special_tokens` leaves out of replies.
    fn special_tokens(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A text encoder.
pub trait EmbedModel: Send + Sync + 'static {
    /// One vector per text, in order.
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, Failure>;
    /// How many tokens `text` has (for `usage`).
    fn count_tokens(&self, text: &str) -> usize;
}
