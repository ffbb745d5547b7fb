//! An ensemble: model folders trained from different base encoders, served as one model.
//! Each member errs on different messages (its pretraining saw different text), so their
//! pooled probabilities are right more often than either alone, at the cost of one forward
//! pass per member (benches/RESULTS.md, "ensemble of both bases").
//!
//! ```text
//! ensemble.json   {"format": 1, "members": [{"dir": "m3e-small", "weight": 0.5}, ...]}
//! model.json      the ensemble's card: its version, the members' bases and licences
//! <dir>/          each member, a folder `intentd train` wrote (its own lexical head included)
//! ```
//!
//! With `cascade` set, the first member answers alone for the texts it is sure of (its top
//! probability at least that value) and the others run only for the rest: most texts are easy,
//! so this keeps most of the pool's gain at a fraction of its cost.
//!
//! The pool is log-linear (the weighted product of the members' probabilities, renormalised),
//! the same kind of mix as the lexical head's: one member that is sure an intent is wrong
//! vetoes it, where an average would not. Loading lives in `classifier` (which owns the
//! model type); this file holds the folder's format and the arithmetic.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const ENSEMBLE_FILE: &str = "ensemble.json";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleSpec {
    pub format: u32,
    pub members: Vec<MemberSpec>,
    /// The first member's top probability from which it answers alone (0 to 1); absent: every
    /// member runs for every text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cascade: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// A sub-folder of the ensemble's folder.
    pub dir: String,
    /// Relative weight in the pool (normalised to sum to 1 when served).
    pub weight: f64,
}

impl EnsembleSpec {
    /// Equal weights: chosen on SMP2017's dev.tsv for the two shipped bases (RESULTS.md).
    pub fn equal(dirs: &[String]) -> Self {
        Self {
            format: FORMAT,
            members: dirs
                .iter()
                .map(|d| MemberSpec {
                    dir: d.clone(),
                    weight: 1.0,
                })
                .collect(),
            cascade: None,
        }
    }

    /// The folder's spec, or None when it is not an ensemble; a damaged file is an error
    /// naming it.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(ENSEMBLE_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let spec: Self = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: invalid ensemble file: {e}",
                path.display(),
                e.line()
            )
        })?;
        spec.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Some(spec))
    }

    pub fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            bail!(
                "format {} is not supported (this intentd reads format {FORMAT})",
                self.format
            );
        }
        if self.members.len() < 2 {
            bail!(
                "an ensemble needs at least 2 members, found {}",
                self.members.len()
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.members {
            let plain =
                !m.dir.is_empty() && m.dir != "." && m.dir != ".." && !m.dir.contains(['/', '\\']);
            if !plain {
                bail!(
                    "member dir {:?} must be the name of a sub-folder (no path separators)",
                    m.dir
                );
            }
            if !seen.insert(&m.dir) {
                bail!("member dir {:?} is listed twice", m.dir);
            }
            if !(m.weight.is_finite() && m.weight > 0.0) {
                bail!(
                    "member {:?} has weight {}: weights must be positive numbers",
                    m.dir,
                    m.weight
                );
            }
        }
        if let Some(c) = self.cascade {
            if !(c > 0.0 && c <= 1.0) {
                bail!("cascade {c} is out of range: it is a probability, above 0 and at most 1");
            }
        }
        Ok(())
    }

    /// Whether the other members must run for a text the first member scored `lead`.
    pub fn needs_others(cascade: Option<f32>, lead: &[f32]) -> bool {
        cascade.is_none_or(|c| lead.iter().copied().fold(0.0, f32::max) < c)
    }

    /// The weights, normalised to sum to 1, in member order.
    pub fn normalised_weights(&self) -> Vec<f32> {
        let sum: f64 = self.members.iter().map(|m| m.weight).sum();
        self.members
            .iter()
            .map(|m| (m.weight / sum) as f32)
            .collect()
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(ENSEMBLE_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// A version naming exactly these members at these weights.
    pub fn version(&self, member_versions: &[&str]) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (m, v) in self.members.iter().zip(member_versions) {
            h.update(format!("{}\t{}\t{}\n", m.dir, m.weight, v));
        }
        if let Some(c) = self.cascade {
            h.update(format!("cascade\t{c}\n"));
        }
        format!("ensemble-{}", &hex::encode(h.finalize())[..12])
    }
}

/// The log-linear pool of the members' probabilities (each row in the same label order, with
/// its weight; weights sum to 1), renormalised.
pub fn mix(rows: &[(&[f32], f32)]) -> Vec<f32> {
    let n = rows.first().map_or(0, |(p, _)| p.len());
    let mut z = vec![0f32; n];
    for (probs, w) in rows {
        for (z, &p) in z.iter_mut().zip(probs.iter()) {
            *z += w * p.max(1e-30).ln();
        }
    }
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    z.iter_mut().for_each(|v| *v = (*v - max).exp());
    let sum: f32 = z.iter().sum();
    z.iter_mut().for_each(|v| *v /= sum);
    z
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_the_renormalised_weighted_product() {
        let a = [0.7f32, 0.2, 0.1];
        let b = [0.1f32, 0.6, 0.3];
        let p = mix(&[(&a, 0.5), (&b, 0.5)]);
        // By hand: sqrt(a*b) = [0.2646, 0.3464, 0.1732], sum 0.7842.
        let expect = [0.3374f32, 0.4417, 0.2209];
        for (x, e) in p.iter().zip(expect) {
            assert!((x - e).abs() < 1e-3, "{p:?}");
        }
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        // Weight 1 on one member is that member; a zero probability stays finite.
        let only_a = mix(&[(&a, 1.0), (&[0.0, 0.5, 0.5], 0.0)]);
        for (x, e) in only_a.iter().zip(a) {
            assert!((x - e).abs() < 1e-5);
        }
        let vetoed = mix(&[(&[0.0, 0.5, 0.5], 0.5), (&[0.98, 0.01, 0.01], 0.5)]);
        assert!(vetoed.iter().all(|v| v.is_finite()));
        assert!(vetoed[0] < 1e-6, "{vetoed:?}");
    }

    #[test]
    fn damaged_specs_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(EnsembleSpec::read(dir.path()).unwrap(), None);
        let ok = EnsembleSpec::equal(&["m3e-small".into(), "me5-small".into()]);
        ok.write(dir.path()).unwrap();
        assert_eq!(EnsembleSpec::read(dir.path()).unwrap(), Some(ok.clone()));
        assert_eq!(ok.normalised_weights(), vec![0.5, 0.5]);

        let cases: Vec<(String, &str)> = vec![
            ("{\"format\": 1, \"members\": [".into(), "invalid ensemble file"),
            (
                r#"{"format": 2, "members": []}"#.into(),
                "format 2 is not supported",
            ),
            (
                r#"{"format": 1, "members": [{"dir": "a", "weight": 1}]}"#.into(),
                "at least 2 members, found 1",
            ),
            (
                r#"{"format": 1, "members": [{"dir": "a", "weight": 1}, {"dir": "../b", "weight": 1}]}"#
                    .into(),
                "must be the name of a sub-folder",
            ),
            (
                r#"{"format": 1, "members": [{"dir": "a", "weight": 1}, {"dir": "a", "weight": 1}]}"#
                    .into(),
                "listed twice",
            ),
            (
                r#"{"format": 1, "members": [{"dir": "a", "weight": 1}, {"dir": "b", "weight": -1}]}"#
                    .into(),
                "weights must be positive",
            ),
            (
                r#"{"format": 1, "members": [{"dir": "a", "weight": 1, "extra": 0}, {"dir": "b", "weight": 1}]}"#
                    .into(),
                "unknown field",
            ),
            (
                r#"{"format": 1, "members": [{"dir": "a", "weight": 1}, {"dir": "b", "weight": 1}], "cascade": 1.5}"#
                    .into(),
                "cascade 1.5 is out of range",
            ),
            (
                r#"{"format": 1, "members": [{"dir": "a", "weight": 1}, {"dir": "b", "weight": 1}], "cascade": 0}"#
                    .into(),
                "cascade 0 is out of range",
            ),
        ];
        for (text, want) in cases {
            std::fs::write(dir.path().join(ENSEMBLE_FILE), &text).unwrap();
            let err = format!("{:#}", EnsembleSpec::read(dir.path()).unwrap_err());
            assert!(err.contains(want), "{text}: {err}");
            assert!(err.contains(ENSEMBLE_FILE), "{err}");
        }
    }

    #[test]
    fn the_version_names_members_and_weights() {
        let a = EnsembleSpec::equal(&["x".into(), "y".into()]);
        let mut b = a.clone();
        b.members[1].weight = 2.0;
        assert_ne!(a.version(&["v1", "v2"]), b.version(&["v1", "v2"]));
        assert_ne!(a.version(&["v1", "v2"]), a.version(&["v1", "v3"]));
        assert!(a.version(&["v1", "v2"]).starts_with("ensemble-"));
        let mut c = a.clone();
        c.cascade = Some(0.9);
        assert_ne!(a.version(&["v1", "v2"]), c.version(&["v1", "v2"]));
    }

    #[test]
    fn the_cascade_sends_only_unsure_texts_to_the_others() {
        let sure = [0.95f32, 0.03, 0.02];
        let unsure = [0.6f32, 0.3, 0.1];
        assert!(EnsembleSpec::needs_others(None, &sure));
        assert!(!EnsembleSpec::needs_others(Some(0.9), &sure));
        assert!(EnsembleSpec::needs_others(Some(0.9), &unsure));
        // At the value itself the first member answers alone.
        assert!(!EnsembleSpec::needs_others(Some(0.6), &unsure));
    }
}
