//! [`PartitionRef`]: a partition this broker serves, as the request handlers see it. Every
//! topic created now is Raft-replicated at any replication factor (factor 1 is a one-voter
//! group), so its partitions are [`Replica`]s; a factor-1 topic created by an earlier
//! version keeps the unreplicated [`Partition`] path. The handlers call this type and never
//! branch on which it is.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_proto::acks;

use super::Broker;
use crate::clock::now_ms;
use crate::config::FlushPolicy;
use crate::error::{Error, Result};
use crate::partition::Partition;
use crate::replica::group::Replica;

#[derive(Debug, Clone)]
pub(crate) enum PartitionRef {
    /// Factor 1, created before factor 1 became a one-voter Raft group.
    Local(Arc<Partition>),
    Replica(Arc<Replica>),
}

/// Where a produced batch landed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Produced {
    /// -1 for `acks=0`.
    pub base_offset: i64,
    pub log_start: i64,
}

/// A leader's view of how its partition is replicated, for `describe`.
#[derive(Debug, Clone)]
pub(crate) struct ReplicationView {
    pub in_sync: Vec<i32>,
    /// Records the replicas being added lack (the most of them); -1 when unknown.
    pub records_behind: i64,
}

impl PartitionRef {
    /// Validates and appends a batch, answering as `acks` asks (see [`Replica::produce`]).
    pub(crate) async fn produce(
        &self,
        broker: &Broker,
        batch: Bytes,
        acks_level: i32,
        timeout: Duration,
    ) -> Result<Produced> {
        let base_offset = match self {
            PartitionRef::Replica(r) => {
                let state = broker.controller.state();
                r.produce(&state, batch, acks_level, timeout).await?.0
            }
            PartitionRef::Local(partition) => {
                partition.await_turn(&batch).await;
                let p = partition.clone();
                let info = tokio::task::spawn_blocking(move || {
                    let batch = p.validate(batch)?;
                    p.append(batch, now_ms())
                })
                .await
                .map_err(|e| Error::Internal(format!("appending a batch: {e}")))??;
                broker.written(partition);
                if acks_level != acks::NONE && broker.config.flush == FlushPolicy::Always {
                    tokio::time::timeout(timeout, partition.wait_flushed(info.last_offset + 1))
                        .await
                        .map_err(|_| {
                            Error::Timeout(format!(
                                "{}-{}: batch at offset {} was appended but not flushed within {} ms; it may still become visible",
                                partition.topic,
                                partition.id,
                                info.base_offset,
                                timeout.as_millis()
                            ))
                        })??;
                }
                info.base_offset
            }
        };
        Ok(Produced {
            base_offset: if acks_level == acks::NONE {
                -1
            } else {
                base_offset
            },
            log_start: self.offsets().log_start,
        })
    }

    /// How the partition is replicated, as its leader sees it; `None` where this broker does
    /// not lead it. `replicas` are the partition's current replicas, `adding` those being
    /// added to it.
    pub(crate) fn replication(&self, replicas: &[i32], adding: &[i32]) -> Option<ReplicationView> {
        match self {
            PartitionRef::Local(_) => Some(ReplicationView {
                in_sync: replicas.to_vec(),
                records_behind: 0,
            }),
            PartitionRef::Replica(r) => {
                if !r.is_leader() {
                    return None;
                }
                let learners = r.catching_up();
                // A replica to add that is not a learner yet lacks everything (unknown).
                let records_behind = if adding.iter().all(|a| learners.iter().any(|(l, _)| l == a))
                {
                    learners
                        .iter()
                        .filter(|(l, _)| adding.contains(l))
                        .map(|(_, b)| *b)
                        .max()
                        .unwrap_or(0)
                } else {
                    -1
                };
                Some(ReplicationView {
                    in_sync: r.in_sync(),
                    records_behind,
                })
            }
        }
    }
    /// Whole batches from `offset`, below the high watermark. Blocking (disk).
    pub(crate) fn read(&self, offset: i64, max_bytes: usize) -> Result<bytes::Bytes> {
        match self {
            PartitionRef::Local(p) => p.read(offset, max_bytes),
            PartitionRef::Replica(r) => r.read(offset, max_bytes),
        }
    }

    pub(crate) fn high_watermark(&self) -> i64 {
        match self {
            PartitionRef::Local(p) => p.high_watermark(),
            PartitionRef::Replica(r) => r.high_watermark(),
        }
    }

    pub(crate) fn subscribe_high_watermark(&self) -> tokio::sync::watch::Receiver<i64> {
        match self {
            PartitionRef::Local(p) => p.subscribe_high_watermark(),
            PartitionRef::Replica(r) => r.subscribe_high_watermark(),
        }
    }

    pub(crate) fn offsets(&self) -> crate::storage::LogOffsets {
        match self {
            PartitionRef::Local(p) => p.offsets(),
            PartitionRef::Replica(r) => r.offsets(),
        }
    }

    /// Blocking (disk).
    pub(crate) fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>> {
        match self {
            PartitionRef::Local(p) => p.offset_for_timestamp(ts),
            PartitionRef::Replica(r) => r.offset_for_timestamp(ts),
        }
    }
}
