//! Console sessions: a random id (the cookie) and a random CSRF token per session, an idle
//! timeout and an absolute lifetime. A login page gets an anonymous session first (so the login
//! form carries a CSRF token too); logging in replaces it with a new id (an id seen before login
//! never becomes a logged-in one).
//!
//! Sessions are held in memory, keyed by the SHA-256 of their id. With a store, logged-in ones
//! are also written through the service ([`ConsoleSessions`]: digest, operator name, CSRF token,
//! created / last-seen times) and loaded again at start, so a restart logs nobody out; logout,
//! expiry and eviction delete the row. Last-seen is written at most every [`TOUCH_EVERY`], so
//! after a restart a session may time out that much earlier than it would have. Anonymous
//! sessions and the one-time messages are not stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::config::ConsoleConfig;
use crate::service::console_sessions::{id_digest, ConsoleSessions, StoredSession};

/// How long a login page's anonymous session lives.
pub const LOGIN_PAGE_TTL: Duration = Duration::from_secs(600);
/// A stored session's last-seen time is rewritten at most this often.
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// What a handler sees of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    /// The token every POST form of this session must carry.
    pub csrf: String,
    /// Logged in (an anonymous session only shows the login form).
    pub operator: bool,
    /// Who is logged in, as given on the login form: the name the desk's actions are recorded
    /// under (empty for an anonymous session).
    pub name: String,
}

impl Session {
    /// `given` is this session's CSRF token (constant time; an empty one never matches).
    pub fn csrf_matches(&self, given: &str) -> bool {
        !given.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(given.as_bytes()))
    }
}

#[derive(Debug)]
struct Entry {
    /// Its `id` is empty: the map is keyed by the id's digest, and a restored session's id is
    /// known only from the cookie that presents it.
    session: Session,
    created: Instant,
    last_used: Instant,
    /// When last-seen was last written to the store.
    stored_seen: Instant,
    /// What the last form did, shown once by the page it redirects to (POST-redirect-GET).
    flash: Option<Flash>,
}

/// A one-time message for the next page: `kind` is `ok` or `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub kind: &'static str,
    pub text: String,
}

/// Where logged-in sessions are written, and the clock reading that maps `Instant`s to the
/// service clock's milliseconds (`at` is `ms`).
struct Durable {
    rows: Arc<ConsoleSessions>,
    at: Instant,
    ms: i64,
}

impl Durable {
    fn ms_of(&self, t: Instant) -> i64 {
        match t.checked_duration_since(self.at) {
            Some(d) => self.ms.saturating_add(d.as_millis() as i64),
            None => self
                .ms
                .saturating_sub(self.at.duration_since(t).as_millis() as i64),
        }
    }

    /// The instant of a stored time; a time ahead of the clock (it was set back) is now.
    fn instant_of(&self, ms: i64) -> Option<Instant> {
        let back = self.ms.saturating_sub(ms);
        if back <= 0 {
            return Some(self.at);
        }
        self.at.checked_sub(Duration::from_millis(back as u64))
    }
}

pub struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
    idle: Duration,
    max_age: Duration,
    cap: usize,
    durable: Option<Durable>,
}

/// 32 random bytes, hex: a session id or a CSRF token (the thread RNG is a CSPRNG seeded by
/// the operating system).
fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Sessions {
    /// Sessions in memory only.
    pub fn new(cfg: &ConsoleConfig) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            idle: Duration::from_secs(cfg.session_idle_s),
            max_age: Duration::from_secs(cfg.session_max_s),
            cap: cfg.max_sessions.max(1),
            durable: None,
        }
    }

    /// Sessions whose logged-in ones are written to `rows`; the ones a previous run stored are
    /// loaded (expired ones deleted). `now` and `now_ms` are the same moment on the monotonic
    /// and the service clock.
    pub fn durable(
        cfg: &ConsoleConfig,
        rows: Arc<ConsoleSessions>,
        now: Instant,
        now_ms: i64,
    ) -> Self {
        let mut s = Self::new(cfg);
        let restored = rows.take_restored();
        let d = Durable {
            rows,
            at: now,
            ms: now_ms,
        };
        let mut map = HashMap::new();
        {
            for r in restored {
                let entry = match (d.instant_of(r.created_ms), d.instant_of(r.last_seen_ms)) {
                    (Some(created), Some(last_used)) => Entry {
                        session: Session {
                            id: String::new(),
                            csrf: r.csrf,
                            operator: true,
                            name: r.name,
                        },
                        created,
                        last_used,
                        stored_seen: last_used,
                        flash: None,
                    },
                    // Older than this machine's monotonic clock reaches: long expired.
                    _ => {
                        d.rows.delete(&r.id_sha256);
                        continue;
                    }
                };
                if s.expired_at(&entry, now) || map.len() >= s.cap {
                    d.rows.delete(&r.id_sha256);
                } else {
                    map.insert(r.id_sha256, entry);
                }
            }
        }
        *s.map.get_mut() = map;
        s.durable = Some(d);
        s
    }

    /// The session's lifetime from login: the cookie's Max-Age.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    fn expired_at(&self, e: &Entry, now: Instant) -> bool {
        let (idle, max) = if e.session.operator {
            (self.idle, self.max_age)
        } else {
            (LOGIN_PAGE_TTL, LOGIN_PAGE_TTL)
        };
        now.saturating_duration_since(e.last_used) > idle
            || now.saturating_duration_since(e.created) > max
    }

    /// Writes a logged-in session's row (no-op without a store).
    fn store(&self, digest: &str, e: &Entry) {
        if let (Some(d), true) = (&self.durable, e.session.operator) {
            d.rows.put(&StoredSession {
                id_sha256: digest.to_string(),
                name: e.session.name.clone(),
                csrf: e.session.csrf.clone(),
                created_ms: d.ms_of(e.created),
                last_seen_ms: d.ms_of(e.last_used),
            });
        }
    }

    /// Deletes a logged-in session's row (no-op without a store).
    fn unstore(&self, digest: &str, e: &Entry) {
        if let (Some(d), true) = (&self.durable, e.session.operator) {
            d.rows.delete(digest);
        }
    }

    /// The live session with this id (its idle clock restarts), or None (unknown or expired:
    /// then it is forgotten).
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let digest = id_digest(id);
        let mut map = self.map.lock();
        let e = map.get_mut(&digest)?;
        if self.expired_at(e, now) {
            if let Some(e) = map.remove(&digest) {
                self.unstore(&digest, &e);
            }
            return None;
        }
        e.last_used = now;
        if now.saturating_duration_since(e.stored_seen) >= TOUCH_EVERY {
            e.stored_seen = now;
            self.store(&digest, e);
        }
        Some(Session {
            id: id.to_string(),
            ..e.session.clone()
        })
    }

    /// A new anonymous session (for the login form).
    pub fn start_anonymous(&self, now: Instant) -> Session {
        self.insert(false, String::new(), now)
    }

    /// Logs `name` in: `previous` (the login page's session) ends and a new logged-in session
    /// with a fresh id and CSRF token starts.
    pub fn log_in(&self, previous: &str, name: &str, now: Instant) -> Session {
        self.end(previous);
        self.insert(true, name.to_string(), now)
    }

    /// Leaves a message for the session's next page (replacing an unread one).
    pub fn set_flash(&self, id: &str, kind: &'static str, text: String) {
        if let Some(e) = self.map.lock().get_mut(&id_digest(id)) {
            e.flash = Some(Flash { kind, text });
        }
    }

    /// The session's message, once.
    pub fn take_flash(&self, id: &str) -> Option<Flash> {
        self.map
            .lock()
            .get_mut(&id_digest(id))
            .and_then(|e| e.flash.take())
    }

    pub fn end(&self, id: &str) {
        let digest = id_digest(id);
        if let Some(e) = self.map.lock().remove(&digest) {
            self.unstore(&digest, &e);
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, operator: bool, name: String, now: Instant) -> Session {
        let session = Session {
            id: random_token(),
            csrf: random_token(),
            operator,
            name,
        };
        let mut map = self.map.lock();
        if map.len() >= self.cap {
            let gone: Vec<String> = map
                .iter()
                .filter(|(_, e)| self.expired_at(e, now))
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                if let Some(e) = map.remove(&k) {
                    self.unstore(&k, &e);
                }
            }
        }
        if map.len() >= self.cap {
            // The least recently used goes, anonymous ones first: a flood of login pages
            // cannot log operators out.
            let victim = map
                .iter()
                .min_by_key(|(_, e)| (e.session.operator, e.last_used))
                .map(|(k, _)| k.clone());
            if let Some(k) = victim {
                if let Some(e) = map.remove(&k) {
                    self.unstore(&k, &e);
                }
            }
        }
        let digest = id_digest(&session.id);
        let entry = Entry {
            session: Session {
                id: String::new(),
                ..session.clone()
            },
            created: now,
            last_used: now,
            stored_seen: now,
            flash: None,
        };
        self.store(&digest, &entry);
        map.insert(digest, entry);
        session
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(cap: usize) -> Sessions {
        Sessions::new(&ConsoleConfig {
            session_idle_s: 60,
            session_max_s: 300,
            max_sessions: cap,
            ..ConsoleConfig::default()
        })
    }

    #[test]
    fn ids_and_tokens_are_random_and_login_changes_the_id() {
        let s = sessions(16);
        let t0 = Instant::now();
        let a = s.start_anonymous(t0);
        let b = s.start_anonymous(t0);
        assert_eq!(a.id.len(), 64);
        assert_ne!(a.id, b.id);
        assert_ne!(a.csrf, a.id);
        assert!(!a.operator);
        let op = s.log_in(&a.id, "amy", t0);
        assert!(op.operator);
        assert_eq!(op.name, "amy");
        s.set_flash(&op.id, "ok", "done".into());
        assert_eq!(
            s.take_flash(&op.id).map(|f| f.text).as_deref(),
            Some("done")
        );
        assert_eq!(s.take_flash(&op.id), None, "shown once");
        assert_ne!(op.id, a.id);
        assert_ne!(op.csrf, a.csrf);
        assert_eq!(s.get(&a.id, t0), None, "the login page's id is gone");
        assert_eq!(s.get(&op.id, t0), Some(op.clone()));
        s.end(&op.id);
        assert_eq!(s.get(&op.id, t0), None);
    }

    #[test]
    fn idle_and_absolute_timeouts_end_sessions() {
        let s = sessions(16);
        let t0 = Instant::now();
        let op = s.log_in("", "amy", t0);
        // Used every 50 s: the idle timeout (60 s) never strikes, the 300 s lifetime does.
        let mut t = t0;
        for _ in 0..5 {
            t += Duration::from_secs(50);
            assert!(s.get(&op.id, t).is_some());
        }
        t += Duration::from_secs(55);
        assert_eq!(s.get(&op.id, t), None, "past session_max_s");
        let op = s.log_in("", "amy", t0);
        assert_eq!(s.get(&op.id, t0 + Duration::from_secs(61)), None, "idle");
        let anon = s.start_anonymous(t0);
        assert!(s.get(&anon.id, t0 + Duration::from_secs(599)).is_some());
        assert_eq!(s.get(&anon.id, t0 + Duration::from_secs(1200)), None);
    }

    #[test]
    fn csrf_compare_needs_the_exact_token() {
        let s = sessions(16).start_anonymous(Instant::now());
        assert!(s.csrf_matches(&s.csrf.clone()));
        assert!(!s.csrf_matches(""));
        assert!(!s.csrf_matches(&s.csrf[..10]));
        assert!(!s.csrf_matches(&s.id));
    }

    /// What the store would hand back at the next start: the rows written so far.
    fn restart(rows: &ConsoleSessions, stored: &mut Vec<StoredRow>) -> Arc<ConsoleSessions> {
        for w in crate::durable::DurableRows::take_writes(rows) {
            match w {
                RowWrite::Put { key, json, .. } => {
                    stored.retain(|(k, _)| *k != key);
                    stored.push((key, json));
                }
                RowWrite::Delete { key, .. } => stored.retain(|(k, _)| *k != key),
                RowWrite::DeleteBelow { .. } => unreachable!("no queue rows"),
            }
        }
        let back = Arc::new(ConsoleSessions::new(true));
        let rows: Vec<crate::durable::StoredRow> = stored
            .iter()
            .map(|(_, json)| crate::durable::StoredRow {
                kind: crate::service::console_sessions::KIND.into(),
                json: json.clone(),
            })
            .collect();
        back.restore(&rows).unwrap();
        back
    }
    type StoredRow = (crate::durable::RowKey, Vec<u8>);
    use crate::durable::RowWrite;

    fn cfg() -> ConsoleConfig {
        ConsoleConfig {
            session_idle_s: 60,
            session_max_s: 300,
            max_sessions: 16,
            ..ConsoleConfig::default()
        }
    }

    #[test]
    fn logged_in_sessions_survive_a_restart_with_their_csrf_token() {
        let t0 = Instant::now();
        let ms0 = 1_795_572_000_000;
        let rows = Arc::new(ConsoleSessions::new(true));
        let s = Sessions::durable(&cfg(), rows.clone(), t0, ms0);
        let anon = s.start_anonymous(t0);
        let op = s.log_in(&anon.id, "amy", t0);
        let gone = s.log_in("", "bo", t0);
        s.end(&gone.id);
        let mut disk = Vec::new();
        let back = restart(&rows, &mut disk);
        assert_eq!(
            disk.len(),
            1,
            "only amy's session is stored (not the anonymous or ended one)"
        );
        assert!(!String::from_utf8_lossy(&disk[0].1).contains(&op.id));

        // Restarted 30 s later: the session is there, with its name and CSRF token.
        let t1 = Instant::now() + Duration::from_secs(1000);
        let s = Sessions::durable(&cfg(), back, t1, ms0 + 30_000);
        assert_eq!(s.get(&op.id, t1), Some(op.clone()));
        assert_eq!(s.get(&anon.id, t1), None);
        assert_eq!(s.get(&gone.id, t1), None);
        // The idle timeout still holds.
        assert_eq!(s.get(&op.id, t1 + Duration::from_secs(61)), None);
    }

    #[test]
    fn timeouts_hold_across_a_restart_and_expired_rows_are_deleted() {
        let t0 = Instant::now() + Duration::from_secs(1000);
        let ms0 = 1_795_572_000_000;
        let rows = Arc::new(ConsoleSessions::new(true));
        let s = Sessions::durable(&cfg(), rows.clone(), t0, ms0);
        let op = s.log_in("", "amy", t0);
        // Used every 50 s (last-seen written every TOUCH_EVERY): alive at 250 s.
        let mut t = t0;
        for _ in 0..5 {
            t += Duration::from_secs(50);
            assert!(s.get(&op.id, t).is_some());
        }
        let mut disk = Vec::new();
        let back = restart(&rows, &mut disk);
        // Last-seen is written every TOUCH_EVERY (60 s): the one at 200 s was, 250 s was not.
        // Restarted at 290 s, the session has been idle 90 s by its stored time: gone.
        let later = Instant::now() + Duration::from_secs(5000);
        let s2 = Sessions::durable(&cfg(), back.clone(), later, ms0 + 290_000);
        assert_eq!(
            s2.get(&op.id, later),
            None,
            "idle past 60 s by the stored time"
        );
        let deleted = crate::durable::DurableRows::take_writes(&*back);
        assert!(
            deleted.iter().any(|w| matches!(w, RowWrite::Delete { .. })),
            "{deleted:?}"
        );

        // The absolute lifetime too: restarted 301 s after login, just used.
        let rows = Arc::new(ConsoleSessions::new(true));
        let s = Sessions::durable(&cfg(), rows.clone(), t0, ms0);
        let op = s.log_in("", "amy", t0);
        let mut disk = Vec::new();
        let back = restart(&rows, &mut disk);
        let s2 = Sessions::durable(&cfg(), back, later, ms0 + 30_000);
        // Used every 50 s after the restart: alive until 300 s after login (30 s before
        // `later`), then gone although never idle.
        for i in 0..=5u64 {
            assert!(
                s2.get(&op.id, later + Duration::from_secs(i * 50))
                    .is_some(),
                "at {i}"
            );
        }
        assert_eq!(s2.get(&op.id, later + Duration::from_secs(300)), None);
    }

    #[test]
    fn a_flood_of_login_pages_evicts_anonymous_sessions_first() {
        let s = sessions(16);
        let t0 = Instant::now();
        let op = s.log_in("", "amy", t0);
        for i in 0..100 {
            s.start_anonymous(t0 + Duration::from_millis(i));
        }
        assert_eq!(s.len(), 16);
        assert!(s.get(&op.id, t0 + Duration::from_secs(1)).is_some());
    }
}
