//! Start-up check that the key ring can read what the log holds. A key-check value (a sealed
//! constant) is kept per key id that ever wrote the database; at open, each must still open
//! with the ring. So a different log key stops the start with one line naming the problem,
//! instead of a server whose every write fails or an `intentd export` that stops at the first
//! old row.
//!
//! The crypto and the messages live here; each backend reads and writes its `key_checks` table
//! itself (`sqlite_start.rs`, `postgres.rs`).

use super::crypto::{Keyring, Sealed};
use super::StoreError;

const PLAINTEXT: &[u8] = b"intentd key check v1";
const AAD: &[u8] = b"intentd:key_check";

/// What the stored key-check values ask of the backend once each readable one checked out.
#[derive(Debug, Default)]
pub struct KeyCheckOutcome {
    /// Key ids with a stored value that are not in the ring. The backend looks whether any row
    /// is still sealed with one: then the start stops ([`missing_key`]); else its value goes.
    pub absent: Vec<String>,
    /// The value to store for the current key (none is stored yet).
    pub record: Option<Sealed>,
}

/// Checks the stored `(key_id, sealed)` values against the ring. `origin` names the database
/// in messages (a path, or a URL without its password).
pub fn check(
    keyring: &Keyring,
    stored: &[(String, Vec<u8>)],
    origin: &str,
) -> Result<KeyCheckOutcome, StoreError> {
    let mut out = KeyCheckOutcome::default();
    for (key_id, sealed) in stored {
        if !keyring.contains(key_id) {
            out.absent.push(key_id.clone());
            continue;
        }
        match keyring.open(key_id, sealed, AAD) {
            Ok(p) if p == PLAINTEXT => {}
            _ => {
                return Err(StoreError::Crypto(format!(
                    "{origin}: key '{key_id}' in the key ring is not the key that wrote this log \
                     (its key-check value does not open); provide the original key"
                )))
            }
        }
    }
    let current = keyring.current_id();
    if !stored.iter().any(|(id, _)| id == current) {
        out.record = Some(keyring.seal(PLAINTEXT, AAD)?);
    }
    Ok(out)
}

/// The start stops: rows are sealed with `key_id`, which the ring lacks.
pub fn missing_key(origin: &str, key_id: &str) -> StoreError {
    StoreError::Crypto(format!(
        "{origin}: rows of this log were written with key '{key_id}', which is not in the \
         key ring: the log key changed? Put the old key back (as {key_id}:BASE64 after the \
         current key) or use another database"
    ))
}

/// The tables whose rows are sealed with a key id (`key_id` column), for the backends' scan of
/// an absent key.
pub const SEALED_TABLES: [&str; 3] = ["conversations", "answers", "playbook_state"];
