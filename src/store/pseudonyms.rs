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
use sha2::Sha256;

use super::crypto::{Keyring, Sealed};
use super::StoreError;
use crate::durable::RowKey;

/// The secret's row in each backend's `secrets` table.
pub const SECRET_NAME: &str = "pseudonyms";
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
    /// A new random secret, for a database that has none yet. The backend stores it sealed
    /// ([`Pseudonyms::seal_secret`]) in its `secrets` table under [`SECRET_NAME`].
    pub fn generate() -> Self {
        // The OS generator, like the log key (a secret, so not the seeded one).
        let secret: [u8; 32] = ChaCha20Poly1305::generate_key(&mut OsRng).into();
        Pseudonyms { secret }
    }

    /// The secret as a backend stored it (`origin` names the database in messages). When
    /// `key_id` is not the ring's current key, the backend seals it again with the current one.
    pub fn open_sealed(
        keyring: &Keyring,
        key_id: &str,
        sealed: &[u8],
        origin: &str,
    ) -> Result<Self, StoreError> {
        let plain = keyring.open(key_id, sealed, AAD).map_err(|e| {
            StoreError::Crypto(format!(
                "{origin}: the pseudonym secret (sealed with key '{key_id}') does not open: {e}; \
                 provide that key after the current one"
            ))
        })?;
        let secret: [u8; 32] = plain.as_slice().try_into().map_err(|_| {
            StoreError::Crypto(format!(
                "{origin}: the pseudonym secret has {} bytes, not 32",
                plain.len()
            ))
        })?;
        Ok(Pseudonyms { secret })
    }

    /// The secret sealed with the ring's current key, as the `secrets` table keeps it.
    pub fn seal_secret(&self, keyring: &Keyring) -> Result<Sealed, StoreError> {
        keyring.seal(&self.secret, AAD)
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

    /// The stored key of a durable state row: a pseudonym for a name, a zero-padded position
    /// for a queue slot.
    pub fn state_key(&self, kind: &str, key: &RowKey) -> String {
        match key {
            RowKey::Seq(n) => seq_key(*n),
            RowKey::Name(name) => self.state(kind, name),
        }
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
}

/// A queue position as stored: zero-padded digits, so text order is their order (and every
/// `s~` key sorts above them: `DeleteBelow` is `key < seq_key(seq)`).
pub fn seq_key(n: u64) -> String {
    format!("{n:020}")
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
