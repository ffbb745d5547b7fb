//! Callback signatures: SHA-1 (hex) of the parameters sorted as byte strings and concatenated.
//!
//! - plain mode and Official Account URL verification: `signature` over token, timestamp, nonce;
//! - encrypted mode (and WeCom URL verification): `msg_signature` over token, timestamp, nonce
//!   and the `Encrypt` text (WeCom: the `echostr`).
//!
//! Comparison is constant time ([`subtle`]), so the time a wrong guess takes says nothing about
//! how much of it was right. The timestamp is checked against a window around now, so a
//! captured request cannot be replayed later.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use super::WechatError;

/// Default replay window: a request whose `timestamp` is further than this from now is refused.
pub const DEFAULT_TIMESTAMP_WINDOW_S: u64 = 300;

/// Lowercase hex SHA-1 of the parts sorted lexicographically and concatenated.
pub fn sign(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    let mut h = Sha1::new();
    for p in sorted {
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Checks `given` (hex, any case) against the signature of `parts` in constant time.
/// `what` names the parameter in the error (`signature` / `msg_signature`).
pub fn verify(given: &str, parts: &[&str], what: &'static str) -> Result<(), WechatError> {
    let expected = sign(parts);
    let given = given.trim().to_ascii_lowercase();
    // Lengths are public (always 40 for a well-formed signature); contents are compared fully.
    let ok =
        given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(WechatError::BadSignature {
            what,
            with_encrypt: parts.len() > 3,
        })
    }
}

/// Plain-mode check of `signature` (also the Official Account URL verification).
pub fn verify_plain(
    token: &str,
    signature: &str,
    timestamp: &str,
    nonce: &str,
) -> Result<(), WechatError> {
    verify(signature, &[token, timestamp, nonce], "signature")
}

/// Parses `timestamp` (Unix seconds) and refuses it when it is more than `window_s` away from
/// `now_ms` (either direction: clocks drift both ways).
pub fn check_timestamp(timestamp: &str, now_ms: i64, window_s: u64) -> Result<i64, WechatError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| WechatError::BadTimestamp(timestamp.chars().take(32).collect()))?;
    let skew_s = ts.saturating_sub(now_ms.div_euclid(1000));
    if skew_s.unsigned_abs() > window_s {
        return Err(WechatError::StaleTimestamp {
            timestamp: ts,
            skew_s,
            window_s,
        });
    }
    Ok(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    // WeCom's published URL-verification sample (also wechatpy's test): token "123456",
    // timestamp 1411443780, nonce 437374425, the echostr below, msg_signature dd6b9c95….
    const ECHOSTR: &str =
        "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==";

    #[test]
    fn the_published_sample_signature_verifies() {
        let parts = ["123456", "1411443780", "437374425", ECHOSTR];
        assert_eq!(sign(&parts), "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96");
        verify(
            "DD6B9C95B495B3F7E2901BFBC76C664930FFDB96",
            &parts,
            "msg_signature",
        )
        .unwrap();
    }

    #[test]
    fn any_changed_part_is_a_bad_signature() {
        let good = "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96";
        for parts in [
            ["123456", "1411443780", "437374424", ECHOSTR], // nonce off by one
            ["123457", "1411443780", "437374425", ECHOSTR], // token
        ] {
            let e = verify(good, &parts, "msg_signature").unwrap_err();
            assert_eq!(
                e,
                WechatError::BadSignature {
                    what: "msg_signature",
                    with_encrypt: true
                }
            );
            assert!(e.to_string().contains("msg_signature"), "{e}");
        }
        for bad in ["", "dd6b", "zz6b9c95b495b3f7e2901bfbc76c664930ffdb96"] {
            assert!(verify(bad, &["123456", "1411443780", "437374425", ECHOSTR], "x").is_err());
        }
    }

    #[test]
    fn plain_signature_is_over_token_timestamp_nonce() {
        let sig = sign(&["tok", "1700000000", "n1"]);
        // Order of the inputs does not matter: they are sorted.
        assert_eq!(sig, sign(&["n1", "tok", "1700000000"]));
        verify_plain("tok", &sig, "1700000000", "n1").unwrap();
        assert!(verify_plain("tok", &sig, "1700000001", "n1").is_err());
    }

    #[test]
    fn timestamps_outside_the_window_are_refused() {
        let now_ms = 1_700_000_000_000;
        assert_eq!(
            check_timestamp("1700000000", now_ms, 300),
            Ok(1_700_000_000)
        );
        assert!(check_timestamp("1699999700", now_ms, 300).is_ok());
        assert!(check_timestamp("1700000300", now_ms, 300).is_ok());
        let e = check_timestamp("1699999699", now_ms, 300).unwrap_err();
        assert_eq!(
            e,
            WechatError::StaleTimestamp {
                timestamp: 1_699_999_699,
                skew_s: -301,
                window_s: 300
            }
        );
        assert!(e.to_string().contains("300"), "{e}");
        assert!(matches!(
            check_timestamp("1700000301", now_ms, 300),
            Err(WechatError::StaleTimestamp { skew_s: 301, .. })
        ));
        assert!(matches!(
            check_timestamp("17e8", now_ms, 300),
            Err(WechatError::BadTimestamp(_))
        ));
        assert!(matches!(
            check_timestamp("", now_ms, 300),
            Err(WechatError::BadTimestamp(_))
        ));
    }
}
