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

/// What a producer has done since it started, Kafka's producer metrics by the same names:
/// where a record's time goes (waiting in its batch vs. the produce request) and how large
/// batches are. From [`Producer::metrics`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProducerMetrics {
    /// Batches sent (first attempts).
    pub batches: u64,
    /// Records in those batches.
    pub records: u64,
    /// Encoded bytes of those batches.
    pub batch_bytes: u64,
    /// Produce requests answered (retries included; timeouts not).
    pub requests: u64,
    /// Resends after a failed attempt.
    pub retries: u64,
    /// `request-latency-avg` / `-max`: from sending a produce request to its answer.
    pub request_latency_avg: Duration,
    pub request_latency_max: Duration,
    /// `record-queue-time-avg` / `-max`: how long a batch's first record waited before the
    /// batch was sent.
    pub record_queue_time_avg: Duration,
    pub record_queue_time_max: Duration,
}

/// The counters behind [`ProducerMetrics`].
#[derive(Debug, Default)]
struct Stats {
    batches: AtomicU64,
    records: AtomicU64,
    batch_bytes: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    request_micros: AtomicU64,
    request_micros_max: AtomicU64,
    queue_micros: AtomicU64,
    queue_micros_max: AtomicU64,
}

impl Stats {
    fn sent(&self, records: usize, bytes: usize, queued: Duration) {
        let q = queued.as_micros() as u64;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records as u64, Ordering::Relaxed);
        self.batch_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.queue_micros.fetch_add(q, Ordering::Relaxed);
        self.queue_micros_max.fetch_max(q, Ordering::Relaxed);
    }

    fn answered(&self, took: Duration) {
        let t = took.as_micros() as u64;
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.request_micros.fetch_add(t, Ordering::Relaxed);
        self.request_micros_max.fetch_max(t, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ProducerMetrics {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let avg = |sum: u64, n: u64| Duration::from_micros(sum.checked_div(n).unwrap_or(0));
        let (batches, requests) = (get(&self.batches), get(&self.requests));
        ProducerMetrics {
            batches,
            records: get(&self.records),
            batch_bytes: get(&self.batch_bytes),
            requests,
            retries: get(&self.retries),
            request_latency_avg: avg(get(&self.request_micros), requests),
            request_latency_max: Duration::from_micros(get(&self.request_micros_max)),
            record_queue_time_avg: avg(get(&self.queue_micros), batches),
            record_queue_time_max: Duration::from_micros(get(&self.queue_micros_max)),
        }
    }
}

/// Resolves when the record is acknowledged or has finally failed.
#[derive(Debug)]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<RecordMetadata>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

struct Pending {
    timestamp: i64,
    key: Option<Bytes>,
    value: Bytes,
    headers: Vec<(String, Option<Bytes>)>,
    enqueued: Instant,
    delivery: Delivery,
    _permit: OwnedSemaphorePermit,
}

/// A delivery callback: runs on the producer's partition task, so it must be quick.
type Callback = Box<dyn FnOnce(Result<RecordMetadata>) + Send>;

/// Who hears how a record ended. Dropped unanswered (the producer went away), it answers
/// `Error::Closed`, so a callback is never silently forgotten.
struct Delivery(Option<Notify>);

enum Notify {
    Future(oneshot::Sender<Result<RecordMetadata>>),
    /// In a mutex only to be `Sync` (the worker holds records across awaits); never
    /// contended.
    Callback(std::sync::Mutex<Callback>),
}

impl Delivery {
    fn future(tx: oneshot::Sender<Result<RecordMetadata>>) -> Self {
        Delivery(Some(Notify::Future(tx)))
    }

    fn callback(f: Callback) -> Self {
        Delivery(Some(Notify::Callback(std::sync::Mutex::new(f))))
    }

    fn deliver(mut self, result: Result<RecordMetadata>) {
        self.answer(result);
    }

    fn answer(&mut self, result: Result<RecordMetadata>) {
        match self.0.take() {
            Some(Notify::Future(tx)) => {
                let _ = tx.send(result);
            }
            Some(Notify::Callback(f)) => {
                // A poisoned lock still holds the callback, which never ran.
                let f = f
                    .into_inner()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                f(result)
            }
            None => {}
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.answer(Err(Error::Closed));
    }
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

/// Owns one partition's queue: fills a batch, sends it, and keeps up to
/// `max.in.flight.requests.per.connection` batches on their way (one without idempotence).
/// Acknowledgements are handled in send order; after a failure every batch behind it is
/// resent in order, one at a time, before sending goes on.
struct Worker {
    inner: Arc<Inner>,
    topic: String,
    partition: i32,
    rx: mpsc::UnboundedReceiver<Msg>,
    /// Idempotence: this partition's producer id, epoch and next sequence number.
    sequence: Option<Sequence>,
    /// Set when the epochs of the producer id ran out: ask for a new id.
    fresh_id: bool,
    /// Batches sent and not yet answered, oldest first, with their first attempts.
    window: VecDeque<Sent>,
    /// Batches sealed and batches resolved so far (flushes wait for a count).
    sealed: u64,
    resolved: u64,
    /// Flush requests: answered once `resolved` reaches the number.
    flushes: Vec<(u64, oneshot::Sender<()>)>,
}

#[derive(Debug, Clone, Copy)]
struct Sequence {
    producer_id: i64,
    epoch: i16,
    next: i32,
}

/// A batch being filled.
struct Open {
    builder: RecordBatchBuilder,
    records: Vec<Pending>,
    max_bytes: usize,
    /// No more records fit.
    full: bool,
    /// linger.ms after its first record was queued.
    due: tokio::time::Instant,
}

/// A sealed batch on its way.
struct Sent {
    batch: Bytes,
    records: Vec<Pending>,
    /// delivery.timeout.ms after its oldest record was queued.
    deadline: Instant,
    /// Sent while earlier batches were in flight: a refusal as out of sequence may only
    /// mean it overtook them.
    overtaking: bool,
}

type Attempt = Pin<Box<dyn Future<Output = Result<pb::ProduceResponse>> + Send>>;

impl Worker {
    fn new(
        inner: Arc<Inner>,
        topic: &str,
        partition: i32,
        rx: mpsc::UnboundedReceiver<Msg>,
    ) -> Self {
        Worker {
            inner,
            topic: topic.to_string(),
            partition,
            rx,
            sequence: None,
            fresh_id: false,
            window: VecDeque::new(),
            sealed: 0,
            resolved: 0,
            flushes: Vec::new(),
        }
    }

    async fn run(mut self) {
        let max_in_flight = self.inner.config.max_in_flight();
        let mut open: Option<Open> = None;
        // A record that did not fit the open batch: it starts the next one.
        let mut carry: Option<Pending> = None;
        let mut closed = false;
        // The first attempts of the batches in `window`, in the same order (kept out of
        // `self`, which is shared across awaits and so must be `Sync`).
        let mut attempts: FuturesOrdered<Attempt> = FuturesOrdered::new();
        loop {
            // A full batch goes out while the window has room; one that is not full goes out
            // once linger.ms has passed and nothing else is in flight. While a batch is on
            // its way, records gather into the next one: fewer, larger batches, which is
            // what a replicated partition commits fastest (each batch is one Raft entry).
            if let Some(o) = &open
                && self.window.len() < max_in_flight
                && (o.full
                    || closed
                    || self.flushes.iter().any(|(n, _)| *n > self.sealed)
                    || (self.window.is_empty() && o.due <= tokio::time::Instant::now()))
                && let Some(o) = open.take()
            {
                self.send(o, &mut attempts).await;
                if let Some(p) = carry.take() {
                    open = Some(self.open(p).await);
                }
                continue;
            }
            if closed && open.is_none() && self.window.is_empty() {
                self.answer_flushes();
                return;
            }
            let idle = self.window.is_empty();
            let due = open.as_ref().map(|o| o.due);
            let receiving = !closed && open.as_ref().is_none_or(|o| !o.full);
            tokio::select! {
                biased;
                Some(result) = attempts.next(), if !attempts.is_empty() => {
                    self.settle(result, &mut attempts).await;
                }
                m = self.rx.recv(), if receiving => match m {
                    None => closed = true,
                    Some(Msg::Flush(tx)) => {
                        // Everything queued before the flush is in the open batch and
                        // the record carried over to the next.
                        let upto =
                            self.sealed + u64::from(open.is_some()) + u64::from(carry.is_some());
                        self.flushes.push((upto, tx));
                        self.answer_flushes();
                    }
                    Some(Msg::Record(p)) => match &mut open {
                        None => open = Some(self.open(p).await),
                        Some(o) => carry = o.push(p),
                    },
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)),
                    if idle && due.is_some() => {}
            }
        }
    }

    /// Starts a batch with `first`.
    async fn open(&self, first: Pending) -> Open {
        // linger.ms counts from the batch's first record, as in Kafka: records that queued
        // while the window was full do not wait again.
        let due = tokio::time::Instant::from_std(first.enqueued) + self.inner.config.linger;
        let mut o = Open {
            builder: RecordBatchBuilder::new(self.inner.config.compression),
            records: Vec::new(),
            max_bytes: self.max_batch_bytes().await,
            full: false,
            due,
        };
        // The first record always fits (the broker refuses it if it is too large).
        let _ = o.push(first);
        o
    }

    async fn max_batch_bytes(&self) -> usize {
        let limit = match self.inner.cluster.topic(&self.topic).await {
            Ok(route) => route.max_message_bytes.max(1) as usize,
            Err(_) => usize::MAX,
        };
        self.inner.config.batch_size.min(limit)
    }

    /// Seals the batch and sends its first attempt.
    async fn send(&mut self, o: Open, attempts: &mut FuturesOrdered<Attempt>) {
        let deadline = o.records[0].enqueued + self.inner.config.delivery_timeout;
        let queued = o.records[0].enqueued.elapsed();
        self.sealed += 1;
        let batch = match self.await_producer_id(deadline).await {
            Ok(id) => self.seal(o.builder, id),
            Err(e) => {
                self.resolve(o.records, Err(e));
                return;
            }
        };
        self.inner.stats.sent(o.records.len(), batch.len(), queued);
        attempts.push_back(Box::pin(attempt(
            self.inner.clone(),
            self.topic.clone(),
            self.partition,
            batch.clone(),
            deadline,
        )));
        let overtaking = !self.window.is_empty();
        self.window.push_back(Sent {
            batch,
            records: o.records,
            deadline,
            overtaking,
        });
    }

    /// The oldest batch in flight was answered.
    async fn settle(
        &mut self,
        result: Result<pb::ProduceResponse>,
        attempts: &mut FuturesOrdered<Attempt>,
    ) {
        let Some(first) = self.window.pop_front() else {
            return;
        };
        let err = match result {
            Ok(resp) => {
                self.resolve(first.records, Ok(resp));
                return;
            }
            Err(e) => e,
        };
        // The batches behind it are on their way too: collect their answers before sending
        // anything again, so that the partition gets every batch in order.
        let mut behind = Vec::new();
        while let Some(r) = attempts.next().await {
            behind.push(r);
        }
        let later: Vec<Sent> = self.window.drain(..).collect();
        // Everything before it is acknowledged now: if it was refused for a gap while
        // those were still on their way, it only arrived first.
        let overtook = first.overtaking && err.code() == Some(ErrorCode::OutOfOrderSequenceNumber);
        let queue = std::iter::once((first, Err(err), overtook))
            .chain(later.into_iter().zip(behind).map(|(s, r)| (s, r, true)));
        // The last batch that finally failed, and whether the partition refused it on sight.
        let mut failed: Option<(Error, bool)> = None;
        for (mut sent, result, behind_failure) in queue {
            let result = match (result, &failed) {
                (Ok(resp), _) => Ok(resp),
                // Behind a batch that may have been stored: resending could put these ahead
                // of it.
                (Err(_), Some((cause, false))) => Err(Error::Abandoned {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    cause: cause.to_string(),
                }),
                // Behind a batch the partition refused: it was not stored, and neither was
                // this one (a gap in the old epoch's sequence). Renumber it in the new epoch
                // and send it again, as Kafka's producer does; a bad record costs only its
                // own batch.
                (Err(e), Some((cause, true))) => match self.renumber(&sent.batch) {
                    Some(batch) => {
                        sent.batch = batch;
                        self.retry(&sent, e, true).await
                    }
                    None => Err(Error::Abandoned {
                        topic: self.topic.clone(),
                        partition: self.partition,
                        cause: cause.to_string(),
                    }),
                },
                // A batch behind a failed one was refused for that (out of sequence, or
                // the same lost leader): it gets sent again whatever the error.
                (Err(e), None) => self.retry(&sent, e, behind_failure).await,
            };
            if let Err(e) = &result
                && !matches!(failed, Some((_, false)))
            {
                failed = Some((e.clone(), e.refused_unstored()));
                self.restart_sequence();
            }
            self.resolve(sent.records, result);
        }
    }

    /// `batch` numbered as the next one of the current producer epoch, or `None` if the
    /// producer has no sequence now (its epochs ran out and it must ask for a new id).
    fn renumber(&mut self, batch: &Bytes) -> Option<Bytes> {
        let seq = self.sequence?;
        let header = sluice_proto::batch::BatchHeader::parse(batch).ok()?;
        let mut out = bytes::BytesMut::from(&batch[..]);
        sluice_proto::batch::set_producer(
            &mut out,
            sluice_proto::batch::ProducerFields {
                producer_id: seq.producer_id,
                producer_epoch: seq.epoch,
                base_sequence: seq.next,
            },
        );
        self.sequence = Some(Sequence {
            next: sluice_proto::batch::sequence_plus(seq.next, header.record_count),
            ..seq
        });
        Some(out.freeze())
    }

    /// Sends `sent` again after `last` until it succeeds, fails for good, or its delivery
    /// timeout passes.
    async fn retry(
        &self,
        sent: &Sent,
        mut last: Error,
        mut resend_anyway: bool,
    ) -> Result<pb::ProduceResponse> {
        let config = &self.inner.config;
        let cluster = &self.inner.cluster;
        let mut backoff = config.retry_backoff;
        let mut attempts = 1u32;
        let mut hinted = false;
        loop {
            if !(last.is_retriable() || resend_anyway) {
                return Err(last);
            }
            if Instant::now() + backoff >= sent.deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "delivery to {}-{} ({attempts} attempts)",
                        self.topic, self.partition
                    ),
                    after: config.delivery_timeout,
                    last: last.to_string(),
                });
            }
            tracing::warn!(topic = %self.topic, partition = self.partition, attempts, cause = %last, "retrying produce");
            if !resend_anyway {
                // A leader the error names is tried at once (once in a row: two brokers
                // with stale views must not ping-pong); otherwise wait out the backoff,
                // but no longer than until metadata names another leader than the one
                // that failed, so a failover is followed when it completes, not at the
                // next backoff step.
                let named = last
                    .detail()
                    .filter(|d| {
                        d.error_code() == ErrorCode::NotLeader && !d.leader_address.is_empty()
                    })
                    .map(|d| d.leader_address.clone());
                let failed_at = cluster.cached_leader(&self.topic, self.partition);
                match named {
                    Some(leader) if !hinted && Some(&leader) != failed_at.as_ref() => {
                        hinted = true;
                        cluster.note_leader(&self.topic, self.partition, leader);
                    }
                    _ => {
                        hinted = false;
                        let until = tokio::time::Instant::now() + backoff;
                        cluster
                            .await_other_leader(
                                &self.topic,
                                self.partition,
                                failed_at.as_deref(),
                                until,
                            )
                            .await;
                        backoff = (backoff * 2).min(config.retry_backoff_max);
                    }
                }
            }
            resend_anyway = false;
            attempts += 1;
            self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
            match attempt(
                self.inner.clone(),
                self.topic.clone(),
                self.partition,
                sent.batch.clone(),
                sent.deadline,
            )
            .await
            {
                Ok(resp) => return Ok(resp),
                Err(e) => last = e,
            }
        }
    }

    /// Resolves every record's future of one batch, in order.
    fn resolve(&mut self, records: Vec<Pending>, result: Result<pb::ProduceResponse>) {
        for (i, p) in records.into_iter().enumerate() {
            let r = match &result {
                Ok(resp) => Ok(RecordMetadata {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    offset: if resp.base_offset < 0 {
                        -1
                    } else {
                        resp.base_offset + i as i64
                    },
                    timestamp: p.timestamp,
                }),
                Err(e) => Err(e.clone()),
            };
            p.delivery.deliver(r);
        }
        self.resolved += 1;
        self.answer_flushes();
    }

    fn answer_flushes(&mut self) {
        let resolved = self.resolved;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flushes)
            .into_iter()
            .partition(|(n, _)| *n <= resolved);
        self.flushes = waiting;
        for (_, tx) in done {
            let _ = tx.send(());
        }
    }

    /// The producer id, asked of the partition's leader once per producer.
    async fn producer_id(&self) -> Result<i64> {
        let mut id = self.inner.producer_id.lock().await;
        if let Some(id) = *id
            && !self.fresh_id
        {
            return Ok(id);
        }
        let cluster = &self.inner.cluster;
        let address = cluster.leader(&self.topic, self.partition).await?;
        let mut client = cluster.log_client(&address)?;
        let got = tokio::time::timeout(
            cluster.config.request_timeout,
            client.init_producer_id(pb::InitProducerIdRequest {}),
        )
        .await
        .map_err(|_| Error::Timeout {
            what: format!("asking {address} for a producer id"),
            after: cluster.config.request_timeout,
            last: "no answer".into(),
        })?
        .map_err(|status| Error::from_status(&address, status))?
        .into_inner()
        .producer_id;
        *id = Some(got);
        Ok(got)
    }

    /// Numbers the batch (idempotence) with `producer_id` on first use.
    fn seal(&mut self, mut builder: RecordBatchBuilder, producer_id: Option<i64>) -> Bytes {
        let seq = match (self.sequence, producer_id) {
            (Some(s), _) => s,
            (None, Some(producer_id)) => Sequence {
                producer_id,
                epoch: 0,
                next: 0,
            },
            (None, None) => return builder.build(),
        };
        let count = builder.record_count();
        builder.producer(sluice_proto::batch::ProducerFields {
            producer_id: seq.producer_id,
            producer_epoch: seq.epoch,
            base_sequence: seq.next,
        });
        self.sequence = Some(Sequence {
            next: sluice_proto::batch::sequence_plus(seq.next, count),
            ..seq
        });
        builder.build()
    }

    /// The producer id for idempotence, if this partition needs one yet; retried within the
    /// delivery timeout.
    async fn await_producer_id(&mut self, deadline: Instant) -> Result<Option<i64>> {
        if !self.inner.config.idempotent() || self.sequence.is_some() {
            return Ok(None);
        }
        let mut backoff = self.inner.config.retry_backoff;
        loop {
            match self.producer_id().await {
                Ok(id) => {
                    self.fresh_id = false;
                    return Ok(Some(id));
                }
                Err(e) if e.is_retriable() && Instant::now() + backoff < deadline => {
                    self.inner.cluster.invalidate(&self.topic);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.inner.config.retry_backoff_max);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// After a batch finally failed, perhaps stored and perhaps not: later batches start a
    /// new epoch at sequence 0, so the partition never takes one of them for that batch.
    fn restart_sequence(&mut self) {
        if let Some(s) = &mut self.sequence {
            if s.epoch == i16::MAX {
                self.sequence = None;
                self.fresh_id = true;
            } else {
                s.epoch += 1;
                s.next = 0;
            }
        }
    }
}

impl Open {
    /// Adds a record, or gives it back (and the batch is full) if it has no room for it.
    fn push(&mut self, p: Pending) -> Option<Pending> {
        let first = self.records.first().map_or(p.timestamp, |f| f.timestamp);
        let size = RecordBatchBuilder::record_size(
            p.timestamp - first,
            p.key.as_deref(),
            &p.value,
            &p.headers,
        );
        if !self.records.is_empty() && self.builder.size() + size > self.max_bytes {
            self.full = true;
            return Some(p);
        }
        self.builder
            .append(p.timestamp, p.key.as_deref(), &p.value, &p.headers);
        self.records.push(p);
        if self.builder.size() >= self.max_bytes {
            self.full = true;
        }
        None
    }
}

/// One produce request for `batch` to the partition's leader (as the metadata has it),
/// within the request timeout and what is left of the delivery timeout.
async fn attempt(
    inner: Arc<Inner>,
    topic: String,
    partition: i32,
    batch: Bytes,
    deadline: Instant,
) -> Result<pb::ProduceResponse> {
    let cluster = &inner.cluster;
    let remaining = deadline.saturating_duration_since(Instant::now());
    let timeout = cluster
        .config
        .request_timeout
        .min(remaining)
        .max(Duration::from_millis(1));
    let address = cluster.leader(&topic, partition).await?;
    let mut client = cluster.log_client(&address)?;
    let req = pb::ProduceRequest {
        topic: topic.clone(),
        partition,
        acks: inner.config.acks.wire(),
        timeout_ms: timeout.as_millis() as u32,
        batch,
    };
    let sent = Instant::now();
    let call = tokio::time::timeout(timeout, client.produce(req));
    // A leader that went silent (paused, hung, cut off) is replaced by an election while
    // this request waits: with idempotence the batch can be resent to the new leader
    // safely, so watch for one rather than wait out the whole request timeout.
    let moved = async {
        if !inner.config.idempotent() {
            return std::future::pending().await;
        }
        tokio::time::sleep(inner.config.leader_move_check).await;
        let until = tokio::time::Instant::from_std(sent + timeout);
        match cluster
            .await_other_leader(&topic, partition, Some(&address), until)
            .await
        {
            Some(leader) => leader,
            None => std::future::pending().await,
        }
    };
    let answer = tokio::select! {
        answer = call => answer,
        leader = moved => {
            let mut detail = pb::ErrorDetail::new(
                ErrorCode::NotLeader,
                format!(
                    "{topic}-{partition}: no answer from {address} within {:?} while metadata names {leader} as the leader; resending there",
                    sent.elapsed()
                ),
            );
            detail.leader_address = leader;
            cluster.drop_channel(&address);
            return Err(Error::broker(detail));
        }
    };
    if answer.is_ok() {
        inner.stats.answered(sent.elapsed());
    }
    match answer {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => {
            let err = Error::from_status(&address, status);
            if matches!(err, Error::Rpc { .. }) {
                cluster.drop_channel(&address);
            }
            Err(err)
        }
        Err(_) => Err(Error::Timeout {
            what: format!("produce to {address}"),
            after: timeout,
            last: "no answer".into(),
        }),
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .finish()
    }
}
