//! Freeing what a reload replaced: the model, or the operator snapshot (whose keyword layer, with
//! jieba's dictionary, is as large as the model: ~60 MB each). A reload swaps the new one in at
//! once; requests already holding the old one (a batch on the compute thread, a request between
//! tokenising and queueing, a decision reading the rules) finish on it. The reload then waits,
//! without blocking the runtime, until it holds the last reference, drops the old one on a
//! blocking thread (freeing it takes milliseconds) and hands the freed memory back to the
//! operating system.
//!
//! Why the last step: both are many allocations under glibc's mmap threshold (raised to 32 MiB
//! by [`crate::model::allocator::tune_for_tensors`]), so they live in malloc's heaps, and freed
//! heap memory below the top is kept by the process. Measured before this existed, every reload
//! left RSS higher (12 reloads: 170 -> 320 MB, peak 451 MB); `benches/reload_memory.sh`.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the reload looks whether the old model's last user is gone.
const POLL: Duration = Duration::from_millis(5);
/// After `patience`, a model still in use is left to a background task that checks this often.
const SLOW_POLL: Duration = Duration::from_millis(100);

/// How a replaced model was let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retired {
    /// Dropped and its memory returned, after waiting this long for its last user.
    Freed { waited: Duration },
    /// Still in use after the patience ran out: a background task frees it when its last user
    /// finishes.
    Later,
}

/// Waits (up to `patience`) until `old` is no longer used by any request, then frees it (see
/// the module doc). `what` names it in the log.
pub async fn retire<T: Send + Sync + 'static>(
    old: Arc<T>,
    what: String,
    patience: Duration,
) -> Retired {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + patience;
    while Arc::strong_count(&old) > 1 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                %what,
                patience_ms = patience.as_millis() as u64,
                "still in use after a reload; freed when its last request finishes"
            );
            tokio::spawn(async move {
                while Arc::strong_count(&old) > 1 {
                    tokio::time::sleep(SLOW_POLL).await;
                }
                free(old, what).await;
            });
            return Retired::Later;
        }
        tokio::time::sleep(POLL).await;
    }
    let waited = started.elapsed();
    free(old, what).await;
    Retired::Freed { waited }
}

/// Drops the last reference off the runtime threads and returns the freed memory.
async fn free<T: Send + Sync + 'static>(old: Arc<T>, what: String) {
    let done = tokio::task::spawn_blocking(move || {
        drop(old);
        crate::model::allocator::release_free_memory()
    })
    .await;
    match done {
        Ok(released) => tracing::info!(%what, released, "replaced by a reload and freed"),
        Err(e) => tracing::error!(%what, error = %e, "freeing what a reload replaced failed"),
    }
}
