//! What can be wrong with a callback, as the front door reports it (never a panic).

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WechatError {
    /// The signature over (token, timestamp, nonce[, Encrypt]) does not match.
    #[error("bad signature: {what} does not match the SHA-1 of the sorted token, timestamp, nonce{}", if *.with_encrypt { " and Encrypt" } else { "" })]
    BadSignature {
        what: &'static str,
        with_encrypt: bool,
    },
    /// `timestamp` is not whole seconds.
    #[error("bad timestamp {0:?}: expected Unix seconds")]
    BadTimestamp(String),
    /// `timestamp` is outside the accepted window around now (a replayed or delayed request).
    #[error("stale timestamp {timestamp}: {skew_s} s away from now, the window is ±{window_s} s")]
    StaleTimestamp {
        timestamp: i64,
        skew_s: i64,
        window_s: u64,
    },
    /// The decrypted message names another AppID / CorpID than the one configured.
    #[error("wrong appid/CorpID: the message is for {found:?}, this account is {expected:?}")]
    WrongReceiver { expected: String, found: String },
    /// The configured EncodingAESKey is unusable.
    #[error("bad EncodingAESKey: {0}")]
    BadAesKey(String),
    /// `Encrypt` is not valid base64 of AES-CBC output, or its padding / length field is wrong.
    #[error("cannot decrypt: {0}")]
    BadCiphertext(String),
    /// The body is not the callback XML (syntax, limits, missing elements).
    #[error("broken XML: {0}")]
    BrokenXml(String),
    /// A DOCTYPE (and with it any entity definition) is refused outright.
    #[error("broken XML: a DOCTYPE / DTD is not accepted in callback bodies")]
    DtdRefused,
    /// A required element or query parameter is missing or empty.
    #[error("missing {0}")]
    Missing(&'static str),
    /// The request body is larger than the configured limit.
    #[error("oversized body: {size} bytes, the limit is {limit} bytes")]
    OversizedBody { size: usize, limit: usize },
}
