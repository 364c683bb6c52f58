//! [`Replica`]: a partition replica in its Raft group. The leader takes produce requests
//! (each batch is one Raft entry) and serves fetches below the high watermark; followers
//! point clients at the leader. The in-sync set and `min.insync.replicas` follow Kafka.

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
use crate::controller::{Controller, MetaCommand, PeerChannels, network::Network};
use crate::error::{Error, Result};
use crate::live_config::LiveConfig;
use crate::partition::validate_batch;
use crate::producer_state::{BatchId, Latest, ProducerStates, Verdict};
use crate::storage::{LogOffsets, LogOptions, SegmentLog};

/// How long a new leadership waits to hear its followers before an `acks=all` write is
/// refused for too few in-sync replicas.
const NEW_LEADER_GRACE: Duration = Duration::from_secs(1);

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
pub const MAX_PAYLOAD_ENTRIES: u64 = 8;

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
pub struct ReplicaTiming {
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
pub struct ReplicaStores {
    log: SegmentRaftLog,
    state: ReplicaState,
    sequence_wait: Duration,
}

impl ReplicaStores {
    /// Opens (recovering if needed) the segment log and Raft state in `dir`. Blocking.
    pub fn open(
        dir: &Path,
        options: LogOptions,
        producer_limits: crate::producer_state::ProducerLimits,
        tail: crate::replica::tail::TailBudget,
    ) -> std::io::Result<Self> {
        let segments = SegmentLog::open(dir, options, crate::broker::now_ms())
            .map_err(std::io::Error::other)?;
        let log = SegmentRaftLog::open(dir, segments, tail)?;
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

pub struct Replica {
    pub topic: Arc<str>,
    pub topic_id: String,
    pub id: i32,
    pub config: LiveConfig,
    pub replicas: Vec<i32>,
    /// The preferred leader: the first replica of the assignment.
    pub preferred: i32,
    pub raft: Raft<PartitionRaft>,
    node_id: i32,
    log: SegmentRaftLog,
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
    pub async fn start(
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
            Network::<PartitionRaft>::new(group, channels.clone()),
            stores.log.clone(),
            stores.state,
        )
        .await
        .map_err(|e| Error::Internal(format!("{topic}-{id}: starting its Raft group: {e}")))?;
        let replicas: Vec<i32> = members.keys().map(|k| *k as i32).collect();
        // A new group is initialized by its preferred replica alone, which campaigns at once
        // (openraft's `initialize` starts an election) and wins term 1 unopposed: the others
        // hold empty logs and grant their votes. If every replica initialized, all three
        // would campaign at term 1 together, split the vote and leave the partition without
        // a leader for an election timeout or more, right when a producer starts on a new
        // topic. The others initialize only if no candidate has reached them after
        // `INIT_FALLBACK_TIMEOUTS` election timeouts (the preferred broker died before it
        // could), so a partition never waits on one broker to exist.
        if node_id == preferred {
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
            replicas,
            preferred,
            raft,
            node_id,
            log: stores.log,
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
            proposed: tokio::sync::Notify::new(),
        }))
    }

    /// The leader's node id, if the group has one.
    pub fn leader(&self) -> Option<i32> {
        self.raft
            .metrics()
            .borrow()
            .current_leader
            .map(|l| l as i32)
    }

    pub fn is_leader(&self) -> bool {
        // Borrowed, not cloned: this runs on every produce and fetch.
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id as u64)
    }

    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    pub fn subscribe_high_watermark(&self) -> watch::Receiver<i64> {
        self.high_watermark.clone()
    }

    /// Takes new segment settings (a topic config change).
    pub fn set_log_options(&self, options: LogOptions) {
        self.log.set_options(options);
    }

    pub fn offsets(&self) -> LogOffsets {
        self.log.offsets()
    }

    /// The in-sync replicas: the leader, and each follower that answered Raft calls and was
    /// caught up with the leader's log within `lag_time_max` (Kafka's
    /// `replica.lag.time.max.ms`). A new leadership knows nothing of its followers until they
    /// answer, so it starts with none: a follower is reported in sync only once it has been
    /// seen caught up (what a rolling restart that waits for a full ISR relies on). Only
    /// meaningful on the leader.
    pub fn in_sync(&self) -> Vec<i32> {
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
        for (follower, matched) in replication {
            if *follower == self.node_id as u64 {
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
    pub fn check_leader(&self, state: &crate::controller::ClusterState) -> Result<()> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(self.not_leader(state))
        }
    }

    /// Appends a batch through Raft (one entry) and answers as `acks` asks: `0` once
    /// proposed, `1` once durable in this leader's log, `all` once committed by a quorum and
    /// held by `min.insync.replicas` replicas. `acks=all` is refused up front with too few
    /// in-sync replicas (NOT_ENOUGH_REPLICAS) and fails if too few hold the batch after the
    /// commit (NOT_ENOUGH_REPLICAS_AFTER_APPEND). A retry of an idempotent producer's batch
    /// that this partition holds or is committing is not appended again: it gets the
    /// original's offsets.
    pub async fn produce(
        &self,
        state: &crate::controller::ClusterState,
        batch: Bytes,
        acks_level: i32,
        timeout: Duration,
    ) -> Result<(i64, i64)> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.await_candidacy(deadline).await;
        self.check_leader(state)?;
        // Counted before `handing_over` is read, so that a hand-over (which sets it, then
        // waits for the count to drain) never misses a write on its way into the log.
        let _proposing = loop {
            let counted = Counted::new(&self.proposing);
            if !self.handing_over.load(std::sync::atomic::Ordering::SeqCst) {
                break counted;
            }
            drop(counted);
            // Leadership is moving: wait for the move (bounded), then answer NOT_LEADER
            // with the new leader, which the producer follows at once.
            while self.handing_over.load(std::sync::atomic::Ordering::SeqCst)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(HAND_OVER_POLL).await;
            }
            self.check_leader(state)?;
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::LeaderNotAvailable {
                    topic: self.topic.to_string(),
                    partition: self.id,
                });
            }
        };
        let config = self.config.get();
        let min_isr = config.min_insync_replicas as usize;
        if acks_level == acks::ALL {
            self.await_in_sync(min_isr, deadline).await?;
        }
        self.wake();
        let batch = if validates_quickly(&batch, &config) {
            // A CRC pass and a walk over the records: cheaper than a hop to the blocking pool
            // and back, which is latency every acks=all write pays.
            validate_batch(&self.topic, self.id, &config, batch)?
        } else {
            let (topic, id, config) = (self.topic.clone(), self.id, config.clone());
            tokio::task::spawn_blocking(move || validate_batch(&topic, id, &config, batch))
                .await
                .map_err(|e| Error::Internal(format!("validating a batch: {e}")))??
        }
        .freeze();
        let batch_id = sluice_proto::batch::BatchHeader::parse(&batch)
            .ok()
            .and_then(|h| BatchId::of(&h));
        let progress = match batch_id {
            None => self.propose(batch).await?.1,
            Some(batch_id) => match self
                .propose_idempotent(state, batch, batch_id, deadline)
                .await?
            {
                Ok(progress) => progress,
                Err(stored) => {
                    if acks_level == acks::ALL {
                        self.check_in_sync(min_isr)?;
                    }
                    return Ok((stored.base_offset, stored.last_offset));
                }
            },
        };
        if acks_level == acks::NONE {
            return Ok((-1, -1));
        }
        let (at, index) = self
            .await_progress(state, progress, acks_level == acks::ALL, deadline)
            .await?;
        // A commit means a majority holds the batch; only a min.insync.replicas above the
        // majority needs more (watched on the replication metrics, not polled).
        let majority = self.replicas.len() / 2 + 1;
        if acks_level == acks::ALL && min_isr > majority {
            let held = self
                .watch_metrics(deadline, |m| {
                    (holding(m, self.node_id, index) >= min_isr).then_some(())
                })
                .await;
            if held.is_none() {
                return Err(Error::NotEnoughReplicasAfterAppend {
                    topic: self.topic.to_string(),
                    partition: self.id,
                    holding: self.holding(index),
                    required: min_isr,
                });
            }
        }
        Ok((at.base_offset, at.last_offset))
    }

    /// Waits until `f` has an answer from the group's metrics, up to `deadline`; `None` on
    /// timeout or when the group stops.
    async fn watch_metrics<T>(
        &self,
        deadline: tokio::time::Instant,
        mut f: impl FnMut(&openraft::RaftMetrics<u64, BasicNode>) -> Option<T>,
    ) -> Option<T> {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(t) = f(&metrics.borrow_and_update()) {
                return Some(t);
            }
            if !matches!(
                tokio::time::timeout_at(deadline, metrics.changed()).await,
                Ok(Ok(()))
            ) {
                return None;
            }
        }
    }

    /// `NOT_ENOUGH_REPLICAS` unless `min_isr` replicas are in sync. A leadership younger
    /// than [`NEW_LEADER_GRACE`] may not have heard its followers yet (a new topic, a
    /// failover): it waits for them, on the replication metrics and within the request's
    /// deadline, before it refuses. An established leader refuses at once, as Kafka does.
    async fn await_in_sync(&self, min_isr: usize, deadline: tokio::time::Instant) -> Result<()> {
        if self.in_sync().len() >= min_isr {
            return Ok(());
        }
        let age = {
            let l = self.leadership.lock();
            (l.term == self.raft.metrics().borrow().current_term).then(|| l.since.elapsed())
        };
        if let Some(remaining) = age.and_then(|a| NEW_LEADER_GRACE.checked_sub(a)) {
            let until = deadline.min(tokio::time::Instant::now() + remaining);
            let mut metrics = self.raft.metrics();
            loop {
                if self.in_sync().len() >= min_isr {
                    return Ok(());
                }
                if !matches!(
                    tokio::time::timeout_at(until, metrics.changed()).await,
                    Ok(Ok(()))
                ) {
                    break;
                }
            }
        }
        self.check_in_sync(min_isr)
    }

    fn check_in_sync(&self, min_isr: usize) -> Result<()> {
        let isr = self.in_sync();
        if isr.len() < min_isr {
            return Err(Error::NotEnoughReplicas {
                topic: self.topic.to_string(),
                partition: self.id,
                in_sync: isr,
                required: min_isr,
            });
        }
        Ok(())
    }

    /// Hands a batch to Raft; a task reports its commit (or failure) to its waiters.
    async fn propose(&self, batch: Bytes) -> Result<(u64, watch::Receiver<Progress>)> {
        let (token, progress) = self.proposals.register();
        let responder = match self.raft.client_write_ff(Payload(batch, token)).await {
            Ok(r) => r,
            Err(e) => {
                self.proposals.advance(
                    token,
                    Progress::Failed {
                        not_leader: false,
                        message: e.to_string(),
                    },
                );
                return Err(Error::Internal(format!("{}-{}: {e}", self.topic, self.id)));
            }
        };
        let proposals = self.proposals.clone();
        tokio::spawn(async move {
            let outcome = match responder.await {
                Ok(Ok(r)) => Progress::Committed {
                    at: r.data,
                    index: r.log_id.index,
                },
                Ok(Err(ClientWriteError::ForwardToLeader(_))) => Progress::Failed {
                    not_leader: true,
                    message: "leadership moved".into(),
                },
                Ok(Err(e)) => Progress::Failed {
                    not_leader: false,
                    message: e.to_string(),
                },
                Err(_) => Progress::Failed {
                    not_leader: true,
                    message: "the Raft group stopped".into(),
                },
            };
            proposals.advance(token, outcome);
        });
        Ok((token, progress))
    }

    /// Proposes an idempotent producer's batch unless it is a duplicate: `Err(stored)` for
    /// a batch committed already; the original's progress for one still in flight.
    async fn propose_idempotent(
        &self,
        state: &crate::controller::ClusterState,
        batch: Bytes,
        id: BatchId,
        deadline: tokio::time::Instant,
    ) -> Result<std::result::Result<watch::Receiver<Progress>, crate::producer_state::StoredBatch>>
    {
        let term = self.await_ready(state, deadline).await?;
        // A producer keeps several batches in flight; one may get here before the batch
        // ahead of it: it waits (a little) for that one to be proposed.
        let patience = (tokio::time::Instant::now() + self.sequence_wait).min(deadline);
        loop {
            let mut inflight = self.inflight.lock().await;
            if inflight.term != term {
                // Batches of an earlier leadership were committed (and are in `producers`)
                // or dropped by now: `await_ready` saw this term's first entry applied.
                *inflight = Inflight {
                    term,
                    ..Default::default()
                };
            }
            let queue = inflight.by_producer.entry(id.producer_id).or_default();
            // Committed batches leave from the front only (their completions are told in
            // any order), so the back stays the newest batch proposed; failed ones were not
            // stored by this leader.
            queue.retain(|b| !matches!(*b.progress.borrow(), Progress::Failed { .. }));
            while queue
                .front()
                .is_some_and(|b| matches!(*b.progress.borrow(), Progress::Committed { .. }))
            {
                queue.pop_front();
            }
            if let Some(b) = queue.iter().find(|b| b.id == id) {
                tracing::debug!(topic = %self.topic, partition = self.id, producer = id.producer_id, "a retry joins its batch in flight");
                return Ok(Ok(b.progress.clone()));
            }
            let pending = queue.back().map(|b| Latest {
                epoch: b.id.epoch,
                last_seq: b.id.last_seq,
            });
            let (early, verdict) = {
                let producers = self.producers.lock();
                (
                    producers.is_early(&id, pending),
                    producers.check(&id, pending),
                )
            };
            if early && tokio::time::Instant::now() < patience {
                let proposed = self.proposed.notified();
                tokio::pin!(proposed);
                proposed.as_mut().enable();
                drop(inflight);
                let _ = tokio::time::timeout_at(patience, proposed).await;
                continue;
            }
            let verdict = verdict.map_err(|source| Error::Sequence {
                topic: self.topic.to_string(),
                partition: self.id,
                source,
            })?;
            if let Verdict::Duplicate(stored) = verdict {
                tracing::debug!(topic = %self.topic, partition = self.id, producer = id.producer_id, base_offset = stored.base_offset, "dropped a duplicate batch");
                return Ok(Err(stored));
            }
            let (_, progress) = self.propose(batch).await?;
            queue.push_back(InflightBatch {
                id,
                progress: progress.clone(),
            });
            if inflight.by_producer.len() > crate::producer_state::MAX_PRODUCERS {
                inflight.by_producer.retain(|_, q| !q.is_empty());
            }
            self.proposed.notify_waiters();
            return Ok(Ok(progress));
        }
    }

    /// Waits until this leader has applied everything earlier leaders left in its log (its
    /// own term's first entry is applied), so its producer state is complete. Returns the term.
    async fn await_ready(
        &self,
        state: &crate::controller::ClusterState,
        deadline: tokio::time::Instant,
    ) -> Result<u64> {
        let ready = self
            .watch_metrics(deadline, |m| {
                if m.state != ServerState::Leader {
                    Some(None)
                } else if m
                    .last_applied
                    .is_some_and(|l| l.leader_id.term == m.current_term)
                {
                    Some(Some(m.current_term))
                } else {
                    None
                }
            })
            .await;
        match ready {
            Some(Some(term)) => Ok(term),
            Some(None) => Err(self.not_leader(state)),
            None => Err(Error::Timeout(format!(
                "{}-{}: the new leader did not finish applying its log in time",
                self.topic, self.id
            ))),
        }
    }

    /// Waits until the batch is durable here (`committed` false) or committed, and returns
    /// where it landed and its Raft index (0 if only appended).
    async fn await_progress(
        &self,
        state: &crate::controller::ClusterState,
        mut progress: watch::Receiver<Progress>,
        committed: bool,
        deadline: tokio::time::Instant,
    ) -> Result<(Appended, u64)> {
        loop {
            match &*progress.borrow_and_update() {
                Progress::Committed { at, index } => return Ok((*at, *index)),
                Progress::Appended(at) if !committed => return Ok((*at, 0)),
                Progress::Failed {
                    not_leader: true, ..
                } => return Err(self.not_leader(state)),
                Progress::Failed { message, .. } => {
                    return Err(Error::Internal(format!(
                        "{}-{}: {message}",
                        self.topic, self.id
                    )));
                }
                _ => {}
            }
            let waited = tokio::time::timeout_at(deadline, progress.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                return Err(Error::Timeout(format!(
                    "{}-{}: the batch was not {} within the request timeout; an idempotent producer's retry will not duplicate it",
                    self.topic,
                    self.id,
                    if committed {
                        "committed by a quorum"
                    } else {
                        "written by the leader"
                    },
                )));
            }
        }
    }

    /// Resumes heartbeats if the group was quiesced; notes the write.
    fn wake(&self) {
        *self.last_write.lock() = Instant::now();
        if self
            .quiesced
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            self.raft.runtime_config().tick(true);
            self.raft.runtime_config().heartbeat(true);
        }
    }

    /// This replica's Raft log.
    pub fn log(&self) -> SegmentRaftLog {
        self.log.clone()
    }

    /// Whether this leader has been idle long enough to quiesce its group.
    pub fn should_quiesce(&self, idle: Duration) -> bool {
        !self.quiesced.load(std::sync::atomic::Ordering::Acquire)
            && self.is_leader()
            && self.last_write.lock().elapsed() >= idle
    }

    /// Asks every follower to stop its election timer; if all agree, stops heartbeats.
    pub async fn quiesce(&self, group: u64) {
        if self
            .quiescing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        self.quiesce_followers(group).await;
        self.quiescing
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Asks every follower but `except` to stop its election timer under this leader's
    /// current term; returns that term if all of them agreed.
    async fn pause_followers(&self, group: u64, except: Option<i32>) -> Option<u64> {
        let (term, followers) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let followers: Vec<String> = m
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.node_id as u64 && Some(**id as i32) != except)
                .map(|(_, n)| n.addr.clone())
                .collect();
            (m.current_term, followers)
        };
        for address in &followers {
            let mut client = self.channels.client(address).ok()?;
            let req = sluice_proto::pb::QuiesceRequest {
                group,
                leader: self.node_id as u64,
                term,
            };
            match tokio::time::timeout(Duration::from_secs(1), client.quiesce(req)).await {
                Ok(Ok(r)) if r.get_ref().accepted => {}
                _ => return None,
            }
        }
        Some(term)
    }

    async fn quiesce_followers(&self, group: u64) {
        if self.pause_followers(group, None).await.is_none() {
            return;
        }
        // A write may have arrived meanwhile: then stay active.
        if self.last_write.lock().elapsed() < Duration::from_millis(100) || !self.is_leader() {
            return;
        }
        self.raft.runtime_config().heartbeat(false);
        self.raft.runtime_config().tick(false);
        self.quiesced
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::debug!(topic = %self.topic, partition = self.id, "quiesced an idle group");
    }

    /// Hands leadership to the preferred replica if this leader is not it and it is in sync
    /// and caught up. Returns whether leadership moved.
    pub async fn hand_back_leadership(&self, group: u64) -> bool {
        if self.preferred == self.node_id || !self.is_leader() {
            return false;
        }
        if self
            .matched(self.preferred)
            .is_none_or(|m| m < self.last_log_index())
            || !self.in_sync().contains(&self.preferred)
        {
            return false;
        }
        tracing::info!(topic = %self.topic, partition = self.id, to = self.preferred, "handing leadership back to the preferred replica");
        self.hand_over(group, self.preferred).await
    }

    /// Controlled shutdown: hands leadership to an in-sync follower (the preferred replica
    /// when it is one, else the one furthest along). Returns the new leader, if it moved.
    pub async fn hand_off(&self, group: u64) -> Option<i32> {
        if !self.is_leader() {
            return None;
        }
        let isr = self.in_sync();
        let target = if self.preferred != self.node_id && isr.contains(&self.preferred) {
            self.preferred
        } else {
            isr.iter()
                .copied()
                .filter(|r| *r != self.node_id)
                .max_by_key(|r| (self.matched(*r), std::cmp::Reverse(*r)))?
        };
        self.hand_over(group, target).await.then_some(target)
    }

    /// The last log index the leader knows `follower` holds.
    fn matched(&self, follower: i32) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.replication
            .as_ref()?
            .get(&(follower as u64))
            .copied()
            .flatten()
            .map(|l| l.index)
    }

    fn last_log_index(&self) -> u64 {
        self.raft.metrics().borrow().last_log_index.unwrap_or(0)
    }

    /// Hands leadership to `target`, an in-sync follower: the other followers pause their
    /// election timers, new writes wait, and once `target` holds every entry this leader
    /// stops its heartbeats and asks `target` to campaign, which it wins (it has the
    /// longest log and nobody else campaigns). Writes that waited are then answered
    /// NOT_LEADER naming the new leader, so producers follow at once. If `target` does not
    /// catch up within a second, or no new term appears within six election timeouts, this
    /// leader resumes. openraft 0.9 has no leadership transfer; this builds one from its
    /// runtime switches.
    async fn hand_over(&self, group: u64, target: i32) -> bool {
        let started = tokio::time::Instant::now();
        let Some(term) = self.pause_followers(group, Some(target)).await else {
            return false;
        };
        let Some(target_address) = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&(target as u64))
            .map(|n| n.addr.clone())
        else {
            return false;
        };
        // Appends would keep the followers from voting for anyone, and `target` must hold
        // every entry to win: new writes wait, and the ones already on their way into the
        // log are let through first.
        self.handing_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let catch_up = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.proposing.load(std::sync::atomic::Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < catch_up
        {
            tokio::time::sleep(HAND_OVER_POLL).await;
        }
        let caught_up = self.proposing.load(std::sync::atomic::Ordering::SeqCst) == 0
            && self
                .watch_metrics(catch_up, |m| {
                    let matched = m
                        .replication
                        .as_ref()?
                        .get(&(target as u64))
                        .copied()
                        .flatten()
                        .map(|l| l.index);
                    (matched >= m.last_log_index).then_some(())
                })
                .await
                .is_some();
        self.raft.runtime_config().heartbeat(false);
        self.raft.runtime_config().tick(false);
        let asked = caught_up
            && match self.channels.client(&target_address) {
                Ok(mut client) => {
                    let req = sluice_proto::pb::ElectRequest {
                        group,
                        leader: self.node_id as u64,
                        term,
                    };
                    matches!(
                        tokio::time::timeout(Duration::from_secs(1), client.elect(req)).await,
                        Ok(Ok(r)) if r.get_ref().accepted
                    )
                }
                Err(_) => false,
            };
        let deadline = tokio::time::Instant::now() + self.timing.election_timeout_max * 6;
        let new_term = if asked {
            self.watch_metrics(deadline, |m| {
                (m.current_term > term).then_some(m.current_term)
            })
            .await
        } else {
            None
        };
        let moved = new_term.is_some();
        if let Some(new_term) = new_term {
            // Writes that waited are answered NOT_LEADER naming `target` until this
            // replica hears from the new leader itself.
            *self.handed_to.lock() = Some((target, new_term));
            // The term moves here when this replica grants `target` its vote, before the
            // answer has reached `target`: wait until `target` leads (its first
            // AppendEntries arrives), so that a broker shutting down next does not take
            // the answer down with it and leave `target` campaigning until the other
            // follower's lease runs out.
            let target_id = target as u64;
            self.watch_metrics(deadline, |m| {
                (m.current_leader == Some(target_id)).then_some(())
            })
            .await;
        }
        tracing::debug!(topic = %self.topic, partition = self.id, target, caught_up, asked, moved, took = ?started.elapsed(), "leadership hand-over");
        // As a follower it must campaign again if the new leader fails; if it still leads,
        // it resumes heartbeats.
        self.raft.runtime_config().tick(true);
        self.raft.runtime_config().heartbeat(true);
        self.handing_over
            .store(false, std::sync::atomic::Ordering::SeqCst);
        moved
    }

    /// Replicas (the leader included) whose log holds entry `index`.
    fn holding(&self, index: u64) -> usize {
        holding(&self.raft.metrics().borrow(), self.node_id, index)
    }

    /// Whole batches below the high watermark, on the leader. Blocking (disk).
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<Bytes> {
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
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>> {
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

    /// Reports each leadership this replica wins to the controller, so metadata points
    /// clients here. Runs until the group stops.
    pub async fn report_leadership(self: Arc<Self>, controller: Arc<Controller>) {
        let mut metrics = self.raft.metrics();
        let mut reported = 0u64;
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
                let command = MetaCommand::PartitionLeader {
                    topic_id: self.topic_id.clone(),
                    partition: self.id,
                    leader: self.node_id,
                    term,
                };
                match controller.propose(command).await {
                    Ok(_) => {
                        reported = term;
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
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, partition = self.id, cause = %e, "reporting leadership; will retry")
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
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<()> {
        let log = self.log.clone();
        self.producers
            .lock()
            .expire(now_ms, self.timing.producer_expiration.as_millis() as i64);
        let hw = self.high_watermark();
        let config = self.config.get();
        let (ms, bytes) = (config.retention_ms, config.retention_bytes);
        let upto = tokio::task::spawn_blocking(move || {
            let cut = crate::storage::retention_cut(&log.segments(), ms, bytes, now_ms)?;
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
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::error!(topic = %self.topic, partition = self.id, cause = %e, "stopping the Raft group");
        }
        let log = self.log.clone();
        let _ = tokio::task::spawn_blocking(move || log.close()).await;
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
