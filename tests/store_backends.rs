//! One trait, two implementations, one test suite: every case here runs against SQLite (a temp
//! file) and PostgreSQL (a throw-away cluster, `tests/common/pg.rs`, or `INTENTD_TEST_PG_URL`).
//! Without PostgreSQL's binaries the PostgreSQL cases fail (never skip): `.ci/run` installs them.
//!
//! And one end-to-end run of the real server on PostgreSQL, restarted on the same database.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::pg::TestPg;
use common::server::{classify_req, ServerOptions, TestServer, BOT, T0};
use intentd::durable::{RowKey, RowWrite};
use intentd::pb;
use intentd::store::audit::{PurgeCutoffs, DAY_MS};
use intentd::store::series::{stats_series, SeriesQuery};
use intentd::store::stats::{rates, stats_report, StatsQuery};
use intentd::store::{
    AnswerKind, AnswerRow, AuditAction, AuditRecord, ConversationRecord, Counts, FeedbackKind,
    FeedbackRecord, GroupBy, HumanReplyRecord, Keyring, PgSettings, PgStore, Record, SqliteStore,
    StatsFilter, Store, StoreConfig, StoreError, Timings,
};
use intentd::types::{Action, Source};

/// Where a case's database lives.
trait Backend {
    /// Opens (creating or reopening) the case's database with the key ring `spec`.
    fn open(&self, spec: &str) -> Result<Box<dyn Store>, StoreError>;
    /// Every value the database holds, as bytes (what whoever reads it sees).
    fn raw(&self) -> Vec<u8>;
}

struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Self {
        Sqlite {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("log.db")
    }
}

impl Backend for Sqlite {
    fn open(&self, spec: &str) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(SqliteStore::open(&self.path(), ring(spec))?))
    }
    fn raw(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            out.extend(std::fs::read(e.unwrap().path()).unwrap());
        }
        out
    }
}

struct Postgres {
    pg: Arc<TestPg>,
    /// A database of `pg`'s server.
    url: String,
}

impl Postgres {
    fn new() -> Self {
        let pg = TestPg::start();
        Postgres {
            url: pg.url.clone(),
            pg: Arc::new(pg),
        }
    }

    /// A fresh database `name` on the same server (made anew when it exists).
    fn another_database(&self, name: &str) -> Postgres {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            // One statement each: they cannot run in one (implicit) transaction.
            for sql in [
                format!("DROP DATABASE IF EXISTS {name}"),
                format!("CREATE DATABASE {name}"),
            ] {
                client.batch_execute(&sql).await.unwrap();
            }
        });
        let (server, _) = self.url.rsplit_once('/').unwrap();
        Postgres {
            pg: self.pg.clone(),
            url: format!("{server}/{name}"),
        }
    }
}

impl Backend for Postgres {
    fn open(&self, spec: &str) -> Result<Box<dyn Store>, StoreError> {
        let settings = PgSettings {
            pool_size: 4,
            ..Default::default()
        };
        Ok(Box::new(PgStore::open(
            &self.url,
            &settings,
            ring(spec),
            None,
        )?))
    }
    /// Every column of every table of the database, as PostgreSQL renders it in text (a
    /// `bytea` as `\x` and hex, so the needles are looked for in hex too).
    fn raw(&self) -> Vec<u8> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let tables: Vec<String> = client
                .query(
                    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert!(tables.len() >= 8, "{tables:?}");
            let mut out = Vec::new();
            for t in tables {
                for r in client
                    .query(&format!("SELECT t::text FROM {t} t"), &[])
                    .await
                    .unwrap()
                {
                    out.extend_from_slice(r.get::<_, &str>(0).as_bytes());
                    out.push(b'\n');
                }
            }
            out
        })
    }
}

fn ring(spec: &str) -> Arc<Keyring> {
    Arc::new(Keyring::parse(spec, "test").unwrap())
}

/// Base64 of 32 bytes all equal to `b`.
fn key(b: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([b; 32])
}

fn k1() -> String {
    format!("k1:{}", key(1))
}

fn conversation(chat: &str, msg: &str, at_ms: i64) -> ConversationRecord {
    ConversationRecord {
        bot_id: "bot".into(),
        chat_id: chat.into(),
        user_id: "wxid_secret_user".into(),
        message_id: msg.into(),
        at_ms,
        sent_at_ms: 0,
        text: "请问这个多少钱 secret-text".into(),
        intent: "price".into(),
        confidence: 0.9,
        source: Source::Model,
        action: Action::Reply,
        triggered: true,
        reply_text: "secret-reply 九十九元".into(),
        variant_id: "price/a".into(),
        experiment: "exp1".into(),
        timings: Timings {
            tokenize_us: 10,
            inference_us: 200,
            queue_us: 5,
            total_us: 250,
        },
        model_version: "m1".into(),
        reason: "faq".into(),
        answer: None,
    }
}

fn feedback(msg: &str, kind: FeedbackKind, at_ms: i64) -> Record {
    Record::Feedback(FeedbackRecord {
        bot_id: "bot".into(),
        message_id: msg.into(),
        kind,
        variant_id: String::new(),
        at_ms,
    })
}

fn all(bot: &str) -> StatsFilter {
    StatsFilter {
        bot_id: bot.into(),
        chat_id: String::new(),
        from_ms: 0,
        to_ms: i64::MAX,
    }
}

// ---------------------------------------------------------------------------------------------
// The cases, each written once against the trait.

fn a_batch_reads_back_as_counts_rows_and_stats(b: &dyn Backend) {
    let s = b.open(&k1()).unwrap();
    let mut recs = Vec::new();
    for i in 0..10 {
        let mut c = conversation(
            if i % 2 == 0 { "g1" } else { "g2" },
            &format!("m{i}"),
            1_000 + i,
        );
        if i >= 7 {
            c.action = Action::Handoff;
            c.reply_text.clear();
        }
        if i == 0 {
            c.variant_id = "price/b".into();
        }
        recs.push(Record::Conversation(c));
    }
    recs.push(feedback("m0", FeedbackKind::Resolved, 2_000));
    recs.push(feedback("m1", FeedbackKind::Unresolved, 2_000));
    recs.push(feedback("m1", FeedbackKind::Clicked, 2_000));
    recs.push(feedback("m1", FeedbackKind::Clicked, 2_001)); // a retried click counts once
    recs.push(feedback("m2", FeedbackKind::ThumbsUp, 2_000));
    recs.push(Record::HumanReply(HumanReplyRecord {
        bot_id: "bot".into(),
        chat_id: "g2".into(),
        message_id: "m9".into(),
        at_ms: 3_000,
    }));
    // A retried message replaces its row (same batch, last one wins).
    let mut again = conversation("g1", "m2", 1_002);
    again.intent = "refund".into();
    recs.push(Record::Conversation(again));
    s.write_batch(&recs).unwrap();

    let total = s.counts(&all("bot"), GroupBy::Total).unwrap();
    assert_eq!(total.len(), 1);
    let t = total[0].1;
    assert_eq!(t.messages, 10);
    assert_eq!((t.triggers, t.triggers_replied), (10, 7));
    assert_eq!((t.auto_replies, t.auto_replies_clicked), (7, 1));
    assert_eq!((t.handoffs, t.blocks, t.human_replies), (3, 0, 1));
    assert_eq!((t.resolved, t.unresolved, t.clicks), (1, 1, 1));
    assert_eq!((t.thumbs_up, t.thumbs_down), (1, 0));

    let by_chat: Vec<(String, u64, u64)> = s
        .counts(&all("bot"), GroupBy::Chat)
        .unwrap()
        .into_iter()
        .map(|(k, c)| (k, c.messages, c.human_replies))
        .collect();
    assert_eq!(
        by_chat,
        vec![("g1".to_string(), 5, 0), ("g2".to_string(), 5, 1)]
    );
    let by_intent: Vec<(String, u64)> = s
        .counts(&all("bot"), GroupBy::Intent)
        .unwrap()
        .into_iter()
        .map(|(k, c)| (k, c.messages))
        .collect();
    assert_eq!(
        by_intent,
        vec![("price".to_string(), 9), ("refund".to_string(), 1)]
    );
    let by_variant: Vec<(String, u64)> = s
        .counts(&all("bot"), GroupBy::Variant)
        .unwrap()
        .into_iter()
        .map(|(k, c)| (k, c.messages))
        .collect();
    assert_eq!(
        by_variant,
        vec![("price/a".to_string(), 9), ("price/b".to_string(), 1)]
    );
    // A window and a chat filter.
    let some = StatsFilter {
        bot_id: "bot".into(),
        chat_id: "g1".into(),
        from_ms: 1_002,
        to_ms: 1_006,
    };
    assert_eq!(s.counts(&some, GroupBy::Total).unwrap()[0].1.messages, 3);
    // Nothing matches: one all-zero total.
    let none = s.counts(&all("nobody"), GroupBy::Total).unwrap();
    assert_eq!(none, vec![(String::new(), Counts::default())]);
    assert!(s.counts(&all("nobody"), GroupBy::Chat).unwrap().is_empty());

    let v: Vec<(String, u64, u64)> = s
        .variant_counts(&all("bot"), "exp1")
        .unwrap()
        .into_iter()
        .map(|v| (v.variant_id, v.exposures, v.conversions))
        .collect();
    assert_eq!(
        v,
        vec![("price/a".to_string(), 6, 1), ("price/b".to_string(), 1, 0)]
    );
    assert!(s.variant_counts(&all("bot"), "other").unwrap().is_empty());

    let rc = s.row_counts().unwrap();
    assert_eq!(
        (rc.conversations, rc.feedback, rc.human_replies, rc.audit),
        (10, 5, 1, 3),
        "3 handoffs imply 3 audit rows"
    );
    let rows = s.conversations(0, i64::MAX, 0, 100).unwrap();
    assert_eq!(rows.len(), 10);
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
    let m2 = rows
        .iter()
        .find(|r| r.record.message_id == s.stored_message_id("bot", "m2"))
        .unwrap();
    assert_eq!(m2.record.intent, "refund");
    assert_eq!(m2.record.text, "请问这个多少钱 secret-text");
    assert_eq!(m2.record.reply_text, "secret-reply 九十九元");
    assert_eq!(m2.key_id, "k1");
    assert_eq!(m2.record.timings.inference_us, 200);
    assert!(m2.record.user_id.starts_with("u~"), "{}", m2.record.user_id);
    // Paging by id.
    let page = s.conversations(0, i64::MAX, rows[4].id, 3).unwrap();
    assert_eq!(page[0].id, rows[5].id);
    assert_eq!(page.len(), 3);
    assert!(s.has_message("bot", "m3").unwrap());
    assert!(!s.has_message("bot", "m99").unwrap());
    // Marked unhelpful (the labelling inbox): m1 once though it has two kinds of feedback,
    // named as its conversation row names it; a window that ends before the feedback: none.
    assert_eq!(
        s.unhelpful(0, i64::MAX, 10).unwrap(),
        [("bot".to_string(), s.stored_message_id("bot", "m1"))]
    );
    assert!(s.unhelpful(0, 1_999, 10).unwrap().is_empty());
    let audit = s.audit_rows(0, i64::MAX).unwrap();
    assert_eq!(audit.len(), 3);
    assert!(audit.iter().all(|a| a.actor == "policy"
        && a.detail.contains("message=m~")
        && !a.detail.contains("wxid")));

    // What is written is what a reopened store reads.
    drop(s);
    let s = b.open(&k1()).unwrap();
    assert_eq!(s.counts(&all("bot"), GroupBy::Total).unwrap()[0].1, t);
}

fn a_first_answer_is_kept_for_retries(b: &dyn Backend) {
    let s = b.open(&k1()).unwrap();
    let mut c = conversation("g1", "m1", 1_000);
    c.answer = Some(AnswerRow {
        bot_id: "bot".into(),
        kind: AnswerKind::Message,
        key: "m1".into(),
        at_ms: 1_000,
        body: b"the first answer, secret".to_vec(),
    });
    s.write_batch(&[Record::Conversation(c)]).unwrap();
    let a = s.answer("bot", AnswerKind::Message, "m1").unwrap().unwrap();
    assert_eq!(a.body, b"the first answer, secret");
    assert_eq!((a.key.as_str(), a.at_ms), ("m1", 1_000));
    assert!(s.answer("bot", AnswerKind::Event, "m1").unwrap().is_none());
    assert!(s
        .answer("other", AnswerKind::Message, "m1")
        .unwrap()
        .is_none());
    // Answered anew (after its window): the row is replaced.
    let mut c = conversation("g1", "m1", 5_000);
    c.answer = Some(AnswerRow {
        bot_id: "bot".into(),
        kind: AnswerKind::Message,
        key: "m1".into(),
        at_ms: 5_000,
        body: b"second".to_vec(),
    });
    s.write_batch(&[Record::Conversation(c)]).unwrap();
    assert_eq!(
        s.answer("bot", AnswerKind::Message, "m1")
            .unwrap()
            .unwrap()
            .body,
        b"second"
    );
    let (keys, complete) = s.answer_keys(0, 10).unwrap();
    assert!(complete);
    assert_eq!(
        keys,
        vec![(
            "bot".to_string(),
            AnswerKind::Message,
            s.stored_message_id("bot", "m1"),
            5_000
        )]
    );
    assert_eq!(s.row_counts().unwrap().conversations, 1);
}

fn a_purge_keeps_the_audit_floor_and_audits_itself(b: &dyn Backend) {
    let s = b.open(&k1()).unwrap();
    let now = 400 * DAY_MS;
    let old = now - 100 * DAY_MS;
    let mut handoff = conversation("g1", "old", old);
    handoff.action = Action::Handoff;
    s.write_batch(&[
        Record::Conversation(handoff),
        Record::Conversation(conversation("g1", "new", now - DAY_MS)),
        feedback("old", FeedbackKind::Resolved, old),
        Record::HumanReply(HumanReplyRecord {
            bot_id: "bot".into(),
            chat_id: "g1".into(),
            message_id: "old".into(),
            at_ms: old,
        }),
    ])
    .unwrap();
    // Asked to cut into the 180-day floor of the audit rows: refused, nothing deleted.
    let e = s
        .purge(&PurgeCutoffs {
            now_ms: now,
            data_before_ms: now - 90 * DAY_MS,
            audit_before_ms: now - 30 * DAY_MS,
            answers_before_ms: 0,
        })
        .unwrap_err();
    assert!(e.to_string().contains("180-day floor"), "{e}");
    assert_eq!(s.row_counts().unwrap().conversations, 2);
    let report = s
        .purge(&PurgeCutoffs {
            now_ms: now,
            data_before_ms: now - 90 * DAY_MS,
            audit_before_ms: now - 180 * DAY_MS,
            answers_before_ms: 0,
        })
        .unwrap();
    assert_eq!(
        (
            report.conversations,
            report.feedback,
            report.human_replies,
            report.audit
        ),
        (1, 1, 1, 0),
        "the handoff's audit row is younger than the floor"
    );
    let rc = s.row_counts().unwrap();
    assert_eq!((rc.conversations, rc.feedback, rc.human_replies), (1, 0, 0));
    let audit = s.audit_rows(0, i64::MAX).unwrap();
    assert_eq!(audit.len(), 2, "{audit:?}");
    let purge = audit.last().unwrap();
    assert_eq!((purge.actor.as_str(), purge.at_ms), ("retention", now));
    assert!(purge.detail.contains("conversations=1"), "{}", purge.detail);
    // Past the floor the audit rows go too (the handoff's and the first purge's).
    let later = now + 200 * DAY_MS;
    let report = s
        .purge(&PurgeCutoffs {
            now_ms: later,
            data_before_ms: later - 90 * DAY_MS,
            audit_before_ms: later - 180 * DAY_MS,
            answers_before_ms: 0,
        })
        .unwrap();
    assert_eq!(report.audit, 2);
}

fn state_rows_put_delete_cut_and_read_back_in_order(b: &dyn Backend) {
    let s = b.open(&k1()).unwrap();
    let put = |kind, key, json: &str| RowWrite::Put {
        kind,
        key,
        json: json.as_bytes().to_vec(),
    };
    s.write_batch(&[Record::State(vec![
        put("review", RowKey::Seq(9), r#""ninth""#),
        put("review", RowKey::Seq(10), r#""tenth""#),
        put("review", RowKey::Seq(11), r#""eleventh""#),
        put("review", RowKey::Seq(100), r#""hundredth""#),
        put(
            "group",
            RowKey::Name("5:bot-x8:group-42".into()),
            r#"{"who":"group-42 secret"}"#,
        ),
        put("cooldown", RowKey::Name("bot:g:u".into()), "1"),
    ])])
    .unwrap();
    s.write_batch(&[Record::State(vec![
        put(
            "group",
            RowKey::Name("5:bot-x8:group-42".into()),
            r#"{"who":"group-42 v2"}"#,
        ),
        RowWrite::DeleteBelow {
            kind: "review",
            seq: 10,
        },
        RowWrite::Delete {
            kind: "cooldown",
            key: RowKey::Name("bot:g:u".into()),
        },
    ])])
    .unwrap();
    let got: Vec<(String, String)> = s
        .state_rows()
        .unwrap()
        .into_iter()
        .map(|r| (r.kind, String::from_utf8(r.json).unwrap()))
        .collect();
    let want: Vec<(String, String)> = [
        ("group", r#"{"who":"group-42 v2"}"#),
        ("review", r#""tenth""#),
        ("review", r#""eleventh""#),
        ("review", r#""hundredth""#),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(got, want);
    // A range delete never touches named rows of the same kind, nor other kinds.
    s.write_batch(&[Record::State(vec![
        put("review", RowKey::Name("named".into()), "0"),
        RowWrite::DeleteBelow {
            kind: "review",
            seq: u64::MAX,
        },
    ])])
    .unwrap();
    let kinds: Vec<String> = s
        .state_rows()
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, vec!["group", "review"]);
    drop(s);
    assert_eq!(b.open(&k1()).unwrap().state_rows().unwrap().len(), 2);
}

/// A batch of many rows of every kind: a message written twice (its handoff audit row stays,
/// its row is the last one), an answer key written twice, feedback, human replies, audit rows,
/// and state writes to the same keys in order (put then delete, delete then put, a range
/// delete between puts).
fn a_mixed_batch() -> Vec<Record> {
    let put = |kind, key, json: String| RowWrite::Put {
        kind,
        key,
        json: json.into_bytes(),
    };
    let answer = |key: &str, at_ms: i64, body: &str| AnswerRow {
        bot_id: "bot".into(),
        kind: AnswerKind::Message,
        key: key.into(),
        at_ms,
        body: body.as_bytes().to_vec(),
    };
    let mut recs = Vec::new();
    for i in 0..40i64 {
        let mut c = conversation(
            if i % 3 == 0 { "g1" } else { "g2" },
            &format!("m{i}"),
            1_000 + i,
        );
        c.user_id = format!("user-{}", i % 4);
        if i % 5 == 0 {
            c.action = Action::Handoff;
        }
        if i % 7 == 0 {
            c.answer = Some(answer(&format!("m{i}"), 1_000 + i, &format!("answer {i}")));
        }
        if i % 9 == 0 {
            c.message_id.clear();
        }
        recs.push(Record::Conversation(c));
        if i % 2 == 0 {
            recs.push(feedback(&format!("m{i}"), FeedbackKind::Clicked, 1_100 + i));
        }
        if i % 6 == 0 {
            recs.push(Record::HumanReply(HumanReplyRecord {
                bot_id: "bot".into(),
                chat_id: "g1".into(),
                message_id: format!("m{i}"),
                at_ms: 1_200 + i,
            }));
        }
        recs.push(Record::State(vec![
            put("review", RowKey::Seq(i as u64), format!(r#""review {i}""#)),
            put(
                "group",
                RowKey::Name(format!("group-{}", i % 8)),
                format!("{i}"),
            ),
        ]));
    }
    // The same message again (a retry with another outcome) and the same answer key again.
    let mut again = conversation("g3", "m4", 2_000);
    again.action = Action::Block;
    again.intent = "complaint".into();
    again.answer = Some(answer("m7", 2_000, "answer 7, second"));
    recs.push(Record::Conversation(again));
    recs.push(Record::Audit(AuditRecord {
        actor: "console:admin".into(),
        action: AuditAction::ConfigChange,
        detail: "reloaded".into(),
        at_ms: 2_001,
    }));
    recs.push(Record::State(vec![
        // Put then delete: deleted. Delete then put: present.
        put("cooldown", RowKey::Name("bot:g:u".into()), "1".into()),
        RowWrite::Delete {
            kind: "cooldown",
            key: RowKey::Name("bot:g:u".into()),
        },
        RowWrite::Delete {
            kind: "group",
            key: RowKey::Name("group-3".into()),
        },
        put("group", RowKey::Name("group-3".into()), "back".into()),
        RowWrite::Delete {
            kind: "group",
            key: RowKey::Name("group-5".into()),
        },
        // A range delete takes the positions put before it, not those put after it.
        RowWrite::DeleteBelow {
            kind: "review",
            seq: 30,
        },
        put(
            "review",
            RowKey::Seq(5),
            r#""review 5, after the cut""#.into(),
        ),
        put("review", RowKey::Seq(2), r#""review 2, cut again""#.into()),
        RowWrite::DeleteBelow {
            kind: "review",
            seq: 3,
        },
        put("review", RowKey::Seq(35), r#""review 35, again""#.into()),
    ]));
    recs
}

/// What a store holds, with the pseudonyms (which differ per database) replaced by the ids of
/// `a_mixed_batch` or by their order of first appearance.
fn readback(s: &dyn Store) -> Vec<String> {
    let mut names: Vec<(String, String)> = (0..40)
        .map(|i| {
            (
                s.stored_message_id("bot", &format!("m{i}")),
                format!("m{i}"),
            )
        })
        .collect();
    let rows = s.conversations(0, i64::MAX, 0, 1_000).unwrap();
    let mut out = Vec::new();
    for r in &rows {
        let user = &r.record.user_id;
        if !names.iter().any(|(p, _)| p == user) {
            let n = format!("u{}", names.len());
            names.push((user.clone(), n));
        }
    }
    let plain = |text: &str| {
        let mut t = text.to_string();
        for (p, n) in &names {
            if !p.is_empty() {
                t = t.replace(p.as_str(), n);
            }
        }
        t
    };
    for r in rows {
        out.push(plain(&format!("{:?} {:?}", r.key_id, r.record)));
    }
    for a in s.audit_rows(0, i64::MAX).unwrap() {
        out.push(plain(&format!("{a:?}")));
    }
    let (keys, complete) = s.answer_keys(0, 1_000).unwrap();
    assert!(complete);
    for (bot, kind, key, at_ms) in keys {
        out.push(plain(&format!("answer {bot} {kind:?} {key} {at_ms}")));
    }
    for i in 0..40 {
        if let Some(a) = s
            .answer("bot", AnswerKind::Message, &format!("m{i}"))
            .unwrap()
        {
            out.push(format!("m{i}: {}", String::from_utf8_lossy(&a.body)));
        }
    }
    out.push(format!("{:?}", s.row_counts().unwrap()));
    for by in [
        GroupBy::Total,
        GroupBy::Chat,
        GroupBy::Intent,
        GroupBy::Variant,
    ] {
        out.push(format!("{by:?} {:?}", s.counts(&all("bot"), by).unwrap()));
    }
    // Named rows sort by their pseudonym, which differs: compared as a set.
    let mut state: Vec<String> = s
        .state_rows()
        .unwrap()
        .into_iter()
        .map(|r| format!("{} {}", r.kind, String::from_utf8_lossy(&r.json)))
        .collect();
    state.sort();
    out.extend(state);
    out
}

/// One batch leaves what the same records written one at a time leave (in a second database
/// of the same backend), and that is the one-at-a-time meaning spelled out.
fn one_batch_stores_what_one_record_at_a_time_stores(b: &dyn Backend, other: &dyn Backend) {
    let recs = a_mixed_batch();
    let batched = b.open(&k1()).unwrap();
    batched.write_batch(&recs).unwrap();
    let single = other.open(&k1()).unwrap();
    for r in &recs {
        single.write_batch(std::slice::from_ref(r)).unwrap();
    }
    let got = readback(batched.as_ref());
    assert_eq!(got, readback(single.as_ref()));

    // The retried message has one row, its last one, after every other row.
    let rows = batched.conversations(0, i64::MAX, 0, 1_000).unwrap();
    assert_eq!(rows.len(), 40);
    let m4 = batched.stored_message_id("bot", "m4");
    let last = rows.last().unwrap();
    assert_eq!(
        (
            last.record.message_id.as_str(),
            last.record.chat_id.as_str()
        ),
        (m4.as_str(), "g3")
    );
    assert_eq!(rows.iter().filter(|r| r.record.message_id == m4).count(), 1);
    // 8 handoffs (i % 5 == 0), the block of the retry and the console's row, in order.
    let audit = batched.audit_rows(0, i64::MAX).unwrap();
    assert_eq!(audit.len(), 10, "{audit:?}");
    assert_eq!(audit.last().unwrap().detail, "reloaded");
    let body = |s: &dyn Store, key: &str| {
        s.answer("bot", AnswerKind::Message, key)
            .unwrap()
            .map(|a| String::from_utf8(a.body).unwrap())
    };
    assert_eq!(
        body(batched.as_ref(), "m7").as_deref(),
        Some("answer 7, second")
    );
    assert_eq!(body(batched.as_ref(), "m14").as_deref(), Some("answer 14"));
    let rc = batched.row_counts().unwrap();
    assert_eq!((rc.feedback, rc.human_replies), (20, 7));
    let state: Vec<(String, String)> = batched
        .state_rows()
        .unwrap()
        .into_iter()
        .map(|r| (r.kind, String::from_utf8(r.json).unwrap()))
        .collect();
    let of = |kind: &str| -> Vec<&str> {
        state
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, j)| j.as_str())
            .collect()
    };
    assert!(of("cooldown").is_empty(), "put then delete ends deleted");
    let mut groups = of("group");
    groups.sort();
    // group-3 came back, group-5 went; the others hold their last value (i = 32..39).
    assert_eq!(groups, vec!["32", "33", "34", "36", "38", "39", "back"]);
    let review = of("review");
    let mut want = vec![r#""review 5, after the cut""#.to_string()];
    want.extend((30..40).map(|i| {
        if i == 35 {
            r#""review 35, again""#.to_string()
        } else {
            format!(r#""review {i}""#)
        }
    }));
    assert_eq!(review, want, "queue rows in their order");
}

fn a_wrong_key_stops_the_start(b: &dyn Backend) {
    let s = b.open(&k1()).unwrap();
    s.write_batch(&[Record::Conversation(conversation("g1", "m1", 1))])
        .unwrap();
    drop(s);
    let e = b
        .open(&format!("k1:{}", key(2)))
        .err()
        .expect("a different key under the same id must not open")
        .to_string();
    assert!(
        e.contains("key 'k1' in the key ring is not the key that wrote this log"),
        "{e}"
    );
    let e = b
        .open(&format!("k2:{}", key(2)))
        .err()
        .expect("a ring without the key of stored rows must not open")
        .to_string();
    assert!(e.contains("key 'k1', which is not in the key ring"), "{e}");
    // A rotation (new current key, the old one kept) opens and reads the old rows.
    let s = b.open(&format!("k2:{},{}", key(2), k1())).unwrap();
    s.write_batch(&[Record::Conversation(conversation("g1", "m2", 2))])
        .unwrap();
    let keys: Vec<String> = s
        .conversations(0, 10, 0, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.key_id)
        .collect();
    assert_eq!(keys, vec!["k1", "k2"]);
    // The pseudonyms survive the rotation (the secret was re-sealed with k2).
    assert!(s.has_message("bot", "m1").unwrap());
}

fn the_database_holds_no_clear_text(b: &dyn Backend) {
    let s = b.open(&k1()).unwrap();
    let mut c = conversation("g1", "msg-secret-id", 1_000);
    c.answer = Some(AnswerRow {
        bot_id: "bot".into(),
        kind: AnswerKind::Message,
        key: "msg-secret-id".into(),
        at_ms: 1_000,
        body: b"secret-answer-body".to_vec(),
    });
    c.action = Action::Handoff;
    s.write_batch(&[
        Record::Conversation(c),
        feedback("msg-secret-id", FeedbackKind::Clicked, 1_001),
        Record::State(vec![RowWrite::Put {
            kind: "group",
            key: RowKey::Name("bot:wxid_secret_user".into()),
            json: br#"{"v":"secret-state-value"}"#.to_vec(),
        }]),
    ])
    .unwrap();
    drop(s);
    let raw = b.raw();
    assert!(!raw.is_empty());
    let has = |needle: &str| {
        let hexed = hex_of(needle.as_bytes());
        [needle.as_bytes().to_vec(), hexed.into_bytes()]
            .iter()
            .any(|n| raw.windows(n.len()).any(|w| w == n.as_slice()))
    };
    for secret in [
        "secret-text",
        "多少钱",
        "secret-reply",
        "secret-answer-body",
        "secret-state-value",
        "wxid_secret_user",
        "msg-secret-id",
    ] {
        assert!(!has(secret), "'{secret}' is in the database in clear");
    }
    // The control: a value stored in clear by design (chat ids, intents) is found.
    assert!(has("price/a"));
}

/// The chart's series, from one grouped query per table, equals one stats call per bucket,
/// buckets of uneven length (a 23-hour day) and empty ones included.
fn a_series_equals_one_stats_call_per_bucket(b: &dyn Backend) {
    const H: i64 = 3_600_000;
    let base = 493_000 * H + 30 * 60_000; // a local midnight at +05:30, on no whole UTC hour
                                          // Buckets: a day, a 23-hour day, a day with no rows, a day, an hour of proactive sends only.
    let edges = vec![
        base,
        base + 24 * H,
        base + 47 * H,
        base + 71 * H,
        base + 95 * H,
        base + 96 * H,
    ];
    let s = b.open(&k1()).unwrap();
    let mut recs = Vec::new();
    let mut add = |chat: &str, msg: &str, at: i64, change: &dyn Fn(&mut ConversationRecord)| {
        let mut c = conversation(chat, msg, at);
        change(&mut c);
        recs.push(Record::Conversation(c));
    };
    // Bucket 0: a clicked, resolved, liked reply; a handoff; another bot's message.
    add("g1", "m0", base, &|_| {});
    add("g1", "m1", base + 5 * H, &|c| {
        c.action = Action::Handoff;
        c.reply_text.clear();
    });
    add("g1", "x0", base + H, &|c| c.bot_id = "other".into());
    // Bucket 1 (23 hours): a block, an unliked unresolved reply, one at its last millisecond.
    add("g1", "m2", base + 24 * H, &|c| {
        c.action = Action::Block;
        c.triggered = false;
        c.reply_text.clear();
    });
    add("g2", "m3", base + 30 * H, &|_| {});
    add("g2", "m4", base + 47 * H - 1, &|c| c.triggered = false);
    // Bucket 3: a reply in g2.
    add("g2", "m5", base + 80 * H, &|_| {});
    // Bucket 4: a proactive send only (an exposure, no message), clicked.
    add("g1", "p0", base + 95 * H + 10, &|c| {
        c.source = Source::Proactive;
        c.triggered = false;
    });
    // Outside the window: just before and at its end edge.
    add("g1", "early", base - 1, &|_| {});
    add("g1", "late", base + 96 * H, &|_| {});
    for (msg, kind) in [
        ("m0", FeedbackKind::Clicked),
        ("m0", FeedbackKind::Resolved),
        ("m0", FeedbackKind::ThumbsUp),
        ("m3", FeedbackKind::Unresolved),
        ("m3", FeedbackKind::ThumbsDown),
        ("p0", FeedbackKind::Clicked),
        ("early", FeedbackKind::Clicked),
    ] {
        // Feedback counts in its message's bucket, whenever it came.
        recs.push(feedback(msg, kind, base + 200 * H));
    }
    for (chat, msg, at) in [
        ("g1", "m1", base + 26 * H), // the handoff answered the next day: counts then
        ("g2", "", base + 90 * H),
        ("g2", "", base - 5), // outside
    ] {
        recs.push(Record::HumanReply(HumanReplyRecord {
            bot_id: "bot".into(),
            chat_id: chat.into(),
            message_id: msg.into(),
            at_ms: at,
        }));
    }
    s.write_batch(&recs).unwrap();

    for chat in ["", "g1", "g2"] {
        let q = SeriesQuery {
            bot_id: "bot".into(),
            chat_id: chat.into(),
            edges: edges.clone(),
        };
        let series = stats_series(s.as_ref(), &q, 0.3).unwrap();
        assert_eq!(series.len(), edges.len() - 1);
        for (i, got) in series.iter().enumerate() {
            let one = StatsQuery {
                bot_id: "bot".into(),
                chat_id: chat.into(),
                from_ms: edges[i],
                to_ms: edges[i + 1] - 1,
                experiment: String::new(),
            };
            let want = stats_report(s.as_ref(), &one, 0, &StoreConfig::default(), &|_| 0.3)
                .unwrap()
                .total;
            assert_eq!(got, &want, "chat '{chat}', bucket {i}");
        }
        assert_eq!(series[2], rates(&Counts::default(), 0.3), "the empty day");
    }
    // The numbers themselves, for the whole bot.
    let q = SeriesQuery {
        bot_id: "bot".into(),
        chat_id: String::new(),
        edges: edges.clone(),
    };
    let series = stats_series(s.as_ref(), &q, 0.3).unwrap();
    let c: Vec<_> = series.iter().map(|r| r.counts).collect();
    assert_eq!(
        c.iter().map(|c| c.messages).collect::<Vec<_>>(),
        vec![2, 3, 0, 1, 0]
    );
    assert_eq!(
        c.iter().map(|c| c.human_replies).collect::<Vec<_>>(),
        vec![0, 1, 0, 1, 0]
    );
    assert_eq!(
        (c[0].auto_replies, c[0].auto_replies_clicked, c[0].handoffs),
        (1, 1, 1)
    );
    assert_eq!(
        (c[1].blocks, c[1].triggers, c[1].triggers_replied),
        (1, 1, 1)
    );
    assert_eq!((c[1].unresolved, c[1].thumbs_down), (1, 1));
    assert_eq!((c[4].auto_replies, c[4].auto_replies_clicked), (1, 1));
    assert!((series[0].conversion_rate - 1.0).abs() < 1e-12);
    assert!((series[1].human_share - 1.0 / 3.0).abs() < 1e-12);
    assert!((series[4].conversion_rate - 1.0).abs() < 1e-12);
    // The buckets sum to the window's totals.
    let whole = StatsQuery {
        bot_id: "bot".into(),
        from_ms: edges[0],
        to_ms: edges[5] - 1,
        ..Default::default()
    };
    let whole = stats_report(s.as_ref(), &whole, 0, &StoreConfig::default(), &|_| 0.3)
        .unwrap()
        .total
        .counts;
    let mut sum = Counts::default();
    for x in &c {
        sum.add(x);
    }
    assert_eq!(sum, whole);

    // Bad buckets are named with the limit.
    let bad = SeriesQuery {
        edges: vec![base, base],
        ..q.clone()
    };
    let e = stats_series(s.as_ref(), &bad, 0.3).unwrap_err().to_string();
    assert!(
        e.contains("edge 1 (") && e.contains("is not after edge 0"),
        "{e}"
    );
    let bad = SeriesQuery {
        edges: (0..=2_001).map(|i| base + i * H).collect(),
        ..q
    };
    let e = stats_series(s.as_ref(), &bad, 0.3).unwrap_err().to_string();
    assert!(e.contains("2001 buckets is over the limit of 2000"), "{e}");
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $case() { super::$case(&super::Sqlite::new()) } )*
        }
        mod postgres {
            $( #[test] fn $case() { super::$case(&super::Postgres::new()) } )*
        }
    };
}

on_both_backends!(
    a_batch_reads_back_as_counts_rows_and_stats,
    a_series_equals_one_stats_call_per_bucket,
    a_first_answer_is_kept_for_retries,
    a_purge_keeps_the_audit_floor_and_audits_itself,
    state_rows_put_delete_cut_and_read_back_in_order,
    a_wrong_key_stops_the_start,
    the_database_holds_no_clear_text,
);

mod one_batch_and_one_record_at_a_time {
    #[test]
    fn sqlite() {
        super::one_batch_stores_what_one_record_at_a_time_stores(
            &super::Sqlite::new(),
            &super::Sqlite::new(),
        )
    }
    #[test]
    fn postgres() {
        let pg = super::Postgres::new();
        let other = pg.another_database("one_record_at_a_time");
        super::one_batch_stores_what_one_record_at_a_time_stores(&pg, &other)
    }
}

#[test]
fn store_url_of_another_scheme_is_a_config_error_naming_it() {
    let cfg: intentd::store::StoreConfig =
        serde_yaml_ng::from_str("url: mysql://app:pw@db/intentd\n").unwrap();
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("mysql://app:***@db/intentd"), "{e}");
    assert!(!e.contains("pw"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The real server on PostgreSQL.

fn pg_store_section(data: &std::path::Path, url: &str) -> String {
    format!(
        "store:\n  enabled: true\n  url: {url}\n  path: {d}/unused.db\n  key_env: INTENTD_LOG_KEY\n  key_file: {d}/intentd.key\n  create_key_file: true\n",
        d = data.display()
    )
}

async fn stop(s: &mut TestServer) {
    s.signal("TERM");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            assert_eq!(st.code(), Some(0), "no clean exit: {}", s.stderr());
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{}", s.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_records_on_postgres_and_keeps_it_across_a_restart() {
    let pg = TestPg::start();
    let data = tempfile::tempdir().unwrap();
    let opts = || ServerOptions {
        manual_clock: Some(T0),
        extra_config: pg_store_section(data.path(), &pg.url),
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    };
    let mut s = TestServer::start(opts()).await;
    let mut c = s.client().await;
    let r = c
        .classify(classify_req("m1", "优惠券怎么领？", "u1"))
        .await
        .unwrap()
        .into_inner();
    assert!(r.recorded, "{r:?}");
    let req = pb::StatsRequest {
        bot_id: BOT.into(),
        ..Default::default()
    };
    let before = c.get_stats(req.clone()).await.unwrap().into_inner();
    assert_eq!(before.total.as_ref().unwrap().messages, 1, "{before:?}");
    stop(&mut s).await;
    assert!(
        !data.path().join("unused.db").exists(),
        "with store.url set, no SQLite file is made"
    );

    let mut s = TestServer::start(opts()).await;
    let after = s.client().await.get_stats(req).await.unwrap().into_inner();
    assert_eq!(before, after, "stats changed across a restart");
    stop(&mut s).await;
}

#[test]
fn an_unreachable_postgres_stops_the_start_within_its_timeout_without_the_password() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = PgSettings {
        connect_timeout_s: 1,
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let e = PgStore::open(
        &format!("postgres://app:hunter2@127.0.0.1:{free}/intentd"),
        &settings,
        ring(&k1()),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(t.elapsed() < std::time::Duration::from_secs(10), "{e}");
    assert!(
        e.contains("cannot connect to postgres://app:***@127.0.0.1"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
}

/// The leader lease (store/pg_lease.rs): a second process waits as a standby while the first
/// holds it, takes it (with the next epoch) once the first lets go, and from then on the first
/// one's store refuses to commit (fencing), naming both epochs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_lease_has_one_holder_and_fences_the_one_it_replaced() {
    use intentd::store::pg_lease::{LeaderConfig, LeaderLease};
    let pg = TestPg::start();
    let settings = PgSettings {
        pool_size: 2,
        ..Default::default()
    };
    let config = LeaderConfig {
        failover_s: 3,
        ..Default::default()
    };
    let first = LeaderLease::acquire(
        &pg.url,
        &settings,
        &config,
        "first",
        || 1,
        || panic!("the first process never waits"),
    )
    .await
    .unwrap();
    let url = pg.url.clone();
    let (s2, c2) = (settings.clone(), config.clone());
    let (told_tx, told_rx) = std::sync::mpsc::channel();
    let second = tokio::spawn(async move {
        LeaderLease::acquire(
            &url,
            &s2,
            &c2,
            "second",
            || 2,
            move || {
                told_tx.send(()).unwrap();
            },
        )
        .await
        .unwrap()
    });
    tokio::task::block_in_place(|| told_rx.recv_timeout(std::time::Duration::from_secs(20)))
        .expect("the second one says it stands by");
    assert!(!second.is_finished(), "two holders at once");

    // The store's calls block: they run off the runtime.
    let (url, s1, epoch) = (pg.url.clone(), settings.clone(), first.epoch());
    let (stores, ready) = (
        std::sync::mpsc::channel::<()>(),
        std::sync::mpsc::channel::<()>(),
    );
    let (go_tx, go_rx) = stores;
    let (done_tx, done_rx) = ready;
    let old = std::thread::spawn(move || {
        let batch = |m: &str| vec![Record::Conversation(conversation("g1", m, 1_000))];
        let store = PgStore::open(&url, &s1, ring(&k1()), Some(epoch)).unwrap();
        store.write_batch(&batch("m1")).unwrap();
        done_tx.send(()).unwrap();
        // Once the lease has changed hands:
        go_rx.recv().unwrap();
        let e = store.write_batch(&batch("m2")).unwrap_err();
        (
            e,
            store.has_message("bot", "m1").unwrap(),
            store.has_message("bot", "m2").unwrap(),
        )
    });
    tokio::task::block_in_place(|| done_rx.recv()).unwrap();
    drop(first);
    let second = tokio::time::timeout(std::time::Duration::from_secs(20), second)
        .await
        .expect("the standby takes over once the lease is released")
        .unwrap();
    assert_eq!(second.epoch(), 2);
    go_tx.send(()).unwrap();
    let (e, m1, m2) = tokio::task::block_in_place(|| old.join()).unwrap();
    assert!(
        matches!(&e, StoreError::Fenced(m) if m.contains("epoch 1") && m.contains("second") && m.contains("epoch 2")),
        "{e}"
    );
    assert!(m1);
    assert!(!m2, "a fenced commit writes nothing");
    let (url, epoch) = (pg.url.clone(), second.epoch());
    let m3 = std::thread::spawn(move || {
        let new = PgStore::open(&url, &settings, ring(&k1()), Some(epoch)).unwrap();
        new.write_batch(&[Record::Conversation(conversation("g1", "m3", 1_000))])
            .unwrap();
        new.has_message("bot", "m3").unwrap()
    })
    .join()
    .unwrap();
    assert!(m3, "the new leader commits");
}

#[test]
fn leader_failover_s_out_of_range_is_refused_naming_the_limit() {
    use intentd::store::pg_lease::LeaderConfig;
    let e = LeaderConfig {
        failover_s: 1,
        ..Default::default()
    }
    .validate()
    .unwrap_err();
    assert!(
        e.contains("leader.failover_s = 1") && e.contains("between 3 and 600"),
        "{e}"
    );
}
