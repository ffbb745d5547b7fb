use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use intentd::clock::SystemClock;
use intentd::config::ServerConfig;
use intentd::metrics::Metrics;
use intentd::store::Storage;

/// Decrypt the conversation log of a time range to JSONL (needs the log key). Audited.
#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(long, default_value = "config/intentd.yml")]
    pub config: PathBuf,
    /// Override `store.path` (a SQLite file: `store.url` is then ignored).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Start (Unix ms or RFC 3339), inclusive; default: the beginning.
    #[arg(long)]
    pub from: Option<String>,
    /// End (Unix ms or RFC 3339), inclusive; default: now.
    #[arg(long)]
    pub to: Option<String>,
    /// Output file; default stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Who is exporting (recorded in the audit log).
    #[arg(long, env = "USER", default_value = "operator")]
    pub actor: String,
}

pub fn parse_time(s: &str, field: &str) -> Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .with_context(|| format!("{field}: '{s}' is neither Unix milliseconds nor RFC 3339 (2026-11-25T08:00:00+08:00)"))
}

pub fn open_storage(config: &std::path::Path, db: Option<PathBuf>) -> Result<Storage> {
    let mut cfg = ServerConfig::load(config)?;
    if let Some(db) = db {
        cfg.store.path = db;
        cfg.store.url = None;
    }
    // Readers never mint a key: a new one could not open a single existing row, and the
    // operator must hear that the real key is missing.
    cfg.store.create_key_file = false;
    if cfg.store.url.is_none() && !cfg.store.path.is_file() {
        anyhow::bail!("no database at {}", cfg.store.path.display());
    }
    Storage::open(&cfg.store, Arc::new(SystemClock), Arc::new(Metrics::new()))
        .map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn run(args: ExportArgs) -> Result<()> {
    let from = args
        .from
        .as_deref()
        .map(|s| parse_time(s, "--from"))
        .transpose()?
        .unwrap_or(0);
    let to = args
        .to
        .as_deref()
        .map(|s| parse_time(s, "--to"))
        .transpose()?
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let storage = open_storage(&args.config, args.db)?;
    let n = match &args.out {
        Some(p) => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot create {}", p.display()))?,
            );
            let n = storage
                .export(&args.actor, from, to, &mut f)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            f.flush()?;
            n
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            storage
                .export(&args.actor, from, to, &mut lock)
                .map_err(|e| anyhow::anyhow!("{e}"))?
        }
    };
    storage.shutdown();
    eprintln!("exported {n} conversations");
    Ok(())
}
