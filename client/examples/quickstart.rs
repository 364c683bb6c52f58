//! Produce a few keyed records and read them back.
//!
//! ```sh
//! cargo run --release --bin sluice -- dev          # in one terminal
//! cargo run -p sluice-client --example quickstart  # in another
//! ```

use std::time::Duration;

use sluice_client::{
    ClientConfig, Consumer, ConsumerConfig, Offset, Producer, ProducerConfig, ProducerRecord,
    TopicPartition,
};

#[tokio::main]
async fn main() -> sluice_client::Result<()> {
    let bootstrap = std::env::var("SLUICE_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let producer =
        Producer::connect(ClientConfig::new(&bootstrap), ProducerConfig::default()).await?;
    let mut deliveries = Vec::new();
    for (user, event) in [
        ("alice", "signed up"),
        ("bob", "paid"),
        ("alice", "logged in"),
    ] {
        deliveries.push(
            producer
                .send(ProducerRecord::new("events", event).key(user))
                .await?,
        );
    }
    for d in deliveries {
        let meta = d.await?;
        println!(
            "stored at {}-{} offset {}",
            meta.topic, meta.partition, meta.offset
        );
    }
    producer.close().await;

    let mut consumer = Consumer::new(ClientConfig::new(&bootstrap), ConsumerConfig::default())?;
    let partitions = consumer.partitions_for("events").await?;
    consumer
        .assign(
            partitions
                .into_iter()
                .map(|p| TopicPartition::new("events", p))
                .collect(),
            Offset::Earliest,
        )
        .await?;
    for r in consumer.poll(Duration::from_secs(2)).await? {
        let key = r
            .key
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        println!(
            "{}-{}@{} {key}: {}",
            r.topic,
            r.partition,
            r.offset,
            String::from_utf8_lossy(&r.value)
        );
    }
    Ok(())
}
