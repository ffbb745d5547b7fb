//! The intent catalog (`config/operator/intents.yml`): which intents exist, what a person calls
//! them, and whether a message with that intent goes to a human.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use marked_yaml::Node;
use serde::{Deserialize, Serialize};

use crate::data::yaml::{scalar_text, type_name, Seg, YamlFile};
use crate::data::FileError;

/// Whether messages with an intent are handed to a human agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Handoff {
    /// Always hand off (complaints, explicit requests for a person).
    Always,
    /// The bot answers by itself.
    Never,
    /// The policy decides (e.g. after an unresolved exchange or low confidence).
    Auto,
}

impl Handoff {
    fn parse(s: &str) -> Option<Handoff> {
        match s {
            "always" => Some(Handoff::Always),
            "never" => Some(Handoff::Never),
            "auto" => Some(Handoff::Auto),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentInfo {
    pub id: String,
    pub display_name: String,
    pub handoff: Handoff,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    path: PathBuf,
    intents: Vec<IntentInfo>,
    index: HashMap<String, usize>,
}

const ENTRY_KEYS: &str = "id, display_name, handoff, description";

impl Catalog {
    pub fn load(path: &Path) -> Result<Catalog, FileError> {
        Self::from_file(&YamlFile::load(path)?)
    }

    /// Parses catalog text; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Catalog, FileError> {
        Self::from_file(&YamlFile::parse(path, text)?)
    }

    fn from_file(file: &YamlFile) -> Result<Catalog, FileError> {
        let Some(Node::Mapping(top)) = &file.root else {
            return Err(file.error(&[], "expected a mapping with \"intents\", found nothing"));
        };
        let mut list = None;
        for (k, v) in top.iter() {
            let key = k.as_str();
            match key {
                "intents" => list = Some(v),
                "version" => {}
                _ => {
                    return Err(file.error(
                        &[Seg::Key(key)],
                        format!("unknown key '{key}' (expected intents)"),
                    ))
                }
            }
        }
        let Some(list) = list else {
            return Err(file.error(&[], "missing key \"intents\""));
        };
        let Node::Sequence(items) = list else {
            return Err(file.error(
                &[Seg::Key("intents")],
                format!("\"intents\" must be a list, found {}", type_name(list)),
            ));
        };
        let mut intents: Vec<IntentInfo> = Vec::with_capacity(items.len());
        let mut index = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let at = [Seg::Key("intents"), Seg::Index(i)];
            let Node::Mapping(m) = item else {
                return Err(file.error(
                    &at,
                    format!(
                        "intent entry must be a mapping ({ENTRY_KEYS}), found {}",
                        type_name(item)
                    ),
                ));
            };
            let mut id = None;
            let mut display_name = None;
            let mut handoff = Handoff::Never;
            let mut description = String::new();
            for (k, v) in m.iter() {
                let key = k.as_str();
                let key_at = [at[0], at[1], Seg::Key(key)];
                let text = || {
                    scalar_text(v)
                        .map(|s| s.trim().to_string())
                        .unwrap_or_default()
                };
                match key {
                    "id" => id = Some(text()),
                    "display_name" => display_name = Some(text()),
                    "description" => description = text(),
                    "handoff" => {
                        handoff = Handoff::parse(&text()).ok_or_else(|| {
                            file.error(
                                &key_at,
                                format!(
                                    "handoff must be always, never or auto, found '{}'",
                                    text()
                                ),
                            )
                        })?;
                    }
                    _ => {
                        return Err(file.error(
                            &key_at,
                            format!("unknown key '{key}' (expected {ENTRY_KEYS})"),
                        ))
                    }
                }
            }
            let id = id.unwrap_or_default();
            if id.is_empty() {
                return Err(file.error(&at, "intent entry is missing id"));
            }
            let id_at = [at[0], at[1], Seg::Key("id")];
            if !is_intent_id(&id) {
                return Err(file.error(
                    &id_at,
                    format!("intent id '{id}' must be lower-case letters, digits and _"),
                ));
            }
            if let Some(&first) = index.get(&id) {
                let first_line =
                    file.line(&[Seg::Key("intents"), Seg::Index(first), Seg::Key("id")]);
                return Err(file.error(
                    &id_at,
                    format!("duplicate intent '{id}' (first defined at line {first_line})"),
                ));
            }
            let display_name = display_name.unwrap_or_default();
            if display_name.is_empty() {
                return Err(file.error(&at, format!("intent '{id}' is missing display_name")));
            }
            index.insert(id.clone(), intents.len());
            intents.push(IntentInfo {
                id,
                display_name,
                handoff,
                description,
            });
        }
        if intents.is_empty() {
            return Err(file.error(&[Seg::Key("intents")], "no intents defined"));
        }
        Ok(Catalog {
            path: file.path.clone(),
            intents,
            index,
        })
    }

    /// The file this catalog was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All intents in file order.
    pub fn intents(&self) -> &[IntentInfo] {
        &self.intents
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.intents.iter().map(|i| i.id.as_str())
    }

    pub fn len(&self) -> usize {
        self.intents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.intents.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Position of `id` in `intents()`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn get(&self, id: &str) -> Option<&IntentInfo> {
        self.index_of(id).map(|i| &self.intents[i])
    }

    pub fn display_name(&self, id: &str) -> Option<&str> {
        self.get(id).map(|i| i.display_name.as_str())
    }

    pub fn handoff(&self, id: &str) -> Option<Handoff> {
        self.get(id).map(|i| i.handoff)
    }
}

fn is_intent_id(id: &str) -> bool {
    id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Catalog, FileError> {
        Catalog::parse(Path::new("intents.yml"), text)
    }

    #[test]
    fn parses_entries() {
        let c = parse(
            "intents:\n  - id: refund\n    display_name: 退货退款\n    handoff: auto\n    description: 要退钱\n  - id: complaint\n    display_name: 投诉\n    handoff: always\n  - id: greeting\n    display_name: 问候\n",
        )
        .unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c.display_name("refund"), Some("退货退款"));
        assert_eq!(c.handoff("complaint"), Some(Handoff::Always));
        assert_eq!(c.handoff("greeting"), Some(Handoff::Never));
        assert_eq!(c.handoff("nope"), None);
        assert_eq!(c.index_of("greeting"), Some(2));
        assert_eq!(
            c.ids().collect::<Vec<_>>(),
            vec!["refund", "complaint", "greeting"]
        );
        assert_eq!(c.get("refund").unwrap().description, "要退钱");
    }

    #[test]
    fn errors_point_at_lines() {
        let cases = [
            ("intents:\n  - id: a\n    display_name: A\n    colour: red\n", "intents.yml:4: unknown key 'colour' (expected id, display_name, handoff, description)"),
            ("intents:\n  - id: a\n    display_name: A\n  - id: a\n    display_name: B\n", "intents.yml:4: duplicate intent 'a' (first defined at line 2)"),
            ("intents:\n  - id: a\n    display_name: A\n  - id: b\n    handoff: never\n", "intents.yml:4: intent 'b' is missing display_name"),
            ("intents:\n  - id: a\n    display_name: A\n    handoff: sometimes\n", "intents.yml:4: handoff must be always, never or auto, found 'sometimes'"),
            ("intents:\n  - id: Bad-Id\n    display_name: A\n", "intents.yml:2: intent id 'Bad-Id' must be lower-case letters, digits and _"),
            ("intents:\n  - display_name: A\n", "intents.yml:2: intent entry is missing id"),
            ("intent:\n  - id: a\n", "intents.yml:1: unknown key 'intent' (expected intents)"),
            ("intents: []\n", "intents.yml:1: no intents defined"),
            ("intents:\n  - id: a\n    display_name: [x\n", "intents.yml:4: invalid YAML: did not find expected ',' or ']'"),
        ];
        for (text, want) in cases {
            let got = parse(text).unwrap_err().to_string();
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn shipped_catalog_has_the_27_contract_intents() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/operator/intents.yml");
        let c = Catalog::load(&path).unwrap();
        let want = [
            ("greeting", "问候"),
            ("thanks", "感谢"),
            ("goodbye", "告别"),
            ("price", "询价"),
            ("coupon", "优惠券/折扣"),
            ("promotion_rules", "活动规则"),
            ("stock", "库存/有货"),
            ("shipping_time", "发货时间"),
            ("delivery_tracking", "物流查询"),
            ("refund", "退货退款"),
            ("exchange", "换货"),
            ("repair", "售后维修"),
            ("complaint", "投诉"),
            ("ask_human", "转人工"),
            ("invoice", "发票"),
            ("payment_methods", "支付方式"),
            ("change_address", "修改地址"),
            ("membership", "会员/VIP"),
            ("event_signup", "入群/活动报名"),
            ("group_rules", "群规"),
            ("business_hours", "营业时间"),
            ("product_usage", "使用方法"),
            ("product_quality", "产品质量"),
            ("praise", "表扬好评"),
            ("spam_ads", "广告/垃圾信息"),
            ("ask_bot", "是否机器人"),
            ("chitchat", "闲聊"),
        ];
        assert_eq!(c.len(), want.len());
        for (id, name) in want {
            assert_eq!(c.display_name(id), Some(name), "{id}");
            assert!(
                !c.get(id).unwrap().description.is_empty(),
                "{id} has no description"
            );
        }
        assert_eq!(c.handoff("complaint"), Some(Handoff::Always));
        assert_eq!(c.handoff("ask_human"), Some(Handoff::Always));
        let always: Vec<&str> = c
            .intents()
            .iter()
            .filter(|i| i.handoff == Handoff::Always)
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(always, vec!["complaint", "ask_human"]);
    }
}
