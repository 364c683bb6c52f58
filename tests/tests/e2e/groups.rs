//! Consumer groups: committed offsets kept by the group's coordinator in
//! `__consumer_offsets`, replicated, surviving the coordinator's broker.

use std::time::Duration;

use nix::sys::signal::Signal;
use sluice_client::{
    Admin, AutoOffsetReset, Consumer, ConsumerConfig, ErrorCode, NewTopic, Offset, ProducerConfig,
    ProducerRecord, TopicPartition,
};
use sluice_tests::{Cluster, eventually};

async fn produce(client: sluice_client::ClientConfig, topic: &str, from: u32, n: u32) {
    let producer = sluice_client::Producer::connect(client, ProducerConfig::default())
        .await
        .unwrap();
    let mut acked = Vec::new();
    for i in from..from + n {
        acked.push(
            producer
                .send(ProducerRecord::new(topic, format!("{i}")).key(format!("k{i}")))
                .await
                .unwrap(),
        );
    }
    for d in acked {
        d.await.unwrap();
    }
    producer.close().await;
}

/// Polls until `n` records arrived (or fails after a deadline); returns their values.
async fn read(consumer: &mut Consumer, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {} of {n} records",
            got.len()
        );
        for r in consumer.poll(Duration::from_millis(500)).await.unwrap() {
            got.push(String::from_utf8_lossy(&r.value).to_string());
        }
    }
    got
}

fn group_consumer(cluster: &Cluster, group: &str, reset: AutoOffsetReset) -> Consumer {
    Consumer::new(
        cluster.client(),
        ConsumerConfig {
            group_id: Some(group.to_string()),
            auto_offset_reset: reset,
            ..ConsumerConfig::default()
        },
    )
    .unwrap()
}

/// A group commits what it has read; its coordinator's broker is SIGKILLed; the offsets are
/// intact at the next coordinator (the new leader of the group's `__consumer_offsets`
/// partition), commits keep working, `describe_group` reports the lag, and a new consumer
/// of the group starts where the group left off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_the_coordinators_broker_dying() {
    let mut cluster = Cluster::start_with(3, &["--offsets-topic-partitions", "6"]);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(NewTopic::new("orders", 3, 3), false)
        .await
        .unwrap();
    produce(cluster.client(), "orders", 0, 30).await;

    let all: Vec<TopicPartition> = (0..3).map(|p| TopicPartition::new("orders", p)).collect();
    let mut consumer = group_consumer(&cluster, "billing", AutoOffsetReset::Earliest);
    consumer.assign_committed(all.clone()).await.unwrap();
    let first = read(&mut consumer, 30).await;
    assert_eq!(first.len(), 30);
    let committed = consumer.commit_sync().await.unwrap();
    assert_eq!(committed.iter().map(|(_, o)| o).sum::<i64>(), 30);
    assert_eq!(
        consumer.committed(&all).await.unwrap(),
        committed
            .iter()
            .map(|(tp, o)| (tp.clone(), Some(*o)))
            .collect::<Vec<_>>()
    );

    produce(cluster.client(), "orders", 30, 10).await;
    let d = eventually(
        "the lag of 10 new records",
        Duration::from_secs(10),
        || async {
            let d = admin.describe_group("billing").await.ok()?;
            (d.partitions.iter().map(|p| p.lag).sum::<i64>() == 10).then_some(d)
        },
    )
    .await;
    assert_eq!(d.partitions.len(), 3);
    for p in &d.partitions {
        assert_eq!(p.lag, p.log_end_offset - p.committed_offset, "{p:?}");
        assert!(p.commit_timestamp_ms > 0);
    }
    let listed = admin.list_groups().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|g| g.group == "billing" && g.topics == vec!["orders".to_string()]),
        "{listed:?}"
    );

    // The CLI shows the same, with Kafka's columns, and as JSON for scripts.
    let address = cluster.brokers[0].address.clone();
    let out = tokio::task::spawn_blocking(move || {
        let table = sluice_tests::run_cli(&address, &["groups", "describe", "billing"], "");
        let json = sluice_tests::run_cli(
            &address,
            &["groups", "describe", "billing", "-o", "json"],
            "",
        );
        let list = sluice_tests::run_cli(&address, &["groups", "list"], "");
        (table, json, list)
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&out.0.stdout).to_string();
    assert!(out.0.status.success(), "{table}");
    for column in ["CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"] {
        assert!(table.contains(column), "{table}");
    }
    let json: serde_json::Value = serde_json::from_slice(&out.1.stdout).unwrap();
    let lag: i64 = json["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["lag"].as_i64().unwrap())
        .sum();
    assert_eq!(lag, 10, "{json}");
    let list = String::from_utf8_lossy(&out.2.stdout).to_string();
    assert!(
        list.contains("billing") && list.contains("orders"),
        "{list}"
    );

    // SIGKILL the coordinator's broker.
    let coordinator = d.coordinator;
    cluster.node(coordinator).signal(Signal::SIGKILL);
    cluster.node(coordinator).kill();
    let survivors = {
        let mut c = sluice_client::ClientConfig::new(&cluster.bootstrap());
        c.request_timeout = Duration::from_secs(10);
        c
    };
    let admin = Admin::new(survivors.clone()).unwrap();
    let after = eventually(
        "the offsets at the next coordinator",
        Duration::from_secs(30),
        || async { admin.describe_group("billing").await.ok() },
    )
    .await;
    assert_ne!(after.coordinator, coordinator);
    let mut offsets: Vec<(i32, i64)> = after
        .partitions
        .iter()
        .map(|p| (p.partition, p.committed_offset))
        .collect();
    offsets.sort();
    let mut before: Vec<(i32, i64)> = committed.iter().map(|(tp, o)| (tp.partition, *o)).collect();
    before.sort();
    assert_eq!(offsets, before, "every committed offset intact");

    // A new member of the group starts where the group left off: only the 10 new records.
    let mut next = Consumer::new(
        survivors.clone(),
        ConsumerConfig {
            group_id: Some("billing".into()),
            ..ConsumerConfig::default()
        },
    )
    .unwrap();
    next.assign_committed(all.clone()).await.unwrap();
    let mut rest = read(&mut next, 10).await;
    rest.sort_by_key(|v| v.parse::<u32>().unwrap());
    assert_eq!(rest, (30..40).map(|i| i.to_string()).collect::<Vec<_>>());
    next.commit_sync().await.unwrap();
    let d = admin.describe_group("billing").await.unwrap();
    assert_eq!(d.partitions.iter().map(|p| p.lag).sum::<i64>(), 0);
}

/// What a group refuses, each with a specific error: a group nobody used, a commit for a
/// topic that does not exist, writing the offsets topic directly, no committed offset with
/// `auto.offset.reset=none`.
#[tokio::test]
async fn group_calls_refuse_what_cannot_be_done() {
    let cluster = Cluster::start_with(1, &["--offsets-topic-partitions", "2"]);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(NewTopic::new("t", 2, 1), false)
        .await
        .unwrap();
    let err = admin.describe_group("nobody").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::GroupIdNotFound), "{err}");
    assert!(err.to_string().contains("'nobody'"), "{err}");

    let err = admin
        .commit_offsets("g", &[(TopicPartition::new("missing", 0), 5)])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::UnknownTopicOrPartition),
        "{err}"
    );
    let err = admin
        .commit_offsets("g", &[(TopicPartition::new("t", 7), 5)])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::UnknownTopicOrPartition),
        "{err}"
    );
    let err = admin
        .commit_offsets("", &[(TopicPartition::new("t", 0), 5)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidGroupId), "{err}");

    let producer = sluice_client::Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    let err = producer
        .send(ProducerRecord::new("__consumer_offsets", "x").partition(0))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidTopic), "{err}");
    let err = admin.delete_topic("__consumer_offsets").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidTopic), "{err}");

    admin
        .commit_offsets("g", &[(TopicPartition::new("t", 0), 0)])
        .await
        .unwrap();
    let mut consumer = group_consumer(&cluster, "g", AutoOffsetReset::None);
    let err = consumer
        .assign_committed(vec![
            TopicPartition::new("t", 0),
            TopicPartition::new("t", 1),
        ])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("t-1"), "{err}");
    assert!(!err.to_string().contains("t-0"), "{err}");
    // Committed 0: the partition starts there (empty, so nothing to read).
    consumer
        .assign_committed(vec![TopicPartition::new("t", 0)])
        .await
        .unwrap();
    assert_eq!(consumer.position(&TopicPartition::new("t", 0)), Some(0));
    let _ = Offset::Earliest;
}

/// The offsets topic does not grow with the number of commits: a coordinator writes the
/// offsets it holds again every so often and every replica deletes the records before; after
/// 12,000 commits (48,000 offset records) the partition holds far less than was written, and
/// a restarted broker loads the latest offsets from what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offsets_topic_stays_bounded_under_many_commits() {
    let (_tmp, dir) = sluice_tests::data_dir();
    let mut broker = sluice_tests::Broker::start(
        &dir,
        &[
            "--offsets-topic-partitions",
            "1",
            "--offsets-topic-segment-bytes",
            "65536",
            "--retention-check-interval",
            "200ms",
        ],
    );
    broker.create_topic(NewTopic::new("t", 4, 1)).await;
    let (groups, commits) = (8, 1500);
    let tasks: Vec<_> = (0..groups)
        .map(|g| {
            let admin = broker.admin();
            tokio::spawn(async move {
                for i in 0..commits {
                    let offsets: Vec<_> =
                        (0..4).map(|p| (TopicPartition::new("t", p), i)).collect();
                    admin
                        .commit_offsets(&format!("g{g}"), &offsets)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let admin = broker.admin();
    let written_at_least = 48_000 * 100;
    let p = eventually(
        "old commits deleted from __consumer_offsets",
        Duration::from_secs(30),
        || async {
            let d = admin.describe_topic("__consumer_offsets").await.ok()?;
            let p = d.partitions.into_iter().next()?;
            (p.log_start_offset > 0 && p.size_bytes < written_at_least / 2).then_some(p)
        },
    )
    .await;
    assert!(p.log_end_offset >= 48_000, "{p:?}");

    assert!(broker.terminate().success());
    broker.restart();
    let admin = broker.admin();
    for g in 0..groups {
        let d = eventually(
            "the group after a restart",
            Duration::from_secs(20),
            || async { admin.describe_group(&format!("g{g}")).await.ok() },
        )
        .await;
        assert_eq!(d.partitions.len(), 4);
        assert!(
            d.partitions
                .iter()
                .all(|p| p.committed_offset == commits - 1),
            "{d:?}"
        );
    }
}
