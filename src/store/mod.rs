//! The service's memory: conversation log, feedback, human replies and the audit trail.
//!
//! Layering: the engine and the front doors only build [`Record`]s and hand them to
//! [`Storage::submit`]; a single writer thread ([`writer::WriteQueue`]) commits them in batches
//! through the [`Store`] trait. SQL lives only in the backends: [`sqlite::SqliteStore`] (the
//! zero-setup default) and [`postgres::PgStore`] (`store.url: postgres://...`, for more than
//! one machine). Rates, the A/B test
//! and retention rules are computed here from backend-neutral counts.

pub mod ab_report;
pub mod audit;
pub mod crypto;
pub mod export;
pub mod health;
mod key_check;
pub mod pg;
mod pg_batch;
pub mod pg_lease;
pub mod pg_outbox;
pub mod pg_shared;
pub mod pg_state;
pub mod pg_tls;
pub mod postgres;
mod private_files;
pub mod pseudonyms;
pub mod series;
pub mod sqlite;
mod sqlite_start;
pub mod stats;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

use crate::clock::SharedClock;
use crate::durable::{Holders, RowWrite, StoredRow};
use crate::metrics::Metrics;
pub use crate::types::Timings;
use crate::types::{Action, Classification, MessageContext, PolicyDecision, Source};

pub use audit::{AuditAction, PurgeReport};
pub use crypto::Keyring;
pub use pg::PgSettings;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use writer::{CommitTicket, SubmitError, WriteQueue};

/// The legal floor for keeping audit rows.
pub const AUDIT_RETENTION_FLOOR_DAYS: u32 = 180;

/// `store:` section of the service config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Conversation logging and stats on/off. Off: no database, no key needed.
    pub enabled: bool,
    /// Which database: unset = the SQLite file at `path` (the zero-setup default);
    /// `postgres://user:password@host:port/db` = PostgreSQL (settings under `postgres`). The
    /// log is sealed the same way on both: the database never sees message text in clear.
    pub url: Option<String>,
    /// SQLite file; parent directories are created (mode 0700), the file and its WAL / SHM
    /// are kept at mode 0600.
    pub path: PathBuf,
    /// Pool size, statement timeout and start-up wait of the PostgreSQL backend.
    pub postgres: PgSettings,
    /// When a commit counts as done: `full` (default) = on disk, surviving an OS crash or
    /// power loss (the WAL is fsynced at each group commit); `normal` = surviving a process
    /// crash only (cheaper; see benches/RESULTS.md). `recorded: true` promises this.
    pub durability: Durability,
    /// Records waiting for the writer thread; beyond this `submit` fails with `QueueFull`.
    pub queue_capacity: usize,
    /// Most records committed in one transaction.
    pub batch_max: usize,
    /// After this many failed commits in a row the store counts as broken: readiness turns
    /// NOT_SERVING until a commit (the server probes every few seconds) succeeds again.
    pub unhealthy_after_failures: u32,
    /// Environment variable holding the log key(s): `BASE64` or `id:BASE64,id:BASE64,...`
    /// (first = current key, the others stay readable).
    pub key_env: String,
    /// Key file with the same format, used when the environment variable is unset.
    pub key_file: Option<PathBuf>,
    /// When neither the variable nor `key_file` exists, create `key_file` (mode 0600) with a
    /// new random key instead of refusing to start. Convenient for a first local run; in
    /// production provision the key and set this to false.
    pub create_key_file: bool,
    /// Audit rows are kept at least this long; lower than 180 is rejected on load.
    #[serde(deserialize_with = "audit_days")]
    pub audit_retention_days: u32,
    /// Conversation, feedback and human-reply rows older than this are purged.
    pub conversation_retention_days: u32,
    /// A/B: fewer exposures per variant than this → warning and no winner.
    pub ab_min_sample: u64,
    /// Significance level of the A/B test.
    pub ab_alpha: f64,
    /// No longer read here: the human-share target lives in the playbook
    /// (`handoff.human_share_target`, per bot and group). Kept so that an old config naming it
    /// gets an error that says where it went instead of "unknown field".
    #[serde(skip_serializing)]
    pub human_share_target: Option<f64>,
    /// How long first answers are kept for idempotent retries: set from `idempotency.window_s`
    /// by the wiring (not a `store:` key).
    #[serde(skip)]
    pub answer_window_s: u64,
    /// The leader lease's epoch when this process holds it (PostgreSQL): every commit checks
    /// it still leads. Set by the wiring (not a `store:` key).
    #[serde(skip)]
    pub leader_epoch: Option<u64>,
}

/// `store.durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Full,
    Normal,
}

impl Durability {
    /// The SQLite `synchronous` setting for the writing connection.
    pub fn synchronous(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            url: None,
            path: PathBuf::from("data/intentd.db"),
            postgres: PgSettings::default(),
            durability: Durability::Full,
            queue_capacity: 10_000,
            batch_max: 512,
            unhealthy_after_failures: 3,
            key_env: "INTENTD_LOG_KEY".into(),
            key_file: None,
            create_key_file: false,
            audit_retention_days: AUDIT_RETENTION_FLOOR_DAYS,
            conversation_retention_days: 90,
            ab_min_sample: 5_000,
            ab_alpha: 0.05,
            human_share_target: None,
            answer_window_s: 86_400,
            leader_epoch: None,
        }
    }
}

fn audit_days<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let days = u32::deserialize(d)?;
    check_audit_days(days).map_err(serde::de::Error::custom)?;
    Ok(days)
}

fn check_audit_days(days: u32) -> Result<(), String> {
    if days < AUDIT_RETENTION_FLOOR_DAYS {
        return Err(format!(
            "audit_retention_days = {days} is below the floor of {AUDIT_RETENTION_FLOOR_DAYS} days \
             (audit rows must be kept at least {AUDIT_RETENTION_FLOOR_DAYS} days)"
        ));
    }
    Ok(())
}

impl StoreConfig {
    /// Checks every limit; the message names the key and the limit.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |m: String| Err(StoreError::Config(m));
        check_audit_days(self.audit_retention_days).map_err(StoreError::Config)?;
        if let Some(url) = &self.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return bad(format!(
                    "store.url = '{}' is not a postgres:// URL (PostgreSQL is the only other \
                     backend; leave store.url unset for SQLite at store.path)",
                    pg::redacted(url)
                ));
            }
        }
        self.postgres.validate().map_err(StoreError::Config)?;
        if let Some(url) = &self.url {
            // An unknown sslmode or an unreadable ca_file stops the config load, not the start.
            self.postgres
                .validate_for(url)
                .map_err(StoreError::Config)?;
        }
        if self.conversation_retention_days == 0 {
            return bad("store.conversation_retention_days must be at least 1".into());
        }
        if self.queue_capacity == 0 || self.queue_capacity > 10_000_000 {
            return bad(format!(
                "store.queue_capacity = {} must be between 1 and 10000000",
                self.queue_capacity
            ));
        }
        if self.batch_max == 0 || self.batch_max > 100_000 {
            return bad(format!(
                "store.batch_max = {} must be between 1 and 100000",
                self.batch_max
            ));
        }
        if self.unhealthy_after_failures == 0 || self.unhealthy_after_failures > 1000 {
            return bad(format!(
                "store.unhealthy_after_failures = {} must be between 1 and 1000",
                self.unhealthy_after_failures
            ));
        }
        if self.ab_min_sample == 0 {
            return bad("store.ab_min_sample must be at least 1".into());
        }
        if !(self.ab_alpha > 0.0 && self.ab_alpha < 1.0) {
            return bad(format!(
                "store.ab_alpha = {} must be between 0 and 1 (exclusive)",
                self.ab_alpha
            ));
        }
        if self.human_share_target.is_some() {
            return bad(
                "store.human_share_target has moved to config/operator/playbook.yml \
                 (handoff.human_share_target, per bot and group): GetStats reports the target \
                 the handoff policy uses"
                    .into(),
            );
        }
        if self.key_env.trim().is_empty() && self.key_file.is_none() {
            return bad(
                "store.key_env is empty and store.key_file is unset: no way to get a log key"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Everything the store can fail with. `Clone` so one commit error can answer a whole batch.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("store database error: {0}")]
    Db(String),
    #[error("store encryption error: {0}")]
    Crypto(String),
    #[error("store I/O error: {0}")]
    Io(String),
    #[error("store config error: {0}")]
    Config(String),
    #[error("invalid store request: {0}")]
    Invalid(String),
    #[error("the store writer stopped before committing this record")]
    WriterGone,
    /// Another process took the leader lease: this one must not write any more.
    #[error("this process no longer leads the database: {0}")]
    Fenced(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// One inbound message and what the service decided. `text` and `reply_text` are clear in
/// memory; at rest they are PII-redacted and encrypted (read back, they are the redacted form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationRecord {
    pub bot_id: String,
    pub chat_id: String,
    pub user_id: String,
    pub message_id: String,
    /// Server receive time: what stats windows and retention go by.
    pub at_ms: i64,
    /// The caller's own time for the message or event (0 when it sent none); information only.
    #[serde(default)]
    pub sent_at_ms: i64,
    pub text: String,
    pub intent: String,
    pub confidence: f32,
    pub source: Source,
    pub action: Action,
    /// The message hit an intent that has a reply: the denominator of the response rate.
    pub triggered: bool,
    pub reply_text: String,
    pub variant_id: String,
    pub experiment: String,
    pub timings: Timings,
    pub model_version: String,
    pub reason: String,
    /// The answer as returned, kept for idempotent retries: written in the same transaction
    /// as this row, so an answered request can always be replayed.
    #[serde(skip)]
    pub answer: Option<AnswerRow>,
}

/// What an idempotency key names: a message (Classify) or an event (HandleEvent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AnswerKind {
    Message,
    Event,
}

impl AnswerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerKind::Message => "message",
            AnswerKind::Event => "event",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message" => Some(AnswerKind::Message),
            "event" => Some(AnswerKind::Event),
            _ => None,
        }
    }
}

/// A first answer as the store keeps it: `body` is clear here and encrypted at rest.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerRow {
    pub bot_id: String,
    pub kind: AnswerKind,
    pub key: String,
    /// Server time of the answer (Unix ms); rows older than the idempotency window are purged.
    pub at_ms: i64,
    pub body: Vec<u8>,
}

impl ConversationRecord {
    /// Builds the log row for one Classify answer. `triggered` comes from the policy (only it
    /// knows whether the intent has a reply, even when a cooldown then suppressed it).
    pub fn from_decision(
        ctx: &MessageContext,
        cls: &Classification,
        decision: &PolicyDecision,
        triggered: bool,
        timings: Timings,
        model_version: &str,
    ) -> Self {
        let reply = decision.reply.as_ref();
        Self {
            bot_id: ctx.bot_id.clone(),
            chat_id: ctx.chat_id.clone(),
            user_id: ctx.user.id.clone(),
            message_id: ctx.message_id.clone(),
            at_ms: ctx.at_ms,
            sent_at_ms: ctx.sent_at_ms,
            text: ctx.text.clone(),
            intent: cls.intent.clone(),
            confidence: cls.confidence,
            source: cls.source,
            action: decision.action,
            triggered,
            reply_text: reply.map(|r| r.text.clone()).unwrap_or_default(),
            variant_id: reply.map(|r| r.variant_id.clone()).unwrap_or_default(),
            experiment: reply.map(|r| r.experiment.clone()).unwrap_or_default(),
            timings,
            model_version: model_version.to_string(),
            reason: decision.reason.clone(),
            answer: None,
        }
    }

    /// The log row for a group event's outcome: no text and no intent, so welcomes and link
    /// guidance count as exposures. `message_id` is the event id (or one made from kind and
    /// time when the caller sent none).
    pub fn from_event(ev: &crate::policy::events::EventInput, decision: &PolicyDecision) -> Self {
        let reply = decision.reply.as_ref();
        Self {
            bot_id: ev.bot_id.clone(),
            chat_id: ev.chat_id.clone(),
            user_id: ev.user.id.clone(),
            message_id: if ev.event_id.is_empty() {
                format!("event-{}-{}", ev.kind.as_str(), ev.at_ms)
            } else {
                ev.event_id.clone()
            },
            at_ms: ev.at_ms,
            sent_at_ms: ev.sent_at_ms,
            text: String::new(),
            intent: String::new(),
            confidence: 1.0,
            source: Source::Policy,
            action: decision.action,
            triggered: false,
            reply_text: reply.map(|r| r.text.clone()).unwrap_or_default(),
            variant_id: reply.map(|r| r.variant_id.clone()).unwrap_or_default(),
            experiment: reply.map(|r| r.experiment.clone()).unwrap_or_default(),
            timings: Timings::default(),
            model_version: String::new(),
            reason: decision.reason.clone(),
            answer: None,
        }
    }

    /// The bot answered by itself (a reply or a clarifying question was sent): an exposure.
    pub fn is_auto_reply(&self) -> bool {
        matches!(self.action, Action::Reply | Action::Clarify) && !self.reply_text.is_empty()
    }
}

/// Outcome reported for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackKind {
    Resolved,
    Unresolved,
    ThumbsUp,
    ThumbsDown,
    Clicked,
}

impl FeedbackKind {
    pub const ALL: [FeedbackKind; 5] = [
        FeedbackKind::Resolved,
        FeedbackKind::Unresolved,
        FeedbackKind::ThumbsUp,
        FeedbackKind::ThumbsDown,
        FeedbackKind::Clicked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackKind::Resolved => "resolved",
            FeedbackKind::Unresolved => "unresolved",
            FeedbackKind::ThumbsUp => "thumbs_up",
            FeedbackKind::ThumbsDown => "thumbs_down",
            FeedbackKind::Clicked => "clicked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Feedback on one message's decision. Stats count each (message, kind) once, so a retried
/// Feedback call does not inflate the rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    pub bot_id: String,
    pub message_id: String,
    pub kind: FeedbackKind,
    pub variant_id: String,
    pub at_ms: i64,
}

/// A human agent answered in a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HumanReplyRecord {
    pub bot_id: String,
    pub chat_id: String,
    /// The human's message, or the inbound message it answered (then it counts toward that
    /// message's intent and variant in the stats).
    pub message_id: String,
    pub at_ms: i64,
}

/// Who did what, when. Never holds message text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub actor: String,
    pub action: AuditAction,
    pub detail: String,
    pub at_ms: i64,
}

/// Anything the writer thread commits.
// Most records are conversations, so boxing the big variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Conversation(ConversationRecord),
    Feedback(FeedbackRecord),
    HumanReply(HumanReplyRecord),
    Audit(AuditRecord),
    /// Playbook and outbox state (`crate::durable`). The writer also appends the holders'
    /// pending writes to each batch as one of these; an empty one asks for exactly that.
    State(Vec<RowWrite>),
}

/// Which rows a stats query covers. Empty ids mean "all"; the window is inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsFilter {
    pub bot_id: String,
    pub chat_id: String,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// How counts are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Total,
    Chat,
    Intent,
    Variant,
}

/// Raw counts behind [`stats::Rates`]. Feedback counts are distinct messages, attributed to the
/// message's window, chat, intent and variant (feedback for unknown message ids is kept but
/// does not count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub messages: u64,
    pub triggers: u64,
    /// Triggered messages that got an auto reply (numerator of the response rate).
    pub triggers_replied: u64,
    /// Replies or clarifying questions sent by the bot: the exposures.
    pub auto_replies: u64,
    /// Auto-replied messages that were clicked (numerator of the conversion rate).
    pub auto_replies_clicked: u64,
    pub handoffs: u64,
    pub human_replies: u64,
    pub blocks: u64,
    pub resolved: u64,
    pub unresolved: u64,
    pub clicks: u64,
    pub thumbs_up: u64,
    pub thumbs_down: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.messages += o.messages;
        self.triggers += o.triggers;
        self.triggers_replied += o.triggers_replied;
        self.auto_replies += o.auto_replies;
        self.auto_replies_clicked += o.auto_replies_clicked;
        self.handoffs += o.handoffs;
        self.human_replies += o.human_replies;
        self.blocks += o.blocks;
        self.resolved += o.resolved;
        self.unresolved += o.unresolved;
        self.clicks += o.clicks;
        self.thumbs_up += o.thumbs_up;
        self.thumbs_down += o.thumbs_down;
    }
}

/// Exposures and conversions of one experiment variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantCounts {
    pub experiment: String,
    pub variant_id: String,
    /// Auto replies that showed this variant.
    pub exposures: u64,
    /// Of those, messages with a CLICKED feedback.
    pub conversions: u64,
}

/// Rows per table, for status pages and the kill -9 test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    pub conversations: u64,
    pub feedback: u64,
    pub human_replies: u64,
    pub audit: u64,
}

/// A conversation row read back (decrypted, redacted text) with its storage id. Its user and
/// message ids are the stored pseudonyms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredConversation {
    pub id: i64,
    pub key_id: String,
    #[serde(flatten)]
    pub record: ConversationRecord,
}

/// Storage backend. Synchronous on purpose: the writer thread and `spawn_blocking` callers use
/// it; async callers go through [`Storage`] / [`WriteQueue`].
pub trait Store: Send + Sync {
    /// Commits all records in ONE transaction (group commit): when this returns `Ok` every
    /// record is durable; on `Err` none is. Conversations with action HANDOFF or BLOCK also get
    /// their audit row ([`audit::implied_audit`]) in the same transaction.
    fn write_batch(&self, records: &[Record]) -> Result<(), StoreError>;

    /// Counts grouped by `by` (the key is "" for [`GroupBy::Total`]), sorted by key.
    fn counts(
        &self,
        filter: &StatsFilter,
        by: GroupBy,
    ) -> Result<Vec<(String, Counts)>, StoreError>;

    /// Counts per time step, in one grouped query: step `i` covers
    /// `[filter.from_ms + i * step_ms, filter.from_ms + (i + 1) * step_ms - 1]` (the last one
    /// ends at `filter.to_ms`). Only steps with rows are returned, as (i, counts), by `i`;
    /// summed over every step they equal [`Store::counts`] with [`GroupBy::Total`].
    /// `step_ms` must be > 0 (checked by [`series::stats_series`]).
    fn counts_by_step(
        &self,
        filter: &StatsFilter,
        step_ms: i64,
    ) -> Result<Vec<(u64, Counts)>, StoreError>;

    /// Exposures / conversions per (experiment, variant); `experiment` "" = all experiments.
    fn variant_counts(
        &self,
        filter: &StatsFilter,
        experiment: &str,
    ) -> Result<Vec<VariantCounts>, StoreError>;

    /// Conversations with `from_ms <= at_ms <= to_ms` and `id > after_id`, by id, at most
    /// `limit`, decrypted. A row whose key is not in the keyring is an error naming the key id.
    fn conversations(
        &self,
        from_ms: i64,
        to_ms: i64,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredConversation>, StoreError>;

    /// Audit rows with `from_ms <= at_ms <= to_ms`, oldest first.
    fn audit_rows(&self, from_ms: i64, to_ms: i64) -> Result<Vec<AuditRecord>, StoreError>;

    /// Deletes conversation/feedback/human-reply rows older than `cutoffs.data_before_ms` and
    /// audit rows older than `cutoffs.audit_before_ms`, and writes `audit::purge_record` for it
    /// in the same transaction. Refuses an audit cutoff inside the 180-day floor.
    fn purge(&self, cutoffs: &audit::PurgeCutoffs) -> Result<PurgeReport, StoreError>;

    fn row_counts(&self) -> Result<RowCounts, StoreError>;

    /// The keys of stored answers with `at_ms >= since_ms`, oldest first: (bot_id, kind, key,
    /// at_ms), the newest `limit` of them; `true` when that is all of them. Keys are as stored:
    /// compare them with [`Store::stored_message_id`] of an incoming id.
    #[allow(clippy::type_complexity)]
    fn answer_keys(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> Result<(Vec<(String, AnswerKind, String, i64)>, bool), StoreError>;

    /// The first answer stored for `(bot_id, kind, key)`, decrypted; None when there is none.
    fn answer(
        &self,
        bot_id: &str,
        kind: AnswerKind,
        key: &str,
    ) -> Result<Option<AnswerRow>, StoreError>;

    /// (bot_id, stored message id) of the messages marked unhelpful (feedback `thumbs_down`
    /// or `unresolved`) with `from_ms <= at_ms <= to_ms`, at most `limit`, newest first.
    fn unhelpful(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError>;

    /// A decision for `(bot_id, message_id)` is in the log (Feedback must name one).
    fn has_message(&self, bot_id: &str, message_id: &str) -> Result<bool, StoreError>;

    /// How a message or event id of `bot_id` is stored (a keyed pseudonym in SQLite; "" stays
    /// ""). Rows read back ([`Store::conversations`], [`Store::answer_keys`]) carry this form;
    /// methods taking a message id take the id as the caller knows it.
    fn stored_message_id(&self, bot_id: &str, message_id: &str) -> String;

    /// Bytes the backend's library holds in this process (for /metrics); None when it cannot
    /// tell.
    fn memory_bytes(&self) -> Option<i64> {
        None
    }

    /// Every durable state row ([`Record::State`]), decrypted, in (kind, key) order: queue
    /// rows in their order. A row whose key is not in the keyring is an error naming it.
    fn state_rows(&self) -> Result<Vec<StoredRow>, StoreError>;
}

/// The store as the server uses it: backend + writer thread + config + clock.
pub struct Storage {
    store: Arc<dyn Store>,
    queue: WriteQueue,
    /// State held in memory and written through this store (playbook, outbox).
    holders: Arc<Holders>,
    health: Arc<health::StoreHealth>,
    config: StoreConfig,
    clock: SharedClock,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Storage");
        match &self.config.url {
            Some(url) => d.field("url", &pg::redacted(url)),
            None => d.field("path", &self.config.path),
        };
        d.finish_non_exhaustive()
    }
}

impl Storage {
    /// Validates the config, loads the log key (env var, then key file; a clear error saying
    /// how to create one otherwise), opens/migrates the database (PostgreSQL when `store.url`
    /// is set, else the SQLite file) and starts the writer.
    pub fn open(
        config: &StoreConfig,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        config.validate()?;
        let keyring = Keyring::from_config(config)?;
        Self::open_with_keyring(config, Arc::new(keyring), clock, metrics)
    }

    /// Like [`Storage::open`] with a key ring the caller built (tests, `intentd export`).
    pub fn open_with_keyring(
        config: &StoreConfig,
        keyring: Arc<Keyring>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        config.validate()?;
        let store: Arc<dyn Store> = match &config.url {
            Some(url) => Arc::new(PgStore::open(
                url,
                &config.postgres,
                keyring,
                config.leader_epoch,
            )?),
            None => Arc::new(SqliteStore::open_with(
                &config.path,
                keyring,
                config.durability,
            )?),
        };
        Ok(Self::with_store(store, config, clock, metrics))
    }

    /// Wraps any backend.
    pub fn with_store(
        store: Arc<dyn Store>,
        config: &StoreConfig,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Self {
        let health = Arc::new(health::StoreHealth::new(
            config.unhealthy_after_failures,
            metrics.clone(),
        ));
        let holders = Arc::new(Holders::default());
        let queue = WriteQueue::start(
            store.clone(),
            config.queue_capacity,
            config.batch_max,
            metrics,
            health.clone(),
            holders.clone(),
        );
        Self {
            store,
            queue,
            holders,
            health,
            config: config.clone(),
            clock,
        }
    }

    /// Queues a record; await the ticket before acknowledging anything to a caller.
    pub fn submit(&self, record: Record) -> Result<CommitTicket, SubmitError> {
        self.queue.submit(record)
    }

    /// The state rows a previous run stored (read once at start, before serving).
    pub fn state_rows(&self) -> Result<Vec<StoredRow>, StoreError> {
        self.store.state_rows()
    }

    /// Writes `holder`'s changes with every commit from now on.
    pub fn hold_durable(&self, holder: Arc<dyn crate::durable::DurableRows>) {
        self.holders.register(holder);
    }

    /// Held across a change that spans holders, so no commit carries half of it.
    pub async fn hold_change(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.holders.hold().await
    }

    /// Commits the holders' pending changes now (a no-op batch carries them).
    pub fn flush_state(&self) -> Result<CommitTicket, SubmitError> {
        self.queue.submit(Record::State(Vec::new()))
    }

    /// Queues an audit row stamped with the clock's "now".
    pub fn audit(
        &self,
        actor: &str,
        action: AuditAction,
        detail: &str,
    ) -> Result<CommitTicket, SubmitError> {
        self.submit(Record::Audit(AuditRecord {
            actor: actor.to_string(),
            action,
            detail: detail.to_string(),
            at_ms: self.clock.now_ms(),
        }))
    }

    /// GetStats (blocking: call from `spawn_blocking`). `to_ms == 0` means now.
    /// GetStats over the log; `human_share_target(chat_id)` as in [`stats::stats_response`].
    pub fn stats(
        &self,
        req: &stats::StatsQuery,
        human_share_target: &dyn Fn(&str) -> f64,
    ) -> Result<stats::StatsReport, StoreError> {
        stats::stats_report(
            self.store.as_ref(),
            req,
            self.clock.now_ms(),
            &self.config,
            human_share_target,
        )
    }

    /// The rates of each time bucket of `req` (blocking: call from `spawn_blocking`); see
    /// [`series::stats_series`].
    pub fn stats_series(
        &self,
        req: &series::SeriesQuery,
        human_share_target: f64,
    ) -> Result<Vec<stats::Rates>, StoreError> {
        series::stats_series(self.store.as_ref(), req, human_share_target)
    }

    /// Decrypts conversations in `[from_ms, to_ms]` to JSONL; writes an audit row naming `actor`.
    pub fn export(
        &self,
        actor: &str,
        from_ms: i64,
        to_ms: i64,
        out: &mut dyn std::io::Write,
    ) -> Result<usize, StoreError> {
        export::export_jsonl(
            self.store.as_ref(),
            actor,
            from_ms,
            to_ms,
            self.clock.now_ms(),
            out,
        )
    }

    /// Applies the retention policy as of the clock's "now" (blocking).
    pub fn purge(&self) -> Result<PurgeReport, StoreError> {
        audit::purge(self.store.as_ref(), &self.config, self.clock.now_ms())
    }

    /// Purges now and then every `every` until `shutdown` completes. Failures are logged and
    /// counted in `intentd_store_errors_total`; the loop keeps going.
    pub async fn run_purge_loop(
        self: Arc<Self>,
        every: std::time::Duration,
        metrics: Arc<Metrics>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            let storage = self.clone();
            match tokio::task::spawn_blocking(move || storage.purge()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    metrics.store_errors.inc();
                    tracing::error!(error = %e, "retention purge failed");
                }
                Err(e) => {
                    metrics.store_errors.inc();
                    tracing::error!(error = %e, "retention purge task panicked");
                }
            }
        }
    }

    /// Whether commits succeed (see [`health`]).
    pub fn health(&self) -> &Arc<health::StoreHealth> {
        &self.health
    }

    /// While the store is unhealthy, commits one audit row every `every` (nothing else may be
    /// writing: the replica is out of rotation); the first that succeeds turns it healthy again
    /// and stays as the record of the recovery. Runs until `shutdown` completes.
    pub async fn run_health_probe(
        self: Arc<Self>,
        every: std::time::Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut changes = self.health.subscribe();
        tokio::pin!(shutdown);
        loop {
            // Wait until unhealthy.
            while *changes.borrow_and_update() {
                tokio::select! {
                    _ = &mut shutdown => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(every) => {}
            }
            if self.health.is_healthy() {
                continue;
            }
            let detail = format!(
                "store commits work again after {} failed in a row (last error: {})",
                self.health.failed_in_a_row(),
                self.health.last_error()
            );
            // The writer reports the outcome to the health; a full queue is tried again later.
            if let Ok(ticket) = self.audit("system", AuditAction::StoreRecovered, &detail) {
                let _ = ticket.await;
            }
        }
    }

    /// Records waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.queue.depth()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Stops accepting records, commits everything queued, joins the writer thread.
    pub fn shutdown(&self) {
        self.queue.shutdown();
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub fn conversation(bot: &str, chat: &str, msg: &str, at_ms: i64) -> ConversationRecord {
        ConversationRecord {
            bot_id: bot.into(),
            chat_id: chat.into(),
            user_id: "u1".into(),
            message_id: msg.into(),
            at_ms,
            sent_at_ms: 0,
            text: "请问这个多少钱".into(),
            intent: "price".into(),
            confidence: 0.9,
            source: Source::Model,
            action: Action::Reply,
            triggered: true,
            reply_text: "reply text".into(),
            variant_id: "price/a".into(),
            experiment: String::new(),
            timings: Timings {
                tokenize_us: 10,
                inference_us: 200,
                queue_us: 5,
                total_us: 250,
            },
            model_version: "m1".into(),
            reason: "faq".into(),
            answer: None,
        }
    }

    pub fn feedback(bot: &str, msg: &str, kind: FeedbackKind, at_ms: i64) -> FeedbackRecord {
        FeedbackRecord {
            bot_id: bot.into(),
            message_id: msg.into(),
            kind,
            variant_id: String::new(),
            at_ms,
        }
    }

    pub fn keyring(spec: &str) -> Arc<Keyring> {
        Arc::new(Keyring::parse(spec, "test").expect("test keyring"))
    }

    /// Base64 of 32 bytes all equal to `b`.
    pub fn key_b64(b: u8) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([b; 32])
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn default_config_is_valid_and_documented_values_hold() {
        let c = StoreConfig::default();
        c.validate().unwrap();
        assert_eq!(c.path, PathBuf::from("data/intentd.db"));
        assert_eq!(c.audit_retention_days, 180);
        assert_eq!(c.ab_min_sample, 5_000);
    }

    #[test]
    fn the_old_human_share_key_says_where_it_moved() {
        let c = StoreConfig {
            human_share_target: Some(0.3),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("playbook.yml") && e.contains("handoff.human_share_target"),
            "{e}"
        );
    }

    #[test]
    fn audit_retention_below_floor_is_a_load_error_naming_the_floor() {
        let err = serde_yaml_ng::from_str::<StoreConfig>("path: x.db\naudit_retention_days: 90\n")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("180"), "{msg}");
        assert!(msg.contains("audit_retention_days = 90"), "{msg}");
        let ok: StoreConfig = serde_yaml_ng::from_str("audit_retention_days: 365\n").unwrap();
        assert_eq!(ok.audit_retention_days, 365);
        assert_eq!(ok.conversation_retention_days, 90);
        let built = StoreConfig {
            audit_retention_days: 30,
            ..StoreConfig::default()
        };
        assert!(matches!(built.validate(), Err(StoreError::Config(m)) if m.contains("180")));
    }

    #[test]
    fn unknown_config_key_is_rejected() {
        let err = serde_yaml_ng::from_str::<StoreConfig>("queue_capacty: 5\n").unwrap_err();
        assert!(err.to_string().contains("queue_capacty"), "{err}");
    }

    #[test]
    fn feedback_kind_names_round_trip() {
        for k in FeedbackKind::ALL {
            assert_eq!(FeedbackKind::parse(k.as_str()), Some(k));
        }
    }

    #[tokio::test]
    async fn purge_loop_runs_at_once_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            path: dir.path().join("p.db"),
            ..StoreConfig::default()
        };
        let now = 400 * audit::DAY_MS;
        let clock: SharedClock = Arc::new(ManualClock::new(now));
        let metrics = Arc::new(Metrics::new());
        let s = Arc::new(
            Storage::open_with_keyring(&cfg, keyring(&key_b64(2)), clock, metrics.clone()).unwrap(),
        );
        s.submit(Record::Conversation(conversation(
            "b",
            "g",
            "old",
            now - 100 * audit::DAY_MS,
        )))
        .unwrap()
        .await
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(s.clone().run_purge_loop(
            std::time::Duration::from_secs(3600),
            metrics.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        for _ in 0..200 {
            if s.store().row_counts().unwrap().conversations == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(s.store().row_counts().unwrap().conversations, 0);
        stop.send(()).unwrap();
        task.await.unwrap();
        assert_eq!(metrics.store_errors.get(), 0);
        tokio::task::spawn_blocking(move || s.shutdown())
            .await
            .unwrap();
    }

    #[test]
    fn restart_keeps_stats() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            path: dir.path().join("sub/dir/intentd.db"),
            ..StoreConfig::default()
        };
        let clock: SharedClock = Arc::new(ManualClock::new(1_000_000));
        let keys = keyring(&format!("k1:{}", key_b64(7)));
        let req = stats::StatsQuery {
            bot_id: "bot".into(),
            ..Default::default()
        };
        let before = {
            let s = Storage::open_with_keyring(
                &cfg,
                keys.clone(),
                clock.clone(),
                Arc::new(Metrics::new()),
            )
            .unwrap();
            let mut tickets = Vec::new();
            for i in 0..10 {
                let mut c = conversation("bot", "g1", &format!("m{i}"), 1_000 + i);
                if i >= 7 {
                    c.action = Action::Handoff;
                    c.reply_text.clear();
                }
                tickets.push(s.submit(Record::Conversation(c)).unwrap());
            }
            tickets.push(
                s.submit(Record::Feedback(feedback(
                    "bot",
                    "m0",
                    FeedbackKind::Resolved,
                    2_000,
                )))
                .unwrap(),
            );
            tickets.push(
                s.submit(Record::Feedback(feedback(
                    "bot",
                    "m1",
                    FeedbackKind::Unresolved,
                    2_000,
                )))
                .unwrap(),
            );
            for t in tickets {
                t.wait().unwrap();
            }
            let st = s.stats(&req, &|_| 0.3).unwrap();
            s.shutdown();
            st
        };
        let total = &before.total;
        assert_eq!(total.counts.messages, 10);
        assert_eq!(total.counts.auto_replies, 7);
        assert_eq!(total.counts.handoffs, 3);
        assert_eq!(total.counts.resolved, 1);
        assert!((total.resolution_rate - 0.5).abs() < 1e-12);
        assert!(dir.path().join("sub/dir/intentd.db").exists());

        let s = Storage::open_with_keyring(&cfg, keys, clock, Arc::new(Metrics::new())).unwrap();
        let after = s.stats(&req, &|_| 0.3).unwrap();
        assert_eq!(before, after);
        // 3 handoffs → 3 implied audit rows survived too.
        assert_eq!(s.store().row_counts().unwrap().audit, 3);
    }
}
