//! The playbook state in PostgreSQL (`store/pg_state.rs`) on a throw-away server
//! (`tests/common/pg.rs`, or `INTENTD_TEST_PG_URL`): the behaviour suite every state store
//! shares (`policy/state_suite.rs`, also run against the in-memory store), then what only a
//! database shared by replicas has: two replicas reserving slots in one group, nothing in
//! clear in the tables, a restart reading the same rows, a damaged row reported by name.
//! Without PostgreSQL's binaries these fail (never skip): `.ci/run` installs them.

#[path = "common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use intentd::policy::compliance::ReviewItem;
use intentd::policy::handoff::{GroupHandoffs, OpenHandoff};
use intentd::policy::scheduler::{Job, JobContent};
use intentd::policy::state::{
    DroppedSend, GroupKey, GroupRow, PlaybookState, Scope, StateChange, StateError, UserRow,
};
use intentd::policy::state_memory::{OnDiscard, StateLimits};
use intentd::policy::state_suite::{self, Inspect, Made};
use intentd::policy::OutboundKind;
use intentd::store::pg_state::PgState;
use intentd::store::{Keyring, PgSettings, PgStore, StoreError};
use pg::TestPg;

fn ring() -> Arc<Keyring> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    Arc::new(Keyring::parse(&format!("k1:{key}"), "test").unwrap())
}

fn settings() -> PgSettings {
    PgSettings {
        pool_size: 8,
        ..Default::default()
    }
}

/// A server and fresh databases on it, one per store made.
struct Server {
    pg: TestPg,
    made: AtomicUsize,
}

impl Server {
    fn start() -> Arc<Server> {
        Arc::new(Server {
            pg: TestPg::start(),
            made: AtomicUsize::new(0),
        })
    }

    /// A new empty database, with the store opened on it once (it makes the pseudonym secret
    /// the state reads).
    async fn database(&self) -> String {
        let url = self.empty_database().await;
        let u = url.clone();
        tokio::task::spawn_blocking(move || {
            drop(PgStore::open(&u, &settings(), ring(), None).unwrap())
        })
        .await
        .unwrap();
        url
    }

    /// A new database nothing has opened yet.
    async fn empty_database(&self) -> String {
        let name = format!(
            "pgstate_{}_{}",
            std::process::id(),
            self.made.fetch_add(1, Ordering::SeqCst)
        );
        let (client, conn) = tokio_postgres::connect(&self.pg.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            client.batch_execute(&sql).await.unwrap();
        }
        let (server, _) = self.pg.url.rsplit_once('/').unwrap();
        format!("{server}/{name}")
    }
}

/// Opens a state on `url` (blocking: `Pg::connect` waits on its thread).
async fn open(url: &str, limits: StateLimits, hook: Option<OnDiscard>) -> PgState {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || PgState::open(&url, &settings(), ring(), limits, hook))
        .await
        .unwrap()
        .unwrap()
}

async fn query_all(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.query(sql, &[]).await.unwrap()
}

async fn execute(url: &str, sql: &str) -> u64 {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.execute(sql, &[]).await.unwrap()
}

const TABLES: [&str; 6] = [
    "playbook_groups",
    "playbook_users",
    "playbook_jobs",
    "playbook_reviews",
    "playbook_reviewed",
    "playbook_dropped",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_suite_passes_on_postgres() {
    let server = Server::start();
    let make = {
        let server = server.clone();
        move |limits: StateLimits, hook: Option<OnDiscard>| -> Made {
            let server = server.clone();
            Box::pin(async move {
                let url = server.database().await;
                Arc::new(open(&url, limits, hook).await) as Arc<dyn Inspect>
            })
        }
    };
    state_suite::run_all(&make).await;
}

/// Two replicas (two pools on one database) reserve spacing slots in one group at the same
/// time: every decision gets its own slot, 15 s apart, and the version counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_reserve_distinct_slots_in_one_group() {
    let server = Server::start();
    let url = server.database().await;
    let a: Arc<dyn Inspect> = Arc::new(open(&url, StateLimits::default(), None).await);
    let b: Arc<dyn Inspect> = Arc::new(open(&url, StateLimits::default(), None).await);
    state_suite::distinct_slots_across(&[a.clone(), b.clone()]).await;

    // And the same race over several groups at once: slots are per group.
    let groups = ["g1", "g2", "g3"];
    let tasks: Vec<_> = (0..groups.len() * 6)
        .map(|i| {
            let st = [&a, &b][i % 2].clone();
            let key = GroupKey::new("b", groups[i % groups.len()]);
            tokio::spawn(async move {
                let mut slot = None;
                st.transact(&Scope::group(key.clone()), &mut |view| {
                    let (s, changes) = state_suite::reserve(view, &key, 1_000);
                    slot = Some(s);
                    changes
                })
                .await
                .unwrap();
                (key, slot.unwrap())
            })
        })
        .collect();
    let mut by_group = std::collections::BTreeMap::<GroupKey, Vec<i64>>::new();
    for t in tasks {
        let (key, slot) = t.await.unwrap();
        by_group.entry(key).or_default().push(slot);
    }
    for (key, mut slots) in by_group {
        slots.sort();
        let expected: Vec<i64> = (0..6).map(|i| 1_000 + i * 15_000).collect();
        assert_eq!(slots, expected, "{key:?}");
        let v = b.load(&Scope::group(key)).await.unwrap().group;
        assert_eq!(v.version, 6);
    }
}

const BOT: &str = "bot_secret_7f3a";
const CHAT: &str = "room_secret_9c1d@chatroom";
const USER: &str = "wxid_secret_user_4e2b";
const MESSAGE: &str = "msg_secret_id_58af";
const TEXT: &str = "text_secret_words_a1b2";
const CHAT_NAME: &str = "chat_name_secret_77";

/// One of every row kind, naming the ids above.
fn every_kind() -> Vec<StateChange> {
    let group = GroupKey::new(BOT, CHAT);
    let mut row = GroupRow {
        handoffs: GroupHandoffs {
            open: [OpenHandoff {
                opened_ms: 1_234,
                user_id: USER.into(),
                message_id: MESSAGE.into(),
                ..Default::default()
            }]
            .into(),
            ..Default::default()
        },
        ..Default::default()
    };
    intentd::policy::scheduler::touch(&mut row.timers, CHAT_NAME, 1_000, true);
    let mut user = UserRow::default();
    user.cooldowns.record("price", 1_000);
    vec![
        StateChange::PutGroup {
            key: group.clone(),
            expected_version: 0,
            row,
        },
        StateChange::PutUser {
            key: group.user(USER),
            expected_version: 0,
            row: user,
        },
        StateChange::Schedule(Job {
            bot_id: BOT.into(),
            chat_id: CHAT.into(),
            chat_name: CHAT_NAME.into(),
            kind: OutboundKind::DelayedReply,
            rule_id: "push:x".into(),
            at_ms: 5_000,
            content: JobContent::Ready(Default::default()),
            user_ids: vec![USER.into()],
            slot_reserved: false,
        }),
        StateChange::AddReview(ReviewItem {
            at_ms: 1_000,
            bot_id: BOT.into(),
            chat_id: CHAT.into(),
            user_id: USER.into(),
            message_id: MESSAGE.into(),
            text: TEXT.into(),
            matched: "w".into(),
            reason: "banned_word".into(),
            verdict: None,
        }),
        StateChange::AddDropped(DroppedSend {
            at_ms: 1_000,
            bot_id: BOT.into(),
            chat_id: CHAT.into(),
            user_id: USER.into(),
            source_id: MESSAGE.into(),
            key: "price".into(),
            reason: "dropped:spacing_queue_full".into(),
        }),
    ]
}

/// Whoever reads the tables sees no bot, chat, user or message id and no text: not as text,
/// not inside a binary column (the row's text form shows `bytea` as hex, so both are looked
/// for).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_id_or_text_is_in_clear_in_any_table() {
    let server = Server::start();
    let url = server.database().await;
    let st = open(&url, StateLimits::default(), None).await;
    st.commit(every_kind()).await.unwrap();
    for table in TABLES {
        let rows = query_all(&url, &format!("SELECT t::text FROM {table} t")).await;
        assert!(!rows.is_empty(), "{table} has a row");
        for r in rows {
            let text: String = r.get(0);
            for secret in [BOT, CHAT, USER, MESSAGE, TEXT, CHAT_NAME, "wxid_secret"] {
                assert!(!text.contains(secret), "{table} shows {secret}: {text}");
                let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
                assert!(
                    !text.contains(&hex),
                    "{table} holds {secret} in bytes: {text}"
                );
            }
        }
    }
}

/// A new process on the same database reads the same rows at the same versions, and the
/// queued entries with the same ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_reads_the_same_rows_and_versions() {
    let server = Server::start();
    let url = server.database().await;
    let scope = Scope::user(GroupKey::new(BOT, CHAT), USER, Some(0));
    let (view, due, reviews, dropped) = {
        let st = open(&url, StateLimits::default(), None).await;
        st.commit(every_kind()).await.unwrap();
        // A second write, so the versions are not all 1.
        let v = st.load(&scope).await.unwrap();
        st.commit(vec![StateChange::PutGroup {
            key: scope.group.clone(),
            expected_version: v.group.version,
            row: v.group.row.clone(),
        }])
        .await
        .unwrap();
        (
            st.load(&scope).await.unwrap(),
            st.load_due(Some(i64::MAX)).await.unwrap(),
            st.reviews().await.unwrap(),
            st.dropped_sends().await.unwrap(),
        )
    };
    assert_eq!(
        (view.group.version, view.user.as_ref().unwrap().version),
        (2, 1)
    );
    let st = open(&url, StateLimits::default(), None).await;
    assert_eq!(st.load(&scope).await.unwrap(), view);
    assert_eq!(st.load_due(Some(i64::MAX)).await.unwrap(), due);
    assert_eq!(
        due.groups[0].0, scope.group,
        "the ids come back from the sealed body"
    );
    assert_eq!(due.jobs.len(), 1);
    assert_eq!(st.reviews().await.unwrap(), reviews);
    assert_eq!(reviews[0].1.text, TEXT);
    assert_eq!(st.dropped_sends().await.unwrap(), dropped);
    // The review's message id is still remembered: a repeat is not queued again.
    st.commit(
        every_kind()
            .into_iter()
            .filter(|c| matches!(c, StateChange::AddReview(_)))
            .collect(),
    )
    .await
    .unwrap();
    assert_eq!(st.reviews().await.unwrap(), reviews);
}

/// A row whose sealed body does not open (damaged, or copied from another row) is a clear
/// backend error naming the table, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_sealed_row_is_an_error_naming_the_table() {
    let server = Server::start();
    let url = server.database().await;
    let st = open(&url, StateLimits::default(), None).await;
    st.commit(every_kind()).await.unwrap();
    let scope = Scope::user(GroupKey::new(BOT, CHAT), USER, None);

    assert_eq!(
        execute(&url, "UPDATE playbook_groups SET sealed = '\\x00010203'").await,
        1
    );
    for e in [
        st.load(&scope).await.unwrap_err(),
        st.load_due(None).await.unwrap_err(),
    ] {
        let StateError::Backend(m) = &e else {
            panic!("{e:?}")
        };
        assert!(m.contains("playbook_groups row"), "{m}");
        assert!(m.contains("does not open"), "{m}");
    }
    // A body copied onto another row does not open there either (it is bound to its key).
    execute(
        &url,
        "UPDATE playbook_reviews SET sealed = (SELECT sealed FROM playbook_dropped LIMIT 1)",
    )
    .await;
    let e = st.reviews().await.unwrap_err();
    assert!(
        matches!(&e, StateError::Backend(m) if m.contains("playbook_reviews row")),
        "{e:?}"
    );
    // The state is still usable for what is intact.
    assert_eq!(st.dropped_sends().await.unwrap().len(), 1);
}

/// The state reads the store's pseudonym secret and never makes its own: on a database the
/// store never opened, opening says what to do first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opening_before_the_store_says_to_open_the_store_first() {
    let server = Server::start();
    let url = server.empty_database().await;
    let e = tokio::task::spawn_blocking(move || {
        PgState::open(&url, &settings(), ring(), StateLimits::default(), None).unwrap_err()
    })
    .await
    .unwrap();
    assert!(matches!(e, StoreError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("open the store"), "{e}");
}
