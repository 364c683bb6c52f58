//! Rust client for Sluice.
//!
//! ```no_run
//! # async fn demo() -> sluice_client::Result<()> {
//! use sluice_client::{ClientConfig, Producer, ProducerConfig, ProducerRecord};
//! let producer = Producer::connect(ClientConfig::new("127.0.0.1:9092"), ProducerConfig::default()).await?;
//! let delivery = producer.send(ProducerRecord::new("events", "hello").key("user-1")).await?;
//! let meta = delivery.await?;
//! println!("stored at {}-{}@{}", meta.topic, meta.partition, meta.offset);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`cluster`]: connections per broker and the metadata cache (topics, leaders).
//! - [`admin`]: [`Admin`], topic management and cluster metadata.
//! - [`declarative`]: plans of declared topics (`sluice_manifest::plan`) made through
//!   [`Admin`] (for `sluice apply` and the operator).
//! - [`producer`]: [`Producer`], batching by `linger.ms`/`batch.size`, bounded retries; its
//!   children: `worker` (one partition's queue, in-flight window, retries, sequences),
//!   `delivery` (futures and callbacks, answered once), `metrics`.
//! - [`consumer`]: [`Consumer`], assign or subscribe, seek, poll with prefetch, commit. Its
//!   children: `group` (its side of a consumer group: heartbeats, reconciling, commits) and
//!   `fetch` (offset lookups and fetches per leader, and their answers).
//! - `groups`: a consumer group's coordinator found and called, followed when it moves
//!   (used by [`Admin`] and [`Consumer`]).
//!   `consumer::processor`: [`Processor`], key-ordered parallel processing of a group's
//!   records, with retries and dead letters.
//! - [`dedup`]: processed record ids (in memory, or on disk with the `sled` feature) and a
//!   handler wrapper that skips what was processed.
//! - [`partitioner`]: Kafka's murmur2 key partitioner.
//! - [`error`]: [`Error`], carrying the broker's error code.

pub mod admin;
pub mod cluster;
pub mod consumer;
pub mod declarative;
pub mod dedup;
pub mod error;
mod groups;
pub mod partitioner;
pub mod producer;

pub use admin::{Admin, AlterTopic, NewTopic, TopicMetadata};
pub use cluster::ClientConfig;
pub use consumer::processor::{Handler, Ordering, Processor, ProcessorConfig, ProcessorReport};
pub use consumer::{
    AutoOffsetReset, Consumer, ConsumerConfig, ConsumerRecord, Offset, PartitionEvent,
    RECORD_ID_HEADER, RecordId,
};
pub use error::{Error, Result};
pub use producer::{
    Acks, DeliveryFuture, Producer, ProducerConfig, ProducerMetrics, ProducerRecord, RecordMetadata,
};
pub use sluice_proto::batch::{Compression, Header};
pub use sluice_proto::{ErrorCode, pb};

/// A topic name and partition number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
