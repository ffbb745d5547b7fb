//! The pure decisions on hand-made state rows: no store, no lock, no clock. Each test builds a
//! [`StateView`], runs the decision on a [`Work`] copy, and checks the decision and the exact
//! [`StateChange`]s (which rows, at which version they were read).

use super::*;
use crate::policy::decide_due::{next_due, plan_due};
use crate::policy::decide_event::decide_event;
use crate::policy::decide_message::{decide_message, precheck};
use crate::policy::decision::{Decider, Work};
use crate::policy::events::PendingWelcome;
use crate::policy::handoff::{HandoffOpening, OpenHandoff};
use crate::policy::scheduler::{Job, JobContent};
use crate::policy::spacing::Priority;
use crate::policy::state::{
    DueView, GroupKey, GroupRow, QueuedJob, Scope, StateChange, StateView, UserRow, Versioned,
};
use crate::types::ReplyOut;

fn config(playbook: &str) -> (OperatorConfig, tempfile::TempDir) {
    let dir = write_dir(playbook);
    let cfg = load_config(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    (cfg, dir)
}

fn key(chat: &str) -> GroupKey {
    GroupKey::new(BOT, chat)
}

fn view(group: Versioned<GroupRow>, user: Versioned<UserRow>, open_elsewhere: usize) -> StateView {
    StateView {
        group,
        user: Some(user),
        bot_open_handoffs: open_elsewhere,
    }
}

fn puts(changes: &[StateChange]) -> Vec<(&'static str, u64)> {
    changes
        .iter()
        .filter_map(|c| match c {
            StateChange::PutGroup {
                expected_version, ..
            } => Some(("group", *expected_version)),
            StateChange::PutUser {
                expected_version, ..
            } => Some(("user", *expected_version)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_reply_takes_the_slot_after_the_last_and_records_the_cooldown_in_the_rows_it_read() {
    let (cfg, _dir) = config(&(BASE.to_string() + "  cooldown: { default_s: 300 }\n"));
    let now = mon(10, 0);
    let d = Decider {
        cfg: &cfg,
        seed: 42,
        now,
    };
    let mut group = GroupRow::default();
    group
        .spacing
        .plan(now - 5_000, &Default::default(), None, Priority::High, 0);
    let mut urow = UserRow::default();
    urow.cooldowns.record("stock", now - 1_000);
    let v = view(
        Versioned {
            version: 7,
            row: group,
        },
        Versioned {
            version: 3,
            row: urow,
        },
        0,
    );
    let scope = Scope::user(key("g"), "u1", Some(0));
    let u = user("u1", "小王");
    let m = msg("g", &u, "问题");

    let run = |intent: &str| {
        let mut w = Work::new(&scope, v.clone());
        let out = decide_message(&d, &mut w, &m, &cls(intent), &names, false);
        (out, w.into_changes())
    };
    let (out, changes) = run("price");
    assert_eq!((out.action, out.reason.as_str()), (Action::Reply, "faq"));
    // The last slot was 5 s ago; min interval 15 s, no jitter.
    assert_eq!(out.send_after_ms, 10_000);
    assert_eq!(puts(&changes), vec![("group", 7), ("user", 3)]);
    let StateChange::PutUser { row, .. } = &changes[1] else {
        panic!("{changes:?}")
    };
    assert_eq!(
        row.cooldowns.remaining("price", now, 300_000),
        Some(300_000)
    );
    assert_eq!(row.profile.last_seen_ms, now);
    let StateChange::PutGroup { row, .. } = &changes[0] else {
        panic!("{changes:?}")
    };
    assert_eq!(row.handoffs.messages, 1);
    assert_eq!(row.timers.as_ref().map(|t| t.name.as_str()), Some("粉丝群"));

    // Same view, same input: the same answer and the same writes (a retry is safe).
    assert_eq!(run("price"), (out, changes));

    // The cooldown in the row read is honoured.
    let (out, _) = run("stock");
    assert_eq!(
        (out.action, out.reason.as_str()),
        (Action::Ignore, "cooldown")
    );
}

#[test]
fn the_announced_wait_counts_the_bots_open_handoffs_from_the_view() {
    let (cfg, _dir) = config(BASE);
    let now = mon(10, 0);
    let d = Decider {
        cfg: &cfg,
        seed: 42,
        now,
    };
    let scope = Scope::user(key("g"), "u1", Some(0));
    let mut group = GroupRow::default();
    let who = HandoffOpening {
        user_id: "u0",
        message_id: "m0",
        reason: "handoff:intent",
    };
    group.handoffs.open(now - 1_000, who, 5);
    // An open handoff past the TTL (60 min) in this group no longer counts and is dropped.
    group.handoffs.open.push_front(OpenHandoff {
        opened_ms: now - 3_600_000,
        ..Default::default()
    });
    let streak = UserRow {
        not_understood_streak: 1,
        ..Default::default()
    };
    let mut w = Work::new(
        &scope,
        view(
            Versioned {
                version: 1,
                row: group,
            },
            Versioned {
                version: 1,
                row: streak,
            },
            2,
        ),
    );
    let u = user("u1", "a");
    let out = decide_message(
        &d,
        &mut w,
        &msg("g", &u, "x"),
        &cls("complaint"),
        &names,
        false,
    );
    // 2 elsewhere + 1 here, then this one: (3 + 1) × 5 minutes.
    assert_eq!(text(&out), "已转人工，预计等待20分钟");
    let open: Vec<_> = w.group.handoffs.open.iter().map(|h| h.opened_ms).collect();
    assert_eq!(open, [now - 1_000, now]);
    // The new one names who and why, with the wait it announced.
    let new = w.group.handoffs.open.back().unwrap();
    assert_eq!(
        (
            new.id,
            new.user_id.as_str(),
            new.reason.as_str(),
            new.wait_minutes
        ),
        (2, "u1", "handoff:intent", 20)
    );
    assert_eq!(
        w.user.not_understood_streak, 0,
        "a handoff resets the streak"
    );
}

#[test]
fn precheck_blocks_and_queues_a_review_entry_without_touching_the_user() {
    let (cfg, _dir) = config(BASE);
    let d = Decider {
        cfg: &cfg,
        seed: 42,
        now: mon(10, 0),
    };
    let scope = Scope::group(key("g"));
    let u = user("u1", "a");
    let mut w = Work::new(
        &scope,
        StateView {
            group: Versioned::default(),
            user: None,
            bot_open_handoffs: 0,
        },
    );
    assert!(precheck(&d, &mut w, &msg("g", &u, "这个多少钱")).is_none());
    let out = precheck(&d, &mut w, &msg("g", &u, "加我微信")).unwrap();
    assert_eq!(
        (out.action, out.reason.as_str()),
        (Action::Block, "banned_word")
    );
    let changes = w.into_changes();
    assert_eq!(puts(&changes), vec![("group", 0)]);
    assert!(matches!(&changes[1], StateChange::AddReview(r) if r.matched == "微信"));
}

#[test]
fn a_join_merges_into_the_pending_welcome_of_the_row() {
    let (cfg, _dir) = config(&(BASE.to_string() + "  welcome: { merge_window_s: 60 }\n"));
    let now = mon(10, 0);
    let d = Decider {
        cfg: &cfg,
        seed: 42,
        now,
    };
    let group = GroupRow {
        welcome: Some(PendingWelcome {
            send_at_ms: now + 20_000,
            users: vec![("u1".into(), "小王".into())],
            chat_name: "粉丝群".into(),
        }),
        ..Default::default()
    };
    let scope = Scope::user(key("g"), "u2", None);
    let mut w = Work::new(
        &scope,
        view(
            Versioned {
                version: 4,
                row: group,
            },
            Versioned::default(),
            0,
        ),
    );
    let ev = EventInput {
        bot_id: BOT.into(),
        chat_id: "g".into(),
        chat_name: "粉丝群".into(),
        kind: EventKind::MemberJoined,
        user: user("u2", "小李"),
        target_id: String::new(),
        at_ms: 0,
        sent_at_ms: 0,
        event_id: "e1".into(),
    };
    let out = decide_event(&d, &mut w, &ev);
    assert_eq!(
        (out.decision.reason.as_str(), out.decision.send_after_ms),
        ("merged_welcome", 20_000)
    );
    assert_eq!(out.merged_user_ids, vec!["u1", "u2"]);
    // The user row did not change: only the group is written.
    assert_eq!(puts(&w.into_changes()), vec![("group", 4)]);
}

#[test]
fn due_planning_takes_jobs_and_welcomes_once_and_spaces_them() {
    let (cfg, _dir) = config(BASE);
    let now = mon(10, 0);
    let d = Decider {
        cfg: &cfg,
        seed: 42,
        now,
    };
    let welcome = GroupRow {
        welcome: Some(PendingWelcome {
            send_at_ms: now,
            users: vec![("u1".into(), "小王".into()), ("u3".into(), "小张".into())],
            chat_name: "粉丝群".into(),
        }),
        ..Default::default()
    };
    let push_job = |chat: &str, at_ms: i64, text: &str| Job {
        bot_id: BOT.into(),
        chat_id: chat.into(),
        chat_name: String::new(),
        kind: OutboundKind::DelayedReply,
        rule_id: "push:x".into(),
        at_ms,
        content: JobContent::Ready(ReplyOut {
            text: text.into(),
            ..Default::default()
        }),
        user_ids: vec!["u9".into()],
        slot_reserved: false,
    };
    let view = DueView {
        groups: vec![(
            key("g"),
            Versioned {
                version: 5,
                row: welcome,
            },
        )],
        jobs: vec![
            QueuedJob {
                id: 11,
                job: push_job("g", now - 1_000, "早到的推送"),
            },
            QueuedJob {
                id: 12,
                job: push_job("h", now, "另一群的推送"),
            },
        ],
        next_job_ms: Some(now - 1_000),
    };
    assert_eq!(next_due(&d, &view), Some(now - 1_000));
    let (items, changes) = plan_due(&d, view);
    // g: the push goes now; the welcome would follow too soon, so it is queued for its slot.
    // h: its own group, no spacing conflict.
    let sent: Vec<(&str, &str)> = items
        .iter()
        .map(|i| (i.chat_id.as_str(), i.reply.text.as_str()))
        .collect();
    assert_eq!(sent, vec![("g", "早到的推送"), ("h", "另一群的推送")]);
    assert!(changes.contains(&StateChange::Unschedule { id: 11 }));
    assert!(changes.contains(&StateChange::Unschedule { id: 12 }));
    let deferred: Vec<&Job> = changes
        .iter()
        .filter_map(|c| match c {
            StateChange::Schedule(j) => Some(j),
            _ => None,
        })
        .collect();
    assert_eq!(deferred.len(), 1);
    assert_eq!(
        (
            deferred[0].rule_id.as_str(),
            deferred[0].at_ms,
            deferred[0].slot_reserved
        ),
        ("welcome", now + 15_000, true)
    );
    // g was read at version 5 and loses its welcome; h had no row.
    let groups: Vec<(&str, u64, bool)> = changes
        .iter()
        .filter_map(|c| match c {
            StateChange::PutGroup {
                key,
                expected_version,
                row,
            } => Some((
                key.chat_id.as_str(),
                *expected_version,
                row.welcome.is_some(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(groups, vec![("g", 5, false), ("h", 0, false)]);
}
