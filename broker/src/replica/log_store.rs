//! The partition's Raft log *is* its segment log (layout (a) of docs/DESIGN.md): one entry
//! is one batch, written once. Normal entries are record batches. Blank and membership
//! entries (Raft's control entries) are kept in `raft.json`, not in the segments, so they
//! take no offset: a partition's first record is at offset 0 and its log end counts records
//! only, as in Kafka. (Logs written before that hold them as control batches, which take one
//! offset each; those are still read.)
//!
//! What segments cannot say is kept in `raft.json` beside them: the last purged log id, the
//! committed log id, the control entries (each with the offset the records after it
//! continue at, which is how a restart puts it back between the batches, and tells one
//! whose append never became durable), and the leader ids of runs of entries (a leader id changes
//! only on elections, so the list is short; Kafka's leader-epoch checkpoint is the same
//! idea). The batch's leader epoch field carries the term too. The Raft index of an entry
//! is its position in the log: `first_index` plus how many batches precede it. The vote is
//! saved in place in `raft-vote` ([`super::vote_file`]), cheaper than replacing `raft.json`
//! on every election; `raft.json` also carries it, as of its last write.
//!
//! File and segment I/O blocks, so every call runs on the blocking pool.

// openraft's StorageError is large by design; it is returned on the rare error path only.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use bytes::{Bytes, BytesMut};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, OptionalSend,
    RaftLogReader, StorageError, StorageIOError, Vote,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sluice_proto::batch::{self, BatchHeader};

use super::tail::{Tail, TailBudget};
use super::types::{Appended, PartitionRaft, Payload, Progress, Proposals};
use super::vote_file::VoteFile;
use crate::clock::now_ms;
use crate::storage::{LogStorage, SegmentLog};

mod entries;

type NodeId = u64;
type SResult<T> = Result<T, StorageError<NodeId>>;

const META_FILE: &str = "raft.json";
const BLANK_KEY: &[u8] = b"raft:blank";
const MEMBERSHIP_KEY: &[u8] = b"raft:membership";
/// What a control entry counts for in the memory tail's budget.
const CONTROL_SIZE: usize = 64;

fn io_err(
    f: fn(AnyError) -> StorageIOError<NodeId>,
    e: impl std::fmt::Display,
) -> StorageError<NodeId> {
    StorageError::from(f(AnyError::error(e.to_string())))
}

/// A run of entries written under one leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Epoch {
    first_index: u64,
    leader: CommittedLeaderId<NodeId>,
}

/// A control entry: Raft's, not a record batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum ControlKind {
    Blank,
    Membership(Membership<NodeId, openraft::BasicNode>),
}

/// A control entry kept in `raft.json`, and the offset the log was at when it was appended
/// (the base offset of the batch after it, if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Control {
    index: u64,
    next_offset: i64,
    kind: ControlKind,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
    /// Raft index and offset of the first entry still in the log (none when it is empty):
    /// where a restart starts counting batches.
    first_index: u64,
    first_offset: Option<i64>,
    epochs: Vec<Epoch>,
    /// The control entries from `first_index` on, by index.
    #[serde(default)]
    controls: Vec<Control>,
}

/// How far a log is on disk: the last entry written, the last fsynced (every entry up to
/// it in the log is), or why an fsync failed after its append was acknowledged to Raft.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Durable {
    pub written: Option<u64>,
    pub last: Option<LogId<NodeId>>,
    pub failed: Option<String>,
}

#[derive(Debug)]
struct Inner {
    /// Shared with `SegmentRaftLog` (see [`Durable`]).
    durable: Arc<watch::Sender<Durable>>,
    dir: PathBuf,
    log: SegmentLog,
    meta: Meta,
    /// Base offset of each entry from `meta.first_index` on (a control entry in `raft.json`:
    /// the offset of the batch after it).
    offsets: Vec<i64>,
    /// The newest entries in memory (shared with `SegmentRaftLog`, locked after `Inner`).
    tail: Arc<Mutex<Tail<Entry<PartitionRaft>>>>,
    /// The committed log id, saved into `meta` whenever it is written (shared with
    /// `SegmentRaftLog`, locked after `Inner`).
    committed: Arc<Mutex<Option<LogId<NodeId>>>>,
    /// Where the vote is durable (`meta.vote` mirrors it).
    votes: VoteFile,
    /// An append is fsyncing the log (outside this lock); appends written meanwhile are
    /// synced by it next.
    syncing: bool,
    /// Bumped when entries are cut or the log is reset: an fsync that started before
    /// reports nothing (what it covered may be gone).
    generation: u64,
    /// The leader's proposals written and not yet fsynced (told `Appended` once they are).
    unsynced_proposals: Vec<(u64, Appended)>,
}

/// A partition replica's Raft log on its segment files. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub(crate) struct SegmentRaftLog {
    inner: Arc<Mutex<Inner>>,
    /// Read without taking `inner`, which appends and the log's reads take.
    tail: Arc<Mutex<Tail<Entry<PartitionRaft>>>>,
    /// Saved on every commit, so without taking `inner` or a hop to the blocking pool. It
    /// needs no fsync of its own (openraft only uses it to apply sooner after a restart).
    committed: Arc<Mutex<Option<LogId<NodeId>>>>,
    /// This leader's proposals, told when their batch is durable here.
    proposals: Proposals,
    /// Where appends are timed.
    stages: crate::metrics::Stages,
    /// What is fsynced (shared with `Inner`).
    durable: Arc<watch::Sender<Durable>>,
}

impl SegmentRaftLog {
    /// Opens the log in `dir`: the segments (recovered as usual) and `raft.json`. Rebuilds
    /// the entry-to-offset map by reading batch headers.
    pub(crate) fn open(dir: &Path, log: SegmentLog, tail: TailBudget) -> std::io::Result<Self> {
        let mut meta: Meta = match std::fs::read(dir.join(META_FILE)) {
            Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(e),
        };
        // The vote file is written first on every vote, so it is never older than
        // raft.json's; a log from before it has only raft.json's.
        let (votes, vote) = VoteFile::open(dir)?;
        if vote.is_some() {
            meta.vote = vote;
        }
        let tail = Arc::new(Mutex::new(Tail::new(tail)));
        let committed = Arc::new(Mutex::new(meta.committed));
        let durable = Arc::new(watch::Sender::new(Durable::default()));
        let mut inner = Inner {
            durable: durable.clone(),
            dir: dir.to_path_buf(),
            log,
            meta,
            offsets: Vec::new(),
            tail: tail.clone(),
            committed: committed.clone(),
            votes,
            syncing: false,
            generation: 0,
            unsynced_proposals: Vec::new(),
        };
        let mut bases = Vec::new();
        if let Some(start) = inner.meta.first_offset {
            bases = match inner.log.batch_bases(start) {
                Ok(bases) if bases.first() == Some(&start) || bases.is_empty() => bases,
                listed => {
                    // Damage the fast listing cannot step over: read batch by batch (the
                    // slow path, which names the offset it fails at).
                    if let Err(e) = listed {
                        tracing::warn!(dir = %dir.display(), cause = %e, "listing the log's batches; reading them one by one");
                    }
                    let mut offsets = Vec::new();
                    inner
                        .log
                        .scan_headers(start, &mut |h| offsets.push(h.base_offset))
                        .map_err(std::io::Error::other)?;
                    offsets
                }
            };
        } else {
            inner.meta.controls.clear();
        }
        inner.place_controls(bases)?;
        inner.forget_runs_past_the_end();
        // What a restart finds on disk is durable.
        let last = inner.last_log_id();
        durable.send_replace(Durable {
            written: last.map(|l| l.index),
            last,
            failed: None,
        });
        Ok(SegmentRaftLog {
            inner: Arc::new(Mutex::new(inner)),
            tail,
            committed,
            proposals: Proposals::default(),
            stages: crate::metrics::Stages::default(),
            durable,
        })
    }

    /// What of this log is fsynced, as it moves.
    pub(crate) fn durable(&self) -> watch::Receiver<Durable> {
        self.durable.subscribe()
    }

    /// Waits until the entries up to `index` written here are fsynced (a leader
    /// acknowledges its own appends to Raft before their fsync ends; see `append`). An
    /// error if an fsync failed.
    pub(crate) async fn await_durable(&self, index: u64) -> SResult<()> {
        let mut durable = self.durable.subscribe();
        let d = durable
            .wait_for(|d| {
                d.failed.is_some()
                    || d.last.is_some_and(|l| l.index >= index)
                    // Nothing past it was written here to wait for.
                    || d.written.is_none_or(|w| w <= d.last.map_or(0, |l| l.index))
            })
            .await
            .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        match &d.failed {
            Some(e) => Err(io_err(StorageIOError::write_logs, e)),
            None => Ok(()),
        }
    }

    /// Waits until the entry at `index`, written here, is fsynced (or an fsync failed).
    async fn await_durable_entry(&self, index: u64) -> SResult<()> {
        let mut durable = self.durable.subscribe();
        let d = durable
            .wait_for(|d| d.failed.is_some() || d.last.is_some_and(|l| l.index >= index))
            .await
            .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        match &d.failed {
            Some(e) => Err(io_err(StorageIOError::write_logs, e)),
            None => Ok(()),
        }
    }

    /// Where this log's appends and its state machine's applies are timed.
    pub(crate) fn stages(&self) -> &crate::metrics::Stages {
        &self.stages
    }

    /// Times appends into `stages` (before the log is cloned).
    pub(crate) fn with_stages(mut self, stages: crate::metrics::Stages) -> Self {
        self.stages = stages;
        self
    }

    /// Where this log reports the durable append of the batches the leader proposed.
    pub(crate) fn proposals(&self) -> Proposals {
        self.proposals.clone()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> SResult<T> + Send + 'static,
    ) -> SResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut inner.lock()))
            .await
            .map_err(|e| {
                io_err(
                    StorageIOError::write_logs,
                    format!("storage task failed: {e}"),
                )
            })?
    }

    /// The segment log's bounds and size.
    pub(crate) fn offsets(&self) -> crate::storage::LogOffsets {
        self.inner.lock().log.offsets()
    }

    /// The segments, for retention.
    pub(crate) fn segments(&self) -> Vec<crate::storage::SegmentInfo> {
        self.inner.lock().log.segments()
    }

    /// The last Raft index whose batch ends at or below `offset` (what retention may purge
    /// when it cuts the log there).
    pub(crate) fn last_index_below(&self, offset: i64) -> Option<u64> {
        let inner = self.inner.lock();
        let n = inner.offsets.partition_point(|o| *o <= offset);
        let whole = if n == inner.offsets.len() && inner.log.offsets().log_end <= offset {
            n
        } else {
            n.saturating_sub(1)
        };
        (whole > 0).then(|| inner.meta.first_index + whole as u64 - 1)
    }

    /// The last log id (the last purged one when the log is empty): what a vote compares.
    pub(crate) fn last_log_id(&self) -> Option<LogId<NodeId>> {
        let inner = self.inner.lock();
        match inner.last_index() {
            Some(i) => inner.log_id(i).ok(),
            None => inner.meta.last_purged,
        }
    }

    /// The log id of entry `index`, if the log holds it.
    pub(crate) fn log_id_at(&self, index: u64) -> Option<LogId<NodeId>> {
        let inner = self.inner.lock();
        let held =
            index >= inner.meta.first_index && inner.last_index().is_some_and(|l| index <= l);
        held.then(|| inner.log_id(index).ok()).flatten()
    }

    /// The offset after entry `index`: where the log continues after a snapshot at it.
    pub(crate) fn next_offset_after(&self, index: u64) -> Option<i64> {
        let inner = self.inner.lock();
        let first = inner.meta.first_index;
        if index + 1 < first {
            return None;
        }
        let k = (index + 1 - first) as usize;
        Some(
            inner
                .offsets
                .get(k)
                .copied()
                .unwrap_or_else(|| inner.log.offsets().log_end),
        )
    }

    /// After installing a snapshot at `last` (a follower too far behind for the leader's
    /// retained log): unless this log holds that entry, it is emptied and continues at
    /// `next_offset`, so the leader's next batches land at the offsets they have there.
    /// Blocking.
    pub(crate) fn restart_at_snapshot(
        &self,
        last: LogId<NodeId>,
        next_offset: i64,
    ) -> std::io::Result<()> {
        let mut inner = self.inner.lock();
        let holds = inner.last_index().is_some_and(|l| l >= last.index)
            && last.index >= inner.meta.first_index
            && inner.log_id(last.index).ok() == Some(last);
        if holds {
            return Ok(());
        }
        inner
            .log
            .reset_to(next_offset, now_ms())
            .map_err(std::io::Error::other)?;
        inner.offsets.clear();
        inner.tail.lock().clear();
        inner.meta.controls.clear();
        inner.meta.first_index = last.index + 1;
        inner.meta.first_offset = None;
        if inner.meta.last_purged < Some(last) {
            inner.meta.last_purged = Some(last);
        }
        inner.meta.epochs = vec![Epoch {
            first_index: last.index,
            leader: last.leader_id,
        }];
        inner.generation += 1;
        inner.unsynced_proposals.clear();
        inner.durable.send_modify(|d| {
            d.last = Some(last);
            d.written = Some(last.index);
        });
        inner.persist_meta()
    }

    /// Takes new segment settings (a topic config change).
    pub(crate) fn set_options(&self, options: crate::storage::LogOptions) {
        use crate::storage::LogStorage;
        self.inner.lock().log.set_options(options);
    }

    /// The first offset with a timestamp at or after `ts`.
    pub(crate) fn offset_for_timestamp(
        &self,
        ts: i64,
    ) -> crate::storage::Result<Option<(i64, i64)>> {
        self.inner.lock().log.offset_for_timestamp(ts)
    }

    /// Flushes and closes the segments for a fast restart. Blocking.
    pub(crate) fn close(&self) -> crate::storage::Result<()> {
        self.inner.lock().log.close()
    }

    /// Whole batches for consumers, up to `upper_bound` (the high watermark).
    pub(crate) fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        upper_bound: i64,
    ) -> crate::storage::Result<Bytes> {
        self.inner.lock().log.read(offset, max_bytes, upper_bound)
    }
}

impl RaftLogReader<PartitionRaft> for SegmentRaftLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry<PartitionRaft>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i + 1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        // The replication streams and the state machine mostly read what was just written.
        if let Some(entries) = self.tail.lock().get(start, end) {
            return Ok(entries);
        }
        self.blocking(move |inner| {
            let Some(last) = inner.last_index() else {
                return Ok(Vec::new());
            };
            let from = start.max(inner.meta.first_index);
            let to = end.unwrap_or(last + 1).min(last + 1);
            (from..to).map(|i| inner.entry(i)).collect()
        })
        .await
    }
}

impl RaftLogStorage<PartitionRaft> for SegmentRaftLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> SResult<LogState<PartitionRaft>> {
        self.blocking(|inner| {
            let last = match inner.last_index() {
                Some(i) => Some(inner.log_id(i)?),
                None => inner.meta.last_purged,
            };
            Ok(LogState {
                last_purged_log_id: inner.meta.last_purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> SResult<()> {
        let vote = *vote;
        self.blocking(move |inner| {
            // Durable before Raft acts on it.
            inner
                .votes
                .save(&vote)
                .map_err(|e| io_err(StorageIOError::write_vote, e))?;
            inner.meta.vote = Some(vote);
            Ok(())
        })
        .await
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<NodeId>>> {
        self.blocking(|inner| Ok(inner.meta.vote)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> SResult<()> {
        *self.committed.lock() = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId<NodeId>>> {
        Ok(*self.committed.lock())
    }

    /// Writes `entries`, and fsyncs them outside the log's lock, coalesced with the appends
    /// that come while an fsync runs (group commit: one fsync covers every append written
    /// before it started, and the next append's write does not wait for it). A follower's
    /// entries (and a leader's own control entries) are acknowledged to Raft once durable:
    /// a follower's answer says they are on its disk. A leader's own proposals are
    /// acknowledged once written, and the fsync goes on while Raft replicates them (the
    /// Raft thesis's 10.2.1: the leader writes in parallel with its followers). The leader
    /// still counts only once durable: its state machine applies an entry (the high
    /// watermark, the producer's answer) only after the fsync ([`Self::await_durable`]),
    /// followers are told of commits only up to it (the transport caps `leader_commit`)
    /// and the commit saved in `raft.json` never passes it.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<PartitionRaft>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry<PartitionRaft>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        use crate::metrics::Stage;
        let entries: Vec<_> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let called = std::time::Instant::now();
        // A leader's own proposals carry a token; a follower's entries do not.
        let first_token = entries.iter().find_map(|e| match &e.payload {
            EntryPayload::Normal(Payload(_, token)) if *token != 0 => Some(*token),
            _ => None,
        });
        let leader = first_token.is_some();
        if let Some(at) = first_token.and_then(|t| self.proposals.proposed_at(t)) {
            self.stages
                .observe(Stage::LeaderQueue, called.saturating_duration_since(at));
        }
        let stages = self.stages.clone();
        let proposals = self.proposals.clone();
        let inner = self.inner.clone();
        // Told once the entries are written.
        let (written_tx, written_rx) = tokio::sync::oneshot::channel::<SResult<()>>();
        let task = tokio::task::spawn_blocking(move || {
            let mut guard = inner.lock();
            let started = std::time::Instant::now();
            let (write, fsync) = if leader {
                stages.observe(Stage::LeaderAppendHop, started - called);
                (Stage::LeaderWrite, Stage::LeaderFsync)
            } else {
                (Stage::FollowerWrite, Stage::FollowerFsync)
            };
            // After a failed fsync nothing more is written (what the kernel dropped cannot
            // be told apart from what it kept); the group stops on the error.
            let failed = guard.durable.borrow().failed.clone();
            if let Some(e) = failed {
                let _ = written_tx.send(Err(io_err(StorageIOError::write_logs, e)));
                return;
            }
            let appended = match guard.append_all(entries) {
                Ok(a) => a,
                Err(e) => {
                    let _ = written_tx.send(Err(e));
                    return;
                }
            };
            stages.observe(write, started.elapsed());
            guard.durable.send_modify(|d| d.written = Some(last.index));
            guard.unsynced_proposals.extend(appended);
            let _ = written_tx.send(Ok(()));
            if std::mem::replace(&mut guard.syncing, true) {
                // The append whose fsync is running syncs these next, once it is done.
                return;
            }
            // This append syncs until everything written is durable: its own entries
            // first, then whatever was written meanwhile.
            sync_until_durable(guard, &inner, &proposals, &stages, fsync);
        });
        let written = match written_rx.await {
            Ok(r) => r,
            // The task ended without a word: it panicked.
            Err(_) => Err(io_err(
                StorageIOError::write_logs,
                match task.await {
                    Err(e) => format!("storage task failed: {e}"),
                    Ok(()) => "storage task ended without an answer".to_string(),
                },
            )),
        };
        let result = match written {
            // A leader's proposals: acknowledged once written (see above).
            Ok(()) if leader => Ok(()),
            // Anything else once durable here, by whichever append's fsync covers it.
            Ok(()) => self.await_durable_entry(last.index).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        self.blocking(move |inner| {
            let Some(last) = inner.last_index() else {
                return Ok(());
            };
            if log_id.index > last {
                return Ok(());
            }
            let keep = log_id.index.saturating_sub(inner.meta.first_index) as usize;
            if let Some(&offset) = inner.offsets.get(keep) {
                // The cut is durable before raft.json forgets the control entries past it:
                // a batch it removed must not come back at the index of one of them.
                inner
                    .log
                    .truncate_suffix(offset)
                    .and_then(|()| inner.log.flush())
                    .map_err(|e| io_err(StorageIOError::write_logs, e))?;
                crate::storage::sync_dir(&inner.dir)
                    .map_err(|e| io_err(StorageIOError::write_logs, e))?;
                inner.offsets.truncate(keep);
                // Only now: a failed cut leaves the entries in the log, and in the tail.
                inner.tail.lock().truncate_from(log_id.index);
                // A running fsync must not report the cut entries durable, nor answer
                // their proposals; what is below the cut was fsynced with the cut.
                inner.generation += 1;
                inner
                    .unsynced_proposals
                    .retain(|(_, at)| at.base_offset < offset);
            }
            let kept = inner.last_log_id();
            inner.durable.send_modify(|d| {
                if d.last.is_some_and(|l| l.index >= log_id.index) {
                    d.last = kept;
                }
                d.written = kept.map(|l| l.index);
            });
            inner.meta.controls.retain(|c| c.index < log_id.index);
            if inner.offsets.is_empty() {
                inner.meta.first_offset = None;
            }
            inner.meta.epochs.retain(|e| e.first_index < log_id.index);
            inner
                .persist_meta()
                .map_err(|e| io_err(StorageIOError::write_logs, e))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        self.blocking(move |inner| {
            let drop = (log_id.index + 1).saturating_sub(inner.meta.first_index) as usize;
            let drop = drop.min(inner.offsets.len());
            let next_offset = inner.offsets.get(drop).copied();
            inner.offsets.drain(..drop);
            inner.tail.lock().purge_through(log_id.index);
            inner.meta.first_index = inner.meta.first_index.max(log_id.index + 1);
            inner.meta.first_offset = inner.offsets.first().copied();
            inner.meta.controls.retain(|c| c.index > log_id.index);
            inner.meta.last_purged = Some(log_id);
            // Keep the run that covers the first remaining entry (or the purged id).
            let keep_from = inner
                .meta
                .epochs
                .partition_point(|e| e.first_index <= log_id.index)
                .saturating_sub(1);
            inner.meta.epochs.drain(..keep_from);
            if inner.meta.epochs.is_empty() {
                inner.meta.epochs.push(Epoch {
                    first_index: log_id.index,
                    leader: log_id.leader_id,
                });
            }
            inner
                .persist_meta()
                .map_err(|e| io_err(StorageIOError::write_logs, e))?;
            // Whole segments below the first kept entry go; a partial one stays until it is.
            let below = next_offset.unwrap_or_else(|| inner.log.offsets().log_end);
            inner
                .log
                .delete_segments_before(below)
                .map_err(|e| io_err(StorageIOError::write_logs, e))
        })
        .await
    }
}

/// Fsyncs a log until everything written to it is reported durable: what to sync is taken
/// under the lock, synced outside it (appends go on meanwhile), and reported under it.
/// Called with the lock held by the append that set `syncing`; clears it when done.
fn sync_until_durable<'a>(
    mut guard: parking_lot::MutexGuard<'a, Inner>,
    inner: &'a Mutex<Inner>,
    proposals: &Proposals,
    stages: &crate::metrics::Stages,
    fsync: crate::metrics::Stage,
) {
    use crate::storage::LogStorage;
    loop {
        let target = guard.log.flush_target();
        let upto = guard.last_log_id();
        let generation = guard.generation;
        let answered = std::mem::take(&mut guard.unsynced_proposals);
        drop(guard);
        let started = std::time::Instant::now();
        let synced = target.sync();
        stages.observe(fsync, started.elapsed());
        guard = inner.lock();
        if let Err(e) = synced {
            let e = io_err(StorageIOError::write_logs, e);
            guard
                .durable
                .send_modify(|d| d.failed = Some(e.to_string()));
            guard.syncing = false;
            return;
        }
        if guard.generation == generation {
            guard.log.mark_flushed(target.end_offset);
            guard.durable.send_modify(|d| {
                if d.last.map(|l| l.index) < upto.map(|l| l.index) {
                    d.last = upto;
                }
            });
            // acks=1 answers here: durable in the leader's log.
            for (token, at) in answered {
                proposals.advance(token, Progress::Appended(at));
            }
        }
        let last = guard.last_log_id().map(|l| l.index);
        if guard.durable.borrow().last.map(|l| l.index) >= last {
            guard.syncing = false;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader};
    use sluice_proto::RecordBatchBuilder;

    use std::time::Duration;

    use super::*;
    use crate::storage::LogOptions;

    fn batch(n: usize) -> Payload {
        let mut b = RecordBatchBuilder::new(Default::default());
        for i in 0..n {
            b.append(i as i64, None, b"value", &[]);
        }
        Payload::batch(b.build())
    }

    fn entry(term: u64, index: u64, payload: EntryPayload<PartitionRaft>) -> Entry<PartitionRaft> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload,
        }
    }

    /// This leader's proposal of `records` records at `index` (term 1), and its progress.
    fn proposal(
        log: &SegmentRaftLog,
        index: u64,
        records: usize,
    ) -> (Entry<PartitionRaft>, watch::Receiver<Progress>) {
        let (token, progress) = log.proposals().register();
        let Payload(bytes, _) = batch(records);
        let e = entry(1, index, EntryPayload::Normal(Payload(bytes, token)));
        (e, progress)
    }

    fn open(dir: &Path) -> SegmentRaftLog {
        let options = LogOptions {
            segment_bytes: 2048,
            segment_ms: i64::MAX,
            index_interval_bytes: 256,
        };
        SegmentRaftLog::open(
            dir,
            SegmentLog::open(dir, options, 0).unwrap(),
            TailBudget::new(1 << 20),
        )
        .unwrap()
    }

    /// A leader's own proposal is answered to Raft once written and reported durable
    /// (and to acks=1) after its fsync; what is applied waits for that, and the commit
    /// saved in raft.json never passes it (after a power loss the log could end before).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leaders_commit_never_passes_what_is_on_its_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        let (token, mut progress) = log.proposals().register();
        let Payload(bytes, _) = batch(3);
        let mut entries = vec![entry(1, 0, EntryPayload::Blank)];
        entries.push(entry(1, 1, EntryPayload::Normal(Payload(bytes, token))));
        log.blocking_append(entries).await.unwrap();
        log.await_durable(1).await.unwrap();
        assert_eq!(log.durable().borrow().last.map(|l| l.index), Some(1));
        let appended = progress
            .wait_for(|p| matches!(p, Progress::Appended(_)))
            .await
            .unwrap()
            .clone();
        assert!(matches!(appended, Progress::Appended(a) if a.base_offset == 0));

        // Entry 2 written, its fsync not done yet (as while another append's fsync runs).
        log.inner.lock().syncing = true;
        let (e, _) = proposal(&log, 2, 1);
        log.blocking_append(vec![e]).await.unwrap();
        assert_eq!(log.durable().borrow().last.map(|l| l.index), Some(1));
        let waiting = {
            let log = log.clone();
            tokio::spawn(async move { log.await_durable(2).await })
        };
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "applied before it was on disk");
        // Raft commits 2 (a follower holds it); raft.json is written meanwhile.
        log.save_committed(Some(log_id(1, 2))).await.unwrap();
        log.purge(log_id(1, 0)).await.unwrap();
        end_fsync(&log).await;
        waiting.await.unwrap().unwrap();
        drop(log);
        let mut log = open(dir.path());
        assert_eq!(
            log.read_committed().await.unwrap(),
            Some(log_id(1, 1)),
            "saved past the fsync"
        );
        // A failed fsync fails what waits for it, rather than apply what is not on disk,
        // and the log takes no more writes.
        log.inner.lock().syncing = true;
        let (e, _) = proposal(&log, 3, 1);
        log.blocking_append(vec![e]).await.unwrap();
        log.durable
            .send_modify(|d| d.failed = Some("fsync: I/O error".into()));
        let e = log.await_durable(3).await.unwrap_err();
        assert!(e.to_string().contains("I/O error"), "{e}");
        let e = log
            .blocking_append(vec![entry(1, 4, EntryPayload::Normal(batch(1)))])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("I/O error"), "{e}");
    }

    /// The fsync the test holds in flight (`syncing` set by hand) ends: its append syncs
    /// whatever was written meanwhile, as [`sync_until_durable`] does after its own fsync.
    async fn end_fsync(log: &SegmentRaftLog) {
        let inner = log.inner.clone();
        let proposals = log.proposals();
        let stages = log.stages().clone();
        tokio::task::spawn_blocking(move || {
            let guard = inner.lock();
            sync_until_durable(
                guard,
                &inner,
                &proposals,
                &stages,
                crate::metrics::Stage::LeaderFsync,
            )
        })
        .await
        .unwrap();
    }

    /// Group commit: while an fsync runs, a leader's next proposals are written and
    /// acknowledged to Raft without waiting for it, and nothing is reported durable (nor
    /// answered to acks=1) until an fsync that started after their write has ended; a
    /// follower's append is acknowledged only then. Entries cut meanwhile (a deposed
    /// leader's) are never reported: their proposals are not answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_during_an_fsync_are_synced_together_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.blocking_append(vec![entry(1, 0, EntryPayload::Blank)])
            .await
            .unwrap();
        assert_eq!(log.durable().borrow().last.map(|l| l.index), Some(0));
        // As while an append's fsync runs outside the lock.
        log.inner.lock().syncing = true;
        let mut waiting = Vec::new();
        for index in 1..=3 {
            let (e, progress) = proposal(&log, index, 2);
            // Answered once written: the fsync in flight does not hold it.
            tokio::time::timeout(Duration::from_secs(10), log.blocking_append(vec![e]))
                .await
                .expect("a leader's append waited for an fsync in flight")
                .unwrap();
            waiting.push(progress);
        }
        let follower = {
            let mut log = log.clone();
            tokio::spawn(async move {
                log.blocking_append(vec![entry(1, 4, EntryPayload::Normal(batch(1)))])
                    .await
            })
        };
        let written = log.durable();
        tokio::time::timeout(
            Duration::from_secs(10),
            written.clone().wait_for(|d| d.written == Some(4)),
        )
        .await
        .unwrap()
        .unwrap();
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(
            !follower.is_finished(),
            "a follower answered before its fsync"
        );
        assert_eq!(log.durable().borrow().last.map(|l| l.index), Some(0));
        assert!(
            waiting
                .iter()
                .all(|p| matches!(*p.borrow(), Progress::Proposed))
        );

        // The fsync in flight ends: its append syncs what was written meanwhile, in one go.
        end_fsync(&log).await;
        follower.await.unwrap().unwrap();
        assert_eq!(log.durable().borrow().last.map(|l| l.index), Some(4));
        assert!(!log.inner.lock().syncing);
        for (i, p) in waiting.iter().enumerate() {
            assert!(
                matches!(*p.borrow(), Progress::Appended(a) if a.base_offset == 2 * i as i64),
                "proposal {i}: {:?}",
                p.borrow()
            );
        }

        // A deposed leader: two proposals written, an fsync in flight, then a new leader's
        // entries cut them. They are never answered as appended; the new entry is synced.
        log.inner.lock().syncing = true;
        let mut cut = Vec::new();
        for index in 5..=6 {
            let (e, progress) = proposal(&log, index, 1);
            log.blocking_append(vec![e]).await.unwrap();
            cut.push(progress);
        }
        log.truncate(log_id(1, 5)).await.unwrap();
        let follower = {
            let mut log = log.clone();
            tokio::spawn(async move {
                log.blocking_append(vec![Entry {
                    log_id: LogId::new(CommittedLeaderId::new(2, 2), 5),
                    payload: EntryPayload::Normal(batch(1)),
                }])
                .await
            })
        };
        end_fsync(&log).await;
        follower.await.unwrap().unwrap();
        let last = log.durable().borrow().last.unwrap();
        assert_eq!((last.index, last.leader_id.term), (5, 2));
        for p in &cut {
            assert!(
                matches!(*p.borrow(), Progress::Proposed),
                "a cut proposal was answered: {:?}",
                p.borrow()
            );
        }
    }

    /// Applying entries this log never wrote (openraft's storage suite does) waits for
    /// nothing.
    #[tokio::test]
    async fn entries_not_written_here_wait_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        log.await_durable(7).await.unwrap();
    }

    fn log_id(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// The vote survives a restart from its own file; a log written before that file
    /// existed keeps the vote raft.json holds.
    #[tokio::test]
    async fn the_vote_survives_a_restart_and_an_older_log_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.save_vote(&Vote::new(3, 2)).await.unwrap();
        log.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
        drop(log);
        let mut log = open(dir.path());
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(4, 1))
        );
        // As a log from before the vote file: the vote only in raft.json.
        log.blocking(|inner| {
            inner
                .persist_meta()
                .map_err(|e| io_err(StorageIOError::write_vote, e))
        })
        .await
        .unwrap();
        drop(log);
        std::fs::remove_file(dir.path().join(super::super::vote_file::VOTE_FILE)).unwrap();
        let mut log = open(dir.path());
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(4, 1))
        );
    }

    /// Record batches are the entries: offsets follow the log prefix, control entries take
    /// none, and a restart finds every entry at its index.
    #[tokio::test]
    async fn batches_are_entries_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        let mut entries = vec![entry(1, 0, EntryPayload::Blank)];
        for i in 1..=20 {
            entries.push(entry(
                if i < 10 { 1 } else { 2 },
                i,
                EntryPayload::Normal(batch(3)),
            ));
        }
        log.blocking_append(entries).await.unwrap();
        let got = log.try_get_log_entries(5..8).await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        let EntryPayload::Normal(Payload(b, _)) = &got[0].payload else {
            panic!("normal entry expected")
        };
        // The blank entry took no offset; entry i holds offsets 3(i-1) ..
        assert_eq!(BatchHeader::parse(b).unwrap().base_offset, 12);
        assert_eq!(got[0].log_id.leader_id.term, 1);
        let last = log.get_log_state().await.unwrap().last_log_id.unwrap();
        assert_eq!((last.index, last.leader_id.term), (20, 2));

        // A conflicting suffix is cut from the segments too.
        log.truncate(LogId::new(CommittedLeaderId::new(2, 1), 15))
            .await
            .unwrap();
        log.blocking_append([entry(3, 15, EntryPayload::Normal(batch(1)))])
            .await
            .unwrap();
        drop(log);

        let mut log = open(dir.path());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(
            state.last_log_id,
            Some(LogId::new(CommittedLeaderId::new(3, 1), 15))
        );
        let all = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(all.len(), 16);
        assert_eq!(all[14].log_id.leader_id.term, 2);
        let EntryPayload::Normal(Payload(b, _)) = &all[15].payload else {
            panic!("normal entry expected")
        };
        assert_eq!(BatchHeader::parse(b).unwrap().base_offset, 14 * 3);

        // Purging drops whole segments below the first kept entry.
        log.purge(LogId::new(CommittedLeaderId::new(2, 1), 12))
            .await
            .unwrap();
        let rest = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(rest.first().unwrap().log_id.index, 13);
        drop(log);
        let mut log = open(dir.path());
        assert_eq!(log.try_get_log_entries(0..).await.unwrap().len(), 3);
    }

    /// A partition's first record is at offset 0 and its log end counts records only,
    /// however many elections and membership entries came before and between them.
    #[tokio::test]
    async fn control_entries_take_no_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        let membership = Membership::new(vec![[1, 2, 3].into_iter().collect()], None);
        log.blocking_append([
            entry(0, 0, EntryPayload::Membership(membership.clone())),
            entry(1, 1, EntryPayload::Blank),
            entry(1, 2, EntryPayload::Normal(batch(2))),
            entry(2, 3, EntryPayload::Blank),
            entry(3, 4, EntryPayload::Blank),
            entry(3, 5, EntryPayload::Normal(batch(3))),
            entry(3, 6, EntryPayload::Blank),
        ])
        .await
        .unwrap();
        let bases = |entries: &[Entry<PartitionRaft>]| {
            entries
                .iter()
                .map(|e| match &e.payload {
                    EntryPayload::Normal(Payload(b, _)) => {
                        format!(
                            "{}@{}",
                            e.log_id.index,
                            BatchHeader::parse(b).unwrap().base_offset
                        )
                    }
                    EntryPayload::Blank => format!("{}:blank", e.log_id.index),
                    EntryPayload::Membership(_) => format!("{}:membership", e.log_id.index),
                })
                .collect::<Vec<_>>()
        };
        let want = [
            "0:membership",
            "1:blank",
            "2@0",
            "3:blank",
            "4:blank",
            "5@2",
            "6:blank",
        ];
        assert_eq!(bases(&log.try_get_log_entries(0..).await.unwrap()), want);
        assert_eq!(log.offsets().log_end, 5);
        assert_eq!(log.next_offset_after(2), Some(2));
        assert_eq!(log.next_offset_after(6), Some(5));
        drop(log);
        // The same after a restart (from the segments), and the membership comes back whole.
        let mut log = open(dir.path());
        let all = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(bases(&all), want);
        assert_eq!(all[0].payload, EntryPayload::Membership(membership));
        assert_eq!(all[4].log_id.leader_id.term, 3);
        // Cut back to entry 4 and continue under a new leader: the next batch is at 2 again.
        log.truncate(LogId::new(CommittedLeaderId::new(3, 1), 5))
            .await
            .unwrap();
        log.blocking_append([
            entry(4, 5, EntryPayload::Blank),
            entry(4, 6, EntryPayload::Normal(batch(1))),
        ])
        .await
        .unwrap();
        drop(log);
        let mut log = open(dir.path());
        assert_eq!(
            bases(&log.try_get_log_entries(3..).await.unwrap()),
            ["3:blank", "4:blank", "5:blank", "6@2"]
        );
        // Purging through a control entry keeps the ones after it.
        log.purge(LogId::new(CommittedLeaderId::new(3, 1), 4))
            .await
            .unwrap();
        drop(log);
        let mut log = open(dir.path());
        assert_eq!(
            bases(&log.try_get_log_entries(0..).await.unwrap()),
            ["5:blank", "6@2"]
        );
    }

    /// A crash can lose batches that were written but not yet fsynced, while `raft.json`
    /// already holds a control entry after them. A restart drops that entry (it was never
    /// acknowledged) instead of giving a later batch its index, and the log continues.
    #[tokio::test]
    async fn a_control_entry_after_lost_batches_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.blocking_append([
            entry(1, 0, EntryPayload::Blank),
            entry(1, 1, EntryPayload::Normal(batch(2))),
            entry(1, 2, EntryPayload::Normal(batch(2))),
            entry(2, 3, EntryPayload::Blank),
        ])
        .await
        .unwrap();
        drop(log);
        // As a crash that kept raft.json but lost the second batch.
        let options = LogOptions {
            segment_bytes: 2048,
            segment_ms: i64::MAX,
            index_interval_bytes: 256,
        };
        let mut segments = SegmentLog::open(dir.path(), options, 0).unwrap();
        segments.truncate_suffix(2).unwrap();
        segments.flush().unwrap();
        drop(segments);
        let mut log = open(dir.path());
        let last = log.get_log_state().await.unwrap().last_log_id.unwrap();
        assert_eq!((last.index, last.leader_id.term), (1, 1));
        log.blocking_append([
            entry(3, 2, EntryPayload::Blank),
            entry(3, 3, EntryPayload::Normal(batch(1))),
        ])
        .await
        .unwrap();
        drop(log);
        let mut log = open(dir.path());
        let all = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[2].payload, EntryPayload::Blank);
        assert_eq!(all[2].log_id.leader_id.term, 3);
        let EntryPayload::Normal(Payload(b, _)) = &all[3].payload else {
            panic!("normal entry expected")
        };
        assert_eq!(BatchHeader::parse(b).unwrap().base_offset, 2);
    }

    /// A follower refuses a leader's batch that the leader wrote at another offset than
    /// the one the follower's log would give it (replicas that disagree on offsets).
    #[tokio::test]
    async fn a_batch_from_a_leader_must_land_at_the_leaders_offset() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut leader = open(a.path());
        leader
            .blocking_append([
                entry(1, 0, EntryPayload::Blank),
                entry(1, 1, EntryPayload::Normal(batch(2))),
                entry(1, 2, EntryPayload::Normal(batch(3))),
            ])
            .await
            .unwrap();
        let written = leader.try_get_log_entries(0..3).await.unwrap();
        // The same entries on a follower: same offsets.
        let mut follower = open(b.path());
        follower.blocking_append(written.clone()).await.unwrap();
        assert_eq!(follower.offsets().log_end, 5);
        // A follower whose log says otherwise (here: a batch the leader does not have).
        let c = tempfile::tempdir().unwrap();
        let mut odd = open(c.path());
        odd.blocking_append([
            entry(1, 0, EntryPayload::Blank),
            entry(1, 1, EntryPayload::Normal(batch(1))),
        ])
        .await
        .unwrap();
        let err = odd.blocking_append([written[2].clone()]).await.unwrap_err();
        assert!(err.to_string().contains("disagree on offsets"), "{err}");
    }

    /// A log written when control entries were control batches in the segments (one
    /// offset each) still opens and reads them, and new ones take no offset.
    #[tokio::test]
    async fn control_batches_of_older_logs_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        {
            let mut inner = log.inner.lock();
            let mut blank = batch::control_batch(BLANK_KEY, b"");
            let at = inner.log.append(&mut blank, 1, 0).unwrap();
            let Payload(data, _) = batch(2);
            let mut data = BytesMut::from(&data[..]);
            let next = inner.log.append(&mut data, 1, 0).unwrap();
            inner.offsets = vec![at.base_offset, next.base_offset];
            inner.meta.first_index = 0;
            inner.meta.first_offset = Some(at.base_offset);
            inner.meta.epochs = vec![Epoch {
                first_index: 0,
                leader: CommittedLeaderId::new(1, 1),
            }];
            inner.persist_meta().unwrap();
            inner.log.flush().unwrap();
        }
        drop(log);
        let mut log = open(dir.path());
        log.blocking_append([
            entry(2, 2, EntryPayload::Blank),
            entry(2, 3, EntryPayload::Normal(batch(1))),
        ])
        .await
        .unwrap();
        drop(log);
        let mut log = open(dir.path());
        let all = log.try_get_log_entries(0..).await.unwrap();
        let base = |e: &Entry<PartitionRaft>| match &e.payload {
            EntryPayload::Normal(Payload(b, _)) => BatchHeader::parse(b).unwrap().base_offset,
            _ => panic!("normal entry expected"),
        };
        // The old blank goes out as the control batch it is (it holds offset 0); the new
        // one is a control entry that holds none.
        let EntryPayload::Normal(Payload(old_blank, _)) = &all[0].payload else {
            panic!("the old blank is served as its batch")
        };
        assert!(BatchHeader::parse(old_blank).unwrap().is_control());
        assert_eq!(all[2].payload, EntryPayload::Blank);
        assert_eq!((base(&all[0]), base(&all[1]), base(&all[3])), (0, 1, 3));
        // A follower given these entries (one that lagged behind an upgrade) writes them
        // at the same offsets, the old blank taking its offset again.
        let other = tempfile::tempdir().unwrap();
        let mut follower = open(other.path());
        follower.blocking_append(all.clone()).await.unwrap();
        assert_eq!(follower.offsets().log_end, log.offsets().log_end);
        assert_eq!(follower.try_get_log_entries(0..).await.unwrap(), all);
    }

    /// Reads served from memory are the entries a read from the segments returns: same
    /// log ids, same bytes with the offsets filled in, control entries decoded alike.
    #[tokio::test]
    async fn the_memory_tail_answers_as_the_segments_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        let mut entries = vec![entry(1, 0, EntryPayload::Blank)];
        for i in 1..=12 {
            entries.push(entry(1, i, EntryPayload::Normal(batch(2))));
        }
        log.blocking_append(entries).await.unwrap();
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 10))
            .await
            .unwrap();
        log.blocking_append([
            entry(2, 10, EntryPayload::Blank),
            entry(2, 11, EntryPayload::Normal(batch(4))),
        ])
        .await
        .unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 2))
            .await
            .unwrap();
        // Entries 3..=11 are left, all of them in the tail.
        assert_eq!(
            log.tail.lock().get(3, None).map(|e| e.len()),
            Some(9),
            "served from memory"
        );
        let from_memory = log.try_get_log_entries(3..).await.unwrap();
        let middle = log.try_get_log_entries(4..11).await.unwrap();
        drop(log);
        // Reopened, the tail is empty: everything comes from the segments.
        let mut log = open(dir.path());
        assert_eq!(log.tail.lock().get(3, None), None);
        let from_disk = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(from_disk.len(), 9, "entries 3..=11");
        assert_eq!(from_memory, from_disk);
        assert_eq!(middle, log.try_get_log_entries(4..11).await.unwrap());
    }
}
