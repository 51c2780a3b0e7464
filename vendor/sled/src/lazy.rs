//! A lazily initialized value.
//!
//! Patched in expflow's copy of sled 0.34.7: the upstream version initialized behind a
//! bare spin lock (`while init_mu.compare_and_swap(..) {}`), and the first use of the
//! IO thread pool spawns seven threads that all spin on that lock until the spawning
//! thread has finished. On a 2-core machine those spinners took both cores from the
//! thread doing the work, on every database open. `OnceLock` blocks the waiters instead.
//! See docs/decisions.md ("sled's thread pool spun on start").

use std::sync::OnceLock;

/// A lazily initialized value
pub struct Lazy<T, F> {
    value: OnceLock<T>,
    init: F,
}

impl<T, F> Lazy<T, F> {
    /// Create a new Lazy
    pub const fn new(init: F) -> Self
    where
        F: Sized,
    {
        Self { value: OnceLock::new(), init }
    }
}

impl<T, F> std::ops::Deref for Lazy<T, F>
where
    F: Fn() -> T,
{
    type Target = T;

    fn deref(&self) -> &T {
        self.value.get_or_init(&self.init)
    }
}
