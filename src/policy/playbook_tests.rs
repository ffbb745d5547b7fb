//! Behaviour tests for the playbook facade: a fixture operator directory, a manual clock and a
//! fixed seed; every test asserts the exact decisions.

use super::*;
use crate::clock::SharedClock;
use crate::clock::{Clock, ManualClock};
use crate::data::FileError;
use crate::engine::catalog::Catalog;
use crate::policy::ab::Unit;
use crate::policy::config::OperatorConfig;
use crate::policy::events::EventKind;
use crate::policy::hours::to_ms;
use crate::policy::replies::tests::minimal_yaml;
use crate::policy::scheduler::OutboundKind;
use crate::types::{Action, UserInfo};
use crate::types::{IntentScore, Source};
use chrono::NaiveDate;
use futures_util::FutureExt;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

const BOT: &str = "bot1";

fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
    to_ms(
        chrono_tz::Asia::Shanghai,
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, s)
            .unwrap(),
    )
}

/// 2027-03-01 is a Monday.
fn mon(h: u32, mi: u32) -> i64 {
    ms(2027, 3, 1, h, mi, 0)
}

const EXTRA_REPLIES: &str = "named:
  vip_service:
    - { id: v1, style: professional, text: \"{nickname}您好，VIP专属客服为您服务\" }
  vip_agent:
    - { id: a1, style: professional, text: \"{nickname}，专属客服约{wait_minutes}分钟内联系您\" }
  local_sh:
    - { id: e1, style: professional, text: \"{nickname}，上海本地活动周六见\" }
  newbie:
    - { id: n1, style: professional, text: \"{nickname}，新手请先看入门视频\" }
  regulars:
    - { id: r1, style: professional, text: \"{nickname}，老朋友好\" }
  daily_tip:
    - { id: t1, style: professional, text: \"{greeting}，{group_name}今日小贴士{festival}\" }
  push_sh:
    - { id: p1, style: professional, text: \"{nickname}，上海活动还有名额\" }
  push_ab:
    - { id: p1, style: professional, text: \"{nickname}，活动还有名额\" }
    - { id: p2, style: professional, text: \"{nickname}，名额不多了\" }
  tip_ab:
    - { id: t1, style: professional, text: \"{group_name}今日小贴士\" }
    - { id: t2, style: professional, text: \"{group_name}的贴士来了\" }
links:
  coupon_center:
    - { id: l1, style: professional, text: \"{nickname}，领券后回商品页下单\" }
cards:
  product_card:
    - { id: c1, style: professional, text: \"{nickname}，点卡片即可下单\" }
variables:
  nickname: { fallback: 朋友, max_chars: 12 }
  group_name: { fallback: 本群 }
";

const BASE: &str = "defaults:
  style: professional
  spacing: { min_interval_s: 15, jitter_ms: 0, queue_limit: 3 }
  reactivation: { enabled: false }
  disclosure: { enabled: false, answered_by: [ask_bot] }
  block_intents: [spam_ads]
";

/// The in-memory store never waits and never fails, so each playbook call completes on its
/// first poll: these tests drive the real async calls without a runtime, and a call that
/// pended or failed would be a bug worth the panic.
fn ready<T>(f: impl Future<Output = Result<T, StateError>>) -> T {
    f.now_or_never()
        .expect("the in-memory state store never waits")
        .unwrap_or_else(|e| panic!("the in-memory state store failed: {e}"))
}

/// [`Playbook`]'s calls, run to completion (see [`ready`]).
struct Pb(Playbook);

impl Pb {
    fn load(dir: &Path, clock: SharedClock, seed: u64) -> Result<Pb, FileError> {
        Playbook::load(dir, clock, seed).map(Pb)
    }
    fn config(&self) -> Arc<OperatorConfig> {
        self.0.config()
    }
    fn precheck(&self, ctx: &MessageContext) -> Option<PolicyDecision> {
        ready(self.0.precheck(ctx))
    }
    fn decide_message(
        &self,
        ctx: &MessageContext,
        cls: &Classification,
        names: &(dyn Fn(&str) -> String + Sync),
    ) -> PolicyDecision {
        ready(self.0.decide_message(ctx, cls, names))
    }
    fn decide_message_with_catalog(
        &self,
        ctx: &MessageContext,
        cls: &Classification,
        names: &(dyn Fn(&str) -> String + Sync),
        always: &(dyn Fn(&str) -> bool + Sync),
    ) -> PolicyDecision {
        ready(self.0.decide_message_with_catalog(ctx, cls, names, always))
    }
    fn handle_event(&self, ev: &EventInput) -> EventDecision {
        ready(self.0.handle_event(ev))
    }
    fn due(&self, now_ms: i64) -> Vec<OutboundItem> {
        ready(self.0.due(now_ms))
    }
    fn next_due_ms(&self) -> Option<i64> {
        ready(self.0.next_due_ms())
    }
    fn record_human_reply(&self, bot_id: &str, chat_id: &str) {
        ready(self.0.record_human_reply(bot_id, chat_id, None));
    }
    fn human_share(&self, bot_id: &str, chat_id: &str) -> (f64, f64) {
        ready(self.0.human_share(bot_id, chat_id))
    }
    fn review_queue(&self) -> Vec<ReviewItem> {
        ready(self.0.review_queue())
    }
    fn drain_review_queue(&self) -> Vec<ReviewItem> {
        ready(self.0.drain_review_queue())
    }
    fn dropped_sends(&self) -> Vec<DroppedSend> {
        ready(self.0.dropped_sends())
    }
    fn drain_dropped_sends(&self) -> Vec<DroppedSend> {
        ready(self.0.drain_dropped_sends())
    }
}

struct Fx {
    pb: Pb,
    /// The config the playbook reads; a reload stores a new one here.
    live: Arc<ArcSwap<OperatorConfig>>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn write_dir(playbook: &str) -> tempfile::TempDir {
    write_dir_with(playbook, "")
}

/// [`write_dir`] with `patch_welcome` (YAML list items) added to the `welcome` variants.
fn write_dir_with(playbook: &str, patch_welcome: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("banned_words.txt"),
        "# test list\n微信\nwechat\n代开发票\n",
    )
    .unwrap();
    std::fs::write(
        p.join("calendar.yml"),
        "festivals:\n  - { name: 春节, date: 2027-02-06, days: 3, greeting: 新春快乐！ }\n",
    )
    .unwrap();
    let replies = minimal_yaml()
        .replace(
            "  coupon:\n",
            "  coupon:\n    - id: c\n      style: professional\n      text: \"{nickname}，第三种文案\"\n",
        )
        .replace("  welcome:\n", &format!("  welcome:\n{patch_welcome}"))
        + EXTRA_REPLIES;
    std::fs::write(p.join("replies.yml"), replies).unwrap();
    std::fs::write(p.join("playbook.yml"), playbook).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/operator/intents.yml");
    std::fs::copy(shipped, p.join("intents.yml")).unwrap();
    dir
}

/// The policy files in `dir`, validated against its intents.yml.
fn load_config(dir: &Path) -> Result<OperatorConfig, FileError> {
    OperatorConfig::load(dir, &Catalog::load(&dir.join("intents.yml"))?)
}

fn fx_at(playbook: &str, start: i64) -> Fx {
    fx_from(write_dir(playbook), start)
}

fn fx_from(dir: tempfile::TempDir, start: i64) -> Fx {
    let clock = Arc::new(ManualClock::new(start));
    let config = load_config(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let live = Arc::new(ArcSwap::from_pointee(config));
    let pb = Pb(Playbook::new(live.clone(), clock.clone(), 42));
    Fx {
        pb,
        live,
        clock,
        _dir: dir,
    }
}

fn fx(playbook: &str) -> Fx {
    fx_at(playbook, mon(10, 0))
}

fn user(id: &str, nick: &str) -> UserInfo {
    UserInfo {
        id: id.into(),
        nickname: nick.into(),
        ..Default::default()
    }
}

static MSG: AtomicU64 = AtomicU64::new(0);

fn msg(chat: &str, u: &UserInfo, text: &str) -> MessageContext {
    MessageContext {
        bot_id: BOT.into(),
        chat_id: chat.into(),
        chat_name: "粉丝群".into(),
        message_id: format!("m{}", MSG.fetch_add(1, Ordering::Relaxed)),
        text: text.into(),
        at_ms: 0,
        sent_at_ms: 0,
        user: u.clone(),
    }
}

fn cls(intent: &str) -> Classification {
    Classification {
        intent: intent.into(),
        confidence: 0.9,
        ranking: vec![IntentScore {
            intent: intent.into(),
            confidence: 0.9,
        }],
        source: Source::Model,
        matched_terms: vec![],
        needs_clarification: false,
        truncated: false,
        model_loaded: true,
        entities: Vec::new(),
        model_ranking: Vec::new(),
    }
}

fn unclear(cands: &[&str]) -> Classification {
    Classification {
        intent: String::new(),
        confidence: 0.3,
        ranking: cands
            .iter()
            .map(|c| IntentScore {
                intent: c.to_string(),
                confidence: 0.3,
            })
            .collect(),
        source: Source::Fallback,
        matched_terms: vec![],
        needs_clarification: true,
        truncated: false,
        model_loaded: true,
        entities: Vec::new(),
        model_ranking: Vec::new(),
    }
}

fn names(i: &str) -> String {
    match i {
        "price" => "询价",
        "stock" => "库存/有货",
        other => other,
    }
    .to_string()
}

impl Fx {
    /// Validates the policy files in `dir` and swaps them in; on error the running ones stay.
    fn reload(&self, dir: &Path) -> Result<(), FileError> {
        self.live.store(Arc::new(load_config(dir)?));
        Ok(())
    }

    fn ask(&self, chat: &str, u: &UserInfo, intent: &str) -> PolicyDecision {
        self.pb
            .decide_message(&msg(chat, u, "问题"), &cls(intent), &names)
    }
    fn ask_cls(&self, chat: &str, u: &UserInfo, c: &Classification) -> PolicyDecision {
        self.pb.decide_message(&msg(chat, u, "嗯？"), c, &names)
    }
    fn event(&self, chat: &str, kind: EventKind, u: &UserInfo, target: &str) -> EventDecision {
        self.event_in(chat, "粉丝群", kind, u, target)
    }
    fn event_in(
        &self,
        chat: &str,
        chat_name: &str,
        kind: EventKind,
        u: &UserInfo,
        target: &str,
    ) -> EventDecision {
        self.pb.handle_event(&EventInput {
            bot_id: BOT.into(),
            chat_id: chat.into(),
            chat_name: chat_name.into(),
            kind,
            user: u.clone(),
            target_id: target.into(),
            at_ms: 0,
            sent_at_ms: 0,
            event_id: format!("e{}", MSG.fetch_add(1, Ordering::Relaxed)),
        })
    }
    fn step(&self, secs: i64) {
        self.clock.advance_ms(secs * 1000);
    }
    fn now(&self) -> i64 {
        self.clock.now_ms()
    }
}

fn text(d: &PolicyDecision) -> &str {
    d.reply.as_ref().map(|r| r.text.as_str()).unwrap_or("")
}

// ---------------------------------------------------------------------------------------------

#[test]
fn shipped_operator_config_loads_and_answers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/operator");
    let clock = Arc::new(ManualClock::new(mon(10, 0)));
    let pb = Pb::load(&dir, clock, 7).unwrap_or_else(|e| panic!("{e}"));
    let cfg = pb.config();
    for intent in Catalog::load(&dir.join("intents.yml")).unwrap().ids() {
        assert!(cfg.replies.variants(intent).len() >= 2, "{intent}");
    }
    let s = cfg.settings("demo", "vip_lounge");
    assert_eq!(s.spacing.min_interval_ms, 10_000);
    assert_eq!(s.experiments[0].variants.len(), 3);
    let d = pb.decide_message(
        &msg("g1", &user("u1", "小王"), "多少钱"),
        &cls("price"),
        &names,
    );
    assert_eq!(d.action, Action::Reply);
    assert!(text(&d).contains("小王"), "{}", text(&d));
    assert_eq!(d.notices.len(), 1, "first contact carries the disclosure");
    let d = pb
        .precheck(&msg("g1", &user("u2", "x"), "加我 微-信 领红包"))
        .unwrap();
    assert_eq!(
        (d.action, d.reason.as_str()),
        (Action::Block, "banned_word")
    );
}

#[test]
fn faq_reply_spacing_with_jitter_bounds_and_reproducible_seed() {
    let pb = BASE.replace("jitter_ms: 0", "jitter_ms: 3000");
    // Jitter is a hash of (seed, bot, chat, message id, time): same inputs, same delays.
    let run = || {
        let f = fx(&pb);
        let ask = |id: &str, u: UserInfo, intent: &str| {
            let mut m = msg("g", &u, "问题");
            m.message_id = id.into();
            f.pb.decide_message(&m, &cls(intent), &names)
        };
        let a = ask("m-a", user("u1", "小王"), "price");
        let b = ask("m-b", user("u2", "小李"), "stock");
        let c = ask("m-c", user("u3", "小张"), "refund");
        (a, b, c)
    };
    let (a, b, c) = run();
    assert_eq!((a.action, a.reason.as_str()), (Action::Reply, "faq"));
    assert_eq!(text(&a), "小王，关于price请看说明");
    assert_eq!(a.reply.as_ref().unwrap().variant_id, "price/a");
    assert!((0..=3000).contains(&a.send_after_ms), "{}", a.send_after_ms);
    assert!(
        (a.send_after_ms + 15_000..=a.send_after_ms + 18_000).contains(&b.send_after_ms),
        "{} {}",
        a.send_after_ms,
        b.send_after_ms
    );
    assert!((b.send_after_ms + 15_000..=b.send_after_ms + 18_000).contains(&c.send_after_ms));
    // Same seed, same inputs: the same jitter.
    let (a2, b2, c2) = run();
    assert_eq!(
        (a.send_after_ms, b.send_after_ms, c.send_after_ms),
        (a2.send_after_ms, b2.send_after_ms, c2.send_after_ms)
    );
}

#[test]
fn spacing_merges_same_intent_and_drops_when_queue_full() {
    let f = fx(&BASE.replace("queue_limit: 3", "queue_limit: 2"));
    let d1 = f.ask("g", &user("u1", "a"), "price");
    assert_eq!((d1.action, d1.send_after_ms), (Action::Reply, 0));
    let d2 = f.ask("g", &user("u2", "b"), "price");
    assert_eq!((d2.action, d2.send_after_ms), (Action::Reply, 15_000));
    let d3 = f.ask("g", &user("u3", "c"), "price");
    assert_eq!(
        (d3.action, d3.reason.as_str(), d3.send_after_ms),
        (Action::Ignore, "merged:spacing", 15_000)
    );
    assert!(d3.reply.is_none());
    let d4 = f.ask("g", &user("u4", "d"), "stock");
    assert_eq!((d4.action, d4.send_after_ms), (Action::Reply, 30_000));
    let d5 = f.ask("g", &user("u5", "e"), "refund");
    assert_eq!(
        (d5.action, d5.reason.as_str()),
        (Action::Ignore, "dropped:spacing_queue_full")
    );
    let dropped = f.pb.dropped_sends();
    assert_eq!(dropped.len(), 1);
    assert_eq!(
        (dropped[0].user_id.as_str(), dropped[0].key.as_str()),
        ("u5", "refund")
    );
    // A handoff is never dropped: it takes the slot after the queue.
    let d6 = f.ask("g", &user("u6", "f"), "complaint");
    assert_eq!((d6.action, d6.send_after_ms), (Action::Handoff, 45_000));
    // Another group is independent.
    assert_eq!(f.ask("other", &user("u5", "e"), "refund").send_after_ms, 0);
    // Once the queue drained, the dropped user can ask again.
    f.step(31);
    let d7 = f.ask("g", &user("u5", "e"), "refund");
    assert_eq!(
        (d7.action, d7.send_after_ms),
        (Action::Reply, 60_000 - 31_000)
    );
    assert_eq!(f.pb.drain_dropped_sends().len(), 1);
    assert!(f.pb.dropped_sends().is_empty());
}

#[test]
fn cooldown_per_user_and_intent() {
    let f = fx(BASE);
    let u1 = user("u1", "a");
    assert_eq!(f.ask("g", &u1, "price").action, Action::Reply);
    f.step(60);
    let d = f.ask("g", &u1, "price");
    assert_eq!((d.action, d.reason.as_str()), (Action::Ignore, "cooldown"));
    assert_eq!(f.ask("g", &user("u2", "b"), "price").action, Action::Reply);
    assert_eq!(f.ask("g", &u1, "stock").action, Action::Reply);
    f.step(240);
    assert_eq!(f.ask("g", &u1, "price").reason, "faq");
    // Per-intent cooldown.
    let f =
        fx(&(BASE.to_string() + "  cooldown: { default_s: 300, per_intent_s: { price: 10 } }\n"));
    f.ask("g", &u1, "price");
    f.step(11);
    assert_eq!(f.ask("g", &u1, "price").action, Action::Reply);
}

#[test]
fn handoff_intents_announce_the_wait() {
    let f = fx(BASE);
    let d = f.ask("g", &user("u1", "a"), "complaint");
    assert_eq!(
        (d.action, d.reason.as_str(), text(&d)),
        (Action::Handoff, "handoff:intent", "已转人工，预计等待5分钟")
    );
    let d = f.ask("g2", &user("u2", "b"), "ask_human");
    assert_eq!(text(&d), "已转人工，预计等待10分钟");
    f.pb.record_human_reply(BOT, "g");
    let d = f.ask("g3", &user("u3", "c"), "complaint");
    assert_eq!(text(&d), "已转人工，预计等待10分钟");
    // Open handoffs expire after the TTL (60 min).
    f.step(3600);
    assert_eq!(
        text(&f.ask("g4", &user("u4", "d"), "complaint")),
        "已转人工，预计等待5分钟"
    );
    let f = fx(&(BASE.to_string() + "  handoff: { fixed_wait_minutes: 8, intents: [refund] }\n"));
    let d = f.ask("g", &user("u1", "a"), "refund");
    assert_eq!(
        (d.action, text(&d)),
        (Action::Handoff, "已转人工，预计等待8分钟")
    );
    assert_eq!(
        f.ask("g", &user("u1", "a"), "complaint").action,
        Action::Reply
    );
}

#[test]
fn intents_flagged_always_in_the_catalog_are_handed_off_too() {
    let f = fx(BASE);
    let invoice_always = |i: &str| i == "invoice";
    let d = f.pb.decide_message_with_catalog(
        &msg("g", &user("u1", "a"), "开发票"),
        &cls("invoice"),
        &names,
        &invoice_always,
    );
    assert_eq!(
        (d.action, d.reason.as_str(), text(&d)),
        (Action::Handoff, "handoff:intent", "已转人工，预计等待5分钟")
    );
    // Without the catalog flag the playbook's own list decides.
    let d = f.ask("g2", &user("u2", "b"), "invoice");
    assert_eq!((d.action, d.reason.as_str()), (Action::Reply, "faq"));
}

#[test]
fn pii_in_nicknames_is_not_repeated_in_replies() {
    let f = fx(BASE);
    let m = msg("g", &user("u1", "王姐13812345678"), "多少钱");
    let d = f.pb.decide_message(&m, &cls("price"), &names);
    assert_eq!(text(&d), "王姐[PHONE]，关于price请看说明");
    let d = f.event(
        "g",
        EventKind::LinkClicked,
        &user("u2", "李13912345678"),
        "coupon_center",
    );
    assert_eq!(text(&d.decision), "李[PHONE]，领券后回商品页下单");
}

#[test]
fn user_chosen_names_are_cleaned_and_empty_ones_fall_back() {
    // Issue #12.4 (these went into replies verbatim before policy/variables.rs): control and
    // bidi characters, line breaks and @-mentions in a nickname; an empty name left a hole.
    let f = fx(BASE);
    let m = msg("g", &user("u1", "\u{202E}小王\n@所有人\0\u{1b}"), "多少钱");
    let d = f.pb.decide_message(&m, &cls("price"), &names);
    assert_eq!(text(&d), "小王 所有人，关于price请看说明");
    // Other groups: spacing would merge a second price reply in the same one.
    let m = msg("g2", &user("u2", "\u{200B}\u{2066}"), "多少钱");
    let d = f.pb.decide_message(&m, &cls("price"), &names);
    assert_eq!(text(&d), "朋友，关于price请看说明");
    let d = f.pb.decide_message(
        &msg("g3", &user("u3", &"长".repeat(5000)), "多少钱"),
        &cls("price"),
        &names,
    );
    assert_eq!(
        text(&d),
        format!("{}\u{2026}，关于price请看说明", "长".repeat(11))
    );
    // Group names too: a chat without a name gets the fallback.
    let f = fx(&(BASE.to_string() + "  welcome: { merge_window_s: 0 }\n"));
    let u = user("u4", "\u{202E}@小王");
    let ev = f.event_in("g4", "", EventKind::MemberJoined, &u, "");
    assert_eq!(text(&ev.decision), "欢迎小王加入本群！");
    let ev = f.event_in("g5", "\u{202E}@所有人\n群", EventKind::MemberJoined, &u, "");
    assert_eq!(text(&ev.decision), "欢迎小王加入所有人 群！");
}

#[test]
fn merged_welcomes_clean_each_name() {
    let pb = BASE.to_string() + "  welcome: { merge_window_s: 60 }\n";
    let f = fx(&pb);
    let t0 = f.now();
    f.event("g", EventKind::MemberJoined, &user("u1", "@所有人\n"), "");
    f.event("g", EventKind::MemberJoined, &user("u2", "\u{202E}"), "");
    f.event(
        "g",
        EventKind::MemberJoined,
        &user("u3", &"长".repeat(30)),
        "",
    );
    let out = f.pb.due(t0 + 60_000);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].reply.text,
        format!("欢迎所有人、{}\u{2026}加入粉丝群！", "长".repeat(11))
    );
}

#[test]
fn not_understood_twice_in_a_row_goes_to_a_human() {
    let f = fx(BASE);
    let u1 = user("u1", "小王");
    let d = f.ask_cls("g", &u1, &unclear(&["price", "stock"]));
    assert_eq!(
        (d.action, d.reason.as_str(), text(&d)),
        (Action::Clarify, "clarify", "您是想问：询价、库存/有货？")
    );
    let d = f.ask_cls("g", &u1, &unclear(&["price"]));
    assert_eq!(
        (d.action, d.reason.as_str(), text(&d)),
        (
            Action::Handoff,
            "handoff:not_understood",
            "已转人工，预计等待5分钟"
        )
    );
    // The streak starts over after the handoff.
    assert_eq!(f.ask_cls("g", &u1, &unclear(&[])).action, Action::Clarify);
    // Understood in between: no handoff.
    let u2 = user("u2", "小李");
    f.step(100);
    assert_eq!(f.ask_cls("g", &u2, &unclear(&[])).action, Action::Clarify);
    assert_eq!(f.ask("g", &u2, "price").action, Action::Reply);
    f.step(100);
    let d = f.ask_cls("g", &u2, &unclear(&[]));
    assert_eq!(
        (d.action, text(&d)),
        (Action::Clarify, "没太明白，能换个说法吗？")
    );
}

#[test]
fn human_share_against_target() {
    let f = fx(&(BASE.to_string() + "bots:\n  bot1:\n    groups:\n      g2:\n        handoff: { human_share_target: 0.25 }\n"));
    for i in 0..8 {
        f.ask("g", &user(&format!("u{i}"), "x"), "price");
    }
    f.ask("g", &user("c1", "x"), "complaint");
    f.ask("g", &user("c2", "x"), "ask_human");
    f.pb.record_human_reply(BOT, "g");
    let (share, target) = f.pb.human_share(BOT, "g");
    assert!((share - 0.3).abs() < 1e-9, "{share}");
    assert_eq!(target, 0.30);
    assert_eq!(f.pb.human_share(BOT, "g2"), (0.0, 0.25));
}

#[test]
fn off_hours_answers_what_it_can_and_hands_off_the_rest_once_with_the_opening_time() {
    let pb = BASE.to_string() + "  service_hours:\n    - { days: [mon, tue, wed, thu, fri], from: \"09:00\", to: \"21:00\" }\n";
    let f = fx_at(&pb, ms(2027, 3, 5, 22, 0, 0)); // Friday night
    let u1 = user("u1", "a");
    let d = f.ask("g", &u1, "price");
    assert_eq!((d.action, d.reason.as_str()), (Action::Reply, "faq"));
    let d = f.ask("g", &u1, "ask_human");
    assert_eq!(
        (d.action, d.reason.as_str(), text(&d)),
        (
            Action::Handoff,
            "off_hours",
            "现在是下班时间，09:00后回复您"
        )
    );
    let d = f.ask("g", &u1, "ask_human");
    assert_eq!(
        (d.action, d.reason.as_str(), d.reply.is_none()),
        (Action::Handoff, "off_hours", true)
    );
    let d = f.ask("g", &u1, "stock");
    assert_eq!((d.action, d.reason.as_str()), (Action::Reply, "faq"));
    assert_eq!(
        text(&f.ask("g", &user("u2", "b"), "ask_human")),
        "现在是下班时间，09:00后回复您"
    );
    f.clock.set_ms(ms(2027, 3, 8, 9, 30, 0)); // Monday morning
    let d = f.ask("g", &user("u3", "c"), "ask_human");
    assert_eq!(
        (d.action, d.reason.as_str()),
        (Action::Handoff, "handoff:intent")
    );
}

#[test]
fn disclosure_on_first_contact_only() {
    let f = fx(&BASE.replace(
        "disclosure: { enabled: false,",
        "disclosure: { enabled: true,",
    ));
    let u1 = user("u1", "a");
    assert_eq!(
        f.ask("g", &u1, "price").notices,
        vec!["我是自动助手".to_string()]
    );
    assert!(f.ask("g", &u1, "stock").notices.is_empty());
    // Per chat: the same user in another group is told again.
    assert_eq!(f.ask("g2", &u1, "price").notices.len(), 1);
    // Asking "are you a bot" is answered by the ask_bot reply itself.
    let u2 = user("u2", "b");
    let d = f.ask("g", &u2, "ask_bot");
    assert_eq!(
        (d.action, d.notices.len(), text(&d)),
        (Action::Reply, 0, "b，关于ask_bot请看说明")
    );
    assert!(f.ask("g", &u2, "price").notices.is_empty());
}

#[test]
fn banned_words_block_with_review_entry_and_obfuscations_are_caught() {
    let f = fx(BASE);
    let u = user("u1", "a");
    for t in [
        "加我微 信聊 13812345678",
        "加我微-信",
        "联系ＷＥＣＨＡＴ",
        "可以代\u{200b}开发票吗",
        "Wechat 号多少",
    ] {
        let d =
            f.pb.precheck(&msg("g", &u, t))
                .unwrap_or_else(|| panic!("not caught: {t}"));
        assert_eq!(
            (d.action, d.reason.as_str()),
            (Action::Block, "banned_word")
        );
    }
    assert!(f.pb.precheck(&msg("g", &u, "这个多少钱？")).is_none());
    let q = f.pb.review_queue();
    assert_eq!(q.len(), 5);
    assert_eq!(
        (q[0].matched.as_str(), q[0].text.as_str()),
        ("微信", "加我微 信聊 [PHONE]")
    );
    assert_eq!(q[2].matched, "wechat");
    // decide_message after precheck on the same message does not add a second entry.
    let m = msg("g", &u, "加微信");
    f.pb.precheck(&m).unwrap();
    let d = f.pb.decide_message(&m, &cls("price"), &names);
    assert_eq!(d.action, Action::Block);
    assert_eq!(f.pb.drain_review_queue().len(), 6);
    assert!(f.pb.review_queue().is_empty());
}

#[test]
fn outbound_never_contains_a_banned_word() {
    let f = fx(BASE);
    // Every variant renders the nickname, which carries the banned word.
    let d = f.ask("g", &user("u1", "加微 信"), "price");
    assert_eq!(
        (d.action, d.reason.as_str(), d.reply.is_none()),
        (Action::Ignore, "banned_word:outbound", true)
    );
}

#[test]
fn spam_is_blocked_and_silent_intents_ignored() {
    let f = fx(&(BASE.to_string() + "  silent_intents: [chitchat]\n"));
    let d = f.ask("g", &user("u1", "a"), "spam_ads");
    assert_eq!((d.action, d.reason.as_str()), (Action::Block, "spam_ads"));
    assert_eq!(f.pb.review_queue()[0].reason, "spam_ads");
    let d = f.ask("g", &user("u1", "a"), "chitchat");
    assert_eq!(
        (d.action, d.reason.as_str()),
        (Action::Ignore, "silent_intent")
    );
}

#[test]
fn blocked_and_self_disclosing_intents_are_operator_settings() {
    // Nothing is blocked or self-disclosing unless the playbook says so.
    let plain = "defaults:\n  style: professional\n  spacing: { min_interval_s: 15, jitter_ms: 0 }\n  reactivation: { enabled: false }\n";
    let f = fx(plain);
    let d = f.ask("g", &user("u1", "a"), "spam_ads");
    assert_eq!((d.action, d.reason.as_str()), (Action::Reply, "faq"));
    assert_eq!(d.notices.len(), 1, "spam_ads is not self-disclosing here");
    let d = f.ask("g", &user("u2", "b"), "ask_bot");
    assert_eq!((d.action, d.notices.len()), (Action::Reply, 1));
    // Another intent, per group.
    let f = fx(&(plain.to_string()
        + "bots:\n  bot1:\n    groups:\n      quiet:\n        block_intents: [chitchat]\n        disclosure: { answered_by: [greeting] }\n"));
    let d = f.ask("quiet", &user("u1", "a"), "chitchat");
    assert_eq!((d.action, d.reason.as_str()), (Action::Block, "chitchat"));
    assert_eq!(f.pb.review_queue()[0].reason, "chitchat");
    let d = f.ask("quiet", &user("u2", "b"), "greeting");
    assert_eq!((d.action, d.notices.len()), (Action::Reply, 0));
    let d = f.ask("other", &user("u1", "a"), "chitchat");
    assert_eq!(d.action, Action::Reply);
}

#[test]
fn a_dedicated_agent_rule_opens_a_real_handoff_and_announces_its_wait() {
    let pb = BASE.to_string()
        + "  rules:
    - { id: vip, intents: [price, stock], when: { vip_min: 3 }, reply: vip_agent, handoff: true }
";
    let f = fx(&pb);
    let mut vip = user("v", "老王");
    vip.vip_level = 3;
    let d = f.ask("g", &vip, "price");
    assert_eq!(
        (d.action, d.reason.as_str(), text(&d)),
        (
            Action::Handoff,
            "handoff:rule:vip",
            "老王，专属客服约5分钟内联系您"
        )
    );
    // The handoff is open: the next one waits behind it, and it goes to a human even inside
    // the cooldown of the same intent.
    let d = f.ask("g2", &vip, "price");
    assert_eq!(
        (d.action, text(&d)),
        (Action::Handoff, "老王，专属客服约10分钟内联系您")
    );
    let d = f.ask("g", &vip, "price");
    assert_eq!(
        (d.action, d.reason.as_str()),
        (Action::Handoff, "handoff:rule:vip")
    );
    // Others are answered by the bot.
    assert_eq!(f.ask("g", &user("n", "小张"), "price").reason, "faq");
}

#[test]
fn attribute_rules_vip_city_tags_and_frequency() {
    let pb = BASE.to_string()
        + "  cooldown: { default_s: 0 }
  rules:
    - { id: vip, intents: [price], when: { vip_min: 3 }, reply: vip_service }
    - { id: sh, intents: [event_signup], when: { cities: [上海] }, reply: local_sh }
    - { id: newbie, intents: [product_usage], when: { tags_any: [新手, 小白] }, reply: newbie }
    - { id: regulars, intents: [greeting], when: { min_messages: 3 }, reply: regulars }
";
    let f = fx(&pb);
    let mut vip = user("v", "老王");
    vip.vip_level = 3;
    let d = f.ask("g", &vip, "price");
    assert_eq!(
        (d.reason.as_str(), text(&d)),
        ("rule:vip", "老王您好，VIP专属客服为您服务")
    );
    assert_eq!(d.reply.as_ref().unwrap().variant_id, "vip_service/v1");
    f.step(20);
    vip.vip_level = 2;
    assert_eq!(f.ask("g", &vip, "price").reason, "faq");
    f.step(20);
    let mut sh = user("s", "小上");
    sh.city = "上海".into();
    assert_eq!(
        text(&f.ask("g", &sh, "event_signup")),
        "小上，上海本地活动周六见"
    );
    f.step(20);
    sh.city = "北京".into();
    assert_eq!(f.ask("g", &sh, "event_signup").reason, "faq");
    f.step(20);
    let mut nb = user("n", "小新");
    nb.tags = vec!["小白".into()];
    assert_eq!(f.ask("g", &nb, "product_usage").reason, "rule:newbie");
    // Interaction frequency: the third message of a user in the window gets the regulars reply.
    let r = user("r", "老李");
    f.step(20);
    assert_eq!(f.ask("g", &r, "greeting").reason, "faq");
    f.step(20);
    assert_eq!(f.ask("g", &r, "greeting").reason, "faq");
    f.step(20);
    assert_eq!(f.ask("g", &r, "greeting").reason, "rule:regulars");
}

#[test]
fn ab_experiment_is_sticky_and_weighted_over_3000_users() {
    let pb = BASE.to_string()
        + "  experiments:
    - id: coupon_copy
      intent: coupon
      variants:
        - { variant: a, weight: 50 }
        - { variant: b, weight: 30 }
        - { variant: c, weight: 20 }
";
    let f = fx(&pb);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..3000 {
        let d = f.ask(&format!("g{i}"), &user(&format!("wxid_{i}"), "x"), "coupon");
        let r = d.reply.unwrap();
        assert_eq!(
            (d.reason.as_str(), r.experiment.as_str()),
            ("ab:coupon_copy", "coupon_copy")
        );
        *counts.entry(r.variant_id).or_default() += 1;
    }
    for (v, w) in [
        ("coupon_copy/a", 0.5),
        ("coupon_copy/b", 0.3),
        ("coupon_copy/c", 0.2),
    ] {
        let share = counts[v] as f64 / 3000.0;
        assert!((share - w).abs() <= 0.03, "{v}: {share} ({counts:?})");
    }
    // Sticky: the same user sees the same variant again (after the cooldown), in any group.
    let first = f
        .ask("x1", &user("wxid_7", "x"), "coupon")
        .reply
        .unwrap()
        .variant_id;
    f.step(400);
    assert_eq!(
        f.ask("x2", &user("wxid_7", "x"), "coupon")
            .reply
            .unwrap()
            .variant_id,
        first
    );
    // Other intents are not in the experiment.
    assert_eq!(
        f.ask("x3", &user("wxid_7", "x"), "price")
            .reply
            .unwrap()
            .experiment,
        ""
    );
}

#[test]
fn experiments_on_welcomes_pushes_and_schedules_bucket_whoever_the_send_is_for() {
    // 40 sends of each kind, so a send bucketed by the wrong unit cannot match by luck.
    let pb = BASE.to_string()
        + "  welcome: { merge_window_s: 60 }
  pushes:
    - { id: sh, when: { cities: [上海] }, reply: push_ab, delay_s: 60 }
  schedules:
    - { id: morning, cron: \"0 9 * * *\", reply: tip_ab }
  experiments:
    - id: welcome_copy
      reply: welcome
      variants: [{ variant: w1, weight: 1 }, { variant: w2, weight: 1 }]
    - id: push_copy
      reply: push_ab
      variants: [{ variant: p1, weight: 1 }, { variant: p2, weight: 3 }]
    - id: tip_copy
      reply: tip_ab
      variants: [{ variant: t1, weight: 1 }, { variant: t2, weight: 1 }]
bots:
  bot1:
    groups:
      now:
        welcome: { merge_window_s: 0 }
";
    let w2 = "    - { id: w2, style: playful, text: \"{nickname}，欢迎来到{group_name}\" }\n";
    let f = fx_from(write_dir_with(&pb, w2), mon(8, 0));
    let cfg = f.pb.config();
    let s = cfg.settings(BOT, "g").clone();
    let expected = |key: &str, unit: Unit<'_>| {
        let e = s.experiment_for(key).unwrap();
        format!("{}/{}", e.id, e.variant_for(&unit))
    };

    // Welcomes sent at once: each member's own sticky bucket, whatever the group and style.
    let mut w2_count = 0;
    for i in 0..400 {
        let u = user(&format!("wxid_{i}"), "小王");
        let d = f.event("now", EventKind::MemberJoined, &u, "");
        let r = d.decision.reply.expect("welcome at once");
        assert_eq!(r.experiment, "welcome_copy");
        assert_eq!(r.variant_id, expected("welcome", Unit::User(&u.id)));
        w2_count += usize::from(r.variant_id.ends_with("/w2"));
    }
    assert!((150..=250).contains(&w2_count), "{w2_count} of 400 saw w2");

    // Queued welcomes: one member alone gets their bucket (the same as at once: sticky);
    // a welcome merged for two goes to the whole group and gets the group's.
    for g in 0..40 {
        let chat = format!("solo{g}");
        f.event(
            &chat,
            EventKind::MemberJoined,
            &user(&format!("wxid_{g}"), "甲"),
            "",
        );
        let chat = format!("pair{g}");
        f.event(
            &chat,
            EventKind::MemberJoined,
            &user(&format!("a{g}"), "甲"),
            "",
        );
        f.event(
            &chat,
            EventKind::MemberJoined,
            &user(&format!("b{g}"), "乙"),
            "",
        );
    }
    let out = f.pb.due(mon(8, 1));
    assert_eq!(out.len(), 80);
    for w in &out {
        assert_eq!(
            (w.kind, w.reply.experiment.as_str()),
            (OutboundKind::Welcome, "welcome_copy")
        );
        let unit = if w.chat_id.starts_with("pair") {
            assert_eq!(w.user_ids.len(), 2);
            Unit::Group(&w.chat_id)
        } else {
            Unit::User(&w.user_ids[0])
        };
        assert_eq!(w.reply.variant_id, expected("welcome", unit));
    }

    // A push is for one user: theirs.
    for i in 0..40 {
        let mut u = user(&format!("u_sh{i}"), "小李");
        u.city = "上海".into();
        f.ask(&format!("p{i}"), &u, "price");
    }
    let out = f.pb.due(f.now() + 60_000);
    let pushes: Vec<_> = out.iter().filter(|o| o.rule_id == "push:sh").collect();
    assert_eq!(pushes.len(), 40);
    for p in pushes {
        assert_eq!(p.reply.experiment, "push_copy");
        assert_eq!(
            p.reply.variant_id,
            expected("push_ab", Unit::User(&p.user_ids[0]))
        );
    }

    // A schedule goes to each whole group: one bucket per group, both variants in use.
    let out = f.pb.due(mon(9, 0));
    let tips: Vec<_> = out
        .iter()
        .filter(|o| o.rule_id == "schedule:morning")
        .collect();
    assert!(tips.len() >= 120, "{}", tips.len());
    for o in &tips {
        assert_eq!(o.reply.experiment, "tip_copy");
        assert_eq!(
            o.reply.variant_id,
            expected("tip_ab", Unit::Group(&o.chat_id))
        );
    }
    let t2 = tips
        .iter()
        .filter(|o| o.reply.variant_id.ends_with("/t2"))
        .count();
    assert!(
        t2 > tips.len() / 4 && t2 < tips.len() * 3 / 4,
        "{t2} of {}",
        tips.len()
    );
    // Intent replies outside any experiment are untouched.
    let d = f.ask("q", &user("x", "x"), "price");
    assert_eq!(
        (d.reason.as_str(), d.reply.unwrap().experiment.as_str()),
        ("faq", "")
    );
}

#[test]
fn style_per_user_tag_and_group() {
    let pb = BASE.to_string()
        + "  user_tag_styles: { 学生: playful }\nbots:\n  bot1:\n    groups:\n      fun:\n        style: playful\n";
    let f = fx(&pb);
    let mut st = user("s", "小明");
    st.tags = vec!["学生".into()];
    let r = f.ask("g", &st, "price").reply.unwrap();
    assert_eq!(
        (r.variant_id.as_str(), r.style.as_str(), r.text.as_str()),
        ("price/b", "playful", "小明～price来啦")
    );
    let r = f.ask("g", &user("o", "老赵"), "price").reply.unwrap();
    assert_eq!(
        (r.variant_id.as_str(), r.style.as_str()),
        ("price/a", "professional")
    );
    let r = f.ask("fun", &user("o", "老赵"), "price").reply.unwrap();
    assert_eq!(r.style, "playful");
}

#[test]
fn joins_within_the_window_get_one_merged_welcome() {
    let pb = BASE.to_string()
        + "  welcome: { merge_window_s: 60 }\nbots:\n  bot1:\n    groups:\n      now:\n        welcome: { merge_window_s: 0 }\n      off:\n        welcome: { enabled: false }\n";
    let f = fx(&pb);
    let t0 = f.now();
    let d = f.event("g", EventKind::MemberJoined, &user("u1", "小王"), "");
    assert_eq!(
        (
            d.decision.action,
            d.decision.reason.as_str(),
            d.decision.send_after_ms,
            d.decision.reply.is_none()
        ),
        (Action::Reply, "welcome:queued", 60_000, true)
    );
    assert_eq!(d.merged_user_ids, vec!["u1"]);
    f.step(10);
    let d = f.event("g", EventKind::MemberJoined, &user("u2", "小李"), "");
    assert_eq!(
        (
            d.decision.action,
            d.decision.reason.as_str(),
            d.decision.send_after_ms
        ),
        (Action::Ignore, "merged_welcome", 50_000)
    );
    assert_eq!(d.merged_user_ids, vec!["u1", "u2"]);
    f.step(10);
    let d = f.event("g", EventKind::MemberJoined, &user("u3", "小张"), "");
    assert_eq!(d.merged_user_ids, vec!["u1", "u2", "u3"]);
    // u2 leaves before the welcome goes.
    let d = f.event("g", EventKind::MemberLeft, &user("u2", "小李"), "");
    assert_eq!(
        (d.decision.action, d.decision.reason.as_str()),
        (Action::Ignore, "member_left")
    );
    assert_eq!(f.pb.next_due_ms(), Some(t0 + 60_000));
    assert!(f.pb.due(t0 + 59_999).is_empty());
    let out = f.pb.due(t0 + 60_000);
    assert_eq!(out.len(), 1);
    let w = &out[0];
    assert_eq!(
        (w.kind, w.rule_id.as_str(), w.send_at_ms),
        (OutboundKind::Welcome, "welcome", t0 + 60_000)
    );
    assert_eq!(w.reply.text, "欢迎小王、小张加入粉丝群！");
    assert_eq!(w.user_ids, vec!["u1", "u3"]);
    assert!(f.pb.due(t0 + 60_000).is_empty(), "exactly once");
    assert!(f.pb.due(t0 + 120_000).is_empty());
    // Window 0: welcome at once. Disabled: nothing.
    let d = f.event("now", EventKind::MemberJoined, &user("u4", "小赵"), "");
    assert_eq!(
        (
            d.decision.action,
            d.decision.reason.as_str(),
            text(&d.decision)
        ),
        (Action::Reply, "welcome", "欢迎小赵加入粉丝群！")
    );
    let d = f.event("off", EventKind::MemberJoined, &user("u5", "小钱"), "");
    assert_eq!(
        (d.decision.action, d.decision.reason.as_str()),
        (Action::Ignore, "welcome:disabled")
    );
}

#[test]
fn link_and_card_guidance() {
    let f = fx(BASE);
    let u = user("u1", "小王");
    let d = f
        .event("g", EventKind::LinkClicked, &u, "coupon_center")
        .decision;
    assert_eq!(
        (d.action, d.reason.as_str(), text(&d)),
        (Action::Reply, "guidance:link", "小王，领券后回商品页下单")
    );
    assert_eq!(
        d.reply.as_ref().unwrap().variant_id,
        "link:coupon_center/l1"
    );
    let d = f
        .event("g", EventKind::LinkClicked, &u, "coupon_center")
        .decision;
    assert_eq!(d.reason, "cooldown");
    let d = f
        .event("g", EventKind::CardShared, &u, "product_card")
        .decision;
    assert_eq!(
        (d.reason.as_str(), text(&d), d.send_after_ms),
        ("guidance:card", "小王，点卡片即可下单", 15_000)
    );
    let d = f.event("g", EventKind::LinkClicked, &u, "nope").decision;
    assert_eq!(
        (d.action, d.reason.as_str()),
        (Action::Ignore, "guidance:unknown_target")
    );
    let d = f.event("g", EventKind::Activity, &u, "").decision;
    assert_eq!((d.action, d.reason.as_str()), (Action::Ignore, "activity"));
}

#[test]
fn cron_schedule_fires_at_the_right_minute_in_shanghai() {
    let pb = BASE.to_string()
        + "  schedules:\n    - { id: morning, cron: \"0 9 * * *\", reply: daily_tip }\n";
    let f = fx_at(&pb, mon(8, 0));
    f.event("g", EventKind::Activity, &user("u", "x"), "");
    assert_eq!(f.pb.next_due_ms(), Some(mon(9, 0)));
    assert!(f.pb.due(mon(8, 59) + 59_999).is_empty());
    let out = f.pb.due(mon(9, 0));
    assert_eq!(out.len(), 1);
    let o = &out[0];
    assert_eq!(
        (o.kind, o.rule_id.as_str(), o.send_at_ms),
        (OutboundKind::Scheduled, "schedule:morning", mon(9, 0))
    );
    assert_eq!(
        o.send_at_ms.rem_euclid(86_400_000),
        3_600_000,
        "09:00 Shanghai is 01:00 UTC"
    );
    assert_eq!((o.bot_id.as_str(), o.chat_id.as_str()), (BOT, "g"));
    assert_eq!(o.reply.text, "早上好，粉丝群今日小贴士");
    assert!(f.pb.due(mon(9, 0) + 30_000).is_empty(), "exactly once");
    assert_eq!(f.pb.next_due_ms(), Some(ms(2027, 3, 2, 9, 0, 0)));
    // Long gap past the grace period: the missed send is skipped, not sent hours late.
    assert!(f.pb.due(ms(2027, 3, 2, 15, 0, 0)).is_empty());
    assert_eq!(f.pb.due(ms(2027, 3, 3, 9, 5, 0)).len(), 1);
}

#[test]
fn festival_greeting_from_the_calendar() {
    let pb = BASE.to_string()
        + "  schedules:\n    - { id: morning, cron: \"0 9 * * *\", reply: daily_tip }\n";
    let f = fx_at(&pb, ms(2027, 2, 7, 8, 0, 0));
    f.event("g", EventKind::Activity, &user("u", "x"), "");
    let out = f.pb.due(ms(2027, 2, 7, 9, 0, 0));
    assert_eq!(out[0].reply.text, "早上好，粉丝群今日小贴士新春快乐！");
    assert_eq!(
        f.pb.due(ms(2027, 2, 9, 9, 0, 0))[0].reply.text,
        "早上好，粉丝群今日小贴士"
    );
}

#[test]
fn countdown_text_and_once_per_reminder() {
    let pb = BASE.to_string()
        + "  countdowns:\n    - { id: launch, event_name: 新品发布会, date: 2027-03-05, at: \"10:00\", days_before: [3, 1] }\n";
    let f = fx(&pb);
    f.event("g", EventKind::Activity, &user("u", "x"), "");
    assert_eq!(f.pb.next_due_ms(), Some(ms(2027, 3, 2, 10, 0, 0)));
    assert!(f.pb.due(ms(2027, 3, 2, 9, 59, 0)).is_empty());
    let out = f.pb.due(ms(2027, 3, 2, 10, 0, 0));
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].kind, out[0].rule_id.as_str()),
        (OutboundKind::Countdown, "countdown:launch:3")
    );
    assert_eq!(out[0].reply.text, "距离新品发布会开始还有 3 天");
    assert!(f.pb.due(ms(2027, 3, 2, 10, 1, 0)).is_empty());
    let out = f.pb.due(ms(2027, 3, 4, 10, 5, 0));
    assert_eq!(out[0].reply.text, "距离新品发布会开始还有 1 天");
    assert!(f.pb.due(ms(2027, 3, 5, 12, 0, 0)).is_empty());
    assert_eq!(f.pb.next_due_ms(), None);
}

#[test]
fn silent_group_reminder_at_most_once_per_period_and_within_hours() {
    let pb = BASE.replace("reactivation: { enabled: false }", "reactivation: { enabled: true, silence_hours: 2, period_hours: 24 }")
        + "  service_hours:\n    - { days: [mon, tue, wed, thu, fri], from: \"09:00\", to: \"21:00\" }\n";
    let f = fx(&pb);
    f.event("g", EventKind::Activity, &user("u", "x"), "");
    assert_eq!(f.pb.next_due_ms(), Some(mon(12, 0)));
    assert!(f.pb.due(mon(11, 59)).is_empty());
    let out = f.pb.due(mon(12, 0));
    assert_eq!(out.len(), 1);
    assert_eq!(
        (
            out[0].kind,
            out[0].rule_id.as_str(),
            out[0].reply.text.as_str()
        ),
        (
            OutboundKind::Reactivation,
            "reactivation",
            "早上好，今天有福利哦"
        )
    );
    assert!(f.pb.due(mon(13, 0)).is_empty());
    assert!(f.pb.due(mon(20, 0)).is_empty());
    assert_eq!(f.pb.next_due_ms(), Some(ms(2027, 3, 2, 12, 0, 0)));
    assert_eq!(
        f.pb.due(ms(2027, 3, 2, 12, 0, 0)).len(),
        1,
        "still silent a period later"
    );
    // A group that goes quiet in the evening is reminded when service opens, not at night.
    f.clock.set_ms(ms(2027, 3, 2, 20, 0, 0));
    f.event("night", EventKind::Activity, &user("u", "x"), "");
    assert!(f.pb.due(ms(2027, 3, 2, 22, 30, 0)).is_empty());
    let out = f.pb.due(ms(2027, 3, 3, 9, 0, 0));
    assert_eq!(
        out.iter().map(|o| o.chat_id.as_str()).collect::<Vec<_>>(),
        vec!["night"]
    );
}

#[test]
fn proactive_sends_respect_group_spacing() {
    let pb = BASE.to_string()
        + "  schedules:\n    - { id: morning, cron: \"0 9 * * *\", reply: daily_tip }\n";
    let f = fx_at(&pb, ms(2027, 3, 1, 8, 59, 55));
    assert_eq!(f.ask("g", &user("u", "x"), "price").send_after_ms, 0);
    assert!(
        f.pb.due(mon(9, 0)).is_empty(),
        "the group just had a bot send"
    );
    assert_eq!(f.pb.next_due_ms(), Some(mon(9, 0) + 10_000));
    assert!(f.pb.due(mon(9, 0) + 9_999).is_empty());
    let out = f.pb.due(mon(9, 0) + 10_000);
    assert_eq!((out.len(), out[0].send_at_ms), (1, mon(9, 0) + 10_000));
    assert!(f.pb.due(mon(9, 1)).is_empty());
    // And a reply right after a proactive send is spaced behind it.
    f.clock.set_ms(mon(9, 0) + 12_000);
    assert_eq!(f.ask("g", &user("u2", "y"), "stock").send_after_ms, 13_000);
}

#[test]
fn personal_push_is_delayed_and_throttled_by_frequency() {
    let pb = BASE.to_string()
        + "  pushes:\n    - { id: sh, when: { cities: [上海] }, reply: push_sh, delay_s: 60 }\n";
    let f = fx(&pb);
    let mut u = user("u1", "小王");
    u.city = "上海".into();
    let t0 = f.now();
    f.ask("g", &u, "price");
    f.ask("g", &user("u2", "b"), "stock");
    assert!(f.pb.due(t0 + 59_000).is_empty());
    let out = f.pb.due(t0 + 60_000);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (
            out[0].kind,
            out[0].rule_id.as_str(),
            out[0].reply.text.as_str()
        ),
        (
            OutboundKind::DelayedReply,
            "push:sh",
            "小王，上海活动还有名额"
        )
    );
    assert_eq!(out[0].user_ids, vec!["u1"]);
    // Few messages → the lowest tier: no second push within 168 h.
    f.clock.set_ms(t0 + 120_000);
    f.ask("g", &u, "stock");
    assert!(f.pb.due(t0 + 400_000).is_empty());
    f.clock.set_ms(t0 + 168 * 3_600_000);
    f.event("g", EventKind::Activity, &u, "");
    assert_eq!(f.pb.due(t0 + 168 * 3_600_000 + 60_000).len(), 1);
}

#[test]
fn reload_swaps_config_keeps_state_and_rejects_broken_files() {
    let f = fx(BASE);
    let u = user("u1", "a");
    f.ask("g", &u, "price");
    let bad = write_dir("defaults:\n  spacing: { min_interval_s: 90 }\n");
    let e = f.reload(bad.path()).unwrap_err().to_string();
    assert!(
        e.ends_with("playbook.yml:2: min_interval_s must be 5..=60, got 90"),
        "{e}"
    );
    let good = write_dir(&(BASE.to_string() + "  handoff: { intents: [price] }\n"));
    f.reload(good.path()).unwrap();
    f.step(20);
    assert_eq!(
        f.ask("g", &user("u2", "b"), "price").action,
        Action::Handoff
    );
    // Cooldown state survived the reload (stock still answered, a repeated ask is not).
    assert_eq!(f.ask("g", &u, "stock").action, Action::Reply);
    f.step(20);
    assert_eq!(f.ask("g", &u, "stock").reason, "cooldown");
}

#[test]
fn next_due_is_never_in_the_past_while_closed() {
    let pb = BASE.replace("reactivation: { enabled: false }", "reactivation: { enabled: true, silence_hours: 2, period_hours: 24 }")
        + "  service_hours:\n    - { days: [mon, tue, wed, thu, fri], from: \"09:00\", to: \"21:00\" }\n";
    let f = fx(&pb);
    f.clock.set_ms(mon(18, 0));
    f.event("g", EventKind::Activity, &user("u", "x"), "");
    // Silence ends at 20:00 (open); nobody asked for due() until 21:30 (closed).
    f.clock.set_ms(mon(21, 30));
    assert!(f.pb.due(mon(21, 30)).is_empty());
    assert_eq!(f.pb.next_due_ms(), Some(ms(2027, 3, 2, 9, 0, 0)));
    assert_eq!(f.pb.due(ms(2027, 3, 2, 9, 0, 0)).len(), 1);
}

#[test]
fn playbook_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Playbook>();
}

/// Replicas deciding at once on one store that has no lock (the optimistic `transact`): the
/// same user asking the same thing gets one answer, and different users get distinct slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_decisions_on_a_shared_store_reserve_each_slot_and_cooldown_once() {
    use crate::policy::state_memory::Optimistic;
    const N: usize = 8;
    let dir = write_dir(&(BASE.to_string() + "  cooldown: { default_s: 300 }\n"));
    let clock = Arc::new(ManualClock::new(mon(10, 0)));
    let store: Arc<dyn PlaybookState> = Arc::new(Optimistic::default());
    // Two "replicas": separate playbooks on one store.
    let replicas: Vec<Arc<Playbook>> = (0..2)
        .map(|_| {
            let cfg = load_config(dir.path()).unwrap();
            let live = Arc::new(ArcSwap::from_pointee(cfg));
            Arc::new(Playbook::with_state(live, clock.clone(), 42, store.clone()))
        })
        .collect();
    let ask = |i: usize, uid: String, intent: &'static str| {
        let pb = replicas[i % 2].clone();
        tokio::spawn(async move {
            let m = msg("g", &user(&uid, "x"), "问题");
            pb.decide_message(&m, &cls(intent), &names).await.unwrap()
        })
    };
    let same: Vec<_> = (0..N).map(|i| ask(i, "u1".into(), "price")).collect();
    let mut reasons = Vec::new();
    for t in same {
        reasons.push(t.await.unwrap().reason);
    }
    reasons.sort();
    let mut expected = vec!["cooldown".to_string(); N - 1];
    expected.push("faq".into());
    assert_eq!(reasons, expected);

    // Handoff notices are never merged or dropped: each takes its own slot, 15 s apart.
    clock.advance_ms(60_000);
    let many: Vec<_> = (0..N)
        .map(|i| ask(i, format!("v{i}"), "complaint"))
        .collect();
    let mut delays = Vec::new();
    for t in many {
        let d = t.await.unwrap();
        assert_eq!(d.action, Action::Handoff);
        delays.push(d.send_after_ms);
    }
    delays.sort();
    let expected: Vec<i64> = (0..N as i64).map(|i| i * 15_000).collect();
    assert_eq!(delays, expected);
}

/// The pure decision functions on hand-made state rows: no store, no lock.
#[path = "decide_tests.rs"]
mod decide;
