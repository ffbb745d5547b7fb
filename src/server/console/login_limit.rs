//! Failed console logins, limited per client address and in total: after
//! `login_max_failures` wrong tokens within `login_window_s` from one address (or
//! `login_max_failures_global` from all addresses together) that address (or everyone) is
//! locked out until the oldest of those failures leaves the window. While locked, every login
//! attempt is answered 429 with the wait, the right token included: a guesser cannot tell a hit
//! from a miss, and a success does not bypass the lock.
//!
//! A sliding window of failure times, not `governor` (used for the connectors' message rate):
//! a lock must be checked before a login is tried without spending anything, and only failures
//! count; governor's keyed limiter can only test by consuming a cell and keeps every key it has
//! seen until pruned. Here each address keeps at most `login_max_failures` instants and at most
//! [`MAX_TRACKED`] addresses are tracked (the stalest go first), so memory is bounded. Times
//! are `Instant`s passed in by the caller, so tests move time by arithmetic.
//!
//! The address is the TCP peer. Behind a reverse proxy every client has the proxy's address:
//! then the per-address limit acts as a second global one (the proxy should limit too).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::ConsoleConfig;

/// Addresses with recent failures kept at most.
pub const MAX_TRACKED: usize = 10_000;

/// Why a login is refused for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    /// Until the oldest counted failure leaves the window (at least one second).
    pub retry_after: Duration,
    /// True: the global limit (every address); false: this address's.
    pub global: bool,
}

/// The recent failures of one address (or of all): at most `limit` instants, oldest first.
#[derive(Debug, Default)]
struct Failures(VecDeque<Instant>);

impl Failures {
    fn note(&mut self, now: Instant, limit: usize) {
        self.0.push_back(now);
        while self.0.len() > limit {
            self.0.pop_front();
        }
    }

    /// Locked when `limit` failures happened within `window` before `now`.
    fn lock(&self, now: Instant, limit: usize, window: Duration) -> Option<Duration> {
        if self.0.len() < limit {
            return None;
        }
        let oldest = *self.0.front()?;
        let until = oldest + window;
        (until > now).then(|| (until - now).max(Duration::from_secs(1)))
    }

    fn newest(&self) -> Option<Instant> {
        self.0.back().copied()
    }
}

#[derive(Debug, Default)]
struct Inner {
    by_addr: HashMap<IpAddr, Failures>,
    all: Failures,
}

pub struct LoginLimiter {
    per_address: usize,
    global: usize,
    window: Duration,
    cap: usize,
    inner: Mutex<Inner>,
}

/// IPv6 clients are counted per /64 (one host usually holds a whole /64); IPv4 per address.
fn client_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl LoginLimiter {
    pub fn new(cfg: &ConsoleConfig) -> Self {
        Self::with_cap(cfg, MAX_TRACKED)
    }

    fn with_cap(cfg: &ConsoleConfig, cap: usize) -> Self {
        Self {
            per_address: cfg.login_max_failures.max(1),
            global: cfg.login_max_failures_global.max(1),
            window: Duration::from_secs(cfg.login_window_s),
            cap: cap.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// How many failures from one address lock it, and within how long.
    pub fn per_address(&self) -> (usize, Duration) {
        (self.per_address, self.window)
    }

    /// Err while `addr` (None: unknown peer, counted globally only) may not try to log in.
    pub fn check(&self, addr: Option<IpAddr>, now: Instant) -> Result<(), Locked> {
        let inner = self.inner.lock();
        if let Some(wait) = addr
            .and_then(|a| inner.by_addr.get(&client_key(a)))
            .and_then(|f| f.lock(now, self.per_address, self.window))
        {
            return Err(Locked {
                retry_after: wait,
                global: false,
            });
        }
        match inner.all.lock(now, self.global, self.window) {
            Some(wait) => Err(Locked {
                retry_after: wait,
                global: true,
            }),
            None => Ok(()),
        }
    }

    /// Counts a wrong token from `addr`.
    pub fn failed(&self, addr: Option<IpAddr>, now: Instant) {
        let mut inner = self.inner.lock();
        inner.all.note(now, self.global);
        let Some(addr) = addr.map(client_key) else {
            return;
        };
        if !inner.by_addr.contains_key(&addr) && inner.by_addr.len() >= self.cap {
            let window = self.window;
            inner.by_addr.retain(|_, f| {
                f.newest()
                    .is_some_and(|t| now.saturating_duration_since(t) < window)
            });
            if inner.by_addr.len() >= self.cap {
                let stalest = inner
                    .by_addr
                    .iter()
                    .min_by_key(|(_, f)| f.newest())
                    .map(|(k, _)| *k);
                if let Some(k) = stalest {
                    inner.by_addr.remove(&k);
                }
            }
        }
        inner
            .by_addr
            .entry(addr)
            .or_default()
            .note(now, self.per_address);
    }

    /// A login from `addr` succeeded (it was not locked): its failures are forgotten.
    pub fn succeeded(&self, addr: Option<IpAddr>) {
        if let Some(a) = addr {
            self.inner.lock().by_addr.remove(&client_key(a));
        }
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.inner.lock().by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per: usize, global: usize, cap: usize) -> LoginLimiter {
        LoginLimiter::with_cap(
            &ConsoleConfig {
                login_max_failures: per,
                login_max_failures_global: global,
                login_window_s: 300,
                ..ConsoleConfig::default()
            },
            cap,
        )
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn five_failures_in_the_window_lock_the_address_until_the_first_leaves_it() {
        let l = limiter(5, 1000, 100);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for i in 0..5u64 {
            assert_eq!(l.check(a, t0 + Duration::from_secs(i * 10)), Ok(()));
            l.failed(a, t0 + Duration::from_secs(i * 10));
        }
        // The 5th failure was at t0+40 s; the first (t0) leaves the window at t0+300 s.
        let locked = l.check(a, t0 + Duration::from_secs(41)).unwrap_err();
        assert_eq!(locked.retry_after, Duration::from_secs(259));
        assert!(!locked.global);
        // Another address is not locked.
        assert_eq!(
            l.check(ip("10.0.0.2"), t0 + Duration::from_secs(41)),
            Ok(())
        );
        // Still locked one second before, free at the end of the wait.
        assert!(l.check(a, t0 + Duration::from_secs(299)).is_err());
        assert_eq!(l.check(a, t0 + Duration::from_secs(300)), Ok(()));
        // One more failure then counts the 4 still in the window: locked again until t0+310.
        l.failed(a, t0 + Duration::from_secs(300));
        assert_eq!(
            l.check(a, t0 + Duration::from_secs(300))
                .unwrap_err()
                .retry_after,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_lock() {
        let l = limiter(5, 1000, 100);
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        for i in 0..50u64 {
            let t = t0 + Duration::from_secs(i * 61);
            assert_eq!(l.check(a, t), Ok(()), "failure {i}");
            l.failed(a, t);
        }
    }

    #[test]
    fn a_success_forgets_the_failures_but_only_when_not_locked() {
        let l = limiter(3, 1000, 100);
        let t0 = Instant::now();
        let a = ip("10.1.1.1");
        l.failed(a, t0);
        l.failed(a, t0);
        l.succeeded(a);
        l.failed(a, t0);
        l.failed(a, t0);
        assert_eq!(l.check(a, t0), Ok(()), "the count started again");
        l.failed(a, t0);
        assert!(l.check(a, t0).is_err());
    }

    #[test]
    fn the_global_limit_locks_every_address_and_unknown_peers() {
        let l = limiter(5, 10, 100);
        let t0 = Instant::now();
        for i in 0..10 {
            l.failed(ip(&format!("10.2.0.{i}")), t0);
        }
        let locked = l.check(ip("10.9.9.9"), t0).unwrap_err();
        assert!(locked.global);
        assert_eq!(locked.retry_after, Duration::from_secs(300));
        assert!(l.check(None, t0).is_err());
        assert_eq!(l.check(None, t0 + Duration::from_secs(300)), Ok(()));
        // Unknown peers count globally.
        let l = limiter(5, 3, 100);
        for _ in 0..3 {
            l.failed(None, t0);
        }
        assert!(l.check(ip("10.0.0.1"), t0).unwrap_err().global);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn tracked_addresses_are_capped_stalest_first() {
        let l = limiter(2, 1_000_000, 8);
        let t0 = Instant::now();
        let hot = ip("10.3.0.1");
        l.failed(hot, t0 + Duration::from_secs(100));
        l.failed(hot, t0 + Duration::from_secs(100));
        for i in 0..1000u64 {
            l.failed(
                ip(&format!("10.4.{}.{}", i / 256, i % 256)),
                t0 + Duration::from_millis(i),
            );
        }
        assert!(l.tracked() <= 8);
        // The locked address failed last before the flood's later part: still tracked since
        // the stalest (the flood's oldest) go first.
        assert!(l.check(hot, t0 + Duration::from_secs(100)).is_err());
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        let l = limiter(2, 1000, 100);
        let t0 = Instant::now();
        l.failed(ip("2001:db8:1:2::1"), t0);
        l.failed(ip("2001:db8:1:2::ffff"), t0);
        assert!(l.check(ip("2001:db8:1:2:abcd::9"), t0).is_err());
        assert_eq!(l.check(ip("2001:db8:1:3::1"), t0), Ok(()));
        l.failed(ip("::ffff:10.5.0.1"), t0);
        l.failed(ip("10.5.0.1"), t0);
        assert!(l.check(ip("10.5.0.1"), t0).is_err());
    }
}
