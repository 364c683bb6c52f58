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

/// A cluster of `brokers` for group tests: `offsets_partitions` partitions of
/// `__consumer_offsets`, heartbeats every 200 ms, and the session timeout given (else the
/// default); ready, with an admin client.
pub(crate) async fn group_cluster(
    brokers: usize,
    offsets_partitions: u32,
    session_timeout: Option<&str>,
) -> (Cluster, Admin) {
    let partitions = offsets_partitions.to_string();
    let mut args = vec![
        "--offsets-topic-partitions",
        partitions.as_str(),
        "--group-heartbeat-interval",
        "200ms",
    ];
    if let Some(t) = session_timeout {
        args.extend(["--group-session-timeout", t]);
    }
    let cluster = Cluster::start_with(brokers, &args);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    (cluster, admin)
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
    // Lag in time: the age of the first record not consumed, 0 where caught up.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let t0 = now();
    let d = admin.describe_group("billing").await.unwrap();
    let t1 = now();
    let mut peek = Consumer::new(cluster.client(), ConsumerConfig::default()).unwrap();
    for p in &d.partitions {
        if p.lag == 0 {
            assert_eq!(p.lag_ms, 0, "{p:?}");
            continue;
        }
        let tp = TopicPartition::new("orders", p.partition);
        peek.assign(vec![tp.clone()], Offset::At(p.committed_offset))
            .await
            .unwrap();
        let first = loop {
            let rs = peek.poll(Duration::from_secs(5)).await.unwrap();
            if let Some(r) = rs.into_iter().find(|r| r.offset == p.committed_offset) {
                break r;
            }
        };
        assert!(
            (t0 - first.timestamp..=t1 - first.timestamp).contains(&p.lag_ms),
            "lag_ms {} for a record stamped {} between {t0} and {t1}",
            p.lag_ms,
            first.timestamp
        );
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
    for column in ["CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "LAG-TIME"] {
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
    let (ok, lag, err) = cli(
        &cluster.brokers[0].address,
        &["groups", "lag", "-o", "json"],
    )
    .await;
    assert!(ok, "{err}");
    let lag: serde_json::Value = serde_json::from_str(&lag).unwrap();
    assert_eq!(lag[0]["group"], "billing", "{lag}");
    assert_eq!(lag[0]["lag"], 10, "{lag}");
    assert!(lag[0]["lag_ms"].as_i64().unwrap() >= 0, "{lag}");

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
    // Without waiting (commitAsync): the handle says what was committed.
    let handle = next.commit_async();
    let committed = handle.await.unwrap().unwrap();
    assert_eq!(committed.iter().map(|(_, o)| o).sum::<i64>(), 40);
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

    // Deleting a group removes its offsets; a group that is not there is named.
    assert_eq!(admin.delete_group("g", false).await.unwrap(), (1, 0));
    let err = admin.describe_group("g").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::GroupIdNotFound), "{err}");
    let err = admin.delete_group("g", false).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::GroupIdNotFound), "{err}");
}

/// The offsets topic does not grow with the number of commits: a coordinator writes the
/// offsets it holds again every so often and every replica deletes the records before; after
/// 12,000 commits (48,000 offset records) every replica holds far less than was written, and
/// the next coordinator, after the first one's broker dies, loads the latest offsets from
/// what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offsets_topic_stays_bounded_under_many_commits() {
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--offsets-topic-partitions",
            "1",
            "--offsets-topic-segment-bytes",
            "65536",
            "--retention-check-interval",
            "200ms",
        ],
    );
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(NewTopic::new("t", 4, 1), false)
        .await
        .unwrap();
    let (groups, commits) = (8, 1500);
    let tasks: Vec<_> = (0..groups)
        .map(|g| {
            let admin = Admin::new(cluster.client()).unwrap();
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
    let written_at_least: u64 = 48_000 * 100;
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
    // Every replica deleted its old segments, followers too (each learns the offset from
    // the replicated delete-before batch).
    for b in &cluster.brokers {
        let bytes = |b: &sluice_tests::Broker| -> u64 {
            sluice_tests::segment_files(&b.data_dir, "__consumer_offsets", 0)
                .iter()
                .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
                .sum()
        };
        eventually(
            "a replica's old segments deleted",
            Duration::from_secs(30),
            || {
                let n = bytes(b);
                async move { (n > 0 && n < written_at_least / 2).then_some(()) }
            },
        )
        .await;
    }

    // The coordinator's broker dies: the next leader loads the latest offsets from what
    // its own (trimmed) replica holds.
    let coordinator = admin.describe_group("g0").await.unwrap().coordinator;
    cluster.node(coordinator).signal(Signal::SIGKILL);
    cluster.node(coordinator).kill();
    let mut survivors = sluice_client::ClientConfig::new(&cluster.bootstrap());
    survivors.request_timeout = Duration::from_secs(10);
    let admin = Admin::new(survivors).unwrap();
    for g in 0..groups {
        let d = eventually(
            "the group at the next coordinator",
            Duration::from_secs(30),
            || async { admin.describe_group(&format!("g{g}")).await.ok() },
        )
        .await;
        assert_ne!(d.coordinator, coordinator);
        assert_eq!(d.partitions.len(), 4);
        assert!(
            d.partitions
                .iter()
                .all(|p| p.committed_offset == commits - 1),
            "{d:?}"
        );
    }
}

/// A group member running in its own task: polls, records what it read and what it owns.
struct Member {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(i32, i64)>>>,
    owned: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<i32>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Member {
    async fn join(client: sluice_client::ClientConfig, group: &str, topic: &str) -> Member {
        Member::join_as(client, group, topic, None).await
    }

    /// A member with `group.instance.id` `instance` when given (static membership).
    async fn join_as(
        client: sluice_client::ClientConfig,
        group: &str,
        topic: &str,
        instance: Option<&str>,
    ) -> Member {
        let mut consumer = Consumer::new(
            client,
            ConsumerConfig {
                group_id: Some(group.to_string()),
                auto_offset_reset: AutoOffsetReset::Earliest,
                auto_commit_interval: Duration::from_millis(200),
                group_instance_id: instance.map(str::to_string),
                ..ConsumerConfig::default()
            },
        )
        .unwrap();
        consumer.subscribe(vec![topic.to_string()]).await.unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let owned = std::sync::Arc::new(std::sync::Mutex::new(Default::default()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (seen, owned, stop) = (seen.clone(), owned.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let records = consumer.poll(Duration::from_millis(100)).await.unwrap();
                    *owned.lock().unwrap() = consumer
                        .assignment()
                        .iter()
                        .map(|tp| tp.partition)
                        .collect();
                    seen.lock()
                        .unwrap()
                        .extend(records.iter().map(|r| (r.partition, r.offset)));
                }
                consumer.close().await.unwrap();
            })
        };
        Member {
            seen,
            owned,
            stop,
            task,
        }
    }

    fn owned(&self) -> std::collections::BTreeSet<i32> {
        self.owned.lock().unwrap().clone()
    }

    async fn close(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
    }
}

/// Owners of each of `partitions` partitions among `members`, if every partition has
/// exactly one.
fn owners(members: &[&Member], partitions: i32) -> Option<Vec<usize>> {
    let mut owner = vec![None; partitions as usize];
    for (i, m) in members.iter().enumerate() {
        for p in m.owned() {
            if owner[p as usize].replace(i).is_some() {
                return None;
            }
        }
    }
    owner.into_iter().collect()
}

/// Three members on six partitions get two each, disjoint and covering; a fourth joins and
/// only what it needs moves (the others keep theirs); a member that closes hands its
/// partitions over at once (well within the session timeout); every record is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_partitions_and_only_what_must_move_moves() {
    let (cluster, admin) = group_cluster(3, 6, Some("30s")).await;
    admin
        .create_topic(NewTopic::new("orders", 6, 3), false)
        .await
        .unwrap();
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(Member::join(cluster.client(), "shipping", "orders").await);
    }
    let spread = eventually(
        "three members with two partitions each",
        Duration::from_secs(20),
        || {
            let refs: Vec<&Member> = members.iter().collect();
            let o = owners(&refs, 6)
                .filter(|o| (0..3).all(|i| o.iter().filter(|x| **x == i).count() == 2));
            async move { o }
        },
    )
    .await;
    produce(cluster.client(), "orders", 0, 60).await;
    eventually("every record read", Duration::from_secs(20), || {
        let n: usize = members.iter().map(|m| m.seen.lock().unwrap().len()).sum();
        async move { (n >= 60).then_some(()) }
    })
    .await;
    for (i, m) in members.iter().enumerate() {
        let mine: std::collections::BTreeSet<i32> =
            m.seen.lock().unwrap().iter().map(|(p, _)| *p).collect();
        let given: std::collections::BTreeSet<i32> =
            (0..6).filter(|p| spread[*p as usize] == i).collect();
        assert!(
            mine.is_subset(&given),
            "member {i} read only its partitions"
        );
    }

    // A fourth joins: two members give one partition each; nothing else moves.
    let before: Vec<_> = members.iter().map(Member::owned).collect();
    members.push(Member::join(cluster.client(), "shipping", "orders").await);
    eventually(
        "four members sharing six partitions",
        Duration::from_secs(20),
        || {
            let refs: Vec<&Member> = members.iter().collect();
            let o = owners(&refs, 6).filter(|o| (0..4).all(|i| o.contains(&i)));
            async move { o }
        },
    )
    .await;
    for i in 0..3 {
        assert!(
            members[i].owned().is_subset(&before[i]),
            "member {i} kept what it had"
        );
    }
    let d = eventually("the group stable", Duration::from_secs(10), || async {
        let d = admin.describe_group("shipping").await.ok()?;
        (d.state == "Stable").then_some(d)
    })
    .await;
    assert_eq!(d.members.len(), 4);

    // While it has members, only they commit: an outsider is refused, and so is a commit
    // naming a member the group does not have or an epoch it did not give.
    let err = admin
        .commit_offsets("shipping", &[(TopicPartition::new("orders", 0), 0)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest), "{err}");
    assert!(err.to_string().contains("active member"), "{err}");
    let coordinator = cluster.brokers[(d.coordinator - 1) as usize]
        .address
        .clone();
    let mut raw =
        sluice_client::pb::groups_client::GroupsClient::connect(format!("http://{coordinator}"))
            .await
            .unwrap();
    let member = &d.members[0];
    for (id, epoch, code) in [
        ("ghost", 1, "UNKNOWN_MEMBER_ID"),
        (
            member.member_id.as_str(),
            member.member_epoch + 7,
            "FENCED_MEMBER_EPOCH",
        ),
    ] {
        let status = raw
            .offset_commit(sluice_client::pb::OffsetCommitRequest {
                group: "shipping".into(),
                member_id: id.into(),
                member_epoch: epoch,
                partitions: vec![sluice_client::pb::OffsetCommitPartition {
                    topic: "orders".into(),
                    partition: 0,
                    offset: 0,
                    metadata: String::new(),
                }],
            })
            .await
            .unwrap_err();
        assert!(status.message().starts_with(code), "{status:?}");
    }

    // One closes: its partitions move at once.
    let closing = members.remove(0);
    let had = closing.owned();
    closing.close().await;
    eventually(
        "the closed member's partitions taken over",
        Duration::from_secs(10),
        || {
            let refs: Vec<&Member> = members.iter().collect();
            let o = owners(&refs, 6);
            async move { o }
        },
    )
    .await;
    assert!(!had.is_empty());
    produce(cluster.client(), "orders", 60, 60).await;
    let d = eventually(
        "every record committed",
        Duration::from_secs(20),
        || async {
            let d = admin.describe_group("shipping").await.ok()?;
            (d.partitions.len() == 6 && d.partitions.iter().all(|p| p.lag == 0)).then_some(d)
        },
    )
    .await;
    assert_eq!(
        d.partitions.iter().map(|p| p.committed_offset).sum::<i64>(),
        120
    );
    for m in members {
        m.close().await;
    }
}

/// The (partition, offset) pairs a `sluice consume --format {partition}:{offset}` printed.
fn printed(out: &str) -> std::collections::BTreeSet<(i32, i64)> {
    out.lines()
        .filter_map(|l| {
            let (p, o) = l.split_once(':')?;
            Some((p.parse().ok()?, o.parse().ok()?))
        })
        .collect()
}

/// Two `sluice consume --group` processes share a topic; one is SIGKILLed: after the
/// session timeout the other takes its partitions over from the group's committed offsets,
/// and together they printed every record (a record printed but not yet committed by the
/// killed one may be printed again, never skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_members_partitions_go_to_the_others_and_nothing_is_lost() {
    let (cluster, admin) = group_cluster(1, 2, Some("2s")).await;
    admin
        .create_topic(NewTopic::new("jobs", 4, 1), false)
        .await
        .unwrap();
    produce(cluster.client(), "jobs", 0, 40).await;
    let address = cluster.brokers[0].address.clone();
    let args = [
        "consume",
        "jobs",
        "--group",
        "workers",
        "--from-beginning",
        "--format",
        "{partition}:{offset}",
    ];
    let a = sluice_tests::CliProcess::spawn(&address, &args);
    a.wait_for_output(
        "the first member reading everything",
        Duration::from_secs(20),
        |out, _| printed(out).len() >= 40,
    );
    let b = sluice_tests::CliProcess::spawn(&address, &args);
    eventually(
        "two members sharing the partitions",
        Duration::from_secs(20),
        || async {
            let d = admin.describe_group("workers").await.ok()?;
            (d.members.len() == 2
                && d.state == "Stable"
                && d.members.iter().all(|m| !m.owned.is_empty()))
            .then_some(())
        },
    )
    .await;
    produce(cluster.client(), "jobs", 40, 40).await;
    eventually("both members reading", Duration::from_secs(20), || {
        let all: std::collections::BTreeSet<_> = printed(&a.output().0)
            .union(&printed(&b.output().0))
            .cloned()
            .collect();
        async move { (all.len() >= 80).then_some(()) }
    })
    .await;

    a.signal(Signal::SIGKILL);
    produce(cluster.client(), "jobs", 80, 40).await;
    eventually(
        "the survivor owning every partition after the session timeout",
        Duration::from_secs(20),
        || async {
            let d = admin.describe_group("workers").await.ok()?;
            (d.members.len() == 1
                && d.members[0]
                    .owned
                    .iter()
                    .map(|t| t.partitions.len())
                    .sum::<usize>()
                    == 4)
                .then_some(())
        },
    )
    .await;
    let lag_zero = eventually("everything committed", Duration::from_secs(20), || async {
        let d = admin.describe_group("workers").await.ok()?;
        d.partitions.iter().all(|p| p.lag == 0).then_some(d)
    })
    .await;
    assert_eq!(
        lag_zero
            .partitions
            .iter()
            .map(|p| p.committed_offset)
            .sum::<i64>(),
        120
    );
    let all: std::collections::BTreeSet<(i32, i64)> = printed(&a.output().0)
        .union(&printed(&b.output().0))
        .cloned()
        .collect();
    let d = admin.describe_topic("jobs").await.unwrap();
    let expected: std::collections::BTreeSet<(i32, i64)> = d
        .partitions
        .iter()
        .flat_map(|p| (0..p.high_watermark).map(move |o| (p.partition, o)))
        .collect();
    assert_eq!(expected.len(), 120);
    assert_eq!(all, expected, "every record printed by a member");
}

/// Runs the CLI against `address`; returns (success, stdout, stderr).
async fn cli(address: &str, args: &[&str]) -> (bool, String, String) {
    let (address, args): (String, Vec<String>) = (
        address.to_string(),
        args.iter().map(|s| s.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sluice_tests::run_cli(&address, &args, "");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    })
    .await
    .unwrap()
}

async fn committed_of(admin: &Admin, group: &str) -> Vec<(i32, i64)> {
    let mut v: Vec<(i32, i64)> = admin
        .committed_offsets(group)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.partition, c.offset))
        .collect();
    v.sort();
    v
}

/// `sluice groups reset-offsets` with every strategy: the plan alone changes nothing;
/// --execute applies it, clamped to the log; --export and --from-file round-trip. On a
/// live group the member continues from the new offsets without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_reset_with_every_strategy_also_on_a_live_group() {
    let (cluster, admin) = group_cluster(1, 2, Some("10s")).await;
    admin
        .create_topic(NewTopic::new("log", 2, 1), false)
        .await
        .unwrap();
    produce(cluster.client(), "log", 0, 20).await;
    let d = admin.describe_topic("log").await.unwrap();
    let ends: Vec<i64> = d.partitions.iter().map(|p| p.high_watermark).collect();
    assert!(ends.iter().all(|e| *e >= 3), "{ends:?}");
    let (e0, e1) = (ends[0], ends[1]);
    admin
        .commit_offsets(
            "g",
            &[
                (TopicPartition::new("log", 0), 2),
                (TopicPartition::new("log", 1), 3),
            ],
        )
        .await
        .unwrap();
    let address = cluster.brokers[0].address.clone();
    let reset = |extra: &[&str]| {
        let mut args = vec!["groups", "reset-offsets", "g"];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| {
        let address = address.clone();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, out, err) = cli(&address, &refs).await;
            assert!(ok, "{args:?}: {out}{err}");
            (out, err)
        }
    };

    // A plan alone changes nothing.
    let (out, err) = run(reset(&["--topic", "log", "--to-earliest", "-o", "json"])).await;
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["executed"], false);
    assert!(
        plan["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["new_offset"] == 0)
    );
    assert!(err.is_empty() || !err.contains("Reset"), "{err}");
    assert_eq!(committed_of(&admin, "g").await, vec![(0, 2), (1, 3)]);

    // Strategy flags, and the committed offsets (partition, offset) expected after.
    type Case<'a> = (Vec<&'a str>, Vec<(i32, i64)>);
    let cases: Vec<Case> = vec![
        (vec!["--to-earliest"], vec![(0, 0), (1, 0)]),
        (vec!["--to-latest"], vec![(0, e0), (1, e1)]),
        (vec!["--shift-by", "-2"], vec![(0, e0 - 2), (1, e1 - 2)]),
        (vec!["--to-current"], vec![(0, e0 - 2), (1, e1 - 2)]),
        (vec!["--to-offset", "1000"], vec![(0, e0), (1, e1)]),
        (vec!["--by-duration", "PT1H"], vec![(0, 0), (1, 0)]),
        (
            vec!["--to-datetime", "2100-01-01T00:00:00Z"],
            vec![(0, e0), (1, e1)],
        ),
        (
            vec!["--to-datetime", "2000-01-01T00:00:00.000+01:00"],
            vec![(0, 0), (1, 0)],
        ),
    ];
    for (strategy, want) in cases {
        let mut args = vec!["--topic", "log", "--execute"];
        args.extend(strategy.iter().copied());
        let (out, _) = run(reset(&args)).await;
        assert_eq!(committed_of(&admin, "g").await, want, "{strategy:?}: {out}");
        if strategy == ["--to-offset", "1000"] {
            assert!(out.contains("clamped"), "{out}");
        }
    }
    // One partition only.
    run(reset(&[
        "--topic",
        "log:1",
        "--to-offset",
        "1",
        "--execute",
    ]))
    .await;
    assert_eq!(committed_of(&admin, "g").await, vec![(0, 0), (1, 1)]);
    // --export, then --from-file.
    let (csv, _) = run(reset(&["--all-topics", "--to-latest", "--export"])).await;
    assert_eq!(csv.lines().count(), 2, "{csv}");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &csv).unwrap();
    let path = file.path().to_string_lossy().to_string();
    run(reset(&["--from-file", &path, "--execute"])).await;
    assert_eq!(committed_of(&admin, "g").await, vec![(0, e0), (1, e1)]);
    // A mistake is named.
    let (ok, _, err) = cli(
        &address,
        &reset(&["--topic", "log:7", "--to-earliest"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(!ok && err.contains("no partition 7"), "{err}");

    // A live group: its member read everything; reset to the start, it reads it all again,
    // without a restart.
    let member = Member::join(cluster.client(), "g", "log").await;
    produce(cluster.client(), "log", 20, 4).await;
    eventually(
        "the member caught up and committed",
        Duration::from_secs(20),
        || async {
            let d = admin.describe_group("g").await.ok()?;
            (d.members.len() == 1 && d.partitions.iter().all(|p| p.lag == 0)).then_some(())
        },
    )
    .await;
    let before = member.seen.lock().unwrap().len();
    assert_eq!(before, 4, "only the 4 records after the committed offsets");
    let (out, err) = run(reset(&["--all-topics", "--to-earliest", "--execute"])).await;
    assert!(err.contains("1 member(s) told"), "{out}{err}");
    eventually(
        "the member reading again from the start",
        Duration::from_secs(20),
        || {
            let n = member.seen.lock().unwrap().len();
            async move { (n >= before + 24).then_some(()) }
        },
    )
    .await;
    let seen = member.seen.lock().unwrap().clone();
    assert!(
        seen.contains(&(0, 0)) && seen.contains(&(1, 0)),
        "read from offset 0 again"
    );

    // A group with members is not deleted unless forced.
    let err = admin.delete_group("g", false).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NonEmptyGroup), "{err}");
    assert!(err.to_string().contains("1 active member"), "{err}");
    let (out, _) = run(vec![
        "groups".into(),
        "delete".into(),
        "g".into(),
        "--force".into(),
    ])
    .await;
    assert!(out.contains("1 member(s) removed"), "{out}");
    member.close().await;
}

/// Two groups on one topic each read every record: a group shares the partitions among its
/// members, not the records with other groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_read_every_record() {
    let (cluster, admin) = group_cluster(1, 2, None).await;
    admin
        .create_topic(NewTopic::new("feed", 3, 1), false)
        .await
        .unwrap();
    produce(cluster.client(), "feed", 0, 30).await;
    let group_a = [
        Member::join(cluster.client(), "ga", "feed").await,
        Member::join(cluster.client(), "ga", "feed").await,
    ];
    let group_b = Member::join(cluster.client(), "gb", "feed").await;
    let read = |members: &[&Member]| -> std::collections::BTreeSet<(i32, i64)> {
        members
            .iter()
            .flat_map(|m| m.seen.lock().unwrap().clone())
            .collect()
    };
    eventually("both groups read all 30", Duration::from_secs(20), || {
        let a = read(&[&group_a[0], &group_a[1]]).len();
        let b = read(&[&group_b]).len();
        async move { (a == 30 && b == 30).then_some(()) }
    })
    .await;
    assert_eq!(read(&[&group_a[0], &group_a[1]]), read(&[&group_b]));
    let [a0, a1] = group_a;
    // Within the group each partition has one owner.
    assert!(a0.owned().is_disjoint(&a1.owned()));
    for m in [a0, a1, group_b] {
        m.close().await;
    }
}

/// A paused partition is not read (it stays assigned) until resumed, then read on from
/// where it stopped; the others are read meanwhile.
#[tokio::test]
async fn a_paused_partition_waits_and_resumes_where_it_stopped() {
    let cluster = Cluster::start_with(1, &[]);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(NewTopic::new("pp", 2, 1), false)
        .await
        .unwrap();
    let mut consumer = Consumer::new(cluster.client(), ConsumerConfig::default()).unwrap();
    let (p0, p1) = (TopicPartition::new("pp", 0), TopicPartition::new("pp", 1));
    consumer
        .assign(vec![p0.clone(), p1.clone()], Offset::Earliest)
        .await
        .unwrap();
    consumer.pause(std::slice::from_ref(&p0));
    assert_eq!(consumer.paused(), vec![p0.clone()]);
    let producer = sluice_client::Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    for (p, n) in [(0, 5), (1, 5)] {
        for i in 0..n {
            producer
                .send(ProducerRecord::new("pp", format!("{p}-{i}")).partition(p))
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < 5 && tokio::time::Instant::now() < deadline {
        got.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    // A little longer: nothing of the paused partition comes.
    got.extend(consumer.poll(Duration::from_millis(500)).await.unwrap());
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|r| r.partition == 1), "{got:?}");
    consumer.resume(std::slice::from_ref(&p0));
    let mut rest = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rest.len() < 5 && tokio::time::Instant::now() < deadline {
        rest.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    assert_eq!(
        rest.iter()
            .map(|r| (r.partition, r.offset))
            .collect::<Vec<_>>(),
        (0..5).map(|o| (0, o)).collect::<Vec<_>>()
    );
}

/// Static membership: a consumer with `group.instance.id` that closes keeps its partitions
/// (the others do not take them) and, back with the same id within the session timeout, gets
/// the same partitions without anything moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarting_gets_its_partitions_back() {
    let (cluster, admin) = group_cluster(1, 2, Some("30s")).await;
    admin
        .create_topic(NewTopic::new("st", 4, 1), false)
        .await
        .unwrap();
    let a = Member::join_as(cluster.client(), "sg", "st", Some("worker-a")).await;
    let b = Member::join(cluster.client(), "sg", "st").await;
    let (mine, theirs) = eventually(
        "two members with two partitions each",
        Duration::from_secs(20),
        || {
            let (x, y) = (a.owned(), b.owned());
            async move { (x.len() == 2 && y.len() == 2 && x.is_disjoint(&y)).then_some((x, y)) }
        },
    )
    .await;
    let epoch = admin.describe_group("sg").await.unwrap().epoch;
    a.close().await;
    // Well past several heartbeats: the other member did not take them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.owned(), theirs);
    let d = admin.describe_group("sg").await.unwrap();
    assert_eq!(d.members.len(), 2, "the static member is kept: {d:?}");
    let back = Member::join_as(cluster.client(), "sg", "st", Some("worker-a")).await;
    eventually(
        "the restarted member owning its partitions again",
        Duration::from_secs(20),
        || {
            let got = back.owned();
            let want = mine.clone();
            async move { (got == want).then_some(()) }
        },
    )
    .await;
    assert_eq!(b.owned(), theirs);
    let d = admin.describe_group("sg").await.unwrap();
    assert_eq!(d.epoch, epoch, "nothing was reassigned: {d:?}");
    back.close().await;
    b.close().await;
}

/// A subscription by pattern reads every topic whose name matches, including one created
/// later, and no other; an invalid pattern is an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscription_picks_up_matching_topics_created_later() {
    let (cluster, admin) = group_cluster(1, 2, None).await;
    for t in ["logs-a", "other"] {
        admin
            .create_topic(NewTopic::new(t, 2, 1), false)
            .await
            .unwrap();
    }
    let mut consumer = Consumer::new(
        cluster.client(),
        ConsumerConfig {
            group_id: Some("pattern".into()),
            auto_offset_reset: AutoOffsetReset::Earliest,
            ..ConsumerConfig::default()
        },
    )
    .unwrap();
    consumer.subscribe_pattern("logs-.*").await.unwrap();
    let assigned = |c: &Consumer| {
        let mut v: Vec<(String, i32)> = c
            .assignment()
            .into_iter()
            .map(|tp| (tp.topic, tp.partition))
            .collect();
        v.sort();
        v
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while assigned(&consumer).len() < 2 && tokio::time::Instant::now() < deadline {
        consumer.poll(Duration::from_millis(100)).await.unwrap();
    }
    assert_eq!(
        assigned(&consumer),
        vec![("logs-a".to_string(), 0), ("logs-a".to_string(), 1)]
    );
    admin
        .create_topic(NewTopic::new("logs-b", 2, 1), false)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while assigned(&consumer).len() < 4 && tokio::time::Instant::now() < deadline {
        consumer.poll(Duration::from_millis(100)).await.unwrap();
    }
    assert_eq!(
        assigned(&consumer),
        vec![
            ("logs-a".to_string(), 0),
            ("logs-a".to_string(), 1),
            ("logs-b".to_string(), 0),
            ("logs-b".to_string(), 1)
        ]
    );
    consumer.close().await.unwrap();

    let mut bad = Consumer::new(
        cluster.client(),
        ConsumerConfig {
            group_id: Some("bad-pattern".into()),
            ..ConsumerConfig::default()
        },
    )
    .unwrap();
    bad.subscribe_pattern("logs-(").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let err = loop {
        match bad.poll(Duration::from_millis(100)).await {
            Err(e) => break e,
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "no error"),
        }
    };
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest), "{err}");
    assert!(err.to_string().contains("logs-("), "{err}");
}
