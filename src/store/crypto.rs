//! Encryption at rest for the conversation log.
//!
//! Message and reply text are PII-redacted first (so even an authorised export holds no phone
//! or ID numbers), then sealed with ChaCha20-Poly1305 under the current key with a fresh random
//! 96-bit nonce per row. The row's key id is stored beside it, so after a rotation old rows are
//! still opened with their old key. The row's identity (bot id + message id) is bound in as
//! associated data: a ciphertext copied onto another row does not decrypt.
//!
//! Nonces come from the OS random source on purpose, not from the seedable RNG the rest of the
//! service uses: a repeated nonce under one key would reveal the XOR of two plaintexts.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AnswerKind, StoreConfig, StoreError};
use crate::pii::redact_pii;

const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;

/// The keys the log can be read with; the first one encrypts new rows.
pub struct Keyring {
    current: String,
    keys: HashMap<String, ChaCha20Poly1305>,
}

// Never print key material.
impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<_> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("ids", &ids)
            .finish()
    }
}

/// A sealed blob: nonce followed by ciphertext+tag, and the id of the key that sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub blob: Vec<u8>,
}

/// The clear-text part of a conversation row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Texts {
    #[serde(rename = "t")]
    pub text: String,
    #[serde(rename = "r")]
    pub reply: String,
}

fn how_to_create(env: &str) -> String {
    format!(
        "create a key with `intentd keygen` and put it in the {env} environment variable \
         (or in the file named by store.key_file), or turn conversation logging off with \
         store.enabled: false"
    )
}

impl Keyring {
    /// Parses `BASE64` or `id:BASE64,id:BASE64,...` (commas or newlines; first = current).
    /// A key without an id gets `fp-` + the first 8 hex digits of its SHA-256, so the same key
    /// keeps the same id when it later moves into a rotation list. `origin` names where the
    /// text came from, for error messages.
    pub fn parse(spec: &str, origin: &str) -> Result<Self, StoreError> {
        let mut current = None;
        let mut keys = HashMap::new();
        let entries = spec
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'));
        for (i, entry) in entries.enumerate() {
            let n = i + 1;
            let (id, b64) = match entry.split_once(':') {
                Some((id, b64)) => (Some(id.trim()), b64.trim()),
                None => (None, entry),
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| {
                    StoreError::Config(format!("{origin}: key #{n} is not valid base64 ({e})"))
                })?;
            if bytes.len() != KEY_LEN {
                return Err(StoreError::Config(format!(
                    "{origin}: key #{n} decodes to {} bytes; a log key must be exactly {KEY_LEN} bytes",
                    bytes.len()
                )));
            }
            let id = match id {
                Some(id) => {
                    let ok = !id.is_empty()
                        && id.len() <= 32
                        && id
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                    if !ok {
                        return Err(StoreError::Config(format!(
                            "{origin}: key #{n} has id '{id}'; ids are 1-32 characters of A-Z a-z 0-9 - _ ."
                        )));
                    }
                    id.to_string()
                }
                None => format!("fp-{}", &hex::encode(Sha256::digest(&bytes))[..8]),
            };
            if keys.contains_key(&id) {
                return Err(StoreError::Config(format!(
                    "{origin}: key id '{id}' appears twice"
                )));
            }
            keys.insert(id.clone(), ChaCha20Poly1305::new(Key::from_slice(&bytes)));
            current.get_or_insert(id);
        }
        let current =
            current.ok_or_else(|| StoreError::Config(format!("{origin}: no key found")))?;
        Ok(Self { current, keys })
    }

    /// Loads the key ring from the environment variable `config.key_env`, else from
    /// `config.key_file`; neither → an error that says how to create a key.
    pub fn from_config(config: &StoreConfig) -> Result<Self, StoreError> {
        let env = config.key_env.trim();
        if !env.is_empty() {
            if let Ok(spec) = std::env::var(env) {
                if !spec.trim().is_empty() {
                    return Self::parse(&spec, &format!("environment variable {env}"));
                }
            }
        }
        if let Some(path) = &config.key_file {
            if config.create_key_file && !path.exists() {
                create_key_file(path)?;
                tracing::warn!(path = %path.display(), "created a new conversation-log key; back it up: without it the log cannot be read");
            }
            return Self::from_file(path);
        }
        Err(StoreError::Config(format!(
            "conversation logging is on but no log encryption key was found; {}",
            how_to_create(if env.is_empty() {
                "INTENTD_LOG_KEY"
            } else {
                env
            })
        )))
    }

    pub fn from_file(path: &Path) -> Result<Self, StoreError> {
        let spec = std::fs::read_to_string(path).map_err(|e| {
            StoreError::Config(format!(
                "cannot read log key file {}: {e}; {}",
                path.display(),
                how_to_create("INTENTD_LOG_KEY")
            ))
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "log key file is readable by group/others; chmod 600 it");
                }
            }
        }
        Self::parse(&spec, &path.display().to_string())
    }

    pub fn current_id(&self) -> &str {
        &self.current
    }

    pub fn contains(&self, key_id: &str) -> bool {
        self.keys.contains_key(key_id)
    }

    /// Encrypts under the current key with a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed, StoreError> {
        let cipher = &self.keys[&self.current];
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| StoreError::Crypto("encryption failed".into()))?;
        let mut blob = Vec::with_capacity(NONCE_LEN + ct.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        Ok(Sealed {
            key_id: self.current.clone(),
            blob,
        })
    }

    /// Decrypts a blob sealed under `key_id`.
    pub fn open(&self, key_id: &str, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        let cipher = self.keys.get(key_id).ok_or_else(|| {
            StoreError::Crypto(format!(
                "row was encrypted with key '{key_id}', which is not in the key ring; add it as an \
                 old key ({key_id}:BASE64 after the current key) to read it"
            ))
        })?;
        if blob.len() < NONCE_LEN {
            return Err(StoreError::Crypto(
                "sealed blob is shorter than its nonce".into(),
            ));
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| {
                StoreError::Crypto(format!(
                    "row sealed with key '{key_id}' failed authentication"
                ))
            })
    }

    /// Redacts PII from both texts, then seals them together (one nonce per row).
    pub fn seal_texts(&self, text: &str, reply: &str, aad: &[u8]) -> Result<Sealed, StoreError> {
        let texts = Texts {
            text: redact_pii(text),
            reply: redact_pii(reply),
        };
        let json = serde_json::to_vec(&texts).map_err(|e| StoreError::Crypto(e.to_string()))?;
        self.seal(&json, aad)
    }

    pub fn open_texts(&self, key_id: &str, blob: &[u8], aad: &[u8]) -> Result<Texts, StoreError> {
        let json = self.open(key_id, blob, aad)?;
        serde_json::from_slice(&json)
            .map_err(|e| StoreError::Crypto(format!("sealed row is not valid: {e}")))
    }
}

/// Associated data binding a sealed row to its identity.
pub fn row_aad(bot_id: &str, message_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(bot_id.len() + message_id.len() + 1);
    aad.extend_from_slice(bot_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(message_id.as_bytes());
    aad
}

/// Binds a sealed state row to its kind and stored key, so a row copied to another key does not
/// open.
pub fn state_aad(kind: &str, key: &str) -> Vec<u8> {
    let mut aad = row_aad(kind, key);
    aad.extend_from_slice(b"|state");
    aad
}

/// Binds a sealed answer to its stored key, so a row copied under another key does not open.
pub fn answer_aad(kind: AnswerKind, bot_id: &str, key: &str) -> Vec<u8> {
    let mut aad = row_aad(bot_id, key);
    aad.extend_from_slice(b"|answer|");
    aad.extend_from_slice(kind.as_str().as_bytes());
    aad
}

/// A new random 32-byte key, base64 (what `intentd keygen` prints).
/// Writes a fresh key to `path`, readable by the owner only.
fn create_key_file(path: &Path) -> Result<(), StoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("{}: {e}", dir.display())))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
    writeln!(f, "{}", generate_key())
        .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
    Ok(())
}

pub fn generate_key() -> String {
    let key = ChaCha20Poly1305::generate_key(&mut OsRng);
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::key_b64;
    use super::*;

    #[test]
    fn seal_then_open_round_trips_and_redacts() {
        let ring = Keyring::parse(&key_b64(1), "test").unwrap();
        let aad = row_aad("bot", "m1");
        let sealed = ring
            .seal_texts("我的手机13812345678，要退款", "好的", &aad)
            .unwrap();
        assert!(sealed.key_id.starts_with("fp-"));
        let t = ring.open_texts(&sealed.key_id, &sealed.blob, &aad).unwrap();
        assert_eq!(t.text, "我的手机[PHONE]，要退款");
        assert_eq!(t.reply, "好的");
        // Another row's identity does not open it.
        assert!(ring
            .open_texts(&sealed.key_id, &sealed.blob, &row_aad("bot", "m2"))
            .is_err());
    }

    #[test]
    fn nonces_differ_per_row() {
        let ring = Keyring::parse(&key_b64(1), "test").unwrap();
        let a = ring.seal(b"same", b"").unwrap();
        let b = ring.seal(b"same", b"").unwrap();
        assert_ne!(a.blob[..NONCE_LEN], b.blob[..NONCE_LEN]);
        assert_ne!(a.blob, b.blob);
    }

    #[test]
    fn rotation_list_reads_old_rows_and_writes_with_the_first_key() {
        let old = Keyring::parse(&format!("k1:{}", key_b64(1)), "test").unwrap();
        let sealed_old = old.seal(b"old row", b"x").unwrap();
        let rotated =
            Keyring::parse(&format!("k2:{}, k1:{}", key_b64(2), key_b64(1)), "test").unwrap();
        assert_eq!(rotated.current_id(), "k2");
        assert_eq!(
            rotated.open("k1", &sealed_old.blob, b"x").unwrap(),
            b"old row"
        );
        assert_eq!(rotated.seal(b"new", b"").unwrap().key_id, "k2");
        // The same bare key gets the same fingerprint id wherever it appears.
        let bare = Keyring::parse(&key_b64(3), "test").unwrap();
        let listed = Keyring::parse(&format!("k9:{},{}", key_b64(4), key_b64(3)), "test").unwrap();
        assert!(listed.contains(bare.current_id()));
        // Dropping the old key makes its rows unreadable, with a message naming the key.
        let only_new = Keyring::parse(&format!("k2:{}", key_b64(2)), "test").unwrap();
        let err = only_new
            .open("k1", &sealed_old.blob, b"x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("'k1'"), "{err}");
    }

    #[test]
    fn bad_key_specs_are_named() {
        let short = base64::engine::general_purpose::STANDARD.encode([0u8; 16]);
        let e = Keyring::parse(&short, "INTENTD_LOG_KEY")
            .unwrap_err()
            .to_string();
        assert!(e.contains("16 bytes") && e.contains("32"), "{e}");
        let e = Keyring::parse("k1:not base64!", "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid base64"), "{e}");
        let e = Keyring::parse(&format!("a b:{}", key_b64(1)), "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'a b'"), "{e}");
        let e = Keyring::parse(&format!("k:{},k:{}", key_b64(1), key_b64(2)), "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
        assert!(Keyring::parse("  ", "f").is_err());
    }

    #[test]
    fn missing_key_error_says_how_to_create_one() {
        let cfg = StoreConfig {
            key_env: "INTENTD_TEST_KEY_THAT_IS_NEVER_SET".into(),
            ..StoreConfig::default()
        };
        let e = Keyring::from_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("intentd keygen"), "{e}");
        assert!(e.contains("INTENTD_TEST_KEY_THAT_IS_NEVER_SET"), "{e}");
    }

    #[test]
    fn key_file_and_keygen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.key");
        let key = generate_key();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&key)
                .unwrap()
                .len(),
            32
        );
        assert_ne!(key, generate_key());
        std::fs::write(
            &path,
            format!("# intentd log keys\nk2:{key}\nk1:{}\n", key_b64(1)),
        )
        .unwrap();
        let cfg = StoreConfig {
            key_env: "INTENTD_TEST_KEY_THAT_IS_NEVER_SET".into(),
            key_file: Some(path),
            ..StoreConfig::default()
        };
        let ring = Keyring::from_config(&cfg).unwrap();
        assert_eq!(ring.current_id(), "k2");
        assert!(ring.contains("k1"));
        assert!(!format!("{ring:?}").contains(&key));
    }
}
