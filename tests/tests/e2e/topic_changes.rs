//! Live topic changes: config altered while the topic serves, on every replica, without a
//! restart, kept across restarts.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_client::{
    Admin, ClientConfig, ErrorCode, NewTopic, Producer, ProducerConfig, ProducerRecord,
};
use sluice_proto::{ErrorDetailExt, RecordBatchBuilder, pb};
use sluice_tests::{Cluster, eventually, run_cli};

fn set(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The outcome of sending one record of `size` bytes to `partition`.
async fn send(producer: &Producer, partition: i32, size: usize) -> Result<i64, ErrorCode> {
    let d = producer
        .send(ProducerRecord::new("live", vec![b'x'; size]).partition(partition))
        .await
        .map_err(|e| e.code().unwrap_or(ErrorCode::UnknownServerError))?;
    d.await
        .map(|m| m.offset)
        .map_err(|e| e.code().unwrap_or(ErrorCode::UnknownServerError))
}

/// One record of `size` bytes sent straight to the partition's leader, past the client's
/// own size check (which follows the topic's metadata): the broker's answer, or its code.
async fn raw_send(client: ClientConfig, partition: i32, size: usize) -> Result<i64, String> {
    let cluster = sluice_client::cluster::Cluster::new(client).unwrap();
    let leader = cluster
        .leader("live", partition)
        .await
        .map_err(|e| e.to_string())?;
    let mut c = cluster.log_client(&leader).map_err(|e| e.to_string())?;
    let mut b = RecordBatchBuilder::new(Default::default());
    b.append(1, None, &vec![b'x'; size], &[]);
    c.produce(pb::ProduceRequest {
        topic: "live".into(),
        partition,
        acks: -1,
        timeout_ms: 5000,
        batch: b.build(),
    })
    .await
    .map(|r| r.into_inner().base_offset)
    .map_err(|s| pb::ErrorDetail::from_status(&s).map_or_else(|| s.to_string(), |d| d.code))
}

/// A lower `max.message.bytes` refuses, on every partition, a record it accepted before;
/// a bad value or an unknown key changes nothing; a shorter `retention.ms` frees segments
/// at the next retention pass; the overrides survive a restart of every broker, and
/// removing one goes back to the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_config_changes_take_effect_at_once_everywhere_and_survive_restarts() {
    let mut cluster = Cluster::start_with(3, &["--retention-check-interval", "100ms"]);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("live", 3, 3)
                .config("min.insync.replicas", "2")
                .config("segment.bytes", "4096"),
            false,
        )
        .await
        .unwrap();
    let producer = Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    for p in 0..3 {
        assert!(
            send(&producer, p, 5000).await.is_ok(),
            "partition {p} takes 5 KB"
        );
    }

    let resp = admin
        .alter_topic_config("live", set(&[("max.message.bytes", "2048")]), vec![], false)
        .await
        .unwrap();
    let keys: Vec<_> = resp.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["max.message.bytes"]);
    assert!(resp.changes[0].new_override && !resp.changes[0].old_override);
    // Each partition's leader applies it as it applies the metadata (at once, or a moment
    // later on a broker other than the one asked); the producer's cached limit is older.
    for p in 0..3 {
        eventually(
            "the lower limit refuses 5 KB",
            Duration::from_secs(10),
            || async {
                let refused = raw_send(cluster.client(), p, 5000).await;
                (refused == Err("MESSAGE_TOO_LARGE".into())).then_some(())
            },
        )
        .await;
        assert!(raw_send(cluster.client(), p, 1000).await.is_ok());
        // The producer follows the topic's metadata and refuses it itself.
        eventually(
            "the producer refuses 5 KB",
            Duration::from_secs(10),
            || async {
                (send(&producer, p, 5000).await == Err(ErrorCode::MessageTooLarge)).then_some(())
            },
        )
        .await;
    }

    // Refused, with the messages of create, and nothing changed.
    let err = admin
        .alter_topic_config("live", set(&[("min.insync.replicas", "4")]), vec![], false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidConfig), "{err}");
    assert!(err.to_string().contains("min.insync.replicas"), "{err}");
    let err = admin
        .alter_topic_config("live", BTreeMap::new(), vec!["retention.mss".into()], false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("retention.mss"), "{err}");
    let d = admin.describe_topic("live").await.unwrap();
    assert_eq!(d.config["max.message.bytes"], "2048");
    assert_eq!(d.config["min.insync.replicas"], "2");
    let mut overrides = d.overrides.clone();
    overrides.sort();
    assert_eq!(
        overrides,
        ["max.message.bytes", "min.insync.replicas", "segment.bytes"]
    );

    // A shorter retention frees the closed segments of every replica at the next pass.
    let data_dir = cluster.node(1).data_dir.clone();
    let before = sluice_tests::segment_files(&data_dir, "live", 0).len();
    assert!(before > 1, "1 KB and 5 KB records rolled 4 KiB segments");
    admin
        .alter_topic_config("live", set(&[("retention.ms", "1")]), vec![], false)
        .await
        .unwrap();
    eventually(
        "retention frees the closed segments",
        Duration::from_secs(10),
        || async { (sluice_tests::segment_files(&data_dir, "live", 0).len() == 1).then_some(()) },
    )
    .await;

    // Kept across a restart of every broker (from the metadata log, not from memory).
    for id in 1..=3 {
        let status = tokio::task::block_in_place(|| cluster.node(id).terminate());
        assert!(status.success());
        cluster.node(id).restart_in_place();
    }
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    let producer = Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    for p in 0..3 {
        eventually(
            "refused after the restart",
            Duration::from_secs(30),
            || async {
                let refused = raw_send(cluster.client(), p, 5000).await;
                (refused == Err("MESSAGE_TOO_LARGE".into())).then_some(())
            },
        )
        .await;
    }

    // Back to the default: the CLI shows the plan; 5 KB is taken again.
    let out = run_cli(
        &cluster.bootstrap(),
        &[
            "topics",
            "alter",
            "live",
            "--delete-config",
            "max.message.bytes",
            "-o",
            "json",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["applied"], true);
    assert_eq!(v["changes"][0]["key"], "max.message.bytes");
    assert_eq!(v["changes"][0]["old_value"], "2048");
    assert_eq!(v["changes"][0]["new_source"], "default");
    for p in 0..3 {
        eventually("5 KB taken again", Duration::from_secs(10), || async {
            raw_send(cluster.client(), p, 5000).await.ok()
        })
        .await;
        eventually(
            "the producer takes 5 KB again",
            Duration::from_secs(10),
            || async { send(&producer, p, 5000).await.ok() },
        )
        .await;
    }
    let d = admin.describe_topic("live").await.unwrap();
    assert!(!d.overrides.contains(&"max.message.bytes".to_string()));
}

/// `topics alter --dry-run` shows the changes and makes none; altering a topic that does
/// not exist names it; nothing to change is said so.
#[tokio::test]
async fn topics_alter_dry_run_and_mistakes() {
    let cluster = Cluster::start(1);
    cluster.wait_ready().await;
    let address = cluster.bootstrap();
    let cli = |args: &[&str]| {
        let out = run_cli(&address, args, "");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(cli(&["topics", "create", "t", "--config", "retention.ms=60000"]).0);
    let (ok, stdout, stderr) = cli(&[
        "topics",
        "alter",
        "t",
        "--config",
        "retention.ms=1000",
        "--dry-run",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("retention.ms"), "{stdout}");
    assert!(
        stdout.contains("60000 (topic)") && stdout.contains("1000 (topic)"),
        "{stdout}"
    );
    assert!(stdout.contains("Nothing changed (--dry-run)"), "{stdout}");
    let (ok, stdout, _) = cli(&["topics", "describe", "t"]);
    assert!(ok);
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("retention.ms"))
        .unwrap_or_else(|| panic!("retention.ms in {stdout}"));
    assert!(line.contains("60000") && line.contains("topic"), "{line}");
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("segment.bytes"))
        .unwrap();
    assert!(line.contains("default"), "{line}");

    let (ok, stdout, _) = cli(&["topics", "alter", "t", "--config", "retention.ms=60000"]);
    assert!(ok);
    assert!(stdout.contains("nothing changed"), "{stdout}");
    let (ok, _, stderr) = cli(&["topics", "alter", "nope", "--config", "retention.ms=1"]);
    assert!(!ok);
    assert!(
        stderr.contains("UNKNOWN_TOPIC_OR_PARTITION") && stderr.contains("nope"),
        "{stderr}"
    );
    let (ok, _, stderr) = cli(&["topics", "alter", "t"]);
    assert!(!ok);
    assert!(stderr.contains("nothing to change"), "{stderr}");

    // An unreplicated topic grows too; the new partitions take records at once.
    let (ok, stdout, stderr) = cli(&["topics", "alter", "t", "--partitions", "3", "-o", "json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (
            v["partitions_before"].as_i64(),
            v["partitions_after"].as_i64()
        ),
        (Some(1), Some(3))
    );
    let out = run_cli(&address, &["produce", "t", "--partition", "2"], "hello\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, stdout, _) = cli(&["topics", "describe", "t", "-o", "json"]);
    assert!(ok);
    let d: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(d["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(d["partitions"][2]["log_end_offset"], 1);
    let (ok, _, stderr) = cli(&["topics", "alter", "t", "--partitions", "2"]);
    assert!(!ok);
    assert!(
        stderr.contains("INVALID_PARTITIONS") && stderr.contains("can only be added"),
        "{stderr}"
    );
}

/// A replicated topic grows from 3 to 6 partitions while a producer writes keyed records
/// and a consumer reads: the producer spreads keys over 6 partitions from its next
/// metadata refresh, the consumer adds the new partitions, and every acknowledged record
/// is read exactly once, at its acknowledged offset. Shrinking is refused and changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_added_under_load_and_never_removed() {
    use sluice_client::{Consumer, ConsumerConfig, Offset, TopicPartition};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("grow", 3, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .unwrap();
    let mut client = cluster.client();
    client.metadata_max_age = Duration::from_millis(500);
    let producer = Producer::connect(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (producer, sent) = (producer.clone(), sent.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..1500u32 {
                let d = producer
                    .send(ProducerRecord::new("grow", format!("{i}")).key(format!("k{}", i % 40)))
                    .await
                    .expect("send");
                acked.push((i, d));
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let mut out = Vec::new();
            for (i, d) in acked {
                let m = d.await.expect("every record is delivered");
                out.push((i, m.partition, m.offset));
            }
            out
        })
    };
    let tps = |n: i32| -> Vec<TopicPartition> {
        (0..n).map(|p| TopicPartition::new("grow", p)).collect()
    };
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).unwrap();
    consumer.assign(tps(3), Offset::Earliest).await.unwrap();
    let mut read: Vec<(i32, i64, String)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sent.load(Ordering::Relaxed) < 500 {
        assert!(
            std::time::Instant::now() < deadline,
            "500 records sent within 60 s"
        );
        for r in consumer.poll(Duration::from_millis(50)).await.unwrap() {
            read.push((
                r.partition,
                r.offset,
                String::from_utf8_lossy(&r.value).into(),
            ));
        }
    }

    // Shrinking is refused, growing is not.
    let shrink = sluice_client::AlterTopic {
        partitions: Some(2),
        ..Default::default()
    };
    let err = admin.alter_topic("grow", shrink, false).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidPartitions), "{err}");
    assert!(err.to_string().contains("can only be added"), "{err}");
    let grow = sluice_client::AlterTopic {
        partitions: Some(6),
        ..Default::default()
    };
    let resp = admin.alter_topic("grow", grow, false).await.unwrap();
    assert_eq!((resp.partitions_before, resp.partitions_after), (3, 6));
    let d = admin.describe_topic("grow").await.unwrap();
    assert_eq!(d.partitions.len(), 6);
    assert!(
        d.partitions
            .iter()
            .all(|p| p.leader > 0 && p.replicas.len() == 3),
        "every new partition has three replicas and a leader: {:?}",
        d.partitions
    );

    // The consumer adds the new partitions, from their start; the others keep their place.
    let now = consumer.partitions_now("grow").await.unwrap();
    assert_eq!(now.len(), 6);
    consumer
        .add_partitions(
            now[3..]
                .iter()
                .map(|&p| TopicPartition::new("grow", p))
                .collect(),
            Offset::Earliest,
        )
        .await
        .unwrap();
    let acked = writer.await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read.len() < acked.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "read {} of {} records within 30 s",
            read.len(),
            acked.len()
        );
        for r in consumer.poll(Duration::from_millis(100)).await.unwrap() {
            read.push((
                r.partition,
                r.offset,
                String::from_utf8_lossy(&r.value).into(),
            ));
        }
    }
    let mut got: Vec<(i32, i64, String)> = read.clone();
    got.sort();
    let mut want: Vec<(i32, i64, String)> = acked
        .iter()
        .map(|(i, p, o)| (*p, *o, i.to_string()))
        .collect();
    want.sort();
    assert_eq!(
        got, want,
        "every record once, at its acknowledged partition and offset"
    );
    let late = acked.iter().filter(|(_, p, _)| *p >= 3).count();
    assert!(late > 0, "the producer wrote to the new partitions");
}

/// `sluice consume TOPIC` (no --partition) reads the partitions added while it runs, from
/// their start, and says so on stderr.
#[tokio::test]
async fn consume_follows_partitions_added_while_it_runs() {
    use nix::sys::signal::Signal;

    let cluster = Cluster::start(1);
    cluster.wait_ready().await;
    let address = cluster.bootstrap();
    let ok = |args: &[&str], input: &str| {
        let out = run_cli(&address, args, input);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&["topics", "create", "tail"], "");
    ok(&["produce", "tail"], "early\n");
    let consumer = sluice_tests::CliProcess::spawn(
        &address,
        &[
            "consume",
            "tail",
            "--from-beginning",
            "--format",
            "{partition}:{value}",
        ],
    );
    consumer.wait_for_output("the first record", Duration::from_secs(20), |out, _| {
        out.contains("0:early")
    });
    ok(&["topics", "alter", "tail", "--partitions", "2"], "");
    ok(&["produce", "tail", "--partition", "1"], "late\n");
    consumer.wait_for_output(
        "the record in the new partition",
        Duration::from_secs(30),
        |out, _| out.contains("1:late"),
    );
    let (_, err) = consumer.output();
    assert!(err.contains("grew to 2 partitions"), "{err}");
    consumer.signal(Signal::SIGINT);
    let (status, _, _) = consumer.wait(Duration::from_secs(10));
    assert!(status.success());
}

/// The bytes of every segment of a partition's replica on one broker, oldest first.
fn replica_bytes(data_dir: &std::path::Path, topic: &str, partition: i32) -> Vec<u8> {
    sluice_tests::segment_files(data_dir, topic, partition)
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect()
}

/// The replication factor goes 1 -> 3 (through the CLI, which waits for the move) -> 2
/// (then -> 1 once writes are done) while an idempotent acks=all producer writes: every partition ends with the new
/// replicas, all in sync; a broker that left a partition deletes its copy; every
/// acknowledged record is read exactly once at its offset, and every replica holds the same
/// bytes. A factor the cluster cannot hold is refused with what to do instead, changing
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_factor_changes_under_load() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(NewTopic::new("refactor", 3, 1), false)
        .await
        .unwrap();
    let factor = |n: i32| sluice_client::AlterTopic {
        replication_factor: Some(n),
        ..Default::default()
    };
    let err = admin
        .alter_topic("refactor", factor(4), false)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::InvalidReplicationFactor),
        "{err}"
    );
    assert!(err.to_string().contains("3 live broker(s)"), "{err}");
    assert_eq!(
        admin
            .describe_topic("refactor")
            .await
            .unwrap()
            .replication_factor,
        1
    );

    let producer = Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (producer, sent) = (producer.clone(), sent.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..1500u32 {
                let d = producer
                    .send(
                        ProducerRecord::new("refactor", format!("{i}")).key(format!("k{}", i % 30)),
                    )
                    .await
                    .expect("send");
                acked.push((i, d));
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            let mut out = Vec::new();
            for (i, d) in acked {
                let m = d.await.expect("every record is delivered");
                out.push((i, m.partition, m.offset));
            }
            out
        })
    };
    let progressed = |n: usize| {
        let sent = sent.clone();
        async move {
            eventually("the producer writing", Duration::from_secs(60), || {
                let now = sent.load(Ordering::Relaxed);
                async move { (now >= n).then_some(()) }
            })
            .await
        }
    };
    progressed(300).await;

    // 1 -> 3 through the CLI: it shows the plan and returns once every partition moved.
    let address = cluster.brokers[0].address.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(
            &address,
            &["topics", "alter", "refactor", "--replication-factor", "3"],
            "",
        )
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("replication factor"), "{stdout}");
    assert!(stdout.contains("replicas of partition 0"), "{stdout}");
    let d = admin.describe_topic("refactor").await.unwrap();
    assert_eq!(d.replication_factor, 3);
    for p in &d.partitions {
        assert_eq!(p.replicas.len(), 3, "{p:?}");
        assert!(
            p.adding_replicas.is_empty() && p.removing_replicas.is_empty(),
            "{p:?}"
        );
    }
    eventually("every replica in sync", Duration::from_secs(30), || async {
        let d = admin.describe_topic("refactor").await.ok()?;
        d.partitions.iter().all(|p| p.isr.len() == 3).then_some(())
    })
    .await;

    // 3 -> 2 through the API: the change is committed at once, the moves follow.
    progressed(700).await;
    let resp = admin
        .alter_topic("refactor", factor(2), false)
        .await
        .unwrap();
    assert_eq!(
        (
            resp.replication_factor_before,
            resp.replication_factor_after
        ),
        (3, 2)
    );
    assert_eq!(resp.reassignments.len(), 3);
    let err = admin
        .alter_topic("refactor", factor(3), false)
        .await
        .map(|_| ())
        .unwrap_err();
    // Either still moving (refused) or done already (then it is a new change back to 3).
    if err.code() == Some(ErrorCode::ReassignmentInProgress) {
        assert!(err.to_string().contains("wait until"), "{err}");
    }
    let d = eventually(
        "every partition on two replicas",
        Duration::from_secs(60),
        || async {
            let d = admin.describe_topic("refactor").await.ok()?;
            d.partitions
                .iter()
                .all(|p| {
                    p.replicas.len() == 2
                        && p.adding_replicas.is_empty()
                        && p.removing_replicas.is_empty()
                        && p.isr.len() == 2
                })
                .then_some(d)
        },
    )
    .await;
    // A broker that left a partition deletes its copy.
    for p in &d.partitions {
        for (i, b) in cluster.brokers.iter().enumerate() {
            let dir = b
                .data_dir
                .join("logs")
                .join(format!("refactor-{}", p.partition));
            if !p.replicas.contains(&(i as i32 + 1)) {
                eventually(
                    "the removed replica's data deleted",
                    Duration::from_secs(10),
                    || {
                        let gone = !dir.exists();
                        async move { gone.then_some(()) }
                    },
                )
                .await;
            }
        }
    }

    let acked = writer.await.unwrap();
    let read = sluice_tests::read_all(cluster.client(), "refactor").await;
    let mut got: Vec<(i32, i64, String)> = read
        .iter()
        .map(|r| {
            (
                r.partition,
                r.offset,
                String::from_utf8_lossy(&r.value).into(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(i32, i64, String)> = acked
        .iter()
        .map(|(i, p, o)| (*p, *o, i.to_string()))
        .collect();
    want.sort();
    assert_eq!(got, want, "every acknowledged record once, at its offset");
    // Every current replica holds the same bytes (followers apply what the leader wrote).
    let d = admin.describe_topic("refactor").await.unwrap();
    for p in &d.partitions {
        let copies = eventually(
            "the replicas holding the same bytes",
            Duration::from_secs(10),
            || {
                let copies: Vec<Vec<u8>> = p
                    .replicas
                    .iter()
                    .map(|b| {
                        replica_bytes(
                            &cluster.brokers[*b as usize - 1].data_dir,
                            "refactor",
                            p.partition,
                        )
                    })
                    .collect();
                async move { copies.windows(2).all(|w| w[0] == w[1]).then_some(copies) }
            },
        )
        .await;
        assert!(!copies[0].is_empty());
    }

    // And back to 1: each partition keeps one replica, with every record.
    admin
        .alter_topic("refactor", factor(1), false)
        .await
        .unwrap();
    eventually(
        "every partition on one replica",
        Duration::from_secs(60),
        || async {
            let d = admin.describe_topic("refactor").await.ok()?;
            d.partitions
                .iter()
                .all(|p| p.replicas.len() == 1 && p.removing_replicas.is_empty())
                .then_some(())
        },
    )
    .await;
    let read = sluice_tests::read_all(cluster.client(), "refactor").await;
    assert_eq!(read.len(), want.len(), "every record after 2 -> 1");
}

/// Writes `n` keyed records of 2 KB through a new acks=all producer; returns where each went.
async fn write_keyed(client: ClientConfig, topic: &str, n: u32) -> Vec<(i32, i64)> {
    let producer = Producer::connect(client, ProducerConfig::default())
        .await
        .unwrap();
    let mut acked = Vec::new();
    for i in 0..n {
        let d = producer
            .send(ProducerRecord::new(topic, vec![b'x'; 2000]).key(format!("k{}", i % 30)))
            .await
            .unwrap();
        acked.push(d);
    }
    let mut offsets = Vec::new();
    for d in acked {
        let m = d.await.expect("delivered");
        offsets.push((m.partition, m.offset));
    }
    producer.close().await;
    offsets
}

/// A replication factor change survives brokers dying in the middle: the broker joining
/// partition 0 is SIGKILLed right after the change is committed (before the leader can have
/// caught it up) and started again, then partition 0's leader is; the moves complete (a
/// restarted joiner goes on from what it has, a new leader carries the move on), and every
/// acknowledged record is there once, on every replica alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_factor_change_survives_brokers_crashing() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(NewTopic::new("crashy", 3, 2), false)
        .await
        .unwrap();
    let mut offsets = write_keyed(cluster.client(), "crashy", 600).await;
    let resp = admin
        .alter_topic(
            "crashy",
            sluice_client::AlterTopic {
                replication_factor: Some(3),
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(resp.reassignments.len(), 3);
    let joiner = resp.reassignments[0]
        .replicas_after
        .iter()
        .find(|r| !resp.reassignments[0].replicas_before.contains(r))
        .copied()
        .unwrap();
    cluster.node(joiner).kill();
    cluster.node(joiner).restart();
    offsets.extend(write_keyed(cluster.client(), "crashy", 300).await);
    let admin = Admin::new(cluster.client()).unwrap();
    let leader = eventually("partition 0 led", Duration::from_secs(30), || async {
        let d = admin.describe_topic("crashy").await.ok()?;
        Some(d.partitions[0].leader).filter(|l| *l > 0)
    })
    .await;
    cluster.node(leader).kill();
    cluster.node(leader).restart();
    let admin = Admin::new(cluster.client()).unwrap();
    eventually(
        "every partition on three replicas, all in sync",
        Duration::from_secs(60),
        || async {
            let d = admin.describe_topic("crashy").await.ok()?;
            d.partitions
                .iter()
                .all(|p| p.replicas.len() == 3 && p.adding_replicas.is_empty() && p.isr.len() == 3)
                .then_some(())
        },
    )
    .await;
    offsets.extend(write_keyed(cluster.client(), "crashy", 300).await);
    let read = sluice_tests::read_all(cluster.client(), "crashy").await;
    let mut got: Vec<(i32, i64)> = read.iter().map(|r| (r.partition, r.offset)).collect();
    got.sort();
    offsets.sort();
    assert_eq!(
        got, offsets,
        "every acknowledged record once, at its offset"
    );
    for p in 0..3 {
        eventually(
            "the replicas holding the same bytes",
            Duration::from_secs(10),
            || {
                let copies: Vec<Vec<u8>> = cluster
                    .brokers
                    .iter()
                    .map(|b| replica_bytes(&b.data_dir, "crashy", p))
                    .collect();
                async move { copies.windows(2).all(|w| w[0] == w[1]).then_some(()) }
            },
        )
        .await;
    }
}

/// Labels and annotations are topic metadata: set at creation, shown by describe and by
/// list (with the overrides, for `sluice apply`'s plan), replaced whole by an alter that
/// changes nothing else (the same ones again: no change), checked with the key named, and
/// kept across a restart of every broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_labels_and_annotations_are_replicated_metadata() {
    use sluice_client::{AlterTopic, TopicMetadata};

    let sorted = |m: &std::collections::HashMap<String, String>| -> BTreeMap<String, String> {
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let mut cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    let labels = set(&[
        ("app.kubernetes.io/managed-by", "sluice"),
        ("team", "payments"),
    ]);
    let annotations = set(&[
        ("sluice.io/applied-config", "retention.ms"),
        ("note", "free text: spaces, ünïcode, anything"),
    ]);
    admin
        .create_topic(
            NewTopic::new("labelled", 2, 3)
                .config("retention.ms", "60000")
                .label("app.kubernetes.io/managed-by", "sluice")
                .label("team", "payments")
                .annotation("sluice.io/applied-config", "retention.ms")
                .annotation("note", "free text: spaces, ünïcode, anything"),
            false,
        )
        .await
        .unwrap();
    let d = admin.describe_topic("labelled").await.unwrap();
    assert_eq!(sorted(&d.labels), labels);
    assert_eq!(sorted(&d.annotations), annotations);
    // Every broker answers ListTopics from the metadata it has applied.
    let listed = eventually(
        "the labels in list_topics",
        Duration::from_secs(10),
        || async {
            let topics = admin.list_topics().await.ok()?;
            topics
                .into_iter()
                .find(|t| t.name == "labelled" && !t.labels.is_empty())
        },
    )
    .await;
    assert_eq!(sorted(&listed.labels), labels);
    assert_eq!(sorted(&listed.annotations), annotations);
    assert_eq!(
        sorted(&listed.config),
        set(&[("retention.ms", "60000")]),
        "list's config holds the overrides only"
    );

    // Replaced whole, nothing else changes.
    let new_labels = set(&[("app.kubernetes.io/managed-by", "sluice"), ("tier", "gold")]);
    let replace = AlterTopic {
        metadata: Some(TopicMetadata {
            labels: new_labels.clone(),
            annotations: BTreeMap::new(),
        }),
        ..AlterTopic::default()
    };
    let resp = admin
        .alter_topic("labelled", replace.clone(), false)
        .await
        .unwrap();
    assert!(resp.metadata_changed);
    assert!(resp.changes.is_empty() && resp.reassignments.is_empty());
    assert_eq!((resp.partitions_before, resp.partitions_after), (2, 2));
    assert_eq!(
        (
            resp.replication_factor_before,
            resp.replication_factor_after
        ),
        (3, 3)
    );
    let topic = resp.topic.expect("the altered topic");
    assert_eq!(sorted(&topic.labels), new_labels);
    assert!(topic.annotations.is_empty());
    let d = admin.describe_topic("labelled").await.unwrap();
    assert_eq!(sorted(&d.labels), new_labels);
    assert!(d.annotations.is_empty());
    assert_eq!(d.overrides, ["retention.ms"]);
    assert_eq!(d.config["retention.ms"], "60000");
    // The same ones again: accepted, no change.
    let again = admin
        .alter_topic("labelled", replace.clone(), false)
        .await
        .unwrap();
    assert!(!again.metadata_changed);
    assert!(again.changes.is_empty());
    // An alter that does not set them leaves them alone.
    admin
        .alter_topic_config("labelled", set(&[("retention.ms", "70000")]), vec![], false)
        .await
        .unwrap();
    let d = admin.describe_topic("labelled").await.unwrap();
    assert_eq!(sorted(&d.labels), new_labels);

    // validate_only answers what would change and changes nothing.
    let check = AlterTopic {
        metadata: Some(TopicMetadata {
            labels: set(&[("team", "other")]),
            annotations: set(&[("note", "x")]),
        }),
        ..AlterTopic::default()
    };
    let resp = admin.alter_topic("labelled", check, true).await.unwrap();
    assert!(resp.metadata_changed);
    let d = admin.describe_topic("labelled").await.unwrap();
    assert_eq!(sorted(&d.labels), new_labels);
    assert!(d.annotations.is_empty());

    // A bad key is refused, named, at alter and at create; nothing changes.
    let bad = AlterTopic {
        metadata: Some(TopicMetadata {
            labels: set(&[("bad key!", "x")]),
            annotations: BTreeMap::new(),
        }),
        ..AlterTopic::default()
    };
    let err = admin.alter_topic("labelled", bad, false).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest), "{err}");
    assert!(
        err.to_string().contains("'bad key!'") && err.to_string().contains("labelled"),
        "{err}"
    );
    let err = admin
        .create_topic(
            NewTopic::new("refused", 1, 3).annotation("Upper.io/x", "y"),
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest), "{err}");
    assert!(err.to_string().contains("'Upper.io/x'"), "{err}");
    assert!(
        admin
            .list_topics()
            .await
            .unwrap()
            .iter()
            .all(|t| t.name != "refused")
    );
    let d = admin.describe_topic("labelled").await.unwrap();
    assert_eq!(sorted(&d.labels), new_labels);

    // Kept across a restart of every broker (from the metadata log, not from memory).
    for id in 1..=3 {
        let status = tokio::task::block_in_place(|| cluster.node(id).terminate());
        assert!(status.success());
        cluster.node(id).restart_in_place();
    }
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    let listed = eventually(
        "the topic listed after the restart",
        Duration::from_secs(30),
        || async {
            let topics = admin.list_topics().await.ok()?;
            topics.into_iter().find(|t| t.name == "labelled")
        },
    )
    .await;
    assert_eq!(sorted(&listed.labels), new_labels);
    assert_eq!(sorted(&listed.config), set(&[("retention.ms", "70000")]));
    let d = admin.describe_topic("labelled").await.unwrap();
    assert_eq!(sorted(&d.labels), new_labels);

    // The CLI shows them in its table and in JSON.
    let out = run_cli(
        &cluster.bootstrap(),
        &["topics", "describe", "labelled"],
        "",
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("app.kubernetes.io/managed-by=sluice") && table.contains("tier=gold"),
        "{table}"
    );
    let out = run_cli(
        &cluster.bootstrap(),
        &["topics", "describe", "labelled", "-o", "json"],
        "",
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["labels"]["tier"], "gold", "{v}");
}
