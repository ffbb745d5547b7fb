//! The platform's send-message API, for answers that missed the passive-reply budget.
//!
//! - Official Account: `GET {api_base}/cgi-bin/token?grant_type=client_credential&appid=&secret=`
//!   then `POST {api_base}/cgi-bin/message/custom/send?access_token=` with
//!   `{"touser","msgtype":"text","text":{"content"}}` (the customer-service message);
//! - WeCom: `GET {api_base}/cgi-bin/gettoken?corpid=&corpsecret=` then
//!   `POST {api_base}/cgi-bin/message/send?access_token=` with
//!   `{"touser","msgtype":"text","agentid","text":{"content"}}`.
//!
//! The access token is cached until `expires_in` minus a margin (by the service clock) and
//! fetched again once when the platform says it expired or is invalid (40001, 40014, 42001).

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::settings::{AccountKind, ResolvedAccount};
use crate::clock::SharedClock;

/// errcodes meaning "the access token is invalid or expired: fetch a new one".
pub const TOKEN_ERRCODES: [i64; 3] = [40001, 40014, 42001];
/// A cached token is dropped this long before the platform says it expires.
const EXPIRY_MARGIN_MS: i64 = 300_000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SendError {
    #[error("HTTP request to {what} failed: {detail}")]
    Http { what: &'static str, detail: String },
    #[error("{what} answered errcode {errcode}: {errmsg}")]
    Platform {
        what: &'static str,
        errcode: i64,
        errmsg: String,
    },
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: i64,
}

#[derive(Debug, Deserialize)]
struct SendAnswer {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

/// One account's sender: its token cache and the HTTP client.
pub struct SendApi {
    account: ResolvedAccount,
    api_base: String,
    http: reqwest::Client,
    clock: SharedClock,
    /// (token, expires at ms); a tokio mutex, so concurrent sends fetch the token once.
    token: tokio::sync::Mutex<Option<(String, i64)>>,
}

impl SendApi {
    pub fn new(
        account: ResolvedAccount,
        api_base: &str,
        http: reqwest::Client,
        clock: SharedClock,
    ) -> Self {
        SendApi {
            account,
            api_base: api_base.trim_end_matches('/').to_string(),
            http,
            clock,
            token: tokio::sync::Mutex::new(None),
        }
    }

    /// Sends `content` as a text message to `user` (OpenID / WeCom UserID).
    pub async fn send_text(&self, user: &str, content: &str) -> Result<(), SendError> {
        let token = self.access_token(false).await?;
        match self.post_text(&token, user, content).await {
            Err(SendError::Platform { errcode, .. }) if TOKEN_ERRCODES.contains(&errcode) => {
                tracing::info!(account = %self.account.id, errcode, "access token refused; fetching a new one");
                let token = self.access_token(true).await?;
                self.post_text(&token, user, content).await
            }
            r => r,
        }
    }

    async fn access_token(&self, refresh: bool) -> Result<String, SendError> {
        let mut cached = self.token.lock().await;
        let now = self.clock.now_ms();
        if !refresh {
            if let Some((t, until)) = cached.as_ref() {
                if now < *until {
                    return Ok(t.clone());
                }
            }
        }
        let (url, query): (String, Vec<(&str, &str)>) = match self.account.kind {
            AccountKind::OfficialAccount => (
                format!("{}/cgi-bin/token", self.api_base),
                vec![
                    ("grant_type", "client_credential"),
                    ("appid", &self.account.receiver_id),
                    ("secret", &self.account.secret),
                ],
            ),
            AccountKind::Wecom => (
                format!("{}/cgi-bin/gettoken", self.api_base),
                vec![
                    ("corpid", &self.account.receiver_id),
                    ("corpsecret", &self.account.secret),
                ],
            ),
        };
        let what = "the access-token API";
        let answer: TokenAnswer = self
            .http
            .get(&url)
            .query(&query)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| http_error(what, e))?
            .json()
            .await
            .map_err(|e| http_error(what, e))?;
        if answer.errcode != 0 || answer.access_token.is_empty() {
            *cached = None;
            return Err(SendError::Platform {
                what,
                errcode: answer.errcode,
                errmsg: if answer.errmsg.is_empty() {
                    "no access_token in the answer".into()
                } else {
                    answer.errmsg
                },
            });
        }
        let lifetime_ms = answer.expires_in.max(0) * 1000;
        // Short-lived tokens (tests, odd answers) are kept for half their life instead.
        let keep_ms = if lifetime_ms > 2 * EXPIRY_MARGIN_MS {
            lifetime_ms - EXPIRY_MARGIN_MS
        } else {
            lifetime_ms / 2
        };
        *cached = Some((answer.access_token.clone(), now + keep_ms));
        Ok(answer.access_token)
    }

    async fn post_text(&self, token: &str, user: &str, content: &str) -> Result<(), SendError> {
        let (url, body) = match self.account.kind {
            AccountKind::OfficialAccount => (
                format!("{}/cgi-bin/message/custom/send", self.api_base),
                json!({ "touser": user, "msgtype": "text", "text": { "content": content } }),
            ),
            AccountKind::Wecom => (
                format!("{}/cgi-bin/message/send", self.api_base),
                json!({
                    "touser": user,
                    "msgtype": "text",
                    "agentid": self.account.agent_id.unwrap_or_default(),
                    "text": { "content": content }
                }),
            ),
        };
        let what = "the send-message API";
        let answer: SendAnswer = self
            .http
            .post(&url)
            .query(&[("access_token", token)])
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| http_error(what, e))?
            .json()
            .await
            .map_err(|e| http_error(what, e))?;
        if answer.errcode != 0 {
            return Err(SendError::Platform {
                what,
                errcode: answer.errcode,
                errmsg: answer.errmsg,
            });
        }
        Ok(())
    }
}

fn http_error(what: &'static str, e: reqwest::Error) -> SendError {
    // Without the URL: it carries the access token or the secret in its query.
    SendError::Http {
        what,
        detail: e.without_url().to_string(),
    }
}
