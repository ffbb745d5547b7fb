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

use common::nginx::{free_port, nginx_or_skip, Nginx};
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

/// One throw-away PostgreSQL, a log key, and three free ports for the replicas.
struct Cluster {
    pg: TestPg,
    key: String,
    key_file: std::path::PathBuf,
    ports: Vec<u16>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
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
        Cluster {
            pg,
            key,
            key_file,
            ports: (0..3).map(|_| free_port()).collect(),
            _tmp: tmp,
        }
    }

    /// A replica on `port` of this database, with `leader` (YAML) appended.
    fn options(&self, port: u16, leader: &str) -> ServerOptions {
        ServerOptions {
            manual_clock: Some(T0),
            listen: Some(format!("127.0.0.1:{port}")),
            extra_config: format!(
                "store:\n  enabled: true\n  url: {}\n  key_file: {}\n  create_key_file: false\n{leader}",
                self.pg.url,
                self.key_file.display()
            ),
            ..Default::default()
        }
    }

    /// What the clients were told and what the bot received add up to one service: no
    /// acknowledged record lost, spacing held in every group, no proactive send twice, every
    /// queued welcome sent, re-activation once per quiet group, Friday's schedule once.
    fn check_one_service(&self, acked: &Acked, outbound: &[pb::Outbound]) {
        assert_eq!(acked.classify.len(), CLIENTS * PER_CLIENT);

        // 0 acknowledged records lost: every answered message is in the database. (The store's
        // calls block: off the runtime.)
        let ids: Vec<String> = acked.classify.keys().cloned().collect();
        let (url, key) = (self.pg.url.clone(), self.key.clone());
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
        for o in outbound {
            assert!(ids.insert(o.id.clone()), "delivered twice: {o:?}");
        }
        let mut timers: BTreeMap<(String, i32, String), usize> = BTreeMap::new();
        let mut welcomed: BTreeMap<String, usize> = BTreeMap::new();
        for o in outbound {
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
    }
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

/// nginx running [`balanced_site`] on two free ports, once it listens: (nginx, its gRPC port,
/// its HTTP port).
fn balanced_nginx(bin: &std::path::Path, grpc: &[u16], http: &[String]) -> (Nginx, u16, u16) {
    let (grpc_port, http_port) = (free_port(), free_port());
    let mut nginx = Nginx::start(bin, &balanced_site(grpc, http, grpc_port, http_port));
    nginx.wait_listening(grpc_port);
    (nginx, grpc_port, http_port)
}

/// The shipped nginx example, balancing gRPC over `grpc` (ports) and HTTP over `http`
/// (addresses), listening on `grpc_port` and `http_port`.
fn balanced_site(grpc: &[u16], http: &[String], grpc_port: u16, http_port: u16) -> String {
    let example =
        std::fs::read_to_string(common::repo_root().join("examples/nginx/intentd.conf")).unwrap();
    let servers = |addrs: Vec<String>| -> String {
        addrs
            .iter()
            .map(|a| format!("server {a} max_fails=1 fail_timeout=1s;\n    "))
            .collect::<String>()
            .trim_end()
            .to_string()
    };
    let site = example
        .replace(
            "server 127.0.0.1:50051 max_fails=1 fail_timeout=2s;",
            &servers(grpc.iter().map(|p| format!("127.0.0.1:{p}")).collect()),
        )
        .replace(
            "server 127.0.0.1:8080 max_fails=1 fail_timeout=2s;",
            &servers(http.to_vec()),
        )
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{grpc_port}"))
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{http_port}"));
    for p in grpc {
        assert!(site.contains(&format!("127.0.0.1:{p} ")), "{site}");
    }
    for a in http {
        assert!(site.contains(&format!("{a} ")), "{site}");
    }
    site
}

async fn admin_client(port: u16) -> pb::admin_service_client::AdminServiceClient<Authed> {
    pb::admin_service_client::AdminServiceClient::new(
        tonic::service::interceptor::InterceptedService::new(
            channel(port).await,
            TokenInterceptor::bearer(ADMIN_TOKEN),
        ),
    )
}

/// Moves the clock of every replica (through `admins`): queued welcomes fall due at T0 + 5 min,
/// then Friday 09:00 comes (and Thursday's tip, past its grace, must not have been sent).
async fn through_friday(
    admins: &[pb::admin_service_client::AdminServiceClient<Authed>],
    outbound: &Mutex<Vec<pb::Outbound>>,
) {
    let set_clock = |now_ms: i64| async move {
        for admin in admins {
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
    let Some(bin) = nginx_or_skip("replicas") else {
        return;
    };
    let cluster = Cluster::start();
    let (pg, ports) = (&cluster.pg, &cluster.ports);
    let opts = |port: u16| cluster.options(port, "leader:\n  failover_s: 3\n");
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
    let (nginx, grpc_port, _) = balanced_nginx(&bin, ports, std::slice::from_ref(&first.http_addr));

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
    let admin = admin_client(grpc_port).await;
    through_friday(&[admin], &outbound).await;
    stop.store(true, Ordering::SeqCst);
    stream.abort();

    let acked = acked.lock().unwrap();
    let outbound = outbound.lock().unwrap().clone();
    cluster.check_one_service(&acked, &outbound);
    drop(third);
    drop(nginx);
}

/// GET `path` over a plain socket: the status code and the response head.
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect(addr);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (code, head)
}

/// Classify calls this replica decided (its metrics).
async fn classified_by(server: &TestServer) -> f64 {
    let (_, body) = common::server::scrape_metrics(&server.metrics_addr).await;
    body.lines()
        .filter(|l| l.starts_with("intentd_requests_total{") && l.contains(r#"rpc="Classify""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The leader lease's epoch and holder, as the database has them.
async fn leader_row(url: &str) -> (i64, String) {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = c
        .query_one("SELECT epoch, holder FROM intentd_leader WHERE id = 1", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// `leader.followers: serve`: three replicas on one PostgreSQL all serve at once behind nginx
/// (round-robin over all three). Spacing slots are reserved in the database, so replicas
/// answering the same groups at the same moment never share a slot; the lease holder alone
/// plans proactive sends into the shared outbox, which the bot's stream reads through whichever
/// replica it reached; the console answers on the holder and 503 elsewhere, so nginx finds it;
/// a retry answered by another replica is replayed. Mid-run the leader is killed with SIGKILL:
/// a follower takes the lease, and the same checks as with standbys hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_that_all_serve_act_as_one_through_a_leader_kill() {
    let Some(bin) = nginx_or_skip("replicas") else {
        return;
    };
    let cluster = Cluster::start();
    let ports = cluster.ports.clone();
    let leader = "leader:\n  failover_s: 3\n  followers: serve\n";
    // The first takes the lease; the others serve as followers.
    let mut first = TestServer::spawn(cluster.options(ports[0], leader));
    assert!(
        first.wait_line(Duration::from_secs(60), |l| l
            .starts_with("leading: epoch 1")),
        "{}",
        first.stderr()
    );
    let mut servers = vec![first.wait_listening(Duration::from_secs(60))];
    for port in &ports[1..] {
        let mut s = TestServer::spawn(cluster.options(*port, leader));
        assert!(
            s.wait_line(Duration::from_secs(60), |l| l
                .starts_with("follower: serving; waiting for the leader lease")),
            "{}",
            s.stderr()
        );
        servers.push(s.wait_listening(Duration::from_secs(60)));
    }

    // The console is the lease holder's: the others say so with 503 and Retry-After.
    assert_eq!(
        http_get(&servers[0].http_addr, "/console/login").await.0,
        200
    );
    for s in &servers[1..] {
        let (code, head) = http_get(&s.http_addr, "/console/login").await;
        assert_eq!(code, 503, "{head}");
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 1"),
            "{head}"
        );
    }

    // So are the labels: a follower answers the label RPCs UNAVAILABLE (retry elsewhere).
    let export = |port: u16| async move {
        admin_client(port)
            .await
            .export_labels(pb::ExportLabelsRequest::default())
            .await
    };
    export(ports[0]).await.unwrap();
    for port in &ports[1..] {
        let e = export(*port).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(e.message().contains("leader lease"), "{e:?}");
    }

    let http: Vec<String> = servers.iter().map(|s| s.http_addr.clone()).collect();
    let (nginx, grpc_port, http_port) = balanced_nginx(&bin, &ports, &http);
    let through_nginx = format!("127.0.0.1:{http_port}");
    for _ in 0..4 {
        let (code, head) = http_get(&through_nginx, "/console/login").await;
        assert_eq!(code, 200, "nginx passes a 503 on to the holder: {head}");
    }

    // A retry answered by another replica is the first answer, replayed.
    let req = pb::ClassifyRequest {
        bot_id: BOT.into(),
        chat_id: "g1".into(),
        chat_name: "replicas".into(),
        message_id: "retried-elsewhere".into(),
        text: FAQ[0].into(),
        user: Some(user("r1")),
        ..Default::default()
    };
    let first_answer = client(&channel(ports[1]).await, common::server::BOT_TOKEN)
        .classify(req.clone())
        .await
        .unwrap()
        .into_inner();
    let again = client(&channel(ports[2]).await, common::server::BOT_TOKEN)
        .classify(req)
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed, "{again:?}");
    assert_eq!(
        (again.action, again.send_after_ms, again.intent.clone()),
        (
            first_answer.action,
            first_answer.send_after_ms,
            first_answer.intent.clone()
        )
    );

    let outbound = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let stream = subscribe_forever(grpc_port, outbound.clone(), stop.clone());
    let acked = Arc::new(Mutex::new(Acked::default()));
    let count = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| tokio::spawn(run_client(grpc_port, k, acked.clone(), count.clone())))
        .collect();

    // ---- every replica serves; then SIGKILL the leader mid-run
    while count.load(Ordering::SeqCst) < CLIENTS * PER_CLIENT / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for s in &servers {
        let n = classified_by(s).await;
        assert!(n > 0.0, "replica {} decided no Classify call", s.addr);
    }
    let mut leader0 = servers.remove(0);
    leader0.child.kill().unwrap();
    leader0.child.wait().unwrap();
    let killed = Instant::now();
    let holder = loop {
        let (epoch, holder) = leader_row(&cluster.pg.url).await;
        if epoch >= 2 {
            break holder;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no follower took the lease: {}",
            servers
                .iter()
                .map(|s| s.stderr())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "{holder} took the lease {:?} after the SIGKILL",
        killed.elapsed()
    );
    assert!(
        servers
            .iter()
            .any(|s| holder.contains(&format!("({})", s.addr))),
        "{holder}"
    );
    for c in clients {
        c.await.unwrap();
    }

    // ---- after the kill: every replica's clock moves; the new holder plans the sends
    let mut admins = Vec::new();
    for s in &servers {
        admins.push(admin_client(s.addr.rsplit(':').next().unwrap().parse().unwrap()).await);
    }
    through_friday(&admins, &outbound).await;
    stop.store(true, Ordering::SeqCst);
    stream.abort();

    let acked = acked.lock().unwrap();
    let outbound = outbound.lock().unwrap().clone();
    // Nothing failed quietly on the survivors (a planning step that keeps failing would be
    // retried every tick and only logged).
    for s in &servers {
        let log = s.stderr();
        let failed: Vec<&str> = log
            .lines()
            .filter(|l| {
                (l.contains("ERROR") && !l.contains("model not loaded"))
                    || (l.contains("WARN") && (l.contains("proactive") || l.contains("outbox")))
            })
            .collect();
        assert!(failed.is_empty(), "{}: {failed:#?}", s.addr);
    }
    cluster.check_one_service(&acked, &outbound);
    drop(servers);
    drop(nginx);
}
