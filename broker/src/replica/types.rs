//! The partition Raft groups' type configuration.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Key of the control batch that lets every replica delete its records below an offset
/// (Kafka's DeleteRecords), its value the offset in decimal. Written by brokers only.
pub(crate) const DELETE_BEFORE_KEY: &[u8] = b"sluice:delete-before";

openraft::declare_raft_types!(
    /// One Raft group per partition; one entry is one record batch.
    pub(crate) PartitionRaft:
        D = Payload,
        R = Appended,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<PartitionRaft>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// An encoded record batch (base offset assigned when it is appended to a replica's log),
/// and, on the leader that proposed it, the token of the request waiting for it (never sent
/// or stored: 0 elsewhere).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Payload(pub Bytes, #[serde(skip)] pub u64);

impl Payload {
    /// A batch nobody waits on by token.
    pub(crate) fn batch(bytes: Bytes) -> Self {
        Payload(bytes, 0)
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

/// How far a batch proposed by this leader got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Progress {
    Proposed,
    /// Durable in the leader's log (what `acks=1` waits for).
    Appended(Appended),
    /// Committed by a quorum and applied, at Raft index `index`.
    Committed {
        at: Appended,
        index: u64,
    },
    /// Not committed by this leader; it may still be committed by the next one.
    Failed {
        not_leader: bool,
        message: String,
    },
}

impl Progress {
    fn rank(&self) -> u8 {
        match self {
            Progress::Proposed => 0,
            Progress::Appended(_) => 1,
            Progress::Committed { .. } | Progress::Failed { .. } => 2,
        }
    }
}

/// A proposal's progress and when it was proposed.
type Waiting = (watch::Sender<Progress>, std::time::Instant);

/// Batches this leader proposed, by token, for the log store to report their durable append
/// and the proposer to report their commit. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub(crate) struct Proposals {
    waiting: Arc<Mutex<HashMap<u64, Waiting>>>,
    next: Arc<AtomicU64>,
}

impl Proposals {
    /// A token for a new proposal, and where its progress shows.
    pub(crate) fn register(&self) -> (u64, watch::Receiver<Progress>) {
        let token = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = watch::channel(Progress::Proposed);
        self.waiting
            .lock()
            .insert(token, (tx, std::time::Instant::now()));
        (token, rx)
    }

    /// When the proposal `token` was made, while it is in flight.
    pub(crate) fn proposed_at(&self, token: u64) -> Option<std::time::Instant> {
        self.waiting.lock().get(&token).map(|(_, at)| *at)
    }

    /// Moves a proposal forward (never back); the last step removes it.
    pub(crate) fn advance(&self, token: u64, progress: Progress) {
        let mut waiting = self.waiting.lock();
        let done = progress.rank() == 2;
        if let Some((tx, _)) = waiting.get(&token) {
            tx.send_if_modified(|p| {
                let forward = progress.rank() > p.rank();
                if forward {
                    *p = progress;
                }
                forward
            });
        }
        if done {
            waiting.remove(&token);
        }
    }
}

/// Where a committed batch landed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
}
