//! What replicas that all serve share besides the playbook's rows (`leader.followers: serve`):
//! the outbox of proactive sends in PostgreSQL (`store/pg_outbox.rs`) and proactive planning
//! that commits its state change and queues its sends in one transaction
//! (`store/pg_shared.rs`). On a throw-away PostgreSQL (`tests/common/pg.rs`); without its
//! binaries this fails (never skips): `.ci/run` installs them.

#[path = "common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::collections::HashSet;
use std::sync::Arc;

use intentd::policy::scheduler::OutboundItem;
use intentd::policy::state::{
    GroupKey, PlannedSends, PlaybookState, Scope, StateChange, StateError,
};
use intentd::policy::state_memory::StateLimits;
use intentd::policy::OutboundKind;
use intentd::store::pg_outbox::{OutboxBounds, OutboxDrops, PgOutbox};
use intentd::store::pg_shared::SharedState;
use intentd::store::{Keyring, PgSettings, PgStore};
use intentd::types::ReplyOut;
use pg::TestPg;

const BOT: &str = "bot-7f3a";
const SECRET_TEXT: &str = "reply text that must never be stored in clear";

fn ring() -> Arc<Keyring> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    Arc::new(Keyring::parse(&format!("k1:{key}"), "test").unwrap())
}

fn settings() -> PgSettings {
    PgSettings {
        pool_size: 4,
        ..Default::default()
    }
}

/// Opens a replica's shared state on `url` (off the runtime: opening blocks). The first call
/// opens the store too, which makes the pseudonym secret.
async fn replica(url: &str, bounds: OutboxBounds) -> Arc<SharedState> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        PgStore::open(&url, &settings(), ring(), None).unwrap();
        Arc::new(
            SharedState::open(
                &url,
                &settings(),
                ring(),
                StateLimits::default(),
                None,
                bounds,
            )
            .unwrap(),
        )
    })
    .await
    .unwrap()
}

const BOUNDS: OutboxBounds = OutboxBounds {
    max_per_bot: 1000,
    max_age_ms: 3_600_000,
};

fn item(chat: &str, n: i64) -> OutboundItem {
    OutboundItem {
        bot_id: BOT.into(),
        chat_id: chat.into(),
        kind: OutboundKind::Scheduled,
        reply: ReplyOut {
            text: format!("{SECRET_TEXT} {n}"),
            ..Default::default()
        },
        send_at_ms: n,
        rule_id: format!("schedule:{n}"),
        user_ids: vec!["user-9c1e".into()],
        id: String::new(),
    }
    .with_id()
}

fn ids(items: &[OutboundItem]) -> Vec<i64> {
    items.iter().map(|i| i.send_at_ms).collect()
}

/// Every byte of the outbox table, for the privacy check.
async fn table_bytes(url: &str) -> Vec<u8> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = c
        .query(
            "SELECT convert_to(bot || chat || key_id, 'UTF8') || sealed FROM outbox_shared",
            &[],
        )
        .await
        .unwrap();
    rows.iter().flat_map(|r| r.get::<_, Vec<u8>>(0)).collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_taking_at_once_get_disjoint_sends_and_together_all() {
    let pg = TestPg::start();
    let (a, b) = (
        replica(&pg.url, BOUNDS).await,
        replica(&pg.url, BOUNDS).await,
    );
    let (oa, ob) = (a.outbox(), b.outbox());
    // One replica queues 300 sends in batches while streams on both take at the same time.
    let pushing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let pusher = {
        let (oa, pushing) = (oa.clone(), pushing.clone());
        tokio::spawn(async move {
            for batch in 0..30 {
                let items = (batch * 10..batch * 10 + 10)
                    .map(|n| item(&format!("g{}", n % 5), n))
                    .collect();
                assert_eq!(oa.push(items, 1_000).await.unwrap(), OutboxDrops::default());
            }
            pushing.store(false, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let take = |o: Arc<PgOutbox>| {
        let pushing = pushing.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let done = !pushing.load(std::sync::atomic::Ordering::SeqCst);
                let (items, drops) = o.take(BOT, &[], 2_000).await.unwrap();
                assert_eq!(drops, OutboxDrops::default());
                if items.is_empty() && done {
                    return got;
                }
                got.extend(items);
            }
        })
    };
    let takers = [
        take(oa.clone()),
        take(ob.clone()),
        take(oa.clone()),
        take(ob.clone()),
    ];
    pusher.await.unwrap();
    let mut got = Vec::new();
    for t in takers {
        got.push(t.await.unwrap());
    }
    assert!(
        got.iter().filter(|g| !g.is_empty()).count() >= 2,
        "one stream took everything"
    );
    let mut all: Vec<i64> = got.iter().flat_map(|g| ids(g)).collect();
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "a send taken twice");
    all.sort();
    assert_eq!(all, (0..300).collect::<Vec<_>>());
    // Each take hands out oldest first.
    for g in &got {
        let order = ids(g);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }
    assert_eq!(oa.total().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_by_chat_put_back_first_bounded_and_sealed() {
    let pg = TestPg::start();
    let bounds = OutboxBounds {
        max_per_bot: 5,
        max_age_ms: 60_000,
    };
    let o = replica(&pg.url, bounds).await.outbox();
    o.push((0..3).map(|n| item("g1", n)).collect(), 1_000)
        .await
        .unwrap();
    o.push(vec![item("g2", 10)], 1_000).await.unwrap();

    // Nothing in clear: not the bot, the chat, the user, the rule or the text.
    let bytes = table_bytes(&pg.url).await;
    for secret in [BOT, "g1", "user-9c1e", "schedule:1", SECRET_TEXT] {
        assert!(!contains(&bytes, secret), "'{secret}' stored in clear");
    }

    // A stream for g2 only leaves g1's sends for another.
    let (got, _) = o.take(BOT, &["g2".to_string()], 2_000).await.unwrap();
    assert_eq!(ids(&got), [10]);
    assert_eq!(got[0].reply.text, format!("{SECRET_TEXT} 10"));
    let (got, _) = o.take(BOT, &[], 2_000).await.unwrap();
    assert_eq!(ids(&got), [0, 1, 2]);

    // What a stream could not send goes back in front, in its order.
    o.push(vec![item("g1", 20)], 3_000).await.unwrap();
    let back = o.put_back(BOT, got, 3_000).await.unwrap();
    assert_eq!(back, OutboxDrops::default());
    let (got, _) = o.take(BOT, &[], 3_000).await.unwrap();
    assert_eq!(ids(&got), [0, 1, 2, 20]);

    // At most max_per_bot per bot: the oldest go, counted.
    let d = o
        .push((30..38).map(|n| item("g1", n)).collect(), 4_000)
        .await
        .unwrap();
    assert_eq!(
        d,
        OutboxDrops {
            overflow: 3,
            expired: 0
        }
    );
    // Older than max_age_ms when taken: dropped, counted.
    let (got, d) = o.take(BOT, &[], 4_000 + 60_001).await.unwrap();
    assert!(got.is_empty());
    assert_eq!(
        d,
        OutboxDrops {
            overflow: 0,
            expired: 5
        }
    );
    assert_eq!(o.total().await.unwrap(), 0);
}

/// Planning whose state change loses a race is rolled back with its sends, and planned again
/// on the fresh row: the sends are queued once, with the commit that won.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_sends_are_queued_with_the_state_change_or_not_at_all() {
    let pg = TestPg::start();
    let s = replica(&pg.url, BOUNDS).await;
    let key = GroupKey::new(BOT, "g1");
    let put = |version: u64| StateChange::PutGroup {
        key: key.clone(),
        expected_version: version,
        row: Default::default(),
    };
    s.commit(vec![put(0)]).await.unwrap();

    let mut attempts = 0;
    let planned = s
        .plan_due(5_000, &mut |view| {
            attempts += 1;
            let (_, row) = view
                .groups
                .iter()
                .find(|(k, _)| *k == key)
                .expect("the group is read");
            let version = row.version;
            if attempts == 1 {
                // Another replica's decision lands between this read and this commit.
                let other = s.clone();
                let change = put(version);
                std::thread::spawn(move || {
                    tokio::runtime::Runtime::new()
                        .unwrap()
                        .block_on(other.commit(vec![change]))
                })
                .join()
                .unwrap()
                .unwrap();
            }
            (vec![item("g1", attempts)], vec![put(version)])
        })
        .await
        .unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(
        planned,
        PlannedSends::Queued {
            sends: 1,
            overflow: 0,
            expired: 0
        }
    );
    let (got, _) = s.outbox().take(BOT, &[], 6_000).await.unwrap();
    assert_eq!(ids(&got), [2], "only the second plan's send, once");
    let v = s.load(&Scope::group(key.clone())).await.unwrap();
    assert_eq!(v.group.version, 3);

    // A stale write is still a conflict through the shared state.
    let e = s.commit(vec![put(1)]).await.unwrap_err();
    assert!(matches!(e, StateError::Conflict(_)), "{e}");
}
