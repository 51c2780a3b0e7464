//! Fused CPU kernels for the runtime's hot paths, as candle custom ops with their own
//! backward passes where training needs one:
//!
//! - [`linear`]: `x Wᵀ + b (+ scale · x Aᵀ Bᵀ)` whose backward gives the input's gradient and
//!   the LoRA factors' only (candle's own matmul backward also computes the frozen weight's
//!   gradient, a full extra product per layer);
//! - [`rms_norm`], [`layer_norm`]: one pass per row, rows in parallel;
//! - [`masked_softmax`]: `softmax(scores · scale + mask)` in one pass, with its backward;
//! - [`rope`], [`silu_mul`], [`gelu_erf`]: element-wise, in parallel;
//! - [`token_logps`]: `log softmax(logits)[target]` of chosen rows (the SFT loss) without
//!   materialising the log-softmax;
//! - [`attention`]: grouped-query attention for inference, one pass per (sequence, head).
//!
//! They run on the CPU in f32; callers check [`applies`] and keep candle's composite ops
//! elsewhere (other devices, other dtypes) and when [`set_enabled`] turned the kernels off,
//! which gives the reference path the tests compare against.

mod attention;
mod elementwise;
mod linear;
mod norm;
mod softmax;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};

pub use attention::attention;
pub use elementwise::{erf, gelu_erf, rope, silu_mul};
pub use linear::{LoraParts, linear};
pub use norm::{layer_norm, rms_norm};
pub use softmax::{masked_softmax, token_logps};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernels on (the default) or off for the whole process. Off, every caller
/// takes candle's composite ops: the reference the fused path is tested against.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Runs `f` on a thread of rayon's global pool (the caller waits). The products and kernels
/// split their work with rayon; called from a thread outside the pool, every such op hands
/// its work to the pool and sleeps until it is done, and a pool thread wakes for even a
/// one-part op. Called from a pool thread, an op runs its first part in place while the
/// other threads take the rest. Decoding runs hundreds of small ops per step: run in the
/// pool, greedy generation at batch 8 took 600-630 ms instead of 760-800 ms (same tokens).
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Whether the fused kernels take `x`: on, on the CPU, in f32.
pub fn applies(x: &Tensor) -> bool {
    enabled() && x.device().is_cpu() && x.dtype() == DType::F32
}

/// Rows per parallel task: enough work per task that rayon's overhead stays small.
fn rows_per_task(row_len: usize) -> usize {
    (16384 / row_len.max(1)).max(1)
}

/// The f32 data of a contiguous CPU storage.
fn data<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("kernel {what}: expected f32 data")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("kernel {what}: expected a contiguous tensor"),
    }
}

/// A copy-free view of a captured (contiguous, CPU, f32) tensor, passed to `f`.
fn with_data<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (guard, layout) = t.storage_and_layout();
    match &*guard {
        Storage::Cpu(s) => f(data(s, layout, what)?),
        _ => candle_core::bail!("kernel {what}: expected a CPU tensor"),
    }
}
