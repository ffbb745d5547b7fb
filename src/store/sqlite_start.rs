//! The SQLite side of opening the log: `PRAGMA quick_check`, the key-check values and the
//! pseudonym secret read and written in SQL. The crypto behind them is backend-neutral
//! (`key_check.rs`, `pseudonyms.rs`); PostgreSQL does the same in `postgres.rs`.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

use super::crypto::Keyring;
use super::key_check;
use super::pseudonyms::{Pseudonyms, SECRET_NAME};
use super::StoreError;

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

/// Checks every stored key-check value against the ring and records one for the current key
/// ([`key_check::check`]).
pub fn verify_key_checks(
    conn: &Connection,
    keyring: &Keyring,
    path: &Path,
) -> Result<(), StoreError> {
    let origin = path.display().to_string();
    let rows: Vec<(String, Vec<u8>)> = conn
        .prepare("SELECT key_id, sealed FROM key_checks")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let outcome = key_check::check(keyring, &rows, &origin)?;
    for key_id in &outcome.absent {
        if still_used(conn, key_id)? {
            return Err(key_check::missing_key(&origin, key_id));
        }
        // Nothing sealed with it is left (retention): the key may go.
        conn.execute("DELETE FROM key_checks WHERE key_id = ?1", params![key_id])?;
    }
    if let Some(sealed) = outcome.record {
        conn.execute(
            "INSERT OR REPLACE INTO key_checks (key_id, sealed) VALUES (?1, ?2)",
            params![sealed.key_id, sealed.blob],
        )?;
    }
    Ok(())
}

/// Whether any row is still sealed with `key_id` (a scan, only on this rare path).
fn still_used(conn: &Connection, key_id: &str) -> Result<bool, StoreError> {
    for table in key_check::SEALED_TABLES {
        let exists: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            params![table],
            |r| r.get(0),
        )?;
        if !exists {
            continue; // a table of a later migration
        }
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

/// Reads the database's pseudonym secret (re-sealing it with the current key when an older key
/// sealed it), or makes one and converts the user ids already stored, in one transaction.
pub fn load_or_create_pseudonyms(
    conn: &mut Connection,
    keyring: &Keyring,
    path: &Path,
) -> Result<Pseudonyms, StoreError> {
    let origin = path.display().to_string();
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
            let this = Pseudonyms::open_sealed(keyring, &key_id, &sealed, &origin)?;
            if key_id != keyring.current_id() {
                store_secret(&tx, &this, keyring)?;
            }
            this
        }
        None => {
            let this = Pseudonyms::generate();
            store_secret(&tx, &this, keyring)?;
            let converted = convert_clear_users(&tx, &this)?;
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

fn store_secret(tx: &Connection, p: &Pseudonyms, keyring: &Keyring) -> Result<(), StoreError> {
    let sealed = p.seal_secret(keyring)?;
    tx.execute(
        "INSERT OR REPLACE INTO secrets (name, key_id, sealed) VALUES (?1, ?2, ?3)",
        params![SECRET_NAME, sealed.key_id, sealed.blob],
    )?;
    Ok(())
}

/// Rows written before pseudonyms: every user id is clear.
fn convert_clear_users(tx: &Connection, p: &Pseudonyms) -> Result<usize, StoreError> {
    let pairs: Vec<(String, String)> = tx
        .prepare("SELECT DISTINCT bot_id, user_id FROM conversations WHERE user_id <> ''")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut rows = 0;
    let mut update =
        tx.prepare("UPDATE conversations SET user_id = ?1 WHERE bot_id = ?2 AND user_id = ?3")?;
    for (bot, user) in pairs {
        rows += update.execute(params![p.user(&bot, &user), bot, user])?;
    }
    Ok(rows)
}
