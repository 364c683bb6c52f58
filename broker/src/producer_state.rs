//! Idempotent producers: what a partition remembers of each producer so that a retried batch
//! is stored once (Kafka's KIP-98, without transactions).
//!
//! A producer gets a cluster-unique id (`InitProducerId`) and numbers the records it sends to
//! each partition from 0. A partition keeps, per producer, its epoch and the last
//! [`MAX_BATCHES_PER_PRODUCER`] batches it stored (sequence range and offsets). A batch whose
//! sequence range matches one of them is a duplicate: it is not stored again, and its
//! sender gets the original offsets. A batch must otherwise continue the sequence exactly;
//! a gap means a batch was lost between them (`OUT_OF_ORDER_SEQUENCE_NUMBER`). A higher epoch
//! starts the producer's sequence over at 0 (the client does that after giving up on a batch
//! whose fate it does not know); a lower one is a fenced, older session
//! (`INVALID_PRODUCER_EPOCH`).
//!
//! Producers idle for longer than the partition's `producer.id.expiration.ms` are forgotten,
//! and at most [`MAX_PRODUCERS`] are remembered (the least recently seen go first): memory is
//! bounded. A forgotten producer's next batch is taken at whatever sequence it carries.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use sluice_proto::batch::BatchHeader;

/// Batches remembered per producer (Kafka's bound on in-flight requests with idempotence).
pub(crate) const MAX_BATCHES_PER_PRODUCER: usize = 5;

/// Producers remembered per partition, by default (`max_producers_per_partition`).
pub(crate) const MAX_PRODUCERS: usize = 10_000;

/// How long an idle producer is remembered, by default (Kafka's `producer.id.expiration.ms`).
pub(crate) const PRODUCER_EXPIRATION_MS: i64 = 24 * 60 * 60 * 1000;

/// What a partition remembers of idempotent producers, at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerLimits {
    pub max_producers: usize,
    /// Idle producers are forgotten after this long.
    pub expiration: std::time::Duration,
    /// How long a batch ahead of its producer's sequence waits for the ones before it.
    pub sequence_wait: std::time::Duration,
}

impl Default for ProducerLimits {
    fn default() -> Self {
        ProducerLimits {
            max_producers: MAX_PRODUCERS,
            expiration: std::time::Duration::from_millis(PRODUCER_EXPIRATION_MS as u64),
            sequence_wait: std::time::Duration::from_millis(250),
        }
    }
}

fn default_max_producers() -> usize {
    MAX_PRODUCERS
}

/// One stored batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// What a partition knows of one producer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first.
    pub batches: VecDeque<StoredBatch>,
    /// When its last batch was stored (ms since the epoch).
    pub last_ms: i64,
}

/// A batch's producer, epoch and sequence range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchId {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
}

impl BatchId {
    /// The batch's identity, or `None` for batches from producers without idempotence.
    pub(crate) fn of(header: &BatchHeader) -> Option<BatchId> {
        let p = header.producer()?;
        Some(BatchId {
            producer_id: p.producer_id,
            epoch: p.producer_epoch,
            first_seq: p.base_sequence,
            last_seq: header.last_sequence(),
        })
    }

    /// Whether `self` directly follows a batch that ended at `last_seq`.
    fn follows(&self, last_seq: i32) -> bool {
        self.first_seq
            == if last_seq == i32::MAX {
                0
            } else {
                last_seq + 1
            }
    }
}

/// Why a batch cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error(
        "producer {producer_id} sent sequence {got} but the partition expected {expected} (epoch {epoch}): a batch between them was lost; the producer must start a new epoch"
    )]
    OutOfOrder {
        producer_id: i64,
        epoch: i16,
        expected: i32,
        got: i32,
    },
    #[error(
        "producer {producer_id} used epoch {got} but the partition has seen epoch {current}: this producer session was replaced by a newer one"
    )]
    Fenced {
        producer_id: i64,
        current: i16,
        got: i16,
    },
}

/// The verdict on an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Store it.
    Append,
    /// Already stored, here.
    Duplicate(StoredBatch),
}

/// The last batch known for a producer, wherever it is (stored, or proposed and pending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Latest {
    pub epoch: i16,
    pub last_seq: i32,
}

/// Every producer a partition remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProducerStates {
    /// Stored as a list of pairs: JSON map keys are strings, which nested (flattened)
    /// decoding does not turn back into numbers.
    #[serde(with = "as_pairs")]
    producers: HashMap<i64, ProducerEntry>,
    /// The bound on `producers` (a broker setting, not stored).
    #[serde(skip, default = "default_max_producers")]
    max_producers: usize,
}

impl Default for ProducerStates {
    fn default() -> Self {
        ProducerStates {
            producers: HashMap::new(),
            max_producers: MAX_PRODUCERS,
        }
    }
}

mod as_pairs {
    use std::collections::HashMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::ProducerEntry;

    pub(super) fn serialize<S: Serializer>(
        map: &HashMap<i64, ProducerEntry>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut pairs: Vec<(&i64, &ProducerEntry)> = map.iter().collect();
        pairs.sort_unstable_by_key(|(id, _)| **id);
        pairs.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<HashMap<i64, ProducerEntry>, D::Error> {
        Ok(Vec::<(i64, ProducerEntry)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

impl ProducerStates {
    /// Sets how many producers are remembered (at least 1).
    pub(crate) fn set_max_producers(&mut self, max: usize) {
        self.max_producers = max.max(1);
    }

    /// Takes `other`'s producers (a snapshot's), keeping this one's bound.
    pub(crate) fn replace_producers(&mut self, other: ProducerStates) {
        self.producers = other.producers;
        while self.producers.len() > self.max_producers {
            self.evict_oldest();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.producers.len()
    }

    #[cfg(test)]
    fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// The producer's last stored batch.
    pub(crate) fn latest(&self, producer_id: i64) -> Option<Latest> {
        let e = self.producers.get(&producer_id)?;
        e.batches.back().map(|b| Latest {
            epoch: e.epoch,
            last_seq: b.last_seq,
        })
    }

    /// Whether `id` was stored already, may be stored now, or is out of sequence. `pending`
    /// is the producer's newest batch that is on its way into the log but not stored yet
    /// (a replicated partition's leader proposes before it knows the offsets).
    pub(crate) fn check(
        &self,
        id: &BatchId,
        pending: Option<Latest>,
    ) -> Result<Verdict, SequenceError> {
        let entry = self.producers.get(&id.producer_id);
        if let Some(e) = entry
            && id.epoch == e.epoch
            && let Some(b) = e
                .batches
                .iter()
                .find(|b| b.first_seq == id.first_seq && b.last_seq == id.last_seq)
        {
            return Ok(Verdict::Duplicate(*b));
        }
        let latest = pending.or_else(|| self.latest(id.producer_id));
        let Some(latest) = latest else {
            // Unknown (new, or forgotten): take it at its sequence.
            return Ok(Verdict::Append);
        };
        if id.epoch < latest.epoch {
            return Err(SequenceError::Fenced {
                producer_id: id.producer_id,
                current: latest.epoch,
                got: id.epoch,
            });
        }
        let expected = if id.epoch > latest.epoch || latest.last_seq == i32::MAX {
            0
        } else {
            latest.last_seq + 1
        };
        if (id.epoch > latest.epoch && id.first_seq == 0)
            || (id.epoch == latest.epoch && id.follows(latest.last_seq))
        {
            Ok(Verdict::Append)
        } else {
            Err(SequenceError::OutOfOrder {
                producer_id: id.producer_id,
                epoch: id.epoch,
                expected,
                got: id.first_seq,
            })
        }
    }

    /// Whether `id` is ahead of the sequence its producer continues at: a batch that may
    /// have overtaken the ones before it (a producer keeps up to
    /// [`MAX_BATCHES_PER_PRODUCER`] in flight), worth a short wait for them before
    /// [`check`](Self::check) judges it. A new producer or epoch starts at sequence 0; a
    /// duplicate is never early.
    pub(crate) fn is_early(&self, id: &BatchId, pending: Option<Latest>) -> bool {
        if let Some(e) = self.producers.get(&id.producer_id)
            && id.epoch == e.epoch
            && e.batches
                .iter()
                .any(|b| b.first_seq == id.first_seq && b.last_seq == id.last_seq)
        {
            return false;
        }
        match pending.or_else(|| self.latest(id.producer_id)) {
            None => id.first_seq != 0,
            Some(l) if id.epoch > l.epoch => id.first_seq != 0,
            Some(l) if id.epoch == l.epoch => {
                let expected = if l.last_seq == i32::MAX {
                    0
                } else {
                    l.last_seq + 1
                };
                // Sequences wrap at i32::MAX: "ahead" is less than half the space forward.
                let ahead = (i64::from(id.first_seq) - i64::from(expected)).rem_euclid(1 << 31);
                ahead > 0 && ahead < 1 << 30
            }
            Some(_) => false,
        }
    }

    /// Records a batch stored at `base_offset..=last_offset`.
    pub(crate) fn record(&mut self, id: &BatchId, base_offset: i64, last_offset: i64, now_ms: i64) {
        if !self.producers.contains_key(&id.producer_id) && self.producers.len() >= MAX_PRODUCERS {
            self.evict_oldest();
        }
        let e = self.producers.entry(id.producer_id).or_default();
        if id.epoch != e.epoch {
            e.batches.clear();
            e.epoch = id.epoch;
        }
        // Recording the same batch again (a replay after a restart) changes nothing.
        if e.batches
            .iter()
            .any(|b| b.first_seq == id.first_seq && b.last_seq == id.last_seq)
        {
            e.last_ms = e.last_ms.max(now_ms);
            return;
        }
        if e.batches.len() >= MAX_BATCHES_PER_PRODUCER {
            e.batches.pop_front();
        }
        e.batches.push_back(StoredBatch {
            first_seq: id.first_seq,
            last_seq: id.last_seq,
            base_offset,
            last_offset,
        });
        e.last_ms = e.last_ms.max(now_ms);
    }

    /// Records a stored batch from its header (offsets assigned), if it has a producer.
    pub(crate) fn record_header(&mut self, header: &BatchHeader, now_ms: i64) {
        if let Some(id) = BatchId::of(header) {
            self.record(&id, header.base_offset, header.last_offset(), now_ms);
        }
    }

    /// Forgets producers idle for longer than `max_idle_ms`.
    pub(crate) fn expire(&mut self, now_ms: i64, max_idle_ms: i64) {
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_ms) <= max_idle_ms);
    }

    /// Forgets batches below `log_start` (deleted by retention); a producer with none left
    /// is forgotten.
    pub(crate) fn truncate_head(&mut self, log_start: i64) {
        self.producers.retain(|_, e| {
            e.batches.retain(|b| b.last_offset >= log_start);
            !e.batches.is_empty()
        });
    }

    fn evict_oldest(&mut self) {
        if let Some((&id, _)) = self.producers.iter().min_by_key(|(_, e)| e.last_ms) {
            self.producers.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(pid: i64, epoch: i16, first: i32, last: i32) -> BatchId {
        BatchId {
            producer_id: pid,
            epoch,
            first_seq: first,
            last_seq: last,
        }
    }

    #[test]
    fn a_batch_ahead_of_the_sequence_is_early_and_others_are_not() {
        let mut s = ProducerStates::default();
        // A producer the partition does not know starts at 0.
        assert!(!s.is_early(&id(1, 0, 0, 4), None));
        assert!(s.is_early(&id(1, 0, 5, 9), None));
        s.record(&id(1, 0, 0, 4), 0, 4, 1);
        // Next in line, a duplicate, and an old batch are judged at once.
        assert!(!s.is_early(&id(1, 0, 5, 9), None));
        assert!(!s.is_early(&id(1, 0, 0, 4), None));
        assert!(!s.is_early(&id(1, 0, 2, 3), None));
        // Beyond the next: early, also counted from a batch still on its way.
        assert!(s.is_early(&id(1, 0, 7, 9), None));
        let pending = Some(Latest {
            epoch: 0,
            last_seq: 9,
        });
        assert!(!s.is_early(&id(1, 0, 10, 12), pending));
        assert!(s.is_early(&id(1, 0, 13, 14), pending));
        // A new epoch starts at 0; an old epoch is fenced, not early.
        assert!(!s.is_early(&id(1, 1, 0, 0), None));
        assert!(s.is_early(&id(1, 1, 3, 4), None));
        s.record(&id(1, 1, 0, 0), 5, 5, 2);
        assert!(!s.is_early(&id(1, 0, 9, 9), None));
        // Across the wrap at i32::MAX.
        s.record(&id(2, 0, i32::MAX - 1, i32::MAX), 6, 7, 3);
        assert!(!s.is_early(&id(2, 0, 0, 3), None));
        assert!(s.is_early(&id(2, 0, 4, 5), None));
        assert!(!s.is_early(&id(2, 0, i32::MAX - 5, i32::MAX - 4), None));
    }

    #[test]
    fn a_retried_batch_is_a_duplicate_with_its_original_offsets() {
        let mut s = ProducerStates::default();
        let b = id(7, 0, 0, 9);
        assert_eq!(s.check(&b, None), Ok(Verdict::Append));
        s.record(&b, 100, 109, 1);
        assert_eq!(
            s.check(&b, None),
            Ok(Verdict::Duplicate(StoredBatch {
                first_seq: 0,
                last_seq: 9,
                base_offset: 100,
                last_offset: 109
            }))
        );
        // The next batch continues the sequence; a gap or a replay of part of it does not.
        assert_eq!(s.check(&id(7, 0, 10, 12), None), Ok(Verdict::Append));
        assert!(matches!(
            s.check(&id(7, 0, 11, 12), None),
            Err(SequenceError::OutOfOrder {
                expected: 10,
                got: 11,
                ..
            })
        ));
        assert!(matches!(
            s.check(&id(7, 0, 5, 9), None),
            Err(SequenceError::OutOfOrder { expected: 10, .. })
        ));
        // Other producers are independent.
        assert_eq!(s.check(&id(8, 0, 0, 0), None), Ok(Verdict::Append));
    }

    #[test]
    fn a_pending_batch_moves_the_expected_sequence() {
        let mut s = ProducerStates::default();
        s.record(&id(1, 0, 0, 4), 0, 4, 1);
        let pending = Some(Latest {
            epoch: 0,
            last_seq: 9,
        });
        assert_eq!(s.check(&id(1, 0, 10, 10), pending), Ok(Verdict::Append));
        assert!(s.check(&id(1, 0, 5, 9), pending).is_err());
    }

    #[test]
    fn epochs_fence_and_restart_sequences() {
        let mut s = ProducerStates::default();
        s.record(&id(1, 3, 0, 4), 0, 4, 1);
        assert!(matches!(
            s.check(&id(1, 2, 5, 5), None),
            Err(SequenceError::Fenced {
                current: 3,
                got: 2,
                ..
            })
        ));
        assert_eq!(s.check(&id(1, 4, 0, 0), None), Ok(Verdict::Append));
        assert!(s.check(&id(1, 4, 5, 5), None).is_err());
        s.record(&id(1, 4, 0, 0), 5, 5, 2);
        assert_eq!(s.get(1).map(|e| e.batches.len()), Some(1));
    }

    #[test]
    fn sequences_wrap() {
        let mut s = ProducerStates::default();
        s.record(&id(1, 0, i32::MAX - 1, i32::MAX), 0, 1, 1);
        assert_eq!(s.check(&id(1, 0, 0, 3), None), Ok(Verdict::Append));
    }

    #[test]
    fn memory_is_bounded() {
        let mut s = ProducerStates::default();
        for seq in 0..20 {
            s.record(&id(1, 0, seq, seq), seq as i64, seq as i64, 1);
        }
        assert_eq!(
            s.get(1).map(|e| e.batches.len()),
            Some(MAX_BATCHES_PER_PRODUCER)
        );
        for pid in 0..(MAX_PRODUCERS as i64 + 10) {
            s.record(&id(100 + pid, 0, 0, 0), 0, 0, pid);
        }
        assert_eq!(s.len(), MAX_PRODUCERS);
        s.expire(MAX_PRODUCERS as i64 + 10, 5);
        assert!(s.len() <= 6);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ProducerStates>(&json).unwrap(), s);
        s.truncate_head(1);
        assert_eq!(s.len(), 0);
    }
}
