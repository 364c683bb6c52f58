//! The newest entries of a partition's Raft log, kept in memory as they were written (base
//! offset filled in), so the replication streams and the state machine read the tail of
//! the log without a disk read, a buffer to zero and fill, and a CRC check per batch.
//! Entries are shared (`Bytes`), not copied.
//!
//! The tail always mirrors a suffix of the log (or nothing): appends push at the end,
//! truncation cuts the end, purges drop the front. Memory is bounded twice: per log, and
//! by one budget for every partition log on the broker (`raft_tail_cache_bytes`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a log may keep at most, so a few busy partitions cannot take the whole budget.
const MAX_PER_LOG: usize = 4 * 1024 * 1024;

/// The broker-wide memory for log tails. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub(crate) struct TailBudget {
    free: Arc<AtomicUsize>,
    per_log: usize,
}

impl TailBudget {
    /// A budget of `total` bytes across all partition logs (0 turns the tails off).
    pub(crate) fn new(total: usize) -> Self {
        TailBudget {
            free: Arc::new(AtomicUsize::new(total)),
            per_log: total.min(MAX_PER_LOG),
        }
    }

    fn take(&self, n: usize) -> bool {
        self.free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                free.checked_sub(n)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.free.fetch_add(n, Ordering::AcqRel);
    }

    /// Bytes not held by any tail now.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.free.load(Ordering::Acquire)
    }
}

/// The newest entries of one log: `entries[i]` is Raft index `first + i`.
#[derive(Debug)]
pub(crate) struct Tail<E> {
    budget: TailBudget,
    first: u64,
    entries: VecDeque<(E, usize)>,
    bytes: usize,
}

impl<E: Clone> Tail<E> {
    pub(crate) fn new(budget: TailBudget) -> Self {
        Tail {
            budget,
            first: 0,
            entries: VecDeque::new(),
            bytes: 0,
        }
    }

    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// Records entry `index` (of `size` bytes), just written at the end of the log.
    pub(crate) fn push(&mut self, index: u64, entry: E, size: usize) {
        if !self.entries.is_empty() && index != self.end() {
            // Not the next one: the tail would no longer mirror the log's end.
            self.clear();
        }
        if size > self.budget.per_log {
            self.clear();
            return;
        }
        while self.bytes + size > self.budget.per_log {
            self.pop_front();
        }
        if !self.budget.take(size) {
            // The broker's budget is spent: this log starts over with what it has room for.
            self.clear();
            if !self.budget.take(size) {
                return;
            }
        }
        if self.entries.is_empty() {
            self.first = index;
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
            self.budget.give(size);
            self.first += 1;
        }
    }

    /// The log dropped entries `index..` (a truncated tail).
    pub(crate) fn truncate_from(&mut self, index: u64) {
        while self.end() > index.max(self.first) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
                self.budget.give(size);
            }
        }
    }

    /// The log dropped entries `..=index` (purged).
    pub(crate) fn purge_through(&mut self, index: u64) {
        while !self.entries.is_empty() && self.first <= index {
            self.pop_front();
        }
    }

    pub(crate) fn clear(&mut self) {
        while !self.entries.is_empty() {
            self.pop_front();
        }
    }

    /// Entries `from..to` (`to` = `None`: to the end of the log), if the tail holds all of
    /// them. Entries past the end of the log are not there, as in the log itself.
    pub(crate) fn get(&self, from: u64, to: Option<u64>) -> Option<Vec<E>> {
        if self.entries.is_empty() || from < self.first {
            return None;
        }
        let to = to.unwrap_or(u64::MAX).min(self.end());
        if from >= to {
            return Some(Vec::new());
        }
        let (a, b) = ((from - self.first) as usize, (to - self.first) as usize);
        Some(self.entries.range(a..b).map(|(e, _)| e.clone()).collect())
    }
}

impl<E> Drop for Tail<E> {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_the_end_of_the_log_within_its_budgets() {
        let budget = TailBudget::new(10_000);
        let mut t = Tail::new(budget.clone());
        assert_eq!(t.get(0, None), None, "empty: ask the disk");
        for i in 5..10u64 {
            t.push(i, i, 1_000);
        }
        assert_eq!(t.get(5, Some(8)), Some(vec![5, 6, 7]));
        assert_eq!(t.get(8, None), Some(vec![8, 9]));
        assert_eq!(
            t.get(10, None),
            Some(vec![]),
            "past the end, as the log says"
        );
        assert_eq!(t.get(4, None), None, "before the tail: ask the disk");
        assert_eq!(budget.free(), 5_000);

        t.truncate_from(8);
        assert_eq!(t.get(5, None), Some(vec![5, 6, 7]));
        t.push(8, 80, 1_000);
        assert_eq!(t.get(7, None), Some(vec![7, 80]));
        t.purge_through(6);
        assert_eq!(t.get(6, None), None);
        assert_eq!(t.get(7, None), Some(vec![7, 80]));
        assert_eq!(budget.free(), 8_000);

        // A gap (the log restarted elsewhere) starts the tail over.
        t.push(20, 20, 1_000);
        assert_eq!(t.get(7, None), None);
        assert_eq!(t.get(20, None), Some(vec![20]));

        // Another log takes most of the budget: this one keeps what still fits.
        let mut other = Tail::new(budget.clone());
        for i in 0..8u64 {
            other.push(i, i, 1_000);
        }
        assert_eq!(budget.free(), 1_000);
        t.push(21, 21, 1_500);
        assert_eq!(t.get(21, None), Some(vec![21]), "cleared its own, then fit");
        assert_eq!(t.get(20, None), None);
        drop(other);
        drop(t);
        assert_eq!(
            budget.free(),
            10_000,
            "dropped tails give their memory back"
        );
    }

    #[test]
    fn a_log_keeps_at_most_its_share() {
        let budget = TailBudget::new(64 * MAX_PER_LOG);
        let mut t = Tail::new(budget.clone());
        for i in 0..100u64 {
            t.push(i, i, 256 * 1024);
        }
        assert_eq!(t.bytes, MAX_PER_LOG);
        assert_eq!(t.get(84, None).map(|v| v.len()), Some(16));
        assert_eq!(t.get(83, None), None);
        t.push(100, 100, MAX_PER_LOG + 1);
        assert_eq!(t.get(100, None), None, "too big to keep");
        assert_eq!(budget.free(), 64 * MAX_PER_LOG);
    }
}
