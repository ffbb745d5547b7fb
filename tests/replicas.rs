//! Issue 15, replicas: three `intentd serve` on one PostgreSQL, behind nginx balancing all three
//! (the shipped example config), act as one service. One leads (holds the leader lease and
//! serves); the other two are standbys that bind nothing, so nginx's round-robin lands every
//! call on the leader. Mid-run the leader is killed with SIGKILL; a standby takes over, and
//! later loses its lease's database session and exits, and the third takes over. Clients retry
//! through nginx with the same ids the whole time. Checked at the end: no acknowledged record is
//! lost, no proactive send is delivered twice, spacing holds in every group, welcomes queued
//! before the kills are sent once, and a schedule due after the kills fires once.
//!
//! Rules only (no model), manual clock (every replica starts at T0; the test moves the final
//! leader's clock through nginx). Needs PostgreSQL's server binaries and nginx: `.ci/run`
//! installs both; without nginx the test fails under CI=true and is skipped otherwise.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::nginx::{free_port, in_ci, nginx_bin, Nginx};
use common::pg::TestPg;
use common::server::{ServerOptions, Starting, TestServer, TokenInterceptor, ADMIN_TOKEN, BOT, T0};
use intentd::pb;
use intentd::store::{Keyring, PgSettings, PgStore, Store};
use pb::{Action, EventType, OutboundKind};
use tonic::transport::Channel;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
/// The shipped playbook's spacing between the bot's sends in a group.
const MIN_INTERVAL_MS: i64 = 15_000;
const CHATS: usize = 10;
const CLIENTS: usize = 3;
const PER_CLIENT: usize = 60;
const FAQ: [&str; 4] = ["这个多少钱", "有货吗", "什么时候发货", "怎么退款"];

type Authed = tonic::service::interceptor::InterceptedService<Channel, TokenInterceptor>;

fn chat(i: usize) -> String {
    // `announcements` is one of them: it has a schedule and no re-activation or welcome.
    if i.is_multiple_of(CHATS) {
        "announcements".into()
    } else {
        format!("g{}", i % CHATS)
    }
}

fn user(id: &str) -> pb::User {
    pb::User {
        id: id.into(),
        nickname: id.into(),
        ..Default::default()
    }
}

async fn channel(port: u16) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

fn client(ch: &Channel, token: &str) -> pb::intent_service_client::IntentServiceClient<Authed> {
    pb::intent_service_client::IntentServiceClient::new(
        tonic::service::interceptor::InterceptedService::new(
            ch.clone(),
            TokenInterceptor::bearer(token),
        ),
    )
}

/// Calls `f` until it succeeds (a failover makes calls fail for a moment): what a bot does with
/// the same ids, which the service answers idempotently.
async fn retried<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(Instant::now() < deadline, "{what}: still failing: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What the clients were told.
#[derive(Default)]
struct Acked {
    /// message id → (chat, answer)
    classify: BTreeMap<String, (String, pb::ClassifyResponse)>,
    /// joined user → (chat, decision)
    joins: BTreeMap<String, (String, pb::Decision)>,
}

/// One client: its share of messages, a join every few, each retried until answered.
async fn run_client(port: u16, k: usize, acked: Arc<Mutex<Acked>>, count: Arc<AtomicUsize>) {
    let ch = channel(port).await;
    let c = client(&ch, common::server::BOT_TOKEN);
    for n in 0..PER_CLIENT {
        let i = n * CLIENTS + k;
        let chat_id = chat(i);
        if i % 9 == 4 && chat_id != "announcements" {
            let ev = pb::Event {
                bot_id: BOT.into(),
                chat_id: chat_id.clone(),
                r#type: EventType::MemberJoined as i32,
                user: Some(user(&format!("j{i}"))),
                event_id: format!("e{i}"),
                chat_name: "replicas".into(),
                ..Default::default()
            };
            let d = retried("join", || {
                let mut c = c.clone();
                let ev = ev.clone();
                async move { c.handle_event(ev).await.map(|r| r.into_inner()) }
            })
            .await;
            acked
                .lock()
                .unwrap()
                .joins
                .insert(format!("j{i}"), (chat_id.clone(), d));
        }
        let req = pb::ClassifyRequest {
            bot_id: BOT.into(),
            chat_id: chat_id.clone(),
            chat_name: "replicas".into(),
            message_id: format!("m{i}"),
            text: FAQ[i % FAQ.len()].into(),
            user: Some(user(&format!("u{}", i % 7))),
            ..Default::default()
        };
        let r = retried("classify", || {
            let req = req.clone();
            let mut c = c.clone();
            async move { c.classify(req).await.map(|r| r.into_inner()) }
        })
        .await;
        acked
            .lock()
            .unwrap()
            .classify
            .insert(format!("m{i}"), (chat_id, r));
        count.fetch_add(1, Ordering::SeqCst);
    }
}

/// A bot's Subscribe stream through nginx, reopened whenever it breaks (a failover), collecting
/// every proactive send.
fn subscribe_forever(
    port: u16,
    got: Arc<Mutex<Vec<pb::Outbound>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let ch = channel(port).await;
        while !stop.load(Ordering::SeqCst) {
            let mut c = client(&ch, common::server::BOT_TOKEN);
            let req = pb::SubscribeRequest {
                bot_id: BOT.into(),
                chat_ids: Vec::new(),
            };
            if let Ok(stream) = c.subscribe(req).await {
                let mut stream = stream.into_inner();
                while let Ok(Some(m)) = stream.message().await {
                    got.lock().unwrap().push(m);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Waits (off the runtime's worker) until one of `standbys` announces it listens; returns it.
fn next_leader(standbys: &mut Vec<Starting>, within: Duration) -> TestServer {
    let deadline = Instant::now() + within;
    loop {
        for i in 0..standbys.len() {
            let hit = tokio::task::block_in_place(|| {
                standbys[i].wait_line(Duration::from_millis(50), |l| {
                    l.starts_with("intentd listening on ")
                })
            });
            if hit {
                return standbys.remove(i).wait_listening(Duration::from_secs(1));
            }
        }
        assert!(
            Instant::now() < deadline,
            "no standby took over within {within:?}: {}",
            standbys
                .iter()
                .map(|s| s.stderr())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
    }
}

/// Ends the lease session of whoever holds the lease, as a database failover or a network cut
/// would.
async fn cut_lease_session(url: &str) -> i32 {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = c
        .query_one(
            "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'intentd-leader'",
            &[],
        )
        .await
        .unwrap();
    let pid: i32 = row.get(0);
    c.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_postgres_act_as_one_through_leader_failures() {
    let Some(bin) = nginx_bin() else {
        assert!(
            !in_ci(),
            "CI=true but nginx is not installed (apt-get install nginx-light)"
        );
        eprintln!("SKIPPED replicas: nginx is not installed (apt-get install nginx-light)");
        return;
    };
    let pg = TestPg::start();
    let tmp = tempfile::tempdir().unwrap();
    let key = {
        use base64::Engine;
        format!(
            "k1:{}",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        )
    };
    let key_file = tmp.path().join("intentd.key");
    std::fs::write(&key_file, &key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let opts = |port: u16| ServerOptions {
        manual_clock: Some(T0),
        listen: Some(format!("127.0.0.1:{port}")),
        extra_config: format!(
            "store:\n  enabled: true\n  url: {}\n  key_file: {}\n  create_key_file: false\n\
             leader:\n  failover_s: 3\n",
            pg.url,
            key_file.display()
        ),
        ..Default::default()
    };
    // The first to start leads; the others wait without binding their ports.
    let first = TestServer::spawn(opts(ports[0])).wait_listening(Duration::from_secs(60));
    let mut standbys: Vec<Starting> = ports[1..]
        .iter()
        .map(|p| TestServer::spawn(opts(*p)))
        .collect();
    for (s, port) in standbys.iter_mut().zip(&ports[1..]) {
        assert!(
            s.wait_line(Duration::from_secs(30), |l| l
                .starts_with("standby: waiting for the leader lease")),
            "{}",
            s.stderr()
        );
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "a standby must not listen"
        );
    }

    // nginx balancing the three, with the shipped example's settings.
    let example =
        std::fs::read_to_string(common::repo_root().join("examples/nginx/intentd.conf")).unwrap();
    let (grpc_port, http_port) = (free_port(), free_port());
    let upstreams: String = ports
        .iter()
        .map(|p| format!("server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;\n    "))
        .collect();
    let site = example
        .replace(
            "server 127.0.0.1:50051 max_fails=1 fail_timeout=2s;",
            upstreams.trim_end(),
        )
        .replace("127.0.0.1:8080", &first.http_addr)
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{grpc_port}"))
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{http_port}"));
    assert!(site.contains(&format!("127.0.0.1:{}", ports[2])), "{site}");
    let mut nginx = Nginx::start(&bin, &site);
    nginx.wait_listening(grpc_port);

    let outbound = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let stream = subscribe_forever(grpc_port, outbound.clone(), stop.clone());
    let acked = Arc::new(Mutex::new(Acked::default()));
    let count = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| tokio::spawn(run_client(grpc_port, k, acked.clone(), count.clone())))
        .collect();

    // ---- SIGKILL the leader mid-run
    while count.load(Ordering::SeqCst) < CLIENTS * PER_CLIENT / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let killed = Instant::now();
    let second = next_leader(&mut standbys, Duration::from_secs(60));
    eprintln!("took over {:?} after the SIGKILL", killed.elapsed());

    // ---- the new leader's lease session is cut: it exits, the third takes over
    while count.load(Ordering::SeqCst) < 2 * CLIENTS * PER_CLIENT / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut second = second;
    cut_lease_session(&pg.url).await;
    let code = tokio::task::block_in_place(|| second.wait_exit(Duration::from_secs(30)));
    assert_eq!(
        code,
        Some(intentd::app::LEASE_LOST_EXIT),
        "a leader that loses its lease exits: {}",
        second.stderr()
    );
    let third = next_leader(&mut standbys, Duration::from_secs(60));
    for c in clients {
        c.await.unwrap();
    }

    // ---- after the failures: queued welcomes fall due, then Friday's schedule
    let ch = channel(grpc_port).await;
    let admin = pb::admin_service_client::AdminServiceClient::new(
        tonic::service::interceptor::InterceptedService::new(
            ch.clone(),
            TokenInterceptor::bearer(ADMIN_TOKEN),
        ),
    );
    let set_clock = |now_ms: i64| {
        let admin = admin.clone();
        async move {
            retried("set clock", || {
                let mut a = admin.clone();
                async move { a.set_clock(pb::SetClockRequest { now_ms }).await }
            })
            .await;
        }
    };
    let settle = || tokio::time::sleep(Duration::from_secs(3));
    set_clock(T0 + 5 * MIN).await;
    settle().await;
    let friday_9 = T0 + 47 * HOUR; // Friday 2026-11-27 09:00 in Asia/Shanghai
    set_clock(friday_9 - 1000).await;
    settle().await;
    let before_nine: usize = outbound
        .lock()
        .unwrap()
        .iter()
        .filter(|o| o.rule_id == "schedule:morning_tip")
        .count();
    assert_eq!(before_nine, 0, "Thursday's tip is past its grace");
    set_clock(friday_9).await;
    settle().await;
    stop.store(true, Ordering::SeqCst);
    stream.abort();

    let acked = acked.lock().unwrap();
    let outbound = outbound.lock().unwrap().clone();
    assert_eq!(acked.classify.len(), CLIENTS * PER_CLIENT);

    // 0 acknowledged records lost: every answered message is in the database. (The store's
    // calls block: off the runtime.)
    let ids: Vec<String> = acked.classify.keys().cloned().collect();
    let url = pg.url.clone();
    let lost = std::thread::spawn(move || {
        let store = PgStore::open(
            &url,
            &PgSettings {
                pool_size: 2,
                ..Default::default()
            },
            Arc::new(Keyring::parse(&key, "test").unwrap()),
            None,
        )
        .unwrap();
        ids.into_iter()
            .filter(|m| !store.has_message(BOT, m).unwrap())
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");

    // Spacing never violated: the bot's replies in each group are at least the interval apart.
    let mut slots: HashMap<&str, Vec<i64>> = HashMap::new();
    for (chat, r) in acked.classify.values() {
        if r.action == Action::Reply as i32 {
            slots
                .entry(chat.as_str())
                .or_default()
                .push(T0 + r.send_after_ms);
        }
    }
    assert!(slots.len() >= CHATS / 2, "{slots:?}");
    for (chat, s) in &mut slots {
        s.sort();
        for w in s.windows(2) {
            assert!(
                w[1] - w[0] >= MIN_INTERVAL_MS,
                "{chat}: replies {} ms apart: {s:?}",
                w[1] - w[0]
            );
        }
    }

    // 0 duplicate proactive sends: no send id twice, no group's timer twice, no user welcomed
    // twice; every welcome queued before or between the failures is sent.
    let mut ids = HashSet::new();
    for o in &outbound {
        assert!(ids.insert(o.id.clone()), "delivered twice: {o:?}");
    }
    let mut timers: BTreeMap<(String, i32, String), usize> = BTreeMap::new();
    let mut welcomed: BTreeMap<String, usize> = BTreeMap::new();
    for o in &outbound {
        if o.kind == OutboundKind::Welcome as i32 {
            for u in &o.user_ids {
                *welcomed.entry(u.clone()).or_default() += 1;
            }
        } else {
            *timers
                .entry((o.chat_id.clone(), o.kind, o.rule_id.clone()))
                .or_default() += 1;
        }
    }
    assert!(welcomed.values().all(|n| *n == 1), "{welcomed:?}");
    let queued: Vec<&String> = acked
        .joins
        .iter()
        .filter(|(_, (_, d))| d.reason == "welcome:queued")
        .map(|(u, _)| u)
        .collect();
    assert!(queued.len() >= 5, "{:?}", acked.joins);
    for u in &queued {
        assert_eq!(
            welcomed.get(*u),
            Some(&1),
            "{u} queued a welcome: {welcomed:?}"
        );
    }
    assert!(timers.values().all(|n| *n == 1), "{timers:?}");
    assert_eq!(
        timers.get(&(
            "announcements".to_string(),
            OutboundKind::Scheduled as i32,
            "schedule:morning_tip".to_string()
        )),
        Some(&1),
        "{timers:?}"
    );
    // Re-activation of the groups that went quiet (announcements has it off).
    let reactivated = timers
        .keys()
        .filter(|(_, k, _)| *k == OutboundKind::Reactivation as i32)
        .count();
    assert_eq!(reactivated, CHATS - 1, "{timers:?}");
    drop(third);
    drop(nginx);
}
