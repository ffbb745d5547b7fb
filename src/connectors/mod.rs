//! Front ends for chat platforms that translate their wire formats into plain calls; they
//! decide nothing themselves.
//!
//! - [`wechat`]: WeChat Official Account (公众号) and WeCom (企业微信) app callbacks: signature
//!   checks, the AES-256-CBC message encryption, the callback XML and passive-reply limits,
//!   and the adapter the HTTP listener's `/wechat/{account}` routes hand requests to.

pub mod wechat;
