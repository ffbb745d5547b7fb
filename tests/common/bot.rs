//! A running `intentd serve` on a manual clock, driven like a bot front end: messages, events,
//! a Subscribe stream, and the helpers the playbook tests assert with.

use std::time::Duration;

use chrono::TimeZone;
use intentd::pb;
use pb::admin_service_client::AdminServiceClient;
use pb::intent_service_client::IntentServiceClient;
use pb::{Action, EventType, OutboundKind};

use super::server::{AuthedChannel, ServerOptions, TestServer, BOT, T0};

pub const SEC: i64 = 1_000;
pub const MIN: i64 = 60 * SEC;
pub const HOUR: i64 = 60 * MIN;
/// The group name every test message and event carries ({group_name}).
pub const GROUP: &str = "测试群";
/// How long a Subscribe stream must stay silent to count as "nothing was sent". The server
/// wakes its streams on SetClock, so a due item arrives well within this.
pub const QUIET: Duration = Duration::from_millis(700);

/// Unix ms of a wall-clock time in Asia/Shanghai (the bots' time zone).
pub fn sh(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
    chrono_tz::Asia::Shanghai
        .with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .unwrap()
        .timestamp_millis()
}

pub fn user(id: &str, nick: &str) -> pb::User {
    pb::User {
        id: id.into(),
        nickname: nick.into(),
        ..Default::default()
    }
}

pub fn tagged(id: &str, nick: &str, tags: &[&str]) -> pb::User {
    pb::User {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..user(id, nick)
    }
}

pub fn act(a: i32) -> Action {
    Action::try_from(a).unwrap_or(Action::Unspecified)
}

pub fn dec(r: &pb::ClassifyResponse) -> (Action, &str) {
    (act(r.action), r.reason.as_str())
}

pub fn evd(d: &pb::Decision) -> (Action, &str) {
    (act(d.action), d.reason.as_str())
}

pub fn text(r: &Option<pb::Reply>) -> &str {
    r.as_ref().map(|r| r.text.as_str()).unwrap_or("")
}

/// A running server on a manual clock plus clients and a message counter.
pub struct Bot {
    pub s: TestServer,
    pub c: IntentServiceClient<AuthedChannel>,
    pub admin: AdminServiceClient<AuthedChannel>,
    pub seq: u64,
    pub _operator: Option<tempfile::TempDir>,
}

impl Bot {
    pub async fn start() -> Bot {
        Self::start_with(None).await
    }

    pub async fn start_with(operator: Option<tempfile::TempDir>) -> Bot {
        let model = Some(super::default_model_dir());
        Self::start_opts(
            ServerOptions {
                model,
                ..Default::default()
            },
            operator,
        )
        .await
    }

    /// Without a model: the keyword layer decides (fast, for the many-users tests).
    pub async fn start_rules_only(extra_config: &str) -> Bot {
        Self::start_opts(
            ServerOptions {
                extra_config: extra_config.into(),
                ..Default::default()
            },
            None,
        )
        .await
    }

    pub async fn start_opts(opts: ServerOptions, operator: Option<tempfile::TempDir>) -> Bot {
        let s = TestServer::start(ServerOptions {
            manual_clock: opts.manual_clock.or(Some(T0)),
            operator_dir: operator.as_ref().map(|d| d.path().to_path_buf()),
            ..opts
        })
        .await;
        let c = s.client().await;
        let admin = s.admin().await;
        Bot {
            s,
            c,
            admin,
            seq: 0,
            _operator: operator,
        }
    }

    pub async fn at(&mut self, now_ms: i64) {
        let r = self
            .admin
            .set_clock(pb::SetClockRequest { now_ms })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.now_ms, now_ms);
    }

    pub fn req(&mut self, chat: &str, u: &pb::User, text: &str) -> pb::ClassifyRequest {
        self.seq += 1;
        pb::ClassifyRequest {
            bot_id: BOT.into(),
            chat_id: chat.into(),
            message_id: format!("m{}", self.seq),
            text: text.into(),
            sent_at_ms: 0,
            user: Some(u.clone()),
            chat_name: GROUP.into(),
        }
    }

    pub async fn say(&mut self, chat: &str, u: &pb::User, text: &str) -> pb::ClassifyResponse {
        let req = self.req(chat, u, text);
        self.c
            .classify(req)
            .await
            .unwrap_or_else(|e| panic!("{text}: {e:?}"))
            .into_inner()
    }

    pub async fn event(
        &mut self,
        chat: &str,
        ty: EventType,
        u: Option<&pb::User>,
        target: &str,
    ) -> pb::Decision {
        self.seq += 1;
        let ev = pb::Event {
            bot_id: BOT.into(),
            chat_id: chat.into(),
            r#type: ty as i32,
            user: u.cloned(),
            target_id: target.into(),
            at_ms: 0,
            chat_name: GROUP.into(),
            event_id: format!("e{}", self.seq),
            reply_to: String::new(),
        };
        self.c
            .handle_event(ev)
            .await
            .unwrap_or_else(|e| panic!("{ty:?}: {e:?}"))
            .into_inner()
    }

    /// Opens a Subscribe stream for `chats` (empty: every chat of the bot).
    pub async fn subscribe(&self, chats: &[&str]) -> Outbox {
        let mut c = self.s.client().await;
        let req = pb::SubscribeRequest {
            bot_id: BOT.into(),
            chat_ids: chats.iter().map(|c| c.to_string()).collect(),
        };
        let mut stream = c.subscribe(req).await.expect("subscribe").into_inner();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(Some(m)) = stream.message().await {
                if tx.send(m).is_err() {
                    return;
                }
            }
        });
        Outbox { rx, task }
    }

    pub async fn stats(&mut self, chat: &str) -> pb::StatsResponse {
        let req = pb::StatsRequest {
            bot_id: BOT.into(),
            chat_id: chat.into(),
            ..Default::default()
        };
        self.c.get_stats(req).await.unwrap().into_inner()
    }
}

/// What a Subscribe stream delivered.
pub struct Outbox {
    pub rx: tokio::sync::mpsc::UnboundedReceiver<pb::Outbound>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Outbox {
    pub async fn next(&mut self) -> pb::Outbound {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("no Outbound within 10 s")
            .expect("the Subscribe stream ended")
    }

    pub async fn quiet(&mut self, when: &str) {
        if let Ok(Some(o)) = tokio::time::timeout(QUIET, self.rx.recv()).await {
            panic!("unexpected Outbound {when}: {o:?}");
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn kind(o: &pb::Outbound) -> OutboundKind {
    OutboundKind::try_from(o.kind).unwrap_or(OutboundKind::Unspecified)
}

/// Waits (up to 10 s, for the once-a-second collector) until `n` proactive sends wait in the
/// outbox.
pub async fn wait_queued(b: &Bot, n: u64) {
    let queued = || async {
        let (_, body) = super::server::scrape_metrics(&b.s.metrics_addr).await;
        body.lines()
            .find_map(|l| l.strip_prefix("intentd_outbound_queued "))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while queued().await != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} sends queued, expected {n}",
            queued().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
