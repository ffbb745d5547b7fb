//! Per-user cooldown for the same intent: the same person asking the same FAQ again within the
//! cooldown gets no second answer (IGNORE, reason `cooldown`).

use std::collections::HashMap;

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

/// When each (bot, chat, user, key) was last answered.
#[derive(Debug, Default)]
pub struct Cooldowns {
    last: HashMap<(String, String, String, String), i64>,
}

impl Cooldowns {
    /// Milliseconds left in the cooldown, or None when a reply may go.
    pub fn remaining(
        &self,
        bot: &str,
        chat: &str,
        user: &str,
        key: &str,
        now: i64,
        cooldown_ms: i64,
    ) -> Option<i64> {
        let k = (
            bot.to_string(),
            chat.to_string(),
            user.to_string(),
            key.to_string(),
        );
        let last = *self.last.get(&k)?;
        let left = last + cooldown_ms - now;
        (left > 0).then_some(left)
    }

    pub fn record(&mut self, bot: &str, chat: &str, user: &str, key: &str, now: i64) {
        self.last.insert(
            (
                bot.to_string(),
                chat.to_string(),
                user.to_string(),
                key.to_string(),
            ),
            now,
        );
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
    fn cooldown_per_user_and_intent() {
        let mut c = Cooldowns::default();
        assert_eq!(c.remaining("b", "g", "u1", "price", 0, 300_000), None);
        c.record("b", "g", "u1", "price", 0);
        assert_eq!(
            c.remaining("b", "g", "u1", "price", 60_000, 300_000),
            Some(240_000)
        );
        assert_eq!(c.remaining("b", "g", "u1", "stock", 60_000, 300_000), None);
        assert_eq!(c.remaining("b", "g", "u2", "price", 60_000, 300_000), None);
        assert_eq!(c.remaining("b", "g", "u1", "price", 300_000, 300_000), None);
        c.sweep(400_000, 300_000);
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
