//! A coordinator's materialised state for one `__consumer_offsets` partition: every group's
//! committed offsets, as the partition's records say. Applying is by log offset, so records
//! applied out of order (two commits answered in the other order) end with the later one.

use std::collections::BTreeMap;

/// A committed offset as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committed {
    /// The next offset to consume.
    pub offset: i64,
    pub metadata: String,
    pub commit_ms: i64,
}

/// A topic partition of a group's offsets.
pub(crate) type TopicPartition = (String, i32);

#[derive(Debug, Default)]
pub(crate) struct ShardState {
    /// group -> partition -> (committed, offset of the record that said so).
    groups: BTreeMap<String, BTreeMap<TopicPartition, (Committed, i64)>>,
    /// Offset of the last record applied from the log.
    applied: i64,
}

impl ShardState {
    /// Applies the record at log offset `at`: a commit, or `None` for a deletion. A record
    /// older than what is held for the same partition changes nothing.
    pub(crate) fn apply(
        &mut self,
        group: &str,
        tp: TopicPartition,
        committed: Option<Committed>,
        at: i64,
    ) {
        self.applied = self.applied.max(at);
        let offsets = self.groups.entry(group.to_string()).or_default();
        if offsets.get(&tp).is_some_and(|(_, held)| *held > at) {
            return;
        }
        match committed {
            Some(c) => {
                offsets.insert(tp, (c, at));
            }
            None => {
                offsets.remove(&tp);
            }
        }
        if offsets.is_empty() {
            self.groups.remove(group);
        }
    }

    /// The group's committed offsets: of `wanted`, or all of them.
    pub(crate) fn offsets(
        &self,
        group: &str,
        wanted: Option<&[TopicPartition]>,
    ) -> Vec<(TopicPartition, Committed)> {
        let Some(offsets) = self.groups.get(group) else {
            return Vec::new();
        };
        match wanted {
            None => offsets
                .iter()
                .map(|(tp, (c, _))| (tp.clone(), c.clone()))
                .collect(),
            Some(wanted) => wanted
                .iter()
                .filter_map(|tp| offsets.get(tp).map(|(c, _)| (tp.clone(), c.clone())))
                .collect(),
        }
    }

    /// Every group with committed offsets.
    pub(crate) fn groups(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }

    #[cfg(test)]
    pub(crate) fn has_group(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// How many committed offsets are held, all groups together.
    pub(crate) fn len(&self) -> usize {
        self.groups.values().map(BTreeMap::len).sum()
    }

    /// Every committed offset, by group.
    pub(crate) fn entries(&self) -> Vec<(String, TopicPartition, Committed)> {
        self.groups
            .iter()
            .flat_map(|(g, offsets)| {
                offsets
                    .iter()
                    .map(move |(tp, (c, _))| (g.clone(), tp.clone(), c.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(offset: i64) -> Committed {
        Committed {
            offset,
            metadata: String::new(),
            commit_ms: 0,
        }
    }

    #[test]
    fn the_record_later_in_the_log_wins_whatever_the_order_applied() {
        let mut s = ShardState::default();
        let tp = ("t".to_string(), 0);
        s.apply("g", tp.clone(), Some(c(20)), 11);
        // An older record applied after a newer one (its commit was answered later).
        s.apply("g", tp.clone(), Some(c(10)), 10);
        assert_eq!(s.offsets("g", None), vec![(tp.clone(), c(20))]);
        s.apply("g", tp.clone(), Some(c(30)), 12);
        assert_eq!(
            s.offsets("g", Some(std::slice::from_ref(&tp))),
            vec![(tp.clone(), c(30))]
        );
    }

    #[test]
    fn a_deletion_removes_the_partition_and_an_empty_group() {
        let mut s = ShardState::default();
        s.apply("g", ("t".into(), 0), Some(c(5)), 1);
        s.apply("h", ("t".into(), 0), Some(c(7)), 2);
        s.apply("g", ("t".into(), 0), None, 3);
        assert!(s.offsets("g", None).is_empty());
        assert!(!s.has_group("g"));
        assert_eq!(s.groups().collect::<Vec<_>>(), vec!["h"]);
    }
}
