//! The labelling inbox: messages the bot did not understand well (answered with low
//! confidence, asked to clarify, handed off because it did not understand, or marked unhelpful
//! by the user) from the log, grouped by the intent the engine found likeliest. An operator
//! assigns the right intent; the labels export as Rasa-style NLU YAML, the format `intentd
//! train` reads, so the next model learns them.
//!
//! Labels are durable rows of their own kind (sealed like the log, see `crate::durable`),
//! keyed by the conversation row they label, so labelling again replaces the label.

use std::collections::{BTreeMap, HashSet};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::desk::check_agent;
use super::validate::InvalidField;
use super::{Service, ServiceError};
use crate::durable::{Journal, Journaled, RowKey, StoredRow};
use crate::store::{AuditAction, StoredConversation};
use crate::types::{Action, Source};

/// Durable row kind of a label.
pub const KIND: &str = "label";
/// Conversations one inbox call reads at most (newest window first is the caller's job).
pub const MAX_SCAN: usize = 50_000;
/// Default confidence below which an answered message is "low confidence".
pub const DEFAULT_BELOW_CONFIDENCE: f32 = 0.6;
/// Most items one inbox call returns.
pub const MAX_ITEMS: usize = 1_000;

/// An operator's label for one logged message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub conversation_id: i64,
    pub bot_id: String,
    /// The message as logged (PII redacted).
    pub text: String,
    pub intent: String,
    pub by: String,
    pub at_ms: i64,
    /// When the labelled message was sent (its log row's time); 0 for labels stored before
    /// this was kept (an export window then uses `at_ms`, when it was labelled).
    #[serde(default)]
    pub sent_at_ms: i64,
}

impl Label {
    /// The time an export window is checked against.
    fn message_time_ms(&self) -> i64 {
        if self.sent_at_ms != 0 {
            self.sent_at_ms
        } else {
            self.at_ms
        }
    }
}

/// The labels, with a journal when they are durable.
#[derive(Debug, Default)]
pub struct LabelBook {
    labels: BTreeMap<i64, Label>,
    journal: Option<Journal>,
}

impl LabelBook {
    pub fn new(durable: bool) -> Self {
        Self {
            labels: BTreeMap::new(),
            journal: durable.then(Journal::default),
        }
    }

    /// Loads the labels a previous run stored (rows of other kinds are skipped).
    pub fn restore(&mut self, rows: &[StoredRow]) -> Result<usize, String> {
        let mut n = 0;
        for (i, row) in rows.iter().enumerate().filter(|(_, r)| r.kind == KIND) {
            let l: Label = serde_json::from_slice(&row.json)
                .map_err(|e| format!("stored labels: row {i} is not a valid label: {e}"))?;
            self.labels.insert(l.conversation_id, l);
            n += 1;
        }
        Ok(n)
    }

    pub fn set(&mut self, label: Label) {
        let seq = u64::try_from(label.conversation_id).unwrap_or(0);
        if let Some(j) = &mut self.journal {
            j.put(KIND, RowKey::Seq(seq), &label);
        }
        self.labels.insert(label.conversation_id, label);
    }

    pub fn get(&self, conversation_id: i64) -> Option<&Label> {
        self.labels.get(&conversation_id)
    }

    pub fn all(&self) -> impl Iterator<Item = &Label> {
        self.labels.values()
    }
}

impl Journaled for Mutex<LabelBook> {
    fn with_journal<R>(&self, f: impl FnOnce(&mut Option<Journal>) -> R) -> R {
        f(&mut self.lock().journal)
    }
}

/// Which messages an inbox call lists.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxQuery {
    /// Only this bot's messages (empty: every bot).
    pub bot_id: String,
    pub from_ms: i64,
    /// 0: now.
    pub to_ms: i64,
    /// Answered below this confidence counts as low (0 < x <= 1).
    pub below_confidence: f32,
    /// Also list messages that already have a label.
    pub include_labelled: bool,
}

/// One message in the inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxItem {
    /// The log row's id: what a label names.
    pub conversation_id: i64,
    pub bot_id: String,
    pub chat_id: String,
    pub at_ms: i64,
    /// PII redacted.
    pub text: String,
    /// The engine's intent ("" when none was recognised).
    pub intent: String,
    pub confidence: f32,
    pub action: Action,
    pub reason: String,
    /// Why it is here: `low_confidence`, `clarify`, `not_understood`, `unhelpful`.
    pub why: Vec<&'static str>,
    /// The intent an operator assigned, if any.
    pub label: Option<String>,
}

/// Inbox items with the same likely intent.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxGroup {
    /// "" when the engine recognised nothing.
    pub likely_intent: String,
    pub items: Vec<InboxItem>,
}

/// Why a logged message belongs in the inbox (empty: it does not).
fn reasons(
    c: &StoredConversation,
    below: f32,
    unhelpful: &HashSet<(String, String)>,
) -> Vec<&'static str> {
    let r = &c.record;
    let mut why = Vec::new();
    if matches!(r.action, Action::Block) || r.source == Source::Policy {
        return why; // compliance decided: that is the review queue's business
    }
    if r.action == Action::Clarify {
        why.push("clarify");
    }
    if r.reason == "handoff:not_understood" {
        why.push("not_understood");
    }
    let answered = matches!(r.action, Action::Reply | Action::Clarify | Action::Handoff);
    if answered && r.confidence < below {
        why.push("low_confidence");
    }
    if unhelpful.contains(&(r.bot_id.clone(), r.message_id.clone())) {
        why.push("unhelpful");
    }
    why
}

/// Rasa NLU YAML of the labels, one `intent` block per intent (sorted), each example once. A
/// JSON string is a valid YAML double-quoted scalar, so any text survives the round trip.
pub fn to_rasa_yaml<'a>(labels: impl Iterator<Item = &'a Label>) -> String {
    let mut by_intent: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for l in labels {
        let examples = by_intent.entry(&l.intent).or_default();
        if !examples.contains(&l.text.as_str()) {
            examples.push(&l.text);
        }
    }
    let mut out = String::from("version: \"3.1\"\nnlu:\n");
    for (intent, examples) in by_intent {
        out.push_str(&format!("- intent: {intent}\n  examples: |\n"));
        for e in examples {
            let quoted = serde_json::to_string(e).unwrap_or_else(|_| "\"\"".into());
            out.push_str(&format!("    - {quoted}\n"));
        }
    }
    out
}

impl Service {
    /// Loads the labels a previous run stored (call before serving).
    pub fn restore_labels(&self, rows: &[StoredRow]) -> Result<usize, String> {
        self.labels.lock().restore(rows)
    }

    /// Labels are kept by one process: among replicas that all serve, the lease holder. The
    /// others answer Unavailable, which a balancer or client retries on the next replica.
    pub fn labels_here(&self) -> Result<(), ServiceError> {
        match self.leads() {
            true => Ok(()),
            false => Err(ServiceError::Unavailable(
                "this replica does not hold the leader lease; labels are kept by the one that \
                 does: retry on another replica"
                    .into(),
            )),
        }
    }

    /// The inbox: what the bot did not understand well in the window, grouped by likely
    /// intent (groups with the most items first).
    pub async fn label_inbox(&self, q: &InboxQuery) -> Result<Vec<InboxGroup>, ServiceError> {
        self.labels_here()?;
        if !(q.below_confidence > 0.0 && q.below_confidence <= 1.0) {
            return Err(InvalidField {
                field: "below_confidence".into(),
                problem: format!("is {}, must be in (0, 1]", q.below_confidence),
            }
            .into());
        }
        let to_ms = if q.to_ms == 0 { self.now_ms() } else { q.to_ms };
        if q.from_ms > to_ms {
            return Err(InvalidField {
                field: "from_ms".into(),
                problem: format!("{} is after to_ms {to_ms}", q.from_ms),
            }
            .into());
        }
        let storage = self.storage.clone().ok_or_else(|| {
            ServiceError::FailedPrecondition(
                "the labelling inbox reads the conversation log: the store is disabled".into(),
            )
        })?;
        let from_ms = q.from_ms;
        let read = tokio::task::spawn_blocking(move || {
            let store = storage.store();
            let unhelpful: HashSet<(String, String)> = store
                .unhelpful(from_ms, to_ms, MAX_SCAN)?
                .into_iter()
                .collect();
            let mut rows = Vec::new();
            let mut after = 0;
            while rows.len() < MAX_SCAN {
                let page = store.conversations(from_ms, to_ms, after, 1_000)?;
                let Some(last) = page.last() else { break };
                after = last.id;
                rows.extend(page);
            }
            Ok::<_, crate::store::StoreError>((rows, unhelpful))
        });
        let (rows, unhelpful) = read
            .await
            .map_err(|e| ServiceError::Internal(format!("inbox read: {e}")))?
            .map_err(|e| ServiceError::Unavailable(format!("store: {e}")))?;
        let labels = self.labels.lock();
        let mut groups: BTreeMap<String, Vec<InboxItem>> = BTreeMap::new();
        let mut n = 0;
        // Newest first, so a long inbox shows what happened lately.
        for c in rows.iter().rev() {
            if n >= MAX_ITEMS {
                break;
            }
            if !q.bot_id.is_empty() && c.record.bot_id != q.bot_id {
                continue;
            }
            let why = reasons(c, q.below_confidence, &unhelpful);
            let label = labels.get(c.id).map(|l| l.intent.clone());
            if why.is_empty() || (label.is_some() && !q.include_labelled) {
                continue;
            }
            let r = &c.record;
            groups.entry(r.intent.clone()).or_default().push(InboxItem {
                conversation_id: c.id,
                bot_id: r.bot_id.clone(),
                chat_id: r.chat_id.clone(),
                at_ms: r.at_ms,
                text: r.text.clone(),
                intent: r.intent.clone(),
                confidence: r.confidence,
                action: r.action,
                reason: r.reason.clone(),
                why,
                label,
            });
            n += 1;
        }
        let mut out: Vec<InboxGroup> = groups
            .into_iter()
            .map(|(likely_intent, items)| InboxGroup {
                likely_intent,
                items,
            })
            .collect();
        out.sort_by_key(|g| std::cmp::Reverse(g.items.len()));
        Ok(out)
    }

    /// An operator assigns `intent` (one of intents.yml) to a logged message; labelling it
    /// again replaces the label. Answered once stored.
    pub async fn assign_label(
        &self,
        conversation_id: i64,
        intent: &str,
        by: &str,
    ) -> Result<Label, ServiceError> {
        check_agent("by", by)?;
        self.labels_here()?;
        let rules = self.operator.load_full();
        if !rules.catalog.contains(intent) {
            let known: Vec<&str> = rules.catalog.ids().collect();
            return Err(InvalidField {
                field: "intent".into(),
                problem: format!(
                    "'{intent}' is not an intent of intents.yml (one of: {})",
                    known.join(", ")
                ),
            }
            .into());
        }
        let storage = self.storage.clone().ok_or_else(|| {
            ServiceError::FailedPrecondition("labels are kept in the store: it is disabled".into())
        })?;
        let row = tokio::task::spawn_blocking(move || {
            storage
                .store()
                .conversations(i64::MIN, i64::MAX, conversation_id.saturating_sub(1), 1)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("label read: {e}")))?
        .map_err(|e| ServiceError::Unavailable(format!("store: {e}")))?;
        let Some(c) = row.into_iter().find(|c| c.id == conversation_id) else {
            return Err(ServiceError::NotFound(format!(
                "no logged message {conversation_id} (purged by retention, or never logged)"
            )));
        };
        let label = Label {
            conversation_id,
            bot_id: c.record.bot_id,
            text: c.record.text,
            intent: intent.to_string(),
            by: by.to_string(),
            at_ms: self.now_ms(),
            sent_at_ms: c.record.at_ms,
        };
        self.labels.lock().set(label.clone());
        self.audit(
            by,
            AuditAction::Review,
            &format!("label conversation={conversation_id} intent={intent}"),
        );
        self.flush_state()
            .await
            .map_err(|e| ServiceError::Unavailable(format!("the label is not stored yet: {e}")))?;
        Ok(label)
    }

    /// The labels (of `bot_id` when not empty) as Rasa NLU YAML, and how many examples.
    pub fn export_labels(&self, bot_id: &str) -> (String, usize) {
        self.export_labels_between(bot_id, i64::MIN, i64::MAX)
    }

    /// [`Self::export_labels`] of the messages sent in `[from_ms, to_ms]` (inclusive): the
    /// console's inbox filter, so the download holds what the page lists.
    pub fn export_labels_between(&self, bot_id: &str, from_ms: i64, to_ms: i64) -> (String, usize) {
        let book = self.labels.lock();
        let mine: Vec<&Label> = book
            .all()
            .filter(|l| bot_id.is_empty() || l.bot_id == bot_id)
            .filter(|l| (from_ms..=to_ms).contains(&l.message_time_ms()))
            .collect();
        (to_rasa_yaml(mine.iter().copied()), mine.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::{DurableRows, RowWrite};

    fn label(id: i64, intent: &str, text: &str) -> Label {
        Label {
            conversation_id: id,
            bot_id: "b".into(),
            text: text.into(),
            intent: intent.into(),
            by: "amy".into(),
            at_ms: 1,
            sent_at_ms: 0,
        }
    }

    #[test]
    fn the_export_is_rasa_yaml_the_trainer_reads() {
        let labels = [
            label(1, "refund", "怎么退款"),
            label(2, "price", "多少钱: \"贵吗\"\n真的"),
            label(3, "refund", "怎么退款"),
            label(4, "refund", "- 不要了 # 退"),
        ];
        let yaml = to_rasa_yaml(labels.iter());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.yml");
        std::fs::write(&path, &yaml).unwrap();
        let data = crate::data::load(&path).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let mut got: Vec<(String, String)> = data
            .examples
            .iter()
            .map(|e| (e.label.clone(), e.text.clone()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                // (The loader collapses whitespace, as for every training file.)
                ("price".to_string(), "多少钱: \"贵吗\" 真的".to_string()),
                ("refund".to_string(), "- 不要了 # 退".to_string()),
                ("refund".to_string(), "怎么退款".to_string()),
            ]
        );
    }

    #[test]
    fn labels_survive_a_restart_and_relabelling_replaces() {
        let mut book = LabelBook::new(true);
        book.set(label(7, "refund", "x"));
        book.set(label(7, "price", "x"));
        let writes = DurableRows::take_writes(&Mutex::new(std::mem::take(&mut book)));
        let rows: Vec<StoredRow> = writes
            .into_iter()
            .filter_map(RowWrite::into_stored)
            .collect();
        let mut back = LabelBook::new(true);
        assert_eq!(back.restore(&rows).unwrap(), 1);
        assert_eq!(back.get(7).unwrap().intent, "price");
    }
}
