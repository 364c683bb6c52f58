//! Broker configuration: defaults, then a YAML file (`--config`), then `SLUICE_*`
//! environment variables, then flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

pub const DEFAULT_NODE_ID: i32 = 1;
pub const DEFAULT_DATA_DIR: &str = "./sluice-data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9092";
/// Where `/metrics` and the health endpoints are served by default (Redpanda's admin port).
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9644";
pub const DEFAULT_FLUSH: &str = "always";
pub const DEFAULT_INDEX_INTERVAL_BYTES: u64 = 4096;
pub const DEFAULT_RETENTION_CHECK_INTERVAL: &str = "5m";
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_MAX_FETCH_WAIT: &str = "30s";
pub const DEFAULT_MAX_PARTITIONS_PER_TOPIC: i32 = 10_000;
pub const DEFAULT_OFFSETS_TOPIC_PARTITIONS: i32 = 50;
pub const DEFAULT_OFFSETS_TOPIC_REPLICATION_FACTOR: i32 = 3;
pub const DEFAULT_OFFSET_METADATA_MAX_BYTES: usize = 4096;
pub const DEFAULT_OFFSETS_TOPIC_SEGMENT_BYTES: i64 = 100 * 1024 * 1024;
pub const DEFAULT_GROUP_SESSION_TIMEOUT: &str = "45s";
pub const DEFAULT_GROUP_HEARTBEAT_INTERVAL: &str = "2s";
pub const DEFAULT_GROUP_REBALANCE_TIMEOUT: &str = "5m";
pub const DEFAULT_METADATA_CACHE_BYTES: u64 = 32 * 1024 * 1024;
pub const DEFAULT_RAFT_TAIL_CACHE_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_SHUTDOWN_TIMEOUT: &str = "30s";
pub const DEFAULT_CONTROLLED_SHUTDOWN_TIMEOUT: &str = "10s";
pub const DEFAULT_METADATA_CATCH_UP_TIMEOUT: &str = "3s";
pub const DEFAULT_REPLICA_LAG_TIME_MAX: &str = "10s";
pub const DEFAULT_LEADER_REBALANCE_INTERVAL: &str = "30s";
pub const DEFAULT_MAX_PRODUCERS_PER_PARTITION: usize = crate::producer_state::MAX_PRODUCERS;
pub const DEFAULT_PRODUCER_ID_EXPIRATION: &str = "24h";
pub const DEFAULT_PRODUCER_SEQUENCE_WAIT: &str = "250ms";

/// When appended data is forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fsync before acknowledging `acks=1`/`acks=all` writes and before consumers can read
    /// them. Concurrent writes share one fsync (group commit), across partitions too.
    Always,
    /// fsync in the background at this interval. Acknowledged writes survive a broker crash
    /// (they are in the OS page cache) but not a power loss within the interval.
    Interval(Duration),
}

impl FromStr for FlushPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "always" => Ok(FlushPolicy::Always),
            other => {
                match humantime::parse_duration(other.strip_prefix("interval:").unwrap_or(other)) {
                    Ok(d) if !d.is_zero() => Ok(FlushPolicy::Interval(d)),
                    _ => Err(format!(
                        "invalid flush policy '{s}': use 'always' or an interval such as '100ms'"
                    )),
                }
            }
        }
    }
}

impl std::fmt::Display for FlushPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlushPolicy::Always => f.write_str("always"),
            FlushPolicy::Interval(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

/// The broker's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: i32,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// What clients are told to connect to; defaults to the bound listen address.
    pub advertised_address: Option<String>,
    /// The controller voters, node id -> inter-broker address (Kafka's
    /// `controller.quorum.voters`). Empty: a single-broker cluster that is its own controller.
    pub controller_quorum_voters: BTreeMap<i32, String>,
    /// Inter-broker listener (Raft, forwarding); defaults to this node's voter address, or
    /// a free loopback port for a broker that is not a voter.
    pub raft_listen: Option<SocketAddr>,
    /// What other brokers are told to connect to; defaults to the bound inter-broker address.
    pub advertised_raft_address: Option<String>,
    /// HTTP listener for `/metrics`, `/livez`, `/readyz` and `/ready-to-stop`; `None`: off.
    pub http_listen: Option<SocketAddr>,
    pub flush: FlushPolicy,
    pub index_interval_bytes: u64,
    pub retention_check_interval: Duration,
    pub max_request_bytes: usize,
    pub max_fetch_wait: Duration,
    pub max_partitions_per_topic: i32,
    pub metadata_cache_bytes: u64,
    /// Memory for the newest entries of the partition Raft logs on this broker, so
    /// replication and apply read them without going to disk (at most 4 MiB per partition).
    pub raft_tail_cache_bytes: u64,
    pub shutdown_timeout: Duration,
    /// Kafka's `controlled.shutdown.enable`: on SIGTERM/SIGINT the broker first hands every
    /// partition it leads to an in-sync follower, for at most this long, so producers and
    /// consumers move over without noticing a failure. Zero turns it off.
    pub controlled_shutdown_timeout: Duration,
    /// A request naming a topic (or partition) this broker's metadata does not have waits
    /// this long for the broker to catch up with the controller before the broker calls
    /// it unknown; if it cannot, the answer is the retriable LEADER_NOT_AVAILABLE.
    pub metadata_catch_up_timeout: Duration,
    /// Kafka's `replica.lag.time.max.ms`: a follower not caught up for this long leaves the
    /// in-sync set.
    pub replica_lag_time_max: Duration,
    /// How often a leader that is not its partition's preferred leader (the first replica)
    /// hands leadership back once the preferred one is in sync (Kafka's
    /// `auto.leader.rebalance.enable` with `leader.imbalance.check.interval.seconds`).
    /// Zero turns it off.
    pub leader_rebalance_interval: Duration,
    /// Idempotent producers each partition remembers at most (least recently seen go
    /// first).
    pub max_producers_per_partition: usize,
    /// Kafka's `producer.id.expiration.ms`: an idle producer is forgotten after this long.
    pub producer_id_expiration: Duration,
    /// How long a batch that arrived ahead of its idempotent producer's sequence waits for
    /// the batches before it (the producer keeps up to 5 in flight) before it is refused
    /// with `OUT_OF_ORDER_SEQUENCE_NUMBER`.
    pub producer_sequence_wait: Duration,
    /// Partitions of `__consumer_offsets`, made when a group is first used (Kafka's
    /// `offsets.topic.num.partitions`). Fixed from then on: a group's partition is
    /// hash(group) modulo this.
    pub offsets_topic_partitions: i32,
    /// Its replication factor, or the live broker count when fewer (Kafka's
    /// `offsets.topic.replication.factor`); `min.insync.replicas` is 2 where it has 2 or more.
    pub offsets_topic_replication_factor: i32,
    /// Longest metadata string a committed offset may carry (`offset.metadata.max.bytes`).
    pub offset_metadata_max_bytes: usize,
    /// `segment.bytes` of `__consumer_offsets` (`offsets.topic.segment.bytes`): old commits
    /// are deleted a whole segment at a time, so smaller segments free space sooner.
    pub offsets_topic_segment_bytes: i64,
    /// A group member not heard from for this long is removed and its partitions go to the
    /// others (`group.consumer.session.timeout.ms`).
    pub group_session_timeout: Duration,
    /// How often members heartbeat (`group.consumer.heartbeat.interval.ms`): how soon a
    /// member learns of a partition to give up or take.
    pub group_heartbeat_interval: Duration,
    /// A member told to give up partitions that still owns them this long after is removed
    /// from the group and they go to their new owners (Kafka's `rebalance.timeout.ms`, there
    /// the consumer's `max.poll.interval.ms`): one stuck consumer cannot hold a partition
    /// back from the group for ever.
    pub group_rebalance_timeout: Duration,
}

impl Config {
    pub fn producer_limits(&self) -> crate::producer_state::ProducerLimits {
        crate::producer_state::ProducerLimits {
            max_producers: self.max_producers_per_partition,
            expiration: self.producer_id_expiration,
            sequence_wait: self.producer_sequence_wait,
        }
    }
}

fn dur(s: &str) -> Duration {
    humantime::parse_duration(s).expect("default durations are valid")
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: DEFAULT_NODE_ID,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: DEFAULT_LISTEN
                .parse()
                .expect("default listen address is valid"),
            advertised_address: None,
            controller_quorum_voters: BTreeMap::new(),
            raft_listen: None,
            advertised_raft_address: None,
            http_listen: Some(
                DEFAULT_HTTP_LISTEN
                    .parse()
                    .expect("default http address is valid"),
            ),
            flush: DEFAULT_FLUSH
                .parse()
                .expect("default flush policy is valid"),
            index_interval_bytes: DEFAULT_INDEX_INTERVAL_BYTES,
            retention_check_interval: dur(DEFAULT_RETENTION_CHECK_INTERVAL),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_fetch_wait: dur(DEFAULT_MAX_FETCH_WAIT),
            max_partitions_per_topic: DEFAULT_MAX_PARTITIONS_PER_TOPIC,
            metadata_cache_bytes: DEFAULT_METADATA_CACHE_BYTES,
            raft_tail_cache_bytes: DEFAULT_RAFT_TAIL_CACHE_BYTES,
            shutdown_timeout: dur(DEFAULT_SHUTDOWN_TIMEOUT),
            controlled_shutdown_timeout: dur(DEFAULT_CONTROLLED_SHUTDOWN_TIMEOUT),
            metadata_catch_up_timeout: dur(DEFAULT_METADATA_CATCH_UP_TIMEOUT),
            replica_lag_time_max: dur(DEFAULT_REPLICA_LAG_TIME_MAX),
            leader_rebalance_interval: dur(DEFAULT_LEADER_REBALANCE_INTERVAL),
            max_producers_per_partition: DEFAULT_MAX_PRODUCERS_PER_PARTITION,
            producer_id_expiration: dur(DEFAULT_PRODUCER_ID_EXPIRATION),
            producer_sequence_wait: dur(DEFAULT_PRODUCER_SEQUENCE_WAIT),
            offsets_topic_partitions: DEFAULT_OFFSETS_TOPIC_PARTITIONS,
            offsets_topic_replication_factor: DEFAULT_OFFSETS_TOPIC_REPLICATION_FACTOR,
            offset_metadata_max_bytes: DEFAULT_OFFSET_METADATA_MAX_BYTES,
            offsets_topic_segment_bytes: DEFAULT_OFFSETS_TOPIC_SEGMENT_BYTES,
            group_session_timeout: dur(DEFAULT_GROUP_SESSION_TIMEOUT),
            group_heartbeat_interval: dur(DEFAULT_GROUP_HEARTBEAT_INTERVAL),
            group_rebalance_timeout: dur(DEFAULT_GROUP_REBALANCE_TIMEOUT),
        }
    }
}

/// Parses `1@host:port,2@host:port` (Kafka's `controller.quorum.voters`).
pub fn parse_voters(s: &str) -> Result<BTreeMap<i32, String>, String> {
    let mut voters = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('@').ok_or_else(|| {
            format!("controller voter '{part}' is not ID@HOST:PORT (e.g. 1@127.0.0.1:9093)")
        })?;
        let id: i32 = id
            .parse()
            .map_err(|_| format!("controller voter '{part}': '{id}' is not a node id"))?;
        if !addr.contains(':') {
            return Err(format!("controller voter '{part}': '{addr}' has no port"));
        }
        if voters.insert(id, addr.to_string()).is_some() {
            return Err(format!("controller voter {id} is listed twice"));
        }
    }
    Ok(voters)
}

impl Config {
    /// Whether this broker is one of the controller voters.
    pub fn is_voter(&self) -> bool {
        self.controller_quorum_voters.contains_key(&self.node_id)
    }

    /// Where the inter-broker listener binds: explicit, else this node's voter address,
    /// else a free loopback port; none for a single-broker cluster.
    pub fn raft_bind_address(&self) -> Result<Option<SocketAddr>, String> {
        if self.controller_quorum_voters.is_empty() {
            return Ok(self.raft_listen);
        }
        if let Some(a) = self.raft_listen {
            return Ok(Some(a));
        }
        match self.controller_quorum_voters.get(&self.node_id) {
            Some(addr) => addr.parse().map(Some).map_err(|_| {
                format!(
                    "voter address '{addr}' of node {} is not IP:PORT; set --raft-listen",
                    self.node_id
                )
            }),
            None => Ok(Some("127.0.0.1:0".parse().expect("static address"))),
        }
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id < 0 {
            return Err(format!(
                "node_id {} is negative; use 0 or more",
                self.node_id
            ));
        }
        if self.index_interval_bytes == 0 {
            return Err("index_interval_bytes must be at least 1".into());
        }
        if self.max_request_bytes < 1024 {
            return Err(format!(
                "max_request_bytes {} is below the 1024-byte minimum",
                self.max_request_bytes
            ));
        }
        if self.max_producers_per_partition < 1 {
            return Err("max_producers_per_partition must be at least 1".into());
        }
        if self.max_partitions_per_topic < 1 {
            return Err("max_partitions_per_topic must be at least 1".into());
        }
        if self.offsets_topic_partitions < 1 {
            return Err("offsets_topic_partitions must be at least 1".into());
        }
        if self.group_heartbeat_interval.is_zero()
            || self.group_heartbeat_interval >= self.group_session_timeout
        {
            return Err(format!(
                "group_heartbeat_interval ({:?}) must be above zero and below group_session_timeout ({:?})",
                self.group_heartbeat_interval, self.group_session_timeout
            ));
        }
        if self.group_rebalance_timeout <= self.group_heartbeat_interval {
            return Err(format!(
                "group_rebalance_timeout ({:?}) must be above group_heartbeat_interval ({:?}): a member learns it must give up a partition only at its next heartbeat",
                self.group_rebalance_timeout, self.group_heartbeat_interval
            ));
        }
        if self.offsets_topic_replication_factor < 1 {
            return Err("offsets_topic_replication_factor must be at least 1".into());
        }
        Ok(())
    }
}

/// The YAML file: every key optional, named as the flags with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    node_id: Option<i32>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    advertised_address: Option<String>,
    controller_quorum_voters: Option<String>,
    raft_listen: Option<SocketAddr>,
    advertised_raft_address: Option<String>,
    http_listen: Option<String>,
    flush: Option<String>,
    index_interval_bytes: Option<u64>,
    retention_check_interval: Option<String>,
    max_request_bytes: Option<usize>,
    max_fetch_wait: Option<String>,
    max_partitions_per_topic: Option<i32>,
    metadata_cache_bytes: Option<u64>,
    raft_tail_cache_bytes: Option<u64>,
    shutdown_timeout: Option<String>,
    controlled_shutdown_timeout: Option<String>,
    metadata_catch_up_timeout: Option<String>,
    replica_lag_time_max: Option<String>,
    leader_rebalance_interval: Option<String>,
    max_producers_per_partition: Option<usize>,
    producer_id_expiration: Option<String>,
    producer_sequence_wait: Option<String>,
    offsets_topic_partitions: Option<i32>,
    offsets_topic_replication_factor: Option<i32>,
    offset_metadata_max_bytes: Option<usize>,
    offsets_topic_segment_bytes: Option<i64>,
    group_session_timeout: Option<String>,
    group_heartbeat_interval: Option<String>,
    group_rebalance_timeout: Option<String>,
}

/// `sluice-broker` flags. Each also reads `SLUICE_<NAME>` and the `--config` YAML file
/// (same names with underscores); flags win over the environment, which wins over the file.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-broker",
    version,
    about = "The Sluice broker: a replicated, partitioned commit log."
)]
pub struct Args {
    /// YAML file with any of the settings below (keys use underscores: data_dir, flush, ...).
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// This broker's id in the cluster [default: 1]
    #[arg(long, env = "SLUICE_NODE_ID")]
    pub node_id: Option<i32>,
    /// Directory for segments and metadata [default: ./sluice-data]
    #[arg(long, env = "SLUICE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Client listener, HOST:PORT; port 0 picks a free port [default: 127.0.0.1:9092]
    #[arg(long, env = "SLUICE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address clients are told to use [default: the bound listen address]
    #[arg(long, env = "SLUICE_ADVERTISED_ADDRESS")]
    pub advertised_address: Option<String>,
    /// Controller voters, ID@HOST:PORT comma-separated (Kafka's controller.quorum.voters)
    /// [default: none: a single-broker cluster]
    #[arg(long, env = "SLUICE_CONTROLLER_QUORUM_VOTERS")]
    pub controller_quorum_voters: Option<String>,
    /// Inter-broker listener, HOST:PORT [default: this node's voter address]
    #[arg(long, env = "SLUICE_RAFT_LISTEN")]
    pub raft_listen: Option<SocketAddr>,
    /// Inter-broker address other brokers are told to use [default: the bound raft address]
    #[arg(long, env = "SLUICE_ADVERTISED_RAFT_ADDRESS")]
    pub advertised_raft_address: Option<String>,
    /// HTTP listener for /metrics (Prometheus), /livez, /readyz and /ready-to-stop,
    /// HOST:PORT, or `off` [default: 127.0.0.1:9644]
    #[arg(long, env = "SLUICE_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// For factor-1 topics created by versions before factor 1 became a one-voter Raft group
    /// only (every Raft log fsyncs before acknowledging): `always` (fsync before
    /// acknowledging, group-committed) or an interval such as `100ms` (fsync in the
    /// background; a power loss can lose that much) [default: always]
    #[arg(long, env = "SLUICE_FLUSH")]
    pub flush: Option<String>,
    /// Bytes between sparse index entries in a segment [default: 4096]
    #[arg(long, env = "SLUICE_INDEX_INTERVAL_BYTES")]
    pub index_interval_bytes: Option<u64>,
    /// How often retention deletes expired segments [default: 5m]
    #[arg(long, env = "SLUICE_RETENTION_CHECK_INTERVAL")]
    pub retention_check_interval: Option<String>,
    /// Largest request the broker decodes, in bytes [default: 67108864]
    #[arg(long, env = "SLUICE_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Upper bound on a fetch's long-poll wait [default: 30s]
    #[arg(long, env = "SLUICE_MAX_FETCH_WAIT")]
    pub max_fetch_wait: Option<String>,
    /// Most partitions a topic may have [default: 10000]
    #[arg(long, env = "SLUICE_MAX_PARTITIONS_PER_TOPIC")]
    pub max_partitions_per_topic: Option<i32>,
    /// Memory for the metadata store's cache, in bytes [default: 33554432]
    #[arg(long, env = "SLUICE_METADATA_CACHE_BYTES")]
    pub metadata_cache_bytes: Option<u64>,
    /// Memory for the newest entries of the partition Raft logs, read by replication and
    /// apply without a disk read; at most 4 MiB per partition, 0 turns it off
    /// [default: 67108864]
    #[arg(long, env = "SLUICE_RAFT_TAIL_CACHE_BYTES")]
    pub raft_tail_cache_bytes: Option<u64>,
    /// How long a graceful shutdown may take before the broker exits anyway [default: 30s]
    #[arg(long, env = "SLUICE_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<String>,
    /// On SIGTERM, hand every partition led here to an in-sync follower first, for at most
    /// this long (controlled.shutdown.enable); 0s turns it off [default: 10s]
    #[arg(long, env = "SLUICE_CONTROLLED_SHUTDOWN_TIMEOUT")]
    pub controlled_shutdown_timeout: Option<String>,
    /// A request naming a topic this broker does not know waits this long for its metadata
    /// to catch up with the controller before the topic is called unknown [default: 3s]
    #[arg(long, env = "SLUICE_METADATA_CATCH_UP_TIMEOUT")]
    pub metadata_catch_up_timeout: Option<String>,
    /// A follower not caught up for this long leaves the in-sync set
    /// (replica.lag.time.max.ms) [default: 10s]
    #[arg(long, env = "SLUICE_REPLICA_LAG_TIME_MAX")]
    pub replica_lag_time_max: Option<String>,
    /// How often a leader hands leadership back to its partition's preferred replica (the
    /// first) once that one is in sync; 0s turns it off [default: 30s]
    #[arg(long, env = "SLUICE_LEADER_REBALANCE_INTERVAL")]
    pub leader_rebalance_interval: Option<String>,
    /// Idempotent producers each partition remembers at most [default: 10000]
    #[arg(long, env = "SLUICE_MAX_PRODUCERS_PER_PARTITION")]
    pub max_producers_per_partition: Option<usize>,
    /// An idle idempotent producer is forgotten after this long
    /// (producer.id.expiration.ms) [default: 24h]
    #[arg(long, env = "SLUICE_PRODUCER_ID_EXPIRATION")]
    pub producer_id_expiration: Option<String>,
    /// How long a batch that arrives ahead of its idempotent producer's sequence waits for
    /// the batches before it, then OUT_OF_ORDER_SEQUENCE_NUMBER [default: 250ms]
    #[arg(long, env = "SLUICE_PRODUCER_SEQUENCE_WAIT")]
    pub producer_sequence_wait: Option<String>,
    /// Partitions of the __consumer_offsets topic, made when a consumer group is first used;
    /// fixed from then on [default: 50]
    #[arg(long, env = "SLUICE_OFFSETS_TOPIC_PARTITIONS")]
    pub offsets_topic_partitions: Option<i32>,
    /// Replication factor of __consumer_offsets, or the live broker count when fewer
    /// [default: 3]
    #[arg(long, env = "SLUICE_OFFSETS_TOPIC_REPLICATION_FACTOR")]
    pub offsets_topic_replication_factor: Option<i32>,
    /// Longest metadata string a committed offset may carry, in bytes [default: 4096]
    #[arg(long, env = "SLUICE_OFFSET_METADATA_MAX_BYTES")]
    pub offset_metadata_max_bytes: Option<usize>,
    /// segment.bytes of __consumer_offsets, when it is created: old commits are deleted a
    /// segment at a time [default: 104857600]
    #[arg(long, env = "SLUICE_OFFSETS_TOPIC_SEGMENT_BYTES")]
    pub offsets_topic_segment_bytes: Option<i64>,
    /// A consumer group member not heard from for this long is removed and its partitions
    /// go to the others [default: 45s]
    #[arg(long, env = "SLUICE_GROUP_SESSION_TIMEOUT")]
    pub group_session_timeout: Option<String>,
    /// How often consumer group members heartbeat [default: 2s]
    #[arg(long, env = "SLUICE_GROUP_HEARTBEAT_INTERVAL")]
    pub group_heartbeat_interval: Option<String>,
    /// A consumer group member that still owns a partition this long after it was told to
    /// give it up is removed from the group, and the partition goes to its new owner
    /// [default: 5m]
    #[arg(long, env = "SLUICE_GROUP_REBALANCE_TIMEOUT")]
    pub group_rebalance_timeout: Option<String>,
}

fn parse_dur(key: &str, s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid {key} '{s}': {e} (use e.g. '500ms', '30s', '5m')"))
}

impl Args {
    /// Merges file, environment and flags over the defaults, and validates.
    pub fn into_config(self) -> Result<Config, String> {
        let file: ConfigFile = match &self.config {
            None => ConfigFile::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                serde_yaml::from_str(&text)
                    .map_err(|e| format!("config file {}: {e}", path.display()))?
            }
        };
        let d = Config::default();
        let pick_dur =
            |key: &str, flag: Option<String>, file: Option<String>, default: Duration| {
                flag.or(file).map_or(Ok(default), |s| parse_dur(key, &s))
            };
        let config = Config {
            node_id: self.node_id.or(file.node_id).unwrap_or(d.node_id),
            data_dir: self.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            listen: self.listen.or(file.listen).unwrap_or(d.listen),
            advertised_address: self.advertised_address.or(file.advertised_address),
            controller_quorum_voters: match self
                .controller_quorum_voters
                .or(file.controller_quorum_voters)
            {
                Some(s) => parse_voters(&s)?,
                None => BTreeMap::new(),
            },
            raft_listen: self.raft_listen.or(file.raft_listen),
            advertised_raft_address: self
                .advertised_raft_address
                .or(file.advertised_raft_address),
            http_listen: match self.http_listen.or(file.http_listen) {
                None => d.http_listen,
                Some(s) if s.eq_ignore_ascii_case("off") => None,
                Some(s) => Some(
                    s.parse()
                        .map_err(|e| format!("http_listen '{s}' is not HOST:PORT or off: {e}"))?,
                ),
            },
            flush: match self.flush.or(file.flush) {
                Some(s) => s.parse()?,
                None => d.flush,
            },
            index_interval_bytes: self
                .index_interval_bytes
                .or(file.index_interval_bytes)
                .unwrap_or(d.index_interval_bytes),
            retention_check_interval: pick_dur(
                "retention_check_interval",
                self.retention_check_interval,
                file.retention_check_interval,
                d.retention_check_interval,
            )?,
            max_request_bytes: self
                .max_request_bytes
                .or(file.max_request_bytes)
                .unwrap_or(d.max_request_bytes),
            max_fetch_wait: pick_dur(
                "max_fetch_wait",
                self.max_fetch_wait,
                file.max_fetch_wait,
                d.max_fetch_wait,
            )?,
            max_partitions_per_topic: self
                .max_partitions_per_topic
                .or(file.max_partitions_per_topic)
                .unwrap_or(d.max_partitions_per_topic),
            metadata_cache_bytes: self
                .metadata_cache_bytes
                .or(file.metadata_cache_bytes)
                .unwrap_or(d.metadata_cache_bytes),
            raft_tail_cache_bytes: self
                .raft_tail_cache_bytes
                .or(file.raft_tail_cache_bytes)
                .unwrap_or(d.raft_tail_cache_bytes),
            shutdown_timeout: pick_dur(
                "shutdown_timeout",
                self.shutdown_timeout,
                file.shutdown_timeout,
                d.shutdown_timeout,
            )?,
            controlled_shutdown_timeout: pick_dur(
                "controlled_shutdown_timeout",
                self.controlled_shutdown_timeout,
                file.controlled_shutdown_timeout,
                d.controlled_shutdown_timeout,
            )?,
            metadata_catch_up_timeout: pick_dur(
                "metadata_catch_up_timeout",
                self.metadata_catch_up_timeout,
                file.metadata_catch_up_timeout,
                d.metadata_catch_up_timeout,
            )?,
            replica_lag_time_max: pick_dur(
                "replica_lag_time_max",
                self.replica_lag_time_max,
                file.replica_lag_time_max,
                d.replica_lag_time_max,
            )?,
            leader_rebalance_interval: pick_dur(
                "leader_rebalance_interval",
                self.leader_rebalance_interval,
                file.leader_rebalance_interval,
                d.leader_rebalance_interval,
            )?,
            max_producers_per_partition: self
                .max_producers_per_partition
                .or(file.max_producers_per_partition)
                .unwrap_or(d.max_producers_per_partition),
            producer_id_expiration: pick_dur(
                "producer_id_expiration",
                self.producer_id_expiration,
                file.producer_id_expiration,
                d.producer_id_expiration,
            )?,
            producer_sequence_wait: pick_dur(
                "producer_sequence_wait",
                self.producer_sequence_wait,
                file.producer_sequence_wait,
                d.producer_sequence_wait,
            )?,
            offsets_topic_partitions: self
                .offsets_topic_partitions
                .or(file.offsets_topic_partitions)
                .unwrap_or(d.offsets_topic_partitions),
            offsets_topic_replication_factor: self
                .offsets_topic_replication_factor
                .or(file.offsets_topic_replication_factor)
                .unwrap_or(d.offsets_topic_replication_factor),
            offset_metadata_max_bytes: self
                .offset_metadata_max_bytes
                .or(file.offset_metadata_max_bytes)
                .unwrap_or(d.offset_metadata_max_bytes),
            offsets_topic_segment_bytes: self
                .offsets_topic_segment_bytes
                .or(file.offsets_topic_segment_bytes)
                .unwrap_or(d.offsets_topic_segment_bytes),
            group_session_timeout: pick_dur(
                "group_session_timeout",
                self.group_session_timeout,
                file.group_session_timeout,
                d.group_session_timeout,
            )?,
            group_heartbeat_interval: pick_dur(
                "group_heartbeat_interval",
                self.group_heartbeat_interval,
                file.group_heartbeat_interval,
                d.group_heartbeat_interval,
            )?,
            group_rebalance_timeout: pick_dur(
                "group_rebalance_timeout",
                self.group_rebalance_timeout,
                file.group_rebalance_timeout,
                d.group_rebalance_timeout,
            )?,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn help_states_every_default() {
        let help = Args::command().render_long_help().to_string();
        let d = Config::default();
        for expected in [
            format!("[default: {}]", d.node_id),
            format!("[default: {DEFAULT_DATA_DIR}]"),
            format!("[default: {}]", d.listen),
            format!("[default: {DEFAULT_HTTP_LISTEN}]"),
            format!("[default: {}]", d.flush),
            format!("[default: {}]", d.index_interval_bytes),
            format!("[default: {DEFAULT_RETENTION_CHECK_INTERVAL}]"),
            format!("[default: {}]", d.max_request_bytes),
            format!("[default: {DEFAULT_MAX_FETCH_WAIT}]"),
            format!("[default: {}]", d.max_partitions_per_topic),
            format!("[default: {}]", d.offsets_topic_partitions),
            format!("[default: {}]", d.offsets_topic_replication_factor),
            format!("[default: {}]", d.offset_metadata_max_bytes),
            format!("[default: {}]", d.offsets_topic_segment_bytes),
            format!("[default: {DEFAULT_GROUP_SESSION_TIMEOUT}]"),
            format!("[default: {DEFAULT_GROUP_HEARTBEAT_INTERVAL}]"),
            format!("[default: {DEFAULT_GROUP_REBALANCE_TIMEOUT}]"),
            format!("[default: {}]", d.metadata_cache_bytes),
            format!("[default: {}]", d.raft_tail_cache_bytes),
            format!("[default: {DEFAULT_SHUTDOWN_TIMEOUT}]"),
            format!("[default: {DEFAULT_REPLICA_LAG_TIME_MAX}]"),
            format!("[default: {DEFAULT_LEADER_REBALANCE_INTERVAL}]"),
            format!("[default: {DEFAULT_MAX_PRODUCERS_PER_PARTITION}]"),
            format!("[default: {DEFAULT_PRODUCER_ID_EXPIRATION}]"),
            format!("[default: {DEFAULT_PRODUCER_SEQUENCE_WAIT}]"),
        ] {
            assert!(help.contains(&expected), "--help lacks {expected}:\n{help}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.yaml");
        std::fs::write(&path, "node_id: 7\nflush: 250ms\ndata_dir: /tmp/x\n").unwrap();
        let args = Args::parse_from([
            "sluice-broker",
            "--config",
            path.to_str().unwrap(),
            "--node-id",
            "3",
        ]);
        let c = args.into_config().unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.flush, FlushPolicy::Interval(Duration::from_millis(250)));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/broker.yaml");
        let c = Args::parse_from(["sluice-broker", "--config", path])
            .into_config()
            .unwrap();
        assert_eq!(c.flush, FlushPolicy::Always);
        assert!(
            parse_voters("1@10.0.0.1:9093,2@10.0.0.2:9093")
                .unwrap()
                .len()
                == 2
        );
        assert!(parse_voters("1@10.0.0.1").unwrap_err().contains("no port"));
        assert!(
            parse_voters("x@10.0.0.1:1")
                .unwrap_err()
                .contains("not a node id")
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.yaml");
        std::fs::write(&path, "flsh: always\n").unwrap();
        let err = Args::parse_from(["sluice-broker", "--config", path.to_str().unwrap()])
            .into_config()
            .unwrap_err();
        assert!(err.contains("flsh"), "{err}");
        let err = Args::parse_from(["sluice-broker", "--flush", "sometimes"])
            .into_config()
            .unwrap_err();
        assert!(
            err.contains("'sometimes'") && err.contains("always"),
            "{err}"
        );
    }
}
