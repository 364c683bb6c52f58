//! How a coordinator's state is written in `__consumer_offsets`: one record per committed
//! partition, key and value in JSON (readable with `sluice consume __consumer_offsets`, and
//! new fields or record types can be added without breaking older readers).
//!
//! - key `{"type":"offset","group":G,"topic":T,"partition":P}`
//! - value `{"offset":O,"metadata":M,"commit_ms":TS}`, or `null` when the offset is deleted.
//!
//! A record whose key has a type this version does not know is skipped when loading.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_proto::RecordBatchBuilder;
use sluice_proto::batch::{self, Compression};

use super::state::{Committed, ShardState, TopicPartition};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Key {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct OffsetValue {
    offset: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    metadata: String,
    commit_ms: i64,
}

/// One batch holding a commit of `offsets` for `group` (a commit is all or nothing: one
/// batch is one Raft entry).
pub(crate) fn commit_batch(group: &str, offsets: &[(TopicPartition, Committed)]) -> Bytes {
    offsets_batch(offsets.iter().map(|(tp, c)| (group, tp, c)))
}

/// One batch of committed offsets of any groups.
pub(crate) fn offsets_batch<'a>(
    offsets: impl IntoIterator<Item = (&'a str, &'a TopicPartition, &'a Committed)>,
) -> Bytes {
    let mut b = RecordBatchBuilder::new(Compression::None);
    for (group, (topic, partition), c) in offsets {
        let key = Key::Offset {
            group: group.to_string(),
            topic: topic.clone(),
            partition: *partition,
        };
        let value = OffsetValue {
            offset: c.offset,
            metadata: c.metadata.clone(),
            commit_ms: c.commit_ms,
        };
        b.append(
            c.commit_ms,
            Some(&serde_json::to_vec(&key).expect("a key serializes")),
            &serde_json::to_vec(&value).expect("a value serializes"),
            &[],
        );
    }
    b.build()
}

/// One batch deleting `group`'s offsets of `partitions` (`null` values).
pub(crate) fn deletion_batch(group: &str, partitions: &[TopicPartition]) -> Bytes {
    let mut b = RecordBatchBuilder::new(Compression::None);
    let now = crate::clock::now_ms();
    for (topic, partition) in partitions {
        let key = Key::Offset {
            group: group.to_string(),
            topic: topic.clone(),
            partition: *partition,
        };
        b.append(
            now,
            Some(&serde_json::to_vec(&key).expect("a key serializes")),
            b"null",
            &[],
        );
    }
    b.build()
}

/// What [`apply_batches`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// The offset after the last batch.
    pub next: Option<i64>,
    pub records: usize,
    /// Records of a type or a form this version does not know.
    pub skipped: usize,
}

/// Applies every record of `batches` (whole batches, as read from the log) to `state`.
pub(crate) fn apply_batches(
    state: &mut ShardState,
    batches: Bytes,
    max_decompressed: usize,
) -> Result<Applied, String> {
    let mut next = None;
    let mut skipped = 0;
    let mut applied = 0;
    for whole in batch::split_batches(batches) {
        let whole = whole.map_err(|e| e.to_string())?;
        let (header, records) =
            batch::decode(&whole, max_decompressed).map_err(|e| e.to_string())?;
        next = Some(header.next_offset());
        if header.is_control() {
            continue;
        }
        for r in records {
            applied += 1;
            let Some(key) = r.key.as_deref() else {
                skipped += 1;
                continue;
            };
            let Ok(Key::Offset {
                group,
                topic,
                partition,
            }) = serde_json::from_slice::<Key>(key)
            else {
                skipped += 1;
                continue;
            };
            match serde_json::from_slice::<Option<OffsetValue>>(&r.value) {
                Ok(value) => state.apply(
                    &group,
                    (topic, partition),
                    value.map(|v| Committed {
                        offset: v.offset,
                        metadata: v.metadata,
                        commit_ms: v.commit_ms,
                    }),
                    r.offset,
                ),
                Err(_) => skipped += 1,
            }
        }
    }
    Ok(Applied {
        next,
        records: applied,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_batch_loads_back_into_the_same_offsets() {
        let offsets = vec![
            (
                ("orders".to_string(), 0),
                Committed {
                    offset: 42,
                    metadata: "worker-1".into(),
                    commit_ms: 1_700_000_000_000,
                },
            ),
            (
                ("orders".to_string(), 3),
                Committed {
                    offset: 7,
                    metadata: String::new(),
                    commit_ms: 1_700_000_000_000,
                },
            ),
        ];
        let mut bytes = bytes::BytesMut::from(&commit_batch("billing", &offsets)[..]);
        batch::set_base_offset_and_epoch(&mut bytes, 100, 1);
        let mut state = ShardState::default();
        let applied = apply_batches(&mut state, bytes.freeze(), 1 << 20).unwrap();
        assert_eq!(
            applied,
            Applied {
                next: Some(102),
                records: 2,
                skipped: 0
            }
        );
        assert_eq!(state.offsets("billing", None), offsets);
    }
}
