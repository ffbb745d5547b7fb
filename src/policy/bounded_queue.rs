//! A first-in first-out record queue kept within three limits: entries, bytes and age. The
//! in-memory playbook state keeps blocked messages for review and sends it decided not to make
//! in such queues; nothing drains them while serving (the store's audit log has every block),
//! so without the limits they grew with traffic until the process ran out of memory.
//!
//! What a limit pushes out is counted by reason ([`Discarded`]), so the owner can report it:
//! nothing disappears silently.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Most entries, bytes and age a queue may hold. Configured per queue (`playbook_state:` in
/// the server configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueLimits {
    /// Entries kept; beyond it the oldest is discarded.
    pub max_entries: usize,
    /// Estimated bytes kept (the record's fixed size plus its strings); beyond it the oldest
    /// are discarded.
    pub max_bytes: usize,
    /// Entries older than this (by their own time) are discarded.
    pub max_age_s: u64,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_bytes: 8 << 20,
            max_age_s: 86_400,
        }
    }
}

/// Bounds of the limits: at least one small entry for at most a day's worth of memory.
pub const MAX_ENTRIES_RANGE: std::ops::RangeInclusive<usize> = 1..=10_000_000;
pub const MAX_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=(1 << 30);
pub const MAX_AGE_S_RANGE: std::ops::RangeInclusive<u64> = 1..=30 * 86_400;

impl QueueLimits {
    /// Checks the limits; the error names the key (`name.max_entries`, ...) and its range.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        fn check<T: PartialOrd + std::fmt::Display>(
            name: &str,
            key: &str,
            v: T,
            r: &std::ops::RangeInclusive<T>,
        ) -> Result<(), String> {
            if r.contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "{name}.{key} = {v} is outside {}..={}",
                    r.start(),
                    r.end()
                ))
            }
        }
        check(name, "max_entries", self.max_entries, &MAX_ENTRIES_RANGE)?;
        check(name, "max_bytes", self.max_bytes, &MAX_BYTES_RANGE)?;
        check(name, "max_age_s", self.max_age_s, &MAX_AGE_S_RANGE)
    }

    fn max_age_ms(&self) -> i64 {
        i64::try_from(self.max_age_s.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}

/// A record that can be kept in a [`BoundedQueue`].
pub trait Record {
    /// When it happened (Unix ms, server time): its age is measured from here.
    fn at_ms(&self) -> i64;
    /// Estimated heap and inline bytes it holds.
    fn bytes(&self) -> usize;
}

/// Entries discarded by a limit, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Discarded {
    pub entries: u64,
    pub bytes: u64,
    pub age: u64,
}

impl Discarded {
    pub fn total(&self) -> u64 {
        self.entries + self.bytes + self.age
    }

    pub fn add(&mut self, other: Discarded) {
        self.entries += other.entries;
        self.bytes += other.bytes;
        self.age += other.age;
    }

    /// (reason, count) for each reason with a count: `max_entries`, `max_bytes`, `max_age`.
    pub fn by_reason(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("max_entries", self.entries),
            ("max_bytes", self.bytes),
            ("max_age", self.age),
        ]
        .into_iter()
        .filter(|&(_, n)| n > 0)
    }
}

/// See the module doc.
#[derive(Debug)]
pub struct BoundedQueue<T> {
    items: VecDeque<(usize, T)>,
    bytes: usize,
    limits: QueueLimits,
    /// Position of the front entry since the queue began (positions never repeat), so a
    /// durable copy can name entries and cut its front.
    first_seq: u64,
}

impl<T: Record> BoundedQueue<T> {
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            items: VecDeque::new(),
            bytes: 0,
            limits,
            first_seq: 0,
        }
    }

    /// A queue whose positions start at `first_seq` (restoring a durable copy).
    pub fn starting_at(limits: QueueLimits, first_seq: u64) -> Self {
        Self {
            first_seq,
            ..Self::new(limits)
        }
    }

    /// Position of the front entry (= [`Self::next_seq`] when empty).
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Position the next pushed entry gets.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.items.len() as u64
    }

    /// The newest entry and its position.
    pub fn last(&self) -> Option<(u64, &T)> {
        self.items.back().map(|(_, it)| (self.next_seq() - 1, it))
    }

    /// Appends `item`, then discards what the limits no longer allow (oldest first; the item
    /// itself when it alone is over `max_bytes` or already too old).
    pub fn push(&mut self, item: T) -> Discarded {
        let mut d = Discarded::default();
        let size = item.bytes();
        let newest = item.at_ms();
        self.items.push_back((size, item));
        self.bytes += size;
        while self.items.len() > self.limits.max_entries {
            self.pop();
            d.entries += 1;
        }
        while self.bytes > self.limits.max_bytes {
            self.pop();
            d.bytes += 1;
        }
        d.add(self.expire(newest));
        d
    }

    /// Discards the entries older than `max_age_s` at `now_ms`.
    pub fn expire(&mut self, now_ms: i64) -> Discarded {
        let oldest_kept = now_ms.saturating_sub(self.limits.max_age_ms());
        let mut d = Discarded::default();
        while self
            .items
            .front()
            .is_some_and(|(_, it)| it.at_ms() < oldest_kept)
        {
            self.pop();
            d.age += 1;
        }
        d
    }

    fn pop(&mut self) {
        if let Some((size, _)) = self.items.pop_front() {
            self.bytes -= size;
            self.first_seq += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Estimated bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|(_, it)| it)
    }

    /// Oldest first, each with its position (a stable id while the entry is kept).
    pub fn iter_seq(&self) -> impl Iterator<Item = (u64, &T)> {
        let first = self.first_seq;
        self.items
            .iter()
            .enumerate()
            .map(move |(i, (_, it))| (first + i as u64, it))
    }

    /// The entry at position `seq`, to change in place (None: never queued or discarded).
    pub fn get_mut(&mut self, seq: u64) -> Option<&mut T> {
        let i = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.items.get_mut(i).map(|(_, it)| it)
    }

    /// Takes every entry, oldest first; the queue's memory is released.
    pub fn drain(&mut self) -> Vec<T> {
        self.bytes = 0;
        self.first_seq = self.next_seq();
        std::mem::take(&mut self.items)
            .into_iter()
            .map(|(_, it)| it)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct R(i64, usize);

    impl Record for R {
        fn at_ms(&self) -> i64 {
            self.0
        }
        fn bytes(&self) -> usize {
            self.1
        }
    }

    fn limits(entries: usize, bytes: usize, age_s: u64) -> QueueLimits {
        QueueLimits {
            max_entries: entries,
            max_bytes: bytes,
            max_age_s: age_s,
        }
    }

    #[test]
    fn the_oldest_go_first_when_entries_or_bytes_are_over() {
        let mut q = BoundedQueue::new(limits(3, 100, 3600));
        for t in 0..5 {
            q.push(R(t, 10));
        }
        assert_eq!(q.iter().map(|r| r.0).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(q.bytes(), 30);
        // A fourth entry pushes the oldest out; then 20 + 80 bytes fit.
        let d = q.push(R(5, 80));
        assert_eq!(d.entries, 1);
        assert_eq!(q.iter().map(|r| r.0).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(q.bytes(), 100);
        // A fourth entry again, and 90 + 15 > 100: one goes for the count, one for room.
        let d = q.push(R(6, 15));
        assert_eq!((d.entries, d.bytes), (1, 1));
        assert_eq!(q.iter().map(|r| r.0).collect::<Vec<_>>(), [5, 6]);
        assert_eq!(q.bytes(), 95);
        q.drain();
        q.push(R(7, 60));
        let d = q.push(R(8, 50));
        assert_eq!((d.entries, d.bytes), (0, 1));
        assert_eq!(q.iter().map(|r| r.0).collect::<Vec<_>>(), [8]);
        // An entry over the byte limit on its own is not kept either.
        let d = q.push(R(9, 101));
        assert_eq!(d.bytes, 2);
        assert!(q.is_empty() && q.bytes() == 0);
    }

    #[test]
    fn entries_older_than_the_age_limit_go_on_push_and_on_expire() {
        let mut q = BoundedQueue::new(limits(100, 1 << 20, 10));
        q.push(R(0, 1));
        q.push(R(5_000, 1));
        let d = q.push(R(10_001, 1));
        assert_eq!(d.age, 1, "0 is more than 10 s before 10 001");
        assert_eq!(q.len(), 2);
        assert_eq!(q.expire(15_000).total(), 0);
        assert_eq!(q.expire(15_001).age, 1);
        assert_eq!(q.expire(60_000).age, 1);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn drain_takes_everything_and_resets_the_bytes() {
        let mut q = BoundedQueue::new(QueueLimits::default());
        q.push(R(1, 7));
        q.push(R(2, 7));
        assert_eq!(q.drain(), vec![R(1, 7), R(2, 7)]);
        assert_eq!((q.len(), q.bytes()), (0, 0));
    }

    #[test]
    fn positions_count_every_entry_ever_pushed() {
        let mut q = BoundedQueue::new(limits(2, 1 << 20, 1000));
        q.push(R(1, 7));
        assert_eq!((q.first_seq(), q.next_seq()), (0, 1));
        q.push(R(2, 7));
        q.push(R(3, 7)); // over max_entries: position 0 goes
        assert_eq!((q.first_seq(), q.next_seq()), (1, 3));
        assert_eq!(q.last(), Some((2, &R(3, 7))));
        q.drain();
        assert_eq!((q.first_seq(), q.next_seq(), q.last()), (3, 3, None));
        let q2: BoundedQueue<R> = BoundedQueue::starting_at(QueueLimits::default(), 40);
        assert_eq!(q2.next_seq(), 40);
    }

    #[test]
    fn limits_outside_their_range_are_named() {
        assert!(QueueLimits::default().validate("q").is_ok());
        let e = limits(0, 1 << 20, 10).validate("playbook_state.review_queue");
        assert_eq!(
            e.unwrap_err(),
            "playbook_state.review_queue.max_entries = 0 is outside 1..=10000000"
        );
        let e = limits(1, 10, 10).validate("q").unwrap_err();
        assert!(e.contains("q.max_bytes = 10 is outside 1024"), "{e}");
        let e = limits(1, 2048, 0).validate("q").unwrap_err();
        assert!(e.contains("q.max_age_s = 0"), "{e}");
    }
}
