//! The audit trail (who did what, when) and the retention policy that purges old rows.
//!
//! Audit rows are kept at least [`AUDIT_RETENTION_FLOOR_DAYS`] days: the config cannot ask for
//! less, and the backend refuses a purge that would cut into the floor even if asked directly.
//! Every purge writes its own audit row, in the same transaction as the deletion.

use serde::{Deserialize, Serialize};

use super::{
    AuditRecord, ConversationRecord, Record, Store, StoreConfig, StoreError,
    AUDIT_RETENTION_FLOOR_DAYS,
};
use crate::types::Action;

pub const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// What an audit row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    ConfigChange,
    ModelChange,
    Reload,
    AdminCall,
    Handoff,
    Block,
    Export,
    Purge,
    Startup,
    Shutdown,
    /// The first successful commit after the store had become unhealthy.
    StoreRecovered,
    /// An operator decided a review entry (approve / confirm).
    Review,
    /// An agent claimed a handoff.
    HandoffClaimed,
    /// A handoff was closed (by its agent, or by a human reply naming it).
    HandoffClosed,
}

impl AuditAction {
    pub const ALL: [AuditAction; 14] = [
        AuditAction::ConfigChange,
        AuditAction::ModelChange,
        AuditAction::Reload,
        AuditAction::AdminCall,
        AuditAction::Handoff,
        AuditAction::Block,
        AuditAction::Export,
        AuditAction::Purge,
        AuditAction::Startup,
        AuditAction::Shutdown,
        AuditAction::StoreRecovered,
        AuditAction::Review,
        AuditAction::HandoffClaimed,
        AuditAction::HandoffClosed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::ConfigChange => "config_change",
            AuditAction::ModelChange => "model_change",
            AuditAction::Reload => "reload",
            AuditAction::AdminCall => "admin_call",
            AuditAction::Handoff => "handoff",
            AuditAction::Block => "block",
            AuditAction::Export => "export",
            AuditAction::Purge => "purge",
            AuditAction::Startup => "startup",
            AuditAction::Shutdown => "shutdown",
            AuditAction::StoreRecovered => "store_recovered",
            AuditAction::Review => "review",
            AuditAction::HandoffClaimed => "handoff_claimed",
            AuditAction::HandoffClosed => "handoff_closed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// The audit row a conversation implies: handoffs and blocks are audited automatically, in the
/// same transaction as the conversation row, so no code path can forget them. Ids and the
/// reason only, never the text; the user and the message as stored (`user`, `message`: their
/// pseudonyms).
pub fn implied_audit(c: &ConversationRecord, user: &str, message: &str) -> Option<AuditRecord> {
    let action = match c.action {
        Action::Handoff => AuditAction::Handoff,
        Action::Block => AuditAction::Block,
        _ => return None,
    };
    Some(AuditRecord {
        actor: "policy".into(),
        action,
        detail: format!(
            "bot={} chat={} user={} message={} intent={} reason={}",
            c.bot_id, c.chat_id, user, message, c.intent, c.reason
        ),
        at_ms: c.at_ms,
    })
}

/// For schema migration 5: the detail of an implied audit row written with a clear message
/// id, with that id replaced by `message(bot_id, id)`, and a clear user id (one not already
/// `u~…`: rows from before migration 4, which converted only the conversations) replaced by
/// `user(bot_id, id)`; None when the detail is not of that form or nothing changed. The fields
/// are found left to right (`bot=` up to ` chat=`, then ` user=` up to the first ` message=`, up
/// to the next ` intent=`), so only a chat or user id that itself contains ` message=` could
/// mislead it.
pub fn pseudonymise_implied_detail(
    detail: &str,
    message: impl Fn(&str, &str) -> String,
    user: impl Fn(&str, &str) -> String,
) -> Option<String> {
    const USER: &str = " user=";
    const MESSAGE: &str = " message=";
    let (bot, _) = detail.strip_prefix("bot=")?.split_once(" chat=")?;
    let user_start = detail.find(USER)? + USER.len();
    let user_end = user_start + detail[user_start..].find(MESSAGE)?;
    let start = user_end + MESSAGE.len();
    let end = start + detail[start..].find(" intent=")?;
    let clear_user = &detail[user_start..user_end];
    let clear = &detail[start..end];
    let new_user = if clear_user.is_empty() || clear_user.starts_with(super::pseudonyms::PREFIX) {
        clear_user.to_string()
    } else {
        user(bot, clear_user)
    };
    let new_message = if clear.is_empty() {
        String::new()
    } else {
        message(bot, clear)
    };
    if new_user == clear_user && new_message == clear {
        return None;
    }
    Some(format!(
        "{}{}{}{}{}",
        &detail[..user_start],
        new_user,
        &detail[user_end..start],
        new_message,
        &detail[end..]
    ))
}

/// Where a purge cuts. Rows with `at_ms` strictly before a cutoff are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeCutoffs {
    pub now_ms: i64,
    pub data_before_ms: i64,
    pub audit_before_ms: i64,
    /// First answers kept for idempotent retries, older than their window.
    pub answers_before_ms: i64,
}

impl PurgeCutoffs {
    pub fn from_config(config: &StoreConfig, now_ms: i64) -> Result<Self, StoreError> {
        config.validate()?;
        Ok(Self {
            now_ms,
            data_before_ms: now_ms - i64::from(config.conversation_retention_days) * DAY_MS,
            audit_before_ms: now_ms - i64::from(config.audit_retention_days) * DAY_MS,
            answers_before_ms: now_ms.saturating_sub(
                i64::try_from(config.answer_window_s.saturating_mul(1000)).unwrap_or(i64::MAX),
            ),
        })
    }

    /// Backends call this before deleting: the audit floor holds whatever the caller computed.
    pub fn check_floor(&self) -> Result<(), StoreError> {
        let floor = self.now_ms - i64::from(AUDIT_RETENTION_FLOOR_DAYS) * DAY_MS;
        if self.audit_before_ms > floor {
            return Err(StoreError::Invalid(format!(
                "purge would delete audit rows younger than the {AUDIT_RETENTION_FLOOR_DAYS}-day floor \
                 (cutoff {} > floor {floor})",
                self.audit_before_ms
            )));
        }
        Ok(())
    }
}

/// Rows deleted by one purge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    pub conversations: u64,
    pub feedback: u64,
    pub human_replies: u64,
    pub audit: u64,
}

/// The audit row written about a purge.
pub fn purge_record(cutoffs: &PurgeCutoffs, report: &PurgeReport) -> AuditRecord {
    AuditRecord {
        actor: "retention".into(),
        action: AuditAction::Purge,
        detail: format!(
            "deleted conversations={} feedback={} human_replies={} (before {}) audit={} (before {})",
            report.conversations,
            report.feedback,
            report.human_replies,
            cutoffs.data_before_ms,
            report.audit,
            cutoffs.audit_before_ms
        ),
        at_ms: cutoffs.now_ms,
    }
}

/// Applies the configured retention as of `now_ms`.
pub fn purge(
    store: &dyn Store,
    config: &StoreConfig,
    now_ms: i64,
) -> Result<PurgeReport, StoreError> {
    let cutoffs = PurgeCutoffs::from_config(config, now_ms)?;
    let report = store.purge(&cutoffs)?;
    tracing::info!(?report, "retention purge done");
    Ok(report)
}

/// Convenience for writing one audit row synchronously (CLI commands without a writer thread).
pub fn write_now(
    store: &dyn Store,
    actor: &str,
    action: AuditAction,
    detail: String,
    at_ms: i64,
) -> Result<(), StoreError> {
    store.write_batch(&[Record::Audit(AuditRecord {
        actor: actor.into(),
        action,
        detail,
        at_ms,
    })])
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{FeedbackKind, SqliteStore};
    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn audit_at(at_ms: i64, what: &str) -> Record {
        Record::Audit(AuditRecord {
            actor: "admin".into(),
            action: AuditAction::Reload,
            detail: what.into(),
            at_ms,
        })
    }

    #[test]
    fn purge_keeps_the_180_day_audit_floor_and_audits_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("a.db"), keyring(&key_b64(1))).unwrap();
        let clock = ManualClock::new(0);
        clock.set_ms(1_000 * DAY_MS);
        let now = clock.now_ms();
        store
            .write_batch(&[
                audit_at(now - 181 * DAY_MS, "old audit"),
                audit_at(now - 179 * DAY_MS, "young audit"),
                Record::Conversation(conversation("b", "g", "old", now - 91 * DAY_MS)),
                Record::Conversation(conversation("b", "g", "new", now - 89 * DAY_MS)),
                Record::Feedback(feedback(
                    "b",
                    "old",
                    FeedbackKind::Clicked,
                    now - 91 * DAY_MS,
                )),
                Record::Feedback(feedback(
                    "b",
                    "new",
                    FeedbackKind::Clicked,
                    now - 89 * DAY_MS,
                )),
            ])
            .unwrap();
        let cfg = StoreConfig {
            audit_retention_days: 180,
            conversation_retention_days: 90,
            ..StoreConfig::default()
        };
        let report = purge(&store, &cfg, now).unwrap();
        assert_eq!(
            report,
            PurgeReport {
                conversations: 1,
                feedback: 1,
                human_replies: 0,
                audit: 1
            }
        );

        let rows = store.audit_rows(0, now).unwrap();
        let details: Vec<_> = rows.iter().map(|r| r.detail.as_str()).collect();
        assert!(details.contains(&"young audit"));
        assert!(!details.contains(&"old audit"));
        let purge_row = rows
            .iter()
            .find(|r| r.action == AuditAction::Purge)
            .expect("purge is audited");
        assert_eq!(purge_row.at_ms, now);
        assert!(
            purge_row.detail.contains("conversations=1"),
            "{}",
            purge_row.detail
        );
        assert_eq!(store.row_counts().unwrap().conversations, 1);

        // A purge one day later still keeps the 179-day row (now 180 days old: not older).
        clock.advance_ms(DAY_MS);
        let report = purge(&store, &cfg, clock.now_ms()).unwrap();
        assert_eq!(report.audit, 0);
        // And a caller bypassing the config cannot cut into the floor.
        let now = clock.now_ms();
        let bad = PurgeCutoffs {
            now_ms: now,
            data_before_ms: now,
            audit_before_ms: now - 10 * DAY_MS,
            answers_before_ms: now,
        };
        assert!(matches!(store.purge(&bad), Err(StoreError::Invalid(m)) if m.contains("180")));
        assert!(store
            .audit_rows(0, now)
            .unwrap()
            .iter()
            .any(|r| r.detail == "young audit"));
    }

    #[test]
    fn longer_audit_retention_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("a.db"), keyring(&key_b64(1))).unwrap();
        let now = 2_000 * DAY_MS;
        store
            .write_batch(&[
                audit_at(now - 300 * DAY_MS, "300"),
                audit_at(now - 400 * DAY_MS, "400"),
            ])
            .unwrap();
        let cfg = StoreConfig {
            audit_retention_days: 365,
            ..StoreConfig::default()
        };
        assert_eq!(purge(&store, &cfg, now).unwrap().audit, 1);
        let left: Vec<_> = store
            .audit_rows(0, now)
            .unwrap()
            .into_iter()
            .map(|r| r.detail)
            .collect();
        assert!(left.contains(&"300".to_string()) && !left.contains(&"400".to_string()));
    }

    #[test]
    fn handoffs_and_blocks_imply_audit_rows_without_text() {
        let mut c = conversation("b", "g", "m", 5);
        assert!(implied_audit(&c, "u~1", "m~1").is_none());
        c.action = Action::Block;
        let a = implied_audit(&c, "u~1", "m~1").unwrap();
        assert_eq!(a.action, AuditAction::Block);
        assert!(a.detail.contains("message=m~1 "), "{}", a.detail);
        assert!(!a.detail.contains(&c.text));
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
        }
    }

    #[test]
    fn an_old_implied_detail_gets_the_stored_message_id() {
        let mut c = conversation("b 1", "group message x", "msg 7", 5);
        c.action = Action::Handoff;
        let msg = |bot: &str, id: &str| format!("<{bot}|{id}>");
        let user = |bot: &str, id: &str| format!("u~<{bot}|{id}>");
        let old = implied_audit(&c, "u~9", "msg 7").unwrap().detail;
        let new = pseudonymise_implied_detail(&old, msg, user).unwrap();
        assert_eq!(new, implied_audit(&c, "u~9", "<b 1|msg 7>").unwrap().detail);
        // A row from before migration 4 named the user in clear too.
        let older = implied_audit(&c, "wxid 9", "msg 7").unwrap().detail;
        assert_eq!(
            pseudonymise_implied_detail(&older, msg, user).unwrap(),
            implied_audit(&c, "u~<b 1|wxid 9>", "<b 1|msg 7>")
                .unwrap()
                .detail
        );
        let no_message = implied_audit(&c, "wxid 9", "").unwrap().detail;
        assert_eq!(
            pseudonymise_implied_detail(&no_message, msg, user).unwrap(),
            implied_audit(&c, "u~<b 1|wxid 9>", "").unwrap().detail
        );
        // Nothing in clear, or not an implied row: left alone.
        assert_eq!(
            pseudonymise_implied_detail(
                &implied_audit(&c, "u~1", "").unwrap().detail,
                |_, _| unreachable!(),
                |_, _| unreachable!()
            ),
            None
        );
        assert_eq!(
            pseudonymise_implied_detail(
                "graceful shutdown",
                |_, _| unreachable!(),
                |_, _| unreachable!()
            ),
            None
        );
    }
}
