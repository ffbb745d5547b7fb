//! `intentd serve`: wire the layers together and run until SIGTERM / SIGINT.
//!
//! Start-up order matters for health: the port opens first (NOT_SERVING, rules-only answers),
//! the model loads off the runtime, then health flips to SERVING. SIGHUP reloads model and
//! operator files; SIGTERM stops accepting, lets in-flight requests finish, drains the store
//! queue and exits 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::auth::Authenticator;
use super::config::ServerConfig;
use super::grpc::{AdminApi, IntentApi};
use crate::clock::{ManualClock, SharedClock, SystemClock};
use crate::core::service::Core;
use crate::metrics::Metrics;
use crate::model::classifier::IntentModel;
use crate::operator::{LiveOperator, OperatorSnapshot};
use crate::pb;
use crate::policy::playbook::Playbook;
use crate::store::{AuditAction, Storage};

pub const SERVICE_NAMES: &[&str] = &["", "intentd.v1.IntentService", "intentd.v1.AdminService"];

pub async fn mark_serving(health: &HealthReporter) {
    for name in SERVICE_NAMES {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
}

async fn mark_not_serving(health: &HealthReporter) {
    for name in SERVICE_NAMES {
        health
            .set_service_status(*name, ServingStatus::NotServing)
            .await;
    }
}

pub struct ServeOptions {
    pub config: ServerConfig,
    /// Start the clock here and let AdminService.SetClock move it (tests, demos).
    pub manual_clock: Option<i64>,
    /// Called once the listener is bound (tests read the port from stdout instead).
    pub announce: bool,
}

/// Runs the server until a shutdown signal. `prepare_model` runs (off the runtime) when the
/// model folder is missing, e.g. to train the default model.
pub async fn serve(
    opts: ServeOptions,
    prepare_model: Option<Box<dyn FnOnce() -> Result<()> + Send>>,
) -> Result<()> {
    let cfg = Arc::new(opts.config);
    let metrics = Arc::new(Metrics::new());
    let (clock, manual): (SharedClock, Option<Arc<ManualClock>>) = match opts.manual_clock {
        Some(start) => {
            let m = Arc::new(ManualClock::new(start));
            (m.clone(), Some(m))
        }
        None => (Arc::new(SystemClock), None),
    };
    let auth = Authenticator::from_config(&cfg.auth)?;
    if auth.disabled() {
        tracing::warn!("authentication is DISABLED (auth.disabled: true): local use only");
    }
    let snapshot =
        OperatorSnapshot::load_dir(&cfg.operator_dir, &cfg.training_data, cfg.fusion.clone())
            .context("operator files")?;
    let operator = Arc::new(LiveOperator::from_pointee(snapshot));
    let playbook = Playbook::new(operator.clone(), clock.clone(), cfg.seed);
    // A bot id typo in playbook.yml would silently fall back to the defaults: say so.
    let bots = cfg.bot_ids();
    for b in playbook.config().configured_bots() {
        if !bots.is_empty() && !bots.iter().any(|k| k == b) {
            tracing::warn!(bot = %b, "playbook.yml has settings for a bot that is not in auth.bots; they are never used");
        }
    }
    let storage = if cfg.store.enabled {
        Some(Arc::new(
            Storage::open(&cfg.store, clock.clone(), metrics.clone())
                .map_err(|e| anyhow::anyhow!("store: {e}"))?,
        ))
    } else {
        tracing::warn!("store disabled: no conversation log, feedback or stats");
        None
    };
    let core = Arc::new(Core::new(
        cfg.clone(),
        clock.clone(),
        manual,
        operator,
        playbook,
        storage,
        metrics.clone(),
    ));
    core.audit(
        "system",
        AuditAction::Startup,
        &format!("config {}", core.config_hash()),
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    mark_not_serving(&health).await;
    // Reflection in both protocol versions: v1 for current tools, v1alpha for the many clients
    // that only speak it (grpcurl before 1.9, older Postman / evans / grpcui).
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .context("reflection service")?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .context("reflection service (v1alpha)")?;

    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr: SocketAddr = listener.local_addr()?;

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let metrics_task = if cfg.metrics.enabled {
        let listener = TcpListener::bind(cfg.metrics.listen)
            .await
            .with_context(|| format!("cannot listen on {} for /metrics", cfg.metrics.listen))?;
        let maddr = listener.local_addr()?;
        let mut rx = shutdown_rx.clone();
        let m = metrics.clone();
        if opts.announce {
            println!("metrics listening on http://{maddr}/metrics");
        }
        Some(tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|v| *v).await;
            };
            if let Err(e) = crate::metrics::serve_metrics_on(listener, m, stop).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        }))
    } else {
        None
    };
    if let Some(storage) = &core.storage {
        let s = storage.clone();
        let mut rx = shutdown_rx.clone();
        let m = metrics.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|v| *v).await;
            };
            s.run_purge_loop(Duration::from_secs(3600), m, stop).await;
        });
    }

    // Due proactive sends are collected every second whether or not a Subscribe stream is open,
    // so the outbox's bounds also hold for a bot that never subscribes (its items would
    // otherwise pile up in the playbook).
    {
        let core = core.clone();
        let mut rx = shutdown_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if core.collect_due() > 0 {
                            core.outbound_changed.notify_waiters();
                        }
                    }
                    _ = rx.wait_for(|v| *v) => return,
                }
            }
        });
    }

    // Load (or first prepare) the model in the background; until then answers come from rules.
    {
        let core = core.clone();
        let health = health.clone();
        let dir = cfg.model_dir.clone();
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
                    core.install_model(Arc::new(model));
                    core.audit(
                        "system",
                        AuditAction::ModelChange,
                        &format!("model {version} loaded at start-up"),
                    );
                    mark_serving(&health).await;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "model not loaded; serving from rules only (health NOT_SERVING)")
                }
                Err(e) => tracing::error!(error = %e, "model loader crashed"),
            }
        });
    }

    // SIGHUP: reload everything; SIGTERM / SIGINT: graceful shutdown.
    {
        let core = core.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading operator files and model");
                if let Err(e) = core.reload_operator("sighup").await {
                    tracing::error!(error = %e, "operator reload rejected");
                }
                match core.reload_model("sighup").await {
                    Ok(v) => {
                        tracing::info!(version = %v, "model reloaded");
                        mark_serving(&health).await;
                    }
                    Err(e) => tracing::error!(error = %e, "model reload rejected"),
                }
            }
        });
    }
    // Fired once SIGTERM / SIGINT arrived: starts the grace period.
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown_signal = {
        let health = health.clone();
        let core = core.clone();
        async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!(
                in_flight = core.in_flight(),
                "shutting down: no new requests, finishing in-flight ones"
            );
            mark_not_serving(&health).await;
            let _ = signalled_tx.send(());
        }
    };

    let mut builder = Server::builder()
        .timeout(Duration::from_millis(cfg.request_timeout_ms))
        .http2_keepalive_interval(Some(Duration::from_secs(30)));
    if let Some(tls) = &cfg.tls {
        let cert =
            std::fs::read(&tls.cert).with_context(|| format!("tls.cert {}", tls.cert.display()))?;
        let key =
            std::fs::read(&tls.key).with_context(|| format!("tls.key {}", tls.key.display()))?;
        builder =
            builder.tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))?;
    }
    let intent = IntentApi {
        core: core.clone(),
        auth: auth.clone(),
    };
    let admin = AdminApi {
        core: core.clone(),
        auth: auth.clone(),
        health: health.clone(),
    };
    if opts.announce {
        println!("intentd listening on {addr}");
    }
    tracing::info!(%addr, tls = cfg.tls.is_some(), "gRPC server listening");
    let grace = Duration::from_millis(cfg.shutdown_grace_ms);
    let server = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(pb::intent_service_server::IntentServiceServer::new(intent))
        .add_service(pb::admin_service_server::AdminServiceServer::new(admin))
        // TCP_NODELAY: a small response must not wait for the client's delayed ACK (Nagle);
        // without it a unary call at low load took ~40 ms longer (measured with
        // `intentd bench --concurrency 1`).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown_signal,
        );
    // Graceful shutdown waits for every connection to finish; an open Subscribe stream or a
    // client that never answers GOAWAY would make that forever, so it gets the grace period.
    let grace_over = async {
        if signalled_rx.await.is_err() {
            // The server ended without a signal (an error): nothing to time.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = server => r.context("gRPC server")?,
        _ = grace_over => {
            tracing::warn!(grace_ms = cfg.shutdown_grace_ms, in_flight = core.in_flight(), "grace period over; closing the remaining connections");
        }
    }
    let _ = shutdown_tx.send(true);
    if let Some(t) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    core.audit("system", AuditAction::Shutdown, "graceful shutdown");
    if let Some(storage) = &core.storage {
        let s = storage.clone();
        tokio::task::spawn_blocking(move || s.shutdown()).await.ok();
    }
    tracing::info!("stopped");
    Ok(())
}
