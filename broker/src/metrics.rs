//! The broker's Prometheus metrics: what requests record as they are served (counts by
//! result, latency, bytes), held here per broker. What describes state (partitions' offsets,
//! in-sync replicas, controller, groups) is read at scrape time by `http`, not kept here.
//! A leaf: every layer may record into it.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A request's kind and, for produce, its acks (empty otherwise): bounded label values.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub request: &'static str,
    pub acks: &'static str,
}

/// A request's kind and how it ended: `NONE` or a Kafka error name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub request: &'static str,
    pub code: &'static str,
}

/// Latency buckets: 100 µs to ~52 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// A stage of a write's way through its partition's Raft group, timed where it happens
/// (`sluice bench sweep --breakdown` reads them): the series of
/// `sluice_commit_stage_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// A produce request on the leader, received to answered.
    ProduceRequest,
    /// A batch proposed to its leader's log append starting (openraft's core between).
    LeaderQueue,
    /// The leader's append called to running on the blocking pool.
    LeaderAppendHop,
    LeaderWrite,
    LeaderFsync,
    /// An AppendEntries with entries, sent by the leader to answered.
    ReplicationRoundTrip,
    /// An AppendEntries with entries, received by a follower to answered.
    FollowerAppendEntries,
    FollowerWrite,
    FollowerFsync,
    /// Committed entries applied to a replica's state machine.
    Apply,
    /// A batch proposed to committed and applied on its leader.
    Committed,
}

impl Stage {
    const ALL: [Stage; 11] = [
        Stage::ProduceRequest,
        Stage::LeaderQueue,
        Stage::LeaderAppendHop,
        Stage::LeaderWrite,
        Stage::LeaderFsync,
        Stage::ReplicationRoundTrip,
        Stage::FollowerAppendEntries,
        Stage::FollowerWrite,
        Stage::FollowerFsync,
        Stage::Apply,
        Stage::Committed,
    ];

    fn label(self) -> &'static str {
        match self {
            Stage::ProduceRequest => "produce_request",
            Stage::LeaderQueue => "leader_queue",
            Stage::LeaderAppendHop => "leader_append_hop",
            Stage::LeaderWrite => "leader_write",
            Stage::LeaderFsync => "leader_fsync",
            Stage::ReplicationRoundTrip => "replication_round_trip",
            Stage::FollowerAppendEntries => "follower_append_entries",
            Stage::FollowerWrite => "follower_write",
            Stage::FollowerFsync => "follower_fsync",
            Stage::Apply => "apply",
            Stage::Committed => "committed",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

/// Stage buckets: 10 µs to ~15 s, by half again: fine enough for a sub-millisecond fsync.
fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00001, 1.5, 36))
}

/// The broker's stage series (cheap clones). A default one records into series nobody
/// reads (tests, tools).
#[derive(Debug, Clone)]
pub(crate) struct Stages(Arc<[Histogram; 11]>);

impl Default for Stages {
    fn default() -> Self {
        Stages(Arc::new(std::array::from_fn(|_| stage_histogram())))
    }
}

impl Stages {
    pub(crate) fn observe(&self, stage: Stage, took: Duration) {
        // `ALL` lists the stages in declaration order.
        self.0[stage as usize].observe(took.as_secs_f64());
    }
}

/// What partition replicas record (cheap clones of the broker's series).
#[derive(Debug, Clone)]
pub(crate) struct RaftMetrics {
    leaderships: Counter,
    commit: Histogram,
    stages: Stages,
}

impl RaftMetrics {
    /// A replica here became its partition's leader.
    pub(crate) fn leadership(&self) {
        self.leaderships.inc();
    }

    /// A batch proposed by a leader here was committed by a quorum after `took`.
    pub(crate) fn committed(&self, took: Duration) {
        self.commit.observe(took.as_secs_f64());
        self.stages.observe(Stage::Committed, took);
    }
}

/// One broker's request metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    raft: RaftMetrics,
    requests: Family<ResultLabels, Counter>,
    durations: Family<RequestLabels, Histogram, fn() -> Histogram>,
    produce_bytes: Counter,
    fetch_bytes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<ResultLabels, Counter>::default();
        let durations = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let produce_bytes = Counter::default();
        let fetch_bytes = Counter::default();
        registry.register(
            "sluice_requests",
            "Client requests served, by request and result (NONE, or the Kafka error name)",
            requests.clone(),
        );
        registry.register(
            "sluice_request_duration_seconds",
            "Time to answer a client request (produce by acks: all includes replication)",
            durations.clone(),
        );
        registry.register(
            "sluice_produce_bytes",
            "Record batch bytes accepted by produce requests",
            produce_bytes.clone(),
        );
        registry.register(
            "sluice_fetch_bytes",
            "Record batch bytes returned by fetch requests",
            fetch_bytes.clone(),
        );
        let stage_family =
            Family::<StageLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                stage_histogram,
            );
        let stages = Stages(Arc::new(Stage::ALL.map(|stage| {
            stage_family
                .get_or_create(&StageLabels {
                    stage: stage.label(),
                })
                .clone()
        })));
        registry.register(
            "sluice_commit_stage_seconds",
            "Where a write's time goes, by stage of its way through the partition's Raft group (sluice bench sweep --breakdown)",
            stage_family,
        );
        let raft = RaftMetrics {
            leaderships: Counter::default(),
            commit: latency_histogram(),
            stages,
        };
        registry.register(
            "sluice_raft_leaderships",
            "Times a partition replica on this broker became its partition's leader (leader changes)",
            raft.leaderships.clone(),
        );
        registry.register(
            "sluice_raft_commit_duration_seconds",
            "Time from a leader here proposing a batch to its commit by a quorum (leader and follower appends, fsyncs and the round trip)",
            raft.commit.clone(),
        );
        Metrics {
            registry,
            raft,
            requests,
            durations,
            produce_bytes,
            fetch_bytes,
        }
    }

    /// The series partition replicas record into.
    pub(crate) fn raft(&self) -> RaftMetrics {
        self.raft.clone()
    }

    /// The commit-path stage series.
    pub(crate) fn stages(&self) -> Stages {
        self.raft.stages.clone()
    }

    /// One write spent `took` in `stage` here.
    pub(crate) fn stage(&self, stage: Stage, took: Duration) {
        self.raft.stages.observe(stage, took);
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// One request answered after `took`, with `code` (`None`: success).
    pub(crate) fn request(
        &self,
        request: &'static str,
        acks: &'static str,
        took: Duration,
        code: Option<&'static str>,
    ) {
        self.requests
            .get_or_create(&ResultLabels {
                request,
                code: code.unwrap_or("NONE"),
            })
            .inc();
        self.durations
            .get_or_create(&RequestLabels { request, acks })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn produced(&self, bytes: usize) {
        self.produce_bytes.inc_by(bytes as u64);
    }

    pub(crate) fn fetched(&self, bytes: usize) {
        self.fetch_bytes.inc_by(bytes as u64);
    }
}

/// The acks label of a produce request.
pub(crate) fn acks_label(acks: i32) -> &'static str {
    match acks {
        0 => "0",
        1 => "1",
        -1 => "all",
        _ => "invalid",
    }
}
