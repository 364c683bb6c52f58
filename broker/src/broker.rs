//! [`Broker`]: what this broker holds and serves. Cluster metadata (brokers, topics,
//! assignments) comes from the [`Controller`]; a reconciler opens the partitions assigned
//! here and removes those of deleted topics. Also the flusher, retention and the admin
//! operations, which go through the controller.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use sluice_proto::TopicConfig;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, FlushPolicy};
use crate::controller::network::{CONTROLLER_GROUP, Groups, Quiesced, is_refused};
use crate::controller::{
    BrokerRecord, ClusterState, Controller, ControllerTiming, MetaCommand, MetaResponse,
    PeerChannels,
};
use crate::error::{Error, Result};
use crate::live_config::LiveConfig;
use crate::metadata::{MetadataStore, TopicRecord};
use crate::partition::Partition;
use crate::replica::group::{Replica, ReplicaStores, ReplicaTiming};
use crate::storage::{LogOptions, SegmentLog};

mod alter;
pub use alter::{ConfigChange, TopicChange, TopicChanges};

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How often brokers ping each other (liveness for quiesced groups).
const PING_INTERVAL: Duration = Duration::from_millis(100);
/// A quiesced follower restarts its election timer after its leader's broker has not
/// answered pings for this long.
const LEADER_SILENCE: Duration = Duration::from_millis(400);
/// How long a follower waits for the others' log ends before leaving a crashed leader's
/// groups to the election timers.
const LOG_ENDS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long after a crashed leader's lease has surely expired its followers campaign (see
/// [`Broker::take_over_from`]).
const TAKE_OVER_MARGIN: Duration = Duration::from_millis(50);
/// A leader with no writes for this long quiesces its group.
const QUIESCE_AFTER: Duration = Duration::from_secs(2);

/// The voters of a group this broker follows under leader `dead`, if it does.
fn orphaned_voters(
    m: &openraft::RaftMetrics<u64, openraft::BasicNode>,
    dead: u64,
) -> Option<Vec<u64>> {
    (m.state == openraft::ServerState::Follower && m.current_leader == Some(dead))
        .then(|| m.membership_config.membership().voter_ids().collect())
}

/// Identifies which incarnation of a topic a partition directory belongs to.
const PARTITION_META_FILE: &str = "partition.json";

/// A topic's partitions on this broker: unreplicated ones (`replication.factor` 1) in
/// `partitions`, replicas of Raft-replicated ones in `replicas`.
#[derive(Debug)]
pub struct LocalTopic {
    /// As opened; `config` is the current topic config (the record's may be older).
    pub record: TopicRecord,
    pub config: LiveConfig,
    pub partitions: BTreeMap<i32, Arc<Partition>>,
    pub replicas: RwLock<BTreeMap<i32, Arc<Replica>>>,
}

/// A partition this broker serves, either kind.
#[derive(Debug, Clone)]
pub enum PartitionRef {
    Local(Arc<Partition>),
    Replica(Arc<Replica>),
}

impl PartitionRef {
    /// Whole batches from `offset`, below the high watermark. Blocking (disk).
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<bytes::Bytes> {
        match self {
            PartitionRef::Local(p) => p.read(offset, max_bytes),
            PartitionRef::Replica(r) => r.read(offset, max_bytes),
        }
    }

    pub fn high_watermark(&self) -> i64 {
        match self {
            PartitionRef::Local(p) => p.high_watermark(),
            PartitionRef::Replica(r) => r.high_watermark(),
        }
    }

    pub fn subscribe_high_watermark(&self) -> tokio::sync::watch::Receiver<i64> {
        match self {
            PartitionRef::Local(p) => p.subscribe_high_watermark(),
            PartitionRef::Replica(r) => r.subscribe_high_watermark(),
        }
    }

    pub fn offsets(&self) -> crate::storage::LogOffsets {
        match self {
            PartitionRef::Local(p) => p.offsets(),
            PartitionRef::Replica(r) => r.offsets(),
        }
    }

    /// Blocking (disk).
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>> {
        match self {
            PartitionRef::Local(p) => p.offset_for_timestamp(ts),
            PartitionRef::Replica(r) => r.offset_for_timestamp(ts),
        }
    }
}

/// A replica opened on disk, waiting for its Raft group to start.
#[derive(Debug)]
struct PendingReplica {
    record: TopicRecord,
    config: LiveConfig,
    partition: i32,
    stores: ReplicaStores,
}

/// Where this broker is reachable.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// host:port for clients.
    pub client: String,
    /// host:port for other brokers.
    pub raft: String,
}

#[derive(Debug)]
pub struct Broker {
    pub config: Config,
    pub addresses: Addresses,
    local_cluster_id: String,
    pub controller: Arc<Controller>,
    metadata: MetadataStore,
    local: RwLock<BTreeMap<String, Arc<LocalTopic>>>,
    pub peers: PeerChannels,
    /// Raft groups of the partition replicas here, for the inter-broker service.
    pub groups: Groups,
    /// Follower replicas whose idle leader stopped heartbeats (see [`Broker::run_liveness`]).
    pub quiesced: Quiesced,
    flusher: Arc<Flusher>,
    flusher_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Producer ids reserved at the controller and not handed out yet, in blocks. A block is
    /// reserved ahead, so producers can start while the controller quorum is down.
    producer_ids: tokio::sync::Mutex<std::collections::VecDeque<std::ops::Range<i64>>>,
    refilling_producer_ids: std::sync::atomic::AtomicBool,
    /// Memory for the newest entries of the partition Raft logs here.
    raft_tails: crate::replica::tail::TailBudget,
    pub shutdown: CancellationToken,
}

/// Producer ids a broker reserves at the controller at a time (Kafka reserves 1,000 too).
const PRODUCER_ID_BLOCK: u32 = 1000;

/// Partitions with unsynced writes, and the thread that syncs them. One thread for all
/// partitions: concurrent writers share fsyncs (group commit), and fsync never runs on the
/// async runtime.
#[derive(Debug, Default)]
struct Flusher {
    queue: Mutex<Vec<Arc<Partition>>>,
    wake: Condvar,
    stop: std::sync::atomic::AtomicBool,
}

impl Flusher {
    fn enqueue(&self, partition: &Arc<Partition>) {
        if !partition.dirty.swap(true, Ordering::AcqRel) {
            self.queue.lock().push(partition.clone());
            self.wake.notify_one();
        }
    }

    fn run(&self, policy: FlushPolicy) {
        loop {
            let batch = {
                let mut queue = self.queue.lock();
                match policy {
                    FlushPolicy::Always => {
                        while queue.is_empty() && !self.stop.load(Ordering::Acquire) {
                            self.wake.wait(&mut queue);
                        }
                    }
                    FlushPolicy::Interval(d) => {
                        if !self.stop.load(Ordering::Acquire) {
                            self.wake.wait_for(&mut queue, d);
                        }
                    }
                }
                std::mem::take(&mut *queue)
            };
            for p in batch {
                p.flush();
            }
            if self.stop.load(Ordering::Acquire) && self.queue.lock().is_empty() {
                return;
            }
        }
    }
}

impl Broker {
    /// Opens the data directory and joins the controller group. The partitions come next,
    /// in [`Broker::open_logs`], once the inter-broker listener serves: a restarted
    /// controller voter that cannot hear the leader's heartbeats while its logs open
    /// campaigns, and its higher term makes a healthy leader step down (the cluster had no
    /// controller for ~2 s after a slow restart).
    pub async fn open(
        config: Config,
        addresses: Addresses,
        voters: BTreeMap<i32, String>,
    ) -> Result<Arc<Self>> {
        let c = config.clone();
        let (metadata, local_cluster_id) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(c.data_dir.join("logs")).map_err(|e| {
                Error::Internal(format!(
                    "cannot create data directory {}: {e}",
                    c.data_dir.display()
                ))
            })?;
            MetadataStore::open(&c.data_dir, c.node_id, c.metadata_cache_bytes)
        })
        .await
        .map_err(|e| Error::Internal(format!("opening the metadata store: {e}")))??;
        let peers = PeerChannels::default();
        let controller = Controller::start(
            config.node_id,
            metadata.db(),
            &voters,
            peers.clone(),
            ControllerTiming::default(),
        )
        .await?;
        let flusher = Arc::new(Flusher::default());
        let policy = config.flush;
        let f = flusher.clone();
        let handle = std::thread::Builder::new()
            .name("sluice-flusher".into())
            .spawn(move || f.run(policy))
            .map_err(|e| Error::Internal(format!("cannot start the flusher thread: {e}")))?;
        let raft_tails = crate::replica::tail::TailBudget::new(
            usize::try_from(config.raft_tail_cache_bytes).unwrap_or(usize::MAX),
        );
        let broker = Arc::new(Broker {
            config,
            addresses,
            local_cluster_id,
            controller,
            metadata,
            local: RwLock::new(BTreeMap::new()),
            peers,
            groups: Groups::default(),
            quiesced: Quiesced::default(),
            flusher,
            flusher_thread: Mutex::new(Some(handle)),
            producer_ids: tokio::sync::Mutex::default(),
            refilling_producer_ids: Default::default(),
            raft_tails,
            shutdown: CancellationToken::new(),
        });
        Ok(broker)
    }

    /// Opens the partitions the metadata assigns here (recovering them if the last run
    /// crashed), then starts the reconciler and the registration of this broker.
    pub async fn open_logs(self: &Arc<Self>) -> Result<()> {
        let broker = self;
        let started = std::time::Instant::now();
        let b = broker.clone();
        let state = broker.controller.state();
        let pending =
            tokio::task::spawn_blocking(move || b.reconcile(&ClusterState::default(), &state))
                .await
                .map_err(|e| Error::Internal(format!("opening partitions: {e}")))?;
        let logs_ms = started.elapsed().as_millis() as u64;
        let replicas = pending.len();
        broker.start_replicas(pending).await;
        tracing::info!(
            topics = broker.local.read().len(),
            replicas,
            logs_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "opened logs"
        );
        tokio::spawn(broker.clone().run_reconciler());
        tokio::spawn(broker.clone().register());
        tokio::spawn(broker.clone().run_liveness());
        tokio::spawn(broker.clone().run_leader_rebalance());
        Ok(())
    }

    /// A producer id no other producer of the cluster gets: from this broker's reserved
    /// blocks; the next block is reserved through the controller before this one runs out.
    pub async fn allocate_producer_id(self: &Arc<Self>) -> Result<i64> {
        let mut ids = self.producer_ids.lock().await;
        while ids.front().is_some_and(|r| r.is_empty()) {
            ids.pop_front();
        }
        if ids.is_empty() {
            ids.push_back(self.reserve_producer_ids().await?);
        }
        let Some(front) = ids.front_mut() else {
            return Err(Error::Internal("no producer ids reserved".into()));
        };
        let id = front.start;
        front.start += 1;
        let left: i64 = ids.iter().map(|r| r.end - r.start).sum();
        if left < i64::from(PRODUCER_ID_BLOCK / 2) {
            self.prefetch_producer_ids();
        }
        Ok(id)
    }

    /// Reserves a block of producer ids in the background, unless one is on its way.
    fn prefetch_producer_ids(self: &Arc<Self>) {
        if self.refilling_producer_ids.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            match this.reserve_producer_ids().await {
                Ok(block) => this.producer_ids.lock().await.push_back(block),
                Err(e) => {
                    tracing::warn!(cause = %e, "reserving producer ids; will retry when asked")
                }
            }
            this.refilling_producer_ids.store(false, Ordering::Release);
        });
    }

    async fn reserve_producer_ids(&self) -> Result<std::ops::Range<i64>> {
        let command = MetaCommand::AllocateProducerIds {
            count: PRODUCER_ID_BLOCK,
        };
        match self.controller.propose(command).await? {
            MetaResponse::ProducerIds { first } => Ok(first..first + i64::from(PRODUCER_ID_BLOCK)),
            other => Err(Error::Internal(format!(
                "the controller answered a producer id request with {other:?}"
            ))),
        }
    }

    /// This broker and the registered brokers that answered a ping recently.
    pub fn live_brokers(&self) -> Vec<i32> {
        let me = self.node_id();
        self.controller
            .state()
            .brokers
            .keys()
            .copied()
            .filter(|b| {
                *b == me
                    || self
                        .peers
                        .last_answer(*b as u64)
                        .is_some_and(|t| t.elapsed() <= LEADER_SILENCE)
            })
            .collect()
    }

    pub fn node_id(&self) -> i32 {
        self.config.node_id
    }

    /// The controller leader if it leads with a quorum as this broker can tell (see
    /// [`Controller::leader_with_quorum`]): none while the quorum is lost.
    pub fn controller_leader(&self) -> Option<i32> {
        self.controller.leader_with_quorum(|b| {
            self.peers
                .last_answer(b as u64)
                .is_some_and(|t| t.elapsed() <= LEADER_SILENCE)
        })
    }

    /// The cluster id: the controller's once known, this data directory's until then.
    pub fn cluster_id(&self) -> String {
        let state = self.controller.state();
        if state.cluster_id.is_empty() {
            self.local_cluster_id.clone()
        } else {
            state.cluster_id.clone()
        }
    }

    /// Registers this broker (its addresses) with the controller, retrying with backoff
    /// until it succeeds or the broker stops.
    async fn register(self: Arc<Self>) {
        let command = MetaCommand::RegisterBroker {
            broker: BrokerRecord {
                node_id: self.node_id(),
                address: self.addresses.client.clone(),
                raft_address: self.addresses.raft.clone(),
            },
            cluster_id: self.local_cluster_id.clone(),
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = self.controller.propose(command.clone()) => match r {
                    Ok(_) => {
                        tracing::info!(node_id = self.node_id(), address = %self.addresses.client, "registered with the controller");
                        self.prefetch_producer_ids();
                        return;
                    }
                    Err(e) => tracing::warn!(cause = %e, "registering with the controller; will retry"),
                },
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Hands leadership of partitions led here back to their preferred replicas, one
    /// partition at a time, every `leader_rebalance_interval`.
    async fn run_leader_rebalance(self: Arc<Self>) {
        let every = self.config.leader_rebalance_interval;
        if every.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for topic in self.local_topics() {
                let replicas: Vec<_> = topic.replicas.read().values().cloned().collect();
                for r in replicas {
                    if self.shutdown.is_cancelled() {
                        return;
                    }
                    let group = topic.record.group(r.id);
                    if r.hand_back_leadership(group).await {
                        tracing::info!(topic = %r.topic, partition = r.id, leader = r.preferred, "preferred leader restored");
                    }
                }
            }
        }
    }

    /// Controlled shutdown (Kafka's `controlled.shutdown.enable`): hands every partition
    /// led here to an in-sync follower, 64 at a time, for at most `within`, so that its
    /// producers and consumers move over as after a planned leader move rather than a
    /// crash (no election timeouts, no failed calls). Returns (moved, led).
    pub async fn hand_off_leaderships(self: &Arc<Self>, within: Duration) -> (usize, usize) {
        use futures::StreamExt;
        let led: Vec<(Arc<Replica>, u64)> = self
            .local_topics()
            .into_iter()
            .flat_map(|t| {
                let replicas: Vec<_> = t.replicas.read().values().cloned().collect();
                replicas
                    .into_iter()
                    .filter(|r| r.is_leader())
                    .map(|r| {
                        let group = t.record.group(r.id);
                        (r, group)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let started = tokio::time::Instant::now();
        tracing::info!(
            partitions = led.len(),
            "controlled shutdown: handing off leaderships"
        );
        let count = led.len();
        let moved = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let hand_offs = futures::stream::iter(led.into_iter().map(|(r, group)| {
            let moved = moved.clone();
            async move {
                match r.hand_off(group).await {
                    Some(to) => {
                        moved.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(topic = %r.topic, partition = r.id, to, "handed off leadership");
                    }
                    None => {
                        tracing::warn!(topic = %r.topic, partition = r.id, in_sync = ?r.in_sync(), "could not hand off leadership (no follower in sync and caught up); its followers will elect a leader after this broker stops")
                    }
                }
            }
        }))
        .buffer_unordered(64)
        .collect::<Vec<()>>();
        if tokio::time::timeout(within, hand_offs).await.is_err() {
            tracing::warn!(timeout = ?within, "controlled shutdown: stopped handing off leaderships at the timeout");
        }
        let moved = moved.load(Ordering::Relaxed);
        tracing::info!(moved, led = count, took = ?started.elapsed(), "controlled shutdown: leaderships handed off");
        (moved, count)
    }

    /// Applies every new metadata version to the local partitions.
    async fn run_reconciler(self: Arc<Self>) {
        let mut rx = self.controller.subscribe();
        let mut seen = rx.borrow_and_update().clone();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
            let next = rx.borrow_and_update().clone();
            let this = self.clone();
            let prev = seen.clone();
            let n = next.clone();
            match tokio::task::spawn_blocking(move || this.reconcile(&prev, &n)).await {
                Ok(pending) => self.start_replicas(pending).await,
                Err(e) => tracing::error!(cause = %e, "reconciling partitions failed"),
            }
            seen = next;
        }
    }

    /// Opens partitions newly assigned here; closes and deletes those of topics that are
    /// gone. Blocking.
    fn reconcile(&self, prev: &ClusterState, next: &ClusterState) -> Vec<PendingReplica> {
        let mut pending = Vec::new();
        let me = self.node_id();
        for (name, record) in &next.topics {
            let current = self.local.read().get(name).cloned();
            if let Some(t) = current
                .as_ref()
                .filter(|t| t.record.topic_id == record.topic_id)
            {
                self.update_config(t, record);
                if record.partitions > t.record.partitions {
                    pending.extend(self.add_partitions(t, record));
                }
                continue;
            }
            if let Some(stale) = current {
                self.drop_topic(&stale);
            }
            let assigned: Vec<i32> = (0..record.partitions)
                .filter(|&p| {
                    record
                        .replicas
                        .get(p as usize)
                        .is_some_and(|r| r.contains(&me))
                })
                .collect();
            match self.open_topic(record.clone(), &assigned, None) {
                Ok((topic, replicas)) => {
                    self.local.write().insert(name.clone(), Arc::new(topic));
                    pending.extend(replicas);
                }
                Err(e) => {
                    tracing::error!(topic = %name, cause = %e, "cannot open the topic's partitions")
                }
            }
        }
        let gone: Vec<Arc<LocalTopic>> = self
            .local
            .read()
            .values()
            .filter(|t| {
                next.topics
                    .get(&t.record.name)
                    .is_none_or(|r| r.topic_id != t.record.topic_id)
            })
            .cloned()
            .collect();
        for t in gone {
            if prev.topics.contains_key(&t.record.name) || !next.topics.contains_key(&t.record.name)
            {
                self.drop_topic(&t);
            }
        }
        pending
    }

    /// Opens the partitions added to a topic that are assigned here, and puts the topic
    /// with them in place of `topic` (the partitions it has stay as they are).
    fn add_partitions(&self, topic: &Arc<LocalTopic>, record: &TopicRecord) -> Vec<PendingReplica> {
        let me = self.node_id();
        let added: Vec<i32> = (topic.record.partitions..record.partitions)
            .filter(|&p| {
                record
                    .replicas
                    .get(p as usize)
                    .is_some_and(|r| r.contains(&me))
            })
            .collect();
        let (opened, pending) =
            match self.open_topic(record.clone(), &added, Some(topic.config.clone())) {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(topic = %record.name, partitions = ?added, cause = %e,
                        "cannot open the topic's new partitions");
                    return Vec::new();
                }
            };
        let mut partitions = topic.partitions.clone();
        partitions.extend(opened.partitions);
        let grown = LocalTopic {
            record: record.clone(),
            config: topic.config.clone(),
            partitions,
            replicas: RwLock::new(topic.replicas.read().clone()),
        };
        self.local
            .write()
            .insert(record.name.clone(), Arc::new(grown));
        tracing::info!(topic = %record.name, partitions = record.partitions, opened_here = ?added,
            "partitions added to topic");
        pending
    }

    /// Applies an altered topic config to this broker's partitions of the topic: at once
    /// for what requests and retention read, from the next append on for segment rolls.
    fn update_config(&self, topic: &LocalTopic, record: &TopicRecord) {
        let config = match TopicConfig::from_map(&record.config, record.replication_factor) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(topic = %record.name, cause = %e, "the topic's committed config is invalid; keeping the previous one");
                return;
            }
        };
        let options = self.log_options(&config);
        if !topic.config.set(config) {
            return;
        }
        for p in topic.partitions.values() {
            p.set_log_options(options);
        }
        for r in topic.replicas.read().values() {
            r.set_log_options(options);
        }
        tracing::info!(topic = %record.name, config = ?record.config, "topic config changed");
    }

    /// Starts the Raft groups of replicas opened by `reconcile`, and reports their
    /// leaderships to the controller.
    async fn start_replicas(self: &Arc<Self>, pending: Vec<PendingReplica>) {
        let state = self.controller.state();
        for p in pending {
            let Some(replicas) = p.record.replicas.get(p.partition as usize) else {
                continue;
            };
            let members = replicas
                .iter()
                .filter_map(|id| {
                    state
                        .brokers
                        .get(id)
                        .map(|b| (*id as u64, openraft::BasicNode::new(&b.raft_address)))
                })
                .collect::<BTreeMap<_, _>>();
            if members.len() != replicas.len() {
                tracing::error!(topic = %p.record.name, partition = p.partition, ?replicas,
                    "a replica's broker is not registered; the partition stays closed");
                continue;
            }
            let group = p.record.group(p.partition);
            let started = Replica::start(
                Arc::from(p.record.name.as_str()),
                p.record.topic_id.clone(),
                p.partition,
                p.config.clone(),
                self.node_id(),
                members,
                group,
                p.stores,
                self.peers.clone(),
                ReplicaTiming {
                    lag_time_max: self.config.replica_lag_time_max,
                    producer_expiration: self.config.producer_id_expiration,
                    ..ReplicaTiming::default()
                },
                replicas.first().copied().unwrap_or(self.node_id()),
            )
            .await;
            match started {
                Ok(replica) => {
                    self.groups
                        .insert(group, replica.raft.clone(), replica.log());
                    if let Some(t) = self.local_topic(&p.record.name) {
                        t.replicas.write().insert(p.partition, replica.clone());
                    }
                    tokio::spawn(replica.report_leadership(self.controller.clone()));
                }
                Err(e) => {
                    tracing::error!(topic = %p.record.name, partition = p.partition, cause = %e, "cannot start the replica")
                }
            }
        }
    }

    /// Idle partition groups cost (almost) nothing: a leader with no writes for
    /// [`QUIESCE_AFTER`] asks its followers to stop their election timers and then stops its
    /// heartbeats. Instead, every broker pings every other broker each [`PING_INTERVAL`]; a
    /// follower whose quiesced leader's broker stops answering for [`LEADER_SILENCE`]
    /// restarts its election timer, and the group elects a new leader as usual. A write
    /// resumes heartbeats (leader) and election timers (followers, on the new entries).
    async fn run_liveness(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PING_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rounds = 0u64;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            rounds += 1;
            let state = self.controller.state();
            let me = self.node_id();
            for b in state.brokers.values().filter(|b| b.node_id != me) {
                let (broker, node, address) =
                    (self.clone(), b.node_id as u64, b.raft_address.clone());
                tokio::spawn(async move {
                    let ping = |broker: &Arc<Self>| {
                        let client = broker.peers.client(&address);
                        async move {
                            let mut client = client.map_err(tonic::Status::unavailable)?;
                            let ping = client.ping(sluice_proto::pb::PingRequest { from: me });
                            tokio::time::timeout(PING_INTERVAL * 2, ping)
                                .await
                                .map_err(|_| tonic::Status::deadline_exceeded("no answer"))?
                        }
                    };
                    let mut answer = ping(&broker).await;
                    // A connection the peer closed fails the next call on it: ask again on a
                    // new one, which tells whether anybody still listens there.
                    if answer
                        .as_ref()
                        .is_err_and(|s| s.code() == tonic::Code::Unavailable && !is_refused(s))
                    {
                        broker.peers.forget(&address);
                        answer = ping(&broker).await;
                    }
                    match answer {
                        Ok(_) => {
                            if let Some(since) = broker.peers.mark_answer(node) {
                                tracing::info!(
                                    broker = node,
                                    %address,
                                    down_for = ?since.elapsed(),
                                    "broker answers again"
                                );
                            }
                        }
                        Err(status) if is_refused(&status) => {
                            let was_up = broker.peers.last_answer(node).is_some();
                            if broker.peers.mark_refused(node) && was_up {
                                tracing::warn!(
                                    broker = node,
                                    %address,
                                    "broker refuses connections: its process is down"
                                );
                                tokio::spawn(broker.take_over_from(node));
                            }
                        }
                        _ => {}
                    }
                });
            }
            // Followers: a quiesced group whose leader's broker went silent elects again. One
            // that refuses connections is taken over instead (`take_over_from`): restarting
            // the timers of every follower of an idle group at once splits votes.
            for (group, leader) in self.quiesced.snapshot() {
                let silent = self
                    .peers
                    .last_answer(leader)
                    .is_none_or(|t| t.elapsed() > LEADER_SILENCE);
                if silent
                    && !self.peers.refuses(leader)
                    && self.quiesced.remove(group)
                    && let Some(raft) = self.groups.get(group)
                {
                    tracing::info!(
                        group,
                        leader,
                        "leader broker silent; restarting the election timer"
                    );
                    raft.runtime_config().tick(true);
                    raft.runtime_config().elect(true);
                }
            }
            // Leaders: quiesce idle groups (checked less often than pings).
            if rounds.is_multiple_of(5) {
                for t in self.local_topics() {
                    let replicas: Vec<_> = t.replicas.read().values().cloned().collect();
                    for r in replicas {
                        if r.should_quiesce(QUIESCE_AFTER) {
                            let group = t.record.group(r.id);
                            tokio::spawn(async move { r.quiesce(group).await });
                        }
                    }
                }
            }
        }
    }

    /// Elects new leaders, without waiting for election timeouts, for the partitions (and
    /// the controller) whose leader was on broker `dead`, once `dead` refuses connections:
    /// its process is gone (a crash, an OOM kill, `kill -9`), so its leaderships are
    /// certainly over. A silent broker (a network partition, a stalled host) is left to the
    /// election timers, as in Raft.
    ///
    /// Per group only the follower with the most up-to-date log campaigns (it asks the other
    /// followers for theirs; lowest node id on a tie): two candidates at once would split
    /// the vote, and one with a shorter log would be refused.
    async fn take_over_from(self: Arc<Self>, dead: u64) {
        // openraft's followers refuse votes for the leader's lease (election_timeout_max)
        // after the last entries they had from it, and it died before it refused us.
        let partition_lease = ReplicaTiming::default().election_timeout_max;
        let controller_lease = self.controller.timing().election_timeout_max;
        tokio::time::sleep(partition_lease + TAKE_OVER_MARGIN).await;
        if !self.peers.refuses(dead) || self.shutdown.is_cancelled() {
            return;
        }
        let mut led = Vec::new();
        for (group, raft) in self.groups.all() {
            if let Some(voters) = orphaned_voters(&raft.metrics().borrow(), dead) {
                led.push((group, raft, voters));
            }
        }
        let campaign = self
            .best_placed(
                dead,
                led.iter().map(|(g, _, v)| (*g, v.clone())).collect(),
                |groups| {
                    let logs: Vec<_> = groups
                        .iter()
                        .filter_map(|g| self.groups.log(*g).map(|log| (*g, log)))
                        .collect();
                    // Reading a log's end waits for an append's fsync.
                    async move {
                        tokio::task::spawn_blocking(move || {
                            logs.into_iter()
                                .map(|(g, log)| (g, log.last_log_id()))
                                .collect()
                        })
                        .await
                        .unwrap_or_default()
                    }
                },
            )
            .await;
        let mut campaigns = 0;
        for (group, raft, _) in led {
            if campaign.contains(&group) {
                self.quiesced.remove(group);
                raft.runtime_config().tick(true);
                raft.runtime_config().elect(true);
                if raft.trigger().elect().await.is_ok() {
                    campaigns += 1;
                }
                continue;
            }
            // Not this follower's to win: if the one that should campaign has not won by
            // then, this one's election timer takes over (an idle group's was stopped).
            let broker = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(partition_lease * 2).await;
                let orphaned = raft.metrics().borrow().current_leader == Some(dead);
                if orphaned && broker.quiesced.remove(group) {
                    raft.runtime_config().tick(true);
                    raft.runtime_config().elect(true);
                }
            });
        }
        if campaigns > 0 {
            tracing::info!(
                broker = dead,
                partitions = campaigns,
                "campaigning for the partitions the downed broker led"
            );
        }
        // The controller group's lease is longer.
        tokio::time::sleep(controller_lease.saturating_sub(partition_lease)).await;
        let controller = &self.controller.raft;
        if !self.peers.refuses(dead) || self.shutdown.is_cancelled() {
            return;
        }
        let Some(voters) = orphaned_voters(&controller.metrics().borrow(), dead) else {
            return;
        };
        let campaign = self
            .best_placed(dead, vec![(CONTROLLER_GROUP, voters)], |_| async {
                BTreeMap::from([(CONTROLLER_GROUP, self.controller.last_log_id().await)])
            })
            .await;
        if campaign.contains(&CONTROLLER_GROUP) && controller.trigger().elect().await.is_ok() {
            tracing::info!(
                broker = dead,
                "campaigning for the controller leadership the downed broker held"
            );
        }
    }

    /// Of `groups` (with their voters) whose leader `dead` is gone, the ones where this
    /// broker's log is the most up-to-date among the voters that answer (lowest node id on a
    /// tie), provided they make a majority with it. `own` reads this broker's log ends; the
    /// other voters are asked meanwhile, one call per broker for all the groups.
    async fn best_placed<F, Fut>(
        &self,
        dead: u64,
        groups: Vec<(u64, Vec<u64>)>,
        own: F,
    ) -> std::collections::BTreeSet<u64>
    where
        F: FnOnce(Vec<u64>) -> Fut,
        Fut: std::future::Future<Output = BTreeMap<u64, Option<openraft::LogId<u64>>>>,
    {
        if groups.is_empty() {
            return Default::default();
        }
        let me = self.node_id() as u64;
        let mut asked: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (group, voters) in &groups {
            for v in voters.iter().filter(|v| **v != me && **v != dead) {
                asked.entry(*v).or_default().push(*group);
            }
        }
        let state = self.controller.state();
        let questions = asked.into_iter().filter_map(|(peer, groups)| {
            let address = state.brokers.get(&(peer as i32))?.raft_address.clone();
            let mut client = self.peers.client(&address).ok()?;
            Some(async move {
                let call = client.log_ends(sluice_proto::pb::LogEndsRequest { groups });
                let reply = tokio::time::timeout(LOG_ENDS_TIMEOUT, call).await;
                (peer, reply)
            })
        });
        let (own, replies) = tokio::join!(
            own(groups.iter().map(|(g, _)| *g).collect()),
            futures::future::join_all(questions)
        );
        let mut ends: BTreeMap<(u64, u64), Option<openraft::LogId<u64>>> = BTreeMap::new();
        for (peer, reply) in replies {
            let Ok(Ok(reply)) = reply else {
                continue;
            };
            for (group, bytes) in reply.into_inner().last_log_ids {
                if let Ok(last) = crate::controller::network::decode(&bytes) {
                    ends.insert((group, peer), last);
                }
            }
        }
        groups
            .into_iter()
            .filter(|(group, voters)| {
                let Some(&mine) = own.get(group) else {
                    return false;
                };
                let answers: Vec<_> = voters
                    .iter()
                    .filter_map(|v| ends.get(&(*group, *v)).map(|last| (*v, *last)))
                    .collect();
                // Without a majority answering no election can succeed yet: the timers will.
                let quorum = voters.len() / 2 + 1;
                answers.len() + 1 >= quorum
                    && answers.iter().all(|(v, last)| {
                        (mine, std::cmp::Reverse(me)) > (*last, std::cmp::Reverse(*v))
                    })
            })
            .map(|(group, _)| group)
            .collect()
    }

    /// Stops every partition Raft group (at shutdown).
    pub async fn stop_replicas(&self) {
        for t in self.local_topics() {
            let replicas: Vec<_> = t.replicas.read().values().cloned().collect();
            for r in replicas {
                self.groups.remove(t.record.group(r.id));
                r.shutdown().await;
            }
        }
    }

    /// Stops serving a deleted topic and removes its data.
    fn drop_topic(&self, topic: &LocalTopic) {
        {
            let mut local = self.local.write();
            if local
                .get(&topic.record.name)
                .is_some_and(|t| t.record.topic_id == topic.record.topic_id)
            {
                local.remove(&topic.record.name);
            }
        }
        let replicas: Vec<Arc<Replica>> = topic.replicas.read().values().cloned().collect();
        for r in &replicas {
            self.groups.remove(topic.record.group(r.id));
            let raft = r.raft.clone();
            // The group stops in the background; its files are removed below.
            tokio::runtime::Handle::current().spawn(async move {
                let _ = raft.shutdown().await;
            });
        }
        let ids: Vec<i32> = topic
            .partitions
            .keys()
            .copied()
            .chain(replicas.iter().map(|r| r.id))
            .collect();
        for p in &ids {
            let dir = self.partition_dir(&topic.record.name, *p);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), "deleted the partition of a deleted topic")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(dir = %dir.display(), cause = %e, "cannot delete a deleted topic's partition")
                }
            }
        }
    }

    fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.config
            .data_dir
            .join("logs")
            .join(format!("{topic}-{partition}"))
    }

    /// Segment settings from a topic's config.
    fn log_options(&self, config: &TopicConfig) -> LogOptions {
        LogOptions {
            segment_bytes: config.segment_bytes as u64,
            segment_ms: config.segment_ms,
            index_interval_bytes: self.config.index_interval_bytes,
        }
    }

    /// Opens the partitions `assigned` here of a topic; they read `config` if given (the
    /// topic's partitions already open here), else a config of their own.
    fn open_topic(
        &self,
        record: TopicRecord,
        assigned: &[i32],
        config: Option<LiveConfig>,
    ) -> Result<(LocalTopic, Vec<PendingReplica>)> {
        let settings =
            TopicConfig::from_map(&record.config, record.replication_factor).map_err(|e| {
                Error::Internal(format!(
                    "stored config of topic '{}' is invalid: {e}",
                    record.name
                ))
            })?;
        let options = self.log_options(&settings);
        let config = config.unwrap_or_else(|| LiveConfig::new(settings));
        let topic_name: Arc<str> = Arc::from(record.name.as_str());
        let mut partitions = BTreeMap::new();
        let mut pending = Vec::new();
        for &p in assigned {
            let dir = self.partition_dir(&record.name, p);
            self.claim_dir(&dir, &record.topic_id)?;
            if record.replicated() {
                let stores = ReplicaStores::open(
                    &dir,
                    options,
                    self.config.producer_limits(),
                    self.raft_tails.clone(),
                )
                .map_err(|e| {
                    Error::Internal(format!("{}-{p}: opening the replica: {e}", record.name))
                })?;
                pending.push(PendingReplica {
                    record: record.clone(),
                    config: config.clone(),
                    partition: p,
                    stores,
                });
                continue;
            }
            let log =
                SegmentLog::open(&dir, options, now_ms()).map_err(|source| Error::Storage {
                    topic: record.name.clone(),
                    partition: p,
                    source,
                })?;
            let partition = Partition::open(
                topic_name.clone(),
                p,
                config.clone(),
                Box::new(log),
                self.config.flush,
                &dir,
                self.config.producer_limits(),
            )?;
            partitions.insert(p, Arc::new(partition));
        }
        Ok((
            LocalTopic {
                record,
                config,
                partitions,
                replicas: RwLock::new(BTreeMap::new()),
            },
            pending,
        ))
    }

    /// Makes `dir` belong to topic incarnation `topic_id`: a directory left by an earlier
    /// topic of the same name (deleted while this broker was down) is removed first.
    fn claim_dir(&self, dir: &std::path::Path, topic_id: &str) -> Result<()> {
        let meta = dir.join(PARTITION_META_FILE);
        let io = |e: std::io::Error| {
            Error::Internal(format!("partition directory {}: {e}", dir.display()))
        };
        match std::fs::read_to_string(&meta) {
            Ok(owner) if owner.trim() == topic_id => return Ok(()),
            Ok(owner) => {
                tracing::warn!(dir = %dir.display(), old = %owner.trim(), new = %topic_id,
                    "removing the data of an earlier topic with the same name");
                std::fs::remove_dir_all(dir).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::write(&meta, topic_id).map_err(io)?;
        Ok(())
    }

    /// Brokers and their client addresses. This broker's own entry is always its current
    /// address, even before its registration (after a restart on a new port) is committed.
    pub fn known_brokers(&self) -> BTreeMap<i32, String> {
        let mut out: BTreeMap<i32, String> = self
            .controller
            .state()
            .brokers
            .values()
            .map(|b| (b.node_id, b.address.clone()))
            .collect();
        out.insert(self.node_id(), self.addresses.client.clone());
        out
    }

    /// A partition's leader: what this broker's own replica of it knows from its Raft group
    /// (freshest, right after an election), else what the controller recorded.
    pub fn current_leader(&self, record: &TopicRecord, partition: i32) -> Option<i32> {
        let local = self
            .local_topic(&record.name)
            .filter(|t| t.record.topic_id == record.topic_id);
        if let Some(r) = local.and_then(|t| t.replicas.read().get(&partition).cloned())
            && let Some(leader) = r.leader()
        {
            return Some(leader);
        }
        record.leader(partition)
    }

    /// The metadata of a topic, or UNKNOWN_TOPIC_OR_PARTITION.
    pub fn topic_record(&self, name: &str) -> Result<TopicRecord> {
        self.controller
            .state()
            .topics
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic(name.to_string()))
    }

    /// Catches up with the controller's committed metadata when `found` says this broker
    /// does not know the topic or partition asked for: its metadata may simply be behind (a
    /// broker that just restarted, a topic created a moment ago through another broker).
    /// Returns whether it caught up (then ask again: the answer is authoritative), or the
    /// original answer when it was not about an unknown topic; a broker that cannot catch
    /// up in time answers the retriable [`Error::MetadataBehind`], never "unknown topic".
    pub async fn catch_up_if_unknown<T>(&self, topic: &str, found: &Result<T>) -> Result<bool> {
        if !matches!(
            found,
            Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. })
        ) {
            return Ok(false);
        }
        self.controller
            .catch_up(self.config.metadata_catch_up_timeout)
            .await
            .map_err(|e| Error::MetadataBehind {
                topic: topic.to_string(),
                node: self.node_id(),
                cause: e.to_string(),
            })?;
        Ok(true)
    }

    /// [`Broker::partition`], caught up with the controller first when this broker does
    /// not know the topic or partition.
    pub async fn partition_current(&self, topic: &str, partition: i32) -> Result<PartitionRef> {
        let found = self.partition(topic, partition);
        if self.catch_up_if_unknown(topic, &found).await? {
            return self.partition(topic, partition);
        }
        found
    }

    /// [`Broker::partition`] for each of `asked`, with one catch-up with the controller
    /// when this broker does not know some of them.
    pub async fn partitions_current<'a>(
        &self,
        asked: impl IntoIterator<Item = (&'a str, i32)>,
    ) -> Vec<Result<PartitionRef>> {
        let asked: Vec<_> = asked.into_iter().collect();
        let mut found: Vec<_> = asked.iter().map(|(t, p)| self.partition(t, *p)).collect();
        let unknown = |r: &Result<PartitionRef>| {
            matches!(
                r,
                Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. })
            )
        };
        let Some(first) = found.iter().position(unknown) else {
            return found;
        };
        let caught_up = self
            .controller
            .catch_up(self.config.metadata_catch_up_timeout)
            .await
            .map_err(|e| e.to_string());
        for (i, (topic, partition)) in asked.iter().enumerate().skip(first) {
            if !unknown(&found[i]) {
                continue;
            }
            found[i] = match &caught_up {
                Ok(()) => self.partition(topic, *partition),
                Err(cause) => Err(Error::MetadataBehind {
                    topic: topic.to_string(),
                    node: self.node_id(),
                    cause: cause.clone(),
                }),
            };
        }
        found
    }

    /// [`Broker::topic_record`], caught up with the controller first when this broker does
    /// not know the topic.
    pub async fn topic_record_current(&self, name: &str) -> Result<TopicRecord> {
        let found = self.topic_record(name);
        if self.catch_up_if_unknown(name, &found).await? {
            return self.topic_record(name);
        }
        found
    }

    /// This broker's partitions of a topic, if it has any.
    pub fn local_topic(&self, name: &str) -> Option<Arc<LocalTopic>> {
        self.local.read().get(name).cloned()
    }

    pub fn local_topics(&self) -> Vec<Arc<LocalTopic>> {
        self.local.read().values().cloned().collect()
    }

    /// A partition this broker leads, or the error that tells the client where to go.
    pub fn partition(&self, topic: &str, partition: i32) -> Result<PartitionRef> {
        let local = self.local.read().get(topic).cloned();
        let state = self.controller.state();
        if let Some(t) = local {
            if let Some(p) = t.partitions.get(&partition) {
                return Ok(PartitionRef::Local(p.clone()));
            }
            if let Some(r) = t.replicas.read().get(&partition).cloned() {
                r.check_leader(&state)?;
                return Ok(PartitionRef::Replica(r));
            }
        }
        let record = state
            .topics
            .get(topic)
            .ok_or_else(|| Error::UnknownTopic(topic.to_string()))?;
        if partition < 0 || partition >= record.partitions {
            return Err(Error::UnknownPartition {
                topic: topic.to_string(),
                partition,
                count: record.partitions,
            });
        }
        let unavailable = || Error::LeaderNotAvailable {
            topic: topic.to_string(),
            partition,
        };
        let leader = record.leader(partition).ok_or_else(unavailable)?;
        if leader == self.node_id() {
            return Err(unavailable());
        }
        let address = state
            .brokers
            .get(&leader)
            .map(|b| b.address.clone())
            .ok_or_else(unavailable)?;
        Err(Error::NotLeader {
            topic: topic.to_string(),
            partition,
            leader,
            address,
        })
    }

    /// Queues a partition for the flusher after a write.
    pub fn written(&self, partition: &Arc<Partition>) {
        self.flusher.enqueue(partition);
    }

    /// Validates a topic, places its partitions on registered brokers, and commits it
    /// through the controller. Returns once this broker has applied it.
    pub async fn create_topic(
        self: &Arc<Self>,
        name: String,
        partitions: i32,
        replication_factor: i32,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<TopicRecord> {
        sluice_proto::validate_topic_name(&name).map_err(Error::InvalidTopic)?;
        let max = self.config.max_partitions_per_topic;
        if partitions < 1 || partitions > max {
            return Err(Error::InvalidPartitions(format!(
                "topic '{name}': partitions must be between 1 and {max}, got {partitions}"
            )));
        }
        // Right after start this broker may not have finished registering.
        self.await_local(|| {
            self.controller
                .state()
                .brokers
                .contains_key(&self.node_id())
        })
        .await;
        let rf = if replication_factor == -1 {
            1
        } else {
            replication_factor
        };
        let brokers = self.placement_brokers(&name, rf).await?;
        let state = self.controller.state();
        TopicConfig::from_map(&overrides, rf)
            .map_err(|e| Error::InvalidConfig(format!("topic '{name}': {e}")))?;
        if state.topics.contains_key(&name) {
            return Err(Error::TopicExists(name));
        }
        let replicas = place(&name, partitions, rf, &brokers);
        let record = TopicRecord {
            name: name.clone(),
            partitions,
            replication_factor: rf,
            config: overrides,
            created_ms: now_ms(),
            topic_id: format!("{name}-{}-{}", now_ms(), self.node_id()),
            replicas,
            group_base: 0,
            groups: Vec::new(),
            leaders: Vec::new(),
        };
        if validate_only {
            return Ok(record);
        }
        let proposed = self
            .controller
            .propose(MetaCommand::CreateTopic(record.clone()))
            .await
            .map_err(|e| {
                change_outcome(
                    e,
                    &name,
                    "created",
                    "; creating it again answers TOPIC_ALREADY_EXISTS if it was",
                )
            })?;
        match proposed {
            MetaResponse::Ok => {}
            MetaResponse::Rejected { code, .. } if code == "TOPIC_ALREADY_EXISTS" => {
                // The controller may have applied an earlier attempt of this very call (a
                // forward whose answer was lost, then retried): that is a success.
                self.await_local(|| self.controller.state().topics.contains_key(&name))
                    .await;
                let ours = self
                    .controller
                    .state()
                    .topics
                    .get(&name)
                    .is_some_and(|t| t.topic_id == record.topic_id);
                if !ours {
                    return Err(Error::TopicExists(name));
                }
            }
            MetaResponse::Rejected { message, .. } => return Err(Error::Rejected(message)),
            other => {
                return Err(Error::Internal(format!(
                    "the controller answered creating '{name}' with {other:?}"
                )));
            }
        }
        self.await_local(|| {
            self.local
                .read()
                .get(&name)
                .is_some_and(|t| t.record.topic_id == record.topic_id)
                || self
                    .controller
                    .state()
                    .topics
                    .get(&name)
                    .is_some_and(|t| t.topic_id == record.topic_id)
                    && !record.replicas.iter().any(|r| r.contains(&self.node_id()))
        })
        .await;
        if record.replicated() {
            // Clients route by the leaders the controller knows: wait (bounded) until every
            // partition's group has elected and reported one, so the topic is usable at once.
            self.await_local(|| {
                self.controller.state().topics.get(&name).is_some_and(|t| {
                    t.topic_id == record.topic_id
                        && t.leaders.len() == t.partitions as usize
                        && t.leaders.iter().all(Option::is_some)
                })
            })
            .await;
        }
        tracing::info!(topic = %name, partitions, replication_factor = rf, "created topic");
        Ok(record)
    }

    /// The brokers new replicas of topic `name` may go to: the live ones, of those
    /// registered as of the controller's latest commit (this broker's metadata may be
    /// behind: a broker that registered a moment ago through another one), or
    /// INVALID_REPLICATION_FACTOR when fewer than `rf` are live.
    async fn placement_brokers(&self, name: &str, rf: i32) -> Result<Vec<i32>> {
        // If it cannot catch up, the proposal that follows fails and says why.
        if let Err(e) = self
            .controller
            .catch_up(self.config.metadata_catch_up_timeout)
            .await
        {
            tracing::debug!(topic = %name, cause = %e, "catching up before placing replicas");
        }
        // A broker this one has not heard from yet (it just started) gets a moment to answer
        // a ping.
        let deadline = tokio::time::Instant::now() + LEADER_SILENCE * 2;
        let brokers = loop {
            let live = self.live_brokers();
            let registered = self.controller.state().brokers.len();
            if live.len() >= registered || tokio::time::Instant::now() >= deadline {
                break live;
            }
            tokio::time::sleep(PING_INTERVAL / 2).await;
        };
        let live = brokers.len() as i32;
        if rf < 1 || rf > live {
            let down: Vec<i32> = self
                .controller
                .state()
                .brokers
                .keys()
                .filter(|b| !brokers.contains(b))
                .copied()
                .collect();
            let down = if down.is_empty() {
                String::new()
            } else {
                format!(" (registered but not answering: {down:?})")
            };
            return Err(Error::InvalidReplicationFactor(format!(
                "topic '{name}': replication factor {rf} is not possible with {live} live broker(s) {brokers:?}{down}; \
                 use a value between 1 and {live}"
            )));
        }
        Ok(brokers)
    }

    /// Waits (bounded) until this broker has applied a metadata change, so that a client
    /// that created a topic here can use it here right away.
    async fn await_local(&self, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Deletes a topic through the controller; every broker then removes its data.
    pub async fn delete_topic(self: &Arc<Self>, name: &str) -> Result<()> {
        self.topic_record_current(name).await?;
        let proposed = self
            .controller
            .propose(MetaCommand::DeleteTopic {
                name: name.to_string(),
            })
            .await
            .map_err(|e| change_outcome(e, name, "deleted", ""))?;
        match proposed {
            MetaResponse::Ok => {}
            MetaResponse::Rejected { .. } => return Err(Error::UnknownTopic(name.to_string())),
            other => {
                return Err(Error::Internal(format!(
                    "the controller answered deleting '{name}' with {other:?}"
                )));
            }
        }
        self.await_local(|| {
            !self.local.read().contains_key(name)
                && !self.controller.state().topics.contains_key(name)
        })
        .await;
        tracing::info!(topic = %name, "deleted topic");
        Ok(())
    }

    /// Deletes expired segments until shutdown.
    pub async fn run_retention(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.retention_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for topic in this.local_topics() {
                    for p in topic.partitions.values() {
                        if let Err(e) = p.enforce_retention(now_ms()) {
                            tracing::error!(topic = %p.topic, partition = p.id, cause = %e, "retention failed");
                        }
                    }
                }
            })
            .await;
            for topic in self.local_topics() {
                let replicas: Vec<_> = topic.replicas.read().values().cloned().collect();
                for r in replicas {
                    if let Err(e) = r.enforce_retention(now_ms()).await {
                        tracing::error!(topic = %r.topic, partition = r.id, cause = %e, "retention failed");
                    }
                }
            }
        }
    }

    /// Stops the flusher and closes every log cleanly. Blocking.
    pub fn close(&self) {
        self.shutdown.cancel();
        self.flusher.stop.store(true, Ordering::Release);
        self.flusher.wake.notify_all();
        if let Some(handle) = self.flusher_thread.lock().take() {
            let _ = handle.join();
        }
        for topic in self.local_topics() {
            for p in topic.partitions.values() {
                if let Err(e) = p.close() {
                    tracing::error!(topic = %p.topic, partition = p.id, cause = %e, "closing the log failed; it will be recovered on the next start");
                }
            }
        }
        if let Err(e) = self.metadata.flush() {
            tracing::error!(cause = %e, "flushing the metadata store failed");
        }
        tracing::info!("broker closed cleanly");
    }
}

/// Words a failed proposal about `topic`: certainly not `done` (nothing changed), or maybe
/// `done` (the outcome is unknown; `then` says what a retry answers).
fn change_outcome(e: Error, topic: &str, done: &str, then: &str) -> Error {
    match e {
        Error::OutcomeUnknown(why) => Error::OutcomeUnknown(format!(
            "topic '{topic}' may have been {done}: {why}. Check with `sluice topics describe {topic}`{then}"
        )),
        Error::Timeout(why) => Error::Timeout(format!("topic '{topic}' was not {done}: {why}")),
        other => other,
    }
}

/// Spreads partitions over brokers: partition `p`'s replicas are `rf` consecutive brokers
/// starting at a per-topic offset plus `p`, so partitions and preferred leaders are
/// balanced across brokers and topics do not all start on the same broker.
pub fn place(topic: &str, partitions: i32, rf: i32, brokers: &[i32]) -> Vec<Vec<i32>> {
    let n = brokers.len();
    let start = topic
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % n.max(1);
    (0..partitions as usize)
        .map(|p| {
            (0..rf as usize)
                .map(|r| brokers[(start + p + r) % n])
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn placement_spreads_partitions_and_leaders() {
        let brokers = [1, 2, 3];
        let replicas = place("orders", 6, 1, &brokers);
        let mut per_broker = BTreeMap::new();
        for r in &replicas {
            *per_broker.entry(r[0]).or_insert(0) += 1;
        }
        assert_eq!(per_broker.values().collect::<Vec<_>>(), vec![&2, &2, &2]);
        let three = place("orders", 4, 3, &brokers);
        assert!(
            three
                .iter()
                .all(|r| r.iter().collect::<HashSet<_>>().len() == 3),
            "{three:?}"
        );
    }
}
