//! TLS to PostgreSQL against a real cluster with `ssl = on` and a certificate of a CA made for
//! the test (`tests/common/pg.rs`): the store's pooled connections are encrypted (the server's
//! `pg_stat_ssl` says so), the verify modes check what libpq's do, and every refusal is one
//! clear line that comes at once instead of after the start-up retries. Then the same cluster
//! turns TLS off: `require` is refused, while no sslmode and `disable` still connect in plain.
//!
//! One cluster for the whole file (one test): starting clusters is the slow part.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg::{TestCa, TestPg};
use intentd::store::pg::connect_one;
use intentd::store::{ConversationRecord, Keyring, PgSettings, PgStore, Record, Store, Timings};
use intentd::types::{Action, Source};

/// Longer than any refusal may take: a TLS refusal must not wait out the start-up retries.
const CONNECT_TIMEOUT_S: u64 = 20;

fn settings(ca_file: Option<&std::path::Path>) -> PgSettings {
    PgSettings {
        pool_size: 2,
        connect_timeout_s: CONNECT_TIMEOUT_S,
        ca_file: ca_file.map(|p| p.to_path_buf()),
        ..Default::default()
    }
}

fn ring() -> Arc<Keyring> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    Arc::new(Keyring::parse(&format!("k1:{key}"), "test").unwrap())
}

fn conversation(message_id: &str) -> ConversationRecord {
    ConversationRecord {
        bot_id: "bot".into(),
        chat_id: "g1".into(),
        user_id: "wxid_user".into(),
        message_id: message_id.into(),
        at_ms: 1_000,
        sent_at_ms: 0,
        text: "请问这个多少钱".into(),
        intent: "price".into(),
        confidence: 0.9,
        source: Source::Model,
        action: Action::Reply,
        triggered: true,
        reply_text: "九十九元".into(),
        variant_id: "price/a".into(),
        experiment: String::new(),
        timings: Timings {
            tokenize_us: 1,
            inference_us: 2,
            queue_us: 3,
            total_us: 6,
        },
        model_version: "m1".into(),
        reason: "faq".into(),
        answer: None,
    }
}

/// `base` (a `postgres://` URL without a query) with `query` appended.
fn url(base: &str, query: &str) -> String {
    if query.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{query}")
    }
}

/// The `postgres://` URL of `pg` with `host` in place of 127.0.0.1.
fn with_host(pg: &TestPg, host: &str) -> String {
    pg.url.replacen("127.0.0.1", host, 1)
}

/// `(connections, encrypted ones)` the server sees for `application_name`.
async fn ssl_of(observer: &tokio_postgres::Client, application_name: &str) -> (i64, i64) {
    let row = observer
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Opens a store, expecting a refusal: its message, after checking it came at once.
fn refused(url: &str, settings: &PgSettings) -> String {
    let t0 = Instant::now();
    let e = PgStore::open(url, settings, ring(), None)
        .map(drop)
        .expect_err("the connection must be refused");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(CONNECT_TIMEOUT_S / 2),
        "a TLS refusal is final, yet the start retried for {took:?}: {e}"
    );
    e.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgres_is_encrypted_verified_and_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // The server's certificate names localhost only, so 127.0.0.1 tells verify-ca from
    // verify-full.
    let ca = TestCa::new(dir.path(), "good", "DNS:localhost");
    let other = TestCa::new(dir.path(), "other", "DNS:localhost");
    let pg = TestPg::start_tls(&ca);
    let (observer, _task) = connect_one(&pg.url, &settings(None)).await.unwrap();

    // (1) require + ca_file: a record goes in and comes back through the store, over TLS.
    let (u, st) = (
        url(&pg.url, "sslmode=require&application_name=tls-store"),
        settings(Some(&ca.ca)),
    );
    let s = tokio::task::spawn_blocking(move || PgStore::open(&u, &st, ring(), None))
        .await
        .unwrap()
        .expect("sslmode=require trusting the test CA");
    let s = tokio::task::spawn_blocking(move || {
        s.write_batch(&[Record::Conversation(conversation("m1"))])
            .unwrap();
        let rows = s.conversations(0, i64::MAX, 0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].record.text, "请问这个多少钱");
        assert_eq!(rows[0].record.message_id, s.stored_message_id("bot", "m1"));
        s
    })
    .await
    .unwrap();
    let (n, encrypted) = ssl_of(&observer, "tls-store").await;
    assert!(n >= 1, "the store's pool holds a connection");
    assert_eq!(encrypted, n, "every connection of the store is encrypted");
    drop(s);

    // verify-full checks the name too: the certificate names localhost, not 127.0.0.1 ...
    let e = connect_one(
        &url(&pg.url, "sslmode=verify-full"),
        &settings(Some(&ca.ca)),
    )
    .await
    .map(drop)
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("does not name the host") && e.contains("verify-ca"),
        "{e}"
    );
    // ... and connects by the name it lists; verify-ca checks the chain alone.
    for u in [
        url(
            &with_host(&pg, "localhost"),
            "sslmode=verify-full&application_name=tls-full",
        ),
        url(&pg.url, "sslmode=verify-ca&application_name=tls-full"),
    ] {
        let (c, _t) = connect_one(&u, &settings(Some(&ca.ca))).await.expect(&u);
        c.simple_query("SELECT 1").await.unwrap();
        assert_eq!(ssl_of(&observer, "tls-full").await, (1, 1), "{u}");
        drop(c);
        wait_gone(&observer, "tls-full").await;
    }

    // (2) Another CA: the certificate cannot be verified, and the message names the file.
    let (u, st) = (url(&pg.url, "sslmode=require"), settings(Some(&other.ca)));
    let e = tokio::task::spawn_blocking(move || refused(&u, &st))
        .await
        .unwrap();
    assert!(e.contains("could not be verified"), "{e}");
    assert!(e.contains(&other.ca.display().to_string()), "{e}");
    // Without ca_file, verify-ca trusts the system's roots, which do not hold the test CA.
    let e = connect_one(&url(&pg.url, "sslmode=verify-ca"), &settings(None))
        .await
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("could not be verified") && e.contains("system's root certificates"),
        "{e}"
    );

    // Without ca_file, require and the default (prefer) encrypt but check nothing, as libpq.
    for q in [
        "sslmode=require&application_name=tls-any",
        "application_name=tls-any",
    ] {
        let (c, _t) = connect_one(&url(&pg.url, q), &settings(None))
            .await
            .expect(q);
        c.simple_query("SELECT 1").await.unwrap();
        assert_eq!(ssl_of(&observer, "tls-any").await, (1, 1), "{q}");
        drop(c);
        wait_gone(&observer, "tls-any").await;
    }

    // (3) The server stops offering TLS: require is refused, saying so.
    observer
        .batch_execute("ALTER SYSTEM SET ssl = off")
        .await
        .unwrap();
    observer
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    wait_ssl_off(&pg).await;
    let u = url(&pg.url, "sslmode=require");
    let e = tokio::task::spawn_blocking(move || refused(&u, &settings(None)))
        .await
        .unwrap();
    assert!(
        e.contains("TLS is required (sslmode=require) but the server refused it"),
        "{e}"
    );

    // (4) No sslmode (prefer) and disable connect in plain; the store works as before.
    for q in [
        "application_name=plain",
        "sslmode=disable&application_name=plain",
    ] {
        let u = url(&pg.url, q);
        let s = tokio::task::spawn_blocking(move || {
            let s = PgStore::open(&u, &settings(None), ring(), None).expect(&u);
            s.write_batch(&[Record::Conversation(conversation("m2"))])
                .unwrap();
            assert_eq!(s.conversations(0, i64::MAX, 0, 10).unwrap().len(), 2);
            s
        })
        .await
        .unwrap();
        let (n, encrypted) = ssl_of(&observer, "plain").await;
        assert!(
            n >= 1 && encrypted == 0,
            "{q}: {n} connections, {encrypted} encrypted"
        );
        drop(s);
        wait_gone(&observer, "plain").await;
    }
}

/// Waits until the server has no session left for `application_name` (dropped clients close
/// their connections in the background).
async fn wait_gone(observer: &tokio_postgres::Client, application_name: &str) {
    let t0 = Instant::now();
    while ssl_of(observer, application_name).await.0 > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{application_name} sessions still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a new session sees `ssl = off` (a reload is asynchronous).
async fn wait_ssl_off(pg: &TestPg) {
    let t0 = Instant::now();
    loop {
        let (c, _t) = connect_one(&url(&pg.url, "sslmode=disable"), &settings(None))
            .await
            .unwrap();
        let rows = c.simple_query("SHOW ssl").await.unwrap();
        let on = rows.iter().any(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("on"),
            _ => false,
        });
        if !on {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "ssl still on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
