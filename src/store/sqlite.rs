//! The embedded backend: one SQLite file in WAL mode.
//!
//! `synchronous=NORMAL` with WAL makes every commit survive a process kill (the WAL is written
//! before COMMIT returns; only an OS crash / power cut can lose the last commits), at a fraction
//! of FULL's fsync cost. `secure_delete` overwrites purged rows so retention really removes them.
//! Writes go through one connection behind a mutex (the writer thread, purge, CLI audit rows);
//! reads use a second connection, which WAL lets run beside a write.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};

use super::audit::{self, implied_audit, purge_record, AuditAction, PurgeCutoffs, PurgeReport};
use super::crypto::{answer_aad, row_aad, state_aad, Keyring};
use super::pseudonyms::{seq_key, Pseudonyms};
use super::{private_files, sqlite_start};
use super::{
    AnswerKind, AnswerRow, AuditRecord, ConversationRecord, Counts, Durability, FeedbackKind,
    GroupBy, Record, RowCounts, StatsFilter, Store, StoreError, StoredConversation, Timings,
    VariantCounts,
};
use crate::durable::{RowKey, RowWrite, StoredRow};
use crate::types::{Action, Source};

/// Numbered schema migrations; `PRAGMA user_version` holds how many are applied.
/// Never edit an applied migration: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema
    r#"
    CREATE TABLE conversations (
        id            INTEGER PRIMARY KEY,
        bot_id        TEXT NOT NULL,
        chat_id       TEXT NOT NULL,
        user_id       TEXT NOT NULL,
        message_id    TEXT NOT NULL,
        at_ms         INTEGER NOT NULL,
        intent        TEXT NOT NULL,
        confidence    REAL NOT NULL,
        source        TEXT NOT NULL,
        action        TEXT NOT NULL,
        triggered     INTEGER NOT NULL,
        auto_reply    INTEGER NOT NULL,
        variant_id    TEXT NOT NULL,
        experiment    TEXT NOT NULL,
        tokenize_us   INTEGER NOT NULL,
        inference_us  INTEGER NOT NULL,
        queue_us      INTEGER NOT NULL,
        total_us      INTEGER NOT NULL,
        model_version TEXT NOT NULL,
        reason        TEXT NOT NULL,
        key_id        TEXT NOT NULL,
        sealed        BLOB NOT NULL
    );
    -- A retried Classify of the same message replaces its row instead of counting twice.
    CREATE UNIQUE INDEX conversations_message ON conversations(bot_id, message_id) WHERE message_id <> '';
    CREATE INDEX conversations_bot_at ON conversations(bot_id, at_ms);
    CREATE INDEX conversations_at ON conversations(at_ms);
    CREATE INDEX conversations_experiment ON conversations(experiment, variant_id) WHERE experiment <> '';

    CREATE TABLE feedback (
        id         INTEGER PRIMARY KEY,
        bot_id     TEXT NOT NULL,
        message_id TEXT NOT NULL,
        kind       TEXT NOT NULL,
        variant_id TEXT NOT NULL,
        at_ms      INTEGER NOT NULL
    );
    CREATE INDEX feedback_message ON feedback(bot_id, message_id, kind);
    CREATE INDEX feedback_at ON feedback(at_ms);

    CREATE TABLE human_replies (
        id         INTEGER PRIMARY KEY,
        bot_id     TEXT NOT NULL,
        chat_id    TEXT NOT NULL,
        message_id TEXT NOT NULL,
        at_ms      INTEGER NOT NULL
    );
    CREATE INDEX human_replies_bot_at ON human_replies(bot_id, at_ms);
    CREATE INDEX human_replies_at ON human_replies(at_ms);

    CREATE TABLE audit (
        id     INTEGER PRIMARY KEY,
        at_ms  INTEGER NOT NULL,
        actor  TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_at ON audit(at_ms);
    "#,
    // 2: first answers for idempotent retries (issue 13), sealed like the conversation texts
    r#"
    CREATE TABLE answers (
        id     INTEGER PRIMARY KEY,
        bot_id TEXT NOT NULL,
        kind   TEXT NOT NULL,
        key    TEXT NOT NULL,
        at_ms  INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        sealed BLOB NOT NULL
    );
    -- A rowid table: rows hold a sealed answer of several hundred bytes, too big for a
    -- WITHOUT ROWID b-tree.
    CREATE UNIQUE INDEX answers_key ON answers(bot_id, kind, key);
    CREATE INDEX answers_at ON answers(at_ms);
    "#,
    // 3: conversations are dated by the server's receive time (issue 12); the caller's own
    // time is kept beside it; a key-check value per key id that wrote the log
    r#"
    ALTER TABLE conversations ADD COLUMN sent_at_ms INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE key_checks (
        key_id TEXT PRIMARY KEY,
        sealed BLOB NOT NULL
    );
    "#,
    // 4: secrets of this database, sealed with the log key: the key of the user-id pseudonyms
    // (issue 12; the rows' user ids are converted in Rust when the secret is made)
    r#"
    CREATE TABLE secrets (
        name   TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        sealed BLOB NOT NULL
    );
    "#,
    // 5: message ids (and the answers' message / event ids) become keyed pseudonyms (issue 12):
    // converted, and the rows bound to them re-sealed, by `convert_message_ids` in the same
    // transaction
    r#"
    -- human replies are looked up by message id while converting and in the stats join
    CREATE INDEX IF NOT EXISTS human_replies_message ON human_replies(bot_id, message_id);
    "#,
    // 6: the playbook's and the outbox's state (issue 15), one sealed JSON row per key: `key` is
    // a keyed pseudonym (`s~...`) for rows named by ids, or a zero-padded queue position
    r#"
    CREATE TABLE IF NOT EXISTS playbook_state (
        kind   TEXT NOT NULL,
        key    TEXT NOT NULL,
        key_id TEXT NOT NULL,
        sealed BLOB NOT NULL,
        PRIMARY KEY (kind, key)
    );
    "#,
];

/// The last migration that is SQL alone: the ones after it need the pseudonym secret, which is
/// read (or made) once these have run and the key ring is checked.
const SQL_ONLY_MIGRATIONS: usize = 4;
/// The migration that turns stored message ids into pseudonyms.
const MESSAGE_ID_MIGRATION: usize = 5;

/// SQLite implementation of [`Store`].
pub struct SqliteStore {
    path: PathBuf,
    /// Shared with the checkpointer, which holds it to pause commits (see [`Checkpointer`]).
    write: Arc<Mutex<Connection>>,
    read: Mutex<Connection>,
    /// Idempotency lookups on every request: never behind a long stats query on `read`.
    lookup: Mutex<Connection>,
    checkpointer: Option<Checkpointer>,
    keyring: Arc<Keyring>,
    pseudonyms: Pseudonyms,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("keyring", &self.keyring)
            .finish()
    }
}

/// Page cache per connection, in KiB (SQLite's default is 2000): what bounds the store's own
/// memory. A 15-minute soak held it at 2.4 MB for all four connections together
/// (`intentd_store_memory_bytes`, benches/RESULTS.md).
const CACHE_KIB: i64 = 2048;

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", path.display())))?;
    // Another process (`intentd export` beside the server) may hold the write lock briefly.
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Db(format!(
            "{}: cannot switch to WAL mode (got {mode})",
            path.display()
        )));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous=NORMAL; PRAGMA secure_delete=ON; PRAGMA foreign_keys=ON; \
         PRAGMA cache_size=-{CACHE_KIB};"
    ))?;
    Ok(conn)
}

/// Applies the migrations not applied yet, up to number `through`, each in its own transaction:
/// its SQL, then `step(number, tx)` (the conversions done in Rust), then the new version.
fn migrate(
    conn: &mut Connection,
    path: &Path,
    through: usize,
    step: &dyn Fn(usize, &Transaction<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Db(format!(
            "{}: schema version {version} is newer than this intentd understands ({known}); \
             use a newer intentd or another database path",
            path.display()
        )));
    }
    let failed = |i: usize, e: &dyn std::fmt::Display| {
        StoreError::Db(format!("{}: migration {i} failed: {e}", path.display()))
    };
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(through)
        .skip(version as usize)
    {
        let number = i + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(sql).map_err(|e| failed(number, &e))?;
        step(number, &tx).map_err(|e| failed(number, &e))?;
        tx.pragma_update(None, "user_version", number as i64)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), version = number, "applied store migration");
    }
    Ok(())
}

/// Rows converted per query while migrating, so a big log is never all in memory.
const CONVERT_PAGE: i64 = 1_000;

/// Migration 5: every stored message id (conversations, feedback, human replies, the implied
/// audit rows, the answers' keys) becomes its pseudonym, and the sealed texts and answers,
/// whose associated data names the id, are opened with the clear id and sealed again (with the
/// current key) under the pseudonym.
fn convert_message_ids(
    tx: &Transaction<'_>,
    keyring: &Keyring,
    pseudonyms: &Pseudonyms,
) -> Result<(), StoreError> {
    let mut rows = 0usize;
    // Conversations: the id and the row's sealed texts together.
    let mut after = 0i64;
    loop {
        let page: Vec<(i64, String, String, String, Vec<u8>)> = tx
            .prepare_cached(
                "SELECT id, bot_id, message_id, key_id, sealed FROM conversations
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?
            .query_map(params![after, CONVERT_PAGE], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = page.last() else { break };
        after = last.0;
        let mut update = tx.prepare_cached(
            "UPDATE conversations SET message_id = ?1, key_id = ?2, sealed = ?3 WHERE id = ?4",
        )?;
        for (id, bot, clear, key_id, sealed) in page {
            let stored = pseudonyms.message(&bot, &clear);
            let texts = keyring
                .open_texts(&key_id, &sealed, &row_aad(&bot, &clear))
                .map_err(|e| StoreError::Crypto(format!("conversation row {id}: {e}")))?;
            let resealed =
                keyring.seal_texts(&texts.text, &texts.reply, &row_aad(&bot, &stored))?;
            update.execute(params![stored, resealed.key_id, resealed.blob, id])?;
            rows += 1;
        }
    }
    // Answers: the key and the sealed answer together.
    let mut after = 0i64;
    loop {
        let page: Vec<(i64, String, String, String, String, Vec<u8>)> = tx
            .prepare_cached(
                "SELECT id, bot_id, kind, key, key_id, sealed FROM answers
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?
            .query_map(params![after, CONVERT_PAGE], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = page.last() else { break };
        after = last.0;
        let mut update = tx.prepare_cached(
            "UPDATE answers SET key = ?1, key_id = ?2, sealed = ?3 WHERE id = ?4",
        )?;
        for (id, bot, kind, clear, key_id, sealed) in page {
            let kind = AnswerKind::parse(&kind)
                .ok_or_else(|| StoreError::Db(format!("unknown answer kind '{kind}'")))?;
            let stored = pseudonyms.message(&bot, &clear);
            let body = keyring
                .open(&key_id, &sealed, &answer_aad(kind, &bot, &clear))
                .map_err(|e| StoreError::Crypto(format!("answer of row {id}: {e}")))?;
            let resealed = keyring.seal(&body, &answer_aad(kind, &bot, &stored))?;
            update.execute(params![stored, resealed.key_id, resealed.blob, id])?;
            rows += 1;
        }
    }
    // Feedback and human replies: the id alone.
    for table in ["feedback", "human_replies"] {
        let mut after = 0i64;
        loop {
            let page: Vec<(i64, String, String)> = tx
                .prepare_cached(&format!(
                    "SELECT id, bot_id, message_id FROM {table} WHERE id > ?1 ORDER BY id LIMIT ?2"
                ))?
                .query_map(params![after, CONVERT_PAGE], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            let Some(last) = page.last() else { break };
            after = last.0;
            let mut update =
                tx.prepare_cached(&format!("UPDATE {table} SET message_id = ?1 WHERE id = ?2"))?;
            for (id, bot, clear) in page {
                update.execute(params![pseudonyms.message(&bot, &clear), id])?;
                rows += 1;
            }
        }
    }
    // The audit rows a handoff or block implied name the message (`audit::implied_audit`).
    let mut after = 0i64;
    loop {
        let page: Vec<(i64, String)> = tx
            .prepare_cached(
                "SELECT id, detail FROM audit WHERE id > ?1 AND actor = 'policy'
                 AND action IN ('handoff', 'block') ORDER BY id LIMIT ?2",
            )?
            .query_map(params![after, CONVERT_PAGE], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let Some(last) = page.last() else { break };
        after = last.0;
        let mut update = tx.prepare_cached("UPDATE audit SET detail = ?1 WHERE id = ?2")?;
        for (id, detail) in page {
            if let Some(detail) = audit::pseudonymise_implied_detail(
                &detail,
                |bot, clear| pseudonyms.message(bot, clear),
                |bot, clear| pseudonyms.user(bot, clear),
            ) {
                update.execute(params![detail, id])?;
                rows += 1;
            }
        }
    }
    if rows > 0 {
        tracing::info!(rows, "stored message ids replaced by keyed pseudonyms");
    }
    Ok(())
}

fn parse_action(s: &str) -> Result<Action, StoreError> {
    Action::parse(s).ok_or_else(|| StoreError::Db(format!("unknown action '{s}' in conversations")))
}

fn parse_source(s: &str) -> Result<Source, StoreError> {
    Source::parse(s).ok_or_else(|| StoreError::Db(format!("unknown source '{s}' in conversations")))
}

/// SQLite integers are i64; timings beyond that are clamped rather than wrapped.
fn us(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Opens (creating parent directories and the file) and migrates the database.
    pub fn open(path: &Path, keyring: Arc<Keyring>) -> Result<Self, StoreError> {
        Self::open_with(path, keyring, Durability::Full)
    }

    /// Opens (creating when missing) the database; `durability` sets when a commit returns.
    pub fn open_with(
        path: &Path,
        keyring: Arc<Keyring>,
        durability: Durability,
    ) -> Result<Self, StoreError> {
        private_files::prepare(path)?;
        let mut write = connect(path)?;
        // Readers never commit; only the writer's commits must reach the disk.
        write.execute_batch(&format!("PRAGMA synchronous={};", durability.synchronous()))?;
        sqlite_start::quick_check(&write, path)?;
        migrate(&mut write, path, SQL_ONLY_MIGRATIONS, &|_, _| Ok(()))?;
        sqlite_start::verify_key_checks(&write, &keyring, path)?;
        let pseudonyms = sqlite_start::load_or_create_pseudonyms(&mut write, &keyring, path)?;
        migrate(
            &mut write,
            path,
            MIGRATIONS.len(),
            &|number, tx| match number {
                MESSAGE_ID_MIGRATION => convert_message_ids(tx, &keyring, &pseudonyms),
                _ => Ok(()),
            },
        )?;
        // Commits only append to the WAL; folding it into the main file (a checkpoint, with
        // its fsyncs) happens on a thread of its own, never inside a caller's commit.
        write.execute_batch("PRAGMA wal_autocheckpoint=0;")?;
        let read = connect(path)?;
        let lookup = connect(path)?;
        let write = Arc::new(Mutex::new(write));
        let checkpointer = Checkpointer::start(connect(path)?, write.clone())?;
        private_files::tighten(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            write,
            read: Mutex::new(read),
            lookup: Mutex::new(lookup),
            checkpointer: Some(checkpointer),
            keyring,
            pseudonyms,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn insert(&self, tx: &Transaction<'_>, rec: &Record) -> Result<(), StoreError> {
        match rec {
            Record::Conversation(c) => {
                let user = self.pseudonyms.user(&c.bot_id, &c.user_id);
                let message = self.pseudonyms.message(&c.bot_id, &c.message_id);
                // The texts are bound to the id as stored, which is what a reader has.
                let sealed = self.keyring.seal_texts(
                    &c.text,
                    &c.reply_text,
                    &row_aad(&c.bot_id, &message),
                )?;
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO conversations (bot_id, chat_id, user_id, message_id, at_ms, intent,
                        confidence, source, action, triggered, auto_reply, variant_id, experiment, tokenize_us,
                        inference_us, queue_us, total_us, model_version, reason, key_id, sealed, sent_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
                )?
                .execute(params![
                    c.bot_id,
                    c.chat_id,
                    user,
                    message,
                    c.at_ms,
                    c.intent,
                    f64::from(c.confidence),
                    Source::as_str(c.source),
                    Action::as_str(c.action),
                    c.triggered,
                    c.is_auto_reply(),
                    c.variant_id,
                    c.experiment,
                    us(c.timings.tokenize_us),
                    us(c.timings.inference_us),
                    us(c.timings.queue_us),
                    us(c.timings.total_us),
                    c.model_version,
                    c.reason,
                    sealed.key_id,
                    sealed.blob,
                    c.sent_at_ms,
                ])?;
                if let Some(a) = implied_audit(c, &user, &message) {
                    insert_audit(tx, &a)?;
                }
                if let Some(a) = &c.answer {
                    let key = self.pseudonyms.message(&a.bot_id, &a.key);
                    let sealed = self
                        .keyring
                        .seal(&a.body, &answer_aad(a.kind, &a.bot_id, &key))?;
                    // A key answered before the window can be answered anew.
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO answers (bot_id, kind, key, at_ms, key_id, sealed)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        a.bot_id,
                        a.kind.as_str(),
                        key,
                        a.at_ms,
                        sealed.key_id,
                        sealed.blob
                    ])?;
                }
            }
            Record::Feedback(f) => {
                tx.prepare_cached(
                    "INSERT INTO feedback (bot_id, message_id, kind, variant_id, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    f.bot_id,
                    self.pseudonyms.message(&f.bot_id, &f.message_id),
                    f.kind.as_str(),
                    f.variant_id,
                    f.at_ms
                ])?;
            }
            Record::HumanReply(h) => {
                tx.prepare_cached(
                    "INSERT INTO human_replies (bot_id, chat_id, message_id, at_ms) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    h.bot_id,
                    h.chat_id,
                    self.pseudonyms.message(&h.bot_id, &h.message_id),
                    h.at_ms
                ])?;
            }
            Record::Audit(a) => insert_audit(tx, a)?,
            Record::State(writes) => self.write_state(tx, writes)?,
        }
        Ok(())
    }

    fn write_state(&self, tx: &Transaction<'_>, writes: &[RowWrite]) -> Result<(), StoreError> {
        for w in writes {
            match w {
                RowWrite::Put { kind, key, json } => {
                    let key = self.state_key(kind, key);
                    let sealed = self.keyring.seal(json, &state_aad(kind, &key))?;
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO playbook_state (kind, key, key_id, sealed)
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![
                        kind,
                        key,
                        sealed.key_id,
                        sealed.blob
                    ])?;
                }
                RowWrite::Delete { kind, key } => {
                    tx.prepare_cached("DELETE FROM playbook_state WHERE kind = ?1 AND key = ?2")?
                        .execute(params![kind, self.state_key(kind, key)])?;
                }
                RowWrite::DeleteBelow { kind, seq } => {
                    // Positions are zero-padded digits, so text order is their order (and
                    // every `s~` key sorts above them).
                    tx.prepare_cached("DELETE FROM playbook_state WHERE kind = ?1 AND key < ?2")?
                        .execute(params![kind, seq_key(*seq)])?;
                }
            }
        }
        Ok(())
    }

    fn state_key(&self, kind: &str, key: &RowKey) -> String {
        self.pseudonyms.state_key(kind, key)
    }
}

fn insert_audit(tx: &Transaction<'_>, a: &AuditRecord) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO audit (at_ms, actor, action, detail) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![a.at_ms, a.actor, a.action.as_str(), a.detail])?;
    Ok(())
}

/// `EXISTS` a feedback row of `kind` for the conversation row `c`.
fn has_feedback(kind: FeedbackKind) -> String {
    format!(
        "EXISTS(SELECT 1 FROM feedback f WHERE f.bot_id = c.bot_id AND f.message_id = c.message_id \
         AND c.message_id <> '' AND f.kind = '{}')",
        kind.as_str()
    )
}

/// The count columns of a grouped conversations query, read back by [`counts_of`] from
/// column 1 on (column 0 is the group's key).
fn count_columns() -> String {
    let clicked = has_feedback(FeedbackKind::Clicked);
    format!(
        "TOTAL(c.source <> 'proactive'), TOTAL(c.triggered), TOTAL(c.triggered * c.auto_reply),
         TOTAL(c.auto_reply), TOTAL(c.auto_reply * {clicked}),
         TOTAL(c.action = 'handoff'), TOTAL(c.action = 'block'),
         TOTAL({}), TOTAL({}), TOTAL({clicked}), TOTAL({}), TOTAL({})",
        has_feedback(FeedbackKind::Resolved),
        has_feedback(FeedbackKind::Unresolved),
        has_feedback(FeedbackKind::ThumbsUp),
        has_feedback(FeedbackKind::ThumbsDown),
    )
}

/// The counts of a row of [`count_columns`] (human replies come from their own query).
fn counts_of(r: &rusqlite::Row<'_>) -> Result<Counts, rusqlite::Error> {
    // TOTAL() is a float in SQLite; the sums are of 0/1 so the cast is exact.
    let f = |i: usize| -> Result<u64, rusqlite::Error> { Ok(r.get::<_, f64>(i)? as u64) };
    Ok(Counts {
        // A proactive send is logged (for feedback and conversions) but is no message.
        messages: f(1)?,
        triggers: f(2)?,
        triggers_replied: f(3)?,
        auto_replies: f(4)?,
        auto_replies_clicked: f(5)?,
        handoffs: f(6)?,
        blocks: f(7)?,
        resolved: f(8)?,
        unresolved: f(9)?,
        clicks: f(10)?,
        thumbs_up: f(11)?,
        thumbs_down: f(12)?,
        human_replies: 0,
    })
}

/// Human replies are counted by their own time and chat (a reply can come long after the
/// message it answers).
const HUMAN_FILTER: &str =
    "(?1 = '' OR h.bot_id = ?1) AND (?2 = '' OR h.chat_id = ?2) AND h.at_ms >= ?3 AND h.at_ms <= ?4";

const CONV_FILTER: &str =
    "(?1 = '' OR c.bot_id = ?1) AND (?2 = '' OR c.chat_id = ?2) AND c.at_ms >= ?3 AND c.at_ms <= ?4";

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store for SqliteStore {
    fn write_batch(&self, records: &[Record]) -> Result<(), StoreError> {
        let mut conn = self.write.lock();
        let tx = conn.transaction()?;
        for rec in records {
            self.insert(&tx, rec)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn counts(
        &self,
        filter: &StatsFilter,
        by: GroupBy,
    ) -> Result<Vec<(String, Counts)>, StoreError> {
        let (conv_key, human_key, only_variants) = match by {
            GroupBy::Total => ("''", "''", false),
            GroupBy::Chat => ("c.chat_id", "h.chat_id", false),
            GroupBy::Intent => ("c.intent", "COALESCE(c.intent, '')", false),
            GroupBy::Variant => ("c.variant_id", "COALESCE(c.variant_id, '')", true),
        };
        let conv_sql = format!(
            "SELECT {conv_key} AS k, {}
             FROM conversations c WHERE {CONV_FILTER} {}
             GROUP BY k ORDER BY k",
            count_columns(),
            if only_variants {
                "AND c.variant_id <> ''"
            } else {
                ""
            },
        );
        let human_sql = format!(
            "SELECT {human_key} AS k, COUNT(*) FROM human_replies h
             LEFT JOIN conversations c ON c.bot_id = h.bot_id AND c.message_id = h.message_id AND h.message_id <> ''
             WHERE {HUMAN_FILTER}
             GROUP BY k ORDER BY k"
        );
        let p = params![filter.bot_id, filter.chat_id, filter.from_ms, filter.to_ms];
        let conn = self.read.lock();
        let mut out: std::collections::BTreeMap<String, Counts> = Default::default();
        {
            let mut stmt = conn.prepare_cached(&conv_sql)?;
            let mut rows = stmt.query(p)?;
            while let Some(r) = rows.next()? {
                out.insert(r.get(0)?, counts_of(r)?);
            }
        }
        {
            let mut stmt = conn.prepare_cached(&human_sql)?;
            let mut rows = stmt.query(p)?;
            while let Some(r) = rows.next()? {
                let key: String = r.get(0)?;
                if only_variants && key.is_empty() {
                    continue;
                }
                out.entry(key).or_default().human_replies += u(r.get(1)?);
            }
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
        // Both operands are integers, so `/` is integer division: the step's index.
        let conv_sql = format!(
            "SELECT (c.at_ms - ?3) / ?5 AS k, {}
             FROM conversations c WHERE {CONV_FILTER}
             GROUP BY k ORDER BY k",
            count_columns(),
        );
        let human_sql = format!(
            "SELECT (h.at_ms - ?3) / ?5 AS k, COUNT(*) FROM human_replies h
             WHERE {HUMAN_FILTER}
             GROUP BY k ORDER BY k"
        );
        let p = params![
            filter.bot_id,
            filter.chat_id,
            filter.from_ms,
            filter.to_ms,
            step_ms
        ];
        let conn = self.read.lock();
        let mut out: std::collections::BTreeMap<u64, Counts> = Default::default();
        {
            let mut stmt = conn.prepare_cached(&conv_sql)?;
            let mut rows = stmt.query(p)?;
            while let Some(r) = rows.next()? {
                out.insert(u(r.get(0)?), counts_of(r)?);
            }
        }
        {
            let mut stmt = conn.prepare_cached(&human_sql)?;
            let mut rows = stmt.query(p)?;
            while let Some(r) = rows.next()? {
                out.entry(u(r.get(0)?)).or_default().human_replies += u(r.get(1)?);
            }
        }
        Ok(out.into_iter().collect())
    }

    fn variant_counts(
        &self,
        filter: &StatsFilter,
        experiment: &str,
    ) -> Result<Vec<VariantCounts>, StoreError> {
        let sql = format!(
            "SELECT c.experiment, c.variant_id, COUNT(*), TOTAL({})
             FROM conversations c
             WHERE {CONV_FILTER} AND c.experiment <> '' AND (?5 = '' OR c.experiment = ?5) AND c.auto_reply = 1
             GROUP BY c.experiment, c.variant_id ORDER BY c.experiment, c.variant_id",
            has_feedback(FeedbackKind::Clicked)
        );
        let conn = self.read.lock();
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(
            params![
                filter.bot_id,
                filter.chat_id,
                filter.from_ms,
                filter.to_ms,
                experiment
            ],
            |r| {
                Ok(VariantCounts {
                    experiment: r.get(0)?,
                    variant_id: r.get(1)?,
                    exposures: u(r.get(2)?),
                    conversions: r.get::<_, f64>(3)? as u64,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn conversations(
        &self,
        from_ms: i64,
        to_ms: i64,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredConversation>, StoreError> {
        let conn = self.read.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, bot_id, chat_id, user_id, message_id, at_ms, intent, confidence, source, action,
                    triggered, variant_id, experiment, tokenize_us, inference_us, queue_us, total_us,
                    model_version, reason, key_id, sealed, sent_at_ms
             FROM conversations WHERE at_ms >= ?1 AND at_ms <= ?2 AND id > ?3 ORDER BY id LIMIT ?4",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = stmt.query(params![from_ms, to_ms, after_id, limit])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let bot_id: String = r.get(1)?;
            let message_id: String = r.get(4)?;
            let key_id: String = r.get(19)?;
            let sealed: Vec<u8> = r.get(20)?;
            let texts = self
                .keyring
                .open_texts(&key_id, &sealed, &row_aad(&bot_id, &message_id))
                .map_err(|e| StoreError::Crypto(format!("conversation row {id}: {e}")))?;
            let record = ConversationRecord {
                bot_id,
                chat_id: r.get(2)?,
                user_id: r.get(3)?,
                message_id,
                at_ms: r.get(5)?,
                sent_at_ms: r.get(21)?,
                text: texts.text,
                intent: r.get(6)?,
                confidence: r.get::<_, f64>(7)? as f32,
                source: parse_source(&r.get::<_, String>(8)?)?,
                action: parse_action(&r.get::<_, String>(9)?)?,
                triggered: r.get(10)?,
                reply_text: texts.reply,
                variant_id: r.get(11)?,
                experiment: r.get(12)?,
                timings: Timings {
                    tokenize_us: u(r.get(13)?),
                    inference_us: u(r.get(14)?),
                    queue_us: u(r.get(15)?),
                    total_us: u(r.get(16)?),
                },
                model_version: r.get(17)?,
                reason: r.get(18)?,
                answer: None,
            };
            out.push(StoredConversation { id, key_id, record });
        }
        Ok(out)
    }

    fn audit_rows(&self, from_ms: i64, to_ms: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.read.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT at_ms, actor, action, detail FROM audit WHERE at_ms >= ?1 AND at_ms <= ?2 ORDER BY at_ms, id",
        )?;
        let mut rows = stmt.query(params![from_ms, to_ms])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let action: String = r.get(2)?;
            out.push(AuditRecord {
                at_ms: r.get(0)?,
                actor: r.get(1)?,
                action: AuditAction::parse(&action)
                    .ok_or_else(|| StoreError::Db(format!("unknown audit action '{action}'")))?,
                detail: r.get(3)?,
            });
        }
        Ok(out)
    }

    fn purge(&self, cutoffs: &PurgeCutoffs) -> Result<PurgeReport, StoreError> {
        cutoffs.check_floor()?;
        let mut conn = self.write.lock();
        let tx = conn.transaction()?;
        let del = |table: &str, before: i64| -> Result<u64, StoreError> {
            Ok(tx.execute(&format!("DELETE FROM {table} WHERE at_ms < ?1"), [before])? as u64)
        };
        let report = PurgeReport {
            conversations: del("conversations", cutoffs.data_before_ms)?,
            feedback: del("feedback", cutoffs.data_before_ms)?,
            human_replies: del("human_replies", cutoffs.data_before_ms)?,
            audit: del("audit", cutoffs.audit_before_ms)?,
        };
        del("answers", cutoffs.answers_before_ms)?;
        insert_audit(&tx, &purge_record(cutoffs, &report))?;
        tx.commit()?;
        Ok(report)
    }

    fn row_counts(&self) -> Result<RowCounts, StoreError> {
        let conn = self.read.lock();
        let n = |t: &str| -> Result<u64, StoreError> {
            Ok(u(conn.query_row(
                &format!("SELECT COUNT(*) FROM {t}"),
                [],
                |r| r.get(0),
            )?))
        };
        Ok(RowCounts {
            conversations: n("conversations")?,
            feedback: n("feedback")?,
            human_replies: n("human_replies")?,
            audit: n("audit")?,
        })
    }

    fn answer_keys(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> Result<(Vec<(String, AnswerKind, String, i64)>, bool), StoreError> {
        let conn = self.read.lock();
        let mut stmt = conn.prepare(
            "SELECT bot_id, kind, key, at_ms FROM answers WHERE at_ms >= ?1 ORDER BY at_ms DESC LIMIT ?2",
        )?;
        let take = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let mut rows = stmt.query(params![since_ms, take])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let kind: String = r.get(1)?;
            let kind = AnswerKind::parse(&kind)
                .ok_or_else(|| StoreError::Db(format!("unknown answer kind '{kind}'")))?;
            out.push((r.get(0)?, kind, r.get(2)?, r.get(3)?));
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
        let conn = self.lookup.lock();
        let row: Option<(i64, String, Vec<u8>)> = conn
            .prepare_cached(
                "SELECT at_ms, key_id, sealed FROM answers WHERE bot_id = ?1 AND kind = ?2 AND key = ?3",
            )?
            .query_row(params![bot_id, kind.as_str(), stored], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((at_ms, key_id, sealed)) = row else {
            return Ok(None);
        };
        let body = self
            .keyring
            .open(&key_id, &sealed, &answer_aad(kind, bot_id, &stored))
            .map_err(|e| StoreError::Crypto(format!("answer of {bot_id}/{key}: {e}")))?;
        Ok(Some(AnswerRow {
            bot_id: bot_id.to_string(),
            kind,
            key: key.to_string(),
            at_ms,
            body,
        }))
    }

    fn unhelpful(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.read.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT bot_id, message_id FROM feedback \
             WHERE kind IN ('thumbs_down', 'unresolved') AND at_ms BETWEEN ?1 AND ?2 \
             GROUP BY bot_id, message_id ORDER BY max(at_ms) DESC LIMIT ?3",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![from_ms, to_ms, limit], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<Vec<(String, String)>, _>>()?;
        Ok(rows)
    }

    fn has_message(&self, bot_id: &str, message_id: &str) -> Result<bool, StoreError> {
        let conn = self.lookup.lock();
        let found = conn
            .prepare_cached("SELECT 1 FROM conversations WHERE bot_id = ?1 AND message_id = ?2")?
            .query_row(
                params![bot_id, self.pseudonyms.message(bot_id, message_id)],
                |_| Ok(()),
            )
            .optional()?;
        Ok(found.is_some())
    }

    fn stored_message_id(&self, bot_id: &str, message_id: &str) -> String {
        self.pseudonyms.message(bot_id, message_id)
    }

    /// SQLite's own count of the memory it has allocated, for every connection of the process
    /// (page caches, at most `CACHE_KIB` each, prepared statements, schema).
    fn memory_bytes(&self) -> Option<i64> {
        // SAFETY: a read of SQLite's global counter; callable at any time from any thread.
        Some(unsafe { rusqlite::ffi::sqlite3_memory_used() })
    }

    fn state_rows(&self) -> Result<Vec<StoredRow>, StoreError> {
        let conn = self.read.lock();
        let mut stmt = conn
            .prepare("SELECT kind, key, key_id, sealed FROM playbook_state ORDER BY kind, key")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (kind, key, key_id, sealed) = row?;
            let json = self
                .keyring
                .open(&key_id, &sealed, &state_aad(&kind, &key))
                .map_err(|e| StoreError::Crypto(format!("playbook state row {kind}/{key}: {e}")))?;
            out.push(StoredRow { kind, json });
        }
        Ok(out)
    }
}

/// How often the background checkpoint runs.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// WAL frames (pages) past which the checkpointer starts the log over: 16 MiB of 4 KiB pages
/// (1 MiB in unit tests, which write less).
#[cfg(not(test))]
const RESTART_AFTER_FRAMES: i64 = 4096;
#[cfg(test)]
const RESTART_AFTER_FRAMES: i64 = 256;

/// Runs `PRAGMA wal_checkpoint(PASSIVE)` every [`CHECKPOINT_EVERY`] on its own connection,
/// and starts the log over once it is longer than [`RESTART_AFTER_FRAMES`].
///
/// Why a thread: with SQLite's automatic checkpoint, the commit that crosses 1,000 WAL pages
/// copies them into the database and fsyncs, inside the writer's transaction, while the
/// requests of that group commit wait (measured: keyword-only answers at 1 client had a 5 ms
/// p99.9 from it, and throughput rose 1.8x without it). A passive checkpoint never blocks the
/// writer.
///
/// Why the restart: SQLite writes the log from its start again only after a checkpoint has
/// copied every frame, and under steady commits a passive one never catches up (the writer
/// appends while it copies). The log then grew without bound (117 MB after 12 s at 900
/// requests/s), and every commit appended to newly allocated blocks, which ext4 converts after
/// writeback (a kernel thread took 7 % of a 2-CPU machine). So, right after a passive pass,
/// commits pause while `RESTART` copies the few frames that pass missed and resets the log; the
/// file keeps its size and later commits overwrite it in place.
struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(conn: Connection, write: Arc<Mutex<Connection>>) -> Result<Self, StoreError> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("intentd-store-ckpt".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    if let Err(e) = checkpoint(&conn, &write) {
                        tracing::warn!(error = %e, "background wal checkpoint failed");
                    }
                }
            })
            .map_err(|e| StoreError::Io(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

/// One pass of the checkpointer (see [`Checkpointer`]).
fn checkpoint(conn: &Connection, write: &Mutex<Connection>) -> rusqlite::Result<()> {
    let frames = |mode: &str| {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            r.get::<_, i64>(1)
        })
    };
    if frames("PASSIVE")? > RESTART_AFTER_FRAMES {
        // No commit starts while this is held; readers finish first (busy timeout).
        let _commits = write.lock();
        frames("RESTART")?;
    }
    Ok(())
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        drop(self.checkpointer.take());
        // Fold the WAL back into the main file on a clean close; harmless if it fails.
        if let Err(e) = self
            .write
            .lock()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        {
            tracing::debug!(error = %e, "wal checkpoint on close failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    // Issue 12.8: a database written before pseudonyms (schema 3, user ids in clear) keeps its
    // rows and has its user ids replaced by pseudonyms when it is opened, once.
    #[test]
    fn user_ids_are_pseudonyms_and_an_older_database_is_converted_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let ring = || keyring(&key_b64(9));
        let store = SqliteStore::open(&path, ring()).unwrap();
        let mut c = conversation("b", "g", "m1", 10);
        c.user_id = "wxid_clear_1".into();
        store
            .write_batch(&[Record::Conversation(c.clone())])
            .unwrap();
        let stored = |s: &SqliteStore| {
            s.conversations(0, i64::MAX, 0, 10).unwrap()[0]
                .record
                .user_id
                .clone()
        };
        let pseudonym = stored(&store);
        assert!(pseudonym.starts_with("u~"), "{pseudonym}");
        drop(store);
        // Reopened: the same secret, the same pseudonym for the same user.
        let store = SqliteStore::open(&path, ring()).unwrap();
        c.message_id = "m2".into();
        store
            .write_batch(&[Record::Conversation(c.clone())])
            .unwrap();
        let all = store.conversations(0, i64::MAX, 0, 10).unwrap();
        assert!(all.iter().all(|r| r.record.user_id == pseudonym));
        drop(store);

        // Back to what schema 3 wrote: clear user ids, no secret. (The message ids, pseudonyms
        // already, are taken for clear ones by migration 5 and hashed again under the new
        // secret: the rows stay readable, which is all this test needs of them; the message id
        // conversion has its own test below.)
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "UPDATE conversations SET user_id = 'wxid_clear_1';
                 DROP TABLE secrets; PRAGMA user_version = 3;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path, ring()).unwrap();
        let all = store.conversations(0, i64::MAX, 0, 10).unwrap();
        assert_eq!(all.len(), 2, "no row lost");
        let converted = &all[0].record.user_id;
        assert!(converted.starts_with("u~") && converted != &pseudonym);
        assert!(all.iter().all(|r| &r.record.user_id == converted));
    }

    // Issue 12.8 (failed on main: message ids were stored in clear, so "msg-secret-123" was in
    // the database file and its WAL). Everything matched by message id still matches: feedback
    // (and an unknown id is still unknown), human replies joined to their message in the stats,
    // the A/B conversions, idempotent answers, the unique index, the implied audit row.
    #[test]
    fn message_ids_are_stored_as_pseudonyms_and_every_lookup_still_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("m.db"), keyring(&key_b64(9))).unwrap();
        let (secret, handed) = ("msg-secret-123", "msg-handoff-456");
        let mut c = conversation("b", "g", secret, 10);
        c.experiment = "exp".into();
        c.answer = Some(AnswerRow {
            bot_id: "b".into(),
            kind: AnswerKind::Message,
            key: secret.into(),
            at_ms: 10,
            body: b"the first answer".to_vec(),
        });
        let mut h = conversation("b", "g", handed, 11);
        h.action = Action::Handoff;
        h.reply_text.clear();
        let anonymous = conversation("b", "g", "", 12);
        store
            .write_batch(&[
                Record::Conversation(c.clone()),
                Record::Conversation(h),
                Record::Conversation(anonymous),
                Record::Feedback(feedback("b", secret, FeedbackKind::Clicked, 13)),
                Record::Feedback(feedback("b", secret, FeedbackKind::Resolved, 13)),
                Record::HumanReply(super::super::HumanReplyRecord {
                    bot_id: "b".into(),
                    chat_id: "g".into(),
                    message_id: handed.into(),
                    at_ms: 14,
                }),
            ])
            .unwrap();
        // A retry of the same message replaces its row (the unique index sees the pseudonym).
        store.write_batch(&[Record::Conversation(c)]).unwrap();

        let on_disk = |dir: &Path| {
            let bytes = read_all(dir);
            for clear in [secret, handed] {
                assert!(
                    !contains(&bytes, clear.as_bytes()),
                    "'{clear}' found on disk"
                );
            }
        };
        assert!(dir.path().join("m.db-wal").exists());
        on_disk(dir.path());

        let stored = store.stored_message_id("b", secret);
        assert!(stored.starts_with("m~") && stored.len() == 34, "{stored}");
        assert_ne!(stored, store.stored_message_id("other", secret));
        assert!(store.has_message("b", secret).unwrap());
        assert!(!store.has_message("b", "msg-unknown").unwrap());
        assert!(!store.has_message("other", secret).unwrap());
        let a = store.answer("b", AnswerKind::Message, secret).unwrap();
        assert_eq!(a.unwrap().body, b"the first answer");
        let (keys, complete) = store.answer_keys(0, 10).unwrap();
        assert!(complete);
        assert_eq!(
            keys,
            vec![("b".into(), AnswerKind::Message, stored.clone(), 10)]
        );

        let rows = store.conversations(0, 100, 0, 10).unwrap();
        let ids: Vec<_> = rows.iter().map(|r| r.record.message_id.clone()).collect();
        assert_eq!(
            ids,
            vec![store.stored_message_id("b", handed), String::new(), stored]
        );
        assert!(rows.iter().all(|r| r.record.text == "请问这个多少钱"));

        let all = StatsFilter {
            bot_id: "b".into(),
            chat_id: String::new(),
            from_ms: 0,
            to_ms: 100,
        };
        let total = store.counts(&all, GroupBy::Total).unwrap()[0].1;
        assert_eq!((total.messages, total.handoffs), (3, 1));
        assert_eq!(
            (total.resolved, total.clicks, total.auto_replies_clicked),
            (1, 1, 1)
        );
        assert_eq!(total.human_replies, 1);
        // The human reply is joined to its message: it counts under that message's intent.
        let by_intent = store.counts(&all, GroupBy::Intent).unwrap();
        assert_eq!(by_intent.len(), 1, "{by_intent:?}");
        assert_eq!(
            (by_intent[0].0.as_str(), by_intent[0].1.human_replies),
            ("price", 1)
        );
        let v = store.variant_counts(&all, "exp").unwrap();
        assert_eq!((v[0].exposures, v[0].conversions), (1, 1));
        let audit = store.audit_rows(0, 100).unwrap();
        let detail = &audit[0].detail;
        assert!(
            detail.contains(&format!(
                "message={} ",
                store.stored_message_id("b", handed)
            )),
            "{detail}"
        );
        drop(store);
        on_disk(dir.path());
    }

    // Issue 12.8: a database written before message pseudonyms (schema 4: clear message ids,
    // texts and answers sealed with the clear id in their associated data) is converted when
    // first opened, in one transaction, and what is matched by message id still matches.
    #[test]
    fn an_older_database_has_its_message_ids_converted_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let (k1, k2) = (format!("k1:{}", key_b64(1)), format!("k2:{}", key_b64(2)));
        // Schema 4 with its pseudonym secret, as the previous intentd left it.
        drop(SqliteStore::open(&path, keyring(&k1)).unwrap());
        {
            let old = keyring(&k1);
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("DROP INDEX human_replies_message; PRAGMA user_version = 4;")
                .unwrap();
            for (at, msg, action) in [(10, "msg-old-1", "reply"), (11, "msg-old-2", "handoff")] {
                let sealed = old
                    .seal_texts("我想退款", "亲，已登记", &row_aad("b", msg))
                    .unwrap();
                conn.execute(
                    "INSERT INTO conversations (bot_id, chat_id, user_id, message_id, at_ms, intent,
                        confidence, source, action, triggered, auto_reply, variant_id, experiment,
                        tokenize_us, inference_us, queue_us, total_us, model_version, reason,
                        key_id, sealed, sent_at_ms)
                     VALUES ('b', 'g', 'u~1', ?1, ?2, 'refund', 0.9, 'model', ?3, 1, 1, 'v', '',
                        1, 2, 3, 4, 'm1', 'faq', ?4, ?5, 0)",
                    params![msg, at, action, sealed.key_id, sealed.blob],
                )
                .unwrap();
            }
            conn.execute_batch(
                "INSERT INTO feedback (bot_id, message_id, kind, variant_id, at_ms)
                     VALUES ('b', 'msg-old-1', 'resolved', '', 12);
                 INSERT INTO human_replies (bot_id, chat_id, message_id, at_ms)
                     VALUES ('b', 'g', 'msg-old-2', 13);
                 INSERT INTO audit (at_ms, actor, action, detail) VALUES (11, 'policy', 'handoff',
                     'bot=b chat=g user=u~1 message=msg-old-2 intent=refund reason=faq');
                 INSERT INTO audit (at_ms, actor, action, detail) VALUES (14, 'policy', 'block',
                     'bot=b chat=g user=wxid-old-9 message=msg-old-1 intent=refund reason=faq');",
            )
            .unwrap();
            for (kind, key) in [
                (AnswerKind::Message, "msg-old-1"),
                (AnswerKind::Event, "evt-old-3"),
            ] {
                let sealed = old
                    .seal(key.as_bytes(), &answer_aad(kind, "b", key))
                    .unwrap();
                conn.execute(
                    "INSERT INTO answers (bot_id, kind, key, at_ms, key_id, sealed)
                     VALUES ('b', ?1, ?2, 10, ?3, ?4)",
                    params![kind.as_str(), key, sealed.key_id, sealed.blob],
                )
                .unwrap();
            }
        }
        assert!(
            contains(&read_all(dir.path()), b"msg-old-1"),
            "the test wrote clear ids"
        );

        // Opened with a rotated ring: the rows are also sealed again with the current key.
        let store = SqliteStore::open(&path, keyring(&format!("{k2},{k1}"))).unwrap();
        let version: i64 = store
            .read
            .lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let stored = |m: &str| store.stored_message_id("b", m);
        let mut out = Vec::new();
        let n = super::super::export::export_jsonl(&store, "ops", 0, 100, 1_000, &mut out).unwrap();
        assert_eq!(n, 2);
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["message_id"], stored("msg-old-1"));
        assert_eq!(lines[1]["message_id"], stored("msg-old-2"));
        assert!(lines
            .iter()
            .all(|l| l["text"] == "我想退款" && l["key_id"] == "k2"));
        assert!(store.has_message("b", "msg-old-1").unwrap());
        assert!(!store.has_message("b", "msg-new").unwrap());
        let body = |kind, key| store.answer("b", kind, key).unwrap().unwrap().body;
        assert_eq!(body(AnswerKind::Message, "msg-old-1"), b"msg-old-1");
        assert_eq!(body(AnswerKind::Event, "evt-old-3"), b"evt-old-3");
        let (keys, _) = store.answer_keys(0, 10).unwrap();
        let mut keys: Vec<_> = keys.into_iter().map(|k| k.2).collect();
        keys.sort();
        let mut want = vec![stored("msg-old-1"), stored("evt-old-3")];
        want.sort();
        assert_eq!(keys, want);
        let all = StatsFilter {
            bot_id: "b".into(),
            chat_id: String::new(),
            from_ms: 0,
            to_ms: 100,
        };
        let by_intent = store.counts(&all, GroupBy::Intent).unwrap();
        assert_eq!(by_intent.len(), 1, "{by_intent:?}");
        let refund = by_intent[0].1;
        assert_eq!((refund.resolved, refund.human_replies), (1, 1));
        let audit = store.audit_rows(11, 11).unwrap();
        assert_eq!(
            audit[0].detail,
            format!(
                "bot=b chat=g user=u~1 message={} intent=refund reason=faq",
                stored("msg-old-2")
            )
        );
        // A row from before migration 4 also named the user in clear.
        assert_eq!(
            store.audit_rows(14, 14).unwrap()[0].detail,
            format!(
                "bot=b chat=g user={} message={} intent=refund reason=faq",
                store.pseudonyms.user("b", "wxid-old-9"),
                stored("msg-old-1")
            )
        );
        let before = lines;
        drop(store);
        let bytes = read_all(dir.path());
        for clear in ["msg-old-1", "msg-old-2", "evt-old-3", "wxid-old-9"] {
            assert!(
                !contains(&bytes, clear.as_bytes()),
                "'{clear}' left on disk"
            );
        }

        // Once: reopening changes nothing, and nothing needs k1 any more.
        let store = SqliteStore::open(&path, keyring(&k2)).unwrap();
        let mut out = Vec::new();
        super::super::export::export_jsonl(&store, "ops", 0, 100, 1_000, &mut out).unwrap();
        let again: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(again, before);
        assert!(store.has_message("b", "msg-old-2").unwrap());
    }

    fn read_all(dir: &Path) -> Vec<u8> {
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                bytes.extend(std::fs::read(p).unwrap());
            }
        }
        bytes
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn database_files_hold_no_clear_text_including_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            &dir.path().join("intentd.db"),
            keyring(&format!("k1:{}", key_b64(9))),
        )
        .unwrap();
        let secret = "我想退款，订单是昨天下的，快递一直没到";
        let reply = "亲，退款申请已经帮您登记";
        let mut c = conversation("bot", "g", "m1", 10);
        c.text = format!("{secret} 电话13812345678");
        c.reply_text = reply.into();
        store.write_batch(&[Record::Conversation(c)]).unwrap();

        // While open, the row sits in the WAL file: check every file in the directory.
        let wal = dir.path().join("intentd.db-wal");
        assert!(
            wal.exists() && std::fs::metadata(&wal).unwrap().len() > 0,
            "WAL mode is on"
        );
        for needle in [secret, reply, "退款", "13812345678"] {
            assert!(
                !contains(&read_all(dir.path()), needle.as_bytes()),
                "clear text '{needle}' found on disk"
            );
        }
        // It is really there, encrypted, and comes back redacted.
        let back = store.conversations(0, 100, 0, 10).unwrap();
        assert_eq!(back[0].record.text, format!("{secret} 电话[PHONE]"));
        assert_eq!(back[0].record.reply_text, reply);
        assert_eq!(back[0].key_id, "k1");
        drop(store);
        assert!(!contains(&read_all(dir.path()), "退款".as_bytes()));
    }

    #[test]
    fn the_background_checkpoint_moves_committed_rows_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("intentd.db");
        let store = SqliteStore::open(&path, keyring(&format!("k1:{}", key_b64(9)))).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let recs: Vec<Record> = (0..400)
            .map(|i| Record::Conversation(conversation("bot", "g", &format!("m{i}"), i)))
            .collect();
        store.write_batch(&recs).unwrap();
        // Commits never checkpoint themselves (autocheckpoint is off), so only the background
        // thread can grow the main file.
        let deadline = std::time::Instant::now() + CHECKPOINT_EVERY * 20;
        while std::fs::metadata(&path).unwrap().len() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint within {:?}",
                CHECKPOINT_EVERY * 20
            );
            std::thread::sleep(CHECKPOINT_EVERY / 4);
        }
        assert_eq!(store.conversations(0, 1000, 0, 10_000).unwrap().len(), 400);
    }

    /// Under commits that never pause, the log is started over instead of growing: on the
    /// passive checkpoint alone it grew by every commit (here past 20 MB) because the
    /// checkpoint never caught up with the writer.
    #[test]
    fn the_log_stays_bounded_under_commits_that_never_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("intentd.db");
        let store = SqliteStore::open(&path, keyring(&format!("k1:{}", key_b64(9)))).unwrap();
        let wal = dir.path().join("intentd.db-wal");
        let commit = |n: i64| {
            let recs: Vec<Record> = (n..n + 2)
                .map(|i| Record::Conversation(conversation("bot", "g", &format!("m{i}"), i)))
                .collect();
            store.write_batch(&recs).unwrap();
        };
        // What a record appends to the log, from commits made before the first checkpoint
        // pass.
        let started = std::time::Instant::now();
        let mut n = 0;
        while n < 100 {
            commit(n);
            n += 2;
        }
        assert!(started.elapsed() < CHECKPOINT_EVERY, "too slow to measure");
        let per_record = std::fs::metadata(&wal).unwrap().len() / 100;
        // Commits for 8 checkpoint passes, each a few pages, with no pause long enough for a
        // passive checkpoint to find the log fully copied.
        let mut largest = 0;
        while started.elapsed() < CHECKPOINT_EVERY * 8 {
            commit(n);
            n += 2;
            largest = largest.max(std::fs::metadata(&wal).unwrap().len());
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
        // Without restarts the log holds every record's pages.
        let all = n as u64 * per_record;
        assert!(
            largest < all / 4,
            "the log reached {largest} bytes after {n} records ({all} appended)"
        );
        assert_eq!(
            store.conversations(0, i64::MAX, 0, 100_000).unwrap().len(),
            n as usize
        );
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    #[cfg(unix)]
    fn a_new_store_is_private_to_its_user() {
        // Issue #12.8 (failed on main): the database, WAL and SHM were created 0644.
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("data/sub/intentd.db");
        let keys = keyring(&key_b64(1));
        let store = SqliteStore::open(&db, keys).unwrap();
        assert_eq!(mode(&dir.path().join("data/sub")), 0o700);
        for f in private_files::files(&db) {
            assert!(f.exists(), "{} exists while the store is open", f.display());
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
        drop(store);
    }

    #[test]
    #[cfg(unix)]
    fn an_older_world_readable_database_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("old.db");
        std::fs::write(&db, b"").unwrap();
        std::fs::set_permissions(&db, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let keys = keyring(&key_b64(1));
        let _store = SqliteStore::open(&db, keys).unwrap();
        assert_eq!(mode(&db), 0o600);
    }

    #[test]
    fn commits_reach_the_disk_unless_configured_otherwise() {
        // Issue #12.2 (failed on main: NORMAL, which a power loss can undo).
        let dir = tempfile::tempdir().unwrap();
        let sync = |s: &SqliteStore| -> i64 {
            s.write
                .lock()
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap()
        };
        let full = SqliteStore::open(&dir.path().join("f.db"), keyring(&key_b64(1))).unwrap();
        assert_eq!(sync(&full), 2, "FULL");
        let normal = SqliteStore::open_with(
            &dir.path().join("n.db"),
            keyring(&key_b64(1)),
            Durability::Normal,
        )
        .unwrap();
        assert_eq!(sync(&normal), 1, "NORMAL");
        let cfg: crate::store::StoreConfig = serde_yaml_ng::from_str("enabled: true").unwrap();
        assert_eq!(cfg.durability, Durability::Full, "the default");
        let e = serde_yaml_ng::from_str::<crate::store::StoreConfig>("durability: sometimes")
            .unwrap_err();
        assert!(e.to_string().contains("full"), "{e}");
    }

    #[test]
    fn migrations_are_numbered_and_reopening_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        drop(SqliteStore::open(&path, keyring(&key_b64(1))).unwrap());
        let s = SqliteStore::open(&path, keyring(&key_b64(1))).unwrap();
        let v: i64 = s
            .read
            .lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let mode: String = s
            .read
            .lock()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(s);
        // A database from a newer intentd is refused with a clear message.
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let e = SqliteStore::open(&path, keyring(&key_b64(1)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("schema version 99"), "{e}");
    }

    #[test]
    fn a_database_of_the_previous_release_opens_with_its_data_and_gains_the_state_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v5.db");
        // Today's main before issue 15 stopped at migration 5: make such a file with a row.
        {
            let s = SqliteStore::open(&path, keyring(&key_b64(1))).unwrap();
            s.write_batch(&[Record::Conversation(conversation("b", "g", "m1", 1_000))])
                .unwrap();
            let w = s.write.lock();
            w.execute_batch("DROP TABLE playbook_state; PRAGMA user_version = 5;")
                .unwrap();
        }
        let s = SqliteStore::open(&path, keyring(&key_b64(1))).unwrap();
        let v: i64 = s
            .read
            .lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        assert_eq!(s.row_counts().unwrap().conversations, 1);
        assert!(s.has_message("b", "m1").unwrap());
        assert!(s.state_rows().unwrap().is_empty());
        s.write_batch(&[Record::State(vec![RowWrite::Put {
            kind: "job",
            key: RowKey::Seq(1),
            json: b"1".to_vec(),
        }])])
        .unwrap();
        assert_eq!(s.state_rows().unwrap().len(), 1);
    }

    #[test]
    fn a_first_answer_is_stored_sealed_with_its_row_and_purged_after_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        // A database of the previous schema (1) gains the answers table and keeps its rows.
        {
            let mut conn = connect(&path).unwrap();
            let tx = conn.transaction().unwrap();
            tx.execute_batch(MIGRATIONS[0]).unwrap();
            tx.pragma_update(None, "user_version", 1).unwrap();
            tx.commit().unwrap();
        }
        let s = SqliteStore::open(&path, keyring(&key_b64(1))).unwrap();
        let mut c = conversation("b", "g", "m1", 1_000);
        c.answer = Some(AnswerRow {
            bot_id: "b".into(),
            kind: AnswerKind::Message,
            key: "m1".into(),
            at_ms: 1_000,
            body: b"the first answer, secret".to_vec(),
        });
        s.write_batch(&[Record::Conversation(c)]).unwrap();
        let a = s.answer("b", AnswerKind::Message, "m1").unwrap().unwrap();
        assert_eq!(a.body, b"the first answer, secret");
        assert!(s.answer("b", AnswerKind::Event, "m1").unwrap().is_none());
        assert!(s
            .answer("other", AnswerKind::Message, "m1")
            .unwrap()
            .is_none());
        assert!(!contains(&read_all(dir.path()), b"the first answer"));
        // A sealed answer moved under another key does not open.
        let (m1, m2) = (
            s.stored_message_id("b", "m1"),
            s.stored_message_id("b", "m2"),
        );
        s.write
            .lock()
            .execute("UPDATE answers SET key = ?1", [&m2])
            .unwrap();
        assert!(s.answer("b", AnswerKind::Message, "m2").is_err());
        s.write
            .lock()
            .execute("UPDATE answers SET key = ?1", [&m1])
            .unwrap();
        // Purged with its window, not with the conversation retention.
        let now = 400 * super::super::audit::DAY_MS;
        s.purge(&PurgeCutoffs {
            now_ms: now,
            data_before_ms: 0,
            audit_before_ms: 0,
            answers_before_ms: 2_000,
        })
        .unwrap();
        assert!(s.answer("b", AnswerKind::Message, "m1").unwrap().is_none());
        assert_eq!(s.row_counts().unwrap().conversations, 1);
    }

    #[test]
    fn rotated_keys_keep_old_rows_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let (k1, k2) = (key_b64(1), key_b64(2));
        {
            let s = SqliteStore::open(&path, keyring(&format!("k1:{k1}"))).unwrap();
            s.write_batch(&[Record::Conversation(conversation("b", "g", "old", 1))])
                .unwrap();
        }
        {
            let s = SqliteStore::open(&path, keyring(&format!("k2:{k2},k1:{k1}"))).unwrap();
            s.write_batch(&[Record::Conversation(conversation("b", "g", "new", 2))])
                .unwrap();
            let rows = s.conversations(0, 10, 0, 10).unwrap();
            let ids: Vec<_> = rows
                .iter()
                .map(|r| (r.record.message_id.clone(), r.key_id.as_str()))
                .collect();
            let stored = |m: &str| s.stored_message_id("b", m);
            assert_eq!(ids, vec![(stored("old"), "k1"), (stored("new"), "k2")]);
            assert!(rows.iter().all(|r| r.record.text == "请问这个多少钱"));
        }
        // Dropping k1 while rows need it stops the start (issue #12.3: it used to start and
        // fail at the first old row).
        let e = SqliteStore::open(&path, keyring(&format!("k2:{k2}")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("key 'k1', which is not in the key ring"), "{e}");
        // Once retention removed every k1 row, k1 may go.
        {
            let s = SqliteStore::open(&path, keyring(&format!("k2:{k2},k1:{k1}"))).unwrap();
            s.write
                .lock()
                .execute("DELETE FROM conversations WHERE key_id = 'k1'", [])
                .unwrap();
        }
        let s = SqliteStore::open(&path, keyring(&format!("k2:{k2}"))).unwrap();
        assert_eq!(s.conversations(0, 10, 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_different_key_under_the_same_id_stops_the_start() {
        // Issue #12.3 (failed on main: it started, and export stopped at the first old row).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        drop(SqliteStore::open(&path, keyring(&format!("k1:{}", key_b64(1)))).unwrap());
        let e = SqliteStore::open(&path, keyring(&format!("k1:{}", key_b64(2))))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("key 'k1' in the key ring is not the key that wrote this log"),
            "{e}"
        );
        // A plain key has an id made from the key itself: another plain key is another id.
        drop(SqliteStore::open(&dir.path().join("p.db"), keyring(&key_b64(1))).unwrap());
        let s = SqliteStore::open(&dir.path().join("p.db"), keyring(&key_b64(1))).unwrap();
        s.write_batch(&[Record::Conversation(conversation("b", "g", "m", 1))])
            .unwrap();
        drop(s);
        let e = SqliteStore::open(&dir.path().join("p.db"), keyring(&key_b64(3)))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not in the key ring"), "{e}");
    }

    #[test]
    fn a_damaged_database_stops_the_start() {
        // Issue #12.3 (failed on main: it started SERVING and every write failed).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let s = SqliteStore::open(&path, keyring(&key_b64(1))).unwrap();
            let recs: Vec<Record> = (0..300)
                .map(|i| Record::Conversation(conversation("b", "g", &format!("m{i}"), i)))
                .collect();
            s.write_batch(&recs).unwrap();
        }
        // Closing folded the WAL into the file; overwrite pages past the header.
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 6 * 4096, "{} bytes", bytes.len());
        for b in &mut bytes[2 * 4096..5 * 4096] {
            *b = 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
        let e = SqliteStore::open(&path, keyring(&key_b64(1)))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("the database is damaged (quick_check:"), "{e}");
    }

    #[test]
    fn a_failed_batch_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("f.db"), keyring(&key_b64(1))).unwrap();
        let x = s.stored_message_id("b", "x");
        s.write.lock().execute_batch(&format!("CREATE TRIGGER no_x BEFORE INSERT ON feedback WHEN NEW.message_id = '{x}' BEGIN SELECT RAISE(ABORT, 'x refused'); END;")).unwrap();
        let batch = [
            Record::Conversation(conversation("b", "g", "m1", 1)),
            Record::Feedback(feedback("b", "x", FeedbackKind::Clicked, 1)),
        ];
        assert!(s.write_batch(&batch).is_err());
        assert_eq!(s.row_counts().unwrap(), RowCounts::default());
    }

    #[test]
    fn retried_message_replaces_its_row() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("d.db"), keyring(&key_b64(1))).unwrap();
        let mut second = conversation("b", "g", "m1", 2);
        second.intent = "refund".into();
        s.write_batch(&[
            Record::Conversation(conversation("b", "g", "m1", 1)),
            Record::Conversation(second),
        ])
        .unwrap();
        // Empty message ids never collapse into one row.
        s.write_batch(&[
            Record::Conversation(conversation("b", "g", "", 3)),
            Record::Conversation(conversation("b", "g", "", 4)),
        ])
        .unwrap();
        let rows = s.conversations(0, 10, 0, 10).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows.iter()
                .find(|r| r.record.message_id == s.stored_message_id("b", "m1"))
                .unwrap()
                .record
                .intent,
            "refund"
        );
    }
}
