//! An unreplicated partition (`replication.factor` 1): its log, its high watermark and
//! what waits on them. Replicated partitions are [`crate::replica::group::Replica`]s; both
//! validate batches with [`validate_batch`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use sluice_proto::TopicConfig;
use sluice_proto::batch::{self, BatchError};
use sluice_proto::topic::CompressionType;
use tokio::sync::watch;

use crate::config::FlushPolicy;
use crate::error::{Error, Result};
use crate::live_config::LiveConfig;
use crate::producer_state::{BatchId, ProducerStates, Verdict};
use crate::storage::{AppendInfo, LogOffsets, LogStorage};

/// Producer state saved on a clean close, with the log end it describes.
const PRODUCER_SNAPSHOT: &str = "producers.json";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ProducerSnapshot {
    end_offset: i64,
    producers: ProducerStates,
}

#[derive(Debug)]
pub(crate) struct Partition {
    pub topic: Arc<str>,
    pub id: i32,
    pub config: LiveConfig,
    log: RwLock<Box<dyn LogStorage>>,
    /// Idempotent producers' last batches; changed only under the log's write lock.
    producers: Mutex<ProducerStates>,
    /// Where the producer snapshot is written on close (none for in-memory logs).
    dir: Option<std::path::PathBuf>,
    producer_limits: crate::producer_state::ProducerLimits,
    flush: FlushPolicy,
    /// Consumers read below this offset only.
    high_watermark: watch::Sender<i64>,
    /// Everything below this offset is on stable storage.
    flushed: watch::Sender<i64>,
    /// Set when the partition is queued for the flusher.
    pub(crate) dirty: AtomicBool,
    /// Set when a write or fsync failed: the log's state is unknown, so it takes no more
    /// writes until the broker restarts and recovers it.
    failed: Mutex<Option<String>>,
    /// Set by `close`: later appends are refused instead of landing after the clean-shutdown
    /// marker.
    closed: AtomicBool,
    /// Told whenever an idempotent producer's batch is appended.
    sequenced: tokio::sync::Notify,
}

impl Partition {
    pub(crate) fn new(
        topic: Arc<str>,
        id: i32,
        config: LiveConfig,
        log: Box<dyn LogStorage>,
        flush: FlushPolicy,
    ) -> Self {
        let offsets = log.offsets();
        Partition {
            topic,
            id,
            config,
            log: RwLock::new(log),
            producers: Mutex::new(ProducerStates::default()),
            dir: None,
            producer_limits: Default::default(),
            flush,
            high_watermark: watch::Sender::new(offsets.log_end),
            flushed: watch::Sender::new(offsets.flushed),
            dirty: AtomicBool::new(false),
            failed: Mutex::new(None),
            closed: AtomicBool::new(false),
            sequenced: tokio::sync::Notify::new(),
        }
    }

    /// A partition on disk in `dir`: restores its idempotent producers from the snapshot of
    /// the last clean close and the batches written after it (at most the active segment's).
    /// Blocking.
    pub(crate) fn open(
        topic: Arc<str>,
        id: i32,
        config: LiveConfig,
        log: Box<dyn LogStorage>,
        flush: FlushPolicy,
        dir: &std::path::Path,
        producer_limits: crate::producer_state::ProducerLimits,
    ) -> Result<Self> {
        let mut p = Partition::new(topic, id, config, log, flush);
        p.dir = Some(dir.to_path_buf());
        p.producer_limits = producer_limits;
        let offsets = p.offsets();
        let snapshot: Option<ProducerSnapshot> = std::fs::read(dir.join(PRODUCER_SNAPSHOT))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|s: &ProducerSnapshot| s.end_offset <= offsets.log_end);
        let active_base = p
            .log
            .read()
            .segments()
            .last()
            .map_or(offsets.log_start, |s| s.base_offset);
        let (mut states, from) = match snapshot {
            Some(s) if s.end_offset >= active_base => (s.producers, s.end_offset),
            Some(s) => (s.producers, active_base),
            None => (ProducerStates::default(), active_base),
        };
        let now = crate::clock::now_ms();
        // Idle time counts from now: record timestamps are the producer's to set.
        let scanned = p
            .log
            .read()
            .scan_headers(from.max(offsets.log_start), &mut |h| {
                states.record_header(h, now)
            });
        if let Err(e) = scanned {
            // A damaged batch stops the scan (readers get CORRUPT_MESSAGE for it); producers
            // not seen are taken at whatever sequence they send next.
            tracing::warn!(topic = %p.topic, partition = p.id, cause = %e, "rebuilding idempotent producers stopped early");
        }
        states.set_max_producers(producer_limits.max_producers);
        *p.producers.lock() = states;
        Ok(p)
    }

    fn storage_err(&self, source: crate::storage::StorageError) -> Error {
        Error::Storage {
            topic: self.topic.to_string(),
            partition: self.id,
            source,
        }
    }

    fn check_online(&self) -> Result<()> {
        match &*self.failed.lock() {
            Some(cause) => Err(Error::PartitionOffline {
                topic: self.topic.to_string(),
                partition: self.id,
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    pub(crate) fn subscribe_high_watermark(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    pub(crate) fn offsets(&self) -> LogOffsets {
        self.log.read().offsets()
    }

    /// Checks a batch as received; see [`validate_batch`]. Blocking (CPU).
    pub(crate) fn validate(&self, batch: Bytes) -> Result<BytesMut> {
        validate_batch(&self.topic, self.id, &self.config.get(), batch)
    }

    /// An idempotent producer keeps several batches in flight, and requests can be handled in
    /// another order than they were sent: a batch ahead of its producer's sequence waits
    /// (up to the broker's producer sequence wait) for the ones before it. [`append`]
    /// judges it after that.
    ///
    /// [`append`]: Partition::append
    pub(crate) async fn await_turn(&self, batch: &[u8]) {
        let Some(id) = batch::BatchHeader::parse(batch)
            .ok()
            .and_then(|h| BatchId::of(&h))
        else {
            return;
        };
        let patience = tokio::time::Instant::now() + self.producer_limits.sequence_wait;
        loop {
            let appended = self.sequenced.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            if !self.producers.lock().is_early(&id, None)
                || tokio::time::timeout_at(patience, appended).await.is_err()
            {
                return;
            }
        }
    }

    /// Appends a validated batch, unless it is a retry of one an idempotent producer already
    /// stored here: then nothing is written and the original's offsets are returned. Blocking
    /// (disk): runs on the blocking pool.
    pub(crate) fn append(&self, mut batch: BytesMut, now_ms: i64) -> Result<AppendInfo> {
        self.check_online()?;
        let mut log = self.log.write();
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let id = batch::BatchHeader::parse(&batch)
            .ok()
            .and_then(|h| BatchId::of(&h));
        if let Some(id) = &id {
            let verdict =
                self.producers
                    .lock()
                    .check(id, None)
                    .map_err(|source| Error::Sequence {
                        topic: self.topic.to_string(),
                        partition: self.id,
                        source,
                    })?;
            if let Verdict::Duplicate(b) = verdict {
                tracing::debug!(topic = %self.topic, partition = self.id, producer = id.producer_id, base_offset = b.base_offset, "dropped a duplicate batch");
                return Ok(AppendInfo {
                    base_offset: b.base_offset,
                    last_offset: b.last_offset,
                    max_timestamp: -1,
                });
            }
        }
        let info = log.append(&mut batch, 0, now_ms).map_err(|e| {
            self.fail(format!("append failed: {e}"));
            self.storage_err(e)
        })?;
        if let Some(id) = &id {
            self.producers
                .lock()
                .record(id, info.base_offset, info.last_offset, now_ms);
            self.sequenced.notify_waiters();
        }
        if let FlushPolicy::Interval(_) = self.flush {
            self.advance_high_watermark(info.last_offset + 1);
        }
        Ok(info)
    }

    fn advance_high_watermark(&self, to: i64) {
        self.high_watermark.send_if_modified(|hw| {
            let moved = to > *hw;
            if moved {
                *hw = to;
            }
            moved
        });
    }

    fn fail(&self, cause: String) {
        tracing::error!(topic = %self.topic, partition = self.id, %cause, "partition taken offline");
        self.failed.lock().get_or_insert(cause);
        // Wake anyone waiting for a flush so they see the failure instead of timing out.
        self.flushed.send_modify(|_| {});
    }

    /// Waits until `offset` is flushed, or fails if the partition went offline.
    pub(crate) async fn wait_flushed(&self, offset: i64) -> Result<()> {
        let mut rx = self.flushed.subscribe();
        loop {
            if *rx.borrow_and_update() >= offset {
                return Ok(());
            }
            self.check_online()?;
            if rx.changed().await.is_err() {
                return Err(Error::ShuttingDown);
            }
        }
    }

    /// One flusher round for this partition. Blocking (fsync).
    pub(crate) fn flush(&self) {
        self.dirty.store(false, Ordering::Release);
        let target = self.log.write().flush_target();
        if let Err(e) = target.sync() {
            self.fail(format!("fsync failed: {e}"));
            return;
        }
        self.log.write().mark_flushed(target.end_offset);
        self.flushed.send_if_modified(|f| {
            let moved = target.end_offset > *f;
            if moved {
                *f = target.end_offset;
            }
            moved
        });
        if self.flush == FlushPolicy::Always {
            self.advance_high_watermark(target.end_offset);
        }
    }

    /// Whole batches from `offset`, below the high watermark. Blocking (disk).
    pub(crate) fn read(&self, offset: i64, max_bytes: usize) -> Result<Bytes> {
        let hw = self.high_watermark();
        let log = self.log.read();
        if offset > hw {
            let o = log.offsets();
            return Err(
                self.storage_err(crate::storage::StorageError::OffsetOutOfRange {
                    requested: offset,
                    log_start: o.log_start,
                    log_end: hw,
                }),
            );
        }
        log.read(offset, max_bytes, hw).map_err(|e| match e {
            crate::storage::StorageError::OffsetOutOfRange {
                requested,
                log_start,
                ..
            } => self.storage_err(crate::storage::StorageError::OffsetOutOfRange {
                requested,
                log_start,
                log_end: hw,
            }),
            other => self.storage_err(other),
        })
    }

    /// The first offset with a timestamp >= `ts` that consumers can read. Blocking (disk).
    pub(crate) fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>> {
        let hw = self.high_watermark();
        let found = self
            .log
            .read()
            .offset_for_timestamp(ts)
            .map_err(|e| self.storage_err(e))?;
        Ok(found.filter(|(o, _)| *o < hw))
    }

    /// Takes new segment settings (a topic config change).
    pub(crate) fn set_log_options(&self, options: crate::storage::LogOptions) {
        self.log.write().set_options(options);
    }

    /// Deletes segments that `retention.ms` / `retention.bytes` no longer keep. Blocking.
    pub(crate) fn enforce_retention(&self, now_ms: i64) -> Result<()> {
        let config = self.config.get();
        let segments = self.log.read().segments();
        let cut = crate::storage::retention_cut(
            &segments,
            config.retention_ms,
            config.retention_bytes,
            now_ms,
        );
        if let Some(offset) = cut {
            // Never delete what consumers have not been allowed to see yet.
            let offset = offset.min(self.high_watermark());
            let mut log = self.log.write();
            log.delete_segments_before(offset)
                .map_err(|e| self.storage_err(e))?;
            let mut producers = self.producers.lock();
            producers.truncate_head(log.offsets().log_start);
        }
        let expiration = self.producer_limits.expiration.as_millis() as i64;
        self.producers.lock().expire(now_ms, expiration);
        Ok(())
    }

    /// Flushes and closes the log for a fast, clean restart. Blocking.
    pub(crate) fn close(&self) -> Result<()> {
        let mut log = self.log.write();
        self.closed.store(true, Ordering::Release);
        if let Some(dir) = &self.dir {
            let snapshot = ProducerSnapshot {
                end_offset: log.offsets().log_end,
                producers: self.producers.lock().clone(),
            };
            // Only saves a rescan on the next open: a failure here loses nothing.
            let saved = serde_json::to_vec(&snapshot)
                .map_err(std::io::Error::other)
                .and_then(|data| {
                    crate::storage::replace_file(&dir.join(PRODUCER_SNAPSHOT), &data, false)
                });
            if let Err(e) = saved {
                tracing::warn!(topic = %self.topic, partition = self.id, cause = %e, "saving producer state; it will be rebuilt from the log");
            }
        }
        log.close().map_err(|e| self.storage_err(e))
    }
}

fn recompress(
    batch: &Bytes,
    codec: batch::Compression,
) -> std::result::Result<BytesMut, BatchError> {
    let (header, records) = batch::decode(batch, batch::DEFAULT_MAX_DECOMPRESSED)?;
    let mut b = sluice_proto::RecordBatchBuilder::new(codec);
    b.producer(batch::ProducerFields {
        producer_id: header.producer_id,
        producer_epoch: header.producer_epoch,
        base_sequence: header.base_sequence,
    });
    for r in &records {
        let headers: Vec<(String, Option<Bytes>)> = r
            .headers
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect();
        b.append(r.timestamp, r.key.as_deref(), &r.value, &headers);
    }
    debug_assert_eq!(b.record_count(), header.record_count);
    Ok(BytesMut::from(&b.build()[..]))
}

/// Checks a batch as received (size, CRC, record structure) and applies the topic's
/// `compression.type`. Blocking (CPU): runs on the blocking pool.
pub(crate) fn validate_batch(
    topic: &str,
    partition: i32,
    config: &TopicConfig,
    batch: Bytes,
) -> Result<BytesMut> {
    let max = config.max_message_bytes;
    if batch.len() > max as usize {
        return Err(Error::MessageTooLarge {
            topic: topic.to_string(),
            partition,
            size: batch.len(),
            max,
        });
    }
    let wrap_corrupt = |source| Error::CorruptBatch {
        topic: topic.to_string(),
        partition,
        source,
    };
    let wrap_invalid = |source| Error::InvalidBatch {
        topic: topic.to_string(),
        partition,
        source,
    };
    let header = batch::verify(&batch).map_err(|e| match e {
        BatchError::CrcMismatch { .. }
        | BatchError::Truncated { .. }
        | BatchError::BadLength(_) => wrap_corrupt(e),
        other => wrap_invalid(other),
    })?;
    if header.is_control() {
        return Err(wrap_invalid(BatchError::Malformed(
            "a control batch (attributes bit 5) is written by brokers only; clear the bit".into(),
        )));
    }
    batch::validate_records(&batch).map_err(wrap_invalid)?;
    if let CompressionType::Codec(codec) = config.compression_type
        && header.compression().map_err(wrap_invalid)? != codec
    {
        return recompress(&batch, codec).map_err(wrap_invalid);
    }
    Ok(BytesMut::from(batch))
}
