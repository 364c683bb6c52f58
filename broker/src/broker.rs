//! [`Broker`]: the topics and partitions this broker holds, the flusher, retention, and
//! the admin operations. Request handlers in [`crate::service`] call into it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::{Condvar, Mutex, RwLock};
use sluice_proto::TopicConfig;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, FlushPolicy};
use crate::error::{Error, Result};
use crate::metadata::{MetadataStore, TopicRecord};
use crate::partition::Partition;
use crate::storage::{LogOptions, SegmentLog};

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A topic and its local partitions.
#[derive(Debug)]
pub struct Topic {
    pub record: TopicRecord,
    pub config: Arc<TopicConfig>,
    pub partitions: Vec<Arc<Partition>>,
}

#[derive(Debug)]
pub struct Broker {
    pub config: Config,
    pub cluster_id: String,
    /// host:port clients connect to.
    pub advertised_address: String,
    metadata: MetadataStore,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes topic creation and deletion (metadata and directories change together).
    admin_lock: tokio::sync::Mutex<()>,
    flusher: Arc<Flusher>,
    flusher_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub shutdown: CancellationToken,
}

/// Partitions with unsynced writes, and the thread that syncs them. One thread for all
/// partitions: concurrent writers share fsyncs (group commit), and fsync never runs on the
/// async runtime.
#[derive(Debug, Default)]
struct Flusher {
    queue: Mutex<Vec<Arc<Partition>>>,
    wake: Condvar,
    stop: std::sync::atomic::AtomicBool,
}

impl Flusher {
    fn enqueue(&self, partition: &Arc<Partition>) {
        if !partition.dirty.swap(true, Ordering::AcqRel) {
            self.queue.lock().push(partition.clone());
            self.wake.notify_one();
        }
    }

    fn run(&self, policy: FlushPolicy) {
        loop {
            let batch = {
                let mut queue = self.queue.lock();
                match policy {
                    FlushPolicy::Always => {
                        while queue.is_empty() && !self.stop.load(Ordering::Acquire) {
                            self.wake.wait(&mut queue);
                        }
                    }
                    FlushPolicy::Interval(d) => {
                        if !self.stop.load(Ordering::Acquire) {
                            self.wake.wait_for(&mut queue, d);
                        }
                    }
                }
                std::mem::take(&mut *queue)
            };
            for p in batch {
                p.flush();
            }
            if self.stop.load(Ordering::Acquire) && self.queue.lock().is_empty() {
                return;
            }
        }
    }
}

impl Broker {
    /// Opens the data directory: metadata, then every topic's partition logs (recovering
    /// them if the last run crashed). Blocking.
    pub fn open(config: Config, advertised_address: String) -> Result<Arc<Self>> {
        std::fs::create_dir_all(config.data_dir.join("logs")).map_err(|e| {
            Error::Internal(format!(
                "cannot create data directory {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let (metadata, cluster_id) = MetadataStore::open(
            &config.data_dir,
            config.node_id,
            config.metadata_cache_bytes,
        )?;
        let flusher = Arc::new(Flusher::default());
        let broker = Broker {
            config,
            cluster_id,
            advertised_address,
            metadata,
            topics: RwLock::new(BTreeMap::new()),
            admin_lock: tokio::sync::Mutex::new(()),
            flusher: flusher.clone(),
            flusher_thread: Mutex::new(None),
            shutdown: CancellationToken::new(),
        };
        let started = std::time::Instant::now();
        let records = broker.metadata.topics()?;
        let mut known_dirs = std::collections::HashSet::new();
        for record in records {
            for p in 0..record.partitions {
                known_dirs.insert(broker.partition_dir(&record.name, p));
            }
            let topic = broker.open_topic(record)?;
            broker
                .topics
                .write()
                .insert(topic.record.name.clone(), Arc::new(topic));
        }
        broker.remove_orphan_dirs(&known_dirs);
        tracing::info!(
            topics = broker.topics.read().len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "opened logs"
        );
        let policy = broker.config.flush;
        let handle = std::thread::Builder::new()
            .name("sluice-flusher".into())
            .spawn(move || flusher.run(policy))
            .map_err(|e| Error::Internal(format!("cannot start the flusher thread: {e}")))?;
        *broker.flusher_thread.lock() = Some(handle);
        Ok(Arc::new(broker))
    }

    fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.config
            .data_dir
            .join("logs")
            .join(format!("{topic}-{partition}"))
    }

    /// Directories left by a deletion that crashed half-way (the metadata is removed first).
    fn remove_orphan_dirs(&self, known: &std::collections::HashSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(self.config.data_dir.join("logs")) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && !known.contains(&path) {
                tracing::warn!(dir = %path.display(), "removing the log directory of a deleted topic");
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::error!(dir = %path.display(), cause = %e, "cannot remove an orphaned log directory");
                }
            }
        }
    }

    fn open_topic(&self, record: TopicRecord) -> Result<Topic> {
        let config = Arc::new(
            TopicConfig::from_map(&record.config, record.replication_factor).map_err(|e| {
                Error::Internal(format!(
                    "stored config of topic '{}' is invalid: {e}",
                    record.name
                ))
            })?,
        );
        let topic_name: Arc<str> = Arc::from(record.name.as_str());
        let options = LogOptions {
            segment_bytes: config.segment_bytes as u64,
            segment_ms: config.segment_ms,
            index_interval_bytes: self.config.index_interval_bytes,
        };
        let mut partitions = Vec::with_capacity(record.partitions as usize);
        for p in 0..record.partitions {
            let dir = self.partition_dir(&record.name, p);
            let log =
                SegmentLog::open(&dir, options, now_ms()).map_err(|source| Error::Storage {
                    topic: record.name.clone(),
                    partition: p,
                    source,
                })?;
            partitions.push(Arc::new(Partition::new(
                topic_name.clone(),
                p,
                config.clone(),
                Box::new(log),
                self.config.flush,
            )));
        }
        Ok(Topic {
            record,
            config,
            partitions,
        })
    }

    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic(name.to_string()))
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().values().cloned().collect()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Result<Arc<Partition>> {
        let t = self.topic(topic)?;
        t.partitions
            .get(usize::try_from(partition).unwrap_or(usize::MAX))
            .cloned()
            .ok_or_else(|| Error::UnknownPartition {
                topic: topic.to_string(),
                partition,
                count: t.record.partitions,
            })
    }

    /// Queues a partition for the flusher after a write.
    pub fn written(&self, partition: &Arc<Partition>) {
        self.flusher.enqueue(partition);
    }

    /// Validates and creates a topic: metadata first (durably), then its directories.
    pub async fn create_topic(
        self: &Arc<Self>,
        name: String,
        partitions: i32,
        replication_factor: i32,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>> {
        sluice_proto::validate_topic_name(&name).map_err(Error::InvalidTopic)?;
        let max = self.config.max_partitions_per_topic;
        if partitions < 1 || partitions > max {
            return Err(Error::InvalidPartitions(format!(
                "topic '{name}': partitions must be between 1 and {max}, got {partitions}"
            )));
        }
        let live_brokers = 1;
        let rf = if replication_factor == -1 {
            1
        } else {
            replication_factor
        };
        if rf < 1 || rf > live_brokers {
            return Err(Error::InvalidReplicationFactor(format!(
                "topic '{name}': replication factor {replication_factor} is not possible with {live_brokers} live broker(s); \
                 use a value between 1 and {live_brokers}"
            )));
        }
        TopicConfig::from_map(&overrides, rf)
            .map_err(|e| Error::InvalidConfig(format!("topic '{name}': {e}")))?;
        let _guard = self.admin_lock.lock().await;
        if self.topics.read().contains_key(&name) {
            return Err(Error::TopicExists(name));
        }
        let record = TopicRecord {
            name: name.clone(),
            partitions,
            replication_factor: rf,
            config: overrides,
            created_ms: now_ms(),
        };
        if validate_only {
            let config = Arc::new(
                TopicConfig::from_map(&record.config, rf)
                    .map_err(|e| Error::InvalidConfig(e.to_string()))?,
            );
            return Ok(Arc::new(Topic {
                record,
                config,
                partitions: Vec::new(),
            }));
        }
        let this = self.clone();
        let topic = tokio::task::spawn_blocking(move || -> Result<Topic> {
            this.metadata.put_topic(&record)?;
            this.open_topic(record)
        })
        .await
        .map_err(|e| Error::Internal(format!("topic creation task failed: {e}")))??;
        let topic = Arc::new(topic);
        self.topics.write().insert(name.clone(), topic.clone());
        tracing::info!(topic = %name, partitions, replication_factor = rf, "created topic");
        Ok(topic)
    }

    /// Deletes a topic: metadata first (durably), then its data.
    pub async fn delete_topic(self: &Arc<Self>, name: &str) -> Result<()> {
        let _guard = self.admin_lock.lock().await;
        let topic = self.topic(name)?;
        let this = self.clone();
        let dirs: Vec<PathBuf> = (0..topic.record.partitions)
            .map(|p| self.partition_dir(name, p))
            .collect();
        let n = name.to_string();
        tokio::task::spawn_blocking(move || -> Result<()> {
            this.metadata.delete_topic(&n)?;
            this.topics.write().remove(&n);
            for dir in dirs {
                std::fs::remove_dir_all(&dir)
                    .or_else(|e| {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| {
                        Error::Internal(format!(
                            "topic '{n}' deleted, but removing {} failed: {e}",
                            dir.display()
                        ))
                    })?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Internal(format!("topic deletion task failed: {e}")))??;
        tracing::info!(topic = %name, "deleted topic");
        Ok(())
    }

    /// Deletes expired segments until shutdown.
    pub async fn run_retention(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.retention_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for topic in this.topics() {
                    for p in &topic.partitions {
                        if let Err(e) = p.enforce_retention(now_ms()) {
                            tracing::error!(topic = %p.topic, partition = p.id, cause = %e, "retention failed");
                        }
                    }
                }
            })
            .await;
        }
    }

    /// Stops the flusher and closes every log cleanly. Blocking.
    pub fn close(&self) {
        self.shutdown.cancel();
        self.flusher.stop.store(true, Ordering::Release);
        self.flusher.wake.notify_all();
        if let Some(handle) = self.flusher_thread.lock().take() {
            let _ = handle.join();
        }
        for topic in self.topics() {
            for p in &topic.partitions {
                if let Err(e) = p.close() {
                    tracing::error!(topic = %p.topic, partition = p.id, cause = %e, "closing the log failed; it will be recovered on the next start");
                }
            }
        }
        if let Err(e) = self.metadata.flush() {
            tracing::error!(cause = %e, "flushing the metadata store failed");
        }
        tracing::info!("broker closed cleanly");
    }
}
