//! [`Consumer`]: reads assigned partitions from chosen offsets.
//!
//! `poll` returns what one fetch brought and, when it brought data, starts the next fetch
//! in the background, so decoding and the application's work overlap the network.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_proto::batch::{self, Header};
use sluice_proto::{ErrorCode, ErrorDetailExt, list_offsets, pb};
use tokio::task::JoinSet;

use crate::TopicPartition;
use crate::cluster::{ClientConfig, Cluster};
use crate::error::{Error, Result};

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
    /// Fail `poll` with OFFSET_OUT_OF_RANGE.
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
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            fetch_max_wait: Duration::from_millis(500),
            fetch_min_bytes: 1,
            fetch_max_bytes: 50 * 1024 * 1024,
            max_partition_fetch_bytes: 1024 * 1024,
            auto_offset_reset: AutoOffsetReset::Latest,
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
}

type FetchResult = Vec<(String, Result<pb::FetchResponse>)>;

/// One broker's finished fetch, with the positions it asked from.
struct FetchDone {
    address: String,
    asked: BTreeMap<TopicPartition, i64>,
    result: Result<pb::FetchResponse>,
}

#[derive(Debug)]
pub struct Consumer {
    cluster: Cluster,
    config: ConsumerConfig,
    positions: BTreeMap<TopicPartition, i64>,
    buffered: VecDeque<ConsumerRecord>,
    /// One fetch in flight per leader broker, each for the partitions it leads; a broker
    /// with nothing new long-polls without holding up the others.
    inflight: JoinSet<FetchDone>,
    fetching: HashSet<TopicPartition>,
}

impl Consumer {
    pub fn new(client: ClientConfig, config: ConsumerConfig) -> Result<Self> {
        Ok(Consumer {
            cluster: Cluster::new(client)?,
            config,
            positions: BTreeMap::new(),
            buffered: VecDeque::new(),
            inflight: JoinSet::new(),
            fetching: HashSet::new(),
        })
    }

    /// Partitions of a topic, from metadata.
    pub async fn partitions_for(&self, topic: &str) -> Result<Vec<i32>> {
        let route = self.cluster.topic(topic).await?;
        Ok((0..route.leaders.len() as i32).collect())
    }

    /// Reads these partitions, each from `start`.
    pub async fn assign(&mut self, partitions: Vec<TopicPartition>, start: Offset) -> Result<()> {
        self.reset_fetch_state();
        self.positions.clear();
        for tp in partitions {
            self.seek(&tp, start).await?;
        }
        Ok(())
    }

    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.positions.keys().cloned().collect()
    }

    /// The next offset `poll` will return for a partition.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.positions.get(tp).copied()
    }

    fn reset_fetch_state(&mut self) {
        // Dropping the set aborts every fetch in flight.
        self.inflight = JoinSet::new();
        self.fetching.clear();
        self.buffered.clear();
    }

    pub async fn seek(&mut self, tp: &TopicPartition, offset: Offset) -> Result<()> {
        let position = match offset {
            Offset::At(o) => o,
            Offset::Earliest => self.list_offset(tp, list_offsets::EARLIEST).await?,
            Offset::Latest => self.list_offset(tp, list_offsets::LATEST).await?,
            Offset::Timestamp(ts) => match self.list_offset(tp, ts).await? {
                -1 => self.list_offset(tp, list_offsets::LATEST).await?,
                o => o,
            },
        };
        self.reset_fetch_state();
        self.positions.insert(tp.clone(), position);
        Ok(())
    }

    /// ListOffsets for one partition: -2 earliest, -1 latest, or a timestamp. Retriable
    /// errors (leader moving, broker starting) are retried until the request timeout.
    pub async fn list_offset(&self, tp: &TopicPartition, query: i64) -> Result<i64> {
        let deadline = tokio::time::Instant::now() + self.cluster.config.request_timeout;
        loop {
            match self.list_offset_once(tp, query).await {
                Err(e) if e.is_retriable() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(partition = %tp, cause = %e, "retrying ListOffsets");
                    self.cluster.invalidate(&tp.topic);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    async fn list_offset_once(&self, tp: &TopicPartition, query: i64) -> Result<i64> {
        let address = self.cluster.leader(&tp.topic, tp.partition).await?;
        let mut client = self.cluster.log_client(&address)?;
        let req = pb::ListOffsetsRequest {
            partitions: vec![pb::ListOffsetsPartition {
                topic: tp.topic.clone(),
                partition: tp.partition,
                timestamp: query,
            }],
        };
        let resp = tokio::time::timeout(
            self.cluster.config.request_timeout,
            client.list_offsets(req),
        )
        .await
        .map_err(|_| Error::Timeout {
            what: format!("list offsets of {tp}"),
            after: self.cluster.config.request_timeout,
            last: "no answer".into(),
        })?
        .map_err(|s| Error::from_status(&address, s))?
        .into_inner();
        let entry =
            resp.partitions.into_iter().next().ok_or_else(|| {
                Error::InvalidArgument(format!("empty ListOffsets answer for {tp}"))
            })?;
        if let Some(e) = entry.error {
            return Err(Error::broker(e));
        }
        Ok(entry.offset)
    }

    /// Records that arrived within `timeout` (possibly none). Positions advance past
    /// what is returned.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        if !self.buffered.is_empty() {
            return Ok(self.buffered.drain(..).collect());
        }
        if self.positions.is_empty() {
            return Err(Error::InvalidArgument(
                "poll() before assign(): no partitions to read".into(),
            ));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.start_fetches().await;
            if self.inflight.is_empty() {
                // No leader known for any idle partition: wait a little, then ask again.
                if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(100)))
                    .await
                    .is_err()
                {
                    return Ok(Vec::new());
                }
                continue;
            }
            let done = match tokio::time::timeout_at(deadline, self.inflight.join_next()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(None) => continue,
                Ok(Some(Err(e))) if e.is_cancelled() => continue,
                Ok(Some(Err(e))) => {
                    return Err(Error::InvalidArgument(format!("fetch task failed: {e}")));
                }
                Ok(Some(Ok(done))) => done,
            };
            for tp in done.asked.keys() {
                self.fetching.remove(tp);
            }
            let before = done.asked;
            let results = vec![(done.address, done.result)];
            // Fetch again from this broker before decoding, so its read and transfer
            // overlap the decoding. Positions come from batch headers alone.
            if self.advance_positions(&results) {
                self.start_fetches().await;
            }
            self.absorb(results, &before).await?;
            if !self.buffered.is_empty() {
                return Ok(self.buffered.drain(..).collect());
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    /// Starts a fetch for every assigned partition not in one, one request per leader.
    async fn start_fetches(&mut self) {
        let max_wait = self.config.fetch_max_wait;
        let mut by_leader: HashMap<String, BTreeMap<TopicPartition, i64>> = HashMap::new();
        let idle: Vec<(TopicPartition, i64)> = self
            .positions
            .iter()
            .filter(|(tp, _)| !self.fetching.contains(*tp))
            .map(|(tp, o)| (tp.clone(), *o))
            .collect();
        for (tp, offset) in idle {
            match self.cluster.leader(&tp.topic, tp.partition).await {
                Ok(address) => {
                    by_leader.entry(address).or_default().insert(tp, offset);
                }
                Err(e) => {
                    tracing::debug!(partition = %tp, cause = %e, "no leader to fetch from yet")
                }
            }
        }
        for (address, asked) in by_leader {
            self.fetching.extend(asked.keys().cloned());
            let cluster = self.cluster.clone();
            let config = self.config.clone();
            self.inflight.spawn(async move {
                let req = pb::FetchRequest {
                    max_wait_ms: max_wait.as_millis() as u32,
                    min_bytes: config.fetch_min_bytes,
                    max_bytes: config.fetch_max_bytes,
                    partitions: asked
                        .iter()
                        .map(|(tp, offset)| pb::FetchPartition {
                            topic: tp.topic.clone(),
                            partition: tp.partition,
                            fetch_offset: *offset,
                            partition_max_bytes: config.max_partition_fetch_bytes,
                        })
                        .collect(),
                };
                let timeout = cluster.config.request_timeout + max_wait;
                let result = match cluster.log_client(&address) {
                    Err(e) => Err(e),
                    Ok(mut client) => {
                        match tokio::time::timeout(timeout, client.fetch(req)).await {
                            Ok(Ok(resp)) => Ok(resp.into_inner()),
                            Ok(Err(status)) => Err(Error::from_status(&address, status)),
                            Err(_) => Err(Error::Timeout {
                                what: format!("fetch from {address}"),
                                after: timeout,
                                last: "no answer".into(),
                            }),
                        }
                    }
                };
                FetchDone {
                    address,
                    asked,
                    result,
                }
            });
        }
    }

    /// Moves positions past the batches in `results`; true when every partition answered
    /// cleanly and some brought data (then the next fetch can start right away).
    fn advance_positions(&mut self, results: &FetchResult) -> bool {
        let mut moves = Vec::new();
        for (_, result) in results {
            let Ok(resp) = result else { return false };
            for part in &resp.partitions {
                if part.error.is_some() {
                    return false;
                }
                let mut next = None;
                for b in batch::split_batches(part.records.clone()) {
                    match b.as_deref().map(batch::BatchHeader::parse) {
                        Ok(Ok(h)) => next = Some(h.next_offset()),
                        _ => return false,
                    }
                }
                if let Some(next) = next {
                    moves.push((
                        TopicPartition::new(part.topic.clone(), part.partition),
                        next,
                    ));
                }
            }
        }
        let mut any = false;
        for (tp, next) in moves {
            if let Some(pos) = self.positions.get_mut(&tp)
                && next > *pos
            {
                *pos = next;
                any = true;
            }
        }
        any
    }

    /// Decodes a fetch's results into the buffer and handles per-partition errors.
    async fn absorb(
        &mut self,
        results: FetchResult,
        before: &BTreeMap<TopicPartition, i64>,
    ) -> Result<()> {
        let mut corrupt = None;
        for (address, result) in results {
            let resp = match result {
                Ok(r) => r,
                Err(e) if e.is_retriable() => {
                    tracing::warn!(broker = %address, cause = %e, "fetch failed; will retry");
                    self.cluster.drop_channel(&address);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            for part in resp.partitions {
                let tp = TopicPartition::new(part.topic.clone(), part.partition);
                let Some(&position) = before.get(&tp) else {
                    continue;
                };
                if let Some(err) = part.error {
                    self.partition_error(&tp, err).await?;
                    continue;
                }
                let topic: Arc<str> = Arc::from(part.topic.as_str());
                let mut next = position;
                let mut damaged = None;
                for b in batch::split_batches(part.records) {
                    let records =
                        match b.and_then(|b| batch::decode(&b, batch::DEFAULT_MAX_DECOMPRESSED)) {
                            // Control batches (Raft bookkeeping) take offsets that
                            // consumers never see.
                            Ok((h, _)) if h.is_control() => {
                                next = next.max(h.next_offset());
                                continue;
                            }
                            Ok((_, records)) => records,
                            Err(source) => {
                                damaged = Some(source);
                                break;
                            }
                        };
                    for r in records {
                        if r.offset < next {
                            continue;
                        }
                        next = r.offset + 1;
                        self.buffered.push_back(ConsumerRecord {
                            topic: topic.clone(),
                            partition: tp.partition,
                            offset: r.offset,
                            timestamp: r.timestamp,
                            key: r.key,
                            value: r.value,
                            headers: r.headers,
                        });
                    }
                }
                let pos = self.positions.entry(tp.clone()).or_insert(next);
                match damaged {
                    // Stay on the first record not handed out: the next poll fetches it
                    // again (wire damage heals) or reports it again (stored damage).
                    Some(source) => {
                        *pos = next;
                        corrupt.get_or_insert(Error::Corrupt {
                            topic: tp.topic.clone(),
                            partition: tp.partition,
                            offset: next,
                            source,
                        });
                    }
                    None => *pos = (*pos).max(next),
                }
            }
        }
        match corrupt {
            Some(e) => {
                // A fetch started past the damaged batch must not skip it.
                self.inflight = JoinSet::new();
                self.fetching.clear();
                // Records before the damage are delivered first; the error comes next poll.
                if self.buffered.is_empty() {
                    Err(e)
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    async fn partition_error(&mut self, tp: &TopicPartition, err: pb::ErrorDetail) -> Result<()> {
        match err.error_code() {
            ErrorCode::OffsetOutOfRange => {
                let target = match self.config.auto_offset_reset {
                    AutoOffsetReset::Earliest => Offset::Earliest,
                    AutoOffsetReset::Latest => Offset::Latest,
                    AutoOffsetReset::None => return Err(Error::broker(err)),
                };
                tracing::warn!(partition = %tp, position = ?self.positions.get(tp), reset = ?target, "offset out of range; resetting");
                let position = match target {
                    Offset::Earliest => self.list_offset(tp, list_offsets::EARLIEST).await?,
                    _ => self.list_offset(tp, list_offsets::LATEST).await?,
                };
                self.positions.insert(tp.clone(), position);
                Ok(())
            }
            code if code.is_retriable() && code != ErrorCode::CorruptMessage => {
                self.cluster.invalidate(&tp.topic);
                Ok(())
            }
            _ => Err(Error::broker(err)),
        }
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

    fn response(records: Bytes) -> FetchResult {
        let part = pb::FetchedPartition {
            topic: "t".into(),
            partition: 0,
            records,
            ..Default::default()
        };
        vec![(
            "b".into(),
            Ok(pb::FetchResponse {
                partitions: vec![part],
            }),
        )]
    }

    /// Damage the client detects (on the wire) is never handed out, and the position stays
    /// on it: records before it come first, then the error, and nothing after it is skipped.
    #[tokio::test]
    async fn a_damaged_batch_stops_the_partition_at_its_offset() {
        let mut c =
            Consumer::new(ClientConfig::new("127.0.0.1:1"), ConsumerConfig::default()).unwrap();
        let tp = TopicPartition::new("t", 0);
        c.positions.insert(tp.clone(), 0);
        let mut bad = BytesMut::from(&batch(2, &["c", "d"])[..]);
        let n = bad.len();
        bad[n - 1] ^= 1;
        let mut wire = BytesMut::from(&batch(0, &["a", "b"])[..]);
        wire.extend_from_slice(&bad);
        wire.extend_from_slice(&batch(4, &["e"]));
        let results = response(wire.freeze());
        let before = c.positions.clone();
        c.advance_positions(&results);
        c.absorb(results, &before).await.unwrap();
        let got: Vec<i64> = c.buffered.drain(..).map(|r| r.offset).collect();
        assert_eq!(got, vec![0, 1]);
        assert_eq!(
            c.position(&tp),
            Some(2),
            "the position stays on the damaged batch"
        );

        let again = response(bad.freeze());
        let before = c.positions.clone();
        let err = c.absorb(again, &before).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::CorruptMessage));
        assert!(err.to_string().contains("offset 2"), "{err}");
        assert_eq!(c.position(&tp), Some(2));
    }
}
