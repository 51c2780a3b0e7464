//! Which model answers under a served name. A memoised answer must belong to the model that
//! gave it: a model retrained and served again under the same name must not get the old
//! model's answers back. [`model_identity`] names the model once per node run, and the
//! OpenAI-compatible callers (`infer.chat`, `expstar.rag_infer`, `mac.cot`) put it into every
//! memo item:
//!
//! 1. a connected `model` input (the served model's directory, as a pipeline artifact): its
//!    content digest;
//! 2. otherwise the server's `GET {base_url}/models` entry whose `id` is the requested model:
//!    `id`, `created`, `owned_by`, `root` and `parent` as reported. vLLM, SGLang and LMDeploy
//!    fill `created` with the time of the response, not of the model; a `created` within
//!    two seconds of the response's `Date` is therefore left out, or it would change every
//!    run;
//! 3. plus `model_revision` when given (the user's own name for the version).
//!
//! A server that cannot be asked, or does not list the model, fails the node unless
//! `model_revision` is given: then the revision alone names the model (a re-run can still
//! be answered from the memo while the server is down).

use std::time::{SystemTime, UNIX_EPOCH};

use expflow_engine::{Context, OpError};
use serde_json::{Map, Value, json};

use super::openai::Client;

/// A `created` this close to the response's time is the response's, not the model's.
const CREATED_IS_NOW_S: u64 = 2;

/// The identity of the model that answers `model` at the client's server (see the module
/// docs), for memo items.
pub fn model_identity(
    ctx: &Context,
    op: &str,
    client: &Client,
    model: &str,
) -> Result<Value, OpError> {
    let revision = client.config().model_revision.clone();
    let mut id = Map::new();
    if let Some(input) = ctx.inputs().get("model") {
        id.insert("artifact".into(), json!(input.digest.to_hex()));
    } else {
        let url = client.config().models_url.clone();
        let listed = client
            .get(ctx, "listing the served models", &url)
            .map_err(|e| e.to_string())
            .and_then(|(bytes, date)| served_entry(&bytes, model, date.as_deref(), &url));
        match (listed, &revision) {
            (Ok(entry), _) => {
                ctx.log(&format!("served model `{model}`: {entry}"));
                id.insert("served".into(), entry);
            }
            (Err(e), Some(r)) => {
                ctx.log(&format!(
                    "{e}; memoised answers are tied to model_revision `{r}` alone"
                ));
            }
            (Err(e), None) => {
                return Err(format!(
                    "{op}: cannot tell which model answers as `{model}`: {e}. Memoised answers \
                     must belong to the model that gave them: set `model_revision` (your name \
                     for this version of the model), or connect the served model's directory \
                     to the `model` input"
                )
                .into());
            }
        }
    }
    if let Some(r) = revision {
        id.insert("revision".into(), json!(r));
    }
    Ok(Value::Object(id))
}

/// The identifying fields of `model`'s entry in a `/v1/models` response.
fn served_entry(bytes: &[u8], model: &str, date: Option<&str>, url: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("{url} did not answer with JSON: {e}"))?;
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{url} did not answer with a model list (`{{\"data\": [...]}}`)"))?;
    let Some(entry) = data
        .iter()
        .find(|e| e.get("id").and_then(Value::as_str) == Some(model))
    else {
        let ids: Vec<&str> = data
            .iter()
            .filter_map(|e| e.get("id").and_then(Value::as_str))
            .collect();
        return Err(format!(
            "{url} does not list `{model}` (it lists: {})",
            if ids.is_empty() {
                "nothing".to_string()
            } else {
                ids.join(", ")
            }
        ));
    };
    let mut out = Map::new();
    for field in ["id", "created", "owned_by", "root", "parent"] {
        if let Some(x) = entry.get(field).filter(|x| !x.is_null()) {
            out.insert(field.into(), x.clone());
        }
    }
    if let Some(created) = out.get("created").and_then(Value::as_u64) {
        let now = date
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .unwrap_or_else(SystemTime::now)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if created.abs_diff(now) <= CREATED_IS_NOW_S {
            out.remove("created");
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:8000/v1/models";

    #[test]
    fn the_entry_of_the_model_is_kept_field_by_field() {
        let body = json!({"object": "list", "data": [
            {"id": "other", "created": 5},
            {"id": "m", "object": "model", "created": 1_700_000_000u64, "owned_by": "expflow",
             "root": "blake3:ab12", "parent": null, "max_model_len": 4096},
        ]});
        let e = served_entry(
            body.to_string().as_bytes(),
            "m",
            Some("Sun, 06 Nov 2033 08:49:37 GMT"),
            URL,
        )
        .unwrap();
        assert_eq!(
            e,
            json!({"id": "m", "created": 1_700_000_000u64, "owned_by": "expflow", "root": "blake3:ab12"})
        );
    }

    #[test]
    fn a_created_equal_to_the_response_time_is_left_out() {
        // vLLM's ModelCard: `created = int(time.time())` when the list is answered.
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        let at = httpdate::parse_http_date(date)
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let body = json!({"data": [{"id": "m", "created": at + 1, "owned_by": "vllm", "root": "/models/m"}]});
        let e = served_entry(body.to_string().as_bytes(), "m", Some(date), URL).unwrap();
        assert_eq!(
            e,
            json!({"id": "m", "owned_by": "vllm", "root": "/models/m"})
        );
    }

    #[test]
    fn an_unlisted_model_and_a_bad_answer_are_named() {
        let body = json!({"data": [{"id": "a"}, {"id": "b"}]});
        let e = served_entry(body.to_string().as_bytes(), "m", None, URL).unwrap_err();
        assert!(e.contains("does not list `m` (it lists: a, b)"), "{e}");
        let e = served_entry(b"<html>", "m", None, URL).unwrap_err();
        assert!(e.contains(URL) && e.contains("JSON"), "{e}");
        let e = served_entry(b"{}", "m", None, URL).unwrap_err();
        assert!(e.contains("model list"), "{e}");
    }
}
