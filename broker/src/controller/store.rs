//! Durable storage of the controller group in sled: the Raft log, the vote, and the state
//! machine (cluster metadata), all in the broker's one sled database.
//!
//! sled suits this group: entries are small and few, and one `flush` makes a whole append
//! or vote durable before it is acknowledged, as Raft requires.

// openraft's StorageError is large by design; it is returned on the rare error path only.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::types::{ClusterState, MetaRaft, MetaResponse};

type NodeId = u64;
type Node = openraft::BasicNode;
type SResult<T> = Result<T, StorageError<NodeId>>;

fn err<E: std::error::Error + 'static>(
    f: fn(AnyError) -> StorageIOError<NodeId>,
) -> impl Fn(E) -> StorageError<NodeId> {
    move |e| StorageError::from(f(AnyError::new(&e)))
}

fn write_logs(e: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::write_logs(e)
}
fn read_logs(e: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::read_logs(e)
}
fn write_vote(e: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::write_vote(e)
}
fn read_vote(e: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::read_vote(e)
}
fn write_sm(e: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::write_state_machine(e)
}
fn read_sm(e: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::read_state_machine(e)
}

fn get_json<T: for<'de> Deserialize<'de>>(
    tree: &sled::Tree,
    key: &str,
    f: fn(AnyError) -> StorageIOError<NodeId>,
) -> SResult<Option<T>> {
    match tree.get(key).map_err(err(f))? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v).map(Some).map_err(err(f)),
    }
}

fn to_json<T: Serialize>(v: &T, f: fn(AnyError) -> StorageIOError<NodeId>) -> SResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(err(f))
}

/// The Raft log and vote.
#[derive(Debug, Clone)]
pub(crate) struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    pub(crate) fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(LogStore {
            db: db.clone(),
            log: db.open_tree("controller_log")?,
            meta: db.open_tree("controller_meta")?,
        })
    }
}

impl LogStore {
    /// Removes the entries whose keys fall in `range`, in one batch, and flushes.
    async fn remove_durably(&self, range: impl RangeBounds<[u8; 8]>) -> SResult<()> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(range).keys() {
            batch.remove(key.map_err(err(write_logs))?);
        }
        self.log.apply_batch(batch).map_err(err(write_logs))?;
        self.db.flush_async().await.map_err(err(write_logs))?;
        Ok(())
    }
}

impl RaftLogReader<MetaRaft> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry<MetaRaft>>> {
        let start = match range.start_bound() {
            std::ops::Bound::Included(i) => *i,
            std::ops::Bound::Excluded(i) => i + 1,
            std::ops::Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in self.log.range(start.to_be_bytes()..) {
            let (k, v) = item.map_err(err(read_logs))?;
            let index = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| {
                StorageError::from(read_logs(AnyError::error(
                    "controller log key is not 8 bytes",
                )))
            })?);
            if !range.contains(&index) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(err(read_logs))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<MetaRaft> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> SResult<LogState<MetaRaft>> {
        let last_purged: Option<LogId<NodeId>> = get_json(&self.meta, "purged", read_logs)?;
        let last = match self.log.last().map_err(err(read_logs))? {
            Some((_, v)) => Some(
                serde_json::from_slice::<Entry<MetaRaft>>(&v)
                    .map_err(err(read_logs))?
                    .log_id,
            ),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> SResult<()> {
        self.meta
            .insert("vote", to_json(vote, write_vote)?)
            .map_err(err(write_vote))?;
        // Durable before Raft acts on it.
        self.db.flush_async().await.map_err(err(write_vote))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<NodeId>>> {
        get_json(&self.meta, "vote", read_vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> SResult<()> {
        self.meta
            .insert("committed", to_json(&committed, write_logs)?)
            .map_err(err(write_logs))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId<NodeId>>> {
        Ok(get_json::<Option<LogId<NodeId>>>(&self.meta, "committed", read_logs)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<MetaRaft>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry<MetaRaft>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(
                &entry.log_id.index.to_be_bytes(),
                to_json(&entry, write_logs)?,
            );
        }
        self.log.apply_batch(batch).map_err(err(write_logs))?;
        let flushed = self
            .db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(std::io::Error::other);
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        self.remove_durably(log_id.index.to_be_bytes()..).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        self.meta
            .insert("purged", to_json(&log_id, write_logs)?)
            .map_err(err(write_logs))?;
        self.remove_durably(..=log_id.index.to_be_bytes()).await
    }
}

/// What the state machine persists: the metadata and how far it has applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Persisted {
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    state: ClusterState,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Node>,
    data: Vec<u8>,
}

/// The cluster metadata, applied from the log; watchers see every new version.
#[derive(Debug, Clone)]
pub(crate) struct StateMachine {
    tree: sled::Tree,
    current: Persisted,
    watch: Arc<watch::Sender<Arc<ClusterState>>>,
    snapshot_seq: u64,
}

impl StateMachine {
    pub(crate) fn open(db: &sled::Db) -> Result<Self, StorageError<NodeId>> {
        let tree = db.open_tree("controller_state").map_err(err(read_sm))?;
        let current: Persisted = get_json(&tree, "state", read_sm)?.unwrap_or_default();
        let watch = Arc::new(watch::Sender::new(Arc::new(current.state.clone())));
        Ok(StateMachine {
            tree,
            current,
            watch,
            snapshot_seq: 0,
        })
    }

    /// Receives every new version of the metadata.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.watch.subscribe()
    }

    fn persist(&self) -> SResult<()> {
        self.tree
            .insert("state", to_json(&self.current, write_sm)?)
            .map_err(err(write_sm))?;
        Ok(())
    }

    fn publish(&self) {
        self.watch
            .send_replace(Arc::new(self.current.state.clone()));
    }
}

impl RaftSnapshotBuilder<MetaRaft> for StateMachine {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<MetaRaft>> {
        let data = to_json(&self.current.state, read_sm)?;
        self.snapshot_seq += 1;
        let meta = SnapshotMeta {
            last_log_id: self.current.applied,
            last_membership: self.current.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                self.current.applied.map_or(0, |l| l.index),
                self.snapshot_seq
            ),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        self.tree
            .insert("snapshot", to_json(&stored, write_sm)?)
            .map_err(err(write_sm))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<MetaRaft> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> SResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>)> {
        Ok((self.current.applied, self.current.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<MetaResponse>>
    where
        I: IntoIterator<Item = Entry<MetaRaft>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            self.current.applied = Some(entry.log_id);
            out.push(match &entry.payload {
                EntryPayload::Blank => MetaResponse::Ok,
                EntryPayload::Normal(cmd) => self.current.state.apply(cmd),
                EntryPayload::Membership(m) => {
                    self.current.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    MetaResponse::Ok
                }
            });
        }
        self.persist()?;
        // Metadata changes are rare and everything on this broker follows them: make them
        // durable now, so a restart opens the right partitions before the log is replayed.
        self.tree.flush_async().await.map_err(err(write_sm))?;
        self.publish();
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
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> SResult<()> {
        let state: ClusterState =
            serde_json::from_slice(snapshot.get_ref()).map_err(err(write_sm))?;
        self.current = Persisted {
            applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        self.tree
            .insert("snapshot", to_json(&stored, write_sm)?)
            .map_err(err(write_sm))?;
        self.persist()?;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<MetaRaft>>> {
        Ok(
            get_json::<StoredSnapshot>(&self.tree, "snapshot", read_sm)?.map(|s| Snapshot {
                meta: s.meta,
                snapshot: Box::new(Cursor::new(s.data)),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    struct Builder;

    impl StoreBuilder<MetaRaft, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> SResult<(tempfile::TempDir, LogStore, StateMachine)> {
            let dir = tempfile::tempdir().expect("temp dir");
            let db = sled::Config::new().path(dir.path()).open().expect("sled");
            Ok((
                dir,
                LogStore::open(&db).expect("log store"),
                StateMachine::open(&db)?,
            ))
        }
    }

    /// openraft's storage conformance suite.
    #[test]
    fn passes_openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }
}
