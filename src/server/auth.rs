//! Per-bot API tokens (`authorization: Bearer <token>`) and the admin token.
//!
//! The interceptor only establishes who is calling; handlers then check that a request's
//! `bot_id` belongs to the caller, so one bot's token cannot act for another bot.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Result};
use tonic::{Request, Status};

use crate::config::AuthConfig;

/// Who made the call, stored in the request extensions by the interceptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Bot(String),
    Admin,
    /// Authentication is disabled: anyone may act as any bot.
    Anyone,
}

#[derive(Debug, Clone)]
pub struct Authenticator {
    disabled: bool,
    /// token -> bot id
    bots: HashMap<String, String>,
    admin: Option<String>,
}

fn resolve(literal: &Option<String>, env: &Option<String>) -> Option<String> {
    env.as_ref()
        .and_then(|name| std::env::var(name).ok())
        .filter(|v| !v.is_empty())
        .or_else(|| literal.clone().filter(|v| !v.is_empty()))
}

impl Authenticator {
    pub fn from_config(cfg: &AuthConfig) -> Result<Arc<Self>> {
        let mut bots = HashMap::new();
        for b in &cfg.bots {
            match resolve(&b.token, &b.token_env) {
                Some(t) => {
                    if t.len() < 8 {
                        bail!("auth.bots[{}]: token must be at least 8 characters", b.id);
                    }
                    if let Some(other) = bots.insert(t, b.id.clone()) {
                        bail!("auth.bots: bots '{other}' and '{}' share a token", b.id);
                    }
                }
                None if cfg.disabled => {}
                None => bail!(
                    "auth.bots[{}]: no token (set `token`, or the environment variable named by `token_env`)",
                    b.id
                ),
            }
        }
        let admin = resolve(&cfg.admin_token, &cfg.admin_token_env);
        Ok(Arc::new(Self {
            disabled: cfg.disabled,
            bots,
            admin,
        }))
    }

    pub fn disabled(&self) -> bool {
        self.disabled
    }

    /// An admin token is configured (the operator console's login needs one).
    pub fn has_admin(&self) -> bool {
        self.admin.is_some()
    }

    /// `token` is the admin token (compared in constant time; false when none is configured).
    pub fn is_admin_token(&self, token: &str) -> bool {
        self.admin
            .as_ref()
            .is_some_and(|a| constant_time_eq(token.as_bytes(), a.as_bytes()))
    }

    /// The token in an `authorization` value (gRPC metadata or HTTP header): `Bearer <token>`.
    fn bearer(value: Option<&[u8]>) -> Result<&str, Status> {
        let value = value.ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <token>` (metadata or header)")
        })?;
        let value = std::str::from_utf8(value)
            .ok()
            .filter(|v| v.is_ascii())
            .ok_or_else(|| Status::unauthenticated("authorization value is not ASCII"))?;
        value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))
    }

    /// Who may call the IntentService (gRPC).
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        self.caller_from(req.metadata().get("authorization").map(|v| v.as_bytes()))
    }

    /// Who is calling, from the raw `authorization` value; shared by the gRPC and HTTP doors.
    pub fn caller_from(&self, authorization: Option<&[u8]>) -> Result<Caller, Status> {
        if self.disabled {
            return Ok(Caller::Anyone);
        }
        let token = Self::bearer(authorization)?;
        if let Some(admin) = &self.admin {
            if constant_time_eq(token.as_bytes(), admin.as_bytes()) {
                return Ok(Caller::Admin);
            }
        }
        // Compare against every token so timing does not reveal which prefix matched.
        let mut found = None;
        for (t, bot) in &self.bots {
            if constant_time_eq(token.as_bytes(), t.as_bytes()) {
                found = Some(bot.clone());
            }
        }
        found
            .map(Caller::Bot)
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }

    /// Admin RPCs need the admin token.
    pub fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.disabled {
            return Ok(());
        }
        match self.caller(req)? {
            Caller::Admin => Ok(()),
            _ => Err(Status::permission_denied("this RPC needs the admin token")),
        }
    }
}

impl Caller {
    /// The caller may act for `bot_id`. A missing id is the request's fault (INVALID_ARGUMENT),
    /// and an id is never echoed at full length: a 10 KB id in the message made standard
    /// clients fail on the size of the status metadata.
    pub fn check_bot(&self, bot_id: &str) -> Result<(), Status> {
        if bot_id.trim().is_empty() {
            return Err(Status::invalid_argument(
                "bot_id: is required and must not be empty",
            ));
        }
        match self {
            Caller::Anyone | Caller::Admin => Ok(()),
            Caller::Bot(b) if b == bot_id => Ok(()),
            Caller::Bot(b) => Err(Status::permission_denied(format!(
                "token of bot '{b}' cannot act for bot_id '{}'",
                crate::service::validate::shown(bot_id)
            ))),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BotAuth;

    fn auth() -> Arc<Authenticator> {
        Authenticator::from_config(&AuthConfig {
            disabled: false,
            admin_token: Some("admin-secret".into()),
            admin_token_env: None,
            bots: vec![BotAuth {
                id: "shop".into(),
                token: Some("shop-token-1".into()),
                token_env: None,
            }],
        })
        .unwrap()
    }

    fn req(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    #[test]
    fn tokens_map_to_bots_and_admin() {
        let a = auth();
        assert_eq!(
            a.caller(&req(Some("shop-token-1"))).unwrap(),
            Caller::Bot("shop".into())
        );
        assert_eq!(a.caller(&req(Some("admin-secret"))).unwrap(), Caller::Admin);
        assert_eq!(
            a.caller(&req(None)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            a.caller(&req(Some("nope"))).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            a.admin(&req(Some("shop-token-1"))).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(a.admin(&req(Some("admin-secret"))).is_ok());
    }

    #[test]
    fn raw_header_values_work_like_metadata() {
        let a = auth();
        assert_eq!(
            a.caller_from(Some(b"Bearer shop-token-1")).unwrap(),
            Caller::Bot("shop".into())
        );
        for bad in [&b"shop-token-1"[..], b"Basic abc", b"Bearer \xff\xfe"] {
            assert_eq!(
                a.caller_from(Some(bad)).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
        assert_eq!(
            a.caller_from(None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_bot_cannot_act_for_another() {
        let c = Caller::Bot("shop".into());
        assert!(c.check_bot("shop").is_ok());
        assert_eq!(
            c.check_bot("other").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn a_missing_or_huge_bot_id_is_named_not_echoed() {
        // Issue #12.5 (failed on main): an empty bot_id was PERMISSION_DENIED, and a 10 KB one
        // came back whole in the status message.
        let c = Caller::Bot("shop".into());
        let e = c.check_bot("").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.message(), "bot_id: is required and must not be empty");
        let e = c.check_bot(&"x".repeat(10_000)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().len() < 200, "{}", e.message());
        assert!(e.message().contains("10000 bytes"), "{}", e.message());
    }

    #[test]
    fn missing_token_is_a_startup_error_unless_disabled() {
        let mut cfg = AuthConfig {
            bots: vec![BotAuth {
                id: "b".into(),
                token: None,
                token_env: Some("INTENTD_TEST_UNSET_VAR".into()),
            }],
            ..Default::default()
        };
        assert!(Authenticator::from_config(&cfg)
            .unwrap_err()
            .to_string()
            .contains("no token"));
        cfg.disabled = true;
        assert!(Authenticator::from_config(&cfg).unwrap().disabled());
    }
}
