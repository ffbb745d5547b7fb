//! Console sessions, in memory: a random id (the cookie) and a random CSRF token per session,
//! an idle timeout and an absolute lifetime. A login page gets an anonymous session first (so
//! the login form carries a CSRF token too); logging in replaces it with a new id (an id seen
//! before login never becomes a logged-in one). Nothing here survives a restart: operators
//! log in again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::config::ConsoleConfig;

/// How long a login page's anonymous session lives.
pub const LOGIN_PAGE_TTL: Duration = Duration::from_secs(600);

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
    session: Session,
    created: Instant,
    last_used: Instant,
    /// What the last form did, shown once by the page it redirects to (POST-redirect-GET).
    flash: Option<Flash>,
}

/// A one-time message for the next page: `kind` is `ok` or `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub kind: &'static str,
    pub text: String,
}

pub struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
    idle: Duration,
    max_age: Duration,
    cap: usize,
}

/// 32 random bytes, hex: a session id or a CSRF token (the thread RNG is a CSPRNG seeded by
/// the operating system).
fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Sessions {
    pub fn new(cfg: &ConsoleConfig) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            idle: Duration::from_secs(cfg.session_idle_s),
            max_age: Duration::from_secs(cfg.session_max_s),
            cap: cfg.max_sessions.max(1),
        }
    }

    /// The session's lifetime from login: the cookie's Max-Age.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    fn expired(&self, e: &Entry, now: Instant) -> bool {
        let (idle, max) = if e.session.operator {
            (self.idle, self.max_age)
        } else {
            (LOGIN_PAGE_TTL, LOGIN_PAGE_TTL)
        };
        now.saturating_duration_since(e.last_used) > idle
            || now.saturating_duration_since(e.created) > max
    }

    /// The live session with this id (its idle clock restarts), or None (unknown or expired:
    /// then it is forgotten).
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let mut map = self.map.lock();
        let e = map.get_mut(id)?;
        if self.expired(e, now) {
            map.remove(id);
            return None;
        }
        e.last_used = now;
        Some(e.session.clone())
    }

    /// A new anonymous session (for the login form).
    pub fn start_anonymous(&self, now: Instant) -> Session {
        self.insert(false, String::new(), now)
    }

    /// Logs `name` in: `previous` (the login page's session) ends and a new logged-in session
    /// with a fresh id and CSRF token starts.
    pub fn log_in(&self, previous: &str, name: &str, now: Instant) -> Session {
        self.map.lock().remove(previous);
        self.insert(true, name.to_string(), now)
    }

    /// Leaves a message for the session's next page (replacing an unread one).
    pub fn set_flash(&self, id: &str, kind: &'static str, text: String) {
        if let Some(e) = self.map.lock().get_mut(id) {
            e.flash = Some(Flash { kind, text });
        }
    }

    /// The session's message, once.
    pub fn take_flash(&self, id: &str) -> Option<Flash> {
        self.map.lock().get_mut(id).and_then(|e| e.flash.take())
    }

    pub fn end(&self, id: &str) {
        self.map.lock().remove(id);
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
            map.retain(|_, e| !self.expired(e, now));
        }
        if map.len() >= self.cap {
            // The least recently used goes, anonymous ones first: a flood of login pages
            // cannot log operators out.
            let victim = map
                .iter()
                .min_by_key(|(_, e)| (e.session.operator, e.last_used))
                .map(|(k, _)| k.clone());
            if let Some(k) = victim {
                map.remove(&k);
            }
        }
        map.insert(
            session.id.clone(),
            Entry {
                session: session.clone(),
                created: now,
                last_used: now,
                flash: None,
            },
        );
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
