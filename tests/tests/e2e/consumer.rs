//! Consumers across failures: a partition's leader killed under a live consumer, and a
//! topic whose partitions are only partly available.

use std::time::Duration;

use sluice_client::{
    Admin, Consumer, ConsumerConfig, ConsumerRecord, NewTopic, Offset, PartitionEvent, Producer,
    ProducerConfig, ProducerRecord, TopicPartition,
};
use sluice_tests::{Cluster, eventually, run_cli};

/// The leader of partition 0 once every replica is in sync.
async fn in_sync_leader(admin: &Admin, topic: &str) -> i32 {
    eventually(
        "a leader with every replica in sync",
        Duration::from_secs(30),
        || async {
            let d = admin.describe_topic(topic).await.ok()?;
            let p = &d.partitions[0];
            (p.leader > 0 && p.isr.len() == p.replicas.len()).then_some(p.leader)
        },
    )
    .await
}

/// Polls until the consumer holds `n` records in all, failing with what it got.
async fn read_until(consumer: &mut Consumer, got: &mut Vec<ConsumerRecord>, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer got {} of {n} records within 20 s: {:?}",
            got.len(),
            got.iter().map(|r| r.value.clone()).collect::<Vec<_>>()
        );
        got.extend(
            consumer
                .poll(Duration::from_millis(500))
                .await
                .expect("poll"),
        );
    }
}

async fn produce(producer: &Producer, topic: &str, partition: i32, values: &[String]) {
    for v in values {
        producer
            .send(ProducerRecord::new(topic, v.clone()).partition(partition))
            .await
            .expect("send")
            .await
            .unwrap_or_else(|e| panic!("record {v} is acknowledged: {e}"));
    }
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A consumer that is reading a partition keeps reading it, from where it was, after its
/// leader is SIGKILLed, and again after the next leader is SIGKILLed too: it refreshes
/// metadata on the failed fetch and continues on the new leader. Nothing is skipped or
/// read twice.
#[tokio::test]
async fn a_live_consumer_follows_its_partition_across_two_leader_kills() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("pay", 1, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .unwrap();
    let first = in_sync_leader(&admin, "pay").await;
    let producer = Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    let mut consumer = Consumer::new(cluster.client(), ConsumerConfig::default()).unwrap();
    consumer
        .assign(vec![TopicPartition::new("pay", 0)], Offset::Earliest)
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut expected = values("a", 10);
    produce(&producer, "pay", 0, &expected).await;
    read_until(&mut consumer, &mut got, expected.len()).await;

    cluster.node(first).kill();
    let more = values("b", 10);
    produce(&producer, "pay", 0, &more).await;
    expected.extend(more);
    read_until(&mut consumer, &mut got, expected.len()).await;

    // Bring the first back, let it catch up, then kill the second leader.
    cluster.node(first).restart();
    let second = eventually(
        "a new leader with every replica in sync",
        Duration::from_secs(30),
        || async {
            let d = admin.describe_topic("pay").await.ok()?;
            let p = &d.partitions[0];
            (p.leader > 0 && p.leader != first && p.isr.len() == 3).then_some(p.leader)
        },
    )
    .await;
    cluster.node(second).kill();
    let last = values("c", 10);
    produce(&producer, "pay", 0, &last).await;
    expected.extend(last);
    read_until(&mut consumer, &mut got, expected.len()).await;

    let read: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    assert_eq!(read, expected, "every record once, in order");
    assert!(
        got.windows(2).all(|w| w[0].offset < w[1].offset),
        "offsets increase"
    );
    assert!(consumer.unavailable().is_empty());
}

/// With two of three brokers down, a consumer of a topic with a partition on each reads
/// the partition it can, says once which partitions it cannot read and why, and picks them
/// up from the start when their brokers return. The CLI does the same and exits non-zero
/// naming the partitions it could not read.
#[tokio::test]
async fn a_consumer_reads_the_partitions_it_can_and_picks_up_the_others() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(NewTopic::new("pay", 3, 1), false)
        .await
        .unwrap();
    let described = eventually("every partition led", Duration::from_secs(20), || async {
        let d = admin.describe_topic("pay").await.ok()?;
        d.partitions.iter().all(|p| p.leader > 0).then_some(d)
    })
    .await;
    let producer = Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    for p in 0..3 {
        produce(&producer, "pay", p, &values(&format!("p{p}"), 5)).await;
    }
    let leader_of = |p: i32| described.partitions[p as usize].leader;
    // Keep the broker that leads partition 0; stop the others.
    let survivor = leader_of(0);
    for id in 1..=3 {
        if id != survivor {
            cluster.node(id).kill();
        }
    }
    let address = cluster.node(survivor).address.clone();

    let out = run_cli(
        &address,
        &[
            "consume",
            "pay",
            "--from-beginning",
            "--timeout",
            "3s",
            "--format",
            "{partition}:{value}",
        ],
        "",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        values("0:p0", 5)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "the reachable partition is read in full; stderr: {stderr}"
    );
    for p in 1..3 {
        let warned = stderr
            .lines()
            .filter(|l| l.contains(&format!("partition pay-{p} ")) && l.contains("cannot be read"))
            .count();
        assert_eq!(warned, 1, "partition {p} is reported once: {stderr}");
    }
    assert!(!out.status.success(), "unread partitions fail the command");
    assert!(
        stderr.contains("2 partition(s) of 'pay' not read"),
        "{stderr}"
    );

    let mut consumer = Consumer::new(
        sluice_client::ClientConfig::new(&address),
        ConsumerConfig::default(),
    )
    .unwrap();
    consumer
        .assign(
            (0..3).map(|p| TopicPartition::new("pay", p)).collect(),
            Offset::Earliest,
        )
        .await
        .expect("assigning does not wait for unavailable partitions");
    let mut got = Vec::new();
    read_until(&mut consumer, &mut got, 5).await;
    let unavailable: Vec<TopicPartition> = consumer
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            PartitionEvent::Unavailable { partition, .. } => Some(partition),
            _ => None,
        })
        .collect();
    assert_eq!(
        unavailable,
        vec![TopicPartition::new("pay", 1), TopicPartition::new("pay", 2)]
    );

    for id in 1..=3 {
        if id != survivor {
            cluster.node(id).restart();
        }
    }
    read_until(&mut consumer, &mut got, 15).await;
    let mut read: Vec<String> = got
        .iter()
        .map(|r| format!("{}:{}", r.partition, String::from_utf8_lossy(&r.value)))
        .collect();
    read.sort();
    let mut expected: Vec<String> = (0..3)
        .flat_map(|p| values(&format!("{p}:p{p}"), 5))
        .collect();
    expected.sort();
    assert_eq!(read, expected);
    let back = consumer
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, PartitionEvent::Available { .. }))
        .count();
    assert_eq!(back, 2, "both partitions are reported readable again");
    assert!(consumer.unavailable().is_empty());
}

/// `sluice consume` as a script uses it: `--until-end` stops at the end of the log (the
/// README's tour runs as written), an offset past the end is OFFSET_OUT_OF_RANGE with the
/// valid range unless `--reset` says where to go, an unknown `--format` placeholder is
/// refused naming the valid ones, and a partition that does not exist names the range.
#[test]
fn consume_stops_at_the_end_and_refuses_what_it_cannot_do() {
    let (_dir, data) = sluice_tests::data_dir();
    let broker = sluice_tests::Broker::start(&data, &[]);
    let ok = |args: &[&str], stdin: &str| {
        let out = broker.cli(args, stdin);
        assert!(
            out.status.success(),
            "sluice {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let failed = |args: &[&str]| {
        let out = broker.cli(args, "");
        assert!(!out.status.success(), "sluice {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    ok(&["topics", "create", "tour", "--partitions", "2"], "");
    ok(
        &["produce", "tour", "--key-separator", ":", "--header", "h=1"],
        "a:1\nb:2\nc:3\nd:4\ne:5\n",
    );

    // Stops by itself: no --timeout, no --max-messages.
    let all = ok(
        &[
            "consume",
            "tour",
            "--from-beginning",
            "--until-end",
            "--format",
            "{key}={value} {headers}",
        ],
        "",
    );
    let mut lines: Vec<&str> = all.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec!["a=1 h=1", "b=2 h=1", "c=3 h=1", "d=4 h=1", "e=5 h=1"]
    );
    let json = ok(
        &["consume", "tour", "--from-time", "10m", "-e", "-o", "json"],
        "",
    );
    assert_eq!(json.lines().count(), 5, "{json}");
    ok(&["topics", "create", "empty"], "");
    assert_eq!(ok(&["consume", "empty", "--from-beginning", "-e"], ""), "");

    let err = failed(&[
        "consume",
        "tour",
        "--partition",
        "0",
        "--offset",
        "100",
        "-e",
    ]);
    assert!(err.contains("OFFSET_OUT_OF_RANGE"), "{err}");
    assert!(err.contains("offset 100 is outside"), "{err}");
    let from_start = ok(
        &[
            "consume",
            "tour",
            "--partition",
            "0",
            "--offset",
            "100",
            "--reset",
            "earliest",
            "-e",
        ],
        "",
    );
    assert!(
        !from_start.is_empty(),
        "--reset earliest reads partition 0 from its start"
    );

    let err = failed(&["consume", "tour", "--format", "{nope} {value}", "-e"]);
    assert!(err.contains("unknown placeholder {nope}"), "{err}");
    assert!(
        err.contains("{headers}"),
        "the valid ones are listed: {err}"
    );

    let err = failed(&["consume", "tour", "--partition", "9"]);
    assert!(err.contains("partitions are 0-1"), "{err}");
}
