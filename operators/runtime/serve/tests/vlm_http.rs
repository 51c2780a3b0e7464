//! The server with a tiny random-weight Qwen2.5-VL over real HTTP: a chat completion with an
//! image content part (a local path) and one with ms-swift's top-level `images` equal the
//! model's own greedy generation; a text-only request works too.

mod common;

use std::path::PathBuf;

use expflow_models::{ChatMessage, ContentPart, GenRequest, ModelDir, Needs, Sampling};
use expflow_vlm::{TinyVlmSpec, VisionLanguageModel, write_tiny_vlm};
use serde_json::json;

use common::{corpus, post, start};

fn image() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../vlm/tests/fixtures/a.png"
    ))
}

fn direct(m: &VisionLanguageModel, messages: &[ChatMessage], max_tokens: usize) -> String {
    let req = GenRequest {
        sampling: Sampling {
            max_new_tokens: max_tokens,
            ..Sampling::default()
        },
        ..m.render_chat(messages).unwrap()
    };
    // As the server decodes by default (`skip_special_tokens`).
    let special = expflow_models::special::special_texts(m.tokenizer());
    let text = &m.generate(&[req]).unwrap()[0].completions[0].text;
    expflow_models::special::strip_special(text, &special)
}

#[test]
fn image_chat_completions_match_the_model() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_vlm(dir.path(), &TinyVlmSpec::default(), &corpus()).unwrap();
    let m = VisionLanguageModel::load(
        &ModelDir::open(dir.path(), Needs::Tokenizer).unwrap(),
        &expflow_models::default_device().unwrap(),
    )
    .unwrap();
    let server = start(dir.path(), 4, 50);
    let url = format!("{}/chat/completions", server.base_url());
    let img = image();
    let with_image = [ChatMessage {
        role: "user".into(),
        content: vec![
            ContentPart::Image { path: img.clone() },
            ContentPart::Text {
                text: "Heat the test tube.".into(),
            },
        ],
    }];
    let want = direct(&m, &with_image, 12);
    let (status, resp) = post(
        &url,
        &json!({
            "model": "tiny", "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": img.display().to_string()}},
                {"type": "text", "text": "Heat the test tube."},
            ]}],
        }),
    );
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["choices"][0]["message"]["content"], want.as_str());
    // The prompt counts the image's tokens.
    let pv = m.process_images(std::slice::from_ref(&img)).unwrap();
    let image_tokens = pv[0].num_tokens(m.config.vision.spatial_merge_size) as u64;
    assert!(
        resp["usage"]["prompt_tokens"].as_u64().unwrap() > image_tokens,
        "{resp}"
    );
    // ms-swift's form: the `<image>` tag takes the top-level image.
    let (status, swift) = post(
        &url,
        &json!({
            "model": "tiny", "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "user", "content": "<image>Heat the test tube."}],
            "images": [img.display().to_string()],
        }),
    );
    assert_eq!(status, 200, "{swift}");
    assert_eq!(swift["choices"][0]["message"]["content"], want.as_str());
    // Text only.
    let text_only = [ChatMessage::text("user", "Heat the test tube.")];
    let (status, t) = post(
        &url,
        &json!({"model": "tiny", "max_tokens": 12, "temperature": 0,
                "messages": [{"role": "user", "content": "Heat the test tube."}]}),
    );
    assert_eq!(status, 200, "{t}");
    assert_eq!(
        t["choices"][0]["message"]["content"],
        direct(&m, &text_only, 12).as_str()
    );
    // A missing image is the client's error.
    let (status, e) = post(
        &url,
        &json!({"model": "tiny", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "/no/such/cover.png"}}]}]}),
    );
    assert_eq!(status, 400, "{e}");
}
