//! The service layer in-process: the shipped operator files, a fake encoder, a real SQLite
//! store in a temp folder, and a manual clock. Tests that wait use tokio's paused time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::model::fake::FakeBackend;
use crate::policy::events::EventKind;
use crate::policy::scheduler::OutboundKind;
use crate::store::stats::StatsQuery;
use crate::store::{FeedbackKind, StoreConfig};
use crate::types::{Action, Source, UserInfo};

/// A Monday, 10:00 in Shanghai: inside the shipped service hours.
const T0: i64 = 1_795_572_000_000;
const BOT: &str = "demo";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Harness {
    service: Arc<Service>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn settings(operator_dir: &Path) -> ServiceSettings {
    ServiceSettings {
        max_in_flight: 64,
        request_timeout_ms: 5_000,
        top_k: 3,
        model_dir: PathBuf::from("/nonexistent/model"),
        operator_dir: operator_dir.to_path_buf(),
        training_data: repo().join("training-data/nlu"),
        bots: vec![BOT.into()],
        ..ServiceSettings::default()
    }
}

fn harness_with(operator_dir: Option<PathBuf>, store: bool, model: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let operator_dir = operator_dir.unwrap_or_else(|| repo().join("config/operator"));
    let s = settings(&operator_dir);
    let clock = Arc::new(ManualClock::new(T0));
    let shared: crate::clock::SharedClock = clock.clone();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let snapshot =
        OperatorSnapshot::load_dir(&s.operator_dir, &s.training_data, s.fusion.clone()).unwrap();
    let operator = Arc::new(LiveOperator::from_pointee(snapshot));
    let playbook = Playbook::new(operator.clone(), shared.clone(), 7);
    let storage = store.then(|| {
        let cfg = StoreConfig {
            path: dir.path().join("intentd.db"),
            ..StoreConfig::default()
        };
        let keys = crate::store::test_support::keyring(&crate::store::test_support::key_b64(3));
        Arc::new(Storage::open_with_keyring(&cfg, keys, shared.clone(), metrics.clone()).unwrap())
    });
    let service = Arc::new(Service::new(
        s,
        shared,
        Some(clock.clone()),
        operator,
        playbook,
        storage,
        metrics,
    ));
    if model {
        let labels: Vec<String> = service.operator().catalog.ids().map(String::from).collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let fake = FakeBackend::new(
            &labels,
            &[
                ("退款", "refund"),
                ("多少钱", "price"),
                ("投诉", "complaint"),
            ],
            0.95,
        )
        .unwrap();
        service.install_model(Arc::new(fake));
    }
    Harness {
        service,
        clock,
        _dir: dir,
    }
}

fn harness() -> Harness {
    harness_with(None, true, true)
}

fn user(id: &str) -> Option<UserInfo> {
    Some(UserInfo {
        id: id.into(),
        nickname: format!("nick-{id}"),
        ..UserInfo::default()
    })
}

fn message(id: &str, text: &str) -> ClassifyRequest {
    ClassifyRequest {
        bot_id: BOT.into(),
        chat_id: "g1".into(),
        chat_name: "group one".into(),
        message_id: id.into(),
        text: text.into(),
        sent_at_ms: 0,
        user: user("u1"),
    }
}

/// GetStats over everything the demo bot logged.
async fn totals(h: &Harness) -> crate::store::stats::StatsReport {
    h.service
        .stats(&StatsQuery {
            bot_id: BOT.into(),
            ..StatsQuery::default()
        })
        .await
        .unwrap()
}

fn invalid_field(e: ServiceError) -> String {
    match e {
        ServiceError::Invalid(f) => f.field,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

#[tokio::test]
async fn classify_answers_from_the_model_and_records_the_decision() {
    let h = harness();
    let r = h
        .service
        .classify(&message("m1", "我想退款怎么弄"))
        .await
        .unwrap();
    assert_eq!(r.classification.intent, "refund");
    assert_eq!(r.classification.source, Source::Model);
    assert!(r.classification.model_loaded);
    assert_eq!(r.decision.action, Action::Reply);
    let reply = r.decision.reply.as_ref().unwrap();
    assert!(reply.text.contains("nick-u1"), "{}", reply.text);
    assert_eq!(r.message_id, "m1");
    assert_eq!(r.model_version, "fake-1");
    assert!(r.recorded);
    // The ranking is cut to top_k and carries the display names of the same snapshot.
    assert_eq!(r.ranking.len(), 3);
    assert_eq!(r.ranking[0].intent, "refund");
    assert!(!r.ranking[0].display_name.is_empty());
    assert_ne!(r.ranking[0].display_name, "refund");

    let stats = totals(&h).await;
    assert_eq!(stats.total.counts.messages, 1);
    assert_eq!(stats.total.counts.auto_replies, 1);
    assert_eq!(h.service.served(), 1);
}

#[tokio::test]
async fn a_banned_word_is_blocked_before_the_model() {
    let h = harness();
    let banned = std::fs::read_to_string(repo().join("config/operator/banned_words.txt")).unwrap();
    let word = banned
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap()
        .to_string();
    let r = h
        .service
        .classify(&message("m1", &format!("看看{word}吧")))
        .await
        .unwrap();
    assert_eq!(r.decision.action, Action::Block);
    assert_eq!(r.classification.source, Source::Policy);
    assert_eq!(r.decision.reason, "banned_word");
    assert!(r.recorded);
}

#[tokio::test]
async fn without_a_model_rules_answer_alone() {
    let h = harness_with(None, false, false);
    let r = h
        .service
        .classify(&message("m1", "这个多少钱"))
        .await
        .unwrap();
    assert!(!r.classification.model_loaded);
    assert_ne!(r.classification.source, Source::Model);
    assert!(!r.recorded, "the store is off");
    assert_eq!(r.model_version, "");
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let h = harness();
    let mut m = message("m1", "  ");
    assert_eq!(
        invalid_field(h.service.classify(&m).await.unwrap_err()),
        "text"
    );
    m.text = "hi".into();
    m.bot_id = "stranger".into();
    assert_eq!(
        invalid_field(h.service.classify(&m).await.unwrap_err()),
        "bot_id"
    );
    m.bot_id = BOT.into();
    m.user = None;
    assert_eq!(
        invalid_field(h.service.classify(&m).await.unwrap_err()),
        "user"
    );
    assert_eq!(h.service.served(), 0);
}

#[tokio::test]
async fn a_batch_keeps_request_order_and_is_validated_whole() {
    let h = harness();
    let reqs = vec![
        message("a", "这个多少钱"),
        message("b", "我要退款"),
        message("c", "我要投诉你们"),
    ];
    let out = h.service.classify_batch(&reqs).await.unwrap();
    let ids: Vec<_> = out.iter().map(|o| o.message_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(out[1].classification.intent, "refund");
    assert_eq!(out[2].decision.action, Action::Handoff);

    let mut bad = reqs.clone();
    bad[2].text.clear();
    let e = h.service.classify_batch(&bad).await.unwrap_err();
    assert_eq!(invalid_field(e), "requests[2].text");
    let e = h.service.classify_batch(&[]).await.unwrap_err();
    assert_eq!(invalid_field(e), "requests");
    let many = vec![message("x", "hi"); 65];
    let e = h.service.classify_batch(&many).await.unwrap_err();
    assert!(e.to_string().contains("over the limit of 64"), "{e}");
    // Only the first batch was served.
    assert_eq!(h.service.served(), 3);
}

fn join(user_id: &str) -> EventRequest {
    EventRequest {
        bot_id: BOT.into(),
        chat_id: "g1".into(),
        chat_name: "group one".into(),
        kind: EventTypeIn::Known(EventKind::MemberJoined),
        user: user(user_id),
        event_id: format!("join-{user_id}"),
        ..EventRequest::default()
    }
}

#[tokio::test(start_paused = true)]
async fn two_joins_give_one_merged_welcome_on_the_stream() {
    let h = harness();
    let mut rx = h.service.subscribe(BOT, Vec::new()).unwrap();
    // Queued for the merge window, not sent now; the second joins the first.
    for (u, reason) in [("u1", "welcome:queued"), ("u2", "merged_welcome")] {
        let d = h.service.handle_event(&join(u)).await.unwrap();
        assert_eq!(d.event.decision.reason, reason);
    }
    // Nothing is due inside the merge window.
    assert!(tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .is_err());
    h.service.set_clock(T0 + 61_000, "test").await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the welcome arrives once the window is over")
        .unwrap();
    assert_eq!(item.kind, OutboundKind::Welcome);
    assert_eq!(item.user_ids, ["u1", "u2"]);
    assert!(!item.reply.text.is_empty());
    // Exactly one.
    h.service.set_clock(T0 + 600_000, "test").await.unwrap();
    let more = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert!(
        !matches!(more, Ok(Some(ref i)) if i.kind == OutboundKind::Welcome),
        "{more:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_subscriber_leaves_its_items_for_the_next() {
    let h = harness();
    let rx = h.service.subscribe(BOT, Vec::new()).unwrap();
    drop(rx);
    h.service.handle_event(&join("u1")).await.unwrap();
    h.service.set_clock(T0 + 61_000, "test").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // virtual: lets the old task notice
    let mut rx = h.service.subscribe(BOT, Vec::new()).unwrap();
    let item = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(item.kind, OutboundKind::Welcome);
}

#[tokio::test]
async fn events_are_validated() {
    let h = harness();
    let mut e = join("u1");
    e.kind = EventTypeIn::Missing;
    let err = h.service.handle_event(&e).await.unwrap_err();
    assert!(err.to_string().starts_with("type: must be set"), "{err}");
    e.kind = EventTypeIn::Unknown("77".into());
    let err = h.service.handle_event(&e).await.unwrap_err();
    assert_eq!(err.to_string(), "type: unknown event type 77");
    e.kind = EventTypeIn::Known(EventKind::LinkClicked);
    assert_eq!(
        invalid_field(h.service.handle_event(&e).await.unwrap_err()),
        "target_id"
    );
    e.kind = EventTypeIn::Known(EventKind::Activity);
    e.user = None;
    h.service.handle_event(&e).await.unwrap();
    e.kind = EventTypeIn::Known(EventKind::MemberLeft);
    assert_eq!(
        invalid_field(h.service.handle_event(&e).await.unwrap_err()),
        "user"
    );
    let err = h.service.subscribe("stranger", Vec::new()).unwrap_err();
    assert_eq!(err.to_string(), "bot_id: unknown bot 'stranger'");
}

#[tokio::test]
async fn feedback_is_validated_and_counted() {
    let h = harness();
    h.service
        .classify(&message("m1", "我想退款"))
        .await
        .unwrap();
    let mut f = FeedbackRequest {
        bot_id: BOT.into(),
        message_id: "m1".into(),
        kind: None,
        ..FeedbackRequest::default()
    };
    let e = h.service.feedback(&f).await.unwrap_err();
    assert!(e.to_string().starts_with("kind: must be RESOLVED"), "{e}");
    f.kind = Some(FeedbackKind::Resolved);
    f.at_ms = -1;
    assert_eq!(
        invalid_field(h.service.feedback(&f).await.unwrap_err()),
        "at_ms"
    );
    f.at_ms = 0;
    f.bot_id = String::new();
    let e = h.service.feedback(&f).await.unwrap_err();
    assert_eq!(e.to_string(), "bot_id: is empty or not a configured bot");
    f.bot_id = BOT.into();
    assert!(h.service.feedback(&f).await.unwrap());
    let stats = totals(&h).await;
    assert_eq!(stats.total.counts.resolved, 1);
    assert!((stats.total.resolution_rate - 1.0).abs() < 1e-12);

    // Without a store feedback cannot be kept: the caller is told, not lied to.
    let off = harness_with(None, false, true);
    let e = off.service.feedback(&f).await.unwrap_err();
    assert!(matches!(e, ServiceError::FailedPrecondition(_)), "{e:?}");
}

#[tokio::test]
async fn human_replies_are_recorded_and_counted() {
    let h = harness();
    let r = HumanReplyRequest {
        bot_id: BOT.into(),
        chat_id: "g1".into(),
        message_id: "agent-1".into(),
        at_ms: 0,
        handoff_id: None,
    };
    assert!(h.service.human_reply(&r).await.unwrap());
    let stats = totals(&h).await;
    assert_eq!(stats.total.counts.human_replies, 1);
    let mut bad = r.clone();
    bad.chat_id.clear();
    assert_eq!(
        invalid_field(h.service.human_reply(&bad).await.unwrap_err()),
        "chat_id"
    );
    let e = h
        .service
        .stats(&StatsQuery {
            bot_id: BOT.into(),
            from_ms: 10,
            to_ms: 5,
            ..StatsQuery::default()
        })
        .await
        .unwrap_err();
    assert_eq!(invalid_field(e), "from_ms/to_ms");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test]
async fn a_broken_operator_file_is_refused_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ops = dir.path().join("operator");
    copy_dir(&repo().join("config/operator"), &ops);
    let h = harness_with(Some(ops.clone()), true, true);
    let before = h.service.config_hash();

    let replies = std::fs::read_to_string(ops.join("replies.yml")).unwrap();
    std::fs::write(
        ops.join("replies.yml"),
        format!("{replies}\n  refund: [oops\n"),
    )
    .unwrap();
    let e = h.service.reload_operator("test").await.unwrap_err();
    assert!(matches!(e, ServiceError::FailedPrecondition(_)), "{e:?}");
    assert!(e.to_string().contains("replies.yml"), "{e}");
    assert_eq!(h.service.config_hash(), before);
    // Still answering with the old files.
    let r = h
        .service
        .classify(&message("m1", "我想退款"))
        .await
        .unwrap();
    assert_eq!(r.decision.action, Action::Reply);

    std::fs::write(ops.join("replies.yml"), replies.replace("7 天", "七天")).unwrap();
    let after = h.service.reload_operator("test").await.unwrap();
    assert_ne!(after, before);
    assert_eq!(h.service.config_hash(), after);
    let r = h
        .service
        .classify(&ClassifyRequest {
            user: user("u9"),
            chat_id: "g2".into(),
            ..message("m2", "我想退款")
        })
        .await
        .unwrap();
    let text = r.decision.reply.map(|r| r.text).unwrap_or_default();
    assert!(text.contains("七天"), "{text:?} ({})", r.decision.reason);
}

#[tokio::test]
async fn model_reload_of_a_missing_folder_keeps_the_old_model() {
    let h = harness();
    let e = h.service.reload_model("test").await.unwrap_err();
    assert!(matches!(e, ServiceError::FailedPrecondition(_)), "{e:?}");
    assert!(e.to_string().contains("still serving fake-1"), "{e}");
    assert!(h.service.model_loaded());
}

#[tokio::test]
async fn set_clock_moves_time_and_refuses_nonsense() {
    let h = harness();
    assert_eq!(h.service.set_clock(T0 + 5, "test").await.unwrap(), T0 + 5);
    assert_eq!(h.clock.now_ms(), T0 + 5);
    assert_eq!(
        invalid_field(h.service.set_clock(0, "test").await.unwrap_err()),
        "now_ms"
    );
}

#[tokio::test]
async fn admission_refuses_beyond_max_in_flight() {
    let h = harness();
    let _held = h.service.admit(64).unwrap();
    let e = h.service.classify(&message("m1", "hi")).await.unwrap_err();
    assert!(matches!(e, ServiceError::Busy(_)), "{e:?}");
    assert_eq!(h.service.in_flight(), 64);
}

// ---------------------------------------------------------------------------------------------
// Idempotent retries (issue 13)

/// The answer as a front door would send it, without the `replayed` flag.
fn first_form(o: &ClassifyOutcome) -> ClassifyOutcome {
    ClassifyOutcome {
        replayed: false,
        ..o.clone()
    }
}

#[tokio::test]
async fn a_retried_message_gets_the_first_answer_and_changes_nothing() {
    let h = harness();
    let first = h
        .service
        .classify(&message("m1", "我想退款"))
        .await
        .unwrap();
    assert!(!first.replayed);
    assert!(first.recorded);
    // Later retries of the same message: the same answer, even though the intent's cooldown
    // would now suppress a second reply.
    h.clock.advance_ms(1_000);
    for _ in 0..2 {
        let again = h
            .service
            .classify(&message("m1", "我想退款"))
            .await
            .unwrap();
        assert!(again.replayed);
        assert_eq!(first_form(&again), first);
    }
    let t = totals(&h).await;
    assert_eq!(t.total.counts.messages, 1, "one record for three calls");
    // A new message with the same text is a new decision.
    let other = h
        .service
        .classify(&message("m2", "我想退款"))
        .await
        .unwrap();
    assert!(!other.replayed);
    assert_eq!(totals(&h).await.total.counts.messages, 2);
}

#[tokio::test]
async fn racing_duplicates_get_one_decision() {
    let h = harness();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let s = h.service.clone();
            tokio::spawn(async move { s.classify(&message("m1", "这个多少钱")).await.unwrap() })
        })
        .collect();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1);
    let first = answers.iter().find(|a| !a.replayed).unwrap().clone();
    for a in &answers {
        assert_eq!(first_form(a), first);
    }
    assert_eq!(totals(&h).await.total.counts.messages, 1);
}

#[tokio::test]
async fn a_message_id_reused_with_other_text_is_refused() {
    let h = harness();
    h.service
        .classify(&message("m1", "我想退款"))
        .await
        .unwrap();
    let e = h
        .service
        .classify(&message("m1", "这个多少钱"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("message_id: message_id reused with other text"),
        "{e}"
    );
    assert!(matches!(e, ServiceError::Invalid(_)));
}

#[tokio::test]
async fn the_first_answer_outlives_the_memory_and_ends_with_the_window() {
    let h = harness();
    let first = h
        .service
        .classify(&message("m1", "我想退款"))
        .await
        .unwrap();
    // Another service on the same database (a restart): nothing in memory, the store answers.
    let storage = h.service.storage.clone();
    let fresh = Service::new(
        h.service.settings.clone(),
        h.service.clock.clone(),
        None,
        h.service.operator.clone(),
        Playbook::new(h.service.operator.clone(), h.service.clock.clone(), 7),
        storage,
        h.service.metrics.clone(),
    );
    let again = fresh.classify(&message("m1", "我想退款")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(first_form(&again), first);
    // After the window the id may be answered anew.
    h.clock
        .advance_ms(h.service.settings.idempotency.window_s as i64 * 1000 + 1);
    let later = fresh.classify(&message("m1", "我想退款")).await.unwrap();
    assert!(!later.replayed);
}

#[tokio::test]
async fn without_a_store_retries_are_still_answered_once() {
    let h = harness_with(None, false, true);
    let first = h
        .service
        .classify(&message("m1", "我想退款"))
        .await
        .unwrap();
    assert!(!first.recorded);
    let again = h
        .service
        .classify(&message("m1", "我想退款"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(first_form(&again), first);
}

#[tokio::test(start_paused = true)]
async fn a_retried_join_gives_one_welcome() {
    let h = harness();
    let mut rx = h.service.subscribe(BOT, Vec::new()).unwrap();
    let first = h.service.handle_event(&join("u1")).await.unwrap();
    assert!(!first.replayed && first.idempotency_notice.is_none());
    for _ in 0..3 {
        let again = h.service.handle_event(&join("u1")).await.unwrap();
        assert!(again.replayed);
        assert_eq!(again.event, first.event);
    }
    h.service.set_clock(T0 + 61_000, "test").await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(item.kind, OutboundKind::Welcome);
    assert_eq!(item.user_ids, ["u1"], "the retries did not join again");
    // The same event id for another user is refused; no id at all is decided and says so.
    let mut other = join("u2");
    other.event_id = "join-u1".into();
    let e = h.service.handle_event(&other).await.unwrap_err();
    assert!(
        e.to_string().starts_with("event_id: event_id reused"),
        "{e}"
    );
    let mut anon = join("u3");
    anon.event_id.clear();
    let o = h.service.handle_event(&anon).await.unwrap();
    assert_eq!(
        o.idempotency_notice.as_deref(),
        Some(events::NOT_DEDUPLICATED)
    );
}

#[tokio::test]
async fn answers_dropped_from_memory_are_found_in_the_store() {
    let h = harness();
    let mut settings = h.service.settings.clone();
    settings.idempotency.cache_entries = 1;
    settings.idempotency.known_keys = 1;
    let small = Service::new(
        settings,
        h.service.clock.clone(),
        None,
        h.service.operator.clone(),
        Playbook::new(h.service.operator.clone(), h.service.clock.clone(), 7),
        h.service.storage.clone(),
        h.service.metrics.clone(),
    );
    let first = small.classify(&message("m1", "我想退款")).await.unwrap();
    for (id, text) in [("m2", "这个多少钱"), ("m3", "我要投诉")] {
        small.classify(&message(id, text)).await.unwrap();
    }
    let again = small.classify(&message("m1", "我想退款")).await.unwrap();
    assert!(again.replayed, "m1 left memory but not the store");
    assert_eq!(first_form(&again), first);
    assert_eq!(totals(&h).await.total.counts.messages, 3);
}

#[tokio::test]
async fn records_are_dated_by_the_server_so_a_client_clock_cannot_purge_them() {
    // Issue #12.1 (failed on main): sent_at_ms = 1 was accepted and dated the conversation and
    // its BLOCK audit row 1970, and the next purge deleted both.
    let h = harness();
    let banned = std::fs::read_to_string(repo().join("config/operator/banned_words.txt")).unwrap();
    let word = banned
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap()
        .to_string();
    let mut ancient = message("m-old", &format!("看看{word}吧"));
    ancient.sent_at_ms = 1;
    let e = h.service.classify(&ancient).await.unwrap_err();
    assert_eq!(invalid_field(e), "sent_at_ms");

    // Within the window the caller's time is kept beside the server's, which dates the row.
    let sent = T0 - 3 * 24 * 3600 * 1000;
    let mut late = message("m-late", &format!("看看{word}吧"));
    late.sent_at_ms = sent;
    let r = h.service.classify(&late).await.unwrap();
    assert_eq!((r.decision.action, r.recorded), (Action::Block, true));
    let storage = h.service.storage.clone().unwrap();
    let rows = storage.store().conversations(0, i64::MAX, 0, 10).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].record.at_ms, rows[0].record.sent_at_ms),
        (T0, sent)
    );
    let audit_at: Vec<i64> = storage
        .store()
        .audit_rows(0, i64::MAX)
        .unwrap()
        .iter()
        .filter(|a| a.action == crate::store::audit::AuditAction::Block)
        .map(|a| a.at_ms)
        .collect();
    assert_eq!(audit_at, vec![T0]);
    // A purge a day later keeps both: they are a day old, not three (nor 56 years).
    h.clock.advance_ms(24 * 3600 * 1000);
    let report = storage.purge().unwrap();
    assert_eq!((report.conversations, report.audit), (0, 0));
    assert_eq!(
        storage
            .store()
            .conversations(0, i64::MAX, 0, 10)
            .unwrap()
            .len(),
        1
    );
}

/// A fake model that says when it is dropped, and holds its forward passes while `hold` is set.
struct Tracked {
    inner: FakeBackend,
    dropped: Arc<std::sync::atomic::AtomicBool>,
    hold: Arc<std::sync::atomic::AtomicBool>,
    entered: Arc<std::sync::atomic::AtomicBool>,
}

impl crate::model::classifier::IntentBackend for Tracked {
    fn labels(&self) -> &[String] {
        self.inner.labels()
    }
    fn version(&self) -> &str {
        self.inner.version()
    }
    fn tokenize(&self, text: &str) -> anyhow::Result<crate::model::encoder::Tokenized> {
        self.inner.tokenize(text)
    }
    fn predict(
        &self,
        batch: &[&crate::model::encoder::Tokenized],
    ) -> anyhow::Result<Vec<crate::model::classifier::Prediction>> {
        use std::sync::atomic::Ordering::SeqCst;
        self.entered.store(true, SeqCst);
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while self.hold.load(SeqCst) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.inner.predict(batch)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.dropped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Regression (issue 12 item 7): a reload must free the old model once the last request on it
/// has finished, and return only then, so back-to-back reloads never hold more than two models.
/// On the old code the reload swapped the model and returned at once, with the old model still
/// in use (and its memory, once freed, kept by malloc): the "reload still running" check failed.
/// Real time: the forward pass is held on the compute thread, which paused time cannot see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_frees_the_old_model_when_its_last_request_finishes() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let h = harness_with(None, false, false);
    let labels: Vec<String> = h
        .service
        .operator()
        .catalog
        .ids()
        .map(String::from)
        .collect();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let fake = |v: &str| {
        FakeBackend::new(&labels, &[("多少钱", "price")], 0.95)
            .unwrap()
            .with_version(v)
    };
    let (old_dropped, hold, entered) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(false)),
    );
    h.service.install_model(Arc::new(Tracked {
        inner: fake("old"),
        dropped: old_dropped.clone(),
        hold: hold.clone(),
        entered: entered.clone(),
    }));
    let s = h.service.clone();
    let request = tokio::spawn(async move { s.classify(&message("m1", "这个多少钱")).await });
    for _ in 0..2_000 {
        if entered.load(SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(entered.load(SeqCst), "the request reached the old model");

    let s = h.service.clone();
    let new_model = fake("new");
    let reload = tokio::spawn(async move { s.replace_model(Arc::new(new_model)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        h.service.model_version(),
        "new",
        "new requests get the new model at once"
    );
    assert!(
        !old_dropped.load(SeqCst),
        "a request still uses the old model"
    );
    assert!(!reload.is_finished(), "the reload is still running");

    hold.store(false, SeqCst);
    let answer = request.await.unwrap().unwrap();
    assert_eq!(
        answer.model_version, "old",
        "the request finished on the model it started on"
    );
    let retired = tokio::time::timeout(Duration::from_secs(5), reload)
        .await
        .expect("the reload ends soon after the last request")
        .unwrap();
    assert!(
        matches!(retired, Some(retire::Retired::Freed { .. })),
        "{retired:?}"
    );
    assert!(old_dropped.load(SeqCst), "the old model was dropped");
    let next = h.service.classify(&message("m2", "多少钱")).await.unwrap();
    assert_eq!(next.model_version, "new");
}

#[tokio::test]
async fn an_approved_review_is_answered_and_its_word_allowed_in_that_group_only() {
    let h = harness();
    let mut rx = h.service.subscribe(BOT, Vec::new()).unwrap();
    let blocked = h
        .service
        .classify(&message("m1", "退款怎么办，加微信说"))
        .await
        .unwrap();
    assert_eq!(blocked.decision.action, Action::Block);
    let pending = h.service.list_reviews(true).await.unwrap();
    assert_eq!(pending.len(), 1);
    let id = pending[0].id;
    assert_eq!(pending[0].item.matched, "加微信");
    assert!(pending[0].item.verdict.is_none());

    // Bad input names the field; an unknown id is NOT_FOUND.
    let e = h.service.approve_review(id, true, " ").await.unwrap_err();
    assert!(invalid_field(e).starts_with("by"));
    let e = h.service.approve_review(id + 99, true, "amy").await;
    assert!(matches!(e, Err(ServiceError::NotFound(_))), "{e:?}");

    let o = h.service.approve_review(id, true, "amy").await.unwrap();
    let answer = o.answer.expect("a new approval answers the message");
    assert_eq!(answer.action, Action::Reply, "{answer:?}");
    let item = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the answer goes out on the stream")
        .unwrap();
    assert_eq!(item.rule_id, format!("review:{id}"));
    assert_eq!(item.user_ids, ["u1"]);
    assert_eq!(item.chat_id, "g1");
    assert!(item.reply.text.contains(&answer.reply.unwrap().text));

    // A retried click changes nothing; the other verdict is refused.
    let again = h.service.approve_review(id, true, "amy").await.unwrap();
    assert!(again.answer.is_none());
    let e = h.service.confirm_review(id, "bob").await;
    assert!(
        matches!(e, Err(ServiceError::FailedPrecondition(_))),
        "{e:?}"
    );
    assert!(h.service.list_reviews(true).await.unwrap().is_empty());
    let all = h.service.list_reviews(false).await.unwrap();
    let v = all[0].item.verdict.as_ref().unwrap();
    assert!(v.approved && v.allowed_word && v.by == "amy");

    // The word is allowed in g1 from now on, still blocked in g2.
    // (Another user, later: u1 was just answered about refunds, so their cooldown holds, and
    // group spacing would merge a second refund reply.)
    h.clock.advance_ms(600_000);
    let mut m2 = message("m2", "退款，加微信");
    m2.user = user("u2");
    let r = h.service.classify(&m2).await.unwrap();
    assert_eq!(r.decision.action, Action::Reply, "{:?}", r.decision);
    let mut other = message("m3", "退款，加微信");
    other.chat_id = "g2".into();
    let r = h.service.classify(&other).await.unwrap();
    assert_eq!(r.decision.action, Action::Block);

    // Confirming keeps the block and allows nothing.
    let id2 = h.service.list_reviews(true).await.unwrap()[0].id;
    let o = h.service.confirm_review(id2, "bob").await.unwrap();
    assert!(o.answer.is_none());
    assert!(!o.entry.item.verdict.unwrap().approved);
    let mut again = message("m4", "退款，加微信");
    again.chat_id = "g2".into();
    let r = h.service.classify(&again).await.unwrap();
    assert_eq!(r.decision.action, Action::Block);
}

#[tokio::test]
async fn handoffs_are_listed_claimed_and_closed_with_who_and_when() {
    let h = harness();
    let r = h
        .service
        .classify(&message("m1", "我要投诉"))
        .await
        .unwrap();
    assert_eq!(r.decision.action, Action::Handoff);
    let list = h.service.list_handoffs("").await.unwrap();
    assert_eq!(list.len(), 1);
    let e = &list[0];
    assert_eq!((e.bot_id.as_str(), e.chat_id.as_str()), (BOT, "g1"));
    assert_eq!(e.chat_name, "group one");
    assert_eq!(e.handoff.user_id, "u1");
    assert_eq!(e.handoff.message_id, "m1");
    assert_eq!(e.handoff.reason, "handoff:intent");
    assert!(e.handoff.wait_minutes > 0);
    assert!(e.expires_ms.is_some());
    let id = e.handoff.id;
    assert!(h
        .service
        .list_handoffs("other-bot")
        .await
        .unwrap()
        .is_empty());

    h.clock.advance_ms(1_000);
    let c = h.service.claim_handoff(BOT, "g1", id, "amy").await.unwrap();
    assert_eq!((c.claimed_by.as_str(), c.claimed_ms), ("amy", T0 + 1_000));
    let e = h.service.claim_handoff(BOT, "g1", id, "bob").await;
    assert!(
        matches!(e, Err(ServiceError::FailedPrecondition(_))),
        "{e:?}"
    );
    let e = h
        .service
        .claim_handoff(BOT, "g1", id, "")
        .await
        .unwrap_err();
    assert!(invalid_field(e).starts_with("agent"));
    // Claimed: it no longer expires with the open TTL.
    h.clock.advance_ms(3 * 3_600_000);
    let list = h.service.list_handoffs(BOT).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].expires_ms, None);

    let e = h.service.close_handoff(BOT, "g1", id, "bob").await;
    assert!(
        matches!(e, Err(ServiceError::FailedPrecondition(_))),
        "{e:?}"
    );
    let closed = h.service.close_handoff(BOT, "g1", id, "amy").await.unwrap();
    assert_eq!(closed.id, id);
    assert!(h.service.list_handoffs("").await.unwrap().is_empty());
    let e = h.service.close_handoff(BOT, "g1", id, "amy").await;
    assert!(matches!(e, Err(ServiceError::NotFound(_))), "{e:?}");

    // ReportHumanReply naming a handoff closes that one, not the oldest.
    h.service
        .classify(&message("m2", "我要投诉"))
        .await
        .unwrap();
    h.service
        .classify(&message("m3", "投诉你们"))
        .await
        .unwrap();
    let ids: Vec<u64> = h
        .service
        .list_handoffs("")
        .await
        .unwrap()
        .iter()
        .map(|e| e.handoff.id)
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let r = HumanReplyRequest {
        bot_id: BOT.into(),
        chat_id: "g1".into(),
        message_id: "agent-1".into(),
        at_ms: 0,
        handoff_id: Some(ids[1]),
    };
    h.service.human_reply(&r).await.unwrap();
    let left: Vec<u64> = h
        .service
        .list_handoffs("")
        .await
        .unwrap()
        .iter()
        .map(|e| e.handoff.id)
        .collect();
    assert_eq!(left, [ids[0]]);
}

#[tokio::test]
async fn the_labelling_inbox_lists_what_the_bot_missed_and_exports_the_labels() {
    let h = harness();
    // Understood (the fake model is sure): not in the inbox, unless the user says it did not help.
    h.service
        .classify(&message("m1", "我想退款"))
        .await
        .unwrap();
    let r = h
        .service
        .classify(&message("m2", "嗯嗯啊啊"))
        .await
        .unwrap();
    assert_eq!(r.decision.action, Action::Clarify, "{:?}", r.decision);
    let mut helpful = message("m3", "这个多少钱");
    helpful.user = user("u2");
    h.service.classify(&helpful).await.unwrap();
    let f = FeedbackRequest {
        bot_id: BOT.into(),
        message_id: "m1".into(),
        kind: Some(FeedbackKind::ThumbsDown),
        ..FeedbackRequest::default()
    };
    assert!(h.service.feedback(&f).await.unwrap());

    let q = labels::InboxQuery {
        bot_id: String::new(),
        from_ms: 0,
        to_ms: 0,
        below_confidence: labels::DEFAULT_BELOW_CONFIDENCE,
        include_labelled: false,
    };
    let inbox = h.service.label_inbox(&q).await.unwrap();
    let mut got: Vec<(String, Vec<&str>)> = inbox
        .iter()
        .flat_map(|g| g.items.iter().map(|i| (i.text.clone(), i.why.clone())))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("嗯嗯啊啊".to_string(), vec!["clarify", "low_confidence"]),
            ("我想退款".to_string(), vec!["unhelpful"]),
        ]
    );
    let refund = inbox
        .iter()
        .find(|g| g.likely_intent == "refund")
        .expect("grouped by likely intent");
    let id = refund.items[0].conversation_id;

    // Bad input is named; an unknown message is NOT_FOUND.
    let e = h
        .service
        .assign_label(id, "no_such", "amy")
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("intent: 'no_such' is not an intent") && msg.contains("refund"),
        "{msg}"
    );
    let e = h.service.assign_label(999_999, "refund", "amy").await;
    assert!(matches!(e, Err(ServiceError::NotFound(_))), "{e:?}");
    let bad = labels::InboxQuery {
        below_confidence: 1.5,
        ..q.clone()
    };
    let e = h.service.label_inbox(&bad).await.unwrap_err();
    assert!(invalid_field(e).starts_with("below_confidence"));

    let l = h.service.assign_label(id, "price", "amy").await.unwrap();
    assert_eq!(l.text, "我想退款");
    // Labelled items leave the inbox unless asked for.
    let left = h.service.label_inbox(&q).await.unwrap();
    assert!(left
        .iter()
        .all(|g| g.items.iter().all(|i| i.conversation_id != id)));
    let all = h
        .service
        .label_inbox(&labels::InboxQuery {
            include_labelled: true,
            ..q.clone()
        })
        .await
        .unwrap();
    let item = all
        .iter()
        .flat_map(|g| &g.items)
        .find(|i| i.conversation_id == id)
        .unwrap();
    assert_eq!(item.label.as_deref(), Some("price"));

    let (yaml, n) = h.service.export_labels("");
    assert_eq!(n, 1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("labels.yml"), &yaml).unwrap();
    let data = crate::data::load(&dir.path().join("labels.yml")).unwrap();
    assert_eq!(
        data.examples
            .iter()
            .map(|e| (e.label.as_str(), e.text.as_str()))
            .collect::<Vec<_>>(),
        [("price", "我想退款")]
    );
    assert_eq!(h.service.export_labels("other").1, 0);
    // A window holds the labels of the messages sent in it (the console's inbox filter).
    let sent = h.service.labels.lock().get(id).unwrap().sent_at_ms;
    assert!(sent > 0);
    assert_eq!(h.service.export_labels_between("", sent, sent).1, 1);
    assert_eq!(
        h.service.export_labels_between(BOT, sent - 10, sent + 10).1,
        1
    );
    assert_eq!(h.service.export_labels_between("", sent + 1, i64::MAX).1, 0);
    assert_eq!(h.service.export_labels_between("", i64::MIN, sent - 1).1, 0);
}

#[tokio::test]
async fn a_proactive_send_has_an_id_is_logged_and_takes_feedback() {
    let h = harness();
    let mut rx = h.service.subscribe(BOT, Vec::new()).unwrap();
    h.service.handle_event(&join("u1")).await.unwrap();
    let before = totals(&h).await.total.counts;
    h.service.set_clock(T0 + 61_000, "test").await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(item.kind, OutboundKind::Welcome);
    assert!(
        item.id.starts_with("o-") && item.id.len() == 22,
        "{}",
        item.id
    );
    assert_eq!(item.id, item.stable_id());
    // Wait until the send's row is committed (it goes with the outbox change).
    let f = FeedbackRequest {
        bot_id: BOT.into(),
        message_id: item.id.clone(),
        kind: Some(FeedbackKind::Clicked),
        variant_id: item.reply.variant_id.clone(),
        ..FeedbackRequest::default()
    };
    let mut ok = false;
    for _ in 0..50 {
        if h.service.feedback(&f).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "Feedback finds the send by its id");
    let after = totals(&h).await.total.counts;
    assert_eq!(after.messages, before.messages, "a send is not a message");
    assert_eq!(
        after.auto_replies,
        before.auto_replies + 1,
        "it is an exposure"
    );
    assert_eq!(after.auto_replies_clicked, before.auto_replies_clicked + 1);
}

#[tokio::test]
async fn a_link_click_naming_its_message_credits_that_reply_and_variant() {
    let h = harness();
    h.service
        .classify(&message("m1", "我想退款"))
        .await
        .unwrap();
    let click = |reply_to: &str, kind: EventKind| EventRequest {
        bot_id: BOT.into(),
        chat_id: "g1".into(),
        kind: EventTypeIn::Known(kind),
        user: user("u1"),
        target_id: "refund_form".into(),
        reply_to: reply_to.into(),
        ..EventRequest::default()
    };
    // Wrong ids and the wrong event type are refused before anything changes.
    let e = h
        .service
        .handle_event(&click("nope", EventKind::LinkClicked))
        .await;
    assert!(matches!(e, Err(ServiceError::NotFound(_))), "{e:?}");
    let e = h
        .service
        .handle_event(&click("m1", EventKind::MemberJoined))
        .await
        .unwrap_err();
    assert_eq!(invalid_field(e), "reply_to");
    let before = totals(&h).await.total.counts;
    assert_eq!(before.auto_replies_clicked, 0);
    h.service
        .handle_event(&click("m1", EventKind::LinkClicked))
        .await
        .unwrap();
    let after = totals(&h).await.total.counts;
    assert_eq!(after.auto_replies_clicked, 1, "{after:?}");
    assert_eq!(after.clicks, 1);
}

#[tokio::test(start_paused = true)]
async fn a_welcome_experiment_counts_sends_as_exposures_and_clicks_as_conversions() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("config/operator"), dir.path());
    let playbook = dir.path().join("playbook.yml");
    let text = std::fs::read_to_string(&playbook).unwrap().replacen(
        "  experiments:\n",
        "  experiments:\n    - id: welcome_copy\n      reply: welcome\n      variants:\n        - { variant: w1, weight: 1 }\n        - { variant: w2, weight: 1 }\n",
        1,
    );
    std::fs::write(&playbook, text).unwrap();
    let h = harness_with(Some(dir.path().to_path_buf()), true, true);
    let mut rx = h.service.subscribe(BOT, Vec::new()).unwrap();
    // Six members join six groups: after the merge window, one welcome each, for that member.
    for i in 0..6 {
        let mut ev = join(&format!("u{i}"));
        ev.chat_id = format!("g{i}");
        h.service.handle_event(&ev).await.unwrap();
    }
    h.service.set_clock(T0 + 61_000, "test").await.unwrap();
    let mut sends = Vec::new();
    while sends.len() < 6 {
        let item = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("six welcomes")
            .unwrap();
        assert_eq!(item.kind, OutboundKind::Welcome);
        assert_eq!(item.reply.experiment, "welcome_copy");
        assert!(item.reply.variant_id.starts_with("welcome_copy/w"));
        sends.push(item);
    }
    // A click on the first welcome's link credits its variant (the send's row is committed with
    // the outbox change, so retry until it is there).
    let first = &sends[0];
    let click = EventRequest {
        bot_id: BOT.into(),
        chat_id: first.chat_id.clone(),
        kind: EventTypeIn::Known(EventKind::LinkClicked),
        user: user(&first.user_ids[0]),
        target_id: "group_rules".into(),
        reply_to: first.id.clone(),
        event_id: "click-1".into(),
        ..EventRequest::default()
    };
    let mut credited = false;
    for _ in 0..50 {
        if h.service.handle_event(&click).await.is_ok() {
            credited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(credited, "the click finds the welcome by its id");
    let report = h
        .service
        .stats(&StatsQuery {
            bot_id: BOT.into(),
            experiment: "welcome_copy".into(),
            ..StatsQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(report.experiments.len(), 1, "{:?}", report.experiments);
    let ab = &report.experiments[0];
    let exposures: u64 = ab.variants.iter().map(|v| v.exposures).sum();
    assert_eq!(exposures, 6, "{ab:?}");
    let clicked: Vec<_> = ab.variants.iter().filter(|v| v.conversions > 0).collect();
    assert_eq!(clicked.len(), 1, "{ab:?}");
    assert_eq!(clicked[0].variant_id, first.reply.variant_id);
    assert_eq!(clicked[0].conversions, 1);
}
