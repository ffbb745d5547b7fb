//! Idempotent retries. Chat platforms and front ends retry what they think went unanswered; a
//! retried request must get the first answer unchanged and change nothing (no second decision,
//! log row, A/B exposure, cooldown, handoff or audit row).
//!
//! A request is identified by `(bot_id, message_id)` for Classify and `(bot_id, event_id)` for
//! events. The first answer is written to the store in the same transaction as its log row,
//! before it is returned, so it survives restarts and kill -9. Recent answers are also kept in
//! memory, since most retries come within seconds. Requests with the same key are taken one at
//! a time ([`Idempotency::turn`]), so two racing duplicates get one decision between them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{AnswerKind, AnswerRow, Storage, Store};

/// `idempotency:` section of the service config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// Off: every request is decided, retries included (for measuring what deduplication
    /// costs; keep it on in service).
    pub enabled: bool,
    /// A repeat within this many seconds of the first answer gets that answer again.
    pub window_s: u64,
    /// Answers kept in memory (older ones are read back from the store).
    pub cache_entries: usize,
    /// Keys (8-byte hashes) of the answers in the window remembered in memory, so a new
    /// message needs no store lookup. Beyond it, misses are looked up in the store.
    pub known_keys: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window_s: 86_400,
            cache_entries: 100_000,
            known_keys: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnswerKey {
    pub bot_id: String,
    pub kind: AnswerKind,
    pub id: String,
}

impl AnswerKey {
    pub fn new(bot_id: &str, kind: AnswerKind, id: &str) -> Self {
        Self {
            bot_id: bot_id.to_string(),
            kind,
            id: id.to_string(),
        }
    }
}

/// What is kept of a first answer: the digest of what was asked (a repeat must ask the same)
/// and the answer itself, serialised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirstAnswer {
    /// Server time of the first answer (Unix ms).
    pub at_ms: i64,
    /// SHA-256 (hex) of the request's content (a message's text, an event's kind/chat/user).
    pub digest: String,
    /// The answer as JSON.
    pub body: String,
}

impl FirstAnswer {
    /// Stored as `digest \n body` (the time is a column of its own).
    pub fn to_row(&self, key: &AnswerKey) -> AnswerRow {
        let mut body = Vec::with_capacity(self.digest.len() + 1 + self.body.len());
        body.extend_from_slice(self.digest.as_bytes());
        body.push(b'\n');
        body.extend_from_slice(self.body.as_bytes());
        AnswerRow {
            bot_id: key.bot_id.clone(),
            kind: key.kind,
            key: key.id.clone(),
            at_ms: self.at_ms,
            body,
        }
    }

    pub fn from_row(row: &AnswerRow) -> Option<Self> {
        let text = std::str::from_utf8(&row.body).ok()?;
        let (digest, body) = text.split_once('\n')?;
        Some(Self {
            at_ms: row.at_ms,
            digest: digest.to_string(),
            body: body.to_string(),
        })
    }
}

/// SHA-256 (hex) of the parts, each length-prefixed so ("ab","c") differs from ("a","bc").
pub fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// What a lookup found for a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Never answered (or answered before the window): decide it.
    New,
    /// Answered before with the same content: return this answer again.
    Same(String),
    /// Answered before with other content.
    Different,
}

pub struct Idempotency {
    config: IdempotencyConfig,
    recent: Mutex<Recent>,
    known: Mutex<Known>,
    /// Keys being decided now; a duplicate waits for the first to finish.
    inflight: Mutex<HashMap<AnswerKey, Arc<tokio::sync::Mutex<()>>>>,
    /// The store whose answers `known` was loaded from: it says how an id is stored.
    store: Option<Arc<dyn Store>>,
}

/// Hashes of every key answered in the window, so that a miss in `recent` needs the store only
/// when the key may really be there. The store keeps ids as pseudonyms and hands those back at
/// start, so every hash here is of the id as stored ([`Idempotency::known_hash`]).
struct Known {
    set: HashSet<u64>,
    /// (answered at, hash), oldest first: what leaves the window leaves the set.
    order: VecDeque<(i64, u64)>,
    /// Until then a key missing from `set` may still be in the store (answered before this
    /// process started and not loaded, or dropped for room): look it up there.
    store_until_ms: i64,
}

/// `stored_id`: the id as the store keeps it.
fn key_hash(bot_id: &str, kind: AnswerKind, stored_id: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (bot_id, kind, stored_id).hash(&mut h);
    h.finish()
}

/// Recent first answers, oldest evicted first once `cache_entries` is reached.
#[derive(Default)]
struct Recent {
    map: HashMap<AnswerKey, FirstAnswer>,
    order: VecDeque<AnswerKey>,
}

/// Holding a turn means no other request with the same key is being decided.
pub struct Turn<'a> {
    owner: &'a Idempotency,
    key: AnswerKey,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut inflight = self.owner.inflight.lock();
        // Only the map and this turn hold the lock: nobody waits, so forget the key.
        if Arc::strong_count(&self.lock) == 2 {
            inflight.remove(&self.key);
        }
    }
}

impl Idempotency {
    /// Without `storage` nothing outlives the process: every answer is in memory. With it, the
    /// keys of the answers still in the window are loaded (if that fails, or there are more
    /// than `known_keys`, misses go to the store for one window).
    pub fn new(config: IdempotencyConfig, storage: Option<&Arc<Storage>>, now_ms: i64) -> Self {
        let mut known = Known {
            set: HashSet::new(),
            order: VecDeque::new(),
            store_until_ms: i64::MIN,
        };
        let window_ms = i64::try_from(config.window_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        if let Some(s) = storage.filter(|_| config.enabled) {
            let since = now_ms.saturating_sub(window_ms);
            match s.store().answer_keys(since, config.known_keys) {
                Ok((keys, complete)) => {
                    for (bot_id, kind, stored_id, at_ms) in keys {
                        let h = key_hash(&bot_id, kind, &stored_id);
                        known.set.insert(h);
                        known.order.push_back((at_ms, h));
                    }
                    if !complete {
                        known.store_until_ms = now_ms.saturating_add(window_ms);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load the keys of stored answers; retries are looked up in the store for one window");
                    known.store_until_ms = now_ms.saturating_add(window_ms);
                }
            }
        }
        let store = storage
            .filter(|_| config.enabled)
            .map(|s| s.store().clone());
        Self {
            config,
            known: Mutex::new(known),
            recent: Mutex::new(Recent::default()),
            inflight: Mutex::new(HashMap::new()),
            store,
        }
    }

    /// The hash `known` holds for `key`: of its id as stored, so that a key loaded from the
    /// store at start and the same key asked again after the restart meet.
    fn known_hash(&self, key: &AnswerKey) -> u64 {
        match &self.store {
            Some(s) => key_hash(
                &key.bot_id,
                key.kind,
                &s.stored_message_id(&key.bot_id, &key.id),
            ),
            None => key_hash(&key.bot_id, key.kind, &key.id),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    pub fn window_ms(&self) -> i64 {
        i64::try_from(self.config.window_s.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    /// Waits until no other request with `key` is being decided.
    pub async fn turn(&self, key: &AnswerKey) -> Turn<'_> {
        let lock = self
            .inflight
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        let guard = lock.clone().lock_owned().await;
        Turn {
            owner: self,
            key: key.clone(),
            lock,
            guard: Some(guard),
        }
    }

    /// The first answer to `key` within the window, from memory or else from the store.
    /// A store that cannot be read is an error: deciding again could answer twice.
    pub async fn lookup(
        &self,
        key: &AnswerKey,
        digest: &str,
        now_ms: i64,
        storage: Option<&Arc<Storage>>,
    ) -> Result<Seen, crate::store::StoreError> {
        let cached = self.recent.lock().map.get(key).cloned();
        let found = match cached {
            Some(a) => Some(a),
            // A point query on its own connection (tens of µs): cheaper inline than a hop to a
            // blocking thread, measured with benches/setting_cost.sh.
            None => match storage.filter(|_| self.maybe_stored(key, now_ms)) {
                Some(s) => s
                    .store()
                    .answer(&key.bot_id, key.kind, &key.id)?
                    .as_ref()
                    .and_then(FirstAnswer::from_row),
                None => None,
            },
        };
        Ok(match found {
            Some(a) if now_ms.saturating_sub(a.at_ms) <= self.window_ms() => {
                if a.digest == digest {
                    Seen::Same(a.body)
                } else {
                    Seen::Different
                }
            }
            _ => Seen::New,
        })
    }

    /// Every key not in memory is looked up in the store: replicas that all serve answer each
    /// other's retries, so this process's set of known keys is never complete.
    pub fn always_ask_store(&mut self) {
        self.known.get_mut().store_until_ms = i64::MAX;
    }

    /// A key not in memory may be in the store: its hash is known, or the set is incomplete.
    fn maybe_stored(&self, key: &AnswerKey, now_ms: i64) -> bool {
        let h = self.known_hash(key);
        let known = self.known.lock();
        now_ms < known.store_until_ms || known.set.contains(&h)
    }

    /// Remembers a first answer in memory (the store has it already, or is off).
    pub fn remember(&self, key: AnswerKey, answer: FirstAnswer) {
        {
            let h = self.known_hash(&key);
            let mut known = self.known.lock();
            if known.set.insert(h) {
                known.order.push_back((answer.at_ms, h));
            }
            let window_start = answer.at_ms.saturating_sub(self.window_ms());
            while let Some(&(at, old)) = known.order.front() {
                let full = known.order.len() > self.config.known_keys.max(1);
                if at >= window_start && !full {
                    break;
                }
                known.order.pop_front();
                known.set.remove(&old);
                if full && at >= window_start {
                    // Dropped for room while still in the window: misses may be in the store.
                    known.store_until_ms = known
                        .store_until_ms
                        .max(at.saturating_add(self.window_ms()));
                }
            }
        }
        let window_start = answer.at_ms.saturating_sub(self.window_ms());
        let mut r = self.recent.lock();
        if r.map.insert(key.clone(), answer).is_none() {
            r.order.push_back(key);
        }
        // Oldest first: beyond `cache_entries`, and answers that left the window (a lookup
        // would not use them; at low traffic they would otherwise stay until pushed out).
        while let Some(old) = r.order.front() {
            let expired = r.map.get(old).is_none_or(|a| a.at_ms < window_start);
            if !expired && r.map.len() <= self.config.cache_entries.max(1) {
                break;
            }
            if let Some(old) = r.order.pop_front() {
                r.map.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> AnswerKey {
        AnswerKey::new("b", AnswerKind::Message, id)
    }

    fn answer(at_ms: i64, digest: &str) -> FirstAnswer {
        FirstAnswer {
            at_ms,
            digest: digest.into(),
            body: "{}".into(),
        }
    }

    #[tokio::test]
    async fn same_content_replays_other_content_differs_and_the_window_ends() {
        let idem = Idempotency::new(
            IdempotencyConfig {
                window_s: 10,
                cache_entries: 8,
                ..IdempotencyConfig::default()
            },
            None,
            0,
        );
        idem.remember(key("m"), answer(1_000, "d1"));
        assert_eq!(
            idem.lookup(&key("m"), "d1", 5_000, None).await.unwrap(),
            Seen::Same("{}".into())
        );
        assert_eq!(
            idem.lookup(&key("m"), "d2", 5_000, None).await.unwrap(),
            Seen::Different
        );
        assert_eq!(
            idem.lookup(&key("m"), "d1", 11_001, None).await.unwrap(),
            Seen::New
        );
        assert_eq!(
            idem.lookup(&key("other"), "d1", 5_000, None).await.unwrap(),
            Seen::New
        );
    }

    #[tokio::test]
    async fn the_memory_is_bounded_oldest_first() {
        let idem = Idempotency::new(
            IdempotencyConfig {
                window_s: 100,
                cache_entries: 2,
                ..IdempotencyConfig::default()
            },
            None,
            0,
        );
        for id in ["a", "b", "c"] {
            idem.remember(key(id), answer(0, "d"));
        }
        assert_eq!(
            idem.lookup(&key("a"), "d", 0, None).await.unwrap(),
            Seen::New
        );
        assert!(matches!(
            idem.lookup(&key("c"), "d", 0, None).await.unwrap(),
            Seen::Same(_)
        ));
    }

    /// Regression (issue 12 item 7): answers past the window stayed in memory until
    /// `cache_entries` newer ones pushed them out (at low traffic, for days); they now leave
    /// with the window. Failed on the old code (3 answers kept).
    #[test]
    fn answers_past_the_window_leave_the_memory() {
        let idem = Idempotency::new(
            IdempotencyConfig {
                window_s: 100,
                cache_entries: 1_000,
                ..IdempotencyConfig::default()
            },
            None,
            0,
        );
        for (id, at) in [("a", 0), ("b", 50_000), ("c", 99_000)] {
            idem.remember(key(id), answer(at, "d"));
        }
        idem.remember(key("d"), answer(150_001, "d"));
        assert_eq!(idem.recent.lock().map.len(), 2, "a and b left the window");
        assert_eq!(idem.recent.lock().order.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_duplicate_waits_for_the_first_turn_and_keys_are_forgotten() {
        let idem = Arc::new(Idempotency::new(IdempotencyConfig::default(), None, 0));
        let first = idem.turn(&key("m")).await;
        let waiter = {
            let idem = idem.clone();
            tokio::spawn(async move {
                let _t = idem.turn(&key("m")).await;
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "the duplicate must wait");
        // Another key is not held up.
        drop(idem.turn(&key("n")).await);
        drop(first);
        waiter.await.unwrap();
        assert!(idem.inflight.lock().is_empty());
    }

    // Issue 12.8: the store keeps message ids as pseudonyms and hands those back at start; a
    // retry after a restart hashes its clear id the same way, so the loaded filter knows it
    // (with the whole window loaded, a key the filter does not know is never looked up).
    #[tokio::test]
    async fn a_retry_after_a_restart_is_known_by_the_keys_loaded_from_the_store() {
        use crate::store::test_support::{conversation, key_b64, keyring};
        use crate::store::{Record, StoreConfig};
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            path: dir.path().join("i.db"),
            ..StoreConfig::default()
        };
        let open = || {
            Arc::new(
                Storage::open_with_keyring(
                    &cfg,
                    keyring(&key_b64(3)),
                    Arc::new(crate::clock::ManualClock::new(0)),
                    Arc::new(crate::metrics::Metrics::new()),
                )
                .unwrap(),
            )
        };
        let first = answer(1_000, "d");
        {
            let storage = open();
            let mut c = conversation("b", "g", "msg-secret-123", 1_000);
            c.answer = Some(first.to_row(&key("msg-secret-123")));
            storage
                .submit(Record::Conversation(c))
                .unwrap()
                .await
                .unwrap();
            let s = storage.clone();
            tokio::task::spawn_blocking(move || s.shutdown())
                .await
                .unwrap();
        }
        let storage = open();
        let (stored, _) = storage.store().answer_keys(0, 10).unwrap();
        assert_ne!(stored[0].2, "msg-secret-123", "kept as a pseudonym");
        let idem = Idempotency::new(IdempotencyConfig::default(), Some(&storage), 2_000);
        assert!(
            idem.known.lock().store_until_ms < 0,
            "the whole window was loaded"
        );
        assert!(idem.maybe_stored(&key("msg-secret-123"), 2_000));
        assert!(!idem.maybe_stored(&key("msg-other"), 2_000));
        assert_eq!(
            idem.lookup(&key("msg-secret-123"), "d", 2_000, Some(&storage))
                .await
                .unwrap(),
            Seen::Same(first.body.clone())
        );
        assert_eq!(
            idem.lookup(&key("msg-other"), "d", 2_000, Some(&storage))
                .await
                .unwrap(),
            Seen::New
        );
        // Remembered after the restart, a key hashes to the same entry as the loaded one.
        idem.remember(key("msg-secret-123"), answer(1_000, "d"));
        assert_eq!(idem.known.lock().set.len(), 1);
        tokio::task::spawn_blocking(move || storage.shutdown())
            .await
            .unwrap();
    }

    #[test]
    fn a_row_reads_back_as_the_answer() {
        let a = FirstAnswer {
            at_ms: 7,
            digest: digest(&["x"]),
            body: "{\"a\":\"line\\nbreak\"}".into(),
        };
        assert_eq!(FirstAnswer::from_row(&a.to_row(&key("m"))), Some(a));
    }

    #[test]
    fn digest_separates_parts() {
        assert_ne!(digest(&["ab", "c"]), digest(&["a", "bc"]));
        assert_eq!(digest(&["x"]), digest(&["x"]));
    }
}
