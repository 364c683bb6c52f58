//! Failover benchmark: a 3-broker cluster of real processes, one RF=3 partition with
//! min.insync.replicas=2, under a steady acks=all load (LOAD records of 1 KiB per second,
//! default 10,000; 0 for none). Each trial SIGKILLs (`kill`, the default) or SIGSTOPs
//! (`pause`) the partition leader and times how long until an acks=all produce succeeds
//! again (the producer, with its default retry backoff, retries on its own), then restarts
//! or resumes the broker and waits for a full in-sync set.
//!
//! `cargo build --release --bins && cargo run --release -p sluice-tests --example failover -- [TRIALS] [LOAD] [kill|pause]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_client::{Acks, Admin, NewTopic, Producer, ProducerConfig, ProducerRecord};
use sluice_tests::{Cluster, eventually};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let trials: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let load: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let pause = match std::env::args().nth(3).as_deref() {
        None | Some("kill") => false,
        Some("pause") => true,
        Some(other) => anyhow::bail!("unknown fault '{other}': use kill or pause"),
    };
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
    let (delivered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loader = {
        let producer = Producer::connect(
            cluster.client(),
            ProducerConfig {
                acks: Acks::All,
                ..ProducerConfig::default()
            },
        )
        .await?;
        let (delivered, failed) = (delivered.clone(), failed.clone());
        tokio::spawn(async move {
            // In ticks of 1 ms: 1 KiB records at `load` per second, through every failover.
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut sent = 0u64;
            let started = Instant::now();
            if load == 0 {
                return;
            }
            loop {
                tick.tick().await;
                let due = started.elapsed().as_millis() as u64 * load / 1000;
                while sent < due {
                    let (delivered, failed) = (delivered.clone(), failed.clone());
                    let record = ProducerRecord::new("failover", vec![b'x'; 1024]).partition(0);
                    let queued = producer
                        .send_with_callback(record, move |r| {
                            let counter = if r.is_ok() { &delivered } else { &failed };
                            counter.fetch_add(1, Ordering::Relaxed);
                        })
                        .await;
                    if let Err(e) = queued {
                        eprintln!("load stopped: {e}");
                        return;
                    }
                    sent += 1;
                }
            }
        })
    };
    for trial in 0..trials {
        // Under load: the partition is taking the load's writes when its leader dies.
        let before = delivered.load(Ordering::Relaxed);
        eventually("the load flowing", Duration::from_secs(60), || {
            let now = delivered.load(Ordering::Relaxed);
            async move { (load == 0 || now >= before + load / 10).then_some(()) }
        })
        .await;
        // Every broker must name the same leader with all replicas in sync: one broker's
        // view can lag an election (or a restart), and killing a follower would time nothing.
        let admins: Vec<Admin> = (1..=3).map(|b| cluster.node(b).admin()).collect();
        let leader = eventually(
            "all brokers agreeing on a leader with all replicas in sync",
            Duration::from_secs(60),
            || async {
                let mut seen = Vec::new();
                for admin in &admins {
                    let p = admin
                        .describe_topic("failover")
                        .await
                        .ok()?
                        .partitions
                        .remove(0);
                    seen.push((p.leader, p.isr.len()));
                }
                let (leader, isr) = seen[0];
                (leader > 0 && isr == 3 && seen.iter().all(|s| *s == (leader, 3))).then_some(leader)
            },
        )
        .await;
        let config = ProducerConfig {
            acks: Acks::All,
            linger: Duration::ZERO,
            ..ProducerConfig::default()
        };
        let producer = Producer::connect(cluster.client(), config).await?;
        producer
            .send(ProducerRecord::new("failover", "warm-up").partition(0))
            .await?
            .await?;
        if pause {
            cluster
                .node(leader)
                .signal(nix::sys::signal::Signal::SIGSTOP);
        } else {
            cluster.node(leader).kill();
        }
        let killed = Instant::now();
        producer
            .send(ProducerRecord::new("failover", format!("after-{trial}")).partition(0))
            .await?
            .await?;
        let took = killed.elapsed();
        println!(
            "trial {trial}: leader {leader} {}, first acks=all produce after {took:?} (load: {} delivered so far)",
            if pause { "paused" } else { "killed" },
            delivered.load(Ordering::Relaxed)
        );
        times.push(took);
        producer.close().await;
        if pause {
            cluster
                .node(leader)
                .signal(nix::sys::signal::Signal::SIGCONT);
        } else {
            cluster.node(leader).restart();
        }
    }
    loader.abort();
    println!(
        "load: {} records delivered, {} failed",
        delivered.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    times.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    println!("failover over {trials} trials (load {load} records/s): p50 {p50:?}, max {max:?}");
    Ok(())
}
