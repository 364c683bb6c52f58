//! Partition replicas under Raft: one openraft group per partition of a replicated topic,
//! whose log is the partition's segment log (one batch per entry, written once). Groups talk
//! over [`crate::raft`], sharing one connection per peer broker.
//!
//! # Layout
//! - [`types`]: the partition groups' Raft type config.
//! - [`group`]: [`group::Replica`], a running replica: produce, read, in-sync set.
//! - [`log_store`]: [`log_store::SegmentRaftLog`], the Raft log on segment files.
//! - [`state_machine`]: [`state_machine::ReplicaState`], applied index and high watermark.
//! - [`tail`]: the newest entries of each log in memory, within a broker-wide budget.

pub(crate) mod group;
pub(crate) mod log_store;
pub(crate) mod state_machine;
pub(crate) mod tail;
pub(crate) mod types;
pub(crate) mod vote_file;

#[cfg(test)]
mod tests {
    use openraft::StorageError;
    use openraft::testing::{StoreBuilder, Suite};

    use super::log_store::SegmentRaftLog;
    use super::state_machine::ReplicaState;
    use super::tail::TailBudget;
    use super::types::PartitionRaft;
    use crate::storage::{LogOptions, SegmentLog};

    /// Builds stores whose in-memory tail has `0` bytes (every read from the segments) or
    /// more.
    struct Builder(usize);

    impl StoreBuilder<PartitionRaft, SegmentRaftLog, ReplicaState, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, SegmentRaftLog, ReplicaState), StorageError<u64>> {
            let dir = tempfile::tempdir().expect("temp dir");
            let options = LogOptions {
                segment_bytes: 4096,
                segment_ms: i64::MAX,
                index_interval_bytes: 256,
            };
            let log = SegmentLog::open(dir.path(), options, 0).expect("segment log");
            let raft_log =
                SegmentRaftLog::open(dir.path(), log, TailBudget::new(self.0)).expect("raft log");
            let state = ReplicaState::open(dir.path())
                .expect("state")
                .with_log(raft_log.clone());
            Ok((dir, raft_log, state))
        }
    }

    /// openraft's storage conformance suite, on segment files.
    #[test]
    fn segment_raft_log_passes_openraft_storage_suite() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("openraft=info")
            .try_init();
        Suite::test_all(Builder(0)).unwrap();
    }

    /// The same, with reads served from the in-memory tail wherever it holds them.
    #[test]
    fn segment_raft_log_with_its_memory_tail_passes_openraft_storage_suite() {
        Suite::test_all(Builder(1 << 20)).unwrap();
    }
}
