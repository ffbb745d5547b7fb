//! Wiring: builds the service from the configuration, starts the front doors and the
//! background tasks, and runs until a shutdown signal. The only module that knows every layer.

mod background;
mod signals;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::clock::{ManualClock, SharedClock, SystemClock};
use crate::config::ServerConfig;
use crate::metrics::{Metrics, StateDiscardLabels};
use crate::operator::{LiveOperator, OperatorSnapshot};
use crate::policy::playbook::Playbook;
use crate::policy::state::PlaybookState;
use crate::policy::state_memory::{MemoryState, OnDiscard};
use crate::server::auth::Authenticator;
use crate::server::{self, health};
use crate::service::Service;
use crate::store::pg_lease::{Followers, LeaderLease};
use crate::store::pg_outbox::OutboxBounds;
use crate::store::pg_shared::SharedState;
use crate::store::{AuditAction, Keyring, Storage, StoreConfig};

pub use crate::store::pg_lease::LEASE_LOST_EXIT;

/// While the store fails every commit, how often one test commit is tried.
const STORE_PROBE_EVERY: Duration = Duration::from_secs(5);

pub struct ServeOptions {
    pub config: ServerConfig,
    /// Start the clock here and let AdminService.SetClock move it (tests, demos).
    pub manual_clock: Option<i64>,
    /// Print the bound addresses on stdout (tests read the port from there).
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
    // With PostgreSQL one process serves the database at a time: wait here, before reading
    // any state or binding a port, until this one leads (a standby binds nothing, so a
    // balancer sends everything to the leader).
    // With `leader.followers: serve` every replica serves at once (the state in the database)
    // and the lease only says which one plans proactive sends and keeps the console.
    let serve_all = serve_all(&cfg);
    if cfg.leader.followers == Followers::Serve && !serve_all {
        tracing::warn!("leader.followers: serve applies to replicas on PostgreSQL (store.url); this process serves alone");
    }
    let lease = match (&cfg.store.url, cfg.store.enabled) {
        (Some(url), true) if !serve_all => {
            match wait_for_lease(&cfg, url, &clock, opts.announce).await? {
                Some(lease) => Some(Arc::new(lease)),
                None => return Ok(()),
            }
        }
        _ => None,
    };
    let epoch = lease.as_ref().map(|l| l.epoch());
    let service = Arc::new(build_service(
        &cfg,
        clock.clone(),
        manual,
        metrics.clone(),
        epoch,
        serve_all,
    )?);
    service.audit(
        "system",
        AuditAction::Startup,
        &match epoch {
            Some(e) => format!("config {}, leader epoch {e}", service.config_hash()),
            None => format!("config {}", service.config_hash()),
        },
    );
    if serve_all {
        spawn_leadership(&cfg, &service, &clock, opts.announce);
    }
    if let Some(lease) = &lease {
        let lease = lease.clone();
        tokio::spawn(async move {
            let why = lease.held().await;
            // A standby may take over any moment now: stop at once rather than serve with a
            // state another process is about to own (the store's fencing refuses our writes
            // from its takeover on anyway).
            tracing::error!(reason = %why, "lost the leader lease; exiting so a standby takes over");
            eprintln!("intentd: lost the leader lease ({why}); exiting");
            std::process::exit(LEASE_LOST_EXIT);
        });
    }

    let wechat_accounts = cfg.wechat_accounts()?;
    let wechat = if wechat_accounts.is_empty() {
        None
    } else {
        let ids: Vec<String> = wechat_accounts.iter().map(|a| a.id.clone()).collect();
        let cb = crate::connectors::wechat::Callbacks::new(
            &cfg.wechat,
            wechat_accounts,
            service.clone(),
            metrics.clone(),
            cfg.seed,
        )
        .map_err(anyhow::Error::msg)?;
        tracing::info!(accounts = ?ids, "WeChat callbacks at /wechat/{{account}}");
        Some(Arc::new(cb))
    };

    let (reporter, health_service) = tonic_health::server::health_reporter();
    health::mark_not_serving(&reporter).await;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    let http_listener = if cfg.http.enabled {
        let l = TcpListener::bind(cfg.http.listen).await.with_context(|| {
            format!(
                "cannot listen on {} for HTTP (http.listen)",
                cfg.http.listen
            )
        })?;
        Some(l)
    } else {
        None
    };

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let metrics_task = if cfg.metrics.enabled {
        Some(
            background::spawn_metrics(&cfg, metrics.clone(), shutdown_rx.clone(), opts.announce)
                .await?,
        )
    } else {
        None
    };
    background::spawn_purge(&service, shutdown_rx.clone());
    background::spawn_store_health(
        &service,
        reporter.clone(),
        STORE_PROBE_EVERY,
        shutdown_rx.clone(),
    );
    background::spawn_due_collector(&service, shutdown_rx.clone());
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<String>();
    background::spawn_model_load(
        &service,
        reporter.clone(),
        cfg.model_dir.clone(),
        prepare_model,
        cfg.model.required.then_some(fatal_tx),
    );
    signals::spawn_reload_on_hangup(&service, reporter.clone());
    // Fired once SIGTERM / SIGINT arrived: starts the grace period.
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    // Both front doors stop on the same signal.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let termination =
        signals::termination(service.clone(), reporter.clone(), signalled_tx, fatal_rx);
    let fatal = Arc::new(std::sync::Mutex::new(None::<String>));
    let fatal_slot = fatal.clone();
    let shutdown_signal = async move {
        if let Some(reason) = termination.await {
            *fatal_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        }
        let _ = stop_tx.send(true);
    };
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let http = match http_listener {
        Some(l) => {
            let http_addr = l.local_addr()?;
            if opts.announce {
                println!("http listening on http://{http_addr}");
            }
            tracing::info!(addr = %http_addr, "HTTP/JSON server listening");
            let fut = server::http::serve_http(
                &cfg.http,
                cfg.request_timeout_ms,
                l,
                service.clone(),
                auth.clone(),
                wechat.clone(),
                stopped(),
            );
            futures_util::future::Either::Left(fut)
        }
        None => futures_util::future::Either::Right(std::future::ready(Ok(()))),
    };
    if opts.announce {
        println!("intentd listening on {addr}");
    }
    tracing::info!(%addr, tls = cfg.tls.is_some(), "gRPC server listening");
    if cfg!(feature = "bench-no-state") {
        tracing::warn!("built with the `bench-no-state` feature: the playbook state is NOT stored (a benchmark build; never run it for real)");
    }
    let grpc = server::serve_grpc(
        &cfg,
        listener,
        service.clone(),
        auth,
        reporter,
        health_service,
        shutdown_signal,
    );
    let both = async { tokio::try_join!(grpc, http).map(|_| ()) };
    // Graceful shutdown waits for every connection to finish; an open Subscribe stream or a
    // client that never answers GOAWAY would make that forever, so it gets the grace period.
    let grace = Duration::from_millis(cfg.shutdown_grace_ms);
    let grace_over = async {
        if signalled_rx.await.is_err() {
            // The server ended without a signal (an error): nothing to time.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = both => r?,
        _ = grace_over => {
            tracing::warn!(grace_ms = cfg.shutdown_grace_ms, in_flight = service.in_flight(), "grace period over; closing the remaining connections");
        }
    }
    let _ = shutdown_tx.send(true);
    if let Some(t) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    service.audit("system", AuditAction::Shutdown, "graceful shutdown");
    if let Some(storage) = &service.storage {
        let s = storage.clone();
        tokio::task::spawn_blocking(move || s.shutdown()).await.ok();
    }
    tracing::info!("stopped");
    // Everything answered so far is stored; now say why this start failed.
    if let Some(reason) = fatal.lock().unwrap_or_else(|e| e.into_inner()).take() {
        anyhow::bail!(reason);
    }
    Ok(())
}

/// Every replica serves (`leader.followers: serve` with PostgreSQL).
fn serve_all(cfg: &ServerConfig) -> bool {
    cfg.store.enabled && cfg.store.url.is_some() && cfg.leader.followers == Followers::Serve
}

/// Names this process in `intentd_leader`: host, pid, listen address.
fn lease_holder(cfg: &ServerConfig) -> String {
    format!(
        "{}:{} ({})",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown-host".into()),
        std::process::id(),
        cfg.listen
    )
}

/// Among replicas that all serve: waits for the leader lease in the background, then plans
/// the proactive sends and keeps the console and labels (read back from the store first) until
/// the lease is lost, when it exits so that a supervisor restarts it as a follower.
fn spawn_leadership(
    cfg: &ServerConfig,
    service: &Arc<Service>,
    clock: &SharedClock,
    announce: bool,
) {
    let Some(url) = cfg.store.url.clone() else {
        return;
    };
    let (settings, leader, holder) = (
        cfg.store.postgres.clone(),
        cfg.leader.clone(),
        lease_holder(cfg),
    );
    let (service, clock) = (service.clone(), clock.clone());
    service.set_leads(false);
    tokio::spawn(async move {
        let lease = LeaderLease::acquire(
            &url,
            &settings,
            &leader,
            &holder,
            move || clock.now_ms(),
            || {
                tracing::info!(
                    "follower: another replica holds the leader lease; serving, and waiting for it"
                );
                if announce {
                    println!("follower: serving; waiting for the leader lease");
                }
            },
        )
        .await;
        let lease = match lease {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "leader lease not taken; this replica serves as a follower only");
                return;
            }
        };
        // The labels are the lease holder's: read what the previous holder stored.
        if let Some(storage) = service.storage.clone() {
            match tokio::task::spawn_blocking(move || storage.state_rows()).await {
                Ok(Ok(rows)) => match service.restore_labels(&rows) {
                    Ok(n) => tracing::info!(labels = n, "labelling inbox labels read back"),
                    Err(e) => tracing::error!(error = %e, "labels not read back"),
                },
                Ok(Err(e)) => tracing::error!(error = %e, "labels not read back"),
                Err(e) => tracing::error!(error = %e, "labels not read back"),
            }
        }
        service.set_leads(true);
        service.audit(
            "system",
            AuditAction::Startup,
            &format!("leading, epoch {}, {holder}", lease.epoch()),
        );
        tracing::info!(epoch = lease.epoch(), %holder, "holding the leader lease: planning proactive sends, serving the console");
        if announce {
            println!("leading: epoch {}", lease.epoch());
        }
        service.notify_outbound();
        let why = lease.held().await;
        tracing::error!(reason = %why, "lost the leader lease; exiting so that this replica restarts as a follower");
        eprintln!("intentd: lost the leader lease ({why}); exiting");
        std::process::exit(LEASE_LOST_EXIT);
    });
}

/// Waits as a standby until this process holds the leader lease; None when a signal stopped
/// it first.
async fn wait_for_lease(
    cfg: &ServerConfig,
    url: &str,
    clock: &SharedClock,
    announce: bool,
) -> Result<Option<LeaderLease>> {
    let holder = lease_holder(cfg);
    let clock = clock.clone();
    let acquire = LeaderLease::acquire(
        url,
        &cfg.store.postgres,
        &cfg.leader,
        &holder,
        move || clock.now_ms(),
        || {
            tracing::info!(
                failover_s = cfg.leader.failover_s,
                "standby: another intentd leads this database; waiting for the leader lease"
            );
            if announce {
                println!("standby: waiting for the leader lease");
            }
        },
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    tokio::select! {
        lease = acquire => {
            let lease = lease.map_err(|e| anyhow::anyhow!("leader lease: {e}"))?;
            tracing::info!(epoch = lease.epoch(), %holder, "holding the leader lease");
            Ok(Some(lease))
        }
        _ = term.recv() => { tracing::info!("stopped while standby"); Ok(None) }
        _ = tokio::signal::ctrl_c() => { tracing::info!("stopped while standby"); Ok(None) }
    }
}

/// Loads the operator files and opens the store: any error here stops the start.
fn build_service(
    cfg: &ServerConfig,
    clock: SharedClock,
    manual: Option<Arc<ManualClock>>,
    metrics: Arc<Metrics>,
    leader_epoch: Option<u64>,
    serve_all: bool,
) -> Result<Service> {
    let snapshot =
        OperatorSnapshot::load_dir(&cfg.operator_dir, &cfg.training_data, cfg.fusion.clone())
            .context("operator files")?;
    let operator = Arc::new(LiveOperator::from_pointee(snapshot));
    let discarded = metrics.state_discarded.clone();
    let on_discard: OnDiscard = Arc::new(move |queue, reason, n| {
        discarded
            .get_or_create(&StateDiscardLabels {
                queue: queue.as_str().into(),
                reason: reason.into(),
            })
            .inc_by(n);
    });
    let store_config = StoreConfig {
        leader_epoch,
        ..cfg.store_config()
    };
    let keyring = match cfg.store.enabled {
        true => Some(Arc::new(
            Keyring::from_config(&store_config).map_err(|e| anyhow::anyhow!("store: {e}"))?,
        )),
        false => None,
    };
    let storage = match &keyring {
        Some(keyring) => Some(Arc::new(
            Storage::open_with_keyring(
                &store_config,
                keyring.clone(),
                clock.clone(),
                metrics.clone(),
            )
            .map_err(|e| anyhow::anyhow!("store: {e}"))?,
        )),
        None => {
            tracing::warn!("store disabled: no conversation log, feedback or stats; playbook state lives in memory only");
            None
        }
    };
    // With a store the playbook's state is written through it and read back here, so a restart
    // (or a kill -9) forgets no cooldown, handoff, schedule or queued send. Replicas that all
    // serve keep it in the database itself instead, with the outbox.
    let stored = match (&storage, serve_all) {
        (Some(s), false) => s
            .state_rows()
            .map_err(|e| anyhow::anyhow!("store: reading the playbook state: {e}"))?,
        _ => Vec::new(),
    };
    let mut shared_outbox = None;
    let state: Arc<dyn PlaybookState> = match (&storage, &keyring, &cfg.store.url) {
        (Some(_), Some(keyring), Some(url)) if serve_all => {
            let shared = SharedState::open(
                url,
                &cfg.store.postgres,
                keyring.clone(),
                cfg.playbook_state,
                Some(on_discard),
                OutboxBounds {
                    max_per_bot: cfg.outbox.max_per_bot,
                    max_age_ms: cfg.outbox.max_age_ms,
                },
            )
            .map_err(|e| anyhow::anyhow!("store: the shared playbook state: {e}"))?;
            shared_outbox = Some(shared.outbox());
            Arc::new(shared)
        }
        (Some(s), _, _) => {
            let state = Arc::new(MemoryState::durable(cfg.playbook_state, Some(on_discard)));
            let n = state
                .restore(&stored)
                .map_err(|e| anyhow::anyhow!("store: {e}"))?;
            tracing::info!(
                groups = n.groups,
                handoffs = n.handoffs,
                users = n.users,
                jobs = n.jobs,
                review = n.review,
                dropped = n.dropped,
                "playbook state restored"
            );
            s.hold_durable(state.clone());
            state
        }
        (None, _, _) => Arc::new(MemoryState::with_limits(
            cfg.playbook_state,
            Some(on_discard),
        )),
    };
    let playbook = Playbook::with_state(operator.clone(), clock.clone(), cfg.seed, state);
    // A bot id typo in playbook.yml would silently fall back to the defaults: say so.
    let bots = cfg.bot_ids();
    for b in playbook.config().configured_bots() {
        if !bots.is_empty() && !bots.iter().any(|k| k == b) {
            tracing::warn!(bot = %b, "playbook.yml has settings for a bot that is not in auth.bots; they are never used");
        }
    }
    let mut service = Service::new(
        cfg.service_settings(),
        clock,
        manual,
        operator,
        playbook,
        storage,
        metrics,
    );
    if let Some(outbox) = shared_outbox {
        service = service.share_with_replicas(outbox);
        // Console sessions and labels are the lease holder's (read back when it takes the
        // lease); the outbox and the playbook's state are in the database.
        return Ok(service);
    }
    let waiting = service
        .restore_outbox(&stored)
        .map_err(|e| anyhow::anyhow!("store: {e}"))?;
    if waiting > 0 {
        tracing::info!(items = waiting, "proactive sends restored to the outbox");
    }
    let labels = service
        .restore_labels(&stored)
        .map_err(|e| anyhow::anyhow!("store: {e}"))?;
    if labels > 0 {
        tracing::info!(labels, "labelling inbox labels restored");
    }
    let sessions = service
        .restore_console_sessions(&stored)
        .map_err(|e| anyhow::anyhow!("store: {e}"))?;
    if sessions > 0 {
        tracing::info!(sessions, "console sessions restored");
    }
    Ok(service)
}
