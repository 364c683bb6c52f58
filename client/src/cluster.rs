//! Connections and metadata: one HTTP/2 connection per broker address, shared by every
//! request to it, and a cache of topics and partition leaders refreshed on demand.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use sluice_proto::pb::{
    self, admin_client::AdminClient, groups_client::GroupsClient, log_client::LogClient,
};
use sluice_proto::{ErrorCode, ErrorDetailExt};
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

/// Settings shared by admin, producer and consumer.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of one or more brokers to learn the cluster from.
    pub bootstrap: Vec<String>,
    /// Upper bound on one request (Kafka's `request.timeout.ms`).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Cached metadata older than this is refreshed before use.
    pub metadata_max_age: Duration,
    /// Largest response or request message, in bytes.
    pub max_message_bytes: usize,
}

impl ClientConfig {
    /// A config for a comma-separated bootstrap list, other settings at their defaults.
    pub fn new(bootstrap: &str) -> Self {
        ClientConfig {
            bootstrap: bootstrap
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            metadata_max_age: Duration::from_secs(300),
            max_message_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One topic's routing information.
#[derive(Debug, Clone)]
pub struct TopicRoute {
    pub name: String,
    /// Address of each partition's leader, by partition number (None: no leader now).
    pub leaders: Vec<Option<String>>,
    pub max_message_bytes: i32,
}

#[derive(Debug, Default)]
struct Cache {
    topics: HashMap<String, (Arc<TopicRoute>, Instant)>,
    /// The broker that answered the last admin or metadata call: the next one goes there
    /// first (a client bootstrapped from one broker keeps talking to it while it answers).
    answered: Option<String>,
    /// The brokers the latest metadata named. Admin and metadata calls try them before the
    /// bootstrap list, as Kafka's clients do: the bootstrap brokers may all be gone by now
    /// (a client given one broker must survive that broker's failover).
    brokers: Vec<String>,
    /// When each topic's metadata was last asked for by [`Cluster::await_other_leader`]:
    /// however many partitions wait, one request per topic and `LEADER_POLL`.
    leader_polls: HashMap<String, Instant>,
}

/// Shared connection state; cheap to clone.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub(crate) config: Arc<ClientConfig>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    cache: Arc<RwLock<Cache>>,
}

/// How an admin call is made.
#[derive(Debug, Default, Clone, Copy)]
struct Call<'a> {
    /// A change (what it is): not resent after a timeout or a broken call.
    change: Option<&'a str>,
    /// A broker not to ask (it is the one not answering).
    avoid: Option<&'a str>,
    /// Per broker asked; default the request timeout.
    timeout: Option<Duration>,
}

/// How often a client waiting for a new partition leader asks for metadata, and how long
/// it waits for each answer.
pub const LEADER_POLL: Duration = Duration::from_millis(50);
pub const LEADER_POLL_TIMEOUT: Duration = Duration::from_millis(500);

/// HTTP/2 windows large enough for MiB-sized batches at full speed.
const STREAM_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 64 * 1024 * 1024;

impl Cluster {
    pub fn new(config: ClientConfig) -> Result<Self> {
        if config.bootstrap.is_empty() {
            return Err(Error::InvalidArgument(
                "no bootstrap broker given: pass host:port (e.g. 127.0.0.1:9092)".into(),
            ));
        }
        Ok(Cluster {
            config: Arc::new(config),
            channels: Arc::default(),
            cache: Arc::default(),
        })
    }

    /// The connection to `address` (created lazily, reused afterwards).
    pub fn channel(&self, address: &str) -> Result<Channel> {
        if let Some(c) = self.channels.lock().get(address) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Error::Connect {
                address: address.to_string(),
                source: Arc::new(e),
            })?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        self.channels
            .lock()
            .insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Forgets a connection after a transport failure so the next call reconnects.
    pub fn drop_channel(&self, address: &str) {
        self.channels.lock().remove(address);
    }

    pub fn log_client(&self, address: &str) -> Result<LogClient<Channel>> {
        let max = self.config.max_message_bytes;
        Ok(LogClient::new(self.channel(address)?)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max))
    }

    pub fn admin_client(&self, address: &str) -> Result<AdminClient<Channel>> {
        let max = self.config.max_message_bytes;
        Ok(AdminClient::new(self.channel(address)?)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max))
    }

    pub fn groups_client(&self, address: &str) -> Result<GroupsClient<Channel>> {
        let max = self.config.max_message_bytes;
        Ok(GroupsClient::new(self.channel(address)?)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max))
    }

    /// Every broker address this client knows, the one that answered last first: the
    /// brokers the latest metadata named, then the bootstrap list.
    pub fn known_brokers(&self) -> Vec<String> {
        let cache = self.cache.read();
        let mut out: Vec<String> = Vec::new();
        for b in cache
            .answered
            .iter()
            .chain(&cache.brokers)
            .chain(&self.config.bootstrap)
        {
            if !out.contains(b) {
                out.push(b.clone());
            }
        }
        out
    }

    /// Runs an admin call against the first broker that answers: the one that answered
    /// last, the brokers the latest metadata named, then the bootstrap list. For reads:
    /// any failure moves on to the next broker.
    pub async fn admin_call<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnMut(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.admin_request(Call::default(), call).await
    }

    /// Runs an admin call that changes the cluster (`what`, e.g. "creating topic 'x'").
    /// It moves on to the next broker only when the last certainly did not get it (the
    /// connection was refused); after a timeout or a broken call the change may have been
    /// made, so it fails with [`Error::OutcomeUnknown`] instead of sending it again.
    pub async fn admin_change<T, F, Fut>(&self, what: &str, call: F) -> Result<T>
    where
        F: FnMut(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.admin_request(
            Call {
                change: Some(what),
                ..Call::default()
            },
            call,
        )
        .await
    }

    async fn admin_request<T, F, Fut>(&self, how: Call<'_>, mut call: F) -> Result<T>
    where
        F: FnMut(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = None;
        let mut candidates: Vec<String> = Vec::new();
        {
            let cache = self.cache.read();
            for b in cache
                .answered
                .iter()
                .chain(&cache.brokers)
                .chain(&self.config.bootstrap)
            {
                if !candidates.contains(b) && Some(b.as_str()) != how.avoid {
                    candidates.push(b.clone());
                }
            }
        }
        let change = how.change;
        let timeout = how.timeout.unwrap_or(self.config.request_timeout);
        let unknown = |address: &str, cause: String| Error::OutcomeUnknown {
            what: change.unwrap_or_default().to_string(),
            address: address.to_string(),
            cause,
        };
        for address in &candidates {
            let client = self.admin_client(address)?;
            match tokio::time::timeout(timeout, call(client)).await {
                Ok(Ok(resp)) => {
                    self.cache.write().answered = Some(address.clone());
                    return Ok(resp.into_inner());
                }
                Ok(Err(status)) => {
                    let err = Error::from_status(address, status);
                    if !err.is_retriable() {
                        return Err(err);
                    }
                    if matches!(err, Error::Broker { .. }) {
                        // A read may find another broker further along (one that just
                        // restarted answers LEADER_NOT_AVAILABLE for a topic it has not
                        // caught up on); a change was answered and must not be sent twice.
                        if change.is_some() {
                            return Err(err);
                        }
                        last = Some(err);
                        continue;
                    }
                    self.drop_channel(address);
                    if change.is_some() && !err.is_connection_refused() {
                        return Err(unknown(address, err.to_string()));
                    }
                    last = Some(err);
                }
                Err(_) => {
                    if change.is_some() {
                        return Err(unknown(address, format!("no answer within {timeout:?}")));
                    }
                    last = Some(Error::Timeout {
                        what: format!("request to {address}"),
                        after: timeout,
                        last: "no answer".into(),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidArgument("no bootstrap broker".into())))
    }

    /// Fetches metadata for `topics` (all when empty) and updates the cache.
    pub async fn refresh(&self, topics: &[String]) -> Result<pb::MetadataResponse> {
        self.refresh_with(topics, Call::default()).await
    }

    async fn refresh_with(&self, topics: &[String], how: Call<'_>) -> Result<pb::MetadataResponse> {
        let request = pb::MetadataRequest {
            topics: topics.to_vec(),
        };
        let resp = self
            .admin_request(how, |mut c| {
                let r = request.clone();
                async move { c.metadata(r).await }
            })
            .await?;
        let brokers: HashMap<i32, String> = resp
            .brokers
            .iter()
            .map(|b| (b.node_id, b.address.clone()))
            .collect();
        let now = Instant::now();
        let mut cache = self.cache.write();
        cache.brokers = resp.brokers.iter().map(|b| b.address.clone()).collect();
        for t in topics {
            cache.topics.remove(t);
        }
        for t in &resp.topics {
            let mut leaders = vec![None; t.partitions.len()];
            for p in &t.partitions {
                if let Some(slot) = leaders.get_mut(p.partition as usize) {
                    *slot = brokers.get(&p.leader).cloned();
                }
            }
            let route = TopicRoute {
                name: t.name.clone(),
                leaders,
                max_message_bytes: t.max_message_bytes,
            };
            cache.topics.insert(t.name.clone(), (Arc::new(route), now));
        }
        Ok(resp)
    }

    /// The topic's route from the cache, refreshed when missing or stale. A topic the
    /// cluster does not have is `UNKNOWN_TOPIC_OR_PARTITION` right away.
    pub async fn topic(&self, name: &str) -> Result<Arc<TopicRoute>> {
        if let Some((route, at)) = self.cache.read().topics.get(name)
            && at.elapsed() < self.config.metadata_max_age
        {
            return Ok(route.clone());
        }
        self.refresh(&[name.to_string()]).await?;
        self.cache
            .read()
            .topics
            .get(name)
            .map(|(r, _)| r.clone())
            .ok_or_else(|| {
                Error::broker(pb::ErrorDetail::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("unknown topic '{name}'; create it with `sluice topics create {name}`"),
                ))
            })
    }

    /// [`Cluster::topic`], retried with backoff while the answer is retriable (no broker
    /// asked could confirm the topic yet, none answered) until `until`; the backoff
    /// doubles from `backoff` up to `backoff_max`.
    pub async fn topic_until(
        &self,
        name: &str,
        until: tokio::time::Instant,
        mut backoff: Duration,
        backoff_max: Duration,
    ) -> Result<Arc<TopicRoute>> {
        loop {
            match self.topic(name).await {
                Err(e) if e.is_retriable() && tokio::time::Instant::now() + backoff < until => {
                    tracing::debug!(topic = name, cause = %e, "metadata; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(backoff_max);
                }
                other => return other,
            }
        }
    }

    /// The leader address of a partition as cached, without asking anyone.
    pub fn cached_leader(&self, topic: &str, partition: i32) -> Option<String> {
        let cache = self.cache.read();
        let (route, _) = cache.topics.get(topic)?;
        route.leaders.get(partition as usize)?.clone()
    }

    /// Waits until metadata names a leader for the partition other than `old` (returned),
    /// asking every `LEADER_POLL` and at most until `until`. For a request that failed or
    /// hangs at `old`: retrying as soon as another leader is named recovers at the failover
    /// time rather than at the next backoff step. Metadata is asked of brokers other than
    /// `old` (which may be the one not answering), each within `LEADER_POLL_TIMEOUT`, and
    /// at most once per `LEADER_POLL` per topic whoever asks.
    pub async fn await_other_leader(
        &self,
        topic: &str,
        partition: i32,
        old: Option<&str>,
        until: tokio::time::Instant,
    ) -> Option<String> {
        loop {
            let ask = {
                let mut cache = self.cache.write();
                let fresh = cache
                    .topics
                    .get(topic)
                    .is_some_and(|(_, at)| at.elapsed() < LEADER_POLL)
                    || cache
                        .leader_polls
                        .get(topic)
                        .is_some_and(|at| at.elapsed() < LEADER_POLL);
                if !fresh {
                    cache.leader_polls.insert(topic.to_string(), Instant::now());
                }
                !fresh
            };
            if ask {
                let how = Call {
                    avoid: old,
                    timeout: Some(LEADER_POLL_TIMEOUT),
                    ..Call::default()
                };
                if let Err(e) = self.refresh_with(&[topic.to_string()], how).await {
                    tracing::debug!(topic, cause = %e, "metadata while waiting for a new leader");
                }
            }
            if let Some(leader) = self.cached_leader(topic, partition)
                && Some(leader.as_str()) != old
            {
                return Some(leader);
            }
            let next = tokio::time::Instant::now() + LEADER_POLL;
            if next >= until {
                tokio::time::sleep_until(until).await;
                return None;
            }
            tokio::time::sleep_until(next).await;
        }
    }

    /// Marks a topic's routing stale (after NOT_LEADER or a connection failure).
    pub fn invalidate(&self, topic: &str) {
        self.cache.write().topics.remove(topic);
    }

    /// Records the leader an error named (NOT_LEADER with an address), so the next request
    /// goes there without a metadata round trip. Ignored when the topic is not cached.
    pub fn note_leader(&self, topic: &str, partition: i32, address: String) {
        let mut cache = self.cache.write();
        if let Some((route, _)) = cache.topics.get_mut(topic)
            && let Some(slot) = Arc::make_mut(route).leaders.get_mut(partition as usize)
        {
            *slot = Some(address);
        }
    }

    /// The leader address of a partition.
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<String> {
        let route = self.topic(topic).await?;
        match route.leaders.get(partition as usize) {
            Some(Some(addr)) => Ok(addr.clone()),
            Some(None) => Err(Error::broker(pb::ErrorDetail::new(
                ErrorCode::LeaderNotAvailable,
                format!("{topic}-{partition} has no leader right now"),
            ))),
            None => Err(Error::broker(pb::ErrorDetail::new(
                ErrorCode::UnknownTopicOrPartition,
                format!(
                    "topic '{topic}' has no partition {partition} (it has {})",
                    route.leaders.len()
                ),
            ))),
        }
    }
}
