//! The partition replica's state machine. The data is already in the log (layout (a)), so
//! applying a committed entry moves the high watermark (consumers may now read it) and
//! records the batch's idempotent producer, so that any replica that becomes leader knows
//! which retries are duplicates. Snapshots hold the applied log id, membership, high
//! watermark and producers; the segments themselves are the data.

// openraft's StorageError is large by design; it is returned on the rare error path only.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use sluice_proto::batch::BatchHeader;
use tokio::sync::watch;

use super::types::{Appended, PartitionRaft};
use crate::producer_state::ProducerStates;

type NodeId = u64;
type SResult<T> = Result<T, StorageError<NodeId>>;

const STATE_FILE: &str = "raft-applied.json";

/// `raft-applied.json` is rewritten at most this often while entries are applied (it holds
/// the producers, which need not be serialized per batch). A lagging file is safe: after a
/// restart the entries after it are applied again, which changes nothing twice.
const PERSIST_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

fn sm_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageError::from(StorageIOError::write_state_machine(AnyError::error(
        e.to_string(),
    )))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    /// The offset after the last applied record batch: the high watermark.
    high_watermark: i64,
    /// Records below this offset may be deleted on every replica (Kafka's DeleteRecords,
    /// written as a control batch; see [`super::types::DELETE_BEFORE_KEY`]).
    #[serde(default)]
    delete_before: i64,
}

/// What `raft-applied.json` and snapshots hold beside [`Applied`].
#[derive(Debug, Serialize)]
struct Saved<'a> {
    applied: &'a Applied,
    producers: &'a ProducerStates,
    /// Snapshots only: the offset after the last entry the snapshot covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_offset: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Loaded {
    applied: Applied,
    #[serde(default)]
    producers: ProducerStates,
    #[serde(default)]
    next_offset: Option<i64>,
}

impl Loaded {
    /// Also reads the format before idempotent producers: [`Applied`] alone.
    fn decode(bytes: &[u8]) -> serde_json::Result<Loaded> {
        serde_json::from_slice(bytes).or_else(|e| {
            serde_json::from_slice::<Applied>(bytes)
                .map(|applied| Loaded {
                    applied,
                    producers: ProducerStates::default(),
                    next_offset: None,
                })
                .map_err(|_| e)
        })
    }
}

/// A snapshot's metadata and data.
type StoredSnapshot = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

#[derive(Debug, Clone)]
pub(crate) struct ReplicaState {
    path: PathBuf,
    /// Shared with the replica, which writes it out when the group stops (a restart then
    /// applies nothing again, and reads no entry to do so).
    applied: Arc<parking_lot::Mutex<Applied>>,
    high_watermark: Arc<watch::Sender<i64>>,
    /// Idempotent producers of the applied batches (shared with the leader's produce path).
    producers: Arc<parking_lot::Mutex<ProducerStates>>,
    /// The last snapshot built or installed, shared with snapshot builders (clones).
    snapshot: Arc<parking_lot::Mutex<Option<StoredSnapshot>>>,
    /// The replica's log (the data), for where a snapshot's log continues.
    log: Option<super::log_store::SegmentRaftLog>,
    /// The Raft index the next snapshot covers (0: the last applied): set by retention.
    snapshot_upto: Arc<std::sync::atomic::AtomicU64>,
    /// When `apply` last started a background save of `raft-applied.json`.
    persisted_at: Option<std::time::Instant>,
    /// A background save is running (at most one at a time).
    saving: Arc<std::sync::atomic::AtomicBool>,
    /// The last background save failed (logged once until one succeeds).
    save_failing: Arc<std::sync::atomic::AtomicBool>,
    /// Held while `raft-applied.json` is written: saves never interleave, and each encodes
    /// the state under it, so the last one written is the newest. True once the replica
    /// stopped and wrote its final state: a save still queued then writes nothing.
    writing: Arc<parking_lot::Mutex<bool>>,
}

impl ReplicaState {
    pub(crate) fn open(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(STATE_FILE);
        let Loaded {
            applied, producers, ..
        } = match std::fs::read(&path) {
            Ok(b) => Loaded::decode(&b).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Loaded {
                applied: Applied::default(),
                producers: ProducerStates::default(),
                next_offset: None,
            },
            Err(e) => return Err(e),
        };
        let high_watermark = Arc::new(watch::Sender::new(applied.high_watermark));
        Ok(ReplicaState {
            path,
            applied: Arc::new(parking_lot::Mutex::new(applied)),
            high_watermark,
            producers: Arc::new(parking_lot::Mutex::new(producers)),
            snapshot: Arc::default(),
            log: None,
            snapshot_upto: Arc::default(),
            persisted_at: None,
            saving: Arc::default(),
            save_failing: Arc::default(),
            writing: Arc::default(),
        })
    }

    /// Ties the state to its replica's log: snapshots then say at which offset the log
    /// continues after them, and installing one restarts a log that is behind it.
    pub(crate) fn with_log(mut self, log: super::log_store::SegmentRaftLog) -> Self {
        self.log = Some(log);
        self
    }

    /// Consumers read below this offset.
    pub(crate) fn subscribe_high_watermark(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    /// Where retention asks the next snapshot to be taken.
    pub(crate) fn snapshot_upto(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.snapshot_upto.clone()
    }

    /// Records below this offset may be deleted (see [`Applied::delete_before`]).
    pub(crate) fn delete_before(&self) -> i64 {
        self.applied.lock().delete_before
    }

    /// The producers of the applied batches.
    pub(crate) fn producers(&self) -> Arc<parking_lot::Mutex<ProducerStates>> {
        self.producers.clone()
    }

    fn encode(&self, next_offset: Option<i64>) -> SResult<Vec<u8>> {
        let applied = self.applied.lock().clone();
        serde_json::to_vec(&Saved {
            applied: &applied,
            producers: &self.producers.lock(),
            next_offset,
        })
        .map_err(sm_err)
    }

    /// Written without fsync: after a crash the committed entries are applied again from the
    /// log, which moves the high watermark and records their producers again. Blocking.
    pub(crate) fn persist(&self) -> SResult<()> {
        self.write_state(false)
    }

    /// The replica stopped: writes its applied state one last time (a restart then applies
    /// nothing again); nothing is written after. Blocking.
    pub(crate) fn persist_final(&self) -> SResult<()> {
        self.write_state(true)
    }

    fn write_state(&self, last: bool) -> SResult<()> {
        let mut stopped = self.writing.lock();
        if *stopped {
            return Ok(());
        }
        *stopped = last;
        let data = self.encode(None)?;
        crate::storage::replace_file(&self.path, &data, false).map_err(sm_err)
    }

    /// Starts a save of `raft-applied.json` off the commit path, unless one is running. A
    /// failed one is only logged: the file may lag (see [`PERSIST_EVERY`]); a snapshot's
    /// save, which may not, is awaited ([`Self::persist_now`]).
    fn save_in_background(&mut self) {
        use std::sync::atomic::Ordering;
        if self.saving.swap(true, Ordering::AcqRel) {
            return;
        }
        self.persisted_at = Some(std::time::Instant::now());
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            match me.persist() {
                Ok(()) => me.save_failing.store(false, Ordering::Release),
                Err(e) => {
                    if !me.save_failing.swap(true, Ordering::AcqRel) {
                        tracing::warn!(path = %me.path.display(), cause = %e, "saving the applied state failed (a restart re-applies the log from the last save; retried at the next apply)");
                    }
                }
            }
            me.saving.store(false, Ordering::Release);
        });
    }

    async fn persist_now(&self) -> SResult<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.persist())
            .await
            .map_err(sm_err)?
    }
}

/// The offset a delete-before control batch names, if `batch` is one.
fn delete_before(batch: &bytes::Bytes) -> Option<i64> {
    let (_, records) = sluice_proto::batch::decode(batch, 1 << 16).ok()?;
    let r = records.first()?;
    if r.key.as_deref() != Some(super::types::DELETE_BEFORE_KEY) {
        return None;
    }
    std::str::from_utf8(&r.value).ok()?.parse().ok()
}

impl RaftSnapshotBuilder<PartitionRaft> for ReplicaState {
    /// A snapshot at the point retention asked for ([`ReplicaState::snapshot_upto`]), not
    /// at the last applied entry: the entries after it are data that must still reach a
    /// follower that installs the snapshot.
    async fn build_snapshot(&mut self) -> SResult<Snapshot<PartitionRaft>> {
        let upto = self
            .snapshot_upto
            .load(std::sync::atomic::Ordering::Acquire);
        let applied = self.applied.lock().clone();
        let membership_index = applied.membership.log_id().map_or(0, |l| l.index);
        let (last, next_offset) = match (&self.log, applied.last) {
            (Some(log), Some(applied)) => {
                let at = if upto > 0 {
                    upto.max(membership_index).min(applied.index)
                } else {
                    applied.index
                };
                let last = log.log_id_at(at).unwrap_or(applied);
                (Some(last), log.next_offset_after(last.index))
            }
            (_, applied) => (applied, None),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: applied.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                last.map_or(0, |l| l.index),
                next_offset.unwrap_or(applied.high_watermark)
            ),
        };
        // The log is purged up to the snapshot next: the applied state on disk must not be
        // older than that, or a restart would need purged entries.
        self.persist_now().await?;
        let data = self.encode(next_offset)?;
        *self.snapshot.lock() = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<PartitionRaft> for ReplicaState {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> SResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let applied = self.applied.lock();
        Ok((applied.last, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<Appended>>
    where
        I: IntoIterator<Item = Entry<PartitionRaft>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let entries: Vec<_> = entries.into_iter().collect();
        // A leader acknowledges its own appends to Raft before their fsync ends (see
        // `SegmentRaftLog::append`): nothing is applied (the high watermark, a producer's
        // answer) before it is on this replica's disk too.
        if let (Some(log), Some(last)) = (&self.log, entries.last()) {
            log.await_durable(last.log_id.index).await?;
        }
        let mut out = Vec::new();
        // The lock is not held across an await.
        let high_watermark = {
            let mut applied = self.applied.lock();
            for entry in entries {
                applied.last = Some(entry.log_id);
                out.push(match &entry.payload {
                    EntryPayload::Normal(batch) => {
                        let h = BatchHeader::parse(&batch.0).map_err(sm_err)?;
                        applied.high_watermark = applied.high_watermark.max(h.next_offset());
                        if h.is_control()
                            && let Some(offset) = delete_before(&batch.0)
                        {
                            applied.delete_before = applied.delete_before.max(offset);
                        }
                        self.producers
                            .lock()
                            .record_header(&h, crate::clock::now_ms());
                        Appended {
                            base_offset: h.base_offset,
                            last_offset: h.last_offset(),
                        }
                    }
                    EntryPayload::Blank => Appended::default(),
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        Appended::default()
                    }
                });
            }
            applied.high_watermark
        };
        if self
            .persisted_at
            .is_none_or(|t| t.elapsed() >= PERSIST_EVERY)
        {
            self.save_in_background();
        }
        self.high_watermark.send_if_modified(|hw| {
            let moved = high_watermark > *hw;
            *hw = (*hw).max(high_watermark);
            moved
        });
        if let Some(log) = &self.log {
            log.stages()
                .observe(crate::metrics::Stage::Apply, started.elapsed());
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> SResult<()> {
        let loaded = Loaded::decode(snapshot.get_ref()).map_err(sm_err)?;
        // Everything before the snapshot point is committed (and deleted by retention).
        let hw = loaded.next_offset.unwrap_or(loaded.applied.high_watermark);
        *self.applied.lock() = Applied {
            last: meta.last_log_id,
            membership: meta.last_membership.clone(),
            high_watermark: hw,
            delete_before: loaded.applied.delete_before,
        };
        self.producers.lock().replace_producers(loaded.producers);
        if let (Some(log), Some(last), Some(next_offset)) =
            (self.log.clone(), meta.last_log_id, loaded.next_offset)
        {
            tokio::task::spawn_blocking(move || log.restart_at_snapshot(last, next_offset))
                .await
                .map_err(sm_err)?
                .map_err(sm_err)?;
        }
        *self.snapshot.lock() = Some((meta.clone(), snapshot.get_ref().clone()));
        self.persist_now().await?;
        self.high_watermark.send_replace(hw);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<PartitionRaft>>> {
        Ok(self.snapshot.lock().clone().map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use openraft::CommittedLeaderId;
    use sluice_proto::RecordBatchBuilder;

    use super::super::types::Payload;
    use super::*;

    fn batch(base_offset: i64, n: usize) -> Entry<PartitionRaft> {
        let mut b = RecordBatchBuilder::new(Default::default());
        for i in 0..n {
            b.append(i as i64, None, b"value", &[]);
        }
        let mut bytes = bytes::BytesMut::from(b.build());
        sluice_proto::batch::set_base_offset_and_epoch(&mut bytes, base_offset, 1);
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), base_offset as u64 + 1),
            payload: EntryPayload::Normal(Payload::batch(bytes.freeze())),
        }
    }

    fn saved_high_watermark(dir: &Path) -> Option<i64> {
        let bytes = std::fs::read(dir.join(STATE_FILE)).ok()?;
        Some(Loaded::decode(&bytes).ok()?.applied.high_watermark)
    }

    /// The applied state is saved in the background, not by the apply that answers a
    /// producer; once the replica stopped and saved its final state, a save still queued
    /// writes nothing (its directory may be on its way out).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_applied_state_is_saved_off_the_commit_path_and_never_after_the_final_save() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = ReplicaState::open(dir.path()).unwrap();
        state.apply(vec![batch(0, 3)]).await.unwrap();
        assert_eq!(*state.high_watermark.borrow(), 3);
        let deadline = Instant::now() + Duration::from_secs(10);
        while saved_high_watermark(dir.path()) != Some(3) {
            assert!(
                Instant::now() < deadline,
                "the applied state was never saved"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        state.persist_final().unwrap();
        // As a background save that was queued when the replica stopped.
        state.persisted_at = None;
        state.apply(vec![batch(3, 2)]).await.unwrap();
        while state.saving.load(std::sync::atomic::Ordering::Acquire) {
            assert!(Instant::now() < deadline, "the background save never ended");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(saved_high_watermark(dir.path()), Some(3));
        assert!(!dir.path().join(STATE_FILE).with_extension("tmp").exists());
    }
}
