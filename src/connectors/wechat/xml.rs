//! Callback XML: reading the platform's flat `<xml>` documents and writing passive replies.
//!
//! Reading is deliberately narrow: the body must be one `<xml>` root with elements (text or
//! CDATA) inside; a DOCTYPE is refused outright (so no DTD and no entity definitions), only the
//! five predefined entities and character references are resolved, and size, element count and
//! depth are bounded before anything is trusted. quick-xml never fetches or expands anything.
//!
//! Every leaf element is kept as a `(path, text)` field; nested elements (WeCom's
//! `ScanCodeInfo/ScanType`, for example) get dotted paths like `ScanCodeInfo.ScanType`.

use quick_xml::escape::unescape;
use quick_xml::events::Event;
use quick_xml::Reader;

use super::WechatError;

/// Bounds applied to a callback body (and to the decrypted message inside it).
#[derive(Debug, Clone)]
pub struct XmlLimits {
    /// Largest accepted body; the HTTP layer should refuse larger bodies before reading them.
    pub max_body_bytes: usize,
    /// Elements in one document (root included).
    pub max_elements: usize,
    /// Nesting depth (root = 1).
    pub max_depth: usize,
}

impl Default for XmlLimits {
    fn default() -> Self {
        // Callback messages are a few hundred bytes; 64 KiB leaves room for long articles.
        XmlLimits {
            max_body_bytes: 64 * 1024,
            max_elements: 256,
            max_depth: 4,
        }
    }
}

impl XmlLimits {
    pub fn check_size(&self, size: usize) -> Result<(), WechatError> {
        if size > self.max_body_bytes {
            return Err(WechatError::OversizedBody {
                size,
                limit: self.max_body_bytes,
            });
        }
        Ok(())
    }
}

/// The leaf elements of a callback document, in document order.
pub type Fields = Vec<(String, String)>;

/// The first field called `name`.
pub fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn broken(msg: impl Into<String>) -> WechatError {
    WechatError::BrokenXml(msg.into())
}

/// Reads a callback document into its leaf fields.
pub fn read_fields(body: &str, limits: &XmlLimits) -> Result<Fields, WechatError> {
    limits.check_size(body.len())?;
    let mut reader = Reader::from_str(body);
    // Not trimmed by the reader: an entity splits text into several events, and trimming each
    // would eat the spaces around it. Leaf values are trimmed in `leaf_value` instead.
    reader.config_mut().trim_text(false);
    let mut stack: Vec<String> = Vec::new();
    let mut text = Text::default();
    let mut has_child = Vec::<bool>::new();
    let mut fields = Fields::new();
    let mut elements = 0usize;
    let mut root_done = false;
    loop {
        let pos = reader.buffer_position();
        let ev = reader
            .read_event()
            .map_err(|e| broken(format!("{e} (near byte {pos})")))?;
        match ev {
            Event::DocType(_) => return Err(WechatError::DtdRefused),
            Event::Decl(_) | Event::Comment(_) => {}
            Event::PI(_) => return Err(broken("processing instructions are not accepted")),
            Event::Start(e) | Event::Empty(e) if root_done => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                return Err(broken(format!(
                    "<{name}> after the end of the root element"
                )));
            }
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                open(&mut stack, &mut has_child, &mut elements, &name, limits)?;
                text.clear();
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                open(&mut stack, &mut has_child, &mut elements, &name, limits)?;
                close(&mut stack, &mut has_child, &mut fields, Text::default());
                root_done = stack.is_empty();
            }
            Event::End(_) => {
                // quick-xml has already checked that the end tag matches the open one.
                close(
                    &mut stack,
                    &mut has_child,
                    &mut fields,
                    std::mem::take(&mut text),
                );
                root_done = stack.is_empty();
            }
            Event::Text(t) => {
                let s = t
                    .xml_content()
                    .map_err(|e| broken(format!("text is not valid: {e}")))?;
                if stack.is_empty() {
                    if s.trim().is_empty() {
                        continue;
                    }
                    return Err(broken("text outside the <xml> root element"));
                }
                text.push(false, &s);
            }
            Event::CData(c) => {
                if stack.is_empty() {
                    return Err(broken("CDATA outside the <xml> root element"));
                }
                let s = c
                    .decode()
                    .map_err(|e| broken(format!("CDATA is not valid: {e}")))?;
                text.push(true, &s);
            }
            Event::GeneralRef(r) => {
                if stack.is_empty() {
                    return Err(broken("an entity outside the <xml> root element"));
                }
                let name = r.decode().map_err(|e| broken(e.to_string()))?;
                let raw = format!("&{name};");
                let s = unescape(&raw).map_err(|_| {
                    broken(format!(
                        "unknown entity {raw}: only the predefined entities and character references are resolved"
                    ))
                })?;
                text.push(false, &s);
            }
            Event::Eof => break,
        }
        if text.bytes > limits.max_body_bytes {
            return Err(WechatError::OversizedBody {
                size: text.bytes,
                limit: limits.max_body_bytes,
            });
        }
    }
    if !stack.is_empty() {
        return Err(broken(format!(
            "the document ends inside <{}>",
            stack.join("><")
        )));
    }
    if elements == 0 {
        return Err(broken("no <xml> root element"));
    }
    Ok(fields)
}

fn open(
    stack: &mut Vec<String>,
    has_child: &mut Vec<bool>,
    elements: &mut usize,
    name: &str,
    limits: &XmlLimits,
) -> Result<(), WechatError> {
    if stack.is_empty() && name != "xml" {
        return Err(broken(format!(
            "the root element must be <xml>, found <{name}>"
        )));
    }
    *elements += 1;
    if *elements > limits.max_elements {
        return Err(broken(format!(
            "more than {} elements",
            limits.max_elements
        )));
    }
    if stack.len() + 1 > limits.max_depth {
        return Err(broken(format!(
            "elements nested deeper than {} levels",
            limits.max_depth
        )));
    }
    if let Some(parent) = has_child.last_mut() {
        *parent = true;
    }
    stack.push(name.to_string());
    has_child.push(false);
    Ok(())
}

/// The pieces of one element's content: (is CDATA, text).
#[derive(Default)]
struct Text {
    parts: Vec<(bool, String)>,
    bytes: usize,
}

impl Text {
    fn push(&mut self, cdata: bool, s: &str) {
        self.bytes += s.len();
        self.parts.push((cdata, s.to_string()));
    }

    fn clear(&mut self) {
        self.parts.clear();
        self.bytes = 0;
    }

    /// CDATA is taken as written (with any non-blank text beside it); plain text is trimmed,
    /// as the indentation the platform's samples use around values is not part of them.
    fn leaf_value(self) -> String {
        if self.parts.iter().any(|(c, _)| *c) {
            self.parts
                .into_iter()
                .filter(|(c, s)| *c || !s.trim().is_empty())
                .map(|(_, s)| s)
                .collect()
        } else {
            let all: String = self.parts.into_iter().map(|(_, s)| s).collect();
            all.trim().to_string()
        }
    }
}

fn close(stack: &mut Vec<String>, has_child: &mut Vec<bool>, fields: &mut Fields, text: Text) {
    let leaf = !has_child.pop().unwrap_or(false);
    if leaf && stack.len() > 1 {
        fields.push((stack[1..].join("."), text.leaf_value()));
    }
    stack.pop();
}

/// What a callback message is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundKind {
    /// `MsgType` text.
    Text {
        content: String,
        msg_id: Option<String>,
    },
    /// `MsgType` event (subscribe, click, enter_agent, ...).
    Event {
        event: String,
        event_key: Option<String>,
    },
    /// Image, voice, video, location, link, ...: not classified, but still deduplicated.
    Other { msg_id: Option<String> },
}

/// A parsed callback message (plain mode, or the inside of an encrypted one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub to_user: String,
    pub from_user: String,
    pub create_time: i64,
    pub msg_type: String,
    /// WeCom apps only.
    pub agent_id: Option<String>,
    pub kind: InboundKind,
    /// Every leaf field, for what the typed view does not cover.
    pub fields: Fields,
}

impl Inbound {
    /// The key a platform retry repeats: `MsgId` for messages, `FromUserName` + `CreateTime`
    /// for events (which have no MsgId), as the platform documents for deduplication.
    pub fn dedup_key(&self) -> String {
        let msg_id = match &self.kind {
            InboundKind::Text { msg_id, .. } | InboundKind::Other { msg_id } => msg_id.as_deref(),
            InboundKind::Event { .. } => None,
        };
        match msg_id {
            Some(id) => format!("msg:{id}"),
            None => format!("event:{}:{}", self.from_user, self.create_time),
        }
    }
}

/// Parses a callback message; the four envelope fields are required.
pub fn parse_inbound(body: &str, limits: &XmlLimits) -> Result<Inbound, WechatError> {
    let fields = read_fields(body, limits)?;
    let get = |k: &str| field(&fields, k).map(str::to_string);
    let need = |k: &'static str| -> Result<String, WechatError> {
        field(&fields, k)
            .filter(|v| !v.trim().is_empty())
            .map(str::to_string)
            .ok_or(WechatError::Missing(k))
    };
    let to_user = need("ToUserName")?;
    let from_user = need("FromUserName")?;
    let create_time_text = need("CreateTime")?;
    let create_time = create_time_text.trim().parse().map_err(|_| {
        broken(format!(
            "CreateTime {:?} is not Unix seconds",
            create_time_text.chars().take(32).collect::<String>()
        ))
    })?;
    let msg_type = need("MsgType")?;
    let msg_id = get("MsgId").filter(|v| !v.is_empty());
    let kind = match msg_type.as_str() {
        "text" => InboundKind::Text {
            content: get("Content").unwrap_or_default(),
            msg_id,
        },
        "event" => InboundKind::Event {
            event: need("Event")?,
            event_key: get("EventKey").filter(|v| !v.is_empty()),
        },
        _ => InboundKind::Other { msg_id },
    };
    Ok(Inbound {
        to_user,
        from_user,
        create_time,
        msg_type,
        agent_id: get("AgentID"),
        kind,
        fields,
    })
}

/// `text` as CDATA: a `]]>` inside is split across two sections, and characters XML cannot
/// carry (control characters other than tab / newline / carriage return) are dropped.
pub fn cdata(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|&c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
        .collect();
    format!("<![CDATA[{}]]>", clean.replace("]]>", "]]]]><![CDATA[>"))
}

/// A passive text reply: to the user who wrote (`to_user`), from the account (`from_user`).
/// Cut or split `content` with [`super::text_limit`] first: the platform drops replies over
/// 2,048 bytes.
pub fn text_reply(to_user: &str, from_user: &str, create_time: i64, content: &str) -> String {
    format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content>{}</Content></xml>",
        cdata(to_user),
        cdata(from_user),
        cdata(content)
    )
}

/// The answer to an encrypted callback: the encrypted reply with its signature.
pub fn encrypted_envelope(
    encrypt: &str,
    msg_signature: &str,
    timestamp: &str,
    nonce: &str,
) -> String {
    format!(
        "<xml><Encrypt>{}</Encrypt><MsgSignature>{}</MsgSignature><TimeStamp>{}</TimeStamp><Nonce>{}</Nonce></xml>",
        cdata(encrypt),
        cdata(msg_signature),
        timestamp.chars().filter(char::is_ascii_digit).collect::<String>(),
        cdata(nonce)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT_MSG: &str = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[怎么退货？]]></Content><MsgId>1234567890123456</MsgId></xml>";

    fn lim() -> XmlLimits {
        XmlLimits::default()
    }

    #[test]
    fn a_text_message_parses() {
        let m = parse_inbound(TEXT_MSG, &lim()).unwrap();
        assert_eq!(m.to_user, "gh_1");
        assert_eq!(m.from_user, "oUser");
        assert_eq!(m.create_time, 1_700_000_000);
        assert_eq!(
            m.kind,
            InboundKind::Text {
                content: "怎么退货？".into(),
                msg_id: Some("1234567890123456".into())
            }
        );
        assert_eq!(m.dedup_key(), "msg:1234567890123456");
    }

    #[test]
    fn events_dedup_on_sender_and_time_and_nested_fields_get_paths() {
        let ev = "<xml>\n  <ToUserName><![CDATA[ww1]]></ToUserName>\n  <FromUserName><![CDATA[zhang]]></FromUserName>\n  <CreateTime>1700000001</CreateTime>\n  <MsgType><![CDATA[event]]></MsgType>\n  <Event><![CDATA[scancode_push]]></Event>\n  <EventKey><![CDATA[k1]]></EventKey>\n  <ScanCodeInfo><ScanType><![CDATA[qrcode]]></ScanType><ScanResult>a &amp; b &#x4E2D;</ScanResult></ScanCodeInfo>\n  <AgentID>1000002</AgentID>\n</xml>";
        let m = parse_inbound(ev, &lim()).unwrap();
        assert_eq!(
            m.kind,
            InboundKind::Event {
                event: "scancode_push".into(),
                event_key: Some("k1".into())
            }
        );
        assert_eq!(m.dedup_key(), "event:zhang:1700000001");
        assert_eq!(m.agent_id.as_deref(), Some("1000002"));
        assert_eq!(field(&m.fields, "ScanCodeInfo.ScanType"), Some("qrcode"));
        assert_eq!(
            field(&m.fields, "ScanCodeInfo.ScanResult"),
            Some("a & b 中")
        );
    }

    #[test]
    fn doctype_and_entities_are_refused() {
        let xxe = "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><xml><Content>&x;</Content></xml>";
        assert_eq!(
            read_fields(xxe, &lim()).unwrap_err(),
            WechatError::DtdRefused
        );
        let bomb = "<xml><Content>&lol9;</Content></xml>";
        let e = read_fields(bomb, &lim()).unwrap_err();
        assert!(
            matches!(&e, WechatError::BrokenXml(m) if m.contains("&lol9;")),
            "{e}"
        );
    }

    #[test]
    fn broken_documents_are_named() {
        for (body, needle) in [
            ("", "no <xml> root"),
            ("<xml><a>1</b></xml>", "near byte"),
            ("<xml><a>1</a>", "ends inside <xml>"),
            ("<html></html>", "root element must be <xml>"),
            ("<xml/><xml/>", "after the end"),
            ("hello", "outside"),
            ("<?pi x?><xml/>", "processing instructions"),
        ] {
            let e = read_fields(body, &lim()).unwrap_err();
            assert!(e.to_string().contains(needle), "{body:?}: {e}");
        }
        let no_from = "<xml><ToUserName>a</ToUserName><CreateTime>1</CreateTime><MsgType>text</MsgType></xml>";
        assert_eq!(
            parse_inbound(no_from, &lim()).unwrap_err(),
            WechatError::Missing("FromUserName")
        );
        let bad_time = "<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><CreateTime>soon</CreateTime><MsgType>text</MsgType></xml>";
        assert!(parse_inbound(bad_time, &lim())
            .unwrap_err()
            .to_string()
            .contains("CreateTime"));
    }

    #[test]
    fn limits_hold() {
        let small = XmlLimits {
            max_body_bytes: 64,
            ..lim()
        };
        assert_eq!(
            read_fields(TEXT_MSG, &small).unwrap_err(),
            WechatError::OversizedBody {
                size: TEXT_MSG.len(),
                limit: 64
            }
        );
        let many = format!("<xml>{}</xml>", "<a>1</a>".repeat(300));
        assert!(read_fields(&many, &lim())
            .unwrap_err()
            .to_string()
            .contains("more than 256 elements"));
        let deep = "<xml><a><b><c><d>1</d></c></b></a></xml>";
        assert!(read_fields(deep, &lim())
            .unwrap_err()
            .to_string()
            .contains("deeper than 4"));
    }

    #[test]
    fn replies_round_trip_through_the_reader_even_with_cdata_terminators() {
        let content = "价格]]><b>不是标签</b>\u{0007}结束";
        let r = text_reply("oUser", "gh_1", 1_700_000_002, content);
        let f = read_fields(&r, &lim()).unwrap();
        assert_eq!(field(&f, "Content"), Some("价格]]><b>不是标签</b>结束"));
        assert_eq!(field(&f, "ToUserName"), Some("oUser"));
        assert_eq!(field(&f, "MsgType"), Some("text"));
        let env = encrypted_envelope("abc+/=", "sig", "1700000002", "n]]>1");
        let f = read_fields(&env, &lim()).unwrap();
        assert_eq!(field(&f, "Nonce"), Some("n]]>1"));
        assert_eq!(field(&f, "TimeStamp"), Some("1700000002"));
    }
}
