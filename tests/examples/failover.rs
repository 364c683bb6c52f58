//! Failover benchmark: a 3-broker cluster of real processes, one RF=3 partition with
//! min.insync.replicas=2, under a steady acks=all load (LOAD records of 1 KiB per second,
//! default 10,000; 0 for none). Each trial SIGKILLs (`kill`, the default) or SIGSTOPs
//! (`pause`) the partition leader and times how long until an acks=all produce succeeds
//! again (the producer, with its default retry backoff, retries on its own), then restarts
//! or resumes the broker and waits for a full in-sync set. `kill-controller` uses three
//! partitions (one led by each broker, the load spread over them) and SIGKILLs the broker
//! that leads the controller (metadata) group, timing the partition it led: both Raft groups
//! fail over at once.
//!
//! `cargo build --release --bins && cargo run --release -p sluice-tests --example failover -- [TRIALS] [LOAD] [kill|pause|kill-controller]`

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
    let (pause, with_controller) = match std::env::args().nth(3).as_deref() {
        None | Some("kill") => (false, false),
        Some("pause") => (true, false),
        Some("kill-controller") => (false, true),
        Some(other) => anyhow::bail!("unknown fault '{other}': use kill, pause or kill-controller"),
    };
    let partitions: i32 = if with_controller { 3 } else { 1 };
    // A restarted broker retakes its preferred leaderships within a second rather than the
    // default 30 s, so that the controller leader soon leads a partition again.
    let mut cluster = if with_controller {
        Cluster::start_with(3, &["--leader-rebalance-interval", "1s"])
    } else {
        Cluster::start(3)
    };
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client())?;
    admin
        .create_topic(
            NewTopic::new("failover", partitions, 3).config("min.insync.replicas", "2"),
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
                    let record = ProducerRecord::new("failover", vec![b'x'; 1024])
                        .partition((sent % partitions as u64) as i32);
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
        // With `kill-controller`: the partition the controller leader's broker leads.
        let (partition, leader) = eventually(
            "all brokers agreeing on the leaders with all replicas in sync",
            Duration::from_secs(60),
            || async {
                let mut seen = Vec::new();
                for admin in &admins {
                    let d = admin.describe_topic("failover").await.ok()?;
                    seen.push(
                        d.partitions
                            .iter()
                            .map(|p| (p.leader, p.isr.len()))
                            .collect::<Vec<_>>(),
                    );
                }
                let agreed = seen.iter().all(|s| *s == seen[0])
                    && seen[0].iter().all(|(l, isr)| *l > 0 && *isr == 3);
                if !agreed {
                    return None;
                }
                let controller = admins[0].metadata().await.ok()?.controller_id;
                let wanted = |l: i32| !with_controller || l == controller;
                let partition = seen[0].iter().position(|(l, _)| wanted(*l))?;
                Some((partition as i32, seen[0][partition].0))
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
            .send(ProducerRecord::new("failover", "warm-up").partition(partition))
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
            .send(ProducerRecord::new("failover", format!("after-{trial}")).partition(partition))
            .await?
            .await?;
        let took = killed.elapsed();
        println!(
            "trial {trial}: leader {leader} of partition {partition}{} {}, first acks=all produce after {took:?} (load: {} delivered so far)",
            if with_controller {
                " and of the controller"
            } else {
                ""
            },
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
    println!(
        "failover over {trials} trials (load {load} records/s{}): p50 {p50:?}, max {max:?}",
        if with_controller {
            ", the controller leader's broker killed"
        } else {
            ""
        }
    );
    Ok(())
}
