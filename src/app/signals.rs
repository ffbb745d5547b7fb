//! Signals: SIGHUP reloads everything; SIGTERM / SIGINT start a graceful shutdown.

use std::sync::Arc;

use tonic_health::server::HealthReporter;

use crate::server::health;
use crate::service::Service;

pub fn spawn_reload_on_hangup(service: &Arc<Service>, reporter: HealthReporter) {
    let service = service.clone();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading operator files and model");
            if let Err(e) = service.reload_operator("sighup").await {
                tracing::error!(error = %e, "operator reload rejected");
            }
            match service.reload_model("sighup").await {
                Ok(v) => {
                    tracing::info!(version = %v, "model reloaded");
                    health::sync(&reporter, &service).await;
                }
                Err(e) => tracing::error!(error = %e, "model reload rejected"),
            }
        }
    });
}

/// Completes on SIGTERM or SIGINT, after marking the server NOT_SERVING; `signalled` then
/// starts the caller's grace period.
/// Returns the reason when the stop came from `fatal` (the server then exits non-zero).
pub async fn termination(
    service: Arc<Service>,
    reporter: HealthReporter,
    signalled: tokio::sync::oneshot::Sender<()>,
    fatal: tokio::sync::oneshot::Receiver<String>,
) -> Option<String> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let reason = tokio::select! {
        _ = term.recv() => None,
        _ = tokio::signal::ctrl_c() => None,
        // A dropped sender (nothing fatal happened) disables this branch.
        Ok(reason) = fatal => Some(reason),
    };
    match &reason {
        Some(r) => tracing::error!(reason = %r, "stopping: cannot serve as configured"),
        None => tracing::info!(
            in_flight = service.in_flight(),
            "shutting down: no new requests, finishing in-flight ones"
        ),
    }
    service.begin_shutdown();
    health::sync(&reporter, &service).await;
    let _ = signalled.send(());
    reason
}
