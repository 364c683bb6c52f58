//! The partition Raft groups this broker is a member of (by group id, for the inter-broker
//! service to route calls to), and the ones whose leader asked this follower to rest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::replica::log_store::SegmentRaftLog;

type PartitionRaftHandle = openraft::Raft<crate::replica::types::PartitionRaft>;

/// The partition groups this broker is a member of, by group id, with their logs.
#[derive(Clone, Default)]
pub(crate) struct Groups(Arc<GroupsInner>);

#[derive(Default)]
struct GroupsInner {
    map: parking_lot::RwLock<HashMap<u64, (PartitionRaftHandle, SegmentRaftLog)>>,
    /// Told of every group added.
    added: tokio::sync::Notify,
}

/// How long a Raft call for a group this broker has not started yet waits for it. Every
/// replica starts a new partition's group as the controller's record of it arrives, so the
/// first votes and appends often reach a broker a moment before it has. Shorter than the
/// vote timeout (`election_timeout_min`), so the candidate gets an answer, not a timeout.
pub(crate) const GROUP_START_WAIT: Duration = Duration::from_millis(200);

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Groups({})", self.0.map.read().len())
    }
}

impl Groups {
    pub(crate) fn get(&self, group: u64) -> Option<PartitionRaftHandle> {
        self.0.map.read().get(&group).map(|(raft, _)| raft.clone())
    }

    /// The group, waiting up to `wait` for it to start.
    pub(crate) async fn get_or_wait(
        &self,
        group: u64,
        wait: Duration,
    ) -> Option<PartitionRaftHandle> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let added = self.0.added.notified();
            if let Some(raft) = self.get(group) {
                return Some(raft);
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return self.get(group);
            }
        }
    }

    pub(crate) fn log(&self, group: u64) -> Option<SegmentRaftLog> {
        self.0.map.read().get(&group).map(|(_, log)| log.clone())
    }

    pub(crate) fn insert(&self, group: u64, raft: PartitionRaftHandle, log: SegmentRaftLog) {
        self.0.map.write().insert(group, (raft, log));
        self.0.added.notify_waiters();
    }

    pub(crate) fn remove(&self, group: u64) {
        self.0.map.write().remove(&group);
    }

    pub(crate) fn all(&self) -> Vec<(u64, PartitionRaftHandle)> {
        self.0
            .map
            .read()
            .iter()
            .map(|(g, (raft, _))| (*g, raft.clone()))
            .collect()
    }
}

/// Partition groups whose leader asked this (follower) replica to stop its election timer,
/// with that leader's node id.
#[derive(Debug, Clone, Default)]
pub(crate) struct Quiesced(Arc<Mutex<HashMap<u64, u64>>>);

impl Quiesced {
    pub(crate) fn insert(&self, group: u64, leader: u64) {
        self.0.lock().insert(group, leader);
    }

    /// True if the group was quiesced (it is not any more).
    pub(crate) fn remove(&self, group: u64) -> bool {
        self.0.lock().remove(&group).is_some()
    }

    pub(crate) fn snapshot(&self) -> Vec<(u64, u64)> {
        self.0.lock().iter().map(|(g, l)| (*g, *l)).collect()
    }
}
