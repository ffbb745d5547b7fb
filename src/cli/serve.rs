use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use intentd::app::{self, ServeOptions};
use intentd::config::ServerConfig;

/// Serve the gRPC API (health, reflection, IntentService, AdminService) and Prometheus metrics.
/// With no arguments: config/intentd.yml, the default model (trained first if missing),
/// 127.0.0.1:50051.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[arg(long, default_value = "config/intentd.yml")]
    pub config: PathBuf,
    /// Override `listen` (use 127.0.0.1:0 for an ephemeral port).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Override `metrics.listen`.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Override `http.listen` (the HTTP/JSON front door).
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// Override `model_dir`.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Override `store.path` (a SQLite file: `store.url` is then ignored).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Run on a manual clock starting at this Unix ms; AdminService.SetClock moves it.
    #[arg(long)]
    pub manual_clock: Option<i64>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let mut cfg = ServerConfig::load(&args.config)?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(l) = args.metrics_listen {
        cfg.metrics.listen = l;
    }
    if let Some(l) = args.http_listen {
        cfg.http.listen = l;
    }
    if let Some(m) = args.model {
        cfg.model_dir = m;
    }
    if let Some(db) = args.db {
        cfg.store.path = db;
        cfg.store.url = None;
    }
    let prepare: Option<Box<dyn FnOnce() -> Result<()> + Send>> = if cfg.auto_train {
        let out = cfg.model_dir.clone();
        let data = cfg.training_data.clone();
        Some(Box::new(move || {
            eprintln!(
                "no model at {}: training the default model from {} first",
                out.display(),
                data.display()
            );
            super::train::run(super::train::TrainArgs::defaults(data, out))
        }))
    } else {
        None
    };
    // Before the runtime starts any thread: candle's pools read RAYON_NUM_THREADS.
    let threads = intentd::service::batcher::apply_thread_settings(&cfg.batching);
    tracing::info!(
        compute_threads = threads
            .map(|n| n.to_string())
            .unwrap_or_else(|| "all cores".into()),
        "forward-pass threads"
    );
    // Every model this process loads (at start and on reload) uses it.
    intentd::model::dense::set_default_precision(cfg.serving.precision);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(app::serve(
        ServeOptions {
            config: cfg,
            manual_clock: args.manual_clock,
            announce: true,
        },
        prepare,
    ))
}
