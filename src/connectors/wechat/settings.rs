//! The `wechat` section of the server configuration: the Official Account / WeCom app accounts
//! whose callbacks the HTTP listener answers at `/wechat/{id}`, and the limits shared by all.
//!
//! Secrets (token, EncodingAESKey, app secret) can be given literally (local use) or through an
//! environment variable (`*_env`, which wins when the variable is set), like the bot tokens.
//! Everything is checked on load, so a typo is a start-up error naming the account and key.

use serde::{Deserialize, Serialize};

use super::{AesKey, WechatError};

/// The platform's API base (both platforms serve the token and send APIs under it).
pub const DEFAULT_API_BASE: &str = "https://api.weixin.qq.com";
/// WeCom's API base.
pub const DEFAULT_WECOM_API_BASE: &str = "https://qyapi.weixin.qq.com";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WechatConfig {
    /// One callback endpoint per account: `GET`/`POST /wechat/{id}` on the HTTP listener.
    pub accounts: Vec<AccountConfig>,
    /// A message is answered within this many ms (the platform waits 5 s, then retries);
    /// past it the answer is `success` and the reply goes later through the send API.
    pub reply_budget_ms: u64,
    /// A request whose `timestamp` is further than this from now is refused (replay).
    pub timestamp_window_s: u64,
    /// Largest callback body, in bytes; beyond it 413.
    pub max_body_bytes: usize,
    /// Official Account API base (token and customer-service send); tests point it at a
    /// local stand-in.
    pub api_base: String,
    /// WeCom API base (gettoken and message/send).
    pub wecom_api_base: String,
    /// Per-user inbound rate limit.
    pub rate_limit: RateLimitConfig,
}

impl Default for WechatConfig {
    fn default() -> Self {
        Self {
            accounts: Vec::new(),
            reply_budget_ms: 4500,
            timestamp_window_s: super::signature::DEFAULT_TIMESTAMP_WINDOW_S,
            max_body_bytes: 64 * 1024,
            api_base: DEFAULT_API_BASE.into(),
            wecom_api_base: DEFAULT_WECOM_API_BASE.into(),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Messages one user may send per minute on one account (sustained rate); 0 = no limit.
    pub per_user_per_minute: u32,
    /// Messages a user may send at once before the per-minute rate applies.
    pub burst: u32,
    /// The answer to a message over the limit (the model is not called). Empty: `success`
    /// (nothing is said). The shipped config/intentd.yml sets a polite sentence.
    pub reply: String,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_user_per_minute: 20,
            burst: 5,
            reply: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// 公众号: `app_id`, customer-service send API.
    OfficialAccount,
    /// 企业微信 self-built app: `corp_id` + `agent_id`, message/send API.
    Wecom,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The path segment: callbacks arrive at `/wechat/{id}`.
    pub id: String,
    pub kind: AccountKind,
    /// The intentd bot that decides for this account (a configured `auth.bots` id).
    pub bot_id: String,
    /// The callback Token set on the platform.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_env: Option<String>,
    /// The 43-character EncodingAESKey (needed when `encrypted`, and always for WeCom).
    #[serde(default)]
    pub encoding_aes_key: Option<String>,
    #[serde(default)]
    pub encoding_aes_key_env: Option<String>,
    /// Official Account AppID.
    #[serde(default)]
    pub app_id: Option<String>,
    /// WeCom CorpID.
    #[serde(default)]
    pub corp_id: Option<String>,
    /// WeCom app AgentId.
    #[serde(default)]
    pub agent_id: Option<i64>,
    /// AppSecret / the WeCom app's Secret, for the access token of the send API.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Encrypted mode (安全模式): `msg_signature` + `<Encrypt>`. WeCom is always encrypted.
    #[serde(default)]
    pub encrypted: bool,
}

/// One account with its secrets read and checked (its `Debug` hides them).
#[derive(Clone)]
pub struct ResolvedAccount {
    pub id: String,
    pub kind: AccountKind,
    pub bot_id: String,
    pub token: String,
    pub encoding_aes_key: Option<String>,
    /// AppID or CorpID.
    pub receiver_id: String,
    pub agent_id: Option<i64>,
    pub secret: String,
    pub encrypted: bool,
}

impl std::fmt::Debug for ResolvedAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedAccount")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("bot_id", &self.bot_id)
            .field("receiver_id", &self.receiver_id)
            .field("agent_id", &self.agent_id)
            .field("encrypted", &self.encrypted)
            .finish_non_exhaustive()
    }
}

/// The value of `literal` / `env` (the variable wins when set and not empty).
fn secret(literal: &Option<String>, env: &Option<String>) -> Option<String> {
    env.as_deref()
        .and_then(|v| std::env::var(v).ok())
        .filter(|v| !v.trim().is_empty())
        .or_else(|| literal.clone().filter(|v| !v.trim().is_empty()))
        .map(|v| v.trim().to_string())
}

impl AccountConfig {
    /// Reads the secrets and checks every key; errors say `wechat.accounts[i] (id): ...`.
    pub fn resolve(&self) -> Result<ResolvedAccount, String> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !id_ok {
            return Err(format!(
                "id {:?} must be 1..=64 letters, digits, '-' or '_' (it is the URL path /wechat/{{id}})",
                self.id
            ));
        }
        if self.bot_id.trim().is_empty() {
            return Err(
                "bot_id is empty: name the intentd bot that decides for this account".into(),
            );
        }
        let token = secret(&self.token, &self.token_env).ok_or_else(|| {
            format!(
                "no token: set token, or token_env{}",
                env_hint(&self.token_env)
            )
        })?;
        let encrypted = self.encrypted || self.kind == AccountKind::Wecom;
        let encoding_aes_key = secret(&self.encoding_aes_key, &self.encoding_aes_key_env);
        match &encoding_aes_key {
            Some(k) => AesKey::from_encoding_aes_key(k)
                .map(|_| ())
                .map_err(|e: WechatError| format!("encoding_aes_key: {e}"))?,
            None if encrypted => {
                return Err(format!(
                    "encrypted mode needs the 43-character encoding_aes_key (or encoding_aes_key_env{}){}",
                    env_hint(&self.encoding_aes_key_env),
                    if self.kind == AccountKind::Wecom {
                        "; WeCom callbacks are always encrypted"
                    } else {
                        ""
                    }
                ))
            }
            None => {}
        }
        let (receiver_id, agent_id) = match self.kind {
            AccountKind::OfficialAccount => {
                if self.corp_id.is_some() || self.agent_id.is_some() {
                    return Err(
                        "corp_id / agent_id are for kind: wecom; an official_account has app_id"
                            .into(),
                    );
                }
                let app = self.app_id.clone().unwrap_or_default();
                if app.trim().is_empty() {
                    return Err("app_id (the Official Account's AppID) is required".into());
                }
                (app.trim().to_string(), None)
            }
            AccountKind::Wecom => {
                if self.app_id.is_some() {
                    return Err("app_id is for kind: official_account; WeCom has corp_id".into());
                }
                let corp = self.corp_id.clone().unwrap_or_default();
                if corp.trim().is_empty() {
                    return Err("corp_id (the WeCom CorpID) is required".into());
                }
                let agent = self
                    .agent_id
                    .ok_or("agent_id (the WeCom app's AgentId) is required")?;
                (corp.trim().to_string(), Some(agent))
            }
        };
        let secret = secret(&self.secret, &self.secret_env).ok_or_else(|| {
            format!(
                "no secret (needed for the send API's access token): set secret, or secret_env{}",
                env_hint(&self.secret_env)
            )
        })?;
        Ok(ResolvedAccount {
            id: self.id.clone(),
            kind: self.kind,
            bot_id: self.bot_id.clone(),
            token,
            encoding_aes_key,
            receiver_id,
            agent_id,
            secret,
            encrypted,
        })
    }
}

fn env_hint(env: &Option<String>) -> String {
    match env {
        Some(v) => format!(" ({v} is unset or empty)"),
        None => String::new(),
    }
}

/// Bounds of the shared keys.
pub const REPLY_BUDGET_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=4900;
pub const TIMESTAMP_WINDOW_S_RANGE: std::ops::RangeInclusive<u64> = 1..=86_400;
pub const MAX_BODY_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=1024 * 1024;

impl WechatConfig {
    /// Checks every key; `known_bot` says whether a bot id is configured.
    pub fn validate(
        &self,
        known_bot: impl Fn(&str) -> bool,
    ) -> Result<Vec<ResolvedAccount>, String> {
        if !REPLY_BUDGET_MS_RANGE.contains(&self.reply_budget_ms) {
            return Err(format!(
                "wechat.reply_budget_ms = {} is outside 1..=4900 (the platform gives up after 5000 ms)",
                self.reply_budget_ms
            ));
        }
        if !TIMESTAMP_WINDOW_S_RANGE.contains(&self.timestamp_window_s) {
            return Err(format!(
                "wechat.timestamp_window_s = {} is outside 1..=86400",
                self.timestamp_window_s
            ));
        }
        if !MAX_BODY_BYTES_RANGE.contains(&self.max_body_bytes) {
            return Err(format!(
                "wechat.max_body_bytes = {} is outside 1024..=1048576",
                self.max_body_bytes
            ));
        }
        for (name, base) in [
            ("api_base", &self.api_base),
            ("wecom_api_base", &self.wecom_api_base),
        ] {
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return Err(format!(
                    "wechat.{name} = {base:?} must start with http:// or https://"
                ));
            }
        }
        if self.rate_limit.per_user_per_minute > 0 && self.rate_limit.burst == 0 {
            return Err(
                "wechat.rate_limit.burst must be at least 1 when per_user_per_minute is set".into(),
            );
        }
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            let r = a
                .resolve()
                .map_err(|e| format!("wechat.accounts[{i}] ({}): {e}", a.id))?;
            if !seen.insert(r.id.clone()) {
                return Err(format!(
                    "wechat.accounts[{i}]: id {:?} is listed twice",
                    r.id
                ));
            }
            if !known_bot(&r.bot_id) {
                return Err(format!(
                    "wechat.accounts[{i}] ({}): bot_id {:?} is not a configured bot (auth.bots)",
                    r.id, r.bot_id
                ));
            }
            out.push(r);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    fn oa() -> AccountConfig {
        AccountConfig {
            id: "shop".into(),
            kind: AccountKind::OfficialAccount,
            bot_id: "demo".into(),
            token: Some("tok".into()),
            token_env: None,
            encoding_aes_key: Some(KEY.into()),
            encoding_aes_key_env: None,
            app_id: Some("wx1".into()),
            corp_id: None,
            agent_id: None,
            secret: Some("s".into()),
            secret_env: None,
            encrypted: true,
        }
    }

    fn check(a: AccountConfig) -> Result<Vec<ResolvedAccount>, String> {
        WechatConfig {
            accounts: vec![a],
            ..WechatConfig::default()
        }
        .validate(|b| b == "demo")
    }

    #[test]
    fn a_good_account_resolves() {
        let r = check(oa()).unwrap();
        assert_eq!(r[0].receiver_id, "wx1");
        assert!(r[0].encrypted);
        let shown = format!("{:?}", r[0]);
        assert!(
            !shown.contains(KEY) && !shown.contains("\"tok\""),
            "{shown}"
        );
    }

    #[test]
    fn each_mistake_is_named() {
        let cases: Vec<(AccountConfig, &str)> = vec![
            (
                AccountConfig {
                    encoding_aes_key: Some("short".into()),
                    ..oa()
                },
                "must be 43 characters",
            ),
            (
                AccountConfig {
                    encoding_aes_key: None,
                    ..oa()
                },
                "encrypted mode needs the 43-character encoding_aes_key",
            ),
            (
                AccountConfig {
                    app_id: None,
                    ..oa()
                },
                "app_id",
            ),
            (
                AccountConfig {
                    bot_id: "nobody".into(),
                    ..oa()
                },
                "not a configured bot",
            ),
            (
                AccountConfig {
                    id: "a/b".into(),
                    ..oa()
                },
                "URL path",
            ),
            (
                AccountConfig {
                    token: None,
                    token_env: Some("INTENTD_TEST_SURELY_UNSET_VAR".into()),
                    ..oa()
                },
                "INTENTD_TEST_SURELY_UNSET_VAR is unset",
            ),
            (
                AccountConfig {
                    kind: AccountKind::Wecom,
                    app_id: None,
                    corp_id: Some("ww1".into()),
                    ..oa()
                },
                "agent_id",
            ),
        ];
        for (a, needle) in cases {
            let e = check(a).unwrap_err();
            assert!(
                e.contains(needle) && e.contains("wechat.accounts[0]"),
                "{e}"
            );
        }
        let e = WechatConfig {
            reply_budget_ms: 6000,
            ..WechatConfig::default()
        }
        .validate(|_| true)
        .unwrap_err();
        assert!(e.contains("reply_budget_ms = 6000"), "{e}");
        let e = WechatConfig {
            accounts: vec![oa(), oa()],
            ..WechatConfig::default()
        }
        .validate(|_| true)
        .unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
    }
}
