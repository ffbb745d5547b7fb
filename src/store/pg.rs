//! PostgreSQL connections for the store and the playbook state (the engine for more than one
//! machine): a `deadpool-postgres` pool of `tokio-postgres` clients with a statement timeout,
//! a start that waits for the server with backoff, and numbered schema migrations that several
//! replicas starting at once apply exactly once.
//!
//! The [`super::Store`] trait is synchronous (the writer thread, `spawn_blocking` callers), so
//! [`Pg::block`] waits for a query on the calling thread while the pool's own small runtime
//! drives the connections: safe from any thread, async ones included. Async callers (the
//! playbook state) use [`Pg::run`], which runs a future on that runtime and awaits it.
//! A connection that breaks is dropped by the pool and a new one is made on the next use, so
//! a database restart costs the requests in flight, not the process.
//!
//! Every connection the process opens, pooled or single ([`connect_one`]), goes through
//! [`open`]: TLS as the URL's `sslmode` and `store.postgres.ca_file` say (`super::pg_tls`).

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use serde::{Deserialize, Serialize};

use super::pg_tls::{split_sslmode, PgTls};
use super::StoreError;

/// `store.postgres:` settings (used when `store.url` is a `postgres://` URL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PgSettings {
    /// Connections per process.
    pub pool_size: usize,
    /// Longest a statement may run before the server cancels it.
    pub statement_timeout_ms: u64,
    /// How long a start waits for the database (retrying with backoff) before giving up.
    pub connect_timeout_s: u64,
    /// PEM file of the CA certificate(s) to trust for the server's TLS certificate. Unset: the
    /// system's roots under `sslmode=verify-ca` / `verify-full`, and no check under `prefer` /
    /// `require` (as libpq); set: checked under those too.
    pub ca_file: Option<PathBuf>,
}

impl Default for PgSettings {
    fn default() -> Self {
        Self {
            pool_size: 16,
            statement_timeout_ms: 5_000,
            connect_timeout_s: 30,
            ca_file: None,
        }
    }
}

impl PgSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=1000).contains(&self.pool_size) {
            return Err(format!(
                "store.postgres.pool_size = {} must be between 1 and 1000",
                self.pool_size
            ));
        }
        if !(10..=600_000).contains(&self.statement_timeout_ms) {
            return Err(format!(
                "store.postgres.statement_timeout_ms = {} must be between 10 and 600000",
                self.statement_timeout_ms
            ));
        }
        if !(1..=3600).contains(&self.connect_timeout_s) {
            return Err(format!(
                "store.postgres.connect_timeout_s = {} must be between 1 and 3600",
                self.connect_timeout_s
            ));
        }
        Ok(())
    }

    /// [`Self::validate`] and what `url` asks of TLS: a known `sslmode`, and a readable
    /// `ca_file` (or system roots) holding certificates when the mode checks them.
    pub fn validate_for(&self, url: &str) -> Result<(), String> {
        Target::new(url, self).map(drop).map_err(|e| e.to_string())
    }
}

/// What opening a connection to one `store.url` takes: the driver's settings (with the session
/// settings every connection carries) and the TLS client.
#[derive(Clone)]
struct Target {
    config: tokio_postgres::Config,
    tls: PgTls,
}

impl Target {
    fn new(url: &str, settings: &PgSettings) -> Result<Target, StoreError> {
        settings.validate().map_err(StoreError::Config)?;
        let bad_url = |e: String| StoreError::Config(format!("store.url {}: {e}", redacted(url)));
        let (mode, driver_url) = split_sslmode(url).map_err(bad_url)?;
        let mut config: tokio_postgres::Config = driver_url
            .parse()
            .map_err(|e: tokio_postgres::Error| bad_url(e.to_string()))?;
        config.options(format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            settings.statement_timeout_ms,
            settings.statement_timeout_ms.saturating_mul(4)
        ));
        config.connect_timeout(Duration::from_secs(settings.connect_timeout_s.min(10)));
        if config.get_application_name().is_none() {
            config.application_name("intentd");
        }
        let tls = PgTls::new(mode, settings.ca_file.as_deref()).map_err(StoreError::Config)?;
        config.ssl_mode(tls.driver_mode());
        Ok(Target { config, tls })
    }
}

/// A client and the task driving its connection.
pub type Connected = (tokio_postgres::Client, tokio::task::JoinHandle<()>);

/// The one way this process opens a connection to PostgreSQL: TLS per [`PgTls`], and the
/// connection's task spawned on the current runtime (it ends when the client is dropped).
async fn open(
    config: &tokio_postgres::Config,
    tls: &PgTls,
) -> Result<Connected, tokio_postgres::Error> {
    let (client, connection) = config.connect(tls.connector()).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended with an error");
        }
    });
    Ok((client, task))
}

/// One connection outside the pool (e.g. a session that holds an advisory lock), made like
/// the pool's: same TLS, same session settings. Call it inside a Tokio runtime; the returned
/// task drives the connection until the client is dropped.
pub async fn connect_one(url: &str, settings: &PgSettings) -> Result<Connected, StoreError> {
    connect_one_tuned(url, settings, |_| {}).await
}

/// [`connect_one`] with the session's settings adjusted first (server options, keepalives,
/// name: the leader lease's session). A failure retrying cannot mend (TLS) is a
/// [`StoreError::Config`].
pub async fn connect_one_tuned(
    url: &str,
    settings: &PgSettings,
    tune: impl FnOnce(&mut tokio_postgres::Config),
) -> Result<Connected, StoreError> {
    let mut target = Target::new(url, settings)?;
    tune(&mut target.config);
    open(&target.config, &target.tls).await.map_err(|e| {
        let (why, retry) = explain(&target.tls, &e);
        let msg = format!("{}: {why}", redacted(url));
        if retry {
            StoreError::Db(msg)
        } else {
            StoreError::Config(msg)
        }
    })
}

/// A failed connect as one line, and whether retrying can help (not when TLS is why).
fn explain(tls: &PgTls, e: &tokio_postgres::Error) -> (String, bool) {
    match tls.explain(e) {
        Some(m) => (m, false),
        None => (pg_err(e), true),
    }
}

/// The pool's way of making a connection: [`open`].
struct PoolConnect(PgTls);

impl deadpool_postgres::Connect for PoolConnect {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Connected, tokio_postgres::Error>> + Send + '_>>
    {
        let config = config.clone();
        Box::pin(async move { open(&config, &self.0).await })
    }
}

/// The URL with its password replaced, for messages and logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// A driver error as one line: the server's message (and detail) when the server sent one.
pub fn pg_err(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({}): {d}", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => e.to_string(),
    }
}

/// [`pg_err`] as a [`StoreError::Db`].
pub fn store_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Db(pg_err(&e))
}

/// A statement and its parameters, for [`exec_pipelined`].
pub type Statement<'a> = (
    &'static str,
    Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)>,
);

/// Prepares `sql` (once per connection) for a pipeline.
pub async fn prepare(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
) -> Result<tokio_postgres::Statement, StoreError> {
    tx.prepare_cached(sql).await.map_err(store_err)
}

/// Executes `stmts` in `tx` in their order as one pipeline, after `first` (a query already
/// prepared with [`prepare`], e.g. the leader's fence check, which goes out first): everything
/// is sent before the first answer is awaited, so a batch costs one round trip instead of one
/// per statement, and on a busy machine each round trip also waits for the server process to
/// be scheduled. All statements are prepared before anything is sent: a statement still being
/// prepared would go out after the ones behind it. The first failure fails the call (the
/// server aborts the transaction at it, so nothing after it applies).
pub async fn exec_pipelined<F>(
    tx: &deadpool_postgres::Transaction<'_>,
    first: F,
    stmts: &[Statement<'_>],
) -> Result<(), StoreError>
where
    F: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut prepared = Vec::with_capacity(stmts.len());
    for (sql, _) in stmts {
        prepared.push(prepare(tx, sql).await?);
    }
    // Both joins poll their futures in order on the first poll, and a prepared statement's
    // request is sent on its first poll: that is the order they reach the server.
    let writes = futures_util::future::try_join_all(prepared.iter().zip(stmts).map(
        |(stmt, (_, params))| async move { tx.execute(stmt, params).await.map_err(store_err) },
    ));
    futures_util::try_join!(first, writes)?;
    Ok(())
}

/// Executes one statement (prepared once per connection) in `tx`.
pub async fn exec(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, StoreError> {
    let stmt = prepare(tx, sql).await?;
    tx.execute(&stmt, params).await.map_err(store_err)
}

/// A pool and the runtime its blocking callers run on.
pub struct Pg {
    pool: Pool,
    /// Always Some until drop (shut down in the background: a drop may happen on an async
    /// thread, where a runtime cannot be dropped).
    runtime: Option<tokio::runtime::Runtime>,
    url: String,
    /// For explaining failed connects.
    tls: PgTls,
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.pool.close();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg")
            .field("url", &redacted(&self.url))
            .finish_non_exhaustive()
    }
}

impl Pg {
    /// Connects (waiting up to `connect_timeout_s` for the server, with backoff) and applies
    /// the migrations not applied yet.
    pub fn connect(
        url: &str,
        settings: &PgSettings,
        migrations: &[&str],
    ) -> Result<Pg, StoreError> {
        let Target { config, tls } = Target::new(url, settings)?;
        if tls.unverified_require() {
            tracing::warn!(
                url = %redacted(url),
                "sslmode=require without store.postgres.ca_file: the connection is encrypted but \
                 the server's certificate is not checked (set ca_file, or use sslmode=verify-full)"
            );
        }
        let manager = Manager::from_connect(
            config,
            PoolConnect(tls.clone()),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("intentd-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(format!("postgres runtime: {e}")))?;
        let pool = {
            let _in = runtime.enter();
            Pool::builder(manager)
                .max_size(settings.pool_size)
                .wait_timeout(Some(Duration::from_millis(settings.statement_timeout_ms)))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(db_err)?
        };
        let pg = Pg {
            pool,
            runtime: Some(runtime),
            url: url.to_string(),
            tls,
        };
        let deadline = Instant::now() + Duration::from_secs(settings.connect_timeout_s);
        let mut backoff = Duration::from_millis(100);
        loop {
            match pg.block(async { pg.pool.get().await.map(drop) }) {
                Ok(()) => break,
                Err(e) => {
                    let (e, retry) = pg.explain(&e);
                    if !retry {
                        return Err(StoreError::Db(format!("{}: {e}", redacted(url))));
                    }
                    if Instant::now() + backoff >= deadline {
                        return Err(StoreError::Db(format!(
                            "cannot connect to {} within {} s: {e}",
                            redacted(url),
                            settings.connect_timeout_s
                        )));
                    }
                    tracing::warn!(url = %redacted(url), error = %e, retry_in_ms = backoff.as_millis() as u64, "PostgreSQL not reachable yet");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        pg.block(pg.migrate(migrations))?;
        Ok(pg)
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Db(format!("{}: {}", redacted(&self.url), self.explain(&e).0)))
    }

    /// A pool error as one line, and whether retrying can help ([`PgTls::explain`]).
    fn explain(&self, e: &PoolError) -> (String, bool) {
        match e {
            PoolError::Backend(e) => explain(&self.tls, e),
            other => (other.to_string(), true),
        }
    }

    /// Waits for `fut` on the calling thread, with the pool's runtime as the context its
    /// connections and timers belong to: callable from any thread, async ones included (it
    /// blocks that thread for the query, like SQLite does).
    pub fn block<T>(&self, fut: impl Future<Output = T>) -> T {
        let _in = self
            .runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .enter();
        park_on(fut)
    }

    /// Runs `fut` on the pool's runtime and waits for it without blocking: the way async
    /// callers (the playbook state, on the service's runtime) use the pool. A connection the
    /// pool opens meanwhile is then driven by the pool's runtime, which outlives any caller's;
    /// [`Self::block`] would park an async thread instead. A panic inside `fut` (a bug) comes
    /// back as a [`StoreError::Db`] naming the database.
    pub async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        runtime
            .spawn(fut)
            .await
            .map_err(|e| StoreError::Db(format!("{}: task failed: {e}", redacted(&self.url))))
    }

    /// The URL without its password, for messages.
    pub fn origin(&self) -> String {
        redacted(&self.url)
    }

    /// Applies the migrations not applied yet, each in a transaction, under an advisory lock
    /// so replicas starting together apply each once.
    async fn migrate(&self, migrations: &[&str]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(store_err)?;
        // Any fixed number: the lock only orders intentd processes among themselves.
        tx.execute("SELECT pg_advisory_xact_lock(7316021500)", &[])
            .await
            .map_err(store_err)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS intentd_schema (version BIGINT NOT NULL)")
            .await
            .map_err(store_err)?;
        let version: i64 = tx
            .query_opt("SELECT version FROM intentd_schema", &[])
            .await
            .map_err(store_err)?
            .map_or(0, |r| r.get(0));
        let known = migrations.len() as i64;
        if version > known {
            return Err(StoreError::Db(format!(
                "{}: schema version {version} is newer than this intentd knows ({known}); \
                 upgrade intentd",
                redacted(&self.url)
            )));
        }
        for (i, sql) in migrations.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql).await.map_err(|e| {
                StoreError::Db(format!(
                    "{}: migration {} failed: {}",
                    redacted(&self.url),
                    i + 1,
                    pg_err(&e)
                ))
            })?;
        }
        if version < known {
            tx.execute("DELETE FROM intentd_schema", &[])
                .await
                .map_err(store_err)?;
            tx.execute(
                "INSERT INTO intentd_schema (version) VALUES ($1)",
                &[&known],
            )
            .await
            .map_err(store_err)?;
            tracing::info!(from = version, to = known, "applied PostgreSQL migrations");
        }
        tx.commit().await.map_err(store_err)
    }
}

/// Polls `fut` on this thread, parking between wake-ups (a minimal executor: the I/O itself
/// runs on the pool's runtime threads).
fn park_on<T>(fut: impl Future<Output = T>) -> T {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_appear_in_messages() {
        assert_eq!(
            redacted("postgres://app:s3cret@db:5432/intentd"),
            "postgres://app:***@db:5432/intentd"
        );
        assert_eq!(
            redacted("postgres://app@db/intentd"),
            "postgres://app@db/intentd"
        );
    }

    #[test]
    fn settings_outside_their_range_are_named() {
        assert!(PgSettings::default().validate().is_ok());
        let e = PgSettings {
            pool_size: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("pool_size = 0"), "{e}");
        let e = PgSettings {
            statement_timeout_ms: 1,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("statement_timeout_ms"), "{e}");
    }

    #[test]
    fn tls_settings_are_checked_with_the_url_naming_what_is_wrong() {
        let url = "postgres://u:pw@db/intentd?sslmode=verify-full";
        let missing = std::env::temp_dir().join("intentd-no-such-ca.pem");
        let settings = PgSettings {
            ca_file: Some(missing.clone()),
            ..Default::default()
        };
        let e = settings.validate_for(url).unwrap_err();
        assert!(e.contains("store.postgres.ca_file"), "{e}");
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(!e.contains("pw"), "{e}");
        let e = PgSettings::default()
            .validate_for("postgres://u:pw@db/intentd?sslmode=verify")
            .unwrap_err();
        assert!(e.contains("sslmode=verify is not one of"), "{e}");
        assert!(e.contains("u:***@db") && !e.contains(":pw@"), "{e}");
        assert!(PgSettings::default()
            .validate_for("postgres://u:pw@db/intentd?sslmode=require")
            .is_ok());
    }

    #[test]
    fn a_bad_url_is_a_config_error_naming_the_url_without_its_password() {
        let e = Pg::connect("postgres://u:pw@[bad", &PgSettings::default(), &[]).unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, StoreError::Config(_)), "{m}");
        assert!(!m.contains("pw"), "{m}");
    }
}
