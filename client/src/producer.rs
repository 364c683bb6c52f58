//! [`Producer`]: batches records per partition by `linger.ms` and `batch.size`, keeps up to
//! `max.in.flight.requests.per.connection` batches per partition on their way (with
//! idempotence; one at a time without it), and retries retriable errors with backoff until
//! `delivery.timeout.ms`. Records of a partition are stored in send order, also across
//! retries: after a failure, the batches behind it are resent in order.
//!
//! Memory is bounded by `buffer.memory`: `send` waits (up to `max.block.ms`) when that
//! much data is queued and unacknowledged.
//!
//! With `enable.idempotence` (the default, with `acks=all`) the producer gets an id from the
//! cluster and numbers its records per partition, so a batch retried after a lost answer or
//! a leader failover is stored once: the partition recognises it and answers with the
//! original offsets. After a batch finally fails (its fate unknown), the partition's sequence
//! starts over under a new epoch, so later batches are never mistaken for it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use parking_lot::Mutex;
use sluice_proto::batch::Compression;
use sluice_proto::{ErrorCode, ErrorDetailExt, RecordBatchBuilder, acks, pb};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::cluster::{ClientConfig, Cluster};
use crate::error::{Error, Result};
use crate::partitioner::partition_for_key;

mod delivery;
mod metrics;
mod worker;

pub use delivery::DeliveryFuture;
use delivery::{Delivery, Pending};
pub use metrics::ProducerMetrics;
use metrics::Stats;
use worker::Worker;

/// The most batches in flight per partition: what a partition remembers of an idempotent
/// producer to recognise a retry (Kafka's bound too).
pub const MAX_IN_FLIGHT: usize = 5;

/// When the broker answers a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// As soon as the broker accepted the request; offsets are not reported.
    None,
    /// Once the leader appended the batch.
    Leader,
    /// Once the in-sync replicas hold the batch (Kafka's default since 3.0).
    #[default]
    All,
}

impl Acks {
    fn wire(self) -> i32 {
        match self {
            Acks::None => acks::NONE,
            Acks::Leader => acks::LEADER,
            Acks::All => acks::ALL,
        }
    }
}

impl std::str::FromStr for Acks {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "0" => Ok(Acks::None),
            "1" => Ok(Acks::Leader),
            "all" | "-1" => Ok(Acks::All),
            other => Err(format!("invalid acks '{other}': use 0, 1 or all")),
        }
    }
}

/// Producer settings, with Kafka's names and defaults where they exist.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// `linger.ms`: how long a batch waits for more records.
    pub linger: Duration,
    /// `batch.size`: a batch is sent once it reaches this many bytes.
    pub batch_size: usize,
    /// `buffer.memory`: bytes of records queued or in flight before `send` waits.
    pub buffer_memory: usize,
    /// `max.block.ms`: how long `send` may wait for buffer space.
    pub max_block: Duration,
    /// `delivery.timeout.ms`: from `send` to success or final failure, retries included.
    pub delivery_timeout: Duration,
    /// `retry.backoff.ms` and `retry.backoff.max.ms`: exponential backoff bounds.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// `compression.type`.
    pub compression: Compression,
    /// `enable.idempotence`: retries never store a batch twice. Takes effect with
    /// `acks=all` (as in Kafka, other acks levels turn it off).
    pub enable_idempotence: bool,
    /// `max.in.flight.requests.per.connection`: batches on their way to one partition at
    /// once, 1 to 5. Takes effect with idempotence, which keeps them in order across
    /// retries; without it the producer sends one at a time, so a retry cannot reorder.
    pub max_in_flight: usize,
    /// With idempotence: a request unanswered for this long starts watching metadata, and
    /// once another broker is named the partition's leader (the one asked is paused, hung
    /// or cut off) the batch is resent there instead of waiting out `request.timeout.ms`;
    /// the partition stores it once either way.
    pub leader_move_check: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_size: 64 * 1024,
            buffer_memory: 32 * 1024 * 1024,
            max_block: Duration::from_secs(60),
            delivery_timeout: Duration::from_secs(120),
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            compression: Compression::None,
            enable_idempotence: true,
            max_in_flight: MAX_IN_FLIGHT,
            leader_move_check: Duration::from_millis(500),
        }
    }
}

impl ProducerConfig {
    fn idempotent(&self) -> bool {
        self.enable_idempotence && self.acks == Acks::All
    }

    /// Batches in flight per partition.
    fn max_in_flight(&self) -> usize {
        if self.idempotent() {
            self.max_in_flight.clamp(1, MAX_IN_FLIGHT)
        } else {
            1
        }
    }
}

/// A record to send.
#[derive(Debug, Clone)]
pub struct ProducerRecord {
    pub topic: String,
    /// Explicit partition; otherwise by key (murmur2), or sticky for keyless records.
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// ms since the epoch; now when unset.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            partition: None,
            key: None,
            value: value.into(),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), Some(value.into())));
        self
    }

    pub fn timestamp(mut self, ms: i64) -> Self {
        self.timestamp = Some(ms);
        self
    }
}

/// Where a record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: String,
    pub partition: i32,
    /// -1 with `acks=0`.
    pub offset: i64,
    pub timestamp: i64,
}

enum Msg {
    Record(Pending),
    /// Send what is queued now and answer once it is acknowledged.
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Default)]
struct Sticky {
    partition: i32,
    bytes: usize,
}

#[derive(Debug)]
struct Inner {
    cluster: Cluster,
    config: ProducerConfig,
    memory: Arc<Semaphore>,
    workers: Mutex<HashMap<(String, i32), mpsc::UnboundedSender<Msg>>>,
    tasks: Mutex<JoinSet<()>>,
    sticky: Mutex<HashMap<String, Sticky>>,
    closed: std::sync::atomic::AtomicBool,
    /// The id the cluster gave this producer (idempotence), fetched on first use.
    producer_id: tokio::sync::Mutex<Option<i64>>,
    stats: Stats,
}

/// A thread-safe producer; clone it freely.
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl Producer {
    /// Creates a producer; connections open on first use.
    pub async fn connect(client: ClientConfig, config: ProducerConfig) -> Result<Self> {
        if config.batch_size == 0 || config.buffer_memory < config.batch_size {
            return Err(Error::InvalidArgument(format!(
                "batch.size ({}) must be at least 1 and at most buffer.memory ({})",
                config.batch_size, config.buffer_memory
            )));
        }
        if !(1..=MAX_IN_FLIGHT).contains(&config.max_in_flight) {
            return Err(Error::InvalidArgument(format!(
                "max.in.flight.requests.per.connection ({}) must be between 1 and {MAX_IN_FLIGHT} (a partition recognises retries among its producer's last {MAX_IN_FLIGHT} batches)",
                config.max_in_flight
            )));
        }
        let permits = config.buffer_memory.min(Semaphore::MAX_PERMITS);
        Ok(Producer {
            inner: Arc::new(Inner {
                cluster: Cluster::new(client)?,
                memory: Arc::new(Semaphore::new(permits)),
                config,
                workers: Mutex::default(),
                tasks: Mutex::new(JoinSet::new()),
                sticky: Mutex::default(),
                closed: Default::default(),
                producer_id: tokio::sync::Mutex::new(None),
                stats: Stats::default(),
            }),
        })
    }

    /// Queues a record and returns a future for its acknowledgement. Waits only for
    /// buffer space and, on first use of a topic, for its metadata.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(record, Delivery::future(tx)).await?;
        Ok(DeliveryFuture { rx })
    }

    /// Queues a record and calls `callback` once it is acknowledged or has finally failed
    /// (Kafka's `send(record, callback)`). Cheaper than a future per record when a caller
    /// sends many records and only counts the outcomes. The callback runs on the producer's
    /// own task for the partition: keep it short and never block in it.
    pub async fn send_with_callback(
        &self,
        record: ProducerRecord,
        callback: impl FnOnce(Result<RecordMetadata>) + Send + 'static,
    ) -> Result<()> {
        self.enqueue(record, Delivery::callback(Box::new(callback)))
            .await
    }

    async fn enqueue(&self, record: ProducerRecord, delivery: Delivery) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Closed);
        }
        // As Kafka's `max.block.ms`: `send` waits this long for the topic's metadata while
        // the brokers asked cannot confirm it yet (a broker that just restarted).
        let route = inner
            .cluster
            .topic_until(
                &record.topic,
                tokio::time::Instant::now() + inner.config.max_block,
                inner.config.retry_backoff,
                inner.config.retry_backoff_max,
            )
            .await?;
        let count = route.leaders.len() as i32;
        let size = record.value.len() + record.key.as_ref().map_or(0, |k| k.len()) + 32;
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if (0..count).contains(&p) => p,
            (Some(p), _) => {
                return Err(Error::broker(pb::ErrorDetail {
                    code: "UNKNOWN_TOPIC_OR_PARTITION".into(),
                    message: format!(
                        "topic '{}' has no partition {p} (it has {count})",
                        record.topic
                    ),
                    retriable: false,
                    ..Default::default()
                }));
            }
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => self.sticky_partition(&record.topic, count, size),
        };
        if size > inner.config.buffer_memory {
            return Err(Error::InvalidArgument(format!(
                "record of {size} bytes is larger than buffer.memory ({} bytes)",
                inner.config.buffer_memory
            )));
        }
        let permit = tokio::time::timeout(
            inner.config.max_block,
            inner.memory.clone().acquire_many_owned(size as u32),
        )
        .await
        .map_err(|_| Error::Timeout {
            what: format!("waiting for buffer space for a record to {}", record.topic),
            after: inner.config.max_block,
            last: format!(
                "buffer.memory ({} bytes) is full; the broker is not keeping up",
                inner.config.buffer_memory
            ),
        })?
        .map_err(|_| Error::Closed)?;
        let pending = Pending {
            timestamp: record.timestamp.unwrap_or_else(crate::now_ms),
            key: record.key,
            value: record.value,
            headers: record.headers,
            enqueued: Instant::now(),
            delivery,
            _permit: permit,
        };
        self.worker(&record.topic, partition)
            .send(Msg::Record(pending))
            .map_err(|_| Error::Closed)
    }

    fn sticky_partition(&self, topic: &str, count: i32, size: usize) -> i32 {
        let mut sticky = self.inner.sticky.lock();
        let s = sticky.entry(topic.to_string()).or_insert_with(|| Sticky {
            partition: random_below(count),
            bytes: 0,
        });
        if s.bytes >= self.inner.config.batch_size || s.partition >= count {
            s.partition = if count > 1 {
                (s.partition + 1 + random_below(count - 1)) % count
            } else {
                0
            };
            s.bytes = 0;
        }
        s.bytes += size;
        s.partition
    }

    fn worker(&self, topic: &str, partition: i32) -> mpsc::UnboundedSender<Msg> {
        let mut workers = self.inner.workers.lock();
        workers
            .entry((topic.to_string(), partition))
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let worker = Worker::new(self.inner.clone(), topic, partition, rx);
                self.inner.tasks.lock().spawn(worker.run());
                tx
            })
            .clone()
    }

    /// Counters since the producer started (Kafka's producer metrics).
    pub fn metrics(&self) -> ProducerMetrics {
        self.inner.stats.snapshot()
    }

    /// Sends everything queued now and waits until it is acknowledged or failed.
    pub async fn flush(&self) {
        let senders: Vec<_> = self.inner.workers.lock().values().cloned().collect();
        let mut waits = Vec::new();
        for s in senders {
            let (tx, rx) = oneshot::channel();
            if s.send(Msg::Flush(tx)).is_ok() {
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = w.await;
        }
    }

    /// Delivers what is queued (bounded by `delivery.timeout.ms`) and stops.
    pub async fn close(&self) {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.inner.workers.lock().clear();
        let mut tasks = std::mem::take(&mut *self.inner.tasks.lock());
        while tasks.join_next().await.is_some() {}
    }
}

fn random_below(n: i32) -> i32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() % n.max(1) as u64) as i32
}
