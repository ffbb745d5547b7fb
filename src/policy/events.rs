//! Group events (mirrors `intentd.v1.Event`): member joined / left, link clicked, card shared and
//! the activity signal, plus the welcome-merging state.
//!
//! Merged welcomes. With `welcome.merge_window_s` = W > 0, the first MEMBER_JOINED in a group
//! opens a window ending W later:
//! - that join's decision is REPLY with no reply text, reason `welcome:queued`, and
//!   `send_after_ms` = time until the window ends (plus spacing);
//! - every further join before the window ends gets IGNORE, reason `merged_welcome`, the same
//!   send time, and `merged_user_ids` listing everyone in the welcome so far;
//! - at window end [`super::Playbook::due`] returns ONE `WELCOME` outbound whose `{nickname}` is
//!   all nicknames joined by the list separator (and whose `user_ids` lists them);
//! - a member who leaves before the window ends is taken out of the pending welcome.
//!
//! With W = 0 each join gets its welcome at once in the decision (reason `welcome`).
//! `welcome.enabled: false` switches welcomes off for a group (reason `welcome:disabled`).

use serde::{Deserialize, Serialize};

use crate::types::{PolicyDecision, UserInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    MemberJoined,
    MemberLeft,
    LinkClicked,
    CardShared,
    Activity,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::MemberJoined => "member_joined",
            EventKind::MemberLeft => "member_left",
            EventKind::LinkClicked => "link_clicked",
            EventKind::CardShared => "card_shared",
            EventKind::Activity => "activity",
        }
    }
}

/// One group event, already validated by the front door.
#[derive(Debug, Clone, PartialEq)]
pub struct EventInput {
    pub bot_id: String,
    pub chat_id: String,
    pub chat_name: String,
    pub kind: EventKind,
    pub user: UserInfo,
    /// Link or card id for LINK_CLICKED / CARD_SHARED.
    pub target_id: String,
    /// Unix ms when the server received the event (what records and retention go by).
    pub at_ms: i64,
    /// Unix ms of the event as the caller sent it (0 when it did not say).
    pub sent_at_ms: i64,
    pub event_id: String,
}

/// The answer to an event: a decision plus, for welcomes, the users in the merged welcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDecision {
    pub decision: PolicyDecision,
    pub merged_user_ids: Vec<String>,
}

/// A welcome waiting for its merge window to close (part of the group's state row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingWelcome {
    pub send_at_ms: i64,
    /// (user id, nickname) in join order.
    pub users: Vec<(String, String)>,
    pub chat_name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JoinOutcome {
    /// A new window was opened; the welcome goes at `send_at_ms`.
    Opened { send_at_ms: i64 },
    /// Added to the open window.
    Merged {
        send_at_ms: i64,
        user_ids: Vec<String>,
    },
}

/// Register a join in a group's pending welcome. `send_at_ms` is the window end used when a new
/// window opens.
pub fn welcome_join(
    pending: &mut Option<PendingWelcome>,
    chat_name: &str,
    user: &UserInfo,
    send_at_ms: i64,
) -> JoinOutcome {
    // A pending welcome (even one whose window has just closed but that `due()` has not
    // collected yet) absorbs the join, so nobody is welcomed twice or left out.
    if let Some(p) = pending {
        if !p.users.iter().any(|(id, _)| id == &user.id) {
            p.users.push((user.id.clone(), user.nickname.clone()));
        }
        if !chat_name.is_empty() {
            p.chat_name = chat_name.to_string();
        }
        return JoinOutcome::Merged {
            send_at_ms: p.send_at_ms,
            user_ids: p.users.iter().map(|(id, _)| id.clone()).collect(),
        };
    }
    *pending = Some(PendingWelcome {
        send_at_ms,
        users: vec![(user.id.clone(), user.nickname.clone())],
        chat_name: chat_name.to_string(),
    });
    JoinOutcome::Opened { send_at_ms }
}

/// A member left: drop them from a pending welcome (and drop an emptied welcome).
pub fn welcome_leave(pending: &mut Option<PendingWelcome>, user_id: &str) {
    if let Some(p) = pending {
        p.users.retain(|(id, _)| id != user_id);
        if p.users.is_empty() {
            *pending = None;
        }
    }
}

/// Take the welcome if its window has closed.
pub fn welcome_take_due(pending: &mut Option<PendingWelcome>, now: i64) -> Option<PendingWelcome> {
    if pending.as_ref().is_some_and(|p| p.send_at_ms <= now) {
        pending.take()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(id: &str, nick: &str) -> UserInfo {
        UserInfo {
            id: id.into(),
            nickname: nick.into(),
            ..Default::default()
        }
    }

    #[test]
    fn joins_in_window_merge_and_leavers_are_removed() {
        let mut m = None;
        assert_eq!(
            welcome_join(&mut m, "群", &u("u1", "小王"), 60_000),
            JoinOutcome::Opened { send_at_ms: 60_000 }
        );
        assert_eq!(
            welcome_join(&mut m, "群", &u("u2", "小李"), 70_000),
            JoinOutcome::Merged {
                send_at_ms: 60_000,
                user_ids: vec!["u1".into(), "u2".into()]
            }
        );
        welcome_join(&mut m, "群", &u("u3", "小张"), 80_000);
        welcome_leave(&mut m, "u2");
        assert_eq!(m.as_ref().map(|p| p.send_at_ms), Some(60_000));
        assert!(welcome_take_due(&mut m, 59_999).is_none());
        let due = welcome_take_due(&mut m, 60_000).unwrap();
        assert_eq!(
            due.users,
            vec![("u1".into(), "小王".into()), ("u3".into(), "小张".into())]
        );
        assert!(welcome_take_due(&mut m, 60_000).is_none());
        // After collection a new join opens a new window.
        assert_eq!(
            welcome_join(&mut m, "群", &u("u4", "小赵"), 121_000),
            JoinOutcome::Opened {
                send_at_ms: 121_000
            }
        );
    }

    #[test]
    fn everyone_leaving_cancels_the_welcome() {
        let mut m = None;
        welcome_join(&mut m, "", &u("u1", "a"), 60_000);
        welcome_leave(&mut m, "u1");
        assert_eq!(m, None);
    }
}
