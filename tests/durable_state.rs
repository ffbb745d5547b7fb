//! Issue 15's first part on the real server and a real SQLite file: the playbook's state and
//! the outbox of proactive sends survive a kill -9 (and a SIGTERM) and a restart. Cooldowns
//! still hold, open handoffs still count and expire on time, spacing continues from the last
//! slot, a pending merged welcome is sent once, a queued proactive send is delivered once, and a
//! known group's re-activation and schedules still fire once.
//!
//! Rules only (no model): the keyword layer decides the shipped FAQ phrases, which keeps the
//! restarts fast. The manual clock of each run starts where the last one stopped.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::bot::*;
use common::server::{ServerOptions, T0};
use intentd::pb;
use pb::{Action, EventType, OutboundKind};

/// Starts a rules-only server on `data` (database and key kept between runs) at `now_ms`;
/// message and event ids continue after `seq` (a reused id would be a retry).
async fn start(data: &Path, now_ms: i64, seq: u64) -> Bot {
    let mut b = Bot::start_opts(
        ServerOptions {
            data_dir: Some(data.to_path_buf()),
            manual_clock: Some(now_ms),
            ..Default::default()
        },
        None,
    )
    .await;
    b.seq = seq;
    b
}

/// SIGKILL: nothing of the process gets to run. Returns the last id used.
async fn kill_9(mut b: Bot) -> u64 {
    b.s.child.kill().unwrap();
    b.s.child.wait().unwrap();
    b.seq
}

/// SIGTERM and wait for a clean exit. Returns the last id used.
async fn terminate(mut b: Bot) -> u64 {
    b.s.signal("TERM");
    assert_eq!(
        b.s.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        b.s.stderr()
    );
    b.seq
}

/// Everything a stream delivers until it stays quiet, by (chat, kind, rule).
async fn drain(out: &mut Outbox) -> BTreeMap<(String, i32, String), usize> {
    let mut got = BTreeMap::new();
    while let Ok(Some(o)) = tokio::time::timeout(QUIET, out.rx.recv()).await {
        *got.entry((o.chat_id.clone(), o.kind, o.rule_id.clone()))
            .or_insert(0) += 1;
    }
    got
}

fn handoff_wait(r: &pb::ClassifyResponse) -> String {
    text(&r.reply).to_string()
}

#[tokio::test]
async fn kill_9_and_restart_forget_no_playbook_state() {
    let data = tempfile::tempdir().unwrap();
    let mut b = start(data.path(), T0, 0).await;

    // A welcome that falls due with no stream open: the collector moves it to the outbox.
    let d = b
        .event(
            "g-out",
            EventType::MemberJoined,
            Some(&user("w1", "小周")),
            "",
        )
        .await;
    assert_eq!(evd(&d), (Action::Reply, "welcome:queued"), "{d:?}");
    // Known groups for the timers after the restarts.
    b.say("g-quiet", &user("q1", "阿静"), "有货吗").await;
    b.say("announcements", &user("r1", "阿定"), "有货吗").await;
    // An open handoff (wait = (open handoffs of the bot + 1) x 5 min).
    let r = b.say("g-ho", &user("h1", "阿强"), "转人工").await;
    assert_eq!(dec(&r), (Action::Handoff, "handoff:intent"), "{r:?}");
    assert!(handoff_wait(&r).contains(" 5 分钟"), "{r:?}");

    b.at(T0 + MIN + SEC).await;
    wait_queued(&b, 1).await;
    // Two joins in one window: one merged welcome pending, due at T0 + 2 min + 1 s.
    for (id, nick) in [("j1", "小王"), ("j2", "小李")] {
        b.event("g-join", EventType::MemberJoined, Some(&user(id, nick)), "")
            .await;
    }
    // Three replies queued in one group: the spacing queue (queue_limit 3) is full.
    let t1 = T0 + MIN + SEC;
    for (u, q) in [
        ("s1", "这个多少钱"),
        ("s2", "有货吗"),
        ("s3", "什么时候发货"),
    ] {
        let r = b.say("g-space", &user(u, u), q).await;
        assert_eq!(dec(&r), (Action::Reply, "faq"), "{q}: {r:?}");
    }
    let seq = kill_9(b).await;

    // ---- first restart, at the same moment
    let mut b = start(data.path(), t1, seq).await;
    let r = b.say("g-space", &user("s4", "丁"), "怎么退款").await;
    assert_eq!(
        dec(&r),
        (Action::Ignore, "dropped:spacing_queue_full"),
        "spacing continues from the stored slots: {r:?}"
    );
    let r = b.say("g-space", &user("s1", "s1"), "这个多少钱").await;
    assert_eq!(dec(&r), (Action::Ignore, "cooldown"), "{r:?}");
    // The handoff opened before the kill still counts toward the announced wait.
    let r = b.say("g-ho2", &user("h2", "阿珍"), "转人工").await;
    assert_eq!(dec(&r), (Action::Handoff, "handoff:intent"), "{r:?}");
    assert!(handoff_wait(&r).contains(" 10 分钟"), "{r:?}");

    // The welcome queued before the kill is delivered, once; the merged one at its time.
    let mut out = b.subscribe(&["g-out", "g-join"]).await;
    let o = out.next().await;
    assert_eq!(
        (kind(&o), o.chat_id.as_str(), o.user_ids.as_slice()),
        (OutboundKind::Welcome, "g-out", &["w1".to_string()][..]),
        "{o:?}"
    );
    out.quiet("the g-join welcome is not due yet").await;
    b.at(T0 + 2 * MIN + SEC).await;
    let o = out.next().await;
    assert_eq!(
        (kind(&o), o.chat_id.as_str(), o.user_ids.as_slice()),
        (
            OutboundKind::Welcome,
            "g-join",
            &["j1".to_string(), "j2".to_string()][..]
        ),
        "one welcome for both joins: {o:?}"
    );
    out.quiet("each welcome once").await;
    drop(out);
    let seq = kill_9(b).await;

    // ---- second restart: nothing is sent again; handoffs expire on time
    let t2 = T0 + 62 * MIN;
    let mut b = start(data.path(), t2, seq).await;
    let mut out = b.subscribe(&["g-out", "g-join"]).await;
    out.quiet("delivered sends are not delivered again").await;
    drop(out);
    let r = b.say("g-ho4", &user("h5", "阿华"), "转人工").await;
    assert_eq!(dec(&r), (Action::Handoff, "handoff:intent"), "{r:?}");
    assert!(
        handoff_wait(&r).contains(" 5 分钟"),
        "both stored handoffs are past open_ttl (60 min): {r:?}"
    );

    // Re-activation of a group that went quiet before the restarts: once, at T0 + 24 h. The
    // jump passes Thursday 09:00 by more than the schedule grace, so no tip either.
    b.at(T0 + 24 * HOUR - SEC).await;
    let mut out = b.subscribe(&["g-quiet", "announcements"]).await;
    out.quiet("before 24 h of silence").await;
    b.at(T0 + 24 * HOUR).await;
    let got = drain(&mut out).await;
    assert_eq!(
        got,
        BTreeMap::from([(
            (
                "g-quiet".to_string(),
                OutboundKind::Reactivation as i32,
                "reactivation".to_string()
            ),
            1
        )]),
        "announcements has re-activation off"
    );
    drop(out);
    let seq = terminate(b).await;

    // ---- third restart (after a SIGTERM): the schedule cursors of the known groups hold
    let friday_9 = T0 + 47 * HOUR; // Friday 2026-11-27 09:00 in Asia/Shanghai
    let mut b = start(data.path(), friday_9 - SEC, seq).await;
    let mut out = b.subscribe(&["announcements"]).await;
    out.quiet("before 09:00").await;
    b.at(friday_9).await;
    let got = drain(&mut out).await;
    assert_eq!(
        got,
        BTreeMap::from([(
            (
                "announcements".to_string(),
                OutboundKind::Scheduled as i32,
                "schedule:morning_tip".to_string()
            ),
            1
        )]),
    );
}

#[tokio::test]
async fn a_graceful_stop_keeps_what_changed_without_a_request() {
    let data = tempfile::tempdir().unwrap();
    let mut b = start(data.path(), T0, 0).await;
    b.event(
        "g-a",
        EventType::MemberJoined,
        Some(&user("a1", "新人")),
        "",
    )
    .await;
    // The collector (not a request) moves the due welcome to the outbox; the stop commits it.
    b.at(T0 + MIN + SEC).await;
    wait_queued(&b, 1).await;
    let seq = terminate(b).await;
    let mut b = start(data.path(), T0 + MIN + 2 * SEC, seq).await;
    let mut out = b.subscribe(&[]).await;
    let o = out.next().await;
    assert_eq!(
        (kind(&o), o.chat_id.as_str()),
        (OutboundKind::Welcome, "g-a")
    );
    out.quiet("once").await;
    // Still a known group with its cooldowns: a second join is welcomed anew, not merged.
    let d = b
        .event(
            "g-a",
            EventType::MemberJoined,
            Some(&user("a2", "新人")),
            "",
        )
        .await;
    assert_eq!(evd(&d), (Action::Reply, "welcome:queued"), "{d:?}");
}
