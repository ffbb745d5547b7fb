//! One write batch of the PostgreSQL store as a handful of set-based statements instead of
//! one round trip per row: every table gets one statement whose rows arrive as arrays and are
//! spread out by `unnest`. The rows end up exactly as if each record had been written on its
//! own, in order:
//!
//! - a message written twice (a retried Classify) keeps only its last row, which gets a new id
//!   after the rows before it, like the DELETE + INSERT of one row at a time: the batch keeps
//!   the last row of each message, and the insert is an upsert that renumbers the row it
//!   replaces (`id = DEFAULT`). A DELETE of every message id before the insert did the same
//!   but cost more than the rest of the batch (it ran on every commit and found nothing);
//! - an answer key written twice keeps its last body (an upsert, once per key: PostgreSQL
//!   refuses to update one row twice in one statement);
//! - state writes are reduced to their net effect: per key the last Put or Delete, a range
//!   delete (`DeleteBelow`) turning the pending writes it covers into deletes, and the range
//!   deletes run first, so a Put after one survives it and a Put then Delete ends deleted;
//! - feedback, human replies and audit rows (including each conversation's implied audit row,
//!   also for a message written again later) are inserted in record order, so ids keep it.
//!
//! Sealing and pseudonyms are computed while building, before a connection is taken.

use std::collections::{BTreeMap, HashMap};

use deadpool_postgres::Transaction;

use super::audit::implied_audit;
use super::crypto::{answer_aad, row_aad, state_aad, Keyring};
use super::pg::{exec, Statement};
use super::pseudonyms::{seq_key, Pseudonyms};
use super::{AuditRecord, ConversationRecord, Record, StoreError};
use crate::durable::RowWrite;

/// The rows of one [`super::Store::write_batch`], column by column, ready to be bound as
/// arrays.
#[derive(Debug, Default)]
pub struct PgBatch {
    conversations: ConversationColumns,
    answers: AnswerColumns,
    feedback: FeedbackColumns,
    human_replies: HumanReplyColumns,
    audit: AuditColumns,
    state: StateColumns,
}

#[derive(Debug, Default)]
struct ConversationColumns {
    bot_id: Vec<String>,
    chat_id: Vec<String>,
    user_id: Vec<String>,
    message_id: Vec<String>,
    at_ms: Vec<i64>,
    intent: Vec<String>,
    confidence: Vec<f64>,
    source: Vec<&'static str>,
    action: Vec<&'static str>,
    triggered: Vec<bool>,
    auto_reply: Vec<bool>,
    variant_id: Vec<String>,
    experiment: Vec<String>,
    tokenize_us: Vec<i64>,
    inference_us: Vec<i64>,
    queue_us: Vec<i64>,
    total_us: Vec<i64>,
    model_version: Vec<String>,
    reason: Vec<String>,
    key_id: Vec<String>,
    sealed: Vec<Vec<u8>>,
    sent_at_ms: Vec<i64>,
}

#[derive(Debug, Default)]
struct AnswerColumns {
    bot_id: Vec<String>,
    kind: Vec<&'static str>,
    key: Vec<String>,
    at_ms: Vec<i64>,
    key_id: Vec<String>,
    sealed: Vec<Vec<u8>>,
}

#[derive(Debug, Default)]
struct FeedbackColumns {
    bot_id: Vec<String>,
    message_id: Vec<String>,
    kind: Vec<&'static str>,
    variant_id: Vec<String>,
    at_ms: Vec<i64>,
}

#[derive(Debug, Default)]
struct HumanReplyColumns {
    bot_id: Vec<String>,
    chat_id: Vec<String>,
    message_id: Vec<String>,
    at_ms: Vec<i64>,
}

#[derive(Debug, Default)]
struct AuditColumns {
    at_ms: Vec<i64>,
    actor: Vec<String>,
    action: Vec<&'static str>,
    detail: Vec<String>,
}

#[derive(Debug, Default)]
struct StateColumns {
    /// Per kind, the highest `DeleteBelow` position (as its stored key).
    below_kind: Vec<&'static str>,
    below_key: Vec<String>,
    delete_kind: Vec<&'static str>,
    delete_key: Vec<String>,
    put_kind: Vec<&'static str>,
    put_key: Vec<String>,
    put_key_id: Vec<String>,
    put_sealed: Vec<Vec<u8>>,
}

/// A conversation row in the making (sealed, pseudonymised).
struct ConversationRow<'a> {
    record: &'a ConversationRecord,
    user: String,
    message: String,
    key_id: String,
    sealed: Vec<u8>,
}

/// The net state write pending for one key.
enum StateWrite<'a> {
    Put(&'a [u8]),
    Delete,
}

/// BIGINT is i64; timings beyond that are clamped rather than wrapped.
fn us(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl PgBatch {
    /// Seals and pseudonymises `records` and reduces them to the rows they leave.
    pub fn build(
        records: &[Record],
        keyring: &Keyring,
        pseudonyms: &Pseudonyms,
    ) -> Result<Self, StoreError> {
        let mut batch = PgBatch::default();
        // Conversations in order; a later row of the same message empties the earlier slot.
        let mut rows: Vec<Option<ConversationRow>> = Vec::new();
        let mut row_of_message: HashMap<(&str, String), usize> = HashMap::new();
        // Answers by key, in the order keys first came; the last body wins.
        let mut answers: Vec<(String, super::AnswerKind, String, i64, &[u8])> = Vec::new();
        let mut answer_of_key: HashMap<(String, super::AnswerKind, String), usize> = HashMap::new();
        // State: pending writes by (kind, stored key), and the highest range delete per kind.
        let mut state: BTreeMap<(&'static str, String), StateWrite> = BTreeMap::new();
        let mut below: BTreeMap<&'static str, u64> = BTreeMap::new();
        for rec in records {
            match rec {
                Record::Conversation(c) => {
                    let user = pseudonyms.user(&c.bot_id, &c.user_id);
                    let message = pseudonyms.message(&c.bot_id, &c.message_id);
                    // The texts are bound to the id as stored, which is what a reader has.
                    let sealed = keyring.seal_texts(
                        &c.text,
                        &c.reply_text,
                        &row_aad(&c.bot_id, &message),
                    )?;
                    if let Some(a) = implied_audit(c, &user, &message) {
                        batch.audit.push(&a);
                    }
                    if let Some(a) = &c.answer {
                        let key = pseudonyms.message(&a.bot_id, &a.key);
                        let id = (a.bot_id.clone(), a.kind, key.clone());
                        let answer = (a.bot_id.clone(), a.kind, key, a.at_ms, a.body.as_slice());
                        match answer_of_key.get(&id) {
                            Some(&i) => answers[i] = answer,
                            None => {
                                answer_of_key.insert(id, answers.len());
                                answers.push(answer);
                            }
                        }
                    }
                    if !message.is_empty() {
                        let slot = (c.bot_id.as_str(), message.clone());
                        if let Some(earlier) = row_of_message.insert(slot, rows.len()) {
                            rows[earlier] = None;
                        }
                    }
                    rows.push(Some(ConversationRow {
                        record: c,
                        user,
                        message,
                        key_id: sealed.key_id,
                        sealed: sealed.blob,
                    }));
                }
                Record::Feedback(f) => {
                    let b = &mut batch.feedback;
                    b.bot_id.push(f.bot_id.clone());
                    b.message_id
                        .push(pseudonyms.message(&f.bot_id, &f.message_id));
                    b.kind.push(f.kind.as_str());
                    b.variant_id.push(f.variant_id.clone());
                    b.at_ms.push(f.at_ms);
                }
                Record::HumanReply(h) => {
                    let b = &mut batch.human_replies;
                    b.bot_id.push(h.bot_id.clone());
                    b.chat_id.push(h.chat_id.clone());
                    b.message_id
                        .push(pseudonyms.message(&h.bot_id, &h.message_id));
                    b.at_ms.push(h.at_ms);
                }
                Record::Audit(a) => batch.audit.push(a),
                Record::State(writes) => {
                    for w in writes {
                        match w {
                            RowWrite::Put { kind, key, json } => {
                                let key = pseudonyms.state_key(kind, key);
                                state.insert((*kind, key), StateWrite::Put(json));
                            }
                            RowWrite::Delete { kind, key } => {
                                let key = pseudonyms.state_key(kind, key);
                                state.insert((*kind, key), StateWrite::Delete);
                            }
                            RowWrite::DeleteBelow { kind, seq } => {
                                // Pending writes it covers end deleted; the database's rows
                                // go by the range delete, which runs before the pending ones.
                                // Keys compare bytewise, like the column's COLLATE "C".
                                let end = seq_key(*seq);
                                for (_, w) in state.range_mut((*kind, String::new())..(*kind, end))
                                {
                                    *w = StateWrite::Delete;
                                }
                                let b = below.entry(*kind).or_insert(*seq);
                                *b = (*b).max(*seq);
                            }
                        }
                    }
                }
            }
        }
        for row in rows.into_iter().flatten() {
            batch.conversations.push(row);
        }
        for (bot_id, kind, key, at_ms, body) in answers {
            let sealed = keyring.seal(body, &answer_aad(kind, &bot_id, &key))?;
            let b = &mut batch.answers;
            b.bot_id.push(bot_id);
            b.kind.push(kind.as_str());
            b.key.push(key);
            b.at_ms.push(at_ms);
            b.key_id.push(sealed.key_id);
            b.sealed.push(sealed.blob);
        }
        let s = &mut batch.state;
        for (kind, seq) in below {
            s.below_kind.push(kind);
            s.below_key.push(seq_key(seq));
        }
        for ((kind, key), w) in state {
            match w {
                StateWrite::Delete => {
                    s.delete_kind.push(kind);
                    s.delete_key.push(key);
                }
                StateWrite::Put(json) => {
                    // Only the value that stays is sealed.
                    let sealed = keyring.seal(json, &state_aad(kind, &key))?;
                    s.put_kind.push(kind);
                    s.put_key.push(key);
                    s.put_key_id.push(sealed.key_id);
                    s.put_sealed.push(sealed.blob);
                }
            }
        }
        Ok(batch)
    }

    /// The batch's statements in the order they must run (at most one per table and kind of
    /// change, none for what the batch does not hold), for [`super::pg::exec_pipelined`].
    pub fn statements(&self) -> Vec<Statement<'_>> {
        let mut stmts: Vec<Statement<'_>> = Vec::new();
        let c = &self.conversations;
        if !c.bot_id.is_empty() {
            stmts.push((
                "INSERT INTO conversations (bot_id, chat_id, user_id, message_id, at_ms, intent,
                    confidence, source, action, triggered, auto_reply, variant_id, experiment,
                    tokenize_us, inference_us, queue_us, total_us, model_version, reason, key_id,
                    sealed, sent_at_ms)
                 SELECT bot_id, chat_id, user_id, message_id, at_ms, intent, confidence, source,
                    action, triggered, auto_reply, variant_id, experiment, tokenize_us,
                    inference_us, queue_us, total_us, model_version, reason, key_id, sealed,
                    sent_at_ms
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[],
                    $6::text[], $7::float8[], $8::text[], $9::text[], $10::bool[], $11::bool[],
                    $12::text[], $13::text[], $14::int8[], $15::int8[], $16::int8[], $17::int8[],
                    $18::text[], $19::text[], $20::text[], $21::bytea[], $22::int8[])
                    WITH ORDINALITY AS r(bot_id, chat_id, user_id, message_id, at_ms, intent,
                    confidence, source, action, triggered, auto_reply, variant_id, experiment,
                    tokenize_us, inference_us, queue_us, total_us, model_version, reason, key_id,
                    sealed, sent_at_ms, n)
                 ORDER BY n
                 ON CONFLICT (bot_id, message_id) WHERE message_id <> '' DO UPDATE SET
                    id = DEFAULT, chat_id = EXCLUDED.chat_id, user_id = EXCLUDED.user_id,
                    at_ms = EXCLUDED.at_ms, intent = EXCLUDED.intent,
                    confidence = EXCLUDED.confidence, source = EXCLUDED.source,
                    action = EXCLUDED.action, triggered = EXCLUDED.triggered,
                    auto_reply = EXCLUDED.auto_reply, variant_id = EXCLUDED.variant_id,
                    experiment = EXCLUDED.experiment, tokenize_us = EXCLUDED.tokenize_us,
                    inference_us = EXCLUDED.inference_us, queue_us = EXCLUDED.queue_us,
                    total_us = EXCLUDED.total_us, model_version = EXCLUDED.model_version,
                    reason = EXCLUDED.reason, key_id = EXCLUDED.key_id, sealed = EXCLUDED.sealed,
                    sent_at_ms = EXCLUDED.sent_at_ms",
                vec![
                    &c.bot_id,
                    &c.chat_id,
                    &c.user_id,
                    &c.message_id,
                    &c.at_ms,
                    &c.intent,
                    &c.confidence,
                    &c.source,
                    &c.action,
                    &c.triggered,
                    &c.auto_reply,
                    &c.variant_id,
                    &c.experiment,
                    &c.tokenize_us,
                    &c.inference_us,
                    &c.queue_us,
                    &c.total_us,
                    &c.model_version,
                    &c.reason,
                    &c.key_id,
                    &c.sealed,
                    &c.sent_at_ms,
                ],
            ));
        }
        let a = &self.answers;
        if !a.bot_id.is_empty() {
            // A key answered before the window can be answered anew.
            stmts.push((
                "INSERT INTO answers (bot_id, kind, key, at_ms, key_id, sealed)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[],
                    $6::bytea[])
                 ON CONFLICT (bot_id, kind, key) DO UPDATE SET at_ms = EXCLUDED.at_ms,
                    key_id = EXCLUDED.key_id, sealed = EXCLUDED.sealed",
                vec![&a.bot_id, &a.kind, &a.key, &a.at_ms, &a.key_id, &a.sealed],
            ));
        }
        let f = &self.feedback;
        if !f.bot_id.is_empty() {
            stmts.push((
                "INSERT INTO feedback (bot_id, message_id, kind, variant_id, at_ms)
                 SELECT bot_id, message_id, kind, variant_id, at_ms
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[])
                    WITH ORDINALITY AS r(bot_id, message_id, kind, variant_id, at_ms, n)
                 ORDER BY n",
                vec![&f.bot_id, &f.message_id, &f.kind, &f.variant_id, &f.at_ms],
            ));
        }
        let h = &self.human_replies;
        if !h.bot_id.is_empty() {
            stmts.push((
                "INSERT INTO human_replies (bot_id, chat_id, message_id, at_ms)
                 SELECT bot_id, chat_id, message_id, at_ms
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[])
                    WITH ORDINALITY AS r(bot_id, chat_id, message_id, at_ms, n)
                 ORDER BY n",
                vec![&h.bot_id, &h.chat_id, &h.message_id, &h.at_ms],
            ));
        }
        let au = &self.audit;
        if !au.at_ms.is_empty() {
            stmts.push(au.statement());
        }
        let s = &self.state;
        if !s.below_kind.is_empty() {
            // Positions are zero-padded digits compared bytewise (COLLATE "C"), so text order
            // is their order and every `s~` key sorts above them.
            stmts.push((
                r#"DELETE FROM playbook_state s
                 USING unnest($1::text[], $2::text[]) AS d(kind, below)
                 WHERE s.kind = d.kind AND s.key < (d.below COLLATE "C")"#,
                vec![&s.below_kind, &s.below_key],
            ));
        }
        if !s.delete_kind.is_empty() {
            stmts.push((
                "DELETE FROM playbook_state s
                 USING unnest($1::text[], $2::text[]) AS d(kind, key)
                 WHERE s.kind = d.kind AND s.key = d.key",
                vec![&s.delete_kind, &s.delete_key],
            ));
        }
        if !s.put_kind.is_empty() {
            stmts.push((
                "INSERT INTO playbook_state (kind, key, key_id, sealed)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[])
                 ON CONFLICT (kind, key) DO UPDATE SET key_id = EXCLUDED.key_id,
                    sealed = EXCLUDED.sealed",
                vec![&s.put_kind, &s.put_key, &s.put_key_id, &s.put_sealed],
            ));
        }
        stmts
    }
}

/// One audit row as a batch of one (the purge's own row).
pub async fn insert_audit(tx: &Transaction<'_>, a: &AuditRecord) -> Result<(), StoreError> {
    let mut cols = AuditColumns::default();
    cols.push(a);
    let (sql, params) = cols.statement();
    exec(tx, sql, &params).await?;
    Ok(())
}

impl AuditColumns {
    /// Inserts the rows in their order (ids keep it: rows are read back oldest first).
    fn statement(&self) -> Statement<'_> {
        (
            "INSERT INTO audit (at_ms, actor, action, detail)
             SELECT at_ms, actor, action, detail
             FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[])
                WITH ORDINALITY AS r(at_ms, actor, action, detail, n)
             ORDER BY n",
            vec![&self.at_ms, &self.actor, &self.action, &self.detail],
        )
    }

    fn push(&mut self, a: &AuditRecord) {
        self.at_ms.push(a.at_ms);
        self.actor.push(a.actor.clone());
        self.action.push(a.action.as_str());
        self.detail.push(a.detail.clone());
    }
}

impl ConversationColumns {
    fn push(&mut self, row: ConversationRow) {
        let c = row.record;
        self.bot_id.push(c.bot_id.clone());
        self.chat_id.push(c.chat_id.clone());
        self.user_id.push(row.user);
        self.message_id.push(row.message);
        self.at_ms.push(c.at_ms);
        self.intent.push(c.intent.clone());
        self.confidence.push(f64::from(c.confidence));
        self.source.push(c.source.as_str());
        self.action.push(c.action.as_str());
        self.triggered.push(c.triggered);
        self.auto_reply.push(c.is_auto_reply());
        self.variant_id.push(c.variant_id.clone());
        self.experiment.push(c.experiment.clone());
        self.tokenize_us.push(us(c.timings.tokenize_us));
        self.inference_us.push(us(c.timings.inference_us));
        self.queue_us.push(us(c.timings.queue_us));
        self.total_us.push(us(c.timings.total_us));
        self.model_version.push(c.model_version.clone());
        self.reason.push(c.reason.clone());
        self.key_id.push(row.key_id);
        self.sealed.push(row.sealed);
        self.sent_at_ms.push(c.sent_at_ms);
    }
}
