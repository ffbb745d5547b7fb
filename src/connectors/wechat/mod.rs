//! WeChat Official Account (公众号) and WeCom (企业微信) app callbacks.
//!
//! The platform calls a developer URL with `signature` / `timestamp` / `nonce` (and, in
//! encrypted mode, `msg_signature` with an `<Encrypt>` element in the XML body). This module
//! holds what a front door needs to answer such a call, each concept in its own file:
//!
//! - [`signature`]: the SHA-1 signature over the sorted parameters, compared in constant time,
//!   and the replay window for `timestamp`;
//! - [`crypto`]: the message encryption ("安全模式"): AES-256-CBC keyed by the 43-character
//!   EncodingAESKey, IV = first 16 key bytes, PKCS#7 padding to 32-byte blocks, plaintext laid
//!   out as 16 random bytes + 4-byte network-order length + message + AppID / CorpID;
//! - [`xml`]: reading callback XML (flat `<xml>` documents; DTDs refused, no entity expansion,
//!   size and element limits) and writing passive replies and the encrypted envelope;
//! - [`text_limit`]: a passive text reply is at most 2,048 bytes: cut with an ellipsis or split
//!   at a character boundary;
//! - [`settings`]: the `wechat` configuration section (accounts, budget, window, rate limit);
//! - [`callback`]: the adapter: a checked callback becomes a service call, the outcome the
//!   platform's answer, within the reply budget (else `success` and a later send);
//! - [`send_api`]: the platform's access token and send-message API, for late answers;
//! - [`rate_limit`]: the per-user inbound rate limit.
//!
//! The axum routes are in `crate::server::http::wechat`; they only hand requests to [`callback`].
//!
//! Every failure is a [`WechatError`] naming the problem (and the limit, where there is one).

pub mod callback;
pub mod crypto;
mod error;
pub mod rate_limit;
pub mod send_api;
pub mod settings;
pub mod signature;
pub mod text_limit;
pub mod xml;

pub use callback::Callbacks;
pub use crypto::{AesKey, MsgCrypt};
pub use error::WechatError;
pub use settings::WechatConfig;
pub use xml::{Inbound, InboundKind};
