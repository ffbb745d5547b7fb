//! User and message ids are stored as keyed pseudonyms: HMAC-SHA256 under a secret of this
//! database, so the log links a user's messages (the same user gets the same pseudonym) and
//! matches feedback, human replies and retries to their message, without naming either to
//! whoever reads the file. No statistic reads an id back, and every lookup by message id hashes
//! the id it is given the same way, so nothing is lost.
//!
//! The two kinds are domain-separated: a user and a message with the same id text get different
//! pseudonyms (and different prefixes, `u~` and `m~`).
//!
//! The secret is random, made with the database and stored sealed with the log key (re-sealed
//! with the current key at each start, so a key rotation never strands it). A database written
//! before pseudonyms existed has its user ids converted when the secret is first made, in the
//! same transaction; its message ids by schema migration 5 (`sqlite.rs`).
//!
//! Chat ids stay in clear: stats are reported per group and each group has its own targets in
//! the playbook (README "What the log holds").

use chacha20poly1305::aead::{KeyInit, OsRng};
use chacha20poly1305::ChaCha20Poly1305;
use hmac::{Hmac, Mac};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::Sha256;
use std::path::Path;

use super::crypto::Keyring;
use super::StoreError;

const SECRET_NAME: &str = "pseudonyms";
const AAD: &[u8] = b"intentd:secret:pseudonyms";
/// Stored user pseudonyms start with this (a clear id in an old row does not).
pub const PREFIX: &str = "u~";
/// Stored message-id pseudonyms start with this.
pub const MESSAGE_PREFIX: &str = "m~";
/// Stored keys of durable state rows start with this.
pub const STATE_PREFIX: &str = "s~";
const STATE_DOMAIN: &[u8] = b"state\0\0\0";
/// Put before a message id in the HMAC input. User ids have no domain tag (their pseudonyms
/// predate this one); their input starts with the 8-byte length of the bot id, which can never
/// be these bytes (read as a length, over 10^16).
const MESSAGE_DOMAIN: &[u8] = b"message\0";

/// See the module doc.
#[derive(Clone)]
pub struct Pseudonyms {
    secret: [u8; 32],
}

impl std::fmt::Debug for Pseudonyms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonyms(..)")
    }
}

impl Pseudonyms {
    /// Reads the database's secret (re-sealing it with the current key when an older key
    /// sealed it), or makes one and converts the user ids already stored.
    pub fn load_or_create(
        conn: &mut Connection,
        keyring: &Keyring,
        path: &Path,
    ) -> Result<Self, StoreError> {
        let tx = conn.transaction()?;
        let stored: Option<(String, Vec<u8>)> = tx
            .query_row(
                "SELECT key_id, sealed FROM secrets WHERE name = ?1",
                params![SECRET_NAME],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let this = match stored {
            Some((key_id, sealed)) => {
                let plain = keyring.open(&key_id, &sealed, AAD).map_err(|e| {
                    StoreError::Crypto(format!(
                        "{}: the pseudonym secret (sealed with key '{key_id}') does not open: {e}; \
                         provide that key after the current one",
                        path.display()
                    ))
                })?;
                let secret: [u8; 32] = plain.as_slice().try_into().map_err(|_| {
                    StoreError::Crypto(format!(
                        "{}: the pseudonym secret has {} bytes, not 32",
                        path.display(),
                        plain.len()
                    ))
                })?;
                let this = Pseudonyms { secret };
                if key_id != keyring.current_id() {
                    this.store_secret(&tx, keyring)?;
                }
                this
            }
            None => {
                // The OS generator, like the log key (a secret, so not the seeded one).
                let secret: [u8; 32] = ChaCha20Poly1305::generate_key(&mut OsRng).into();
                let this = Pseudonyms { secret };
                this.store_secret(&tx, keyring)?;
                let converted = this.convert_clear_users(&tx)?;
                if converted > 0 {
                    tracing::info!(
                        rows = converted,
                        "stored user ids replaced by keyed pseudonyms"
                    );
                }
                this
            }
        };
        tx.commit()?;
        Ok(this)
    }

    fn store_secret(&self, tx: &Connection, keyring: &Keyring) -> Result<(), StoreError> {
        let sealed = keyring.seal(&self.secret, AAD)?;
        tx.execute(
            "INSERT OR REPLACE INTO secrets (name, key_id, sealed) VALUES (?1, ?2, ?3)",
            params![SECRET_NAME, sealed.key_id, sealed.blob],
        )?;
        Ok(())
    }

    /// The stored form of a user id of `bot_id`: `u~` and 32 hex digits; an empty id (a
    /// message without a user) stays empty.
    pub fn user(&self, bot_id: &str, user_id: &str) -> String {
        self.pseudonym(PREFIX, b"", bot_id, user_id)
    }

    /// The stored form of a message id (or event id) of `bot_id`: `m~` and 32 hex digits; an
    /// empty id stays empty. Every table and every lookup uses this form.
    pub fn message(&self, bot_id: &str, message_id: &str) -> String {
        self.pseudonym(MESSAGE_PREFIX, MESSAGE_DOMAIN, bot_id, message_id)
    }

    /// The stored key of a durable state row named `name` (ids of a bot, chat and user) in
    /// `kind`: `s~` and 32 hex digits.
    pub fn state(&self, kind: &str, name: &str) -> String {
        self.pseudonym(STATE_PREFIX, STATE_DOMAIN, kind, name)
    }

    fn pseudonym(&self, prefix: &str, domain: &[u8], bot_id: &str, id: &str) -> String {
        if id.is_empty() {
            return String::new();
        }
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(domain);
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        mac.update(&(bot_id.len() as u64).to_le_bytes());
        mac.update(bot_id.as_bytes());
        mac.update(id.as_bytes());
        let tag = mac.finalize().into_bytes();
        format!("{prefix}{}", hex::encode(&tag[..16]))
    }

    /// Rows written before pseudonyms: every user id is clear.
    fn convert_clear_users(&self, tx: &Connection) -> Result<usize, StoreError> {
        let pairs: Vec<(String, String)> = tx
            .prepare("SELECT DISTINCT bot_id, user_id FROM conversations WHERE user_id <> ''")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut rows = 0;
        let mut update =
            tx.prepare("UPDATE conversations SET user_id = ?1 WHERE bot_id = ?2 AND user_id = ?3")?;
        for (bot, user) in pairs {
            rows += update.execute(params![self.user(&bot, &user), bot, user])?;
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_user_same_pseudonym_per_bot_and_nothing_of_the_id_shows() {
        let p = Pseudonyms { secret: [7; 32] };
        let a = p.user("demo", "wxid_zhang_13800138000");
        assert_eq!(a, p.user("demo", "wxid_zhang_13800138000"));
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 32, "{a}");
        assert!(!a.contains("zhang") && !a.contains("138"));
        assert_ne!(a, p.user("other", "wxid_zhang_13800138000"));
        assert_ne!(p.user("ab", "c"), p.user("a", "bc"));
        assert_ne!(
            a,
            Pseudonyms { secret: [8; 32] }.user("demo", "wxid_zhang_13800138000")
        );
        assert_eq!(p.user("demo", ""), "");
    }

    #[test]
    fn user_pseudonyms_are_unchanged_by_the_message_domain() {
        // The value stored by databases written before message pseudonyms existed.
        let p = Pseudonyms { secret: [7; 32] };
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[7; 32]).unwrap();
        mac.update(&4u64.to_le_bytes());
        mac.update(b"demo");
        mac.update(b"wxid_1");
        let tag = mac.finalize().into_bytes();
        assert_eq!(
            p.user("demo", "wxid_1"),
            format!("u~{}", hex::encode(&tag[..16]))
        );
    }

    #[test]
    fn message_ids_are_pseudonyms_apart_from_user_ids() {
        let p = Pseudonyms { secret: [7; 32] };
        let m = p.message("demo", "msg-secret-123");
        assert_eq!(m, p.message("demo", "msg-secret-123"));
        assert!(
            m.starts_with(MESSAGE_PREFIX) && m.len() == MESSAGE_PREFIX.len() + 32,
            "{m}"
        );
        assert!(!m.contains("secret") && !m.contains("123"));
        assert_ne!(m, p.message("other", "msg-secret-123"));
        assert_ne!(p.message("ab", "c"), p.message("a", "bc"));
        // The same text as a user id and as a message id: different HMACs, not only prefixes.
        let u = p.user("demo", "msg-secret-123");
        assert_ne!(m[MESSAGE_PREFIX.len()..], u[PREFIX.len()..]);
        assert_eq!(p.message("demo", ""), "");
    }
}
