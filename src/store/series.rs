//! Stats over time: the rates of each bucket of a window (a chart's points), from ONE grouped
//! query per table instead of one stats query per bucket.
//!
//! Buckets are given by their edges, so the caller decides where they start (the bot's local
//! midnight or hour) and they may differ in length (a day of 23 or 25 hours around a DST
//! change). The store groups rows by a uniform step, `(at_ms - from_ms) / step_ms`, where the
//! step is the largest one every edge falls on (a day for days of equal length, an hour or
//! less when a DST change makes one shorter); the steps are summed into their buckets here.
//! Every count is a sum over conversation rows or human-reply rows, each in exactly one step,
//! so a bucket's counts are exactly what [`super::stats::stats_report`] counts over it.

use super::stats::{rates, Rates};
use super::{Counts, StatsFilter, Store, StoreError};

/// Most buckets one series may have (a chart's points).
pub const MAX_BUCKETS: usize = 2_000;
/// Most steps the store may group by (rows of the grouped query).
pub const MAX_STEPS: i64 = 20_000;

/// One bot, optionally one group, over contiguous buckets: bucket `i` covers
/// `[edges[i], edges[i + 1] - 1]` (Unix ms, inclusive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesQuery {
    pub bot_id: String,
    pub chat_id: String,
    pub edges: Vec<i64>,
}

impl SeriesQuery {
    /// The edges of contiguous inclusive buckets `(from_ms, to_ms)`; an error names the first
    /// bucket that does not start where the previous one ended.
    pub fn edges_of(buckets: &[(i64, i64)]) -> Result<Vec<i64>, StoreError> {
        let mut edges = Vec::with_capacity(buckets.len() + 1);
        for (i, &(from, to)) in buckets.iter().enumerate() {
            if let Some(&last) = edges.last() {
                if from != last {
                    return Err(StoreError::Invalid(format!(
                        "bucket {i} starts at {from}, not right after the previous one ({})",
                        last - 1
                    )));
                }
            } else {
                edges.push(from);
            }
            edges.push(to.saturating_add(1));
        }
        Ok(edges)
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Checks the edges; returns the step every edge falls on.
fn step_of(edges: &[i64]) -> Result<i64, StoreError> {
    if edges.len() < 2 {
        return Err(StoreError::Invalid(format!(
            "a series needs at least one bucket (2 edges), got {} edges",
            edges.len()
        )));
    }
    let buckets = edges.len() - 1;
    if buckets > MAX_BUCKETS {
        return Err(StoreError::Invalid(format!(
            "{buckets} buckets is over the limit of {MAX_BUCKETS}"
        )));
    }
    if edges[0] < 0 {
        return Err(StoreError::Invalid(format!(
            "the first edge ({}) must be Unix milliseconds >= 0",
            edges[0]
        )));
    }
    let mut step = 0;
    for (i, pair) in edges.windows(2).enumerate() {
        if pair[1] <= pair[0] {
            return Err(StoreError::Invalid(format!(
                "edge {} ({}) is not after edge {i} ({})",
                i + 1,
                pair[1],
                pair[0]
            )));
        }
        step = gcd(step, pair[1] - pair[0]);
    }
    let steps = (edges[buckets] - edges[0]) / step;
    if steps > MAX_STEPS {
        return Err(StoreError::Invalid(format!(
            "the buckets need {steps} steps of {step} ms, over the limit of {MAX_STEPS}: \
             use fewer or evenly spaced buckets"
        )));
    }
    Ok(step)
}

/// The rates of each bucket, in order; a bucket without rows has zero counts and rates.
/// `human_share_target` is reported beside each human share, as in a stats report.
pub fn stats_series(
    store: &dyn Store,
    q: &SeriesQuery,
    human_share_target: f64,
) -> Result<Vec<Rates>, StoreError> {
    let step = step_of(&q.edges)?;
    let from_ms = q.edges[0];
    let filter = StatsFilter {
        bot_id: q.bot_id.clone(),
        chat_id: q.chat_id.clone(),
        from_ms,
        to_ms: q.edges[q.edges.len() - 1] - 1,
    };
    let mut per = vec![Counts::default(); q.edges.len() - 1];
    let mut bucket = 0;
    // Steps come back in order, so the bucket index only moves forward.
    for (i, c) in store.counts_by_step(&filter, step)? {
        let start = i64::try_from(i)
            .ok()
            .and_then(|i| i.checked_mul(step))
            .and_then(|o| o.checked_add(from_ms))
            .ok_or_else(|| StoreError::Db(format!("step index {i} is out of range")))?;
        while bucket + 1 < per.len() && start >= q.edges[bucket + 1] {
            bucket += 1;
        }
        if start < q.edges[bucket] || start >= q.edges[bucket + 1] {
            return Err(StoreError::Db(format!(
                "the store returned step {i}, outside the window or out of order"
            )));
        }
        per[bucket].add(&c);
    }
    Ok(per.iter().map(|c| rates(c, human_share_target)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_is_the_largest_every_edge_falls_on() {
        const H: i64 = 3_600_000;
        assert_eq!(step_of(&[0, 24 * H, 48 * H]).unwrap(), 24 * H);
        // A 23-hour day (spring forward) next to a 24-hour one: hours.
        assert_eq!(step_of(&[5, 5 + 24 * H, 5 + 47 * H]).unwrap(), H);
        // A half-hour DST shift.
        assert_eq!(step_of(&[0, 24 * H, 48 * H + H / 2]).unwrap(), H / 2);
    }

    #[test]
    fn bad_edges_are_named_with_the_limit() {
        let e = step_of(&[1]).unwrap_err().to_string();
        assert!(e.contains("at least one bucket (2 edges), got 1"), "{e}");
        let e = step_of(&[0, 10, 10]).unwrap_err().to_string();
        assert!(e.contains("edge 2 (10) is not after edge 1 (10)"), "{e}");
        let e = step_of(&[-5, 10]).unwrap_err().to_string();
        assert!(e.contains("first edge (-5)"), "{e}");
        let many: Vec<i64> = (0..=MAX_BUCKETS as i64 + 1).collect();
        let e = step_of(&many).unwrap_err().to_string();
        assert!(e.contains("2001 buckets is over the limit of 2000"), "{e}");
        let e = step_of(&[0, 1, 1_000_000]).unwrap_err().to_string();
        assert!(
            e.contains("need 1000000 steps of 1 ms, over the limit of 20000"),
            "{e}"
        );
        let e = SeriesQuery::edges_of(&[(0, 9), (11, 20)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bucket 1 starts at 11, not right after the previous one (9)"),
            "{e}"
        );
        assert_eq!(
            SeriesQuery::edges_of(&[(0, 9), (10, 19)]).unwrap(),
            vec![0, 10, 20]
        );
    }
}
