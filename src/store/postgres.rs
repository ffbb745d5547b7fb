//! The PostgreSQL backend (`store.url: postgres://...`): the same [`Store`] as SQLite, for
//! more than one machine. Same rows, same sealing (the database never sees message text, reply
//! text, answers or state rows in clear), same keyed pseudonyms for user and message ids and
//! state-row keys (the secret sealed in `secrets`), same key check at open, same retention.
//!
//! Connections, the statement timeout, the wait for the server and the migrations are in
//! [`super::pg`]. Every method runs its statements through [`Pg::block`]: the trait is
//! synchronous, like the SQLite backend's.

use std::sync::Arc;

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::audit::{purge_record, AuditAction, PurgeCutoffs, PurgeReport};
use super::crypto::{answer_aad, row_aad, state_aad, Keyring};
use super::key_check;
use super::pg::{exec_pipelined, prepare, store_err, Pg, PgSettings};
use super::pg_batch::{insert_audit, PgBatch};
use super::pg_lease::{fence_check, FENCE_SQL};
use super::pseudonyms::{Pseudonyms, SECRET_NAME};
use super::{
    AnswerKind, AnswerRow, AuditRecord, ConversationRecord, Counts, FeedbackKind, GroupBy, Record,
    RowCounts, StatsFilter, Store, StoreError, StoredConversation, Timings, VariantCounts,
};
use crate::durable::StoredRow;
use crate::types::{Action, Source};

/// Numbered migrations (`intentd_schema` holds how many are applied). A fresh PostgreSQL
/// database has no legacy to convert, so migration 1 is today's whole schema. Never edit an
/// applied migration: append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: the schema of SQLite migrations 1-6, in PostgreSQL's types
    r#"
    CREATE TABLE conversations (
        id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        bot_id        TEXT NOT NULL,
        chat_id       TEXT NOT NULL,
        user_id       TEXT NOT NULL,
        message_id    TEXT NOT NULL,
        at_ms         BIGINT NOT NULL,
        sent_at_ms    BIGINT NOT NULL DEFAULT 0,
        intent        TEXT NOT NULL,
        confidence    DOUBLE PRECISION NOT NULL,
        source        TEXT NOT NULL,
        action        TEXT NOT NULL,
        triggered     BOOLEAN NOT NULL,
        auto_reply    BOOLEAN NOT NULL,
        variant_id    TEXT NOT NULL,
        experiment    TEXT NOT NULL,
        tokenize_us   BIGINT NOT NULL,
        inference_us  BIGINT NOT NULL,
        queue_us      BIGINT NOT NULL,
        total_us      BIGINT NOT NULL,
        model_version TEXT NOT NULL,
        reason        TEXT NOT NULL,
        key_id        TEXT NOT NULL,
        sealed        BYTEA NOT NULL
    );
    -- A retried Classify of the same message replaces its row instead of counting twice.
    CREATE UNIQUE INDEX conversations_message ON conversations(bot_id, message_id) WHERE message_id <> '';
    CREATE INDEX conversations_bot_at ON conversations(bot_id, at_ms);
    CREATE INDEX conversations_at ON conversations(at_ms);
    CREATE INDEX conversations_experiment ON conversations(experiment, variant_id) WHERE experiment <> '';

    CREATE TABLE feedback (
        id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        bot_id     TEXT NOT NULL,
        message_id TEXT NOT NULL,
        kind       TEXT NOT NULL,
        variant_id TEXT NOT NULL,
        at_ms      BIGINT NOT NULL
    );
    CREATE INDEX feedback_message ON feedback(bot_id, message_id, kind);
    CREATE INDEX feedback_at ON feedback(at_ms);

    CREATE TABLE human_replies (
        id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        bot_id     TEXT NOT NULL,
        chat_id    TEXT NOT NULL,
        message_id TEXT NOT NULL,
        at_ms      BIGINT NOT NULL
    );
    CREATE INDEX human_replies_bot_at ON human_replies(bot_id, at_ms);
    CREATE INDEX human_replies_at ON human_replies(at_ms);
    CREATE INDEX human_replies_message ON human_replies(bot_id, message_id);

    CREATE TABLE audit (
        id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at_ms  BIGINT NOT NULL,
        actor  TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_at ON audit(at_ms);

    CREATE TABLE answers (
        id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        bot_id TEXT NOT NULL,
        kind   TEXT NOT NULL,
        key    TEXT NOT NULL,
        at_ms  BIGINT NOT NULL,
        key_id TEXT NOT NULL,
        sealed BYTEA NOT NULL,
        UNIQUE (bot_id, kind, key)
    );
    CREATE INDEX answers_at ON answers(at_ms);

    CREATE TABLE key_checks (
        key_id TEXT PRIMARY KEY,
        sealed BYTEA NOT NULL
    );

    CREATE TABLE secrets (
        name   TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        sealed BYTEA NOT NULL
    );

    -- Byte order ("C"), whatever the database's locale: queue positions are zero-padded
    -- digits read back and range-deleted in order, below every `s~` pseudonym.
    CREATE TABLE playbook_state (
        kind   TEXT COLLATE "C" NOT NULL,
        key    TEXT COLLATE "C" NOT NULL,
        key_id TEXT NOT NULL,
        sealed BYTEA NOT NULL,
        PRIMARY KEY (kind, key)
    );
    "#,
    // 2: the playbook's runtime state decided in the database by every replica
    // (`pg_state.rs`). Byte order ("C") for the pseudonym keys, whatever the locale.
    r#"
    CREATE TABLE IF NOT EXISTS playbook_groups (
        key           TEXT COLLATE "C" PRIMARY KEY,
        bot           TEXT COLLATE "C" NOT NULL,
        version       BIGINT NOT NULL,
        -- When each open or claimed handoff opened: the bot's open handoffs are one query.
        open_handoffs BIGINT[] NOT NULL,
        -- The chat's last activity (NULL: no timers), for the sweep of idle chats.
        active_ms     BIGINT,
        key_id        TEXT NOT NULL,
        sealed        BYTEA NOT NULL
    );
    CREATE INDEX IF NOT EXISTS playbook_groups_bot ON playbook_groups(bot);

    CREATE TABLE IF NOT EXISTS playbook_users (
        key     TEXT COLLATE "C" PRIMARY KEY,
        version BIGINT NOT NULL,
        key_id  TEXT NOT NULL,
        sealed  BYTEA NOT NULL
    );

    -- Queue ids come from sequences, so a row's id is known before it is sealed (the sealed
    -- body is bound to it) and ids grow in queue order.
    CREATE SEQUENCE IF NOT EXISTS playbook_jobs_id;
    CREATE TABLE IF NOT EXISTS playbook_jobs (
        id     BIGINT PRIMARY KEY,
        at_ms  BIGINT NOT NULL,
        -- The key of the job's group (a chat with a job queued is not idle).
        chat   TEXT COLLATE "C" NOT NULL,
        bytes  BIGINT NOT NULL,
        key_id TEXT NOT NULL,
        sealed BYTEA NOT NULL
    );
    CREATE INDEX IF NOT EXISTS playbook_jobs_at ON playbook_jobs(at_ms);
    CREATE INDEX IF NOT EXISTS playbook_jobs_chat ON playbook_jobs(chat);

    CREATE SEQUENCE IF NOT EXISTS playbook_reviews_id;
    CREATE TABLE IF NOT EXISTS playbook_reviews (
        id     BIGINT PRIMARY KEY,
        at_ms  BIGINT NOT NULL,
        bytes  BIGINT NOT NULL,
        key_id TEXT NOT NULL,
        sealed BYTEA NOT NULL
    );

    -- The (bot, chat, message id)s already queued for review, oldest first.
    CREATE TABLE IF NOT EXISTS playbook_reviewed (
        id    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        key   TEXT COLLATE "C" NOT NULL UNIQUE
    );

    CREATE SEQUENCE IF NOT EXISTS playbook_dropped_id;
    CREATE TABLE IF NOT EXISTS playbook_dropped (
        id     BIGINT PRIMARY KEY,
        at_ms  BIGINT NOT NULL,
        bytes  BIGINT NOT NULL,
        key_id TEXT NOT NULL,
        sealed BYTEA NOT NULL
    );
    "#,
    // 3: the outbox shared by replicas that all serve (`leader.followers: serve`,
    // `pg_outbox.rs`): order within a bot from the sequence; an item put back goes first.
    r#"
    CREATE SEQUENCE IF NOT EXISTS outbox_shared_pos;
    CREATE TABLE IF NOT EXISTS outbox_shared (
        id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        -- Order within a bot: from the sequence; an item put back goes before the first.
        pos       BIGINT NOT NULL DEFAULT nextval('outbox_shared_pos'),
        bot       TEXT NOT NULL,
        chat      TEXT NOT NULL,
        queued_ms BIGINT NOT NULL,
        key_id    TEXT NOT NULL,
        sealed    BYTEA NOT NULL
    );
    CREATE INDEX IF NOT EXISTS outbox_shared_bot_pos ON outbox_shared(bot, pos);
    "#,
    // 4: a decision counts the open handoffs of its bot's other groups; only the groups that
    // have one are worth visiting (`pg_state.rs`, VIEW_SQL).
    r#"
    CREATE INDEX IF NOT EXISTS playbook_groups_bot_open ON playbook_groups(bot)
        WHERE cardinality(open_handoffs) > 0;
    "#,
];

/// Serialises the start-up checks of replicas starting together (one pseudonym secret).
const START_LOCK: i64 = 7_316_021_501;

/// PostgreSQL implementation of [`Store`].
pub struct PgStore {
    pg: Pg,
    keyring: Arc<Keyring>,
    pseudonyms: Pseudonyms,
    /// Set when this process holds the leader lease: every commit checks it still does.
    leader_epoch: Option<u64>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pg", &self.pg)
            .field("keyring", &self.keyring)
            .finish()
    }
}

fn parse_action(s: &str) -> Result<Action, StoreError> {
    Action::parse(s).ok_or_else(|| StoreError::Db(format!("unknown action '{s}' in conversations")))
}

fn parse_source(s: &str) -> Result<Source, StoreError> {
    Source::parse(s).ok_or_else(|| StoreError::Db(format!("unknown source '{s}' in conversations")))
}

fn parse_kind(s: &str) -> Result<AnswerKind, StoreError> {
    AnswerKind::parse(s).ok_or_else(|| StoreError::Db(format!("unknown answer kind '{s}'")))
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// `EXISTS` a feedback row of `kind` for the conversation row `c`.
fn has_feedback(kind: FeedbackKind) -> String {
    format!(
        "EXISTS(SELECT 1 FROM feedback f WHERE f.bot_id = c.bot_id AND f.message_id = c.message_id \
         AND c.message_id <> '' AND f.kind = '{}')",
        kind.as_str()
    )
}

/// The count columns of a conversations query, read back by [`counts_of`] from column 1 on
/// (column 0 is the group's key).
fn count_columns() -> String {
    let clicked = has_feedback(FeedbackKind::Clicked);
    let n = |cond: &str| format!("COUNT(*) FILTER (WHERE {cond})");
    [
        // A proactive send is logged (for feedback and conversions) but is no message.
        n("c.source <> 'proactive'"),
        n("c.triggered"),
        n("c.triggered AND c.auto_reply"),
        n("c.auto_reply"),
        n(&format!("c.auto_reply AND {clicked}")),
        n("c.action = 'handoff'"),
        n("c.action = 'block'"),
        n(&has_feedback(FeedbackKind::Resolved)),
        n(&has_feedback(FeedbackKind::Unresolved)),
        n(&clicked),
        n(&has_feedback(FeedbackKind::ThumbsUp)),
        n(&has_feedback(FeedbackKind::ThumbsDown)),
    ]
    .join(", ")
}

/// The counts of a row of [`count_columns`] (human replies come from their own query).
fn counts_of(r: &tokio_postgres::Row) -> Counts {
    let f = |i: usize| u(r.get::<_, i64>(i));
    Counts {
        messages: f(1),
        triggers: f(2),
        triggers_replied: f(3),
        auto_replies: f(4),
        auto_replies_clicked: f(5),
        handoffs: f(6),
        blocks: f(7),
        resolved: f(8),
        unresolved: f(9),
        clicks: f(10),
        thumbs_up: f(11),
        thumbs_down: f(12),
        human_replies: 0,
    }
}

/// Human replies are counted by their own time and chat (a reply can come long after the
/// message it answers).
const HUMAN_FILTER: &str =
    "($1 = '' OR h.bot_id = $1) AND ($2 = '' OR h.chat_id = $2) AND h.at_ms >= $3 AND h.at_ms <= $4";

const CONV_FILTER: &str =
    "($1 = '' OR c.bot_id = $1) AND ($2 = '' OR c.chat_id = $2) AND c.at_ms >= $3 AND c.at_ms <= $4";

impl PgStore {
    /// Connects (waiting for the server), applies the migrations, checks that the key ring
    /// opens what the database holds (a wrong key stops the start) and reads or makes the
    /// pseudonym secret.
    pub fn open(
        url: &str,
        settings: &PgSettings,
        keyring: Arc<Keyring>,
        leader_epoch: Option<u64>,
    ) -> Result<Self, StoreError> {
        let pg = Pg::connect(url, settings, MIGRATIONS)?;
        let pseudonyms = pg.block(start(&pg, &keyring))?;
        Ok(Self {
            pg,
            keyring,
            pseudonyms,
            leader_epoch,
        })
    }

    /// The pool (for the playbook state of several replicas).
    pub fn pg(&self) -> &Pg {
        &self.pg
    }

    /// Runs `f` with a pooled connection, waiting on this thread.
    fn with_client<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&deadpool_postgres::Object) -> Result<T, StoreError>,
    {
        self.pg.block(async {
            let client = self.pg.client().await?;
            f(&client).await
        })
    }
}

/// Deletes the rows of `table` with `at_ms < before`; how many went.
async fn delete_before(tx: &Transaction<'_>, table: &str, before: i64) -> Result<u64, StoreError> {
    tx.execute(&format!("DELETE FROM {table} WHERE at_ms < $1"), &[&before])
        .await
        .map_err(store_err)
}

/// The start-up checks, in one transaction under an advisory lock: the key-check values
/// ([`key_check::check`]) and the pseudonym secret (read, re-sealed with the current key when
/// an older one sealed it, or made).
async fn start(pg: &Pg, keyring: &Keyring) -> Result<Pseudonyms, StoreError> {
    let origin = pg.origin();
    let mut client = pg.client().await?;
    let tx = client.transaction().await.map_err(store_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&START_LOCK])
        .await
        .map_err(store_err)?;
    let stored: Vec<(String, Vec<u8>)> = tx
        .query("SELECT key_id, sealed FROM key_checks", &[])
        .await
        .map_err(store_err)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let outcome = key_check::check(keyring, &stored, &origin)?;
    for key_id in &outcome.absent {
        for table in key_check::SEALED_TABLES {
            let used: bool = tx
                .query_one(
                    &format!("SELECT EXISTS(SELECT 1 FROM {table} WHERE key_id = $1)"),
                    &[key_id],
                )
                .await
                .map_err(store_err)?
                .get(0);
            if used {
                return Err(key_check::missing_key(&origin, key_id));
            }
        }
        // Nothing sealed with it is left (retention): the key may go.
        tx.execute("DELETE FROM key_checks WHERE key_id = $1", &[key_id])
            .await
            .map_err(store_err)?;
    }
    if let Some(sealed) = outcome.record {
        tx.execute(
            "INSERT INTO key_checks (key_id, sealed) VALUES ($1, $2)
             ON CONFLICT (key_id) DO UPDATE SET sealed = EXCLUDED.sealed",
            &[&sealed.key_id, &sealed.blob],
        )
        .await
        .map_err(store_err)?;
    }
    let secret = tx
        .query_opt(
            "SELECT key_id, sealed FROM secrets WHERE name = $1",
            &[&SECRET_NAME],
        )
        .await
        .map_err(store_err)?;
    let (this, reseal) = match secret {
        Some(row) => {
            let key_id: String = row.get(0);
            let sealed: Vec<u8> = row.get(1);
            let this = Pseudonyms::open_sealed(keyring, &key_id, &sealed, &origin)?;
            (this, key_id != keyring.current_id())
        }
        None => (Pseudonyms::generate(), true),
    };
    if reseal {
        let sealed = this.seal_secret(keyring)?;
        tx.execute(
            "INSERT INTO secrets (name, key_id, sealed) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET key_id = EXCLUDED.key_id, sealed = EXCLUDED.sealed",
            &[&SECRET_NAME, &sealed.key_id, &sealed.blob],
        )
        .await
        .map_err(store_err)?;
    }
    tx.commit().await.map_err(store_err)?;
    Ok(this)
}

/// The pseudonym secret [`PgStore::open`] made, for another user of the same database (the
/// playbook state): one secret per database, so this never makes one.
pub(crate) async fn stored_pseudonyms(
    pg: &Pg,
    keyring: &Keyring,
) -> Result<Pseudonyms, StoreError> {
    let origin = pg.origin();
    let client = pg.client().await?;
    let row = client
        .query_opt(
            "SELECT key_id, sealed FROM secrets WHERE name = $1",
            &[&SECRET_NAME],
        )
        .await
        .map_err(store_err)?
        .ok_or_else(|| {
            StoreError::Config(format!(
                "{origin}: no pseudonym secret yet; open the store on this database first \
                 (the store makes the secret at its first start)"
            ))
        })?;
    let key_id: String = row.get(0);
    let sealed: Vec<u8> = row.get(1);
    Pseudonyms::open_sealed(keyring, &key_id, &sealed, &origin)
}

impl Store for PgStore {
    fn write_batch(&self, records: &[Record]) -> Result<(), StoreError> {
        // Sealing and pseudonyms are CPU work: done before a connection is taken.
        let batch = PgBatch::build(records, &self.keyring, &self.pseudonyms)?;
        let statements = batch.statements();
        self.pg.block(async {
            let mut client = self.pg.client().await?;
            let tx = client.transaction().await.map_err(store_err)?;
            // A leader first checks it still leads (fencing: store/pg_lease.rs); the check
            // and the writes go out as one pipeline, and nothing commits unless it passed.
            let fence = match self.leader_epoch {
                Some(epoch) => Some((epoch, prepare(&tx, FENCE_SQL).await?)),
                None => None,
            };
            let fenced = async {
                match &fence {
                    Some((epoch, stmt)) => fence_check(&tx, stmt, *epoch).await,
                    None => Ok(()),
                }
            };
            exec_pipelined(&tx, fenced, &statements).await?;
            tx.commit().await.map_err(store_err)
        })
    }

    fn counts(
        &self,
        filter: &StatsFilter,
        by: GroupBy,
    ) -> Result<Vec<(String, Counts)>, StoreError> {
        let (conv_key, human_key, only_variants) = match by {
            GroupBy::Total => ("''::text", "''::text", false),
            GroupBy::Chat => ("c.chat_id", "h.chat_id", false),
            GroupBy::Intent => ("c.intent", "COALESCE(c.intent, '')", false),
            GroupBy::Variant => ("c.variant_id", "COALESCE(c.variant_id, '')", true),
        };
        let group = if by == GroupBy::Total {
            ""
        } else {
            "GROUP BY 1 ORDER BY 1"
        };
        let conv_sql = format!(
            "SELECT {conv_key}, {} FROM conversations c WHERE {CONV_FILTER} {} {group}",
            count_columns(),
            if only_variants {
                "AND c.variant_id <> ''"
            } else {
                ""
            },
        );
        let human_sql = format!(
            "SELECT {human_key}, COUNT(*) FROM human_replies h
             LEFT JOIN conversations c ON c.bot_id = h.bot_id AND c.message_id = h.message_id AND h.message_id <> ''
             WHERE {HUMAN_FILTER}
             {group}"
        );
        let p: [&(dyn ToSql + Sync); 4] = [
            &filter.bot_id,
            &filter.chat_id,
            &filter.from_ms,
            &filter.to_ms,
        ];
        let (conv, human) = self.with_client(async |client| {
            let conv = client.query(&conv_sql, &p).await.map_err(store_err)?;
            let human = client.query(&human_sql, &p).await.map_err(store_err)?;
            Ok((conv, human))
        })?;
        let mut out: std::collections::BTreeMap<String, Counts> = Default::default();
        for r in conv {
            let counts = counts_of(&r);
            // The one row of an ungrouped count over nothing (a window of proactive sends
            // only has no messages but does have exposures: it is kept).
            if counts == Counts::default() {
                continue;
            }
            out.insert(r.get(0), counts);
        }
        for r in human {
            let key: String = r.get(0);
            let n: i64 = r.get(1);
            if n == 0 || (only_variants && key.is_empty()) {
                continue;
            }
            out.entry(key).or_default().human_replies += u(n);
        }
        if by == GroupBy::Total && out.is_empty() {
            out.insert(String::new(), Counts::default());
        }
        Ok(out.into_iter().collect())
    }

    fn counts_by_step(
        &self,
        filter: &StatsFilter,
        step_ms: i64,
    ) -> Result<Vec<(u64, Counts)>, StoreError> {
        // bigint / bigint is integer division: the step's index.
        let conv_sql = format!(
            "SELECT (c.at_ms - $3) / $5, {} FROM conversations c WHERE {CONV_FILTER}
             GROUP BY 1 ORDER BY 1",
            count_columns(),
        );
        let human_sql = format!(
            "SELECT (h.at_ms - $3) / $5, COUNT(*) FROM human_replies h WHERE {HUMAN_FILTER}
             GROUP BY 1 ORDER BY 1"
        );
        let p: [&(dyn ToSql + Sync); 5] = [
            &filter.bot_id,
            &filter.chat_id,
            &filter.from_ms,
            &filter.to_ms,
            &step_ms,
        ];
        let (conv, human) = self.with_client(async |client| {
            let conv = client.query(&conv_sql, &p).await.map_err(store_err)?;
            let human = client.query(&human_sql, &p).await.map_err(store_err)?;
            Ok((conv, human))
        })?;
        let mut out: std::collections::BTreeMap<u64, Counts> = Default::default();
        for r in conv {
            out.insert(u(r.get(0)), counts_of(&r));
        }
        for r in human {
            out.entry(u(r.get(0))).or_default().human_replies += u(r.get(1));
        }
        Ok(out.into_iter().collect())
    }

    fn variant_counts(
        &self,
        filter: &StatsFilter,
        experiment: &str,
    ) -> Result<Vec<VariantCounts>, StoreError> {
        let sql = format!(
            "SELECT c.experiment, c.variant_id, COUNT(*), COUNT(*) FILTER (WHERE {})
             FROM conversations c
             WHERE {CONV_FILTER} AND c.experiment <> '' AND ($5 = '' OR c.experiment = $5) AND c.auto_reply
             GROUP BY c.experiment, c.variant_id ORDER BY c.experiment, c.variant_id",
            has_feedback(FeedbackKind::Clicked)
        );
        let rows = self.with_client(async |client| {
            client
                .query(
                    &sql,
                    &[
                        &filter.bot_id,
                        &filter.chat_id,
                        &filter.from_ms,
                        &filter.to_ms,
                        &experiment,
                    ],
                )
                .await
                .map_err(store_err)
        })?;
        Ok(rows
            .iter()
            .map(|r| VariantCounts {
                experiment: r.get(0),
                variant_id: r.get(1),
                exposures: u(r.get(2)),
                conversions: u(r.get(3)),
            })
            .collect())
    }

    fn conversations(
        &self,
        from_ms: i64,
        to_ms: i64,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredConversation>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.with_client(async |client| {
            client
                .query(
                    "SELECT id, bot_id, chat_id, user_id, message_id, at_ms, intent, confidence, source, action,
                            triggered, variant_id, experiment, tokenize_us, inference_us, queue_us, total_us,
                            model_version, reason, key_id, sealed, sent_at_ms
                     FROM conversations WHERE at_ms >= $1 AND at_ms <= $2 AND id > $3 ORDER BY id LIMIT $4",
                    &[&from_ms, &to_ms, &after_id, &limit],
                )
                .await
                .map_err(store_err)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.get(0);
            let bot_id: String = r.get(1);
            let message_id: String = r.get(4);
            let key_id: String = r.get(19);
            let sealed: Vec<u8> = r.get(20);
            let texts = self
                .keyring
                .open_texts(&key_id, &sealed, &row_aad(&bot_id, &message_id))
                .map_err(|e| StoreError::Crypto(format!("conversation row {id}: {e}")))?;
            let record = ConversationRecord {
                bot_id,
                chat_id: r.get(2),
                user_id: r.get(3),
                message_id,
                at_ms: r.get(5),
                sent_at_ms: r.get(21),
                text: texts.text,
                intent: r.get(6),
                confidence: r.get::<_, f64>(7) as f32,
                source: parse_source(r.get(8))?,
                action: parse_action(r.get(9))?,
                triggered: r.get(10),
                reply_text: texts.reply,
                variant_id: r.get(11),
                experiment: r.get(12),
                timings: Timings {
                    tokenize_us: u(r.get(13)),
                    inference_us: u(r.get(14)),
                    queue_us: u(r.get(15)),
                    total_us: u(r.get(16)),
                },
                model_version: r.get(17),
                reason: r.get(18),
                answer: None,
            };
            out.push(StoredConversation { id, key_id, record });
        }
        Ok(out)
    }

    fn audit_rows(&self, from_ms: i64, to_ms: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = self.with_client(async |client| {
            client
                .query(
                    "SELECT at_ms, actor, action, detail FROM audit WHERE at_ms >= $1 AND at_ms <= $2 ORDER BY at_ms, id",
                    &[&from_ms, &to_ms],
                )
                .await
                .map_err(store_err)
        })?;
        rows.iter()
            .map(|r| {
                let action: &str = r.get(2);
                Ok(AuditRecord {
                    at_ms: r.get(0),
                    actor: r.get(1),
                    action: AuditAction::parse(action).ok_or_else(|| {
                        StoreError::Db(format!("unknown audit action '{action}'"))
                    })?,
                    detail: r.get(3),
                })
            })
            .collect()
    }

    fn purge(&self, cutoffs: &PurgeCutoffs) -> Result<PurgeReport, StoreError> {
        cutoffs.check_floor()?;
        self.pg.block(async {
            let mut client = self.pg.client().await?;
            let tx = client.transaction().await.map_err(store_err)?;
            let report = PurgeReport {
                conversations: delete_before(&tx, "conversations", cutoffs.data_before_ms).await?,
                feedback: delete_before(&tx, "feedback", cutoffs.data_before_ms).await?,
                human_replies: delete_before(&tx, "human_replies", cutoffs.data_before_ms).await?,
                audit: delete_before(&tx, "audit", cutoffs.audit_before_ms).await?,
            };
            delete_before(&tx, "answers", cutoffs.answers_before_ms).await?;
            insert_audit(&tx, &purge_record(cutoffs, &report)).await?;
            tx.commit().await.map_err(store_err)?;
            Ok(report)
        })
    }

    fn row_counts(&self) -> Result<RowCounts, StoreError> {
        let r = self.with_client(async |client| {
            client
                .query_one(
                    "SELECT (SELECT COUNT(*) FROM conversations), (SELECT COUNT(*) FROM feedback),
                            (SELECT COUNT(*) FROM human_replies), (SELECT COUNT(*) FROM audit)",
                    &[],
                )
                .await
                .map_err(store_err)
        })?;
        Ok(RowCounts {
            conversations: u(r.get(0)),
            feedback: u(r.get(1)),
            human_replies: u(r.get(2)),
            audit: u(r.get(3)),
        })
    }

    fn answer_keys(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> Result<(Vec<(String, AnswerKind, String, i64)>, bool), StoreError> {
        let take = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = self.with_client(async |client| {
            client
                .query(
                    "SELECT bot_id, kind, key, at_ms FROM answers WHERE at_ms >= $1 ORDER BY at_ms DESC LIMIT $2",
                    &[&since_ms, &take],
                )
                .await
                .map_err(store_err)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push((r.get(0), parse_kind(r.get(1))?, r.get(2), r.get(3)));
        }
        let complete = out.len() <= limit;
        out.truncate(limit);
        out.reverse();
        Ok((out, complete))
    }

    fn answer(
        &self,
        bot_id: &str,
        kind: AnswerKind,
        key: &str,
    ) -> Result<Option<AnswerRow>, StoreError> {
        let stored = self.pseudonyms.message(bot_id, key);
        let row = self.with_client(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT at_ms, key_id, sealed FROM answers WHERE bot_id = $1 AND kind = $2 AND key = $3",
                )
                .await
                .map_err(store_err)?;
            client
                .query_opt(&stmt, &[&bot_id, &kind.as_str(), &stored])
                .await
                .map_err(store_err)
        })?;
        let Some(row) = row else {
            return Ok(None);
        };
        let key_id: String = row.get(1);
        let sealed: Vec<u8> = row.get(2);
        let body = self
            .keyring
            .open(&key_id, &sealed, &answer_aad(kind, bot_id, &stored))
            .map_err(|e| StoreError::Crypto(format!("answer of {bot_id}/{key}: {e}")))?;
        Ok(Some(AnswerRow {
            bot_id: bot_id.to_string(),
            kind,
            key: key.to_string(),
            at_ms: row.get(0),
            body,
        }))
    }

    fn unhelpful(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_client(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT bot_id, message_id FROM feedback \
                     WHERE kind IN ('thumbs_down', 'unresolved') AND at_ms BETWEEN $1 AND $2 \
                     GROUP BY bot_id, message_id ORDER BY max(at_ms) DESC LIMIT $3",
                )
                .await
                .map_err(store_err)?;
            let rows = client
                .query(&stmt, &[&from_ms, &to_ms, &limit])
                .await
                .map_err(store_err)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn has_message(&self, bot_id: &str, message_id: &str) -> Result<bool, StoreError> {
        let stored = self.pseudonyms.message(bot_id, message_id);
        self.with_client(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT EXISTS(SELECT 1 FROM conversations WHERE bot_id = $1 AND message_id = $2)",
                )
                .await
                .map_err(store_err)?;
            Ok(client
                .query_one(&stmt, &[&bot_id, &stored])
                .await
                .map_err(store_err)?
                .get(0))
        })
    }

    fn stored_message_id(&self, bot_id: &str, message_id: &str) -> String {
        self.pseudonyms.message(bot_id, message_id)
    }

    fn state_rows(&self) -> Result<Vec<StoredRow>, StoreError> {
        let rows = self.with_client(async |client| {
            client
                .query(
                    "SELECT kind, key, key_id, sealed FROM playbook_state ORDER BY kind, key",
                    &[],
                )
                .await
                .map_err(store_err)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (kind, key, key_id): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let sealed: Vec<u8> = r.get(3);
            let json = self
                .keyring
                .open(&key_id, &sealed, &state_aad(&kind, &key))
                .map_err(|e| StoreError::Crypto(format!("playbook state row {kind}/{key}: {e}")))?;
            out.push(StoredRow { kind, json });
        }
        Ok(out)
    }
}
