//! Is the log still being written? A server whose every commit fails answers `recorded: false`
//! forever while a balancer keeps sending it traffic. The writer reports each commit here;
//! after `store.unhealthy_after_failures` commits in a row have failed, the store is unhealthy:
//! readiness turns NOT_SERVING (the balancer routes around this replica), `intentd_store_healthy`
//! reads 0 and the log says why, once. The first commit that succeeds again (the server probes
//! while unhealthy: nobody else may be sending traffic) turns it back.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// See the module doc.
#[derive(Debug)]
pub struct StoreHealth {
    failed_in_a_row: AtomicU32,
    threshold: u32,
    healthy: watch::Sender<bool>,
    last_error: Mutex<String>,
    metrics: Arc<Metrics>,
}

impl StoreHealth {
    /// Unhealthy after `threshold` (at least 1) failed commits in a row.
    pub fn new(threshold: u32, metrics: Arc<Metrics>) -> Self {
        metrics.store_healthy.set(1);
        Self {
            failed_in_a_row: AtomicU32::new(0),
            threshold: threshold.max(1),
            healthy: watch::Sender::new(true),
            last_error: Mutex::new(String::new()),
            metrics,
        }
    }

    /// A commit succeeded.
    pub fn commit_succeeded(&self) {
        let failed = self.failed_in_a_row.swap(0, Ordering::SeqCst);
        if !self.is_healthy() {
            tracing::info!(
                failed_commits = failed,
                "store commits succeed again; ready to serve"
            );
            self.metrics.store_healthy.set(1);
            self.healthy.send_replace(true);
        }
    }

    /// A commit failed (every record of it).
    pub fn commit_failed(&self, error: &str) {
        let failed = self.failed_in_a_row.fetch_add(1, Ordering::SeqCst) + 1;
        *self.last_error.lock() = error.to_string();
        if failed >= self.threshold && self.is_healthy() {
            tracing::error!(
                failed_commits = failed,
                error,
                "store: every commit fails; readiness is NOT_SERVING until one succeeds \
                 (store.unhealthy_after_failures)"
            );
            self.metrics.store_healthy.set(0);
            self.healthy.send_replace(false);
        }
    }

    pub fn is_healthy(&self) -> bool {
        *self.healthy.borrow()
    }

    /// Failed commits since the last success.
    pub fn failed_in_a_row(&self) -> u32 {
        self.failed_in_a_row.load(Ordering::SeqCst)
    }

    /// Why the last commit failed (empty before any failure).
    pub fn last_error(&self) -> String {
        self.last_error.lock().clone()
    }

    /// Changes of [`StoreHealth::is_healthy`].
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_after_the_threshold_in_a_row_and_back_on_one_success() {
        let metrics = Arc::new(Metrics::new());
        let h = StoreHealth::new(3, metrics.clone());
        let mut changes = h.subscribe();
        h.commit_failed("disk I/O error");
        h.commit_failed("disk I/O error");
        // A success in between resets the count: two failures are not "sustained".
        h.commit_succeeded();
        h.commit_failed("disk I/O error");
        h.commit_failed("disk I/O error");
        assert!(h.is_healthy());
        assert!(!changes.has_changed().unwrap());
        h.commit_failed("database or disk is full");
        assert!(!h.is_healthy());
        assert_eq!(h.failed_in_a_row(), 3);
        assert_eq!(h.last_error(), "database or disk is full");
        assert_eq!(metrics.store_healthy.get(), 0);
        assert!(changes.has_changed().unwrap());
        assert!(!*changes.borrow_and_update());
        h.commit_succeeded();
        assert!(h.is_healthy());
        assert_eq!(metrics.store_healthy.get(), 1);
        assert!(*changes.borrow_and_update());
    }
}
