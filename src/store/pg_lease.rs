//! The leader lease on PostgreSQL: one `intentd serve` serves a database at a time, the others
//! wait as standbys, and one of them takes over within `leader.failover_s` when the leader dies.
//!
//! Why one at a time: the playbook's state (spacing slots, cooldowns, handoffs, timers, the
//! outbox) lives in the serving process and is written through the store, so two processes
//! serving one database would each keep their own and each send every broadcast.
//!
//! How: a session-level advisory lock held on a dedicated connection. PostgreSQL releases it
//! when that session ends: at once when the process dies (its kernel closes the socket), and
//! within the keepalive time when its machine or network goes (server-side TCP keepalives are
//! set on the session from `failover_s`). The holder pings its session more often than that
//! and gives the lease up (the server stops) when a ping fails, so it has stopped before a
//! standby can take over. Each takeover also bumps an epoch in `intentd_leader`, which the
//! store checks in every commit ([`fence_check`]): a leader that lost the lease without
//! noticing can no longer write.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::pg::{connect_one_tuned, pg_err, PgSettings};
use super::StoreError;

/// The advisory lock's key: any fixed number not used elsewhere (migrations take 7316021500, a
/// store start 7316021501, both as transaction locks).
const LOCK_KEY: i64 = 7_316_021_502;

/// Exit status of a process that lost the lease or was fenced (a supervisor restarts it as a
/// standby).
pub const LEASE_LOST_EXIT: i32 = 75;

/// `leader:` in the server configuration (used with PostgreSQL).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaderConfig {
    /// A standby takes over within this many seconds of the leader's end: at once after a
    /// crash or kill (plus the start-up), within this bound when the leader's machine or
    /// network goes silent.
    pub failover_s: u64,
    /// What the processes that do not hold the lease do.
    pub followers: Followers,
}

/// `leader.followers`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Followers {
    /// Wait, binding nothing: one process serves at a time (its state in memory, written
    /// through the store and fenced by the lease's epoch).
    #[default]
    Standby,
    /// Serve too: the playbook's state and the outbox live in the database (versioned rows,
    /// `FOR UPDATE SKIP LOCKED`), so every replica answers; the holder alone plans the
    /// proactive sends and serves the console and the labelling inbox.
    Serve,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        Self {
            failover_s: 15,
            followers: Followers::Standby,
        }
    }
}

impl LeaderConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(3..=600).contains(&self.failover_s) {
            return Err(format!(
                "leader.failover_s = {} must be between 3 and 600",
                self.failover_s
            ));
        }
        Ok(())
    }

    fn failover(&self) -> Duration {
        Duration::from_secs(self.failover_s)
    }

    /// How often a standby asks for the lock.
    fn poll_every(&self) -> Duration {
        (self.failover() / 15).clamp(Duration::from_millis(200), Duration::from_secs(2))
    }

    /// How often the holder pings its session, and how long a ping may take: together well
    /// under the server's keepalive bound (5/6 of failover), so the holder stops first.
    fn ping_every(&self) -> Duration {
        self.failover() / 5
    }
}

/// The held lease. Dropping it ends the session, which releases the lock.
pub struct LeaderLease {
    client: Client,
    conn: JoinHandle<()>,
    epoch: u64,
    config: LeaderConfig,
}

impl std::fmt::Debug for LeaderLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderLease")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Drop for LeaderLease {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Opens the lease's own session (not a pooled one: the lock belongs to the session), with TLS
/// like every connection (`pg::connect_one_tuned`).
async fn connect(
    url: &str,
    settings: &PgSettings,
    config: &LeaderConfig,
) -> Result<(Client, JoinHandle<()>), StoreError> {
    let f = config.failover_s;
    connect_one_tuned(url, settings, |pg| {
        // Server-side keepalives: a leader whose machine vanished loses the lock within
        // idle + 3 x interval = 5/6 of failover_s.
        pg.options(format!(
            "-c statement_timeout={} -c tcp_keepalives_idle={} -c tcp_keepalives_interval={} \
             -c tcp_keepalives_count=3 -c tcp_user_timeout={}",
            settings.statement_timeout_ms,
            (f / 3).max(1),
            (f / 6).max(1),
            f * 1000 * 5 / 6,
        ));
        pg.application_name("intentd-leader");
        pg.keepalives(true);
        pg.keepalives_idle(Duration::from_secs((f / 3).max(1)));
    })
    .await
}

fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::Db(pg_err(&e))
}

impl LeaderLease {
    /// Waits until this process holds the lease (forever while another leads; a database that
    /// is unreachable is retried with backoff), then bumps the epoch. `holder` names this
    /// process in `intentd_leader` (host and pid). `standby` runs once if the lease is taken.
    pub async fn acquire(
        url: &str,
        settings: &PgSettings,
        config: &LeaderConfig,
        holder: &str,
        now_ms: impl Fn() -> i64,
        mut standby: impl FnMut(),
    ) -> Result<LeaderLease, StoreError> {
        config.validate().map_err(StoreError::Config)?;
        let mut told = false;
        let mut backoff = Duration::from_millis(200);
        loop {
            let (client, conn) = match connect(url, settings, config).await {
                Ok(c) => c,
                Err(StoreError::Config(e)) => return Err(StoreError::Config(e)),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "leader lease: PostgreSQL not reachable");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            loop {
                match client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
                    .await
                {
                    Ok(row) if row.get::<_, bool>(0) => {
                        let epoch = take_office(&client, holder, now_ms()).await?;
                        return Ok(LeaderLease {
                            client,
                            conn,
                            epoch,
                            config: config.clone(),
                        });
                    }
                    Ok(_) => {
                        if !told {
                            told = true;
                            standby();
                        }
                        tokio::time::sleep(config.poll_every()).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %pg_err(&e), "leader lease: session lost while waiting; reconnecting");
                        conn.abort();
                        break;
                    }
                }
            }
        }
    }

    /// This tenure's number: every commit of the store checks it is still the current one.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Runs while the lease is held; returns why it was lost (the session failed a ping or
    /// ended). The caller must stop serving at once.
    pub async fn held(&self) -> String {
        let every = self.config.ping_every();
        loop {
            tokio::time::sleep(every).await;
            if self.conn.is_finished() {
                return "the lease's database session ended".into();
            }
            match tokio::time::timeout(every, self.client.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return format!("the lease's database session failed: {}", pg_err(&e))
                }
                Err(_) => {
                    return format!(
                        "the lease's database session did not answer within {} ms",
                        every.as_millis()
                    )
                }
            }
        }
    }
}

/// Under the lock: the table if new, then the next epoch.
async fn take_office(client: &Client, holder: &str, now_ms: i64) -> Result<u64, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS intentd_leader (
                id       INTEGER PRIMARY KEY CHECK (id = 1),
                epoch    BIGINT NOT NULL,
                holder   TEXT NOT NULL,
                since_ms BIGINT NOT NULL
            )",
        )
        .await
        .map_err(db)?;
    let row = client
        .query_one(
            "INSERT INTO intentd_leader (id, epoch, holder, since_ms) VALUES (1, 1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET epoch = intentd_leader.epoch + 1,
                holder = EXCLUDED.holder, since_ms = EXCLUDED.since_ms
             RETURNING epoch",
            &[&holder, &now_ms],
        )
        .await
        .map_err(db)?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// The first statement of every commit of a leader: fails unless `epoch` still leads. The row
/// lock (FOR SHARE) makes a takeover's epoch bump wait for commits already past this check, so
/// what a new leader reads after its bump includes them.
pub const FENCE_SQL: &str = "SELECT epoch, holder FROM intentd_leader WHERE id = 1 FOR SHARE";

/// Runs the fence check ([`FENCE_SQL`], prepared with `pg::prepare`) in `tx`.
pub async fn fence_check(
    tx: &deadpool_postgres::Transaction<'_>,
    fence: &tokio_postgres::Statement,
    epoch: u64,
) -> Result<(), StoreError> {
    let row = tx.query_opt(fence, &[]).await.map_err(db)?;
    match row {
        Some(r) if r.get::<_, i64>(0) as u64 == epoch => Ok(()),
        Some(r) => Err(StoreError::Fenced(format!(
            "this process led as epoch {epoch}; {} took over as epoch {}",
            r.get::<_, String>(1),
            r.get::<_, i64>(0)
        ))),
        None => Err(StoreError::Fenced(format!(
            "this process led as epoch {epoch} but the database has no leader row"
        ))),
    }
}
