//! `expflow serve MODEL_DIR`: an OpenAI-compatible server for one model directory (a
//! generative model at `/v1/chat/completions`, an encoder at `/v1/embeddings`), until Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The model directory (config.json, *.safetensors, tokenizer.json).
    pub model_dir: PathBuf,
    /// The port to listen on (0 picks a free one; the log says which).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Most chat requests run together in one generate call.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// How long to wait for more requests after the first of a batch, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub batch_wait_ms: u64,
    /// The model's name in requests and `/v1/models` (default: the directory's name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// The reply budget in tokens when a request sets no `max_tokens`.
    #[arg(long, default_value_t = 512)]
    pub default_max_tokens: usize,
    /// Most alternatives per token a request's `top_logprobs` may ask for (vLLM's
    /// `--max-logprobs`; OpenAI's limit is 20).
    #[arg(long, default_value_t = 20)]
    pub max_logprobs: usize,
    /// Require `Authorization: Bearer KEY` on every /v1 route (as vLLM's --api-key). Prefer
    /// the environment variable to the flag: a command line is visible to other users.
    #[arg(long, env = "EXPFLOW_SERVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

pub fn run(args: ServeArgs) -> Result<u8> {
    let mut loaded =
        expflow_serve::load(&args.model_dir, args.model_name, args.default_max_tokens)?;
    if let expflow_serve::LoadedKind::Chat { defaults, .. } = &mut loaded.kind {
        defaults.max_logprobs = args.max_logprobs;
    }
    let cfg = expflow_serve::ServeConfig {
        host: args.host,
        port: args.port,
        max_batch: args.max_batch.max(1),
        batch_wait: Duration::from_millis(args.batch_wait_ms),
        api_key: args
            .api_key
            .filter(|k| !k.is_empty())
            .map(expflow_serve::ApiKey),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let name = loaded.name.clone();
    let ready = move |addr| {
        // The one line a script waits for (with --port 0 it is how the port is learnt).
        eprintln!("expflow serve: `{name}` listening on http://{addr}/v1");
    };
    rt.block_on(expflow_serve::serve(loaded, &cfg, ready, async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C: finishing requests in flight, then stopping");
    }))?;
    Ok(0)
}
