//! [`Producer`]: batches records per partition by `linger.ms` and `batch.size`, sends one
//! batch per partition at a time (so records of a partition stay in send order, also
//! across retries), and retries retriable errors with backoff until `delivery.timeout.ms`.
//!
//! Memory is bounded by `buffer.memory`: `send` waits (up to `max.block.ms`) when that
//! much data is queued and unacknowledged.
//!
//! With `enable.idempotence` (the default, with `acks=all`) the producer gets an id from the
//! cluster and numbers its records per partition, so a batch retried after a lost answer or
//! a leader failover is stored once: the partition recognises it and answers with the
//! original offsets. After a batch finally fails (its fate unknown), the partition's sequence
//! starts over under a new epoch, so later batches are never mistaken for it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use sluice_proto::batch::Compression;
use sluice_proto::{RecordBatchBuilder, acks, pb};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::cluster::{ClientConfig, Cluster};
use crate::error::{Error, Result};
use crate::partitioner::partition_for_key;

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
        }
    }
}

impl ProducerConfig {
    fn idempotent(&self) -> bool {
        self.enable_idempotence && self.acks == Acks::All
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
    tx: oneshot::Sender<Result<RecordMetadata>>,
    _permit: OwnedSemaphorePermit,
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
            }),
        })
    }

    /// Queues a record and returns a future for its acknowledgement. Waits only for
    /// buffer space and, on first use of a topic, for its metadata.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let inner = &self.inner;
        if inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let route = inner.cluster.topic(&record.topic).await?;
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
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            timestamp: record.timestamp.unwrap_or_else(crate::now_ms),
            key: record.key,
            value: record.value,
            headers: record.headers,
            enqueued: Instant::now(),
            tx,
            _permit: permit,
        };
        self.worker(&record.topic, partition)
            .send(Msg::Record(pending))
            .map_err(|_| Error::Closed)?;
        Ok(DeliveryFuture { rx })
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
                let worker = Worker {
                    inner: self.inner.clone(),
                    topic: topic.to_string(),
                    partition,
                    rx,
                    sequence: None,
                    fresh_id: false,
                };
                self.inner.tasks.lock().spawn(worker.run());
                tx
            })
            .clone()
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

/// Owns one partition's queue: builds a batch, sends it, repeats.
struct Worker {
    inner: Arc<Inner>,
    topic: String,
    partition: i32,
    rx: mpsc::UnboundedReceiver<Msg>,
    /// Idempotence: this partition's producer id, epoch and next sequence number.
    sequence: Option<Sequence>,
    /// Set when the epochs of the producer id ran out: ask for a new id.
    fresh_id: bool,
}

#[derive(Debug, Clone, Copy)]
struct Sequence {
    producer_id: i64,
    epoch: i16,
    next: i32,
}

impl Worker {
    async fn run(mut self) {
        let mut carry: Option<Msg> = None;
        loop {
            let first = match carry.take() {
                Some(m) => m,
                None => match self.rx.recv().await {
                    Some(m) => m,
                    None => return,
                },
            };
            let mut flushes = Vec::new();
            let mut records = Vec::new();
            let max_bytes = self.max_batch_bytes().await;
            let mut builder = RecordBatchBuilder::new(self.inner.config.compression);
            let push = |m: Msg,
                        builder: &mut RecordBatchBuilder,
                        records: &mut Vec<Pending>,
                        flushes: &mut Vec<oneshot::Sender<()>>|
             -> Option<Msg> {
                match m {
                    Msg::Flush(tx) => {
                        flushes.push(tx);
                        None
                    }
                    Msg::Record(p) => {
                        let delta = p.timestamp
                            - records
                                .first()
                                .map_or(p.timestamp, |f: &Pending| f.timestamp);
                        let size = RecordBatchBuilder::record_size(
                            delta,
                            p.key.as_deref(),
                            &p.value,
                            &p.headers,
                        );
                        if !records.is_empty() && builder.size() + size > max_bytes {
                            return Some(Msg::Record(p));
                        }
                        builder.append(p.timestamp, p.key.as_deref(), &p.value, &p.headers);
                        records.push(p);
                        None
                    }
                }
            };
            carry = push(first, &mut builder, &mut records, &mut flushes);
            // linger.ms counts from the batch's first record, as in Kafka: records that
            // queued while the previous batch was in flight do not wait again.
            let opened = records.first().map_or_else(Instant::now, |p| p.enqueued);
            let deadline = tokio::time::Instant::from_std(opened) + self.inner.config.linger;
            while carry.is_none() && flushes.is_empty() && builder.size() < max_bytes {
                // Records already queued join the batch even once linger.ms has passed.
                let next = tokio::select! {
                    biased;
                    m = self.rx.recv() => m,
                    _ = tokio::time::sleep_until(deadline) => break,
                };
                match next {
                    Some(m) => carry = push(m, &mut builder, &mut records, &mut flushes),
                    None => break,
                }
            }
            if !records.is_empty() {
                self.deliver(builder, records).await;
            }
            for f in flushes {
                let _ = f.send(());
            }
        }
    }

    async fn max_batch_bytes(&self) -> usize {
        let limit = match self.inner.cluster.topic(&self.topic).await {
            Ok(route) => route.max_message_bytes.max(1) as usize,
            Err(_) => usize::MAX,
        };
        self.inner.config.batch_size.min(limit)
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
        // The next batch continues after this one (sequences wrap at i32::MAX, as in Kafka).
        let next = seq.next as i64 + count as i64;
        self.sequence = Some(Sequence {
            next: if next > i32::MAX as i64 {
                (next - i32::MAX as i64 - 1) as i32
            } else {
                next as i32
            },
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

    /// Sends one batch, retrying retriable failures until `delivery.timeout.ms` after its
    /// oldest record was queued, then resolves every record's future.
    async fn deliver(&mut self, builder: RecordBatchBuilder, records: Vec<Pending>) {
        let inner = self.inner.clone();
        let config = &inner.config;
        let cluster = &inner.cluster;
        let deadline = records[0].enqueued + config.delivery_timeout;
        let mut backoff = config.retry_backoff;
        let mut attempts = 0u32;
        let batch = match self.await_producer_id(deadline).await {
            Ok(id) => self.seal(builder, id),
            Err(e) => {
                for p in records {
                    let _ = p.tx.send(Err(e.clone()));
                }
                return;
            }
        };
        let result = loop {
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = cluster
                .config
                .request_timeout
                .min(remaining)
                .max(Duration::from_millis(1));
            let attempt = async {
                let address = cluster.leader(&self.topic, self.partition).await?;
                let mut client = cluster.log_client(&address)?;
                let req = pb::ProduceRequest {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    acks: config.acks.wire(),
                    timeout_ms: timeout.as_millis() as u32,
                    batch: batch.clone(),
                };
                match tokio::time::timeout(timeout, client.produce(req)).await {
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
            };
            match attempt.await {
                Ok(resp) => break Ok(resp),
                Err(e) if e.is_retriable() && Instant::now() + backoff < deadline => {
                    tracing::warn!(topic = %self.topic, partition = self.partition, attempts, cause = %e, "retrying produce");
                    cluster.invalidate(&self.topic);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(config.retry_backoff_max);
                }
                Err(e) if e.is_retriable() => {
                    break Err(Error::Timeout {
                        what: format!(
                            "delivery to {}-{} ({attempts} attempts)",
                            self.topic, self.partition
                        ),
                        after: config.delivery_timeout,
                        last: e.to_string(),
                    });
                }
                Err(e) => break Err(e),
            }
        };
        if result.is_err() {
            self.restart_sequence();
        }
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
            let _ = p.tx.send(r);
        }
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
