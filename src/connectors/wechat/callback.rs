//! The Official Account / WeCom app callback adapter: turns one callback request into a service
//! call and the outcome into the platform's answer. It decides nothing itself.
//!
//! Mapping (one-to-one chats: the user's OpenID / WeCom UserID is both `chat_id` and `user.id`):
//! - text message → `Classify` with the account's `bot_id`, `message_id` =
//!   `{account}:{Inbound::dedup_key()}` (MsgIds are unique per account only; two accounts may
//!   share a bot), so a platform retry is answered by the service's idempotency: same answer,
//!   no second decision;
//! - event `subscribe` → `HandleEvent(MEMBER_JOINED)`, `unsubscribe` → `MEMBER_LEFT`, `VIEW`
//!   (a menu link) → `LINK_CLICKED` with the URL as target, each with `event_id` =
//!   `{account}:{dedup_key}` (FromUserName + CreateTime);
//! - anything else (image, voice, location, other events) → `success`, counted as
//!   `unsupported`.
//!
//! The action decides the answer: REPLY / CLARIFY → a text reply (the decision's notices, then
//! the reply, joined by a blank line, **cut** to 2,048 bytes at a character boundary with "…";
//! one message, as the passive reply can only be one); HANDOFF → the handoff text when the
//! decision has one, else `success`; BLOCK / IGNORE → `success`. `send_after_ms` (group
//! spacing) does not apply to a one-to-one passive reply.
//!
//! The 5-second rule: the answer is awaited for `reply_budget_ms`; past it the platform gets
//! `success` and the answer goes later through the send API ([`super::send_api`]). Copies of a
//! message arriving together (a retry storm) share one service call; a copy arriving after the
//! answer was deferred also gets `success`, so the user never gets the answer twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::crypto::CallbackQuery;
use super::rate_limit::UserRateLimit;
use super::send_api::SendApi;
use super::settings::{AccountKind, ResolvedAccount, WechatConfig};
use super::text_limit::{cut, PASSIVE_TEXT_MAX_BYTES};
use super::xml::{self, Inbound, InboundKind, XmlLimits};
use super::{signature, MsgCrypt, WechatError};
use crate::metrics::Metrics;
use crate::policy::events::EventKind;
use crate::service::{ClassifyRequest, EventRequest, EventTypeIn, Service, ServiceError};
use crate::types::{Action, PolicyDecision, UserInfo};

/// The platform's documented "received, nothing to say" answer.
pub const SUCCESS: &str = "success";
/// Appended to a reply cut to the passive-reply limit.
pub const ELLIPSIS: &str = "…";
/// How long (service clock) a message's answer is remembered for its copies; the platform
/// retries within about 15 s.
const RECENT_MS: i64 = 10 * 60_000;
const RECENT_MAX: usize = 100_000;

/// A refused callback: the HTTP status and a plain message naming the problem and the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackError {
    pub status: u16,
    pub message: String,
}

impl CallbackError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        CallbackError {
            status,
            message: message.into(),
        }
    }

    pub fn unknown_account(id: &str) -> Self {
        Self::new(
            404,
            format!("no WeChat account {id:?} is configured (wechat.accounts)"),
        )
    }

    /// The body was larger than `limit` (the HTTP layer stops reading at the limit).
    pub fn oversized(limit: usize) -> Self {
        Self::from(WechatError::OversizedBody {
            size: limit + 1,
            limit,
        })
        .with_message(format!(
            "refused: oversized body: more than {limit} bytes, the limit is {limit} bytes (wechat.max_body_bytes)"
        ))
    }

    fn with_message(mut self, m: String) -> Self {
        self.message = m;
        self
    }
}

impl From<WechatError> for CallbackError {
    fn from(e: WechatError) -> Self {
        let status = match &e {
            WechatError::BadSignature { .. }
            | WechatError::StaleTimestamp { .. }
            | WechatError::WrongReceiver { .. } => 403,
            WechatError::OversizedBody { .. } => 413,
            WechatError::BadAesKey(_) => 500,
            _ => 400,
        };
        let hint = match &e {
            WechatError::StaleTimestamp { .. } => " (wechat.timestamp_window_s)",
            WechatError::OversizedBody { .. } => " (wechat.max_body_bytes)",
            _ => "",
        };
        CallbackError::new(status, format!("refused: {e}{hint}"))
    }
}

impl From<ServiceError> for CallbackError {
    fn from(e: ServiceError) -> Self {
        // 503: the platform retries, so the message is not lost.
        let status = match &e {
            ServiceError::Invalid(_) => 400,
            _ => 503,
        };
        CallbackError::new(status, format!("not answered: {e}"))
    }
}

/// The HTTP answer body and its content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub body: String,
    pub xml: bool,
}

impl Answer {
    fn success() -> Self {
        Answer {
            body: SUCCESS.into(),
            xml: false,
        }
    }
}

/// The query of a callback request (any may be absent).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Query {
    #[serde(default)]
    pub signature: String,
    #[serde(default)]
    pub msg_signature: String,
    #[serde(default)]
    pub timestamp: String,
    #[serde(default)]
    pub nonce: String,
    #[serde(default)]
    pub echostr: String,
    #[serde(default)]
    pub encrypt_type: String,
}

struct Account {
    cfg: ResolvedAccount,
    crypt: Option<MsgCrypt>,
    send: SendApi,
}

const PENDING: u8 = 0;
const DONE: u8 = 1;
const DEFERRED: u8 = 2;

/// What a message's one service call gave: the reply text (None = `success`) and the outcome
/// label counted for it.
type Decided = Result<(Option<String>, &'static str), CallbackError>;

/// One message in flight or recently answered; its copies wait on the same call.
struct Entry {
    at_ms: i64,
    decided: Shared<BoxFuture<'static, Decided>>,
    state: Arc<AtomicU8>,
}

/// The adapter shared by the HTTP handlers.
pub struct Callbacks {
    service: Arc<Service>,
    metrics: Arc<Metrics>,
    accounts: HashMap<String, Arc<Account>>,
    budget: Duration,
    window_s: u64,
    limits: XmlLimits,
    rate: Arc<UserRateLimit>,
    rate_reply: String,
    rng: Mutex<ChaCha8Rng>,
    recent: Mutex<HashMap<String, Arc<Entry>>>,
}

impl Callbacks {
    /// `seed` makes the random parts (nonces, the 16 random bytes of each encryption)
    /// reproducible.
    pub fn new(
        cfg: &WechatConfig,
        accounts: Vec<ResolvedAccount>,
        service: Arc<Service>,
        metrics: Arc<Metrics>,
        seed: u64,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| format!("HTTP client for the WeChat send API: {e}"))?;
        let mut map = HashMap::new();
        for a in accounts {
            let crypt = match &a.encoding_aes_key {
                Some(k) => Some(
                    MsgCrypt::new(&a.token, k, &a.receiver_id)
                        .map_err(|e| format!("wechat account {}: {e}", a.id))?,
                ),
                None => None,
            };
            let base = match a.kind {
                AccountKind::OfficialAccount => &cfg.api_base,
                AccountKind::Wecom => &cfg.wecom_api_base,
            };
            let send = SendApi::new(a.clone(), base, http.clone(), service.clock.clone());
            map.insert(
                a.id.clone(),
                Arc::new(Account {
                    cfg: a,
                    crypt,
                    send,
                }),
            );
        }
        Ok(Callbacks {
            rate: Arc::new(UserRateLimit::new(&cfg.rate_limit, service.clock.clone())),
            rate_reply: cfg.rate_limit.reply.trim().to_string(),
            service,
            metrics,
            accounts: map,
            budget: Duration::from_millis(cfg.reply_budget_ms),
            window_s: cfg.timestamp_window_s,
            limits: XmlLimits {
                max_body_bytes: cfg.max_body_bytes,
                ..XmlLimits::default()
            },
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0x7765_6368_6174)),
            recent: Mutex::new(HashMap::new()),
        })
    }

    pub fn account_ids(&self) -> Vec<String> {
        self.accounts.keys().cloned().collect()
    }

    pub fn max_body_bytes(&self) -> usize {
        self.limits.max_body_bytes
    }

    /// The refusal of a body over `max_body_bytes` (the HTTP layer stops reading at the limit),
    /// counted like every refusal.
    pub fn oversized(&self, account_id: &str) -> CallbackError {
        let e = CallbackError::oversized(self.limits.max_body_bytes);
        if self.accounts.contains_key(account_id) {
            return self.refused(account_id, e);
        }
        CallbackError::unknown_account(account_id)
    }

    fn account(&self, id: &str) -> Result<Arc<Account>, CallbackError> {
        self.accounts
            .get(id)
            .cloned()
            .ok_or_else(|| CallbackError::unknown_account(id))
    }

    fn count(&self, account: &str, outcome: &str) {
        self.metrics.count_wechat(account, outcome);
    }

    fn refused(&self, account: &str, e: impl Into<CallbackError>) -> CallbackError {
        let e = e.into();
        self.count(account, "refused");
        tracing::info!(account, status = e.status, error = %e.message, "wechat callback refused");
        e
    }

    /// URL verification (`GET`): the echo to answer with.
    pub fn verify_url(&self, account_id: &str, q: &Query) -> Result<String, CallbackError> {
        let account = self.account(account_id)?;
        let r = (|| {
            if q.timestamp.is_empty() {
                return Err(WechatError::Missing("timestamp"));
            }
            signature::check_timestamp(&q.timestamp, self.service.now_ms(), self.window_s)?;
            match (&account.crypt, account.cfg.kind) {
                // WeCom: msg_signature over the encrypted echostr, answered decrypted.
                (Some(c), AccountKind::Wecom) => c.verify_url(
                    &CallbackQuery {
                        msg_signature: &q.msg_signature,
                        timestamp: &q.timestamp,
                        nonce: &q.nonce,
                    },
                    &q.echostr,
                ),
                // Official Account (any mode): `signature`, echostr answered as sent.
                _ => {
                    for (v, name) in [
                        (&q.signature, "signature"),
                        (&q.nonce, "nonce"),
                        (&q.echostr, "echostr"),
                    ] {
                        if v.is_empty() {
                            return Err(WechatError::Missing(name));
                        }
                    }
                    signature::verify_plain(
                        &account.cfg.token,
                        &q.signature,
                        &q.timestamp,
                        &q.nonce,
                    )?;
                    Ok(q.echostr.clone())
                }
            }
        })();
        match r {
            Ok(echo) => {
                self.count(account_id, "url_verified");
                Ok(echo)
            }
            Err(e) => Err(self.refused(account_id, e)),
        }
    }

    /// Checks and opens a message callback (`POST`) without answering it.
    pub fn open(&self, account_id: &str, q: &Query, body: &str) -> Result<Inbound, CallbackError> {
        let account = self.account(account_id)?;
        self.open_for(&account, q, body)
            .map_err(|e| self.refused(account_id, e))
    }

    fn open_for(&self, account: &Account, q: &Query, body: &str) -> Result<Inbound, WechatError> {
        let now = self.service.now_ms();
        match (&account.crypt, account.cfg.encrypted) {
            (Some(c), true) => c.open(
                body,
                &CallbackQuery {
                    msg_signature: &q.msg_signature,
                    timestamp: &q.timestamp,
                    nonce: &q.nonce,
                },
                now,
                self.window_s,
                &self.limits,
            ),
            _ => {
                self.limits.check_size(body.len())?;
                for (v, name) in [
                    (&q.signature, "signature"),
                    (&q.timestamp, "timestamp"),
                    (&q.nonce, "nonce"),
                ] {
                    if v.is_empty() {
                        return Err(WechatError::Missing(name));
                    }
                }
                signature::check_timestamp(&q.timestamp, now, self.window_s)?;
                signature::verify_plain(&account.cfg.token, &q.signature, &q.timestamp, &q.nonce)?;
                xml::parse_inbound(body, &self.limits)
            }
        }
    }

    /// A message callback (`POST`): the answer within the budget.
    pub async fn handle(
        self: &Arc<Self>,
        account_id: &str,
        q: &Query,
        body: &str,
    ) -> Result<Answer, CallbackError> {
        let started = Instant::now();
        let account = self.account(account_id)?;
        let inbound = self
            .open_for(&account, q, body)
            .map_err(|e| self.refused(account_id, e))?;
        let text = self.answer(&account, inbound, started).await?;
        Ok(match text {
            None => Answer::success(),
            Some(reply_xml) => self.wrap(&account, reply_xml),
        })
    }

    /// The reply XML for `inbound` (None = `success`), waiting at most the budget.
    async fn answer(
        self: &Arc<Self>,
        account: &Arc<Account>,
        inbound: Inbound,
        started: Instant,
    ) -> Result<Option<String>, CallbackError> {
        let id = &account.cfg.id;
        if !matches!(
            (&inbound.kind, mapped_event(&inbound.kind)),
            (InboundKind::Text { .. }, _) | (InboundKind::Event { .. }, Some(_))
        ) {
            self.count(id, "unsupported");
            tracing::debug!(account = %id, msg_type = %inbound.msg_type, "unsupported callback answered success");
            return Ok(None);
        }
        let key = format!("{id}:{}", inbound.dedup_key());
        let entry = self.entry(account, &key, &inbound);
        let left = self.budget.saturating_sub(started.elapsed());
        let decided = match tokio::time::timeout(left, entry.decided.clone()).await {
            Ok(d) => d,
            Err(_) => {
                match entry.state.compare_exchange(
                    PENDING,
                    DEFERRED,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => {
                        self.count(id, "deferred");
                        return Ok(None);
                    }
                    // Finished between the timeout and now: answer it after all.
                    Err(_) => entry.decided.clone().await,
                }
            }
        };
        let (text, outcome) = match decided {
            Ok(d) => d,
            Err(e) => {
                // Forget the failed call so the platform's retry tries again.
                self.recent.lock().remove(&key);
                self.count(id, "error");
                return Err(e);
            }
        };
        if entry.state.load(Ordering::SeqCst) == DEFERRED {
            // An earlier copy answered `success`: the answer goes (went) by the send API.
            self.count(id, "deferred");
            return Ok(None);
        }
        self.count(id, outcome);
        Ok(text.map(|t| {
            let now_s = self.service.now_ms().div_euclid(1000);
            xml::text_reply(&inbound.from_user, &inbound.to_user, now_s, &t)
        }))
    }

    /// The entry of `key`, starting its one service call when it is new.
    fn entry(self: &Arc<Self>, account: &Arc<Account>, key: &str, inbound: &Inbound) -> Arc<Entry> {
        let now = self.service.now_ms();
        let mut recent = self.recent.lock();
        if let Some(e) = recent.get(key) {
            return e.clone();
        }
        if recent.len() >= RECENT_MAX {
            recent.retain(|_, e| now - e.at_ms < RECENT_MS);
            if recent.len() >= RECENT_MAX {
                recent.retain(|_, e| e.state.load(Ordering::SeqCst) == PENDING);
            }
        }
        let state = Arc::new(AtomicU8::new(PENDING));
        let this = self.clone();
        let acc = account.clone();
        let inb = inbound.clone();
        let key_owned = key.to_string();
        let st = state.clone();
        // Spawned, so the call finishes (and is sent later) even when the request stops waiting.
        let task = tokio::spawn(async move {
            let decided = this.decide(&acc, &inb, &key_owned).await;
            if st
                .compare_exchange(PENDING, DONE, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                this.send_late(&acc, &inb.from_user, &decided).await;
            }
            decided
        });
        let decided: BoxFuture<'static, Decided> = async move {
            task.await.unwrap_or_else(|e| {
                Err(CallbackError::new(
                    500,
                    format!("the callback task failed: {e}"),
                ))
            })
        }
        .boxed();
        let entry = Arc::new(Entry {
            at_ms: now,
            decided: decided.shared(),
            state,
        });
        recent.insert(key.to_string(), entry.clone());
        entry
    }

    /// The one service call of a message (or the polite answer of the rate limit).
    async fn decide(&self, account: &Account, inbound: &Inbound, key: &str) -> Decided {
        let cfg = &account.cfg;
        let user = UserInfo {
            id: inbound.from_user.clone(),
            ..UserInfo::default()
        };
        match &inbound.kind {
            InboundKind::Text { content, .. } => {
                if !self.rate.allow(&cfg.id, &inbound.from_user) {
                    let reply = (!self.rate_reply.is_empty()).then(|| self.rate_reply.clone());
                    return Ok((reply, "rate_limited"));
                }
                let req = ClassifyRequest {
                    bot_id: cfg.bot_id.clone(),
                    chat_id: inbound.from_user.clone(),
                    chat_name: String::new(),
                    message_id: key.to_string(),
                    text: content.clone(),
                    sent_at_ms: inbound.create_time.saturating_mul(1000),
                    user: Some(user),
                };
                let out =
                    crate::metrics::with_transport("wechat", self.service.classify(&req)).await?;
                Ok(reply_text(&out.decision))
            }
            InboundKind::Event { event, event_key } => {
                let Some(kind) = mapped_event(&inbound.kind) else {
                    return Ok((None, "unsupported"));
                };
                let ev = EventRequest {
                    bot_id: cfg.bot_id.clone(),
                    chat_id: inbound.from_user.clone(),
                    chat_name: String::new(),
                    kind: EventTypeIn::Known(kind),
                    user: Some(user),
                    target_id: if kind == EventKind::LinkClicked {
                        event_key.clone().unwrap_or_default()
                    } else {
                        String::new()
                    },
                    at_ms: inbound.create_time.saturating_mul(1000),
                    event_id: key.to_string(),
                    // WeChat's VIEW event names the URL, not the message that carried it.
                    reply_to: String::new(),
                };
                tracing::debug!(account = %cfg.id, event, "wechat event");
                let out = crate::metrics::with_transport("wechat", self.service.handle_event(&ev))
                    .await?;
                Ok(reply_text(&out.event.decision))
            }
            InboundKind::Other { .. } => Ok((None, "unsupported")),
        }
    }

    /// Sends a deferred answer through the platform's send API (logged and counted).
    async fn send_late(&self, account: &Account, user: &str, decided: &Decided) {
        let id = &account.cfg.id;
        match decided {
            Ok((Some(text), _)) => match account.send.send_text(user, text).await {
                Ok(()) => self.count(id, "sent_late"),
                Err(e) => {
                    self.count(id, "send_failed");
                    tracing::warn!(account = %id, error = %e, "deferred WeChat answer not sent");
                }
            },
            Ok((None, _)) => {}
            Err(e) => {
                self.count(id, "error");
                tracing::warn!(account = %id, error = %e.message, "deferred WeChat message not decided");
            }
        }
    }

    /// The passive reply as sent: encrypted and signed for an encrypted account.
    fn wrap(&self, account: &Account, reply_xml: String) -> Answer {
        match (&account.crypt, account.cfg.encrypted) {
            (Some(c), true) => {
                let mut rng = self.rng.lock();
                let nonce = rng.random_range(100_000_000u64..10_000_000_000).to_string();
                let ts = self.service.now_ms().div_euclid(1000).to_string();
                Answer {
                    body: c.seal(&reply_xml, &ts, &nonce, &mut *rng),
                    xml: true,
                }
            }
            _ => Answer {
                body: reply_xml,
                xml: true,
            },
        }
    }
}

/// The service event a platform event maps to, if any.
fn mapped_event(kind: &InboundKind) -> Option<EventKind> {
    match kind {
        InboundKind::Event { event, .. } => match event.to_ascii_lowercase().as_str() {
            "subscribe" => Some(EventKind::MemberJoined),
            "unsubscribe" => Some(EventKind::MemberLeft),
            "view" => Some(EventKind::LinkClicked),
            _ => None,
        },
        _ => None,
    }
}

/// The text to answer a decision with (None = `success`) and its outcome label.
pub fn reply_text(d: &PolicyDecision) -> (Option<String>, &'static str) {
    let reply = d
        .reply
        .as_ref()
        .map(|r| r.text.trim())
        .filter(|t| !t.is_empty());
    let text = match d.action {
        Action::Reply | Action::Clarify | Action::Handoff => reply.map(|r| {
            let mut parts: Vec<&str> = d
                .notices
                .iter()
                .map(|n| n.trim())
                .filter(|n| !n.is_empty())
                .collect();
            parts.push(r);
            cut(&parts.join("\n\n"), PASSIVE_TEXT_MAX_BYTES, ELLIPSIS).into_owned()
        }),
        Action::Block | Action::Ignore => None,
    };
    let label = if text.is_some() { "reply" } else { "success" };
    (text, label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ReplyOut;

    fn decision(action: Action, reply: Option<&str>, notices: &[&str]) -> PolicyDecision {
        PolicyDecision {
            action,
            reply: reply.map(|t| ReplyOut {
                text: t.into(),
                ..ReplyOut::default()
            }),
            send_after_ms: 0,
            reason: String::new(),
            notices: notices.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_action_decides_the_answer() {
        assert_eq!(
            reply_text(&decision(Action::Reply, Some("r"), &["n"])),
            (Some("n\n\nr".into()), "reply")
        );
        assert_eq!(
            reply_text(&decision(Action::Clarify, Some("q?"), &[])).0,
            Some("q?".into())
        );
        assert_eq!(
            reply_text(&decision(Action::Handoff, Some("h"), &[])).0,
            Some("h".into())
        );
        assert_eq!(
            reply_text(&decision(Action::Handoff, None, &[])),
            (None, "success")
        );
        assert_eq!(reply_text(&decision(Action::Block, Some("x"), &[])).0, None);
        assert_eq!(
            reply_text(&decision(Action::Ignore, Some("x"), &[])).0,
            None
        );
        assert_eq!(
            reply_text(&decision(Action::Reply, Some("  "), &[])).0,
            None
        );
    }

    #[test]
    fn long_replies_are_cut_at_a_char_boundary_with_an_ellipsis() {
        let long = "退".repeat(1000); // 3,000 bytes
        let (t, _) = reply_text(&decision(Action::Reply, Some(&long), &[]));
        let t = t.unwrap();
        assert!(
            t.len() <= PASSIVE_TEXT_MAX_BYTES && t.ends_with(ELLIPSIS),
            "{}",
            t.len()
        );
        assert!(long.starts_with(t.trim_end_matches(ELLIPSIS)));
    }

    #[test]
    fn events_map_faithfully() {
        let ev = |e: &str| InboundKind::Event {
            event: e.into(),
            event_key: None,
        };
        assert_eq!(
            mapped_event(&ev("subscribe")),
            Some(EventKind::MemberJoined)
        );
        assert_eq!(
            mapped_event(&ev("unsubscribe")),
            Some(EventKind::MemberLeft)
        );
        assert_eq!(mapped_event(&ev("VIEW")), Some(EventKind::LinkClicked));
        assert_eq!(mapped_event(&ev("CLICK")), None);
        assert_eq!(mapped_event(&ev("enter_agent")), None);
    }

    #[test]
    fn errors_name_the_problem_and_the_limit() {
        let e = CallbackError::from(WechatError::StaleTimestamp {
            timestamp: 1,
            skew_s: -400,
            window_s: 300,
        });
        assert_eq!(e.status, 403);
        assert!(
            e.message.contains("±300 s") && e.message.contains("timestamp_window_s"),
            "{}",
            e.message
        );
        let e = CallbackError::oversized(1024);
        assert_eq!(e.status, 413);
        assert!(e.message.contains("1024 bytes"), "{}", e.message);
        assert_eq!(CallbackError::from(WechatError::DtdRefused).status, 400);
    }
}
