//! Raft-replicated partitions: acks=all, min.insync.replicas, leader failover.

use std::time::{Duration, Instant};

use sluice_client::{Acks, Admin, ErrorCode, NewTopic, Producer, ProducerConfig, ProducerRecord};
use sluice_tests::{Cluster, eventually};

async fn leader_of(admin: &Admin, topic: &str) -> i32 {
    eventually("a partition leader", Duration::from_secs(20), || async {
        let d = admin.describe_topic(topic).await.ok()?;
        let p = &d.partitions[0];
        (p.leader > 0 && p.isr.len() == p.replicas.len()).then_some(p.leader)
    })
    .await
}

#[tokio::test]
async fn rf3_partition_replicates_and_survives_its_leader() {
    every_acked_record_survives_a_leader_kill(2048, 1).await;
}

/// With one-record batches sent in bursts, up to 5 are in flight when the leader dies: the
/// producer resends the failed ones in order and none is stored twice or out of order.
#[tokio::test]
async fn pipelined_batches_survive_their_leader_in_order() {
    every_acked_record_survives_a_leader_kill(64, 10).await;
}

/// RF=3, min.insync.replicas=2, acks=all: records sent continuously while the partition
/// leader is SIGKILLed are all delivered, and read back exactly once, in order, at the
/// offsets they were acknowledged with. Records go out `burst` at a time.
async fn every_acked_record_survives_a_leader_kill(batch_size: usize, burst: u32) {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("safe", 1, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .unwrap();
    let leader = leader_of(&admin, "safe").await;

    let config = ProducerConfig {
        acks: Acks::All,
        linger: Duration::from_millis(1),
        batch_size,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(cluster.client(), config).await.unwrap();
    // Records go out continuously (paced, so batches are in flight all along); the leader
    // is killed once a third of them are acknowledged.
    let acked_so_far = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let p = producer.clone();
    let sender = tokio::spawn(async move {
        for i in 0..400u32 {
            let d = p
                .send(ProducerRecord::new("safe", format!("{i:05}")).partition(0))
                .await
                .unwrap();
            tx.send((i, d)).unwrap();
            if (i + 1) % burst == 0 {
                tokio::time::sleep(Duration::from_millis(3) * burst).await;
            }
        }
    });
    let counter = acked_so_far.clone();
    let collector = tokio::spawn(async move {
        let mut acked = Vec::new();
        while let Some((i, d)) = rx.recv().await {
            let offset = d
                .await
                .expect("every record is delivered, across the failover")
                .offset;
            acked.push((i, offset));
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        acked
    });
    eventually("a third acknowledged", Duration::from_secs(30), || async {
        (acked_so_far.load(std::sync::atomic::Ordering::Relaxed) >= 130).then_some(())
    })
    .await;
    cluster.node(leader).kill();
    let started = Instant::now();
    sender.await.unwrap();
    let acked = collector.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    let admin = Admin::new(cluster.client()).unwrap();
    let new_leader = eventually("a new leader", Duration::from_secs(20), || async {
        let d = admin.describe_topic("safe").await.ok()?;
        let l = d.partitions[0].leader;
        (l > 0 && l != leader).then_some(l)
    })
    .await;
    let records = cluster.node(new_leader).read_all("safe").await;
    let values: Vec<u32> = records
        .iter()
        .map(|r| std::str::from_utf8(&r.value).unwrap().parse().unwrap())
        .collect();
    // Every acknowledged record is there, at the offset it was acknowledged with.
    for (i, offset) in &acked {
        let r = records
            .iter()
            .find(|r| r.offset == *offset)
            .unwrap_or_else(|| panic!("offset {offset} missing"));
        assert_eq!(
            std::str::from_utf8(&r.value)
                .unwrap()
                .parse::<u32>()
                .unwrap(),
            *i
        );
    }
    // Exactly once, in order: batches retried across the failover were not stored twice
    // (the producer is idempotent by default).
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<u32> = values
        .iter()
        .copied()
        .filter(|v| !seen.insert(*v))
        .collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    assert_eq!(values, (0..400).collect::<Vec<_>>());
    // Offsets count records only, as in Kafka: the first is 0, and neither the elections
    // (a new leader's first Raft entry) nor the membership took one, so the idle partition
    // ends where its high watermark is.
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..400).collect::<Vec<i64>>());
    eventually(
        "high watermark = log end = 400",
        Duration::from_secs(20),
        || async {
            let d = admin.describe_topic("safe").await.ok()?;
            let p = &d.partitions[0];
            (p.high_watermark == 400 && p.log_end_offset == 400).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn acks_all_is_refused_without_enough_in_sync_replicas() {
    let mut cluster = Cluster::start_with(3, &["--replica-lag-time-max", "1s"]);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("strict", 1, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .unwrap();
    let leader = leader_of(&admin, "strict").await;
    let followers: Vec<i32> = (1..=3).filter(|id| *id != leader).collect();
    for f in &followers {
        cluster.node(*f).kill();
    }
    let mut client = cluster.node(leader).client();
    client.request_timeout = Duration::from_secs(5);
    let config = ProducerConfig {
        acks: Acks::All,
        delivery_timeout: Duration::from_secs(8),
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(client, config).await.unwrap();
    let started = Instant::now();
    let err = producer
        .send(ProducerRecord::new("strict", "x").partition(0))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "no hang: {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    let log = cluster.node(leader).log();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    assert!(
        text.contains("NOT_ENOUGH_REPLICAS"),
        "{text}\nleader log (newest first):\n{}",
        tail.join("\n")
    );

    // One follower back: two in sync, writes succeed again.
    cluster.node(followers[0]).restart();
    let producer = Producer::connect(
        cluster.client(),
        ProducerConfig {
            acks: Acks::All,
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let meta = producer
        .send(ProducerRecord::new("strict", "y").partition(0))
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(meta.offset >= 0);
    let _ = ErrorCode::NotEnoughReplicas;
}

/// An idle group stops its heartbeats (followers stop their election timers); losing its
/// leader's broker must still elect a new leader, and nothing acknowledged is lost.
#[tokio::test]
async fn an_idle_quiesced_partition_still_fails_over() {
    let mut cluster = Cluster::start_logged(3, &[], "info,sluice_broker::replica=debug");
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("quiet", 1, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .unwrap();
    let leader = leader_of(&admin, "quiet").await;
    let producer = Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    producer
        .send(ProducerRecord::new("quiet", "before").partition(0))
        .await
        .unwrap()
        .await
        .unwrap();
    eventually("the idle group to quiesce", Duration::from_secs(20), || {
        let log = cluster.brokers[(leader - 1) as usize].log();
        async move { log.contains("quiesced an idle group").then_some(()) }
    })
    .await;
    cluster.node(leader).kill();
    let producer = Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    let started = Instant::now();
    producer
        .send(ProducerRecord::new("quiet", "after").partition(0))
        .await
        .unwrap()
        .await
        .expect("a new leader takes writes");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failover of a quiet group took {:?}",
        started.elapsed()
    );
    let admin = Admin::new(cluster.client()).unwrap();
    let new_leader = leader_of_live(&admin, "quiet", leader).await;
    let values: Vec<String> = cluster
        .node(new_leader)
        .read_all("quiet")
        .await
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    assert_eq!(values, vec!["before", "after"]);
}

async fn leader_of_live(admin: &Admin, topic: &str, dead: i32) -> i32 {
    eventually("a live leader", Duration::from_secs(20), || async {
        let l = admin.describe_topic(topic).await.ok()?.partitions[0].leader;
        (l > 0 && l != dead).then_some(l)
    })
    .await
}

async fn isr_of(admin: &Admin, topic: &str) -> (i32, Vec<i32>) {
    let p = admin
        .describe_topic(topic)
        .await
        .map(|mut d| d.partitions.remove(0));
    p.map(|p| (p.leader, p.isr)).unwrap_or((-1, Vec::new()))
}

/// A follower that missed writes catches up after a restart, rejoins the in-sync set, and
/// then carries the quorum.
#[tokio::test]
async fn a_restarted_follower_catches_up_and_rejoins_the_isr() {
    let mut cluster = Cluster::start_with(3, &["--replica-lag-time-max", "2s"]);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("catchup", 1, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .unwrap();
    let leader = leader_of(&admin, "catchup").await;
    let (lagging, other) = match leader {
        1 => (2, 3),
        2 => (3, 1),
        _ => (1, 2),
    };
    cluster.node(lagging).kill();
    let producer = Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    let mut acked = Vec::new();
    for i in 0..100 {
        let d = producer
            .send(ProducerRecord::new("catchup", format!("{i:03}")).partition(0))
            .await
            .unwrap();
        acked.push(d.await.unwrap().offset);
    }
    cluster.node(lagging).restart();
    let admin = Admin::new(cluster.client()).unwrap();
    eventually(
        "the restarted follower back in the in-sync set",
        Duration::from_secs(30),
        || async {
            let (_, isr) = isr_of(&admin, "catchup").await;
            isr.contains(&lagging).then_some(())
        },
    )
    .await;
    // With the other follower gone, every write needs the one that caught up.
    cluster.node(other).kill();
    for i in 100..150 {
        let d = producer
            .send(ProducerRecord::new("catchup", format!("{i:03}")).partition(0))
            .await
            .unwrap();
        acked.push(
            d.await
                .expect("the caught-up follower completes the quorum")
                .offset,
        );
    }
    let current = eventually("a leader", Duration::from_secs(20), || async {
        let (l, _) = isr_of(&admin, "catchup").await;
        (l > 0).then_some(l)
    })
    .await;
    let records = cluster.node(current).read_all("catchup").await;
    let values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    assert_eq!(
        values,
        (0..150).map(|i| format!("{i:03}")).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets, acked,
        "every record at the offset it was acknowledged with"
    );
}

/// A paused (SIGSTOP) leader is replaced; when it resumes it follows the new leader, and
/// every record acknowledged meanwhile stays exactly where it was acknowledged.
#[tokio::test]
async fn a_paused_leader_is_replaced_and_rejoins_as_a_follower() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("paused", 1, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .unwrap();
    let old = leader_of(&admin, "paused").await;
    let producer = Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    let mut acked = vec![
        producer
            .send(ProducerRecord::new("paused", "a").partition(0))
            .await
            .unwrap()
            .await
            .unwrap()
            .offset,
    ];
    cluster.node(old).signal(nix::sys::signal::Signal::SIGSTOP);
    for v in ["b", "c", "d"] {
        let d = producer
            .send(ProducerRecord::new("paused", v).partition(0))
            .await
            .unwrap();
        acked.push(
            d.await
                .expect("the other two replicas elect a leader and take writes")
                .offset,
        );
    }
    cluster.node(old).signal(nix::sys::signal::Signal::SIGCONT);
    let admin = Admin::new(cluster.client()).unwrap();
    // Right after SIGCONT the old leader still believes it leads (with its old high
    // watermark) until it hears the new term, so the settled state is polled for.
    let mut addresses = std::collections::BTreeMap::new();
    for id in 1..=3 {
        addresses.insert(id, cluster.node(id).client());
    }
    let records = eventually(
        "the resumed broker back in the in-sync set, under the new leader",
        Duration::from_secs(30),
        || async {
            let (l, isr) = isr_of(&admin, "paused").await;
            if l <= 0 || isr.len() != 3 {
                return None;
            }
            let records = sluice_tests::read_all(addresses[&l].clone(), "paused").await;
            let last = *acked.last()?;
            records.iter().any(|r| r.offset == last).then_some(records)
        },
    )
    .await;
    let values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<&str> = values
        .iter()
        .map(String::as_str)
        .filter(|v| seen.insert(*v))
        .collect();
    assert_eq!(firsts, vec!["a", "b", "c", "d"]);
    for (offset, v) in acked.iter().zip(["a", "b", "c", "d"]) {
        let r = records
            .iter()
            .find(|r| r.offset == *offset)
            .expect("acknowledged offset present");
        assert_eq!(&r.value[..], v.as_bytes());
    }
}

/// The base offset of a segment file (its name).
fn base_offset(path: &std::path::Path) -> i64 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a segment file: {}", path.display()))
}

/// Retention on a replicated partition deletes old segments on every replica; a follower
/// that was down while the leader deleted what it lacked continues from a snapshot, at the
/// leader's offsets, and can take over.
#[tokio::test]
async fn retention_trims_every_replica_and_a_late_follower_continues_at_the_same_offsets() {
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--retention-check-interval",
            "100ms",
            "--leader-rebalance-interval",
            "300ms",
        ],
    );
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("trimmed", 1, 3)
                .config("min.insync.replicas", "2")
                .config("segment.bytes", "4096")
                .config("retention.bytes", "8192"),
            false,
        )
        .await
        .unwrap();
    leader_of(&admin, "trimmed").await;
    // The late one is the preferred leader, so it takes the partition back once in sync.
    let late = admin.describe_topic("trimmed").await.unwrap().partitions[0].replicas[0];
    cluster.node(late).kill();

    let config = ProducerConfig {
        linger: Duration::from_millis(1),
        batch_size: 1024,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(cluster.client(), config).await.unwrap();
    let mut acked = std::collections::BTreeMap::new();
    let record =
        |i: u32| ProducerRecord::new("trimmed", format!("{i:05}{}", "x".repeat(200))).partition(0);
    let mut pending = Vec::new();
    for i in 0..300 {
        pending.push((i, producer.send(record(i)).await.unwrap()));
    }
    for (i, d) in pending {
        acked.insert(d.await.unwrap().offset, i);
    }
    // The two live replicas delete old segments.
    let live: Vec<i32> = (1..=3).filter(|id| *id != late).collect();
    for id in &live {
        let dir = cluster.node(*id).data_dir.clone();
        eventually(
            "retention on a live replica",
            Duration::from_secs(20),
            || {
                let dir = dir.clone();
                async move {
                    let files = sluice_tests::segment_files(&dir, "trimmed", 0);
                    (base_offset(&files[0]) > 0 && files.len() <= 4).then_some(())
                }
            },
        )
        .await;
    }
    // Clients see the new log start (polled: the describe goes through the leader's broker).
    eventually("the log start moves", Duration::from_secs(20), || async {
        let d = admin.describe_topic("trimmed").await.ok()?;
        (d.partitions[0].log_start_offset > 0).then_some(())
    })
    .await;

    // The late follower returns: what it lacks is gone, so it starts from a snapshot.
    cluster.node(late).restart();
    eventually(
        "the late follower back in sync",
        Duration::from_secs(30),
        || async {
            let d = admin.describe_topic("trimmed").await.ok()?;
            (d.partitions[0].isr.len() == 3).then_some(())
        },
    )
    .await;
    let mut pending = Vec::new();
    for i in 300..340 {
        pending.push((i, producer.send(record(i)).await.unwrap()));
    }
    for (i, d) in pending {
        acked.insert(d.await.unwrap().offset, i);
    }
    let late_dir = cluster.node(late).data_dir.clone();
    // It leads again (the preferred leader) and serves every retained record at the offset
    // it was acknowledged with, once its high watermark covers them (a new leader's moves
    // with its term's first commit, a moment after it leads).
    let last_acked = *acked.keys().last().expect("records were acknowledged");
    eventually(
        "the late follower leading, its high watermark past the last acknowledged offset",
        Duration::from_secs(30),
        || async {
            let p = admin
                .describe_topic("trimmed")
                .await
                .ok()?
                .partitions
                .remove(0);
            (p.leader == late && p.high_watermark > last_acked).then_some(())
        },
    )
    .await;
    let records = cluster.node(late).read_all("trimmed").await;
    let d = admin.describe_topic("trimmed").await.unwrap();
    assert!(
        !records.is_empty(),
        "{:?} files {:?}",
        d.partitions[0],
        sluice_tests::segment_files(&late_dir, "trimmed", 0)
    );
    for r in &records {
        let value = std::str::from_utf8(&r.value).unwrap();
        let i: u32 = value[..5].parse().unwrap();
        assert_eq!(
            acked.get(&r.offset),
            Some(&i),
            "offset {} holds record {i}",
            r.offset
        );
    }
    assert_eq!(records.last().map(value_index), Some(339));
}

fn value_index(r: &sluice_client::ConsumerRecord) -> u32 {
    std::str::from_utf8(&r.value).unwrap()[..5].parse().unwrap()
}

/// New partitions go to live brokers only; a replication factor above the live count is
/// refused at creation, naming the broker that is down.
#[tokio::test]
async fn replicas_are_placed_on_live_brokers_only() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready().await;
    cluster.node(3).kill();
    let admin = Admin::new(cluster.node(1).client()).unwrap();
    // Once broker 1 notices (validate-only attempts create nothing meanwhile)...
    eventually("broker 3 noticed down", Duration::from_secs(20), || async {
        admin
            .create_topic(NewTopic::new("wide", 1, 3), true)
            .await
            .err()
    })
    .await;
    let err = admin
        .create_topic(NewTopic::new("wide", 1, 3), false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidReplicationFactor));
    let text = err.to_string();
    assert!(
        text.contains("2 live broker(s)") && text.contains("[3]"),
        "{text}"
    );
    admin
        .create_topic(NewTopic::new("narrow", 4, 2), false)
        .await
        .unwrap();
    let d = admin.describe_topic("narrow").await.unwrap();
    for p in &d.partitions {
        assert!(
            !p.replicas.contains(&3),
            "partition {} on the dead broker: {:?}",
            p.partition,
            p.replicas
        );
    }
}

/// A preferred leader (the first replica) that comes back takes its partition back once it
/// is in sync; producing carries on across both moves.
#[tokio::test]
async fn the_preferred_leader_takes_its_partition_back() {
    let mut cluster = Cluster::start_with(3, &["--leader-rebalance-interval", "300ms"]);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("home", 1, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .unwrap();
    let preferred = admin.describe_topic("home").await.unwrap().partitions[0].replicas[0];
    let leads = |who: i32| {
        let admin = &admin;
        async move {
            let p = admin
                .describe_topic("home")
                .await
                .ok()?
                .partitions
                .remove(0);
            (p.leader == who).then_some(())
        }
    };
    eventually(
        "the preferred replica leads",
        Duration::from_secs(20),
        || leads(preferred),
    )
    .await;
    let producer = Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    let send = |i: u32| producer.send(ProducerRecord::new("home", format!("{i}")).partition(0));
    for i in 0..10 {
        send(i).await.unwrap().await.unwrap();
    }
    cluster.node(preferred).kill();
    for i in 10..20 {
        send(i).await.unwrap().await.unwrap();
    }
    cluster.node(preferred).restart();
    eventually(
        "the preferred replica leads again",
        Duration::from_secs(30),
        || leads(preferred),
    )
    .await;
    for i in 20..30 {
        send(i).await.unwrap().await.unwrap();
    }
    let values: Vec<u32> = cluster
        .node(preferred)
        .read_all("home")
        .await
        .iter()
        .map(|r| std::str::from_utf8(&r.value).unwrap().parse().unwrap())
        .collect();
    assert_eq!(values, (0..30).collect::<Vec<_>>());
}

/// A SIGKILLed leader's broker refuses connections at once: its followers do not wait for
/// their election timers. Exactly one of them (the one with the most up-to-date log)
/// campaigns, so the vote is not split, and it becomes the leader. The partition is idle
/// and quiesced first: its followers' timers are stopped, so the takeover is the only way
/// it gets a leader again (with running timers the two would race).
#[tokio::test]
async fn a_crashed_leader_is_replaced_by_one_campaigning_follower() {
    let mut cluster = Cluster::start_logged(3, &[], "info,sluice_broker::replica=debug");
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("crash", 1, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .unwrap();
    let producer = Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    producer
        .send(ProducerRecord::new("crash", "before").partition(0))
        .await
        .unwrap()
        .await
        .unwrap();
    let leader = leader_of(&admin, "crash").await;
    eventually("the idle group to quiesce", Duration::from_secs(20), || {
        let log = cluster.brokers[(leader - 1) as usize].log();
        async move { log.contains("quiesced an idle group").then_some(()) }
    })
    .await;
    cluster.node(leader).kill();
    let survivors: Vec<i32> = (1..=3).filter(|b| *b != leader).collect();
    let campaigned = |cluster: &Cluster, b: i32| {
        cluster.brokers[(b - 1) as usize]
            .log()
            .contains("campaigning for the partitions the downed broker led")
    };
    let campaigner = eventually(
        "a follower campaigning for the crashed leader's partition",
        Duration::from_secs(20),
        || {
            let c: Vec<i32> = survivors
                .iter()
                .copied()
                .filter(|b| campaigned(&cluster, *b))
                .collect();
            async move { (!c.is_empty()).then_some(c) }
        },
    )
    .await;
    assert_eq!(
        campaigner.len(),
        1,
        "both followers campaigned: {campaigner:?}"
    );
    let admin = Admin::new(cluster.client()).unwrap();
    assert_eq!(leader_of_live(&admin, "crash", leader).await, campaigner[0]);
    producer
        .send(ProducerRecord::new("crash", "after").partition(0))
        .await
        .unwrap()
        .await
        .expect("the new leader takes acks=all writes");
    let other = survivors.iter().find(|b| **b != campaigner[0]).unwrap();
    assert!(
        !campaigned(&cluster, *other),
        "the second follower campaigned too"
    );
}

/// A client given a single bootstrap broker keeps working after that broker dies: metadata
/// comes from the brokers the cluster named, not only from the bootstrap list.
#[tokio::test]
async fn a_producer_outlives_its_only_bootstrap_broker() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("lone", 1, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .unwrap();
    // Bootstrapped from the leader alone, which then dies: finding the new leader takes
    // metadata from another broker.
    let leader = leader_of(&admin, "lone").await;
    let config = ProducerConfig {
        acks: Acks::All,
        delivery_timeout: Duration::from_secs(20),
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(cluster.node(leader).client(), config)
        .await
        .unwrap();
    producer
        .send(ProducerRecord::new("lone", "before").partition(0))
        .await
        .unwrap()
        .await
        .unwrap();
    cluster.node(leader).kill();
    producer
        .send(ProducerRecord::new("lone", "after").partition(0))
        .await
        .expect("queued without the bootstrap broker")
        .await
        .expect("delivered without the bootstrap broker");
}

/// A SIGSTOPped leader neither answers nor refuses: idempotent producers resend their
/// batches to the leader the other replicas elect, instead of waiting out the 30 s request
/// timeout, and every record is stored once, in order, at the offset it was acknowledged
/// with.
#[tokio::test]
async fn producers_move_to_the_new_leader_while_the_old_one_is_paused() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("stall", 1, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .unwrap();
    let old = leader_of(&admin, "stall").await;
    let mut client = cluster.client();
    client.request_timeout = Duration::from_secs(30);
    let producer = Producer::connect(client, ProducerConfig::default())
        .await
        .unwrap();
    let mut acked = Vec::new();
    for i in 0..20 {
        let v = format!("a{i:02}");
        let d = producer
            .send(ProducerRecord::new("stall", v.clone()).partition(0))
            .await
            .unwrap();
        acked.push((v, d.await.unwrap().offset));
    }
    cluster.node(old).signal(nix::sys::signal::Signal::SIGSTOP);
    let paused = Instant::now();
    let mut pending = Vec::new();
    for i in 0..20 {
        let v = format!("b{i:02}");
        let d = producer
            .send(ProducerRecord::new("stall", v.clone()).partition(0))
            .await
            .unwrap();
        pending.push((v, d));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (v, d) in pending {
        let left = Duration::from_secs(10).saturating_sub(paused.elapsed());
        let offset = tokio::time::timeout(left, d)
            .await
            .unwrap_or_else(|_| {
                panic!("record {v} not acknowledged within 10 s of pausing the leader (the request timeout is 30 s)")
            })
            .unwrap_or_else(|e| panic!("record {v}: {e}"))
            .offset;
        acked.push((v, offset));
    }
    assert!(cluster.node(old).is_running());
    cluster.node(old).signal(nix::sys::signal::Signal::SIGCONT);

    let new = leader_of_live(&admin, "stall", old).await;
    let records = sluice_tests::read_all(cluster.node(new).client(), "stall").await;
    let stored: Vec<(String, i64)> = records
        .iter()
        .map(|r| (String::from_utf8_lossy(&r.value).into_owned(), r.offset))
        .collect();
    assert_eq!(
        stored, acked,
        "every record once, in order, at its acknowledged offset"
    );
}
