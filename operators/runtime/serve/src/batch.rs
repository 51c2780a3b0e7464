//! Batching: requests queue on a channel; one thread takes the first, waits up to
//! `batch_wait` for more (at most `max_batch` in all), runs one `generate` over them and
//! answers each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use expflow_models::{GenRequest, Generation};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::model::{ChatModel, Failure};

/// Counters the server exposes at `GET /stats`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Chat completion requests received (valid or not).
    pub requests: AtomicU64,
    /// `generate` calls made by the batcher.
    pub batches: AtomicU64,
    /// Requests those calls completed.
    pub batched_requests: AtomicU64,
    /// The largest batch so far.
    pub max_batch: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub embedding_requests: AtomicU64,
}

/// A copy of [`Stats`] for JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub batches: u64,
    pub batched_requests: u64,
    pub max_batch: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub embedding_requests: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            requests: g(&self.requests),
            batches: g(&self.batches),
            batched_requests: g(&self.batched_requests),
            max_batch: g(&self.max_batch),
            prompt_tokens: g(&self.prompt_tokens),
            completion_tokens: g(&self.completion_tokens),
            embedding_requests: g(&self.embedding_requests),
        }
    }
}

/// One queued request and where its answer goes.
pub struct Job {
    pub request: GenRequest,
    pub reply: oneshot::Sender<Result<Generation, Failure>>,
}

/// The sending side of the queue; the batching thread ends when every copy is dropped.
#[derive(Clone)]
pub struct Queue {
    tx: Sender<Job>,
}

impl Queue {
    /// Queues `request`; the answer arrives on the returned receiver.
    pub fn submit(
        &self,
        request: GenRequest,
    ) -> Result<oneshot::Receiver<Result<Generation, Failure>>, Failure> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { request, reply })
            .map_err(|_| Failure::server("the generation thread has stopped"))?;
        Ok(rx)
    }
}

/// Starts the batching thread over `model`.
pub fn start(
    model: Arc<dyn ChatModel>,
    max_batch: usize,
    batch_wait: Duration,
    stats: Arc<Stats>,
) -> std::io::Result<(Queue, std::thread::JoinHandle<()>)> {
    let (tx, rx) = channel::<Job>();
    let handle = std::thread::Builder::new()
        .name("expflow-batcher".into())
        .spawn(move || run(model.as_ref(), &rx, max_batch.max(1), batch_wait, &stats))?;
    Ok((Queue { tx }, handle))
}

fn run(model: &dyn ChatModel, rx: &Receiver<Job>, max_batch: usize, wait: Duration, stats: &Stats) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let deadline = Instant::now() + wait;
        while jobs.len() < max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(left) {
                Ok(j) => jobs.push(j),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        // A client that went away no longer needs its answer.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        answer(model, jobs, stats);
    }
    tracing::info!("the batching thread stops: the server is shutting down");
}

fn call(model: &dyn ChatModel, batch: &[GenRequest]) -> Result<Vec<Generation>, Failure> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.generate(batch))) {
        Ok(Ok(g)) if g.len() == batch.len() => Ok(g),
        Ok(Ok(g)) => Err(Failure::server(format!(
            "the model returned {} generations for {} requests",
            g.len(),
            batch.len()
        ))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Failure::server("generation panicked; see the server log")),
    }
}

fn answer(model: &dyn ChatModel, jobs: Vec<Job>, stats: &Stats) {
    let n = jobs.len();
    let started = Instant::now();
    let (requests, replies): (Vec<GenRequest>, Vec<_>) =
        jobs.into_iter().map(|j| (j.request, j.reply)).unzip();
    let results: Vec<Result<Generation, Failure>> = match call(model, &requests) {
        Ok(gens) => gens.into_iter().map(Ok).collect(),
        // One bad request must not fail the others: retry each alone to tell which.
        Err(e) if n > 1 => {
            tracing::warn!("a batch of {n} failed ({}); retrying one by one", e.message);
            requests
                .iter()
                .map(|r| call(model, std::slice::from_ref(r)).map(|mut g| g.remove(0)))
                .collect()
        }
        Err(e) => vec![Err(e)],
    };
    let secs = started.elapsed().as_secs_f64();
    let (mut prompt, mut completion) = (0u64, 0u64);
    for g in results.iter().flatten() {
        prompt += g.prompt_tokens as u64;
        completion += g
            .completions
            .iter()
            .map(|c| c.token_ids.len() as u64)
            .sum::<u64>();
    }
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .batched_requests
        .fetch_add(n as u64, Ordering::Relaxed);
    stats.max_batch.fetch_max(n as u64, Ordering::Relaxed);
    stats.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
    stats
        .completion_tokens
        .fetch_add(completion, Ordering::Relaxed);
    tracing::info!(
        batch = n,
        prompt_tokens = prompt,
        completion_tokens = completion,
        seconds = format!("{secs:.3}"),
        tokens_per_s = format!("{:.1}", completion as f64 / secs.max(1e-9)),
        "batch done"
    );
    for (reply, result) in replies.into_iter().zip(results) {
        // The client may have gone away meanwhile; nothing to do then.
        let _ = reply.send(result);
    }
}
