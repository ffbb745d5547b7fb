//! Per-user cooldown for the same intent: the same person asking the same FAQ again within the
//! cooldown gets no second answer (IGNORE, reason `cooldown`).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Cooldown settings: a default and per-intent overrides, in milliseconds (0 = no cooldown).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CooldownConfig {
    pub default_ms: i64,
    pub per_intent_ms: HashMap<String, i64>,
}

impl CooldownConfig {
    pub fn for_key(&self, key: &str) -> i64 {
        self.per_intent_ms
            .get(key)
            .copied()
            .unwrap_or(self.default_ms)
    }
}

/// When one user (in one bot and chat) was last answered, per intent or guidance key. Part of
/// the user's state row ([`super::state::UserRow`]), so a cooldown is checked and recorded in
/// the same transaction as the rest of the decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCooldowns {
    last: BTreeMap<String, i64>,
}

impl UserCooldowns {
    /// Milliseconds left in the cooldown, or None when a reply may go.
    pub fn remaining(&self, key: &str, now: i64, cooldown_ms: i64) -> Option<i64> {
        let last = *self.last.get(key)?;
        let left = last + cooldown_ms - now;
        (left > 0).then_some(left)
    }

    pub fn record(&mut self, key: &str, now: i64) {
        self.last.insert(key.to_string(), now);
    }

    /// Forget entries older than `max_age_ms` (keeps memory bounded).
    pub fn sweep(&mut self, now: i64, max_age_ms: i64) {
        self.last.retain(|_, at| now - *at < max_age_ms);
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_per_intent() {
        let mut c = UserCooldowns::default();
        assert_eq!(c.remaining("price", 0, 300_000), None);
        c.record("price", 0);
        assert_eq!(c.remaining("price", 60_000, 300_000), Some(240_000));
        assert_eq!(c.remaining("stock", 60_000, 300_000), None);
        assert_eq!(c.remaining("price", 300_000, 300_000), None);
        c.record("stock", 350_000);
        c.sweep(400_000, 300_000);
        assert_eq!(c.len(), 1);
        c.sweep(700_000, 300_000);
        assert!(c.is_empty());
    }

    #[test]
    fn per_intent_override() {
        let mut cfg = CooldownConfig {
            default_ms: 1000,
            ..Default::default()
        };
        cfg.per_intent_ms.insert("price".into(), 5000);
        assert_eq!(cfg.for_key("price"), 5000);
        assert_eq!(cfg.for_key("stock"), 1000);
    }
}
