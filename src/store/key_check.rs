//! Start-up checks of the log database: that SQLite finds it intact (`PRAGMA quick_check`),
//! and that the key ring can read what it holds. A key-check value (a sealed constant) is kept
//! per key id that ever wrote the database; at open, each must still open with the ring. So a
//! damaged file or a different log key stops the start with one line naming the problem,
//! instead of a server whose every write fails or an `intentd export` that stops at the first
//! old row.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

use super::crypto::Keyring;
use super::StoreError;

const PLAINTEXT: &[u8] = b"intentd key check v1";
const AAD: &[u8] = b"intentd:key_check";

/// `PRAGMA quick_check`: "ok", or the start stops naming what SQLite found.
pub fn quick_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let mut stmt = conn.prepare("PRAGMA quick_check(5)")?;
    let found: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    if found.len() == 1 && found[0] == "ok" {
        return Ok(());
    }
    Err(StoreError::Db(format!(
        "{}: the database is damaged (quick_check: {}); restore it from a backup or move it \
         away to start with an empty log",
        path.display(),
        found.join("; ")
    )))
}

/// Checks every stored key-check value against the ring and records one for the current key.
pub fn verify_and_record(
    conn: &Connection,
    keyring: &Keyring,
    path: &Path,
) -> Result<(), StoreError> {
    let rows: Vec<(String, Vec<u8>)> = conn
        .prepare("SELECT key_id, sealed FROM key_checks")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (key_id, sealed) in &rows {
        if !keyring.contains(key_id) {
            if still_used(conn, key_id)? {
                return Err(StoreError::Crypto(format!(
                    "{}: rows of this log were written with key '{key_id}', which is not in the \
                     key ring: the log key changed? Put the old key back (as {key_id}:BASE64 \
                     after the current key) or use another database path",
                    path.display()
                )));
            }
            // Nothing sealed with it is left (retention): the key may go.
            conn.execute("DELETE FROM key_checks WHERE key_id = ?1", params![key_id])?;
            continue;
        }
        match keyring.open(key_id, sealed, AAD) {
            Ok(p) if p == PLAINTEXT => {}
            _ => {
                return Err(StoreError::Crypto(format!(
                    "{}: key '{key_id}' in the key ring is not the key that wrote this log \
                     (its key-check value does not open); provide the original key",
                    path.display()
                )))
            }
        }
    }
    let current = keyring.current_id();
    if !rows.iter().any(|(id, _)| id == current) {
        let sealed = keyring.seal(PLAINTEXT, AAD)?;
        conn.execute(
            "INSERT OR REPLACE INTO key_checks (key_id, sealed) VALUES (?1, ?2)",
            params![sealed.key_id, sealed.blob],
        )?;
    }
    Ok(())
}

/// Whether any row is still sealed with `key_id` (a scan, only on this rare path).
fn still_used(conn: &Connection, key_id: &str) -> Result<bool, StoreError> {
    for table in ["conversations", "answers"] {
        let hit: Option<i64> = conn
            .query_row(
                &format!("SELECT 1 FROM {table} WHERE key_id = ?1 LIMIT 1"),
                params![key_id],
                |r| r.get(0),
            )
            .optional()?;
        if hit.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}
