//! Failover benchmark: a 3-broker cluster of real processes, one RF=3 partition with
//! min.insync.replicas=2. Each trial SIGKILLs the partition leader and times how long until
//! an acks=all produce succeeds again (the producer retries on its own), then restarts the
//! broker and waits for a full in-sync set.
//!
//! `cargo build --release --bins && cargo run --release -p sluice-tests --example failover -- [TRIALS]`

use std::time::{Duration, Instant};

use sluice_client::{Acks, Admin, NewTopic, Producer, ProducerConfig, ProducerRecord};
use sluice_tests::{Cluster, eventually};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let trials: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client())?;
    admin
        .create_topic(
            NewTopic::new("failover", 1, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await?;
    let mut times = Vec::new();
    for trial in 0..trials {
        let admin = Admin::new(cluster.client())?;
        let leader = eventually(
            "a leader with all replicas in sync",
            Duration::from_secs(60),
            || async {
                let p = admin
                    .describe_topic("failover")
                    .await
                    .ok()?
                    .partitions
                    .remove(0);
                (p.leader > 0 && p.isr.len() == 3).then_some(p.leader)
            },
        )
        .await;
        let config = ProducerConfig {
            acks: Acks::All,
            linger: Duration::ZERO,
            retry_backoff: Duration::from_millis(20),
            retry_backoff_max: Duration::from_millis(100),
            ..ProducerConfig::default()
        };
        let producer = Producer::connect(cluster.client(), config).await?;
        producer
            .send(ProducerRecord::new("failover", "warm-up").partition(0))
            .await?
            .await?;
        cluster.node(leader).kill();
        let killed = Instant::now();
        producer
            .send(ProducerRecord::new("failover", format!("after-{trial}")).partition(0))
            .await?
            .await?;
        let took = killed.elapsed();
        println!("trial {trial}: leader {leader} killed, first acks=all produce after {took:?}");
        times.push(took);
        producer.close().await;
        cluster.node(leader).restart();
    }
    times.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    println!("failover over {trials} trials: p50 {p50:?}, max {max:?}");
    Ok(())
}
