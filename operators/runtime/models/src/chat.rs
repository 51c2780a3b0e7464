//! Rendering chat messages to a prompt with a model directory's Jinja chat template, the way
//! transformers' `apply_chat_template` does (trim_blocks, lstrip_blocks, Python string
//! methods through minijinja-contrib's pycompat, `raise_exception`, a Python-style `tojson`,
//! `bos_token`/`eos_token` from `tokenizer_config.json`).
//!
//! A message whose content is a single text part is passed to the template as a string (what
//! text-only templates expect); any other content as the list of typed parts HF templates
//! expect: `{"type": "text", "text": ...}`, `{"type": "image", "image": path}`,
//! `{"type": "video", "video": path}`.
//!
//! Without a template, messages are rendered as Qwen's ChatML ([`chatml`]).

use std::path::{Path, PathBuf};

use minijinja::{Environment, Error, ErrorKind, Value, syntax::SyntaxConfig, value::Kwargs};
use serde_json::json;

use crate::api::{ChatMessage, ContentPart};
use crate::dir::ModelDir;
use crate::error::{ModelError, Result};

/// Qwen-VL's placeholder for one image.
pub const IMAGE_PLACEHOLDER: &str = "<|vision_start|><|image_pad|><|vision_end|>";
/// Qwen-VL's placeholder for one video.
pub const VIDEO_PLACEHOLDER: &str = "<|vision_start|><|video_pad|><|vision_end|>";

/// A Jinja ChatML template that renders exactly as [`chatml`] (no default system prompt,
/// unlike Qwen2.5's own template). Written into directories made by [`crate::tiny`].
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' }}\
{% if message['content'] is string %}{{ message['content'] }}\
{% else %}{% for part in message['content'] %}\
{% if part['type'] == 'text' %}{{ part['text'] }}\
{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>\
{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>\
{% endif %}{% endfor %}{% endif %}\
{{ '<|im_end|>\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Qwen's ChatML: `<|im_start|>role\ncontent<|im_end|>\n` per message, images and videos as
/// Qwen-VL placeholders, then `<|im_start|>assistant\n` when `add_generation_prompt`.
pub fn chatml(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut s = String::new();
    for m in messages {
        s.push_str("<|im_start|>");
        s.push_str(&m.role);
        s.push('\n');
        for p in &m.content {
            match p {
                ContentPart::Text { text } => s.push_str(text),
                ContentPart::Image { .. } => s.push_str(IMAGE_PLACEHOLDER),
                ContentPart::Video { .. } => s.push_str(VIDEO_PLACEHOLDER),
            }
        }
        s.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        s.push_str("<|im_start|>assistant\n");
    }
    s
}

/// A model's chat template, compiled once.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Option<Environment<'static>>,
    bos_token: String,
    eos_token: String,
    dir: PathBuf,
}

impl ChatTemplate {
    /// The template of `dir` (or the ChatML fallback when it has none), with `bos_token` and
    /// `eos_token` from its `tokenizer_config.json`.
    pub fn from_dir(dir: &ModelDir) -> Result<ChatTemplate> {
        let token = |key: &str| -> String {
            let v = dir.tokenizer_config.as_ref().and_then(|c| c.get(key));
            match v {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .unwrap_or("")
                    .to_string(),
                None => String::new(),
            }
        };
        ChatTemplate::new(
            dir.chat_template.as_deref(),
            &token("bos_token"),
            &token("eos_token"),
            &dir.root,
        )
    }

    /// Compiles `template` (None: ChatML fallback); `dir` only names the source in errors.
    pub fn new(
        template: Option<&str>,
        bos_token: &str,
        eos_token: &str,
        dir: &Path,
    ) -> Result<ChatTemplate> {
        let env = match template {
            None => None,
            Some(t) => {
                let mut env = Environment::new();
                let syntax = SyntaxConfig::builder()
                    .trim_blocks(true)
                    .lstrip_blocks(true)
                    .build()
                    .map_err(|e| template_error(dir, e))?;
                env.set_syntax(syntax);
                env.set_unknown_method_callback(
                    minijinja_contrib::pycompat::unknown_method_callback,
                );
                env.add_function("raise_exception", raise_exception);
                env.add_filter("tojson", tojson);
                env.add_template_owned("chat_template", t.to_string())
                    .map_err(|e| template_error(dir, e))?;
                Some(env)
            }
        };
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            dir: dir.to_path_buf(),
        })
    }

    /// True when the directory has its own template (false: ChatML fallback).
    pub fn has_template(&self) -> bool {
        self.env.is_some()
    }

    /// The prompt for `messages`; `add_generation_prompt` appends the assistant's header.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let Some(env) = &self.env else {
            return Ok(chatml(messages, add_generation_prompt));
        };
        let msgs: Vec<serde_json::Value> = messages.iter().map(message_value).collect();
        let tmpl = env
            .get_template("chat_template")
            .map_err(|e| template_error(&self.dir, e))?;
        let ctx = json!({
            "messages": msgs,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        });
        tmpl.render(minijinja::value::Serde(&ctx))
            .map_err(|e| template_error(&self.dir, e))
    }
}

fn message_value(m: &ChatMessage) -> serde_json::Value {
    let content = match m.content.as_slice() {
        [ContentPart::Text { text }] => json!(text),
        parts => serde_json::Value::Array(
            parts
                .iter()
                .map(|p| match p {
                    ContentPart::Text { text } => json!({"type": "text", "text": text}),
                    ContentPart::Image { path } => {
                        json!({"type": "image", "image": path.to_string_lossy()})
                    }
                    ContentPart::Video { path } => {
                        json!({"type": "video", "video": path.to_string_lossy()})
                    }
                })
                .collect(),
        ),
    };
    json!({"role": m.role, "content": content})
}

fn template_error(dir: &Path, e: Error) -> ModelError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    ModelError::Template {
        dir: dir.to_path_buf(),
        message,
    }
}

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, as transformers' `tojson`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let v = serde_json::to_value(value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    python_json(&v, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn python_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                python_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(o) if !o.is_empty() => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&J::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation() -> Vec<ChatMessage> {
        vec![
            ChatMessage::text("system", "Be brief."),
            ChatMessage {
                role: "user".into(),
                content: vec![
                    ContentPart::Image {
                        path: "a.png".into(),
                    },
                    ContentPart::Text {
                        text: "What is it?".into(),
                    },
                    ContentPart::Video {
                        path: "b.mp4".into(),
                    },
                ],
            },
            ChatMessage::text("assistant", "A cat."),
        ]
    }

    #[test]
    fn chatml_fallback_layout() {
        let s = chatml(&conversation()[..1], true);
        assert_eq!(
            s,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>assistant\n"
        );
        let s = chatml(&conversation(), false);
        assert!(s.contains(&format!(
            "user\n{IMAGE_PLACEHOLDER}What is it?{VIDEO_PLACEHOLDER}<|im_end|>"
        )));
        assert!(s.ends_with("<|im_start|>assistant\nA cat.<|im_end|>\n"));
    }

    #[test]
    fn chatml_template_renders_as_the_fallback() {
        let t = ChatTemplate::new(Some(CHATML_TEMPLATE), "", "<|im_end|>", Path::new("x")).unwrap();
        assert!(t.has_template());
        for gen_prompt in [false, true] {
            assert_eq!(
                t.render(&conversation(), gen_prompt).unwrap(),
                chatml(&conversation(), gen_prompt)
            );
        }
    }

    #[test]
    fn python_methods_tokens_and_exceptions() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}\
                   {{ raise_exception('bad role ' + m.role) }}{% endif %}\
                   {{ m.content.strip().upper() }}{% endfor %}{{ eos_token }}";
        let t = ChatTemplate::new(Some(src), "<s>", "</s>", Path::new("dirname")).unwrap();
        let ok = t
            .render(&[ChatMessage::text("user", "  hi ")], false)
            .unwrap();
        assert_eq!(ok, "<s>HI</s>");
        let e = t
            .render(&[ChatMessage::text("tool", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad role tool") && e.contains("dirname"), "{e}");
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let src = "{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=2) }}";
        let t = ChatTemplate::new(Some(src), "", "", Path::new("x")).unwrap();
        let s = t
            .render(&[ChatMessage::text("user", "a<b \"é\"")], false)
            .unwrap();
        assert_eq!(
            s,
            "{\"role\": \"user\", \"content\": \"a<b \\\"é\\\"\"}|{\n  \"role\": \"user\",\n  \"content\": \"a<b \\\"é\\\"\"\n}"
        );
    }

    #[test]
    fn a_broken_template_names_the_directory() {
        let e = ChatTemplate::new(Some("{% for %}"), "", "", Path::new("/models/m")).unwrap_err();
        assert!(e.to_string().contains("/models/m"), "{e}");
    }
}
