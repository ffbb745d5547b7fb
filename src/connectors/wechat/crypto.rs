//! The callback message encryption shared by the Official Account and WeCom ("安全模式").
//!
//! - key: the 43-character EncodingAESKey is base64 of the 32-byte AES key without its `=`;
//! - cipher: AES-256-CBC, IV = the first 16 key bytes, PKCS#7 padding to a multiple of **32**
//!   bytes (not AES's 16: the platform's reference code pads to 32, so pad bytes run 1..=32);
//! - plaintext: 16 random bytes, the message length as a 4-byte big-endian (network order)
//!   integer, the message, then the receiver id (Official Account AppID / WeCom CorpID), which
//!   is checked on decryption so a message for another account is refused;
//! - `Encrypt` is the base64 of the ciphertext; `msg_signature` signs it with token, timestamp
//!   and nonce ([`super::signature`]).
//!
//! Random prefix bytes come from the caller's RNG, so a seeded RNG makes output reproducible.

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use rand::RngCore;

use super::signature;
use super::xml::{self, XmlLimits};
use super::WechatError;

type Encryptor = cbc::Encryptor<aes::Aes256>;
type Decryptor = cbc::Decryptor<aes::Aes256>;

/// PKCS#7 block size the platform pads to.
const PAD_BLOCK: usize = 32;
const RANDOM_LEN: usize = 16;

/// The platform's keys end in bits that strict base64 would reject (43 characters carry 258
/// bits for a 256-bit key); its reference code ignores them, and so do we for the key only.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The 32-byte AES key decoded from an EncodingAESKey.
#[derive(Clone)]
pub struct AesKey([u8; 32]);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(..)") // never print key material
    }
}

impl AesKey {
    /// Decodes the 43-character EncodingAESKey (letters and digits) configured on the platform.
    pub fn from_encoding_aes_key(s: &str) -> Result<Self, WechatError> {
        let s = s.trim();
        if s.len() != 43 {
            return Err(WechatError::BadAesKey(format!(
                "must be 43 characters, got {}",
                s.chars().count()
            )));
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_alphanumeric()) {
            return Err(WechatError::BadAesKey(format!(
                "only letters and digits are allowed, found {c:?}"
            )));
        }
        let bytes = KEY_BASE64
            .decode(s)
            .map_err(|e| WechatError::BadAesKey(format!("not base64: {e}")))?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            WechatError::BadAesKey(format!("decodes to {} bytes, not 32", b.len()))
        })?;
        Ok(AesKey(key))
    }

    fn iv(&self) -> [u8; 16] {
        self.0[..16].try_into().expect("32-byte key")
    }
}

/// The query parameters of an encrypted callback.
#[derive(Debug, Clone, Default)]
pub struct CallbackQuery<'a> {
    pub msg_signature: &'a str,
    pub timestamp: &'a str,
    pub nonce: &'a str,
}

/// One account's callback crypto: its token, key and AppID / CorpID.
#[derive(Debug, Clone)]
pub struct MsgCrypt {
    token: String,
    key: AesKey,
    receiver_id: String,
}

impl MsgCrypt {
    /// `receiver_id`: the Official Account's AppID or the WeCom CorpID.
    pub fn new(
        token: &str,
        encoding_aes_key: &str,
        receiver_id: &str,
    ) -> Result<Self, WechatError> {
        if token.is_empty() {
            return Err(WechatError::Missing("token"));
        }
        if receiver_id.is_empty() {
            return Err(WechatError::Missing("appid / CorpID"));
        }
        Ok(MsgCrypt {
            token: token.to_string(),
            key: AesKey::from_encoding_aes_key(encoding_aes_key)?,
            receiver_id: receiver_id.to_string(),
        })
    }

    /// For callbacks whose documented ReceiveId is empty (WeCom's in-house 智能机器人 in API
    /// mode): the same scheme, with nothing after the message.
    pub fn with_empty_receiver(token: &str, encoding_aes_key: &str) -> Result<Self, WechatError> {
        if token.is_empty() {
            return Err(WechatError::Missing("token"));
        }
        Ok(MsgCrypt {
            token: token.to_string(),
            key: AesKey::from_encoding_aes_key(encoding_aes_key)?,
            receiver_id: String::new(),
        })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn receiver_id(&self) -> &str {
        &self.receiver_id
    }

    /// `msg_signature` for an `Encrypt` value.
    pub fn signature(&self, timestamp: &str, nonce: &str, encrypt: &str) -> String {
        signature::sign(&[&self.token, timestamp, nonce, encrypt])
    }

    /// Encrypts `msg` with the given random prefix; returns the base64 `Encrypt` text.
    pub fn encrypt_with(&self, msg: &[u8], random: [u8; RANDOM_LEN]) -> String {
        let body_len = RANDOM_LEN + 4 + msg.len() + self.receiver_id.len();
        let pad = PAD_BLOCK - body_len % PAD_BLOCK; // 1..=32, never 0
        let mut buf = Vec::with_capacity(body_len + pad);
        buf.extend_from_slice(&random);
        // The length field is 32 bits; callers bound message size far below 4 GiB.
        buf.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        buf.extend_from_slice(msg);
        buf.extend_from_slice(self.receiver_id.as_bytes());
        buf.resize(body_len + pad, pad as u8);
        let n = buf.len();
        let ct = Encryptor::new(&self.key.0.into(), &self.key.iv().into())
            .encrypt_padded_mut::<NoPadding>(&mut buf, n)
            .expect("length is a multiple of the block size");
        STANDARD.encode(ct)
    }

    /// Encrypts `msg` with a random prefix drawn from `rng`.
    pub fn encrypt(&self, msg: &[u8], rng: &mut impl RngCore) -> String {
        let mut random = [0u8; RANDOM_LEN];
        rng.fill_bytes(&mut random);
        self.encrypt_with(msg, random)
    }

    /// Decrypts an `Encrypt` value and checks the receiver id; returns the message bytes.
    pub fn decrypt(&self, encrypt: &str) -> Result<Vec<u8>, WechatError> {
        let mut buf = STANDARD
            .decode(encrypt.trim())
            .map_err(|e| WechatError::BadCiphertext(format!("Encrypt is not base64: {e}")))?;
        if buf.is_empty() || buf.len() % 16 != 0 {
            return Err(WechatError::BadCiphertext(format!(
                "{} bytes is not a whole number of 16-byte AES blocks",
                buf.len()
            )));
        }
        let plain = Decryptor::new(&self.key.0.into(), &self.key.iv().into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| WechatError::BadCiphertext("AES-CBC decryption failed".into()))?;
        let pad = *plain.last().expect("non-empty") as usize;
        if pad == 0
            || pad > PAD_BLOCK
            || pad > plain.len()
            || plain[plain.len() - pad..]
                .iter()
                .any(|&b| b as usize != pad)
        {
            return Err(WechatError::BadCiphertext(
                "bad PKCS#7 padding (wrong key, or not encrypted for this account)".into(),
            ));
        }
        let content = &plain[..plain.len() - pad];
        if content.len() < RANDOM_LEN + 4 {
            return Err(WechatError::BadCiphertext(format!(
                "{} bytes is shorter than the 20-byte random prefix and length field",
                content.len()
            )));
        }
        let len =
            u32::from_be_bytes(content[RANDOM_LEN..RANDOM_LEN + 4].try_into().unwrap()) as usize;
        let rest = &content[RANDOM_LEN + 4..];
        if len > rest.len() {
            return Err(WechatError::BadCiphertext(format!(
                "length field says {len} bytes, only {} follow",
                rest.len()
            )));
        }
        let (msg, receiver) = rest.split_at(len);
        if receiver != self.receiver_id.as_bytes() {
            return Err(WechatError::WrongReceiver {
                expected: self.receiver_id.clone(),
                found: String::from_utf8_lossy(receiver).chars().take(64).collect(),
            });
        }
        Ok(msg.to_vec())
    }

    /// WeCom URL verification (and any `echostr` check in encrypted mode): verifies
    /// `msg_signature` over the encrypted `echostr` and returns the decrypted echo to answer with.
    pub fn verify_url(&self, q: &CallbackQuery<'_>, echostr: &str) -> Result<String, WechatError> {
        require(q)?;
        if echostr.is_empty() {
            return Err(WechatError::Missing("echostr"));
        }
        signature::verify(
            q.msg_signature,
            &[&self.token, q.timestamp, q.nonce, echostr],
            "msg_signature",
        )?;
        String::from_utf8(self.decrypt(echostr)?)
            .map_err(|_| WechatError::BadCiphertext("the echo is not UTF-8".into()))
    }

    /// An encrypted callback body: size limit, replay window, signature, decryption, then the
    /// inner message parsed. `now_ms` comes from the service clock.
    pub fn open(
        &self,
        body: &str,
        q: &CallbackQuery<'_>,
        now_ms: i64,
        window_s: u64,
        limits: &XmlLimits,
    ) -> Result<xml::Inbound, WechatError> {
        let inner = self.decrypt_body(body, q, now_ms, window_s, limits)?;
        xml::parse_inbound(&inner, limits)
    }

    /// Like [`Self::open`] but returns the decrypted XML text.
    pub fn decrypt_body(
        &self,
        body: &str,
        q: &CallbackQuery<'_>,
        now_ms: i64,
        window_s: u64,
        limits: &XmlLimits,
    ) -> Result<String, WechatError> {
        limits.check_size(body.len())?;
        require(q)?;
        signature::check_timestamp(q.timestamp, now_ms, window_s)?;
        let fields = xml::read_fields(body, limits)?;
        let encrypt =
            xml::field(&fields, "Encrypt").ok_or(WechatError::Missing("Encrypt element"))?;
        signature::verify(
            q.msg_signature,
            &[&self.token, q.timestamp, q.nonce, encrypt],
            "msg_signature",
        )?;
        let inner = self.decrypt(encrypt)?;
        limits.check_size(inner.len())?;
        String::from_utf8(inner)
            .map_err(|_| WechatError::BrokenXml("the decrypted message is not UTF-8".into()))
    }

    /// The encrypted, signed envelope answering an encrypted callback with `reply_xml`.
    pub fn seal(
        &self,
        reply_xml: &str,
        timestamp: &str,
        nonce: &str,
        rng: &mut impl RngCore,
    ) -> String {
        let encrypt = self.encrypt(reply_xml.as_bytes(), rng);
        let sig = self.signature(timestamp, nonce, &encrypt);
        xml::encrypted_envelope(&encrypt, &sig, timestamp, nonce)
    }
}

fn require(q: &CallbackQuery<'_>) -> Result<(), WechatError> {
    if q.msg_signature.is_empty() {
        return Err(WechatError::Missing("msg_signature"));
    }
    if q.timestamp.is_empty() {
        return Err(WechatError::Missing("timestamp"));
    }
    if q.nonce.is_empty() {
        return Err(WechatError::Missing("nonce"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    // The Official Account's published sample (WXBizMsgCrypt Sample.py / Sample.java).
    const MP_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const MP_TOKEN: &str = "spamtest";
    const MP_APPID: &str = "wx2c2769f8efd9abc2";
    const MP_BODY: &str = "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName><FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName><CreateTime>1409735668</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[abcdteT]]></Content><MsgId>6054768590064713728</MsgId><Encrypt><![CDATA[hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=]]></Encrypt></xml>";
    const MP_SIG: &str = "5d197aaffba7e9b25a30732f161a50dee96bd5fa";
    const MP_TS: &str = "1409735669";
    const MP_NONCE: &str = "1320562132";

    // WeCom's published samples (as used in wechatpy's tests).
    const WC_TOKEN: &str = "123456";
    const WC_KEY: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
    const WC_CORP: &str = "wx49f0ab532d5d035a";

    fn at(ts: &str) -> i64 {
        ts.parse::<i64>().unwrap() * 1000
    }

    #[test]
    fn official_account_sample_decrypts() {
        let c = MsgCrypt::new(MP_TOKEN, MP_KEY, MP_APPID).unwrap();
        let q = CallbackQuery {
            msg_signature: MP_SIG,
            timestamp: MP_TS,
            nonce: MP_NONCE,
        };
        let m = c
            .open(MP_BODY, &q, at(MP_TS), 300, &XmlLimits::default())
            .unwrap();
        assert_eq!(m.from_user, "oyORnuP8q7ou2gfYjqLzSIWZf0rs");
        assert_eq!(m.to_user, "gh_10f6c3c3ac5a");
        // The sample's inner message is a text message to the same account.
        assert_eq!(m.msg_type, "text");
        assert!(matches!(m.kind, xml::InboundKind::Text { .. }), "{m:?}");
    }

    #[test]
    fn wecom_url_verification_sample() {
        let c = MsgCrypt::new(WC_TOKEN, WC_KEY, WC_CORP).unwrap();
        let echostr = "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==";
        let q = CallbackQuery {
            msg_signature: "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96",
            timestamp: "1411443780",
            nonce: "437374425",
        };
        let echo = c.verify_url(&q, echostr).unwrap();
        assert!(
            !echo.is_empty() && echo.chars().all(|ch| ch.is_ascii_digit()),
            "{echo:?}"
        );
        let bad = CallbackQuery {
            nonce: "437374424",
            ..q
        };
        assert!(matches!(
            c.verify_url(&bad, echostr),
            Err(WechatError::BadSignature { .. })
        ));
    }

    #[test]
    fn wecom_sample_decrypts_and_our_encryption_matches_the_sample_byte_for_byte() {
        let c = MsgCrypt::new(WC_TOKEN, WC_KEY, WC_CORP).unwrap();
        let body = "<xml><ToUserName><![CDATA[wx49f0ab532d5d035a]]></ToUserName>\n<Encrypt><![CDATA[RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIiOAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0=]]></Encrypt>\n<AgentID><![CDATA[1]]></AgentID>\n</xml>";
        let q = CallbackQuery {
            msg_signature: "74d92dfeb87ba7c714f89d98870ae5eb62dff26d",
            timestamp: "1411525903",
            nonce: "461056294",
        };
        let m = c
            .open(body, &q, at("1411525903"), 300, &XmlLimits::default())
            .unwrap();
        assert_eq!(m.from_user, "messense");
        assert_eq!(
            m.kind,
            xml::InboundKind::Text {
                content: "test".into(),
                msg_id: Some("4363689963896700987".into())
            }
        );

        // Encrypting the sample reply with the sample's random prefix gives the sample output.
        let reply = "<xml>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n<ToUserName><![CDATA[messense]]></ToUserName>\n<AgentID>1</AgentID>\n<CreateTime>1411525903</CreateTime>\n</xml>";
        let enc = c.encrypt_with(reply.as_bytes(), *b"1234567890123456");
        assert_eq!(enc, "9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8GqxlhZgURnAtObvesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qvSUCUld+/WIXrx0oyKQmpB6o8NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3");
        assert_eq!(
            c.signature("1411525903", "461056294", &enc),
            "407518b7649e86ef23978113f92d27afa9296533"
        );
    }

    // WeCom's documentation sample (WXBizMsgCrypt Sample.cs / Sample.cpp of the 企业微信 SDK):
    // token "QDG6eK", CorpID "wx5823bf96d3bd56c7", the request of its DecryptMsg example.
    #[test]
    fn wecom_documentation_sample_decrypts() {
        let c = MsgCrypt::new(
            "QDG6eK",
            "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
            "wx5823bf96d3bd56c7",
        )
        .unwrap();
        let body = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA[RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==]]></Encrypt></xml>";
        let q = CallbackQuery {
            msg_signature: "477715d11cdb4164915debcba66cb864d751f3e6",
            timestamp: "1409659813",
            nonce: "1372623149",
        };
        let m = c
            .open(body, &q, at("1409659813"), 300, &XmlLimits::default())
            .unwrap();
        assert_eq!(m.to_user, "wx5823bf96d3bd56c7");
        assert_eq!(m.from_user, "mycreate");
        assert_eq!(m.create_time, 1409659813);
        assert_eq!(
            m.kind,
            xml::InboundKind::Text {
                content: "hello".into(),
                msg_id: Some("4561255354251345929".into())
            }
        );
        assert_eq!(m.agent_id.as_deref(), Some("218"));
        // The sample's reply round-trips through seal / open with the sample's parameters.
        let reply = "<xml><ToUserName><![CDATA[mycreate]]></ToUserName><FromUserName><![CDATA[wx582测试一下中文的情况，消息长度是按字节来算的396d3bd56c7]]></FromUserName><CreateTime>1348831860</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[this is a test]]></Content><MsgId>1234567890123456</MsgId></xml>";
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let env = c.seal(reply, "1409659813", "1372623149", &mut rng);
        let fields = xml::read_fields(&env, &XmlLimits::default()).unwrap();
        let q = CallbackQuery {
            msg_signature: xml::field(&fields, "MsgSignature").unwrap(),
            ..q
        };
        assert_eq!(
            c.decrypt_body(&env, &q, at("1409659813"), 300, &XmlLimits::default())
                .unwrap(),
            reply
        );
    }

    #[test]
    fn round_trip_for_every_padding_length() {
        let c = MsgCrypt::new("tok", MP_KEY, MP_APPID).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for n in 0..70 {
            let msg: String = "好".repeat(n % 5) + &"a".repeat(n);
            let enc = c.encrypt(msg.as_bytes(), &mut rng);
            assert_eq!(c.decrypt(&enc).unwrap(), msg.as_bytes(), "n={n}");
        }
    }

    #[test]
    fn the_wrong_account_is_refused_by_name() {
        let ours = MsgCrypt::new("tok", MP_KEY, "wx_ours").unwrap();
        let theirs = MsgCrypt::new("tok", MP_KEY, "wx_theirs").unwrap();
        let enc = theirs.encrypt_with(b"<xml/>", [9; 16]);
        let e = ours.decrypt(&enc).unwrap_err();
        assert_eq!(
            e,
            WechatError::WrongReceiver {
                expected: "wx_ours".into(),
                found: "wx_theirs".into()
            }
        );
        assert!(e.to_string().contains("wx_theirs"), "{e}");
    }

    #[test]
    fn an_empty_receiver_id_round_trips_and_refuses_a_named_one() {
        let bot = MsgCrypt::with_empty_receiver("tok", WC_KEY).unwrap();
        let enc = bot.encrypt_with(br#"{"msgtype":"text"}"#, [3; 16]);
        assert_eq!(bot.decrypt(&enc).unwrap(), br#"{"msgtype":"text"}"#);
        let app = MsgCrypt::new("tok", WC_KEY, WC_CORP).unwrap();
        assert!(matches!(
            bot.decrypt(&app.encrypt_with(b"x", [3; 16])),
            Err(WechatError::WrongReceiver { .. })
        ));
    }

    #[test]
    fn broken_ciphertexts_are_named_errors() {
        let c = MsgCrypt::new("tok", MP_KEY, MP_APPID).unwrap();
        let other_key = MsgCrypt::new("tok", WC_KEY, MP_APPID).unwrap();
        let enc = other_key.encrypt_with(b"hello", [1; 16]);
        for bad in ["not base64!", "", "AAAA", &enc] {
            assert!(
                matches!(
                    c.decrypt(bad),
                    Err(WechatError::BadCiphertext(_)) | Err(WechatError::WrongReceiver { .. })
                ),
                "{bad}"
            );
        }
        assert!(
            matches!(c.decrypt("AAAA"), Err(WechatError::BadCiphertext(m)) if m.contains("16-byte"))
        );
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        for (key, needle) in [
            ("short", "43 characters"),
            (&"a+".repeat(22)[..43], "letters and digits"),
        ] {
            let e = AesKey::from_encoding_aes_key(key).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
        }
        assert!(MsgCrypt::new("", MP_KEY, "x").is_err());
        assert!(MsgCrypt::new("t", MP_KEY, "").is_err());
    }

    #[test]
    fn open_checks_size_time_signature_in_that_order() {
        let c = MsgCrypt::new(MP_TOKEN, MP_KEY, MP_APPID).unwrap();
        let q = CallbackQuery {
            msg_signature: MP_SIG,
            timestamp: MP_TS,
            nonce: MP_NONCE,
        };
        let limits = XmlLimits {
            max_body_bytes: 100,
            ..XmlLimits::default()
        };
        assert_eq!(
            c.open(MP_BODY, &q, at(MP_TS), 300, &limits).unwrap_err(),
            WechatError::OversizedBody {
                size: MP_BODY.len(),
                limit: 100
            }
        );
        let late = at(MP_TS) + 301_000;
        assert!(matches!(
            c.open(MP_BODY, &q, late, 300, &XmlLimits::default()),
            Err(WechatError::StaleTimestamp { .. })
        ));
        let forged = CallbackQuery {
            msg_signature: "0000000000000000000000000000000000000000",
            ..q.clone()
        };
        assert!(matches!(
            c.open(MP_BODY, &forged, at(MP_TS), 300, &XmlLimits::default()),
            Err(WechatError::BadSignature { .. })
        ));
        let missing = CallbackQuery {
            msg_signature: "",
            ..q
        };
        assert_eq!(
            c.open(MP_BODY, &missing, at(MP_TS), 300, &XmlLimits::default())
                .unwrap_err(),
            WechatError::Missing("msg_signature")
        );
    }

    #[test]
    fn sealed_replies_open_again() {
        let c = MsgCrypt::new("tok", MP_KEY, MP_APPID).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let reply = xml::text_reply("user", "gh_x", 1_700_000_000, "您好");
        let env = c.seal(&reply, "1700000000", "n0", &mut rng);
        let fields = xml::read_fields(&env, &XmlLimits::default()).unwrap();
        let sig = xml::field(&fields, "MsgSignature").unwrap();
        let q = CallbackQuery {
            msg_signature: sig,
            timestamp: "1700000000",
            nonce: "n0",
        };
        assert_eq!(
            c.decrypt_body(&env, &q, 1_700_000_000_000, 300, &XmlLimits::default())
                .unwrap(),
            reply
        );
    }
}
