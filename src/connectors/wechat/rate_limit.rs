//! Per-user inbound rate limit (GCRA, from `governor`), keyed by (account, user), on the
//! service clock so the manual clock of tests and demos drives it too.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::settings::RateLimitConfig;
use crate::clock::SharedClock;

/// The service clock as governor's clock (nanoseconds since the Unix epoch).
#[derive(Clone)]
pub struct ServiceClock(pub SharedClock);

impl Clock for ServiceClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        Nanos::from(Duration::from_millis(self.0.now_ms().max(0) as u64))
    }
}

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, ServiceClock, NoOpMiddleware<Nanos>>;

/// Forgotten users are dropped from memory every this many checks.
const PRUNE_EVERY: u64 = 4096;

pub struct UserRateLimit {
    limiter: Option<Keyed>,
    checks: AtomicU64,
}

impl UserRateLimit {
    /// `per_user_per_minute` 0 turns the limit off.
    pub fn new(cfg: &RateLimitConfig, clock: SharedClock) -> Self {
        let limiter = NonZeroU32::new(cfg.per_user_per_minute).map(|rate| {
            let burst = NonZeroU32::new(cfg.burst).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::per_minute(rate).allow_burst(burst);
            RateLimiter::new(
                quota,
                DefaultKeyedStateStore::default(),
                ServiceClock(clock),
            )
        });
        UserRateLimit {
            limiter,
            checks: AtomicU64::new(0),
        }
    }

    /// True when `user` of `account` may send one more message now (and counts it).
    pub fn allow(&self, account: &str, user: &str) -> bool {
        let Some(l) = &self.limiter else { return true };
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            l.retain_recent();
        }
        l.check_key(&format!("{account}\u{1f}{user}")).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;

    #[test]
    fn burst_then_the_rate_on_the_manual_clock() {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let cfg = RateLimitConfig {
            per_user_per_minute: 6,
            burst: 2,
            reply: String::new(),
        };
        let rl = UserRateLimit::new(&cfg, clock.clone());
        assert!(rl.allow("a", "u1"));
        assert!(rl.allow("a", "u1"));
        assert!(!rl.allow("a", "u1"), "burst of 2 spent");
        assert!(rl.allow("a", "u2"), "another user has their own budget");
        assert!(rl.allow("b", "u1"), "another account too");
        clock.advance_ms(10_000); // 6 per minute: one every 10 s
        assert!(rl.allow("a", "u1"));
        assert!(!rl.allow("a", "u1"));
        let off = UserRateLimit::new(
            &RateLimitConfig {
                per_user_per_minute: 0,
                ..cfg
            },
            clock,
        );
        assert!((0..100).all(|_| off.allow("a", "u1")));
    }
}
