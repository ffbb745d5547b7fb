//! A/B experiments on replies: an experiment names an intent and at least two weighted reply
//! variants. A user's bucket is sticky: it depends only on SHA-256(experiment, user), not on the
//! seed, the process or the order of requests, so the same person always sees the same variant
//! and outcomes can be counted per `variant_id` (`<experiment>/<variant>`).

use super::hash::stable_u64;

#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub id: String,
    pub intent: String,
    /// (reply variant id within the intent, weight), weight ≥ 1.
    pub variants: Vec<(String, u32)>,
}

impl Experiment {
    /// The variant id (as written in `replies.yml`) this user sees.
    pub fn variant_for(&self, user_id: &str) -> &str {
        let weights: Vec<u32> = self.variants.iter().map(|v| v.1).collect();
        &self.variants[bucket(&self.id, user_id, &weights)].0
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
            intent: "coupon".into(),
            variants: vec![("a".into(), 50), ("b".into(), 30), ("c".into(), 20)],
        }
    }

    #[test]
    fn three_thousand_users_land_within_3_percent_of_weights() {
        let e = exp();
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let v = e.variant_for(&format!("wxid_user_{i}"));
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
            assert_eq!(e.variant_for(&u), e.variant_for(&u));
        }
        // Another experiment id reshuffles users (not the same split for every experiment).
        let mut other = exp();
        other.id = "coupon_copy_2".into();
        let moved = (0..300)
            .filter(|i| e.variant_for(&format!("u{i}")) != other.variant_for(&format!("u{i}")))
            .count();
        assert!(moved > 50, "{moved}");
    }

    #[test]
    fn bucket_is_pinned() {
        // hash % 100 = 64 → in 50..80, the second bucket of 50/30/20 (hash pinned in hash.rs).
        assert_eq!(exp().variant_for("wxid_user_0"), "b");
    }

    #[test]
    fn zero_weight_never_chosen() {
        for i in 0..500 {
            assert_ne!(bucket("x", &format!("u{i}"), &[1, 0, 1]), 1);
        }
    }
}
