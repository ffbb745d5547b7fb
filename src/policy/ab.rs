//! A/B experiments on replies: an experiment names a reply set (an intent's replies, or any set
//! of replies.yml: `welcome`, a push's or a schedule's named reply, `reactivation`, ...) and at
//! least two weighted variants of it. Whoever the send is for is the unit of the bucket: the user
//! for a reply, a welcome or a push; the group for what goes to the whole group (schedules,
//! countdowns, re-activation, a welcome merged for several members), see [`Unit`].
//!
//! A bucket is sticky: it depends only on SHA-256(experiment, unit), not on the seed, the process
//! or the order of requests, so the same person (or group) always sees the same variant and
//! outcomes can be counted per `variant_id` (`<experiment>/<variant>`).

use super::hash::stable_u64;

#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub id: String,
    /// The reply set (library key): an intent id, a special name, a named reply id, `link:<id>`.
    pub key: String,
    /// (variant id within the reply set, weight), weight ≥ 1.
    pub variants: Vec<(String, u32)>,
}

impl Experiment {
    /// The variant id (as written in `replies.yml`) this unit sees.
    pub fn variant_for(&self, unit: &Unit<'_>) -> &str {
        let weights: Vec<u32> = self.variants.iter().map(|v| v.1).collect();
        &self.variants[bucket(&self.id, &unit.hash_key(), &weights)].0
    }
}

/// Who is bucketed: one user, or a whole group for sends that address no single user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit<'a> {
    User(&'a str),
    Group(&'a str),
}

impl Unit<'_> {
    /// A user keeps the bucket it always had (the bare user id); a group's key is prefixed so
    /// a chat id can never share a user's bucket by accident.
    fn hash_key(&self) -> String {
        match self {
            Unit::User(u) => (*u).to_string(),
            Unit::Group(chat) => format!("group:{chat}"),
        }
    }
}

/// Index of the weighted bucket for (experiment, user). `weights` must be non-empty with a
/// positive sum (checked when the playbook loads).
pub fn bucket(experiment: &str, user_id: &str, weights: &[u32]) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return 0;
    }
    // 64-bit hash modulo a small total: the bias is below 1e-15.
    let mut point = stable_u64(&[experiment.as_bytes(), user_id.as_bytes()]) % total;
    for (i, &w) in weights.iter().enumerate() {
        if point < u64::from(w) {
            return i;
        }
        point -= u64::from(w);
    }
    weights.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp() -> Experiment {
        Experiment {
            id: "coupon_copy".into(),
            key: "coupon".into(),
            variants: vec![("a".into(), 50), ("b".into(), 30), ("c".into(), 20)],
        }
    }

    #[test]
    fn three_thousand_users_land_within_3_percent_of_weights() {
        let e = exp();
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let v = e.variant_for(&Unit::User(&format!("wxid_user_{i}")));
            counts[["a", "b", "c"].iter().position(|x| *x == v).unwrap()] += 1;
        }
        for (c, w) in counts.iter().zip([0.5, 0.3, 0.2]) {
            let share = *c as f64 / 3000.0;
            assert!(
                (share - w).abs() <= 0.03,
                "share {share} vs weight {w}: {counts:?}"
            );
        }
    }

    #[test]
    fn sticky_per_user_and_independent_per_experiment() {
        let e = exp();
        for i in 0..200 {
            let u = format!("u{i}");
            assert_eq!(
                e.variant_for(&Unit::User(&u)),
                e.variant_for(&Unit::User(&u))
            );
        }
        // Another experiment id reshuffles users (not the same split for every experiment).
        let mut other = exp();
        other.id = "coupon_copy_2".into();
        let moved = (0..300)
            .filter(|i| {
                let u = format!("u{i}");
                e.variant_for(&Unit::User(&u)) != other.variant_for(&Unit::User(&u))
            })
            .count();
        assert!(moved > 50, "{moved}");
    }

    #[test]
    fn bucket_is_pinned() {
        // hash % 100 = 64 → in 50..80, the second bucket of 50/30/20 (hash pinned in hash.rs).
        assert_eq!(exp().variant_for(&Unit::User("wxid_user_0")), "b");
    }

    #[test]
    fn groups_are_bucketed_apart_from_users_with_the_same_id() {
        let e = exp();
        let differs = (0..300)
            .filter(|i| {
                let id = format!("room{i}");
                e.variant_for(&Unit::User(&id)) != e.variant_for(&Unit::Group(&id))
            })
            .count();
        assert!(differs > 50, "{differs}");
        // Groups spread over the weights too.
        let b = (0..2000)
            .filter(|i| e.variant_for(&Unit::Group(&format!("{i}@chatroom"))) == "b")
            .count();
        assert!((b as f64 / 2000.0 - 0.3).abs() <= 0.03, "{b}");
    }

    #[test]
    fn zero_weight_never_chosen() {
        for i in 0..500 {
            assert_ne!(bucket("x", &format!("u{i}"), &[1, 0, 1]), 1);
        }
    }
}
