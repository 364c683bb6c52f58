//! [`Replica`]: a partition replica in its Raft group. The leader takes produce requests
//! (each batch is one Raft entry) and serves fetches below the high watermark; followers
//! point clients at the leader. The in-sync set and `min.insync.replicas` follow Kafka.
//!
//! This file holds the replica's state, start, reads and reports; its child modules hold
//! the write path (`produce`) and leadership moves (`handover`: quiescing, hand-back,
//! controlled-shutdown hand-off).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Raft, ServerState};
use parking_lot::Mutex;
use sluice_proto::{TopicConfig, acks};
use tokio::sync::watch;

use super::log_store::SegmentRaftLog;
use super::state_machine::ReplicaState;
use super::types::{Appended, PartitionRaft, Payload, Progress, Proposals};
use crate::controller::{Controller, MetaCommand};
use crate::error::{Error, Result};
use crate::live_config::LiveConfig;
use crate::partition::validate_batch;
use crate::producer_state::{BatchId, Latest, ProducerStates, Verdict};
use crate::raft::{Network, PeerChannels};
use crate::storage::{LogOffsets, LogOptions, SegmentLog};

mod handover;
mod membership;
mod produce;

pub(crate) use membership::Moved;

/// How long a new leadership waits to hear its followers before an `acks=all` write is
/// refused for too few in-sync replicas.
const NEW_LEADER_GRACE: Duration = Duration::from_secs(1);

/// How long a leader waits before reporting its leadership to the controller again after
/// a failed attempt (the controller may be electing a leader itself).
const REPORT_RETRY: Duration = Duration::from_millis(200);

/// Uncompressed batches up to this size are validated on the request's task.
const INLINE_VALIDATION_BYTES: usize = 1024 * 1024;

/// Whether validating `batch` is quick enough to do without leaving the async runtime:
/// uncompressed (nothing to decompress), staying so (no `compression.type` to recompress
/// it to) and at most [`INLINE_VALIDATION_BYTES`].
fn validates_quickly(batch: &Bytes, config: &TopicConfig) -> bool {
    use sluice_proto::batch::Compression;
    use sluice_proto::topic::CompressionType;
    let stays = match config.compression_type {
        CompressionType::Producer => true,
        CompressionType::Codec(c) => c == Compression::None,
    };
    stays
        && batch.len() <= INLINE_VALIDATION_BYTES
        && sluice_proto::batch::BatchHeader::parse(batch)
            .and_then(|h| h.compression())
            .is_ok_and(|c| c == Compression::None)
}

/// A leadership (one term) as this replica sees it: when it started here and when each
/// follower was last seen caught up with it.
#[derive(Debug)]
struct Leadership {
    term: u64,
    since: Instant,
    caught_up: BTreeMap<u64, Instant>,
}

/// Most batches in one AppendEntries call.
pub(crate) const MAX_PAYLOAD_ENTRIES: u64 = 8;

/// One write counted in [`Replica::proposing`] while it lives.
struct Counted<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Counted<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How often a write that arrived during a leadership hand-over checks whether it is done.
const HAND_OVER_POLL: Duration = Duration::from_millis(2);

/// Election timeouts a non-preferred replica of a new group waits for the preferred one to
/// campaign before it initializes the group itself.
const INIT_FALLBACK_TIMEOUTS: u32 = 2;

/// Initializes a new group with `members` (this replica campaigns at once); a no-op for a
/// group that already has a vote or log here.
async fn initialize(
    raft: &Raft<PartitionRaft>,
    members: BTreeMap<u64, BasicNode>,
    topic: &str,
    id: i32,
) -> Result<()> {
    // openraft logs an ERROR ("Can not initialize") for a group that already has a vote or
    // a log, which every restart would print for every partition: ask it only when new.
    if raft.is_initialized().await.unwrap_or(false) {
        return Ok(());
    }
    match raft.initialize(members).await {
        Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(Error::Internal(format!(
            "{topic}-{id}: initializing its Raft group: {e}"
        ))),
    }
}

/// Raft timing and in-sync rules of partition groups.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplicaTiming {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Kafka's `replica.lag.time.max.ms`: a follower not caught up for this long leaves the
    /// in-sync set.
    pub lag_time_max: Duration,
    /// Idle idempotent producers are forgotten after this long.
    pub producer_expiration: Duration,
}

impl Default for ReplicaTiming {
    fn default() -> Self {
        ReplicaTiming {
            // openraft 0.9 also uses the heartbeat interval as the AppendEntries timeout, so
            // it must cover a loaded follower's append and fsync.
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(250),
            election_timeout_max: Duration::from_millis(500),
            lag_time_max: Duration::from_secs(10),
            producer_expiration: crate::producer_state::ProducerLimits::default().expiration,
        }
    }
}

/// Stores opened on the blocking pool, before the group starts.
#[derive(Debug)]
pub(crate) struct ReplicaStores {
    log: SegmentRaftLog,
    state: ReplicaState,
    sequence_wait: Duration,
}

impl ReplicaStores {
    /// Opens (recovering if needed) the segment log and Raft state in `dir`. Blocking.
    pub(crate) fn open(
        dir: &Path,
        options: LogOptions,
        producer_limits: crate::producer_state::ProducerLimits,
        tail: crate::replica::tail::TailBudget,
        stages: crate::metrics::Stages,
    ) -> std::io::Result<Self> {
        let segments = SegmentLog::open(dir, options, crate::clock::now_ms())
            .map_err(std::io::Error::other)?;
        let log = SegmentRaftLog::open(dir, segments, tail)?.with_stages(stages);
        let state = ReplicaState::open(dir)?.with_log(log.clone());
        state
            .producers()
            .lock()
            .set_max_producers(producer_limits.max_producers);
        Ok(ReplicaStores {
            log,
            state,
            sequence_wait: producer_limits.sequence_wait,
        })
    }
}

pub(crate) struct Replica {
    pub topic: Arc<str>,
    pub topic_id: String,
    pub id: i32,
    pub config: LiveConfig,
    /// The preferred leader: the first replica of the assignment (it changes with a
    /// replication factor change).
    preferred: std::sync::atomic::AtomicI32,
    pub raft: Raft<PartitionRaft>,
    node_id: i32,
    log: SegmentRaftLog,
    /// The state machine's applied state, written out when the group stops.
    state: ReplicaState,
    high_watermark: watch::Receiver<i64>,
    /// What this replica's current leadership has seen of its followers.
    leadership: Mutex<Leadership>,
    /// When this replica last took a write as leader, and whether its group is quiesced.
    last_write: Mutex<Instant>,
    quiesced: std::sync::atomic::AtomicBool,
    quiescing: std::sync::atomic::AtomicBool,
    channels: PeerChannels,
    timing: ReplicaTiming,
    /// Batches proposed by this leader, told of their durable append by the log.
    proposals: Proposals,
    /// Idempotent producers of the committed batches (kept by the state machine).
    producers: Arc<Mutex<ProducerStates>>,
    /// Idempotent producers' batches proposed and not yet committed or failed.
    inflight: tokio::sync::Mutex<Inflight>,
    /// Where retention asks the state machine to take its next snapshot.
    snapshot_upto: Arc<std::sync::atomic::AtomicU64>,
    /// Set while this leader hands leadership to another replica: writes wait.
    handing_over: std::sync::atomic::AtomicBool,
    /// The replica leadership was last handed to and the term it took over in: named to
    /// writes that waited for the hand-over while this replica has not heard from the new
    /// leader yet (in that term only).
    handed_to: Mutex<Option<(i32, u64)>>,
    /// Writes between their leadership check and their answer.
    proposing: std::sync::atomic::AtomicUsize,
    /// How long a batch ahead of its producer's sequence waits for the ones before it.
    sequence_wait: Duration,
    /// The broker's leadership and commit-latency series, once set.
    raft_metrics: std::sync::OnceLock<crate::metrics::RaftMetrics>,
    /// Told whenever an idempotent producer's batch is proposed.
    proposed: tokio::sync::Notify,
}

/// An idempotent producer's batch on its way through Raft.
#[derive(Debug)]
struct InflightBatch {
    id: BatchId,
    progress: watch::Receiver<Progress>,
}

/// The batches in flight under one leadership (term).
#[derive(Debug, Default)]
struct Inflight {
    term: u64,
    by_producer: BTreeMap<i64, std::collections::VecDeque<InflightBatch>>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("topic", &self.topic)
            .field("partition", &self.id)
            .finish()
    }
}

impl Replica {
    /// Starts this broker's member of the partition's group; every replica initializes the
    /// group with all replicas (idempotent).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        topic: Arc<str>,
        topic_id: String,
        id: i32,
        config: LiveConfig,
        node_id: i32,
        members: BTreeMap<u64, BasicNode>,
        group: u64,
        stores: ReplicaStores,
        channels: PeerChannels,
        timing: ReplicaTiming,
        preferred: i32,
        joining: bool,
    ) -> Result<Arc<Self>> {
        let raft_config = openraft::Config {
            cluster_name: format!("{topic}-{id}"),
            heartbeat_interval: timing.heartbeat.as_millis() as u64,
            election_timeout_min: timing.election_timeout_min.as_millis() as u64,
            election_timeout_max: timing.election_timeout_max.as_millis() as u64,
            // The log is the data: never snapshot-and-purge it behind retention's back.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            // Bounds one AppendEntries (entries are batches of up to max.message.bytes) and
            // keeps it fast enough for the timeout above.
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Internal(format!("{topic}-{id}: Raft config: {e}")))?;
        let high_watermark = stores.state.subscribe_high_watermark();
        let proposals = stores.log.proposals();
        let producers = stores.state.producers();
        let snapshot_upto = stores.state.snapshot_upto();
        let raft = Raft::new(
            node_id as u64,
            Arc::new(raft_config),
            Network::<PartitionRaft>::new(group, channels.clone()).with_durable({
                let durable = stores.log.durable();
                crate::raft::transport::Durable(Arc::new(move || durable.borrow().last))
            }),
            stores.log.clone(),
            stores.state.clone(),
        )
        .await
        .map_err(|e| Error::Internal(format!("{topic}-{id}: starting its Raft group: {e}")))?;
        // A new group is initialized by its preferred replica alone, which campaigns at once
        // (openraft's `initialize` starts an election) and wins term 1 unopposed: the others
        // hold empty logs and grant their votes. If every replica initialized, all three
        // would campaign at term 1 together, split the vote and leave the partition without
        // a leader for an election timeout or more, right when a producer starts on a new
        // topic. The others initialize only if no candidate has reached them after
        // `INIT_FALLBACK_TIMEOUTS` election timeouts (the preferred broker died before it
        // could), so a partition never waits on one broker to exist.
        // A replica added to an existing group (a replication factor change) never
        // initializes: it starts empty and learns the group from its leader.
        if joining {
        } else if node_id == preferred {
            initialize(&raft, members, &topic, id).await?;
        } else {
            let raft = raft.clone();
            let (topic, wait) = (
                topic.clone(),
                timing.election_timeout_max * INIT_FALLBACK_TIMEOUTS,
            );
            tokio::spawn(async move {
                let heard = raft
                    .wait(Some(wait))
                    .metrics(
                        |m| m.vote.leader_id().term > 0 || m.last_log_index.is_some(),
                        "a candidate or leader of the new group",
                    )
                    .await;
                if let Err(openraft::metrics::WaitError::Timeout(..)) = heard {
                    tracing::info!(topic = %topic, partition = id, "the preferred replica did not start the new group; starting it here");
                    if let Err(e) = initialize(&raft, members, &topic, id).await {
                        tracing::warn!(topic = %topic, partition = id, cause = %e, "starting the new group");
                    }
                }
            });
        }
        Ok(Arc::new(Replica {
            topic,
            topic_id,
            id,
            config,
            preferred: std::sync::atomic::AtomicI32::new(preferred),
            raft,
            node_id,
            log: stores.log,
            state: stores.state,
            high_watermark,
            leadership: Mutex::new(Leadership {
                term: 0,
                since: Instant::now(),
                caught_up: BTreeMap::new(),
            }),
            last_write: Mutex::new(Instant::now()),
            quiesced: std::sync::atomic::AtomicBool::new(false),
            quiescing: std::sync::atomic::AtomicBool::new(false),
            channels,
            timing,
            proposals,
            producers,
            inflight: tokio::sync::Mutex::new(Inflight::default()),
            snapshot_upto,
            handing_over: std::sync::atomic::AtomicBool::new(false),
            handed_to: Mutex::new(None),
            proposing: std::sync::atomic::AtomicUsize::new(0),
            sequence_wait: stores.sequence_wait,
            raft_metrics: std::sync::OnceLock::new(),
            proposed: tokio::sync::Notify::new(),
        }))
    }

    /// The leader's node id, if the group has one.
    pub(crate) fn leader(&self) -> Option<i32> {
        self.raft
            .metrics()
            .borrow()
            .current_leader
            .map(|l| l as i32)
    }

    /// The term this replica leads in, if it leads.
    pub(crate) fn leader_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        (m.state == ServerState::Leader && m.current_leader == Some(self.node_id as u64))
            .then_some(m.current_term)
    }

    /// The broker this replica is on.
    pub(crate) fn node_id(&self) -> i32 {
        self.node_id
    }

    /// The preferred leader.
    pub(crate) fn preferred(&self) -> i32 {
        self.preferred.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes the preferred leader of a new assignment.
    pub(crate) fn set_preferred(&self, preferred: i32) {
        self.preferred
            .store(preferred, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many voters the group has now (its replicas, learners not counted).
    pub(crate) fn voters(&self) -> usize {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count()
    }

    pub(crate) fn is_leader(&self) -> bool {
        // Borrowed, not cloned: this runs on every produce and fetch.
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id as u64)
    }

    pub(crate) fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    pub(crate) fn subscribe_high_watermark(&self) -> watch::Receiver<i64> {
        self.high_watermark.clone()
    }

    /// Takes new segment settings (a topic config change).
    pub(crate) fn set_log_options(&self, options: LogOptions) {
        self.log.set_options(options);
    }

    pub(crate) fn offsets(&self) -> LogOffsets {
        self.log.offsets()
    }

    /// The in-sync replicas: the leader, and each follower that answered Raft calls and was
    /// caught up with the leader's log within `lag_time_max` (Kafka's
    /// `replica.lag.time.max.ms`). A new leadership knows nothing of its followers until they
    /// answer, so it starts with none: a follower is reported in sync only once it has been
    /// seen caught up (what a rolling restart that waits for a full ISR relies on). Only
    /// meaningful on the leader.
    pub(crate) fn in_sync(&self) -> Vec<i32> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let now = Instant::now();
        let lag = self.timing.lag_time_max;
        let mut isr = vec![self.node_id];
        let Some(replication) = &m.replication else {
            return isr;
        };
        let mut leadership = self.leadership.lock();
        if leadership.term != m.current_term {
            *leadership = Leadership {
                term: m.current_term,
                since: now,
                caught_up: BTreeMap::new(),
            };
        }
        let caught_up = &mut leadership.caught_up;
        let membership = m.membership_config.membership();
        for (follower, matched) in replication {
            // Learners (replicas being added) join the in-sync set once they are voters.
            if *follower == self.node_id as u64 || !membership.voter_ids().any(|v| v == *follower) {
                continue;
            }
            let alive = self
                .channels
                .last_answer(*follower)
                .is_some_and(|t| now.duration_since(t) <= lag);
            if alive && matched.map(|l| l.index) >= m.last_log_index {
                caught_up.insert(*follower, now);
            }
            let recent = caught_up
                .get(follower)
                .is_some_and(|t| now.duration_since(*t) <= lag);
            if alive && recent {
                isr.push(*follower as i32);
            }
        }
        isr.sort_unstable();
        isr
    }

    fn not_leader(&self, state: &crate::controller::ClusterState) -> Error {
        let term = self.raft.metrics().borrow().current_term;
        let handed_to = (*self.handed_to.lock())
            .filter(|(_, t)| *t == term)
            .map(|(to, _)| to);
        match self.leader().filter(|l| *l != self.node_id).or(handed_to) {
            Some(leader) => match state.brokers.get(&leader) {
                Some(b) => Error::NotLeader {
                    topic: self.topic.to_string(),
                    partition: self.id,
                    leader,
                    address: b.address.clone(),
                },
                None => Error::LeaderNotAvailable {
                    topic: self.topic.to_string(),
                    partition: self.id,
                },
            },
            None => Error::LeaderNotAvailable {
                topic: self.topic.to_string(),
                partition: self.id,
            },
        }
    }

    /// A replica campaigning when a write arrives (a hand-over's target, a follower taking
    /// over from a crashed leader: clients are sent here as soon as the election starts)
    /// waits for the outcome, at most an election timeout, instead of answering
    /// LEADER_NOT_AVAILABLE and sending the producer into its backoff.
    async fn await_candidacy(&self, deadline: tokio::time::Instant) {
        if self.raft.metrics().borrow().state != ServerState::Candidate {
            return;
        }
        let until = deadline.min(tokio::time::Instant::now() + self.timing.election_timeout_max);
        self.watch_metrics(until, |m| (m.state != ServerState::Candidate).then_some(()))
            .await;
    }

    /// Fails unless this replica leads its group.
    pub(crate) fn check_leader(&self, state: &crate::controller::ClusterState) -> Result<()> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(self.not_leader(state))
        }
    }

    /// This replica's Raft log.
    pub(crate) fn log(&self) -> SegmentRaftLog {
        self.log.clone()
    }

    /// Whole batches below the high watermark, on the leader. Blocking (disk).
    pub(crate) fn read(&self, offset: i64, max_bytes: usize) -> Result<Bytes> {
        let hw = self.high_watermark();
        let storage_err = |source| Error::Storage {
            topic: self.topic.to_string(),
            partition: self.id,
            source,
        };
        if offset > hw {
            let o = self.log.offsets();
            return Err(storage_err(
                crate::storage::StorageError::OffsetOutOfRange {
                    requested: offset,
                    log_start: o.log_start,
                    log_end: hw,
                },
            ));
        }
        self.log.read(offset, max_bytes, hw).map_err(|e| match e {
            crate::storage::StorageError::OffsetOutOfRange {
                requested,
                log_start,
                ..
            } => storage_err(crate::storage::StorageError::OffsetOutOfRange {
                requested,
                log_start,
                log_end: hw,
            }),
            other => storage_err(other),
        })
    }

    /// The first offset at or after `ts` that consumers can read. Blocking.
    pub(crate) fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>> {
        let hw = self.high_watermark();
        let found = self
            .log
            .offset_for_timestamp(ts)
            .map_err(|source| Error::Storage {
                topic: self.topic.to_string(),
                partition: self.id,
                source,
            })?;
        Ok(found.filter(|(o, _)| *o < hw))
    }

    /// Records into the broker's leadership and commit-latency series from now on.
    pub(crate) fn record_into(&self, metrics: crate::metrics::RaftMetrics) {
        let _ = self.raft_metrics.set(metrics);
    }

    /// Reports each leadership this replica wins to the controller, so metadata points
    /// clients here. Runs until the group stops.
    pub(crate) async fn report_leadership(self: Arc<Self>, controller: Arc<Controller>) {
        let mut metrics = self.raft.metrics();
        let mut reported = 0u64;
        let mut announced = 0u64;
        loop {
            let (leader, term) = {
                let m = metrics.borrow_and_update();
                (m.state == ServerState::Leader, m.current_term)
            };
            if leader && term > reported {
                // A new leadership starts active, whatever an earlier one left behind.
                self.quiesced
                    .store(false, std::sync::atomic::Ordering::Release);
                self.raft.runtime_config().tick(true);
                self.raft.runtime_config().heartbeat(true);
                *self.last_write.lock() = Instant::now();
                if announced < term {
                    announced = term;
                    if let Some(m) = self.raft_metrics.get() {
                        m.leadership();
                    }
                    // A replica restarted with its own vote from an old term takes up that
                    // leadership until its first heartbeat meets the newer term: not news.
                    let newer = controller
                        .state()
                        .topics
                        .values()
                        .find(|t| *t.topic_id == *self.topic_id)
                        .and_then(|t| t.leaders.get(self.id as usize).copied().flatten())
                        .filter(|l| l.term > term);
                    match newer {
                        None => {
                            tracing::info!(topic = %self.topic, partition = self.id, term, "leading the partition")
                        }
                        Some(l) => {
                            tracing::debug!(topic = %self.topic, partition = self.id, term, newer_term = l.term, leader = l.leader, "a stale leadership from before a restart; the partition has a newer leader")
                        }
                    }
                }
                // Clients find this leader at once through the replicas' own Raft view;
                // the controller's record is for brokers that hold no replica of it.
                let command = MetaCommand::PartitionLeader {
                    topic_id: self.topic_id.clone(),
                    partition: self.id,
                    leader: self.node_id,
                    term,
                };
                match controller.propose(command).await {
                    Ok(_) => reported = term,
                    // This broker is stopping: its partitions will report from elsewhere.
                    Err(Error::ShuttingDown) => return,
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, partition = self.id, cause = %e, "reporting leadership to the controller; will retry");
                        // Again after a pause, or at once if the leadership changes meanwhile.
                        tokio::select! {
                            _ = tokio::time::sleep(REPORT_RETRY) => {}
                            changed = metrics.changed() => if changed.is_err() { return },
                        }
                    }
                }
                continue;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Deletes the segments `retention.ms` / `retention.bytes` no longer keep, on every
    /// replica independently, never past the high watermark. Raft's side of it: a snapshot
    /// (the applied state and where the log continues) covers the entries first, then the log
    /// is purged; a follower that later needs purged entries gets the snapshot and continues
    /// at the same offsets.
    pub(crate) async fn enforce_retention(&self, now_ms: i64) -> Result<()> {
        let log = self.log.clone();
        self.producers
            .lock()
            .expire(now_ms, self.timing.producer_expiration.as_millis() as i64);
        let hw = self.high_watermark();
        let config = self.config.get();
        let (ms, bytes) = (config.retention_ms, config.retention_bytes);
        let floor = self.state.delete_before();
        let upto = tokio::task::spawn_blocking(move || {
            let segments = log.segments();
            // Whole segments only, the active one never: below the retention cut, or wholly
            // below the offset records were deleted before.
            let deleted = segments
                .iter()
                .filter(|s| !s.active && s.next_offset <= floor)
                .map(|s| s.next_offset)
                .max();
            let cut = crate::storage::retention_cut(&segments, ms, bytes, now_ms).max(deleted)?;
            log.last_index_below(cut.min(hw))
        })
        .await
        .map_err(|e| Error::Internal(format!("retention: {e}")))?;
        let Some(upto) = upto else {
            return Ok(());
        };
        let failed = |e: openraft::error::Fatal<u64>| {
            Error::Internal(format!("{}-{}: retention: {e}", self.topic, self.id))
        };
        let covered =
            |m: &openraft::RaftMetrics<u64, BasicNode>| m.snapshot.is_some_and(|s| s.index >= upto);
        let (done, applied) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (covered(&m), m.last_applied.is_some_and(|l| l.index >= upto))
        };
        if !done {
            if !applied {
                return Ok(());
            }
            self.snapshot_upto
                .store(upto, std::sync::atomic::Ordering::Release);
            self.raft.trigger().snapshot().await.map_err(failed)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            if self
                .watch_metrics(deadline, |m| covered(m).then_some(()))
                .await
                .is_none()
            {
                return Err(Error::Timeout(format!(
                    "{}-{}: retention: no snapshot covered Raft index {upto} in time",
                    self.topic, self.id
                )));
            }
        }
        self.raft.trigger().purge_log(upto).await.map_err(failed)?;
        tracing::debug!(topic = %self.topic, partition = self.id, upto, "retention purged the Raft log");
        Ok(())
    }

    /// Stops the group and closes the segments.
    pub(crate) async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::error!(topic = %self.topic, partition = self.id, cause = %e, "stopping the Raft group");
        }
        let (log, state) = (self.log.clone(), self.state.clone());
        let _ = tokio::task::spawn_blocking(move || {
            // A restart then applies nothing again: no entry is read back to start the group.
            if let Err(e) = state.persist_final() {
                tracing::warn!(cause = %e, "saving the applied state of a stopped replica");
            }
            log.close()
        })
        .await;
    }
}

/// Replicas (the leader `leader` included) whose log holds entry `index`, by its metrics.
fn holding(m: &openraft::RaftMetrics<u64, BasicNode>, leader: i32, index: u64) -> usize {
    1 + m
        .replication
        .iter()
        .flatten()
        .filter(|(f, matched)| **f != leader as u64 && matched.is_some_and(|l| l.index >= index))
        .count()
}
