//! Processing a consumer group's records in parallel without losing their order or a
//! record (the idea of Confluent's Parallel Consumer): one [`Consumer`] feeds N workers;
//! records with the same key (or of the same partition, by [`Ordering`]) always go to the
//! same worker, which handles them one at a time in offset order. Offsets are committed
//! only below the lowest record of each partition not finished yet, so a crash re-delivers
//! what was in progress and never skips a record.
//!
//! A record whose handler fails is tried again (`max_attempts`, with exponential backoff),
//! the records behind it with the same key waiting; after the last attempt it goes to the
//! dead-letter topic when one is set (with headers naming where it came from and why) and
//! processing moves on, else the processor stops with an error naming the record, rather
//! than retrying forever.
//!
//! In flight (polled, not finished) is bounded by count and bytes: at the bound the
//! consumer's partitions are paused. When the group takes partitions away, their records
//! not started are dropped (the next owner gets them), the ones in progress get
//! `revoke_timeout` to finish, and what finished is committed before the partitions are
//! released.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as Atomic};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{Consumer, ConsumerRecord, PartitionEvent};
use crate::error::{Error, Result};
use crate::{Producer, ProducerRecord, TopicPartition};

/// Headers a dead letter carries, beside the original record's own.
pub mod dead_letter_headers {
    pub const TOPIC: &str = "sluice.dlq.topic";
    pub const PARTITION: &str = "sluice.dlq.partition";
    pub const OFFSET: &str = "sluice.dlq.offset";
    pub const ID: &str = "sluice.dlq.id";
    pub const ATTEMPTS: &str = "sluice.dlq.attempts";
    pub const ERROR: &str = "sluice.dlq.error";
    /// Every dead-letter header starts with this.
    pub const PREFIX: &str = "sluice.dlq.";
}

/// Which records must be handled one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ordering {
    /// Records with the same key, in offset order (keyless records: by partition). The
    /// most parallel order that keeps what producers usually rely on.
    #[default]
    Key,
    /// Records of the same partition, in offset order (Kafka's consumer order).
    Partition,
    /// No order: each record to the least busy worker.
    None,
}

impl std::str::FromStr for Ordering {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "key" => Ok(Ordering::Key),
            "partition" => Ok(Ordering::Partition),
            "none" => Ok(Ordering::None),
            other => Err(format!(
                "unknown ordering '{other}': use key, partition or none"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// Records handled at once, at most.
    pub workers: usize,
    pub ordering: Ordering,
    /// Records polled and not finished, at most (then the partitions are paused).
    pub max_in_flight: usize,
    /// Bytes (keys, values, headers) of those records, at most.
    pub max_in_flight_bytes: usize,
    /// Tries per record (1: no retry).
    pub max_attempts: u32,
    /// The wait before the second try, doubling per try up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// How often finished records' offsets are committed.
    pub commit_interval: Duration,
    /// How long records in progress of partitions the group takes away may finish.
    pub revoke_timeout: Duration,
    /// On stop, how long records in progress may finish.
    pub shutdown_timeout: Duration,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            workers: 16,
            ordering: Ordering::Key,
            max_in_flight: 10_000,
            max_in_flight_bytes: 64 * 1024 * 1024,
            max_attempts: 3,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(10),
            commit_interval: Duration::from_secs(1),
            revoke_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// What handles one record. A closure `Fn(ConsumerRecord) -> impl Future<Output =
/// Result<(), E>>` is one.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        record: ConsumerRecord,
    ) -> impl Future<Output = std::result::Result<(), String>> + Send;
}

impl<F, Fut, E> Handler for F
where
    F: Fn(ConsumerRecord) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), E>> + Send,
    E: std::fmt::Display,
{
    fn handle(
        &self,
        record: ConsumerRecord,
    ) -> impl Future<Output = std::result::Result<(), String>> + Send {
        self(record).map(|r| r.map_err(|e| e.to_string()))
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessorReport {
    /// Records handled successfully.
    pub processed: u64,
    /// Tries beyond the first.
    pub retries: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// The last offset committed per partition (the next to read).
    pub committed: BTreeMap<TopicPartition, i64>,
}

/// Where records that failed every try go.
#[derive(Debug, Clone)]
struct DeadLetters {
    producer: Producer,
    topic: String,
}

/// A group consumer feeding workers; see the module docs.
pub struct Processor {
    consumer: Consumer,
    config: ProcessorConfig,
    dead_letters: Option<DeadLetters>,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("config", &self.config)
            .field(
                "dead_letters",
                &self.dead_letters.as_ref().map(|d| &d.topic),
            )
            .finish_non_exhaustive()
    }
}

/// One record for a worker.
struct Job {
    record: ConsumerRecord,
    generation: u64,
    cancelled: Arc<AtomicBool>,
    bytes: usize,
}

#[derive(Debug)]
enum Outcome {
    Done {
        attempts: u32,
    },
    DeadLettered {
        attempts: u32,
    },
    Failed {
        attempts: u32,
        error: String,
    },
    /// Not handled (its partition was taken away, or the processor is stopping).
    Skipped,
}

struct Completion {
    tp: TopicPartition,
    offset: i64,
    id: String,
    generation: u64,
    bytes: usize,
    outcome: Outcome,
}

/// A partition's records between poll and commit.
#[derive(Debug)]
struct Part {
    generation: u64,
    cancelled: Arc<AtomicBool>,
    /// Offsets polled and not finished (in the backlog or with a worker).
    unfinished: BTreeSet<i64>,
    /// The offset after the last polled.
    next: i64,
    /// Handed to workers, not reported back.
    dispatched: usize,
    committed: Option<i64>,
}

impl Part {
    /// The offset below which every record is finished.
    fn committable(&self) -> i64 {
        self.unfinished.first().copied().unwrap_or(self.next)
    }
}

fn record_bytes(r: &ConsumerRecord) -> usize {
    r.value.len()
        + r.key.as_ref().map_or(0, Bytes::len)
        + r.headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len))
            .sum::<usize>()
}

fn tp_of(r: &ConsumerRecord) -> TopicPartition {
    TopicPartition::new(r.topic.to_string(), r.partition)
}

impl Processor {
    /// A processor over `consumer`, which must have a group, be subscribed, and not
    /// auto-commit (the processor commits what finished).
    pub fn new(consumer: Consumer, config: ProcessorConfig) -> Result<Self> {
        if consumer.member.is_none() {
            return Err(Error::InvalidArgument(
                "the processor needs a consumer subscribed to a group: call subscribe first".into(),
            ));
        }
        if consumer.config.enable_auto_commit {
            return Err(Error::InvalidArgument(
                "the processor commits what it finished: set ConsumerConfig::enable_auto_commit to false".into(),
            ));
        }
        if config.workers == 0 || config.max_in_flight == 0 || config.max_attempts == 0 {
            return Err(Error::InvalidArgument(format!(
                "workers ({}), max_in_flight ({}) and max_attempts ({}) must be at least 1",
                config.workers, config.max_in_flight, config.max_attempts
            )));
        }
        Ok(Processor {
            consumer,
            config,
            dead_letters: None,
        })
    }

    /// Sends records that failed every try to `topic` (which must exist; see
    /// [`crate::Admin::ensure_dead_letter_topic`]) and moves on, instead of stopping.
    pub fn dead_letters(mut self, producer: Producer, topic: impl Into<String>) -> Self {
        self.dead_letters = Some(DeadLetters {
            producer,
            topic: topic.into(),
        });
        self
    }

    /// Handles records until `stop` resolves (then finishes what is in progress, for up to
    /// `shutdown_timeout`, commits and leaves the group), or until a record fails every
    /// try with no dead-letter topic set (an error naming it; what finished before it is
    /// committed).
    pub async fn run<H: Handler>(
        mut self,
        handler: H,
        stop: impl Future<Output = ()>,
    ) -> Result<ProcessorReport> {
        let handler = Arc::new(handler);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completion>();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut senders = Vec::with_capacity(self.config.workers);
        let mut tasks = tokio::task::JoinSet::new();
        // Without order, one queue every worker takes from (a slow record holds only its
        // worker); else a queue per worker.
        let shared = (self.config.ordering == Ordering::None).then(|| {
            let (tx, rx) = mpsc::unbounded_channel::<Job>();
            senders.push(tx);
            Arc::new(tokio::sync::Mutex::new(rx))
        });
        for _ in 0..self.config.workers {
            let jobs = match &shared {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = mpsc::unbounded_channel::<Job>();
                    senders.push(tx);
                    Arc::new(tokio::sync::Mutex::new(rx))
                }
            };
            tasks.spawn(worker(
                handler.clone(),
                jobs,
                done_tx.clone(),
                stop_rx.clone(),
                self.config.clone(),
                self.dead_letters.clone(),
            ));
        }
        drop(done_tx);
        let mut state = State {
            parts: HashMap::new(),
            backlog: VecDeque::new(),
            in_flight: 0,
            in_flight_bytes: 0,
            generation: 0,
            report: ProcessorReport::default(),
            fatal: None,
            paused: false,
        };
        let mut stop = std::pin::pin!(stop);
        let mut last_commit = Instant::now();
        let poll_timeout = Duration::from_millis(100);
        let mut poll_error = None;
        loop {
            while let Ok(c) = done_rx.try_recv() {
                state.complete(c);
            }
            if state.fatal.is_some() || (&mut stop).now_or_never().is_some() {
                break;
            }
            state.dispatch(&self.config, &senders);
            let polled = if state.backlog.is_empty() {
                if state.paused {
                    self.consumer.resume(&self.consumer.assignment());
                    state.paused = false;
                }
                self.consumer.poll(poll_timeout).await
            } else {
                if !state.paused {
                    self.consumer.pause(&self.consumer.assignment());
                    state.paused = true;
                }
                if let Ok(Some(c)) = tokio::time::timeout(poll_timeout, done_rx.recv()).await {
                    state.complete(c);
                }
                // Still polled: the group's changes are applied by poll.
                self.consumer.poll(Duration::ZERO).await
            };
            match polled {
                Ok(records) => state.polled(records),
                Err(e) => {
                    poll_error = Some(e);
                    break;
                }
            }
            for event in self.consumer.take_events() {
                match event {
                    PartitionEvent::Revoked { partitions } => {
                        self.revoked(&mut state, &mut done_rx, &partitions, true)
                            .await;
                    }
                    PartitionEvent::Lost { partitions } => {
                        self.revoked(&mut state, &mut done_rx, &partitions, false)
                            .await;
                    }
                    _ => {}
                }
            }
            if state.paused && state.backlog.is_empty() {
                // Partitions added while paused start paused too; resume them all.
                self.consumer.resume(&self.consumer.assignment());
                state.paused = false;
            }
            if last_commit.elapsed() >= self.config.commit_interval {
                last_commit = Instant::now();
                self.commit(&mut state, None).await;
            }
        }
        // Stopping: records not started are skipped, those in progress get
        // shutdown_timeout to finish.
        let _ = stop_tx.send(true);
        drop(senders);
        state.backlog.clear();
        let deadline = Instant::now() + self.config.shutdown_timeout;
        while state.in_flight > 0 {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(c)) => state.complete(c),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        records = state.in_flight,
                        "records still in progress after the shutdown timeout are left unfinished; the group will deliver them again"
                    );
                    break;
                }
            }
        }
        tasks.abort_all();
        self.commit(&mut state, None).await;
        let report = state.report.clone();
        let closed = self.consumer.close().await;
        if let Some(e) = state.fatal.take() {
            return Err(e);
        }
        if let Some(e) = poll_error {
            return Err(e);
        }
        closed?;
        Ok(report)
    }

    /// Partitions the group took away (`commit`: they may still be committed) or this
    /// consumer lost: records not started are dropped, those in progress may finish for
    /// `revoke_timeout`, then what finished is committed and the partitions forgotten.
    async fn revoked(
        &mut self,
        state: &mut State,
        done_rx: &mut mpsc::UnboundedReceiver<Completion>,
        partitions: &[TopicPartition],
        commit: bool,
    ) {
        let gone: BTreeSet<&TopicPartition> = partitions.iter().collect();
        for tp in &gone {
            if let Some(p) = state.parts.get(*tp) {
                p.cancelled.store(true, Atomic::SeqCst);
            }
        }
        state.backlog.retain(|(tp, _)| !gone.contains(tp));
        if commit {
            let deadline = Instant::now() + self.config.revoke_timeout;
            while gone
                .iter()
                .any(|tp| state.parts.get(*tp).is_some_and(|p| p.dispatched > 0))
            {
                match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                    Ok(Some(c)) => state.complete(c),
                    Ok(None) => break,
                    Err(_) => {
                        tracing::warn!(
                            partitions = ?partitions,
                            "records of revoked partitions still in progress after the revoke timeout are abandoned; their next owner handles them again"
                        );
                        break;
                    }
                }
            }
            self.commit(state, Some(&gone)).await;
        }
        for tp in gone {
            state.parts.remove(tp);
        }
    }

    /// Commits, for `only` these partitions or all, the offset below which everything
    /// finished, where it moved. A failed commit is retried at the next interval.
    async fn commit(&mut self, state: &mut State, only: Option<&BTreeSet<&TopicPartition>>) {
        let offsets: Vec<(TopicPartition, i64)> = state
            .parts
            .iter()
            .filter(|(tp, _)| only.is_none_or(|o| o.contains(tp)))
            .filter(|(_, p)| p.committed.is_none_or(|c| p.committable() > c))
            .map(|(tp, p)| (tp.clone(), p.committable()))
            .collect();
        if offsets.is_empty() {
            return;
        }
        match self.consumer.commit(&offsets).await {
            Ok(()) => {
                for (tp, o) in offsets {
                    if let Some(p) = state.parts.get_mut(&tp) {
                        p.committed = Some(o);
                    }
                    state.report.committed.insert(tp, o);
                }
            }
            Err(e) => {
                tracing::warn!(cause = %e, "committing finished records' offsets failed; trying again at the next interval")
            }
        }
    }
}

/// The processor's bookkeeping.
struct State {
    parts: HashMap<TopicPartition, Part>,
    /// Polled, waiting for room in flight.
    backlog: VecDeque<(TopicPartition, ConsumerRecord)>,
    in_flight: usize,
    in_flight_bytes: usize,
    generation: u64,
    report: ProcessorReport,
    fatal: Option<Error>,
    paused: bool,
}

impl State {
    fn polled(&mut self, records: Vec<ConsumerRecord>) {
        for r in records {
            let tp = tp_of(&r);
            let part = self.parts.entry(tp.clone()).or_insert_with(|| {
                self.generation += 1;
                Part {
                    generation: self.generation,
                    cancelled: Arc::new(AtomicBool::new(false)),
                    unfinished: BTreeSet::new(),
                    next: r.offset,
                    dispatched: 0,
                    committed: None,
                }
            });
            part.unfinished.insert(r.offset);
            part.next = part.next.max(r.offset + 1);
            self.backlog.push_back((tp, r));
        }
    }

    /// Hands backlog records to workers while in-flight room lasts.
    fn dispatch(&mut self, config: &ProcessorConfig, senders: &[mpsc::UnboundedSender<Job>]) {
        while let Some((_, r)) = self.backlog.front() {
            let bytes = record_bytes(r);
            if self.in_flight >= config.max_in_flight
                || (self.in_flight > 0 && self.in_flight_bytes + bytes > config.max_in_flight_bytes)
            {
                return;
            }
            let Some((tp, record)) = self.backlog.pop_front() else {
                return;
            };
            let Some(part) = self.parts.get_mut(&tp) else {
                continue;
            };
            let w = match config.ordering {
                Ordering::Key => match &record.key {
                    Some(k) => hashed(k, senders.len()),
                    None => hashed(&tp, senders.len()),
                },
                Ordering::Partition => hashed(&tp, senders.len()),
                // The one shared queue.
                Ordering::None => 0,
            };
            let job = Job {
                record,
                generation: part.generation,
                cancelled: part.cancelled.clone(),
                bytes,
            };
            if senders[w].send(job).is_err() {
                // The worker is gone (only while stopping): the record stays unfinished.
                return;
            }
            part.dispatched += 1;
            self.in_flight += 1;
            self.in_flight_bytes += bytes;
        }
    }

    fn complete(&mut self, c: Completion) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(c.bytes);
        let Some(part) = self
            .parts
            .get_mut(&c.tp)
            .filter(|p| p.generation == c.generation)
        else {
            return;
        };
        part.dispatched = part.dispatched.saturating_sub(1);
        match c.outcome {
            Outcome::Done { attempts } => {
                part.unfinished.remove(&c.offset);
                self.report.processed += 1;
                self.report.retries += u64::from(attempts.saturating_sub(1));
            }
            Outcome::DeadLettered { attempts } => {
                part.unfinished.remove(&c.offset);
                self.report.dead_lettered += 1;
                self.report.retries += u64::from(attempts.saturating_sub(1));
            }
            Outcome::Failed { attempts, error } => {
                self.report.retries += u64::from(attempts.saturating_sub(1));
                if self.fatal.is_none() {
                    self.fatal = Some(Error::RecordFailed {
                        topic: c.tp.topic.clone(),
                        partition: c.tp.partition,
                        offset: c.offset,
                        id: c.id,
                        attempts,
                        cause: error,
                    });
                }
            }
            Outcome::Skipped => {}
        }
    }
}

fn hashed(x: &(impl Hash + ?Sized), n: usize) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    x.hash(&mut h);
    (h.finish() % n as u64) as usize
}

/// One worker: its records one at a time, in the order given.
async fn worker<H: Handler>(
    handler: Arc<H>,
    jobs: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>>,
    done: mpsc::UnboundedSender<Completion>,
    mut stop: watch::Receiver<bool>,
    config: ProcessorConfig,
    dead_letters: Option<DeadLetters>,
) {
    loop {
        // Taken one at a time: with a shared queue, the next record goes to whichever
        // worker is free first.
        let Some(job) = jobs.lock().await.recv().await else {
            return;
        };
        let r = &job.record;
        let tp = tp_of(r);
        let outcome = if job.cancelled.load(Atomic::SeqCst) || *stop.borrow() {
            Outcome::Skipped
        } else {
            attempt(&*handler, &job, &mut stop, &config, dead_letters.as_ref()).await
        };
        let c = Completion {
            tp,
            offset: r.offset,
            id: r.id.to_string(),
            generation: job.generation,
            bytes: job.bytes,
            outcome,
        };
        if done.send(c).is_err() {
            return;
        }
    }
}

/// Tries a record up to `max_attempts` times, then dead-letters it or fails.
async fn attempt<H: Handler>(
    handler: &H,
    job: &Job,
    stop: &mut watch::Receiver<bool>,
    config: &ProcessorConfig,
    dead_letters: Option<&DeadLetters>,
) -> Outcome {
    let mut backoff = config.retry_backoff;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match handler.handle(job.record.clone()).await {
            Ok(()) => return Outcome::Done { attempts },
            Err(e) => e,
        };
        if attempts >= config.max_attempts {
            return match dead_letters {
                Some(d) => match dead_letter(d, &job.record, attempts, &error).await {
                    Ok(()) => Outcome::DeadLettered { attempts },
                    Err(e) => Outcome::Failed {
                        attempts,
                        error: format!(
                            "{error}; sending it to the dead-letter topic '{}' failed too: {e}",
                            d.topic
                        ),
                    },
                },
                None => Outcome::Failed { attempts, error },
            };
        }
        tracing::debug!(record = %job.record.id, attempts, cause = %error, "handling a record failed; trying again");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return Outcome::Skipped,
        }
        if job.cancelled.load(Atomic::SeqCst) {
            return Outcome::Skipped;
        }
        backoff = (backoff * 2).min(config.retry_backoff_max);
    }
}

/// The dead letter of `r`: its key, value and headers, plus where it came from and why.
pub fn dead_letter_record(
    topic: &str,
    r: &ConsumerRecord,
    attempts: u32,
    error: &str,
) -> ProducerRecord {
    use dead_letter_headers as h;
    let mut out = ProducerRecord::new(topic, r.value.clone());
    out.key = r.key.clone();
    out.timestamp = Some(r.timestamp);
    out.headers = r
        .headers
        .iter()
        .filter(|x| !x.key.starts_with(h::PREFIX))
        .map(|x| (x.key.clone(), x.value.clone()))
        .collect();
    for (k, v) in [
        (h::TOPIC, r.topic.to_string()),
        (h::PARTITION, r.partition.to_string()),
        (h::OFFSET, r.offset.to_string()),
        (h::ID, r.id.to_string()),
        (h::ATTEMPTS, attempts.to_string()),
        (h::ERROR, error.chars().take(4096).collect()),
    ] {
        out.headers.push((k.to_string(), Some(Bytes::from(v))));
    }
    out
}

async fn dead_letter(
    d: &DeadLetters,
    r: &ConsumerRecord,
    attempts: u32,
    error: &str,
) -> Result<()> {
    let delivery = d
        .producer
        .send(dead_letter_record(&d.topic, r, attempts, error))
        .await?;
    delivery.await.map(|_| ())
}
