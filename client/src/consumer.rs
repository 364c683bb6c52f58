//! [`Consumer`]: reads assigned partitions from chosen offsets.
//!
//! `poll` returns what one fetch brought and, when it brought data, starts the next fetch
//! in the background, so decoding and the application's work overlap the network.
//!
//! Partitions fail one by one, not together: a partition whose leader cannot be reached
//! (its broker died, no leader is elected yet, its start offset cannot be looked up) is
//! reported once ([`PartitionEvent::Unavailable`]), retried with backoff on fresh metadata,
//! and picked up again where it stopped when a leader answers; the other partitions are
//! read meanwhile. A fetch that hangs (a paused broker) is abandoned as soon as metadata
//! names another leader for its partitions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_proto::batch::{self, Header};
use sluice_proto::{ErrorCode, ErrorDetailExt, list_offsets, pb};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::TopicPartition;
use crate::cluster::{ClientConfig, Cluster};
use crate::error::{Error, Result};
use crate::groups::GroupCalls;

mod fetch;
mod group;
pub mod processor;

use fetch::list_offset_at;

/// How often a waiting `poll` of a group member looks at the group's latest answer.
const GROUP_CHECK: Duration = Duration::from_millis(50);

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// The log start offset.
    Earliest,
    /// The high watermark: only records written from now on.
    Latest,
    At(i64),
    /// The first record with a timestamp (ms) at or after this; `Latest` if none.
    Timestamp(i64),
}

/// What to do when the position is outside the log (Kafka's `auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoOffsetReset {
    Earliest,
    #[default]
    Latest,
    /// Fail `poll` with OFFSET_OUT_OF_RANGE (naming the valid range).
    None,
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// `fetch.max.wait.ms`: how long the broker holds a fetch waiting for data.
    pub fetch_max_wait: Duration,
    /// `fetch.min.bytes`.
    pub fetch_min_bytes: u32,
    /// `fetch.max.bytes`: per fetch response.
    pub fetch_max_bytes: u32,
    /// `max.partition.fetch.bytes`.
    pub max_partition_fetch_bytes: u32,
    pub auto_offset_reset: AutoOffsetReset,
    /// `retry.backoff.ms` and `retry.backoff.max.ms`: after a partition's fetch or offset
    /// lookup fails, it is asked again after this backoff, doubling up to the max, each time
    /// on fresh metadata. A `NOT_LEADER` answer naming the new leader is followed at once.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// `group.id`: the consumer group this consumer joins with [`Consumer::subscribe`],
    /// whose committed offsets [`Consumer::commit_sync`] writes and
    /// [`Consumer::assign_committed`] starts from.
    pub group_id: Option<String>,
    /// `enable.auto.commit`: with a group, commit the positions past what `poll` returned
    /// every `auto_commit_interval`, before a partition is released, and on `close`.
    pub enable_auto_commit: bool,
    /// `auto.commit.interval.ms`.
    pub auto_commit_interval: Duration,
    /// `client.id`: shown in `sluice groups describe`, and the prefix of the member id.
    pub client_id: String,
    /// `group.instance.id` (static membership): unique per consumer instance. Closing it
    /// keeps its partitions assigned to it for the session timeout, and an instance that
    /// comes back with the same id within it gets them back without moving anything (a
    /// rolling restart of consumers causes no reassignment).
    pub group_instance_id: Option<String>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            fetch_max_wait: Duration::from_millis(500),
            fetch_min_bytes: 1,
            fetch_max_bytes: 50 * 1024 * 1024,
            max_partition_fetch_bytes: 1024 * 1024,
            auto_offset_reset: AutoOffsetReset::Latest,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            group_id: None,
            enable_auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            client_id: "sluice-consumer".into(),
            group_instance_id: None,
        }
    }
}

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<Header>,
    /// Its id: the same on every delivery and every replica.
    pub id: RecordId,
}

/// The header a copy of a record (a redriven dead letter, a repartitioned record) carries
/// its original's id in, so the copy has the same [`RecordId`].
pub const RECORD_ID_HEADER: &str = "sluice.record.id";

/// A record's id: the same every time the record is delivered and on every replica, so a
/// consumer can tell a record it already handled (an idempotency key). Its text form
/// (`Display`) is what `sluice consume --format {id}` prints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordId {
    /// From an idempotent producer: its producer id and epoch and the record's sequence
    /// number in the partition (`orders-2/p1001.0.57`).
    Producer {
        topic: Arc<str>,
        partition: i32,
        producer_id: i64,
        epoch: i16,
        sequence: i32,
    },
    /// Otherwise its partition and offset (`orders-2@157`).
    Offset {
        topic: Arc<str>,
        partition: i32,
        offset: i64,
    },
    /// The original's id, from the record's `sluice.record.id` header.
    Carried(Arc<str>),
}

impl RecordId {
    /// The id of the record at `offset` of a batch with header `h`, or the one its headers
    /// carry.
    pub(crate) fn of(
        topic: &Arc<str>,
        partition: i32,
        h: &batch::BatchHeader,
        offset: i64,
        headers: &[Header],
    ) -> RecordId {
        if let Some(v) = headers
            .iter()
            .find(|x| x.key == RECORD_ID_HEADER)
            .and_then(|x| x.value.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| !v.is_empty())
        {
            return RecordId::Carried(Arc::from(v));
        }
        if h.producer_id >= 0 && h.base_sequence >= 0 {
            // Sequences wrap from i32::MAX to 0, as Kafka's do.
            let delta = offset - h.base_offset;
            let sequence =
                ((i64::from(h.base_sequence) + delta) % (i64::from(i32::MAX) + 1)) as i32;
            return RecordId::Producer {
                topic: topic.clone(),
                partition,
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                sequence,
            };
        }
        RecordId::Offset {
            topic: topic.clone(),
            partition,
            offset,
        }
    }
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordId::Producer {
                topic,
                partition,
                producer_id,
                epoch,
                sequence,
            } => write!(f, "{topic}-{partition}/p{producer_id}.{epoch}.{sequence}"),
            RecordId::Offset {
                topic,
                partition,
                offset,
            } => write!(f, "{topic}-{partition}@{offset}"),
            RecordId::Carried(id) => f.write_str(id),
        }
    }
}

/// A change in whether a partition can be read, reported once per outage, or in what
/// the group assigns this consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PartitionEvent {
    /// It cannot be read now (why, naming the leader asked); the consumer reads the other
    /// partitions and keeps retrying this one.
    Unavailable {
        partition: TopicPartition,
        reason: String,
    },
    /// It answers again, after being unavailable this long; reading continues where it
    /// stopped.
    Available {
        partition: TopicPartition,
        after: Duration,
    },
    /// The group gave this consumer these partitions (after `subscribe`); each starts at
    /// the group's committed offset.
    Assigned { partitions: Vec<TopicPartition> },
    /// The group is moving these partitions to another member: they are no longer read.
    /// Without auto-commit they are released at the next `poll`, so commit what was
    /// processed of them before it (`commit_sync` still covers them).
    Revoked { partitions: Vec<TopicPartition> },
    /// The group fenced or forgot this consumer (its session timed out): these partitions
    /// were dropped without a commit (another member may own them now) and it joins again.
    Lost { partitions: Vec<TopicPartition> },
}

/// Events kept for [`Consumer::take_events`] when nobody takes them; the oldest go first.
const MAX_EVENTS: usize = 1024;

/// A partition's place: a known offset, or where to start once its leader answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    At(i64),
    Pending(Offset),
}

impl From<Offset> for Position {
    fn from(o: Offset) -> Self {
        match o {
            Offset::At(o) => Position::At(o),
            other => Position::Pending(other),
        }
    }
}

#[derive(Debug)]
struct Assigned {
    position: Position,
    /// Bumped by every seek and every abandoned request: answers to older ones are dropped.
    epoch: u64,
    /// A fetch or an offset lookup for it is in flight.
    busy: bool,
    /// Not asked again before this (backoff after a failure).
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Since when, and why, it cannot be read; reported once per outage.
    outage: Option<(Instant, String)>,
    /// The high watermark in the last fetch answer.
    high_watermark: Option<i64>,
    /// The current request went to a leader named by a NOT_LEADER answer; a second such
    /// answer in a row backs off (two brokers with stale views must not ping-pong).
    hinted: bool,
    /// `pause`d: not fetched until `resume`.
    paused: bool,
}

impl Assigned {
    fn new(position: Position, backoff: Duration) -> Self {
        Assigned {
            position,
            epoch: 0,
            busy: false,
            retry_at: None,
            backoff,
            outage: None,
            high_watermark: None,
            hinted: false,
            paused: false,
        }
    }
}

/// A finished request, with what it asked.
#[derive(Debug)]
enum Done {
    Fetch {
        address: String,
        /// Partition, position asked from, epoch at the time.
        asked: Vec<(TopicPartition, i64, u64)>,
        result: Result<pb::FetchResponse>,
    },
    Offset {
        partition: TopicPartition,
        epoch: u64,
        address: String,
        start: Offset,
        result: Result<i64>,
    },
}

#[derive(Debug)]
pub struct Consumer {
    cluster: Cluster,
    config: ConsumerConfig,
    assigned: BTreeMap<TopicPartition, Assigned>,
    buffered: VecDeque<ConsumerRecord>,
    /// One fetch in flight per leader broker, each for the partitions it leads (a broker
    /// with nothing new long-polls without holding up the others), and offset lookups.
    inflight: JoinSet<Done>,
    lookups: usize,
    /// An error for the application, returned once the records before it are handed out.
    error: Option<Error>,
    events: VecDeque<PartitionEvent>,
    /// The group's coordinator, with `group.id`.
    group: Option<Arc<GroupCalls>>,
    /// Membership, after `subscribe`.
    member: Option<group::Member>,
    /// Revoked partitions not released yet (without auto-commit), with their positions.
    releasing: BTreeMap<TopicPartition, Option<i64>>,
    last_auto_commit: Instant,
    /// Epochs for partitions assigned by the group: answers to requests for an earlier
    /// assignment of the same partition are dropped.
    next_epoch: u64,
}

impl Consumer {
    pub fn new(client: ClientConfig, config: ConsumerConfig) -> Result<Self> {
        let cluster = Cluster::new(client)?;
        let group = match config.group_id.as_deref() {
            Some("") => {
                return Err(Error::InvalidArgument(
                    "group.id is empty: name the group, or leave it unset".into(),
                ));
            }
            Some(g) => Some(Arc::new(GroupCalls::new(cluster.clone(), g))),
            None => None,
        };
        Ok(Consumer {
            group,
            member: None,
            releasing: BTreeMap::new(),
            last_auto_commit: Instant::now(),
            next_epoch: 1 << 40,
            cluster,
            config,
            assigned: BTreeMap::new(),
            buffered: VecDeque::new(),
            inflight: JoinSet::new(),
            lookups: 0,
            error: None,
            events: VecDeque::new(),
        })
    }

    /// Partitions of a topic, from metadata.
    pub async fn partitions_for(&self, topic: &str) -> Result<Vec<i32>> {
        let route = self.cluster.topic(topic).await?;
        Ok((0..route.leaders.len() as i32).collect())
    }

    /// Partitions of a topic, asked of the cluster now rather than from the metadata cache
    /// (which is refreshed every `metadata.max.age`): to notice partitions added since.
    pub async fn partitions_now(&self, topic: &str) -> Result<Vec<i32>> {
        self.cluster.invalidate(topic);
        self.partitions_for(topic).await
    }

    /// Adds partitions to the assignment, each from `start`, leaving the others as they
    /// are (positions and records already fetched): for partitions added to a topic.
    /// Partitions already assigned are left alone.
    pub async fn add_partitions(
        &mut self,
        partitions: Vec<TopicPartition>,
        start: Offset,
    ) -> Result<()> {
        let backoff = self.config.retry_backoff;
        for tp in partitions {
            self.assigned
                .entry(tp)
                .or_insert_with(|| Assigned::new(start.into(), backoff));
        }
        self.resolve_positions().await
    }

    /// Reads these partitions, each from `start`. Start offsets are looked up now where
    /// the leaders answer; a partition whose leader does not is reported
    /// ([`Consumer::take_events`]) and positioned once it answers, without holding up the
    /// others. Fails only for what retrying cannot fix (a topic or partition that does not
    /// exist).
    pub async fn assign(&mut self, partitions: Vec<TopicPartition>, start: Offset) -> Result<()> {
        // Dropping the set aborts every request in flight.
        self.inflight = JoinSet::new();
        self.lookups = 0;
        self.buffered.clear();
        self.error = None;
        self.assigned = partitions
            .into_iter()
            .map(|tp| (tp, Assigned::new(start.into(), self.config.retry_backoff)))
            .collect();
        self.resolve_positions().await
    }

    /// Like [`Consumer::assign`], each partition starting where its own `start` says.
    pub async fn assign_each(&mut self, partitions: Vec<(TopicPartition, Offset)>) -> Result<()> {
        self.inflight = JoinSet::new();
        self.lookups = 0;
        self.buffered.clear();
        self.error = None;
        self.assigned = partitions
            .into_iter()
            .map(|(tp, start)| (tp, Assigned::new(start.into(), self.config.retry_backoff)))
            .collect();
        self.resolve_positions().await
    }

    /// Stops fetching `partitions` (Kafka's `pause`): `poll` returns nothing of them until
    /// [`Consumer::resume`], which reads on from their position; they stay assigned (and,
    /// in a group, owned). For back-pressure without leaving the group. Partitions not
    /// assigned are ignored.
    pub fn pause(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            if let Some(a) = self.assigned.get_mut(tp) {
                a.paused = true;
                // A fetch already on its way for it is dropped when it answers.
                a.epoch += 1;
                a.busy = false;
            }
        }
    }

    /// Fetches `partitions` again, from their positions.
    pub fn resume(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            if let Some(a) = self.assigned.get_mut(tp) {
                a.paused = false;
            }
        }
    }

    /// The partitions `pause`d now.
    pub fn paused(&self) -> Vec<TopicPartition> {
        self.assigned
            .iter()
            .filter(|(_, a)| a.paused)
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.assigned.keys().cloned().collect()
    }

    /// The next offset `poll` will return for a partition; `None` while its start offset
    /// is not known yet (its leader has not answered).
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        match self.assigned.get(tp)?.position {
            Position::At(o) => Some(o),
            Position::Pending(_) => None,
        }
    }

    /// The partition's high watermark as of the last fetch answer.
    pub fn high_watermark(&self, tp: &TopicPartition) -> Option<i64> {
        self.assigned.get(tp)?.high_watermark
    }

    /// Whether every assigned partition has been read up to the high watermark its last
    /// fetch answer reported (kcat's `-e`).
    pub fn at_end(&self) -> bool {
        self.assigned
            .values()
            .all(|a| match (a.position, a.high_watermark) {
                (Position::At(p), Some(hw)) => p >= hw,
                _ => false,
            })
    }

    /// The partitions that cannot be read now, with why.
    pub fn unavailable(&self) -> Vec<(TopicPartition, String)> {
        self.assigned
            .iter()
            .filter_map(|(tp, a)| a.outage.as_ref().map(|(_, why)| (tp.clone(), why.clone())))
            .collect()
    }

    /// What changed since the last call: partitions that became unavailable or answer
    /// again (at most the last 1,024 changes are kept).
    pub fn take_events(&mut self) -> Vec<PartitionEvent> {
        self.events.drain(..).collect()
    }

    /// Moves a partition (assigning it if it was not) to `offset`. Records of it already
    /// fetched are dropped; other partitions keep theirs.
    pub async fn seek(&mut self, tp: &TopicPartition, offset: Offset) -> Result<()> {
        let backoff = self.config.retry_backoff;
        let a = self
            .assigned
            .entry(tp.clone())
            .or_insert_with(|| Assigned::new(offset.into(), backoff));
        a.position = offset.into();
        a.epoch += 1;
        a.busy = false;
        a.retry_at = None;
        a.high_watermark = None;
        self.buffered
            .retain(|r| !(*r.topic == *tp.topic && r.partition == tp.partition));
        self.resolve_positions().await
    }

    /// ListOffsets for one partition: -2 earliest, -1 latest, or a timestamp. Retriable
    /// errors (leader moving, broker starting) are retried until the request timeout.
    pub async fn list_offset(&self, tp: &TopicPartition, query: i64) -> Result<i64> {
        let deadline = Instant::now() + self.cluster.config.request_timeout;
        loop {
            let attempt = async {
                let address = self.cluster.leader(&tp.topic, tp.partition).await?;
                list_offset_at(&self.cluster, &address, tp, query).await
            };
            match attempt.await {
                Err(e) if e.is_retriable() && Instant::now() < deadline => {
                    tracing::debug!(partition = %tp, cause = %e, "retrying ListOffsets");
                    self.cluster.invalidate(&tp.topic);
                    tokio::time::sleep(self.config.retry_backoff).await;
                }
                other => return other,
            }
        }
    }

    /// Looks up every pending start offset once, concurrently, and waits for the answers.
    async fn resolve_positions(&mut self) -> Result<()> {
        self.start_work(false).await?;
        while self.lookups > 0 {
            match self.inflight.join_next().await {
                None => break,
                Some(done) => self.handle(done).await?,
            }
        }
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Records that arrived within `timeout` (possibly none). Positions advance past
    /// what is returned.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        if !self.buffered.is_empty() {
            return Ok(self.buffered.drain(..).collect());
        }
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.assigned.is_empty() && self.member.is_none() {
            return Err(Error::InvalidArgument(
                "poll() before assign() or subscribe(): no partitions to read".into(),
            ));
        }
        let deadline = Instant::now() + timeout;
        loop {
            self.reconcile_group().await?;
            self.start_work(true).await?;
            let mut wake = self.next_retry().map_or(deadline, |t| t.min(deadline));
            if self.member.is_some() {
                // The group's answers arrive in the background: look at them this often.
                wake = wake.min(Instant::now() + GROUP_CHECK);
            }
            if self.inflight.is_empty() {
                tokio::time::sleep_until(wake).await;
            } else if let Ok(Some(done)) =
                tokio::time::timeout_at(wake, self.inflight.join_next()).await
            {
                self.handle(done).await?;
            }
            if !self.buffered.is_empty() {
                return Ok(self.buffered.drain(..).collect());
            }
            if let Some(e) = self.error.take() {
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    /// The earliest time a backing-off partition may be asked again.
    fn next_retry(&self) -> Option<Instant> {
        self.assigned
            .values()
            .filter(|a| !a.busy)
            .filter_map(|a| a.retry_at)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use sluice_proto::RecordBatchBuilder;

    fn batch(base: i64, values: &[&str]) -> Bytes {
        let mut b = RecordBatchBuilder::new(Default::default());
        for v in values {
            b.append(1, None, v.as_bytes(), &[]);
        }
        let mut bytes = BytesMut::from(&b.build()[..]);
        sluice_proto::batch::set_base_offset_and_epoch(&mut bytes, base, 0);
        bytes.freeze()
    }

    fn response(records: Bytes) -> pb::FetchResponse {
        pb::FetchResponse {
            partitions: vec![pb::FetchedPartition {
                topic: "t".into(),
                partition: 0,
                records,
                high_watermark: 5,
                ..Default::default()
            }],
        }
    }

    fn consumer_at(tp: &TopicPartition, offset: i64) -> Consumer {
        let mut c =
            Consumer::new(ClientConfig::new("127.0.0.1:1"), ConsumerConfig::default()).unwrap();
        c.assigned.insert(
            tp.clone(),
            Assigned::new(Position::At(offset), Duration::from_millis(100)),
        );
        c
    }

    /// Damage the client detects (on the wire) is never handed out, and the position stays
    /// on it: records before it come first, then the error, and nothing after it is skipped.
    #[tokio::test]
    async fn a_damaged_batch_stops_the_partition_at_its_offset() {
        let tp = TopicPartition::new("t", 0);
        let mut c = consumer_at(&tp, 0);
        let mut bad = BytesMut::from(&batch(2, &["c", "d"])[..]);
        let n = bad.len();
        bad[n - 1] ^= 1;
        let mut wire = BytesMut::from(&batch(0, &["a", "b"])[..]);
        wire.extend_from_slice(&bad);
        wire.extend_from_slice(&batch(4, &["e"]));
        let resp = response(wire.freeze());
        let asked = BTreeMap::from([(tp.clone(), 0)]);
        c.advance_positions(&resp, &asked);
        c.absorb(resp, &asked, "b").await;
        let got: Vec<i64> = c.buffered.drain(..).map(|r| r.offset).collect();
        assert_eq!(got, vec![0, 1]);
        assert_eq!(
            c.position(&tp),
            Some(2),
            "the position stays on the damaged batch"
        );
        let err = c
            .error
            .take()
            .expect("the damage is reported after the records");
        assert_eq!(err.code(), Some(ErrorCode::CorruptMessage));
        assert!(err.to_string().contains("offset 2"), "{err}");

        let asked = BTreeMap::from([(tp.clone(), 2)]);
        c.absorb(response(bad.freeze()), &asked, "b").await;
        assert!(c.buffered.is_empty());
        assert_eq!(
            c.error.take().and_then(|e| e.code()),
            Some(ErrorCode::CorruptMessage)
        );
        assert_eq!(c.position(&tp), Some(2));
    }

    /// A partition whose leader cannot be reached is reported once, backs off with each
    /// failure up to the bound, and is reported again as readable when its leader answers.
    #[tokio::test]
    async fn an_unreachable_partition_is_reported_once_and_backs_off() {
        let tp = TopicPartition::new("t", 0);
        let mut c = consumer_at(&tp, 7);
        let refused = Error::Timeout {
            what: "fetch".into(),
            after: Duration::from_secs(1),
            last: "no answer".into(),
        };
        let mut backoffs = Vec::new();
        for _ in 0..6 {
            c.request_failed(&tp, "127.0.0.1:1", refused.clone());
            backoffs.push(c.assigned[&tp].backoff);
        }
        assert_eq!(
            backoffs.iter().map(Duration::as_millis).collect::<Vec<_>>(),
            vec![200, 400, 800, 1000, 1000, 1000],
            "the backoff doubles up to retry_backoff_max"
        );
        let events = c.take_events();
        assert_eq!(events.len(), 1, "one report per outage: {events:?}");
        assert!(
            matches!(&events[0], PartitionEvent::Unavailable { reason, .. } if reason.contains("127.0.0.1:1")),
            "{events:?}"
        );
        assert_eq!(c.unavailable().len(), 1);
        assert!(
            c.error.is_none(),
            "a retriable failure is not the application's error"
        );

        let asked = BTreeMap::from([(tp.clone(), 7)]);
        c.absorb(response(batch(7, &["x"])), &asked, "127.0.0.1:2")
            .await;
        assert!(matches!(
            c.take_events().as_slice(),
            [PartitionEvent::Available { .. }]
        ));
        assert!(c.unavailable().is_empty());
        assert_eq!(c.assigned[&tp].backoff, Duration::from_millis(100));
        assert_eq!(
            c.position(&tp),
            Some(8),
            "reading continues where it stopped"
        );
    }

    /// NOT_LEADER naming the new leader is followed at once, without a backoff; a second
    /// one in a row backs off (views that disagree do not ping-pong).
    #[tokio::test]
    async fn a_named_leader_is_followed_once_without_backoff() {
        let tp = TopicPartition::new("t", 0);
        let mut c = consumer_at(&tp, 0);
        let mut detail = pb::ErrorDetail::new(ErrorCode::NotLeader, "not the leader");
        detail.leader_address = "127.0.0.1:2".into();
        c.request_failed(&tp, "127.0.0.1:1", Error::broker(detail.clone()));
        assert!(c.assigned[&tp].retry_at.is_none());
        assert!(c.take_events().is_empty());
        c.request_failed(&tp, "127.0.0.1:2", Error::broker(detail));
        assert!(c.assigned[&tp].retry_at.is_some());
    }

    /// Out of range with no reset is the application's error, naming the valid range.
    #[tokio::test]
    async fn out_of_range_without_reset_is_an_error() {
        let tp = TopicPartition::new("t", 0);
        let mut c = consumer_at(&tp, 100);
        c.config.auto_offset_reset = AutoOffsetReset::None;
        let mut detail = pb::ErrorDetail::new(
            ErrorCode::OffsetOutOfRange,
            "offset 100 is outside the log's range [0, 6]",
        );
        detail.log_end_offset = 6;
        c.partition_error(&tp, "b", detail);
        let err = c.error.take().expect("an error");
        assert_eq!(err.code(), Some(ErrorCode::OffsetOutOfRange));
        c.config.auto_offset_reset = AutoOffsetReset::Earliest;
        c.partition_error(
            &tp,
            "b",
            pb::ErrorDetail::new(ErrorCode::OffsetOutOfRange, "out"),
        );
        assert!(c.error.is_none());
        assert_eq!(
            c.position(&tp),
            None,
            "repositioned at the earliest offset on the next poll"
        );
    }
}
