//! Operator rates from raw counts: response, resolution, conversion, satisfaction, human share.
//!
//! Every rate's numerator is a subset of its denominator, so a rate is always within [0, 1]
//! (satisfaction within [-1, 1]); an empty denominator gives 0, never NaN.

use super::ab_report::{self, AbResult};
use super::{Counts, GroupBy, StatsFilter, Store, StoreConfig, StoreError};

/// What GetStats asks for: one bot, optionally one group and one experiment, over
/// `[from_ms, to_ms]` (`to_ms` 0 = now).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsQuery {
    pub bot_id: String,
    pub chat_id: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Empty: every experiment.
    pub experiment: String,
}

/// Counts and rates for one group (see [`rates`] for the definitions).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    pub counts: Counts,
    pub response_rate: f64,
    pub resolution_rate: f64,
    pub conversion_rate: f64,
    pub satisfaction: f64,
    pub human_share: f64,
    pub human_share_target: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupStats {
    pub key: String,
    pub rates: Rates,
}

/// The whole GetStats answer.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsReport {
    pub total: Rates,
    pub by_chat: Vec<GroupStats>,
    pub by_intent: Vec<GroupStats>,
    pub by_variant: Vec<GroupStats>,
    pub experiments: Vec<AbResult>,
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Rates for one group.
/// - response rate = triggered messages the bot answered / triggered messages
/// - resolution rate = resolved / (resolved + unresolved)
/// - conversion rate = clicked auto replies / auto replies (exposures)
/// - satisfaction = (thumbs up − thumbs down) / (thumbs up + thumbs down)
/// - human share = (handoffs + human replies) / messages, reported beside its target
pub fn rates(c: &Counts, human_share_target: f64) -> Rates {
    let thumbs = c.thumbs_up + c.thumbs_down;
    Rates {
        counts: *c,
        response_rate: ratio(c.triggers_replied, c.triggers),
        resolution_rate: ratio(c.resolved, c.resolved + c.unresolved),
        conversion_rate: ratio(c.auto_replies_clicked, c.auto_replies),
        satisfaction: if thumbs == 0 {
            0.0
        } else {
            (c.thumbs_up as f64 - c.thumbs_down as f64) / thumbs as f64
        },
        human_share: ratio(c.handoffs + c.human_replies, c.messages),
        human_share_target,
    }
}

impl StatsFilter {
    /// From a GetStats request: `from_ms` 0 = beginning, `to_ms` 0 = `now_ms`; inclusive.
    pub fn from_query(req: &StatsQuery, now_ms: i64) -> Result<Self, StoreError> {
        let to_ms = if req.to_ms == 0 { now_ms } else { req.to_ms };
        if req.from_ms < 0 || to_ms < 0 {
            return Err(StoreError::Invalid(format!(
                "from_ms ({}) and to_ms ({}) must be Unix milliseconds >= 0",
                req.from_ms, req.to_ms
            )));
        }
        if req.from_ms > to_ms {
            return Err(StoreError::Invalid(format!(
                "from_ms ({}) is after to_ms ({to_ms})",
                req.from_ms
            )));
        }
        Ok(Self {
            bot_id: req.bot_id.clone(),
            chat_id: req.chat_id.clone(),
            from_ms: req.from_ms,
            to_ms,
        })
    }
}

/// One row per group; `target(key)` is the human-share target reported in the row.
fn groups(
    store: &dyn Store,
    f: &StatsFilter,
    by: GroupBy,
    target: &dyn Fn(&str) -> f64,
) -> Result<Vec<GroupStats>, StoreError> {
    Ok(store
        .counts(f, by)?
        .into_iter()
        .map(|(key, c)| GroupStats {
            rates: rates(&c, target(&key)),
            key,
        })
        .collect())
}

/// The full GetStats answer: totals, per chat / intent / variant, and the A/B reports of the
/// requested experiment (all experiments when `req.experiment` is empty).
/// `human_share_target(chat_id)` is the playbook's target for a group of the bot (`""`: the
/// bot's own), reported beside each human share, so the figure the policy steers by and the
/// one the report shows are the same.
pub fn stats_report(
    store: &dyn Store,
    req: &StatsQuery,
    now_ms: i64,
    config: &StoreConfig,
    human_share_target: &dyn Fn(&str) -> f64,
) -> Result<StatsReport, StoreError> {
    let f = StatsFilter::from_query(req, now_ms)?;
    // The request's group when it names one, else the bot's.
    let target = human_share_target(&req.chat_id);
    let mut total = Counts::default();
    for (_, c) in store.counts(&f, GroupBy::Total)? {
        total.add(&c);
    }
    let variants = store.variant_counts(&f, &req.experiment)?;
    let experiments = ab_report::reports(&variants, config.ab_min_sample, config.ab_alpha);
    Ok(StatsReport {
        total: rates(&total, target),
        by_chat: groups(store, &f, GroupBy::Chat, human_share_target)?,
        by_intent: groups(store, &f, GroupBy::Intent, &|_| target)?,
        by_variant: groups(store, &f, GroupBy::Variant, &|_| target)?,
        experiments,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{FeedbackKind, HumanReplyRecord, Record, SqliteStore};
    use super::*;
    use crate::types::Action;

    #[test]
    fn rates_follow_their_definitions_and_never_divide_by_zero() {
        let c = Counts {
            messages: 20,
            triggers: 10,
            triggers_replied: 8,
            auto_replies: 9,
            auto_replies_clicked: 3,
            handoffs: 2,
            human_replies: 4,
            resolved: 6,
            unresolved: 2,
            thumbs_up: 5,
            thumbs_down: 1,
            ..Counts::default()
        };
        let r = rates(&c, 0.3);
        assert!((r.response_rate - 0.8).abs() < 1e-12);
        assert!((r.resolution_rate - 0.75).abs() < 1e-12);
        assert!((r.conversion_rate - 3.0 / 9.0).abs() < 1e-12);
        assert!((r.satisfaction - 4.0 / 6.0).abs() < 1e-12);
        assert!((r.human_share - 0.3).abs() < 1e-12);
        assert!((r.human_share_target - 0.3).abs() < 1e-12);
        let z = rates(&Counts::default(), 0.3);
        assert_eq!(
            (
                z.response_rate,
                z.resolution_rate,
                z.conversion_rate,
                z.satisfaction,
                z.human_share
            ),
            (0.0, 0.0, 0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn window_validation_names_the_problem() {
        let req = StatsQuery {
            from_ms: 10,
            to_ms: 5,
            ..Default::default()
        };
        let e = StatsFilter::from_query(&req, 100).unwrap_err().to_string();
        assert!(e.contains("from_ms (10) is after to_ms (5)"), "{e}");
        let f = StatsFilter::from_query(&StatsQuery::default(), 100).unwrap();
        assert_eq!((f.from_ms, f.to_ms), (0, 100));
    }

    /// A small world: two groups, three intents, one experiment; every number checked by hand.
    #[test]
    fn grouped_stats_from_a_real_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db"), keyring(&key_b64(3))).unwrap();
        let mut recs = Vec::new();
        // g1: m1 price reply (variant price/a, clicked, resolved, thumbs up)
        //     m2 price reply (variant price/b, unresolved, thumbs down)
        //     m3 refund handoff (triggered, no reply)
        // g2: m4 chitchat ignore (not triggered)
        //     m5 price triggered but ignored by cooldown
        //     m6 spam block
        let mut m1 = conversation("bot", "g1", "m1", 100);
        m1.variant_id = "price/a".into();
        let mut m2 = conversation("bot", "g1", "m2", 110);
        m2.variant_id = "price/b".into();
        let mut m3 = conversation("bot", "g1", "m3", 120);
        m3.intent = "refund".into();
        m3.action = Action::Handoff;
        m3.reply_text.clear();
        m3.variant_id.clear();
        let mut m4 = conversation("bot", "g2", "m4", 130);
        m4.intent = "chitchat".into();
        m4.action = Action::Ignore;
        m4.triggered = false;
        m4.reply_text.clear();
        m4.variant_id.clear();
        let mut m5 = conversation("bot", "g2", "m5", 140);
        m5.action = Action::Ignore;
        m5.reply_text.clear();
        m5.variant_id.clear();
        let mut m6 = conversation("bot", "g2", "m6", 150);
        m6.intent = "spam_ads".into();
        m6.action = Action::Block;
        m6.triggered = false;
        m6.reply_text.clear();
        m6.variant_id.clear();
        // Another bot and an out-of-window message must not count.
        let other_bot = conversation("other", "g1", "x1", 100);
        let late = conversation("bot", "g1", "late", 10_000);
        for c in [m1, m2, m3, m4, m5, m6, other_bot, late] {
            recs.push(Record::Conversation(c));
        }
        for (msg, kind) in [
            ("m1", FeedbackKind::Clicked),
            ("m1", FeedbackKind::Clicked), // a retried call: counted once
            ("m1", FeedbackKind::Resolved),
            ("m1", FeedbackKind::ThumbsUp),
            ("m2", FeedbackKind::Unresolved),
            ("m2", FeedbackKind::ThumbsDown),
            ("unknown", FeedbackKind::Resolved), // no such message: ignored
        ] {
            recs.push(Record::Feedback(feedback("bot", msg, kind, 200)));
        }
        recs.push(Record::HumanReply(HumanReplyRecord {
            bot_id: "bot".into(),
            chat_id: "g1".into(),
            message_id: "m3".into(),
            at_ms: 125,
        }));
        recs.push(Record::HumanReply(HumanReplyRecord {
            bot_id: "bot".into(),
            chat_id: "g2".into(),
            message_id: "h-own".into(),
            at_ms: 160,
        }));
        store.write_batch(&recs).unwrap();

        let req = StatsQuery {
            bot_id: "bot".into(),
            to_ms: 1_000,
            ..Default::default()
        };
        // g2 has a group override of the human-share target; the bot's own is 0.30.
        let target = |chat: &str| if chat == "g2" { 0.5 } else { 0.3 };
        let resp = stats_report(&store, &req, 50_000, &StoreConfig::default(), &target).unwrap();
        let t = resp.total;
        assert_eq!(
            (
                t.counts.messages,
                t.counts.triggers,
                t.counts.auto_replies,
                t.counts.handoffs,
                t.counts.blocks
            ),
            (6, 4, 2, 1, 1)
        );
        assert_eq!(
            (
                t.counts.resolved,
                t.counts.unresolved,
                t.counts.clicks,
                t.counts.thumbs_up,
                t.counts.thumbs_down,
                t.counts.human_replies
            ),
            (1, 1, 1, 1, 1, 2)
        );
        // response: m1, m2 answered of triggers m1, m2, m3, m5
        assert!((t.response_rate - 0.5).abs() < 1e-12);
        assert!((t.resolution_rate - 0.5).abs() < 1e-12);
        assert!((t.conversion_rate - 0.5).abs() < 1e-12);
        assert!(t.satisfaction.abs() < 1e-12);
        // (1 handoff + 2 human replies) / 6 messages
        assert!((t.human_share - 0.5).abs() < 1e-12);

        let chat = |k: &str| {
            resp.by_chat
                .iter()
                .find(|g| g.key == k)
                .unwrap()
                .rates
                .clone()
        };
        assert_eq!(
            (
                chat("g1").counts.messages,
                chat("g1").counts.human_replies,
                chat("g1").counts.handoffs
            ),
            (3, 1, 1)
        );
        assert!((chat("g1").human_share - 2.0 / 3.0).abs() < 1e-12);
        // Each group's row carries that group's target; the totals the bot's.
        assert_eq!(
            (
                t.human_share_target,
                chat("g1").human_share_target,
                chat("g2").human_share_target
            ),
            (0.3, 0.3, 0.5)
        );
        assert_eq!(
            (chat("g2").counts.messages, chat("g2").counts.human_replies),
            (3, 1)
        );

        let intent = |k: &str| {
            resp.by_intent
                .iter()
                .find(|g| g.key == k)
                .unwrap()
                .rates
                .clone()
        };
        assert_eq!(
            (
                intent("price").counts.messages,
                intent("price").counts.triggers,
                intent("price").counts.auto_replies
            ),
            (3, 3, 2)
        );
        assert_eq!(intent("refund").counts.human_replies, 1); // linked through message id m3
        let keys: Vec<_> = resp.by_variant.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(keys, vec!["price/a", "price/b"]);
        assert!((resp.by_variant[0].rates.conversion_rate - 1.0).abs() < 1e-12);

        // Per-chat filter.
        let g2 = stats_report(
            &store,
            &StatsQuery {
                bot_id: "bot".into(),
                chat_id: "g2".into(),
                to_ms: 1_000,
                ..Default::default()
            },
            50_000,
            &StoreConfig::default(),
            &target,
        )
        .unwrap();
        let g2_total = g2.total;
        assert_eq!(g2_total.counts.messages, 3);
        assert_eq!(g2_total.human_share_target, 0.5, "the group's own target");
        // to_ms = 0 means "now": the late message is included.
        let all = stats_report(
            &store,
            &StatsQuery {
                bot_id: "bot".into(),
                ..Default::default()
            },
            50_000,
            &StoreConfig::default(),
            &target,
        )
        .unwrap();
        assert_eq!(all.total.counts.messages, 7);
    }
}
