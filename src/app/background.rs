//! Background tasks of a running server: /metrics, the retention purge, the collector of due
//! proactive sends, and the first model load.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::model::classifier::IntentModel;
use crate::server::health;
use crate::service::Service;
use crate::store::AuditAction;

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Binds the Prometheus endpoint and serves it until shutdown.
pub async fn spawn_metrics(
    cfg: &ServerConfig,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    announce: bool,
) -> Result<JoinHandle<()>> {
    let listener = TcpListener::bind(cfg.metrics.listen)
        .await
        .with_context(|| format!("cannot listen on {} for /metrics", cfg.metrics.listen))?;
    let addr = listener.local_addr()?;
    if announce {
        println!("metrics listening on http://{addr}/metrics");
    }
    Ok(tokio::spawn(async move {
        if let Err(e) = crate::metrics::serve_metrics_on(listener, metrics, stopped(shutdown)).await
        {
            tracing::error!(error = %e, "metrics server failed");
        }
    }))
}

/// Hourly retention purge (and once at start).
pub fn spawn_purge(service: &Arc<Service>, shutdown: watch::Receiver<bool>) {
    if let Some(storage) = &service.storage {
        let s = storage.clone();
        let m = service.metrics.clone();
        tokio::spawn(async move {
            s.run_purge_loop(Duration::from_secs(3600), m, stopped(shutdown))
                .await;
        });
    }
}

/// Readiness follows the store's health: NOT_SERVING while every commit fails, SERVING again
/// after one succeeds (probed every `probe_every` meanwhile, see `Storage::run_health_probe`).
pub fn spawn_store_health(
    service: &Arc<Service>,
    reporter: HealthReporter,
    probe_every: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let Some(storage) = service.storage.clone() else {
        return;
    };
    let mut changes = storage.health().subscribe();
    tokio::spawn(storage.run_health_probe(probe_every, stopped(shutdown.clone())));
    let service = service.clone();
    let mut shutdown = shutdown;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = shutdown.wait_for(|v| *v) => return,
            }
            health::sync(&reporter, &service).await;
        }
    });
}

/// Due proactive sends are collected every second whether or not a Subscribe stream is open,
/// so the outbox's bounds also hold for a bot that never subscribes (its items would otherwise
/// pile up in the playbook).
pub fn spawn_due_collector(service: &Arc<Service>, mut shutdown: watch::Receiver<bool>) {
    let service = service.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The shutdown branch's output borrows the watch channel: collect outside the
            // select so that borrow is not held across the (async) collection.
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
            if service.collect_due().await > 0 {
                service.notify_outbound();
            }
        }
    });
}

/// Loads (or first prepares) the model off the runtime; until then answers come from rules
/// and health says NOT_SERVING. When it cannot be loaded: with `fatal` (the model is
/// required) the reason goes there and the server stops; without, it keeps serving from rules.
pub fn spawn_model_load(
    service: &Arc<Service>,
    reporter: HealthReporter,
    dir: PathBuf,
    prepare_model: Option<Box<dyn FnOnce() -> Result<()> + Send>>,
    fatal: Option<tokio::sync::oneshot::Sender<String>>,
) {
    let service = service.clone();
    tokio::spawn(async move {
        let loaded = tokio::task::spawn_blocking(move || -> Result<IntentModel> {
            if !dir.join("model.json").is_file() {
                match prepare_model {
                    Some(prepare) => prepare()?,
                    None => anyhow::bail!("model directory {} does not exist", dir.display()),
                }
            }
            IntentModel::load(&dir)
        })
        .await;
        match loaded {
            Ok(Ok(model)) => {
                tracing::info!(version = %model.card.version, "model loaded");
                let version = model.card.version.clone();
                service.install_model(Arc::new(model));
                service.audit(
                    "system",
                    AuditAction::ModelChange,
                    &format!("model {version} loaded at start-up"),
                );
                health::sync(&reporter, &service).await;
            }
            Ok(Err(e)) => match fatal {
                Some(stop) => {
                    let _ = stop.send(format!(
                        "model: {e:#} (set model.required: false to serve from rules alone)"
                    ));
                }
                None => {
                    tracing::error!(error = %format!("{e:#}"), "model not loaded; serving from rules only (model.required: false; health NOT_SERVING)")
                }
            },
            Err(e) => match fatal {
                Some(stop) => {
                    let _ = stop.send(format!("model loader crashed: {e}"));
                }
                None => tracing::error!(error = %e, "model loader crashed"),
            },
        }
    });
}
