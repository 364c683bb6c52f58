//! [`Broker`]: what this broker holds and serves. Cluster metadata (brokers, topics,
//! assignments) comes from the [`Controller`]; a reconciler opens the partitions assigned
//! here and removes those of deleted topics. This file holds the broker's state, its start
//! (open, registration) and close, and the flusher; each other concern is a child module,
//! an `impl Broker` block of its own:
//! - `routing`: this broker's partitions, the leaders it knows, catching up with the
//!   controller before calling a topic unknown.
//! - `reconcile`: opening, growing, reconfiguring and dropping partitions as metadata changes.
//! - `topics`: create and delete through the controller, replica placement.
//! - `alter`: live topic changes (config, partitions, replication factor).
//! - `reassign`: partition leaders moving their groups to new replicas.
//! - `drain`: moving every replica off brokers that are to leave.
//! - `liveness`: peer liveness and crash takeover.
//! - `leadership`: preferred-leader rebalance, controlled-shutdown hand-off.
//! - `producer_ids`: idempotent producer id blocks.
//! - `retention`: deleting expired segments.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use sluice_proto::TopicConfig;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, FlushPolicy};
use crate::controller::{
    BrokerRecord, ClusterState, Controller, ControllerTiming, MetaCommand, MetaResponse,
};
use crate::coordinator::{Coordinator, CoordinatorConfig};
use crate::error::{Error, Result};
use crate::live_config::LiveConfig;
use crate::metadata::{MetadataStore, TopicRecord};
use crate::partition::Partition;
use crate::raft::{CONTROLLER_GROUP, Groups, PeerChannels, Quiesced, is_refused};
use crate::replica::group::{Replica, ReplicaStores, ReplicaTiming};
use crate::storage::{LogOptions, SegmentLog};

mod alter;
mod drain;
mod groups;
mod leadership;
mod liveness;
mod partition_ref;
mod producer_ids;
mod reassign;
mod reconcile;
mod retention;
mod routing;
mod topics;
pub(crate) use alter::TopicChange;
pub(crate) use partition_ref::PartitionRef;

use crate::clock::now_ms;

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
pub(crate) struct LocalTopic {
    /// As opened; `config` is the current topic config (the record's may be older).
    pub record: TopicRecord,
    pub config: LiveConfig,
    pub partitions: BTreeMap<i32, Arc<Partition>>,
    pub replicas: RwLock<BTreeMap<i32, Arc<Replica>>>,
}

impl LocalTopic {
    /// Partition `p` as served here, whichever kind, if this broker holds it.
    pub(crate) fn partition(&self, p: i32) -> Option<PartitionRef> {
        match self.partitions.get(&p) {
            Some(local) => Some(PartitionRef::Local(local.clone())),
            None => self
                .replicas
                .read()
                .get(&p)
                .cloned()
                .map(PartitionRef::Replica),
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
    /// Added to an existing group (a replication factor change): it must not initialize.
    joining: bool,
}

/// Where this broker is reachable.
#[derive(Debug, Clone)]
pub(crate) struct Addresses {
    /// host:port for clients.
    pub client: String,
    /// host:port for other brokers.
    pub raft: String,
}

#[derive(Debug)]
pub(crate) struct Broker {
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
    /// Consumer groups of the `__consumer_offsets` partitions led here.
    pub coordinator: Coordinator,
    pub shutdown: CancellationToken,
    /// Every background task of this broker (loops, takeovers, moves, group stops): the
    /// server waits for them, bounded, when it stops. Each loop ends on `shutdown`; the
    /// others are bounded by their own timeouts or end with their Raft group.
    pub tasks: tokio_util::task::TaskTracker,
    /// Request metrics, for `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// Set once the logs are open and the client listener serves (`/readyz`).
    pub serving: std::sync::atomic::AtomicBool,
}

/// How long a new leader of a `__consumer_offsets` partition waits for its log to be
/// committed before answering COORDINATOR_LOAD_IN_PROGRESS (clients retry).
const COORDINATOR_LOAD_TIMEOUT: Duration = Duration::from_secs(5);

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
    pub(crate) async fn open(
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
        let metrics = crate::metrics::Metrics::new();
        let peers = PeerChannels::with_stages(metrics.stages());
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
        let coordinator = Coordinator::new(CoordinatorConfig {
            offset_metadata_max_bytes: config.offset_metadata_max_bytes,
            load_timeout: COORDINATOR_LOAD_TIMEOUT,
            max_batch_bytes: config.max_request_bytes,
            timeouts: crate::coordinator::Timeouts {
                session: config.group_session_timeout,
                rebalance: config.group_rebalance_timeout,
            },
        });
        let broker = Arc::new(Broker {
            metrics,
            serving: std::sync::atomic::AtomicBool::new(false),
            coordinator,
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
            tasks: tokio_util::task::TaskTracker::new(),
        });
        Ok(broker)
    }

    /// Opens the partitions the metadata assigns here (recovering them if the last run
    /// crashed), then starts the reconciler and the registration of this broker.
    pub(crate) async fn open_logs(self: &Arc<Self>) -> Result<()> {
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
        broker.tasks.spawn(broker.clone().run_reconciler());
        broker.tasks.spawn(broker.clone().register());
        broker.tasks.spawn(broker.clone().run_liveness());
        broker.tasks.spawn(broker.clone().run_leader_rebalance());
        broker.tasks.spawn(broker.clone().run_reassignments());
        broker
            .tasks
            .spawn(broker.controller.clone().log_leadership());
        Ok(())
    }

    /// This broker and the registered brokers that answered a ping recently.
    pub(crate) fn live_brokers(&self) -> Vec<i32> {
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

    pub(crate) fn node_id(&self) -> i32 {
        self.config.node_id
    }

    /// The controller leader if it leads with a quorum as this broker can tell (see
    /// [`Controller::leader_with_quorum`]): none while the quorum is lost.
    pub(crate) fn controller_leader(&self) -> Option<i32> {
        self.controller.leader_with_quorum(|b| {
            self.peers
                .last_answer(b as u64)
                .is_some_and(|t| t.elapsed() <= LEADER_SILENCE)
        })
    }

    /// The cluster id: the controller's once known, this data directory's until then.
    pub(crate) fn cluster_id(&self) -> String {
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

    /// Queues a partition for the flusher after a write.
    pub(crate) fn written(&self, partition: &Arc<Partition>) {
        self.flusher.enqueue(partition);
    }

    /// Stops the flusher and closes every log cleanly. Blocking.
    pub(crate) fn close(&self) {
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
