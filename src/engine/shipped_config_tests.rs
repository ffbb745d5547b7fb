//! The shipped operator files (config/operator/intents.yml, rules.yml) load, cover every intent
//! and classify typical messages sensibly with rules alone (the model-missing path).

use std::path::{Path, PathBuf};

use super::{fuse, Catalog, FusionConfig, KeywordLayer, KeywordMatch};
use crate::types::Source;

fn operator(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/operator")
        .join(name)
}

/// A small stand-in for training-data/nlu: the regex and lookup names the shipped rules refer
/// to, and a few synonyms, in the Rasa format the real folder uses.
const FIXTURE_NLU: &str = r#"version: "3.1"
nlu:
- synonym: 退款
  examples: |
    - 退钱
    - 退货款
- synonym: 价格
  examples: |
    - 多少钱
- synonym: 人工
  examples: |
    - 真人
    - 转人工
    - 人工客服
- synonym: 加微信
  examples: |
    - 加v
    - 加vx
- synonym: 兼职
  examples: |
    - 刷单
    - 日结
- synonym: 物流
  examples: |
    - 快递
    - 包裹
- synonym: 发票
  examples: |
    - 开票
- synonym: 营业时间
  examples: |
    - 几点上班
- regex: wechat_contact_ad
  examples: |
    - (?i)(?:加|\+)\s*(?:v|vx|wx|微信)\s*[:：]?\s*([a-z0-9][-_a-z0-9]{4,19})
- regex: earnings_claim
  examples: |
    - (?:日赚|日入|月入)\s*[0-9]+
- regex: share_token
  examples: |
    - [¥￥]([A-Za-z0-9]{6,14})[¥￥]
- regex: url
  examples: |
    - (?i)https?://\S+
- regex: tracking_number
  examples: |
    - (?i)(?:^|[^0-9a-z])(SF[0-9]{10,15})(?:[^0-9]|$)
- regex: order_number
  examples: |
    - (?:^|[^0-9])([0-9]{16,20})(?:[^0-9]|$)
- lookup: payment_channel
  examples: |
    - 支付宝
    - 花呗
    - 云闪付
"#;

fn fixture_layer(catalog: &Catalog) -> KeywordLayer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("resources.yml"), FIXTURE_NLU).unwrap();
    KeywordLayer::load(&operator("rules.yml"), Some(dir.path()), catalog).unwrap()
}

fn decide(layer: &KeywordLayer, text: &str) -> (String, Source, KeywordMatch) {
    let kw = layer.match_text(text);
    let c = fuse(None, &kw, &FusionConfig::default());
    (c.intent, c.source, kw)
}

#[test]
fn every_intent_has_a_rule() {
    let catalog = Catalog::load(&operator("intents.yml")).unwrap();
    let text = std::fs::read_to_string(operator("rules.yml")).unwrap();
    for id in catalog.ids() {
        assert!(
            text.contains(&format!("intent: {id}\n")),
            "no rule for intent {id}"
        );
    }
}

#[test]
fn shipped_rules_classify_typical_messages_without_a_model() {
    let catalog = Catalog::load(&operator("intents.yml")).unwrap();
    let layer = fixture_layer(&catalog);
    let cases = [
        ("转人工", "ask_human"),
        ("有人工客服吗", "ask_human"),
        ("我要投诉你们", "complaint"),
        ("兼职刷单，日赚500，加V详聊", "spam_ads"),
        ("需要的加vx：happy_2024", "spam_ads"),
        ("复制口令￥Xy89Zq12￥打开APP", "spam_ads"),
        ("你好", "greeting"),
        ("你好，多少钱", "price"),
        ("谢谢", "thanks"),
        ("再见", "goodbye"),
        ("能退钱吗", "refund"),
        ("我的快递到哪了", "delivery_tracking"),
        ("SF1234567890", "delivery_tracking"),
        ("能开票吗", "invoice"),
        ("可以用花呗吗", "payment_methods"),
        ("怎么改地址", "change_address"),
        ("有货吗", "stock"),
        ("什么时候发货", "shipping_time"),
        ("这个怎么用", "product_usage"),
        ("你是机器人吗", "ask_bot"),
        ("你是真人吗", "ask_bot"),
        ("群规是什么", "group_rules"),
        ("你们几点上班", "business_hours"),
        ("怎么报名", "event_signup"),
        ("有优惠券吗", "coupon"),
        ("满减怎么算", "promotion_rules"),
        ("会员有什么权益", "membership"),
        ("坏了能修吗", "repair"),
        ("质量怎么样", "product_quality"),
        ("很好用，给你们好评", "praise"),
        ("尺码不合适能换吗", "exchange"),
        ("今天天气真好", "chitchat"),
    ];
    let mut wrong = Vec::new();
    for (text, want) in cases {
        let (got, _, kw) = decide(&layer, text);
        if got != want {
            wrong.push(format!(
                "{text}: got '{got}', want '{want}' ({:?}, tokens {:?})",
                kw.scores,
                layer.tokens(text)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn shipped_always_rules_override() {
    let catalog = Catalog::load(&operator("intents.yml")).unwrap();
    let layer = fixture_layer(&catalog);
    let (intent, source, kw) = decide(&layer, "退款一直不到账，转人工");
    assert_eq!((intent.as_str(), source), ("ask_human", Source::Keyword));
    assert_eq!(kw.always.unwrap().1, "ask_human_explicit");
    let (intent, source, _) = decide(&layer, "加v: abc12345 带你赚钱");
    assert_eq!((intent.as_str(), source), ("spam_ads", Source::Regex));
}

#[test]
fn unrelated_text_asks_to_clarify() {
    let catalog = Catalog::load(&operator("intents.yml")).unwrap();
    let layer = fixture_layer(&catalog);
    let kw = layer.match_text("嗯嗯");
    let c = fuse(None, &kw, &FusionConfig::default());
    assert!(c.needs_clarification);
    assert_eq!(c.source, Source::Fallback);
}
