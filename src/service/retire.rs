//! Freeing a replaced model. A reload swaps the new model in at once; requests already holding
//! the old one (a batch on the compute thread, a request between tokenising and queueing) finish
//! on it. The reload then waits, without blocking the runtime, until it holds the last
//! reference, drops the model on a blocking thread (freeing ~100 MB of weights takes a few
//! milliseconds) and hands the freed memory back to the operating system.
//!
//! Why the last step: the weights are many allocations under glibc's mmap threshold (raised to
//! 32 MiB by [`crate::model::allocator::tune_for_tensors`]), so they live in malloc's heaps, and
//! freed heap memory below the top is kept by the process. Measured before this existed, every
//! reload left RSS higher (12 reloads: 419 -> 543 MB); `benches/reload_memory.sh` measures it now.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batcher::LoadedModel;

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
/// the module doc).
pub async fn retire(old: Arc<LoadedModel>, patience: Duration) -> Retired {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + patience;
    while Arc::strong_count(&old) > 1 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                version = %old.version,
                patience_ms = patience.as_millis() as u64,
                "the replaced model is still in use; it is freed when its last request finishes"
            );
            tokio::spawn(async move {
                while Arc::strong_count(&old) > 1 {
                    tokio::time::sleep(SLOW_POLL).await;
                }
                free(old).await;
            });
            return Retired::Later;
        }
        tokio::time::sleep(POLL).await;
    }
    let waited = started.elapsed();
    free(old).await;
    Retired::Freed { waited }
}

/// Drops the last reference off the runtime threads and returns the freed memory.
async fn free(old: Arc<LoadedModel>) {
    let version = old.version.clone();
    let done = tokio::task::spawn_blocking(move || {
        drop(old);
        crate::model::allocator::release_free_memory()
    })
    .await;
    match done {
        Ok(released) => tracing::info!(%version, released, "replaced model freed"),
        Err(e) => tracing::error!(%version, error = %e, "freeing the replaced model failed"),
    }
}
