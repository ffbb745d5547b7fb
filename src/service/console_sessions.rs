//! Logged-in console sessions as durable rows, so a restart (a deploy) does not log every
//! operator out. The console keeps its sessions in memory (`server::console::sessions`) and
//! writes each logged-in one here; the store seals the rows like the log (see
//! `crate::durable`) and they are read back at start.
//!
//! A row holds the SHA-256 of the session id, never the id: the cookie is the only copy, so a
//! leaked database (or key) gives no live session. Times are service-clock milliseconds, so the
//! idle and absolute timeouts still hold across a restart.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Service, ServiceError};
use crate::durable::{Journal, Journaled, RowKey, StoredRow};

/// Durable row kind of a console session.
pub const KIND: &str = "console_session";

/// SHA-256 of a session id, hex: what a row is keyed by.
pub fn id_digest(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// One logged-in session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    /// [`id_digest`] of the session id (the cookie value).
    pub id_sha256: String,
    /// The operator name given at login.
    pub name: String,
    /// The session's CSRF token (forms of pages loaded before the restart still work).
    pub csrf: String,
    pub created_ms: i64,
    pub last_seen_ms: i64,
}

/// The sessions read at start (handed to the console once) and the changes to write.
#[derive(Debug, Default)]
struct Book {
    restored: Vec<StoredSession>,
    journal: Option<Journal>,
}

/// The service's holder of console session rows.
#[derive(Debug, Default)]
pub struct ConsoleSessions(Mutex<Book>);

impl ConsoleSessions {
    /// `durable`: a store is configured (without one the sessions live in memory only).
    pub fn new(durable: bool) -> Self {
        Self(Mutex::new(Book {
            restored: Vec::new(),
            journal: durable.then(Journal::default),
        }))
    }

    pub fn is_durable(&self) -> bool {
        self.0.lock().journal.is_some()
    }

    /// Reads the rows a previous run stored (rows of other kinds are skipped).
    pub fn restore(&self, rows: &[StoredRow]) -> Result<usize, String> {
        let mut restored = Vec::new();
        for (i, row) in rows.iter().enumerate().filter(|(_, r)| r.kind == KIND) {
            let s: StoredSession = serde_json::from_slice(&row.json).map_err(|e| {
                format!("stored console sessions: row {i} is not a valid session: {e}")
            })?;
            restored.push(s);
        }
        let n = restored.len();
        self.0.lock().restored = restored;
        Ok(n)
    }

    /// The sessions read at start, once (the console loads them when it starts).
    pub fn take_restored(&self) -> Vec<StoredSession> {
        std::mem::take(&mut self.0.lock().restored)
    }

    /// Notes the session's latest state, written with the next commit.
    pub fn put(&self, s: &StoredSession) {
        if let Some(j) = self.0.lock().journal.as_mut() {
            j.put(KIND, RowKey::Name(s.id_sha256.clone()), s);
        }
    }

    /// Notes that the session ended (logout, expiry, eviction).
    pub fn delete(&self, id_sha256: &str) {
        if let Some(j) = self.0.lock().journal.as_mut() {
            j.delete(KIND, RowKey::Name(id_sha256.to_string()));
        }
    }
}

impl Journaled for ConsoleSessions {
    fn with_journal<R>(&self, f: impl FnOnce(&mut Option<Journal>) -> R) -> R {
        f(&mut self.0.lock().journal)
    }
}

impl Service {
    /// Loads the console sessions a previous run stored (call before serving).
    pub fn restore_console_sessions(&self, rows: &[StoredRow]) -> Result<usize, String> {
        self.console_sessions.restore(rows)
    }

    /// The holder the console writes its logged-in sessions to.
    pub fn console_sessions(&self) -> std::sync::Arc<ConsoleSessions> {
        self.console_sessions.clone()
    }

    /// Waits until the noted session changes are committed (a login or logout answers once
    /// it would survive a restart).
    pub async fn store_console_sessions(&self) -> Result<(), ServiceError> {
        self.flush_state()
            .await
            .map_err(|e| ServiceError::Unavailable(format!("console session not stored yet: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::{DurableRows, RowWrite};

    fn session(id: &str, name: &str) -> StoredSession {
        StoredSession {
            id_sha256: id_digest(id),
            name: name.into(),
            csrf: "c".repeat(64),
            created_ms: 1_000,
            last_seen_ms: 2_000,
        }
    }

    fn stored(writes: Vec<RowWrite>) -> Vec<StoredRow> {
        writes
            .into_iter()
            .filter_map(RowWrite::into_stored)
            .collect()
    }

    #[test]
    fn rows_hold_the_ids_digest_never_the_id() {
        let id = "ab".repeat(32);
        let book = ConsoleSessions::new(true);
        book.put(&session(&id, "amy"));
        let writes = book.take_writes();
        let RowWrite::Put { kind, key, json } = &writes[0] else {
            panic!("{writes:?}")
        };
        assert_eq!(*kind, KIND);
        assert_eq!(*key, RowKey::Name(id_digest(&id)));
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(!text.contains(&id), "{text}");
        assert_eq!(id_digest(&id).len(), 64);
        assert_ne!(id_digest(&id), id_digest(&"ac".repeat(32)));
    }

    #[test]
    fn sessions_come_back_after_a_restart_and_ended_ones_are_deleted() {
        let book = ConsoleSessions::new(true);
        book.put(&session("one", "amy"));
        book.put(&session("two", "bo"));
        let rows = stored(book.take_writes());
        let back = ConsoleSessions::new(true);
        assert_eq!(back.restore(&rows).unwrap(), 2);
        let mut names: Vec<String> = back.take_restored().into_iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(names, ["amy", "bo"]);
        assert!(back.take_restored().is_empty(), "handed out once");
        back.delete(&id_digest("one"));
        assert_eq!(
            back.take_writes(),
            vec![RowWrite::Delete {
                kind: KIND,
                key: RowKey::Name(id_digest("one"))
            }]
        );
        let bad = [StoredRow {
            kind: KIND.into(),
            json: b"{}".to_vec(),
        }];
        assert!(back.restore(&bad).unwrap_err().contains("row 0"));
    }

    #[test]
    fn without_a_store_nothing_is_written() {
        let book = ConsoleSessions::new(false);
        book.put(&session("one", "amy"));
        assert!(!book.has_writes() && !book.is_durable());
        assert!(book.take_writes().is_empty());
    }
}
