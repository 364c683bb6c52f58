//! Idempotent producers: a batch sent again (a retry after a lost answer, a crash or a
//! failover) is stored once and answered with its original offsets; sequence gaps and old
//! epochs are refused with Kafka's errors.

use std::time::Duration;

use bytes::Bytes;
use sluice_client::{Admin, NewTopic};
use sluice_proto::batch::ProducerFields;
use sluice_proto::{ErrorDetailExt, RecordBatchBuilder, pb};
use sluice_tests::{Broker, Cluster, data_dir, eventually};

/// A batch of `count` records from producer `pid` starting at sequence `seq`; values name
/// the producer, epoch and sequence.
fn batch(pid: i64, epoch: i16, seq: i32, count: i32) -> Bytes {
    let mut b = RecordBatchBuilder::new(Default::default());
    b.producer(ProducerFields {
        producer_id: pid,
        producer_epoch: epoch,
        base_sequence: seq,
    });
    for i in 0..count {
        b.append(
            1,
            None,
            format!("{pid}/{epoch}/{}", seq + i).as_bytes(),
            &[],
        );
    }
    b.build()
}

async fn produce(
    address: &str,
    topic: &str,
    acks: i32,
    batch: Bytes,
) -> Result<i64, pb::ErrorDetail> {
    let cluster = sluice_client::cluster::Cluster::new(sluice_client::ClientConfig::new(address))
        .expect("client");
    let mut client = cluster.log_client(address).expect("log client");
    client
        .produce(pb::ProduceRequest {
            topic: topic.into(),
            partition: 0,
            acks,
            timeout_ms: 3_000,
            batch,
        })
        .await
        .map(|r| r.into_inner().base_offset)
        .map_err(|s| {
            pb::ErrorDetail::from_status(&s).unwrap_or_else(|| panic!("status without detail: {s}"))
        })
}

fn values(records: &[sluice_client::ConsumerRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect()
}

#[tokio::test]
async fn a_resent_batch_is_stored_once_across_crashes_and_restarts() {
    let (_tmp, dir) = data_dir();
    let mut broker = Broker::start(&dir, &[]);
    broker.create_topic(NewTopic::new("once", 1, 1)).await;
    let a = batch(7, 0, 0, 3);
    assert_eq!(produce(&broker.address, "once", -1, a.clone()).await, Ok(0));
    assert_eq!(
        produce(&broker.address, "once", -1, a.clone()).await,
        Ok(0),
        "a retry gets the original offset"
    );
    let b = batch(7, 0, 3, 2);
    assert_eq!(produce(&broker.address, "once", -1, b.clone()).await, Ok(3));
    assert_eq!(
        produce(&broker.address, "once", -1, a).await,
        Ok(0),
        "any of the last batches is recognised"
    );

    // A gap means a batch was lost: refused, nothing stored.
    let gap = produce(&broker.address, "once", -1, batch(7, 0, 9, 1))
        .await
        .unwrap_err();
    assert_eq!(gap.code, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    assert!(
        gap.message.contains("expected 5") && gap.message.contains("once-0"),
        "{}",
        gap.message
    );
    // A new epoch starts over at 0; the old epoch is fenced from then on.
    let c = batch(7, 1, 0, 1);
    assert_eq!(produce(&broker.address, "once", -1, c.clone()).await, Ok(5));
    let old = produce(&broker.address, "once", -1, batch(7, 0, 5, 1))
        .await
        .unwrap_err();
    assert_eq!(old.code, "INVALID_PRODUCER_EPOCH");
    // Another producer is independent.
    assert_eq!(
        produce(&broker.address, "once", -1, batch(8, 0, 0, 1)).await,
        Ok(6)
    );

    // After a crash the partition rebuilds its producers from the log; after a clean stop,
    // from the snapshot it wrote.
    broker.kill();
    broker.restart();
    assert_eq!(produce(&broker.address, "once", -1, c.clone()).await, Ok(5));
    broker.terminate();
    broker.restart();
    assert_eq!(produce(&broker.address, "once", -1, c).await, Ok(5));

    let stored = values(&broker.read_all("once").await);
    assert_eq!(
        stored,
        [
            "7/0/0", "7/0/1", "7/0/2", "7/0/3", "7/0/4", "7/1/0", "8/0/0"
        ]
    );
}

async fn leader(admin: &Admin, topic: &str, not: i32) -> i32 {
    eventually("a partition leader", Duration::from_secs(20), || async {
        let d = admin.describe_topic(topic).await.ok()?;
        let l = d.partitions[0].leader;
        (l > 0 && l != not).then_some(l)
    })
    .await
}

#[tokio::test]
async fn a_retry_that_reaches_a_new_leader_is_recognised() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).expect("admin");
    admin
        .create_topic(
            NewTopic::new("moved", 1, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .expect("create");
    let first = leader(&admin, "moved", 0).await;
    let a = batch(11, 0, 0, 4);
    let address = cluster.node(first).address.clone();
    let base = produce(&address, "moved", -1, a.clone())
        .await
        .expect("first send");

    // The leader dies after storing the batch; its retry goes to the next leader, which
    // knows the producer from the replicated log.
    cluster.node(first).kill();
    let admin = Admin::new(cluster.client()).expect("admin");
    let second = leader(&admin, "moved", first).await;
    let address = cluster.node(second).address.clone();
    let again = eventually("the retry is answered", Duration::from_secs(20), || async {
        produce(&address, "moved", -1, a.clone()).await.ok()
    })
    .await;
    assert_eq!(again, base, "the retry gets the original offsets");
    let next = produce(&address, "moved", -1, batch(11, 0, 4, 1))
        .await
        .expect("next batch");
    // The new leader's first entry (a control batch) may come between.
    assert!(next >= base + 4, "{next} follows {base}");
    let gap = produce(&address, "moved", -1, batch(11, 0, 9, 1))
        .await
        .unwrap_err();
    assert_eq!(gap.code, "OUT_OF_ORDER_SEQUENCE_NUMBER");

    // The old leader comes back as a follower and agrees.
    cluster.node(first).restart();
    let stored = values(&cluster.node(second).read_all("moved").await);
    assert_eq!(stored, ["11/0/0", "11/0/1", "11/0/2", "11/0/3", "11/0/4"]);
}

#[tokio::test]
async fn acks_1_answers_from_the_leader_alone_and_acks_all_does_not() {
    let mut cluster = Cluster::start_with(3, &["--replica-lag-time-max", "1s"]);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).expect("admin");
    admin
        .create_topic(
            NewTopic::new("one", 1, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .expect("create");
    let lead = leader(&admin, "one", 0).await;
    let address = cluster.node(lead).address.clone();
    for f in (1..=3).filter(|id| *id != lead) {
        cluster.node(f).kill();
    }
    // acks=all is refused once the followers leave the in-sync set.
    let refused = eventually("acks=all refused", Duration::from_secs(20), || async {
        produce(&address, "one", -1, batch(-1, -1, -1, 1))
            .await
            .err()
            .filter(|e| e.code != "REQUEST_TIMED_OUT")
    })
    .await;
    assert_eq!(refused.code, "NOT_ENOUGH_REPLICAS");
    // acks=1 is answered once the leader's log holds the batch durably, with its offset,
    // but consumers see it only after a quorum has it (Kafka's high watermark).
    let offset = produce(&address, "one", 1, batch(-1, -1, -1, 1))
        .await
        .expect("acks=1 answered by the leader alone");
    assert!(offset >= 0);
    let hw = admin
        .describe_topic("one")
        .await
        .expect("describe")
        .partitions[0]
        .high_watermark;
    assert!(
        hw <= offset,
        "not visible before a quorum holds it: high watermark {hw}, offset {offset}"
    );
    let follower = (1..=3).find(|id| *id != lead).expect("a follower");
    cluster.node(follower).restart();
    eventually(
        "the acks=1 record becomes visible",
        Duration::from_secs(20),
        || async {
            let d = admin.describe_topic("one").await.ok()?;
            (d.partitions[0].high_watermark > offset).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_retry_while_the_original_is_still_in_flight_is_not_stored_twice() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).expect("admin");
    admin
        .create_topic(NewTopic::new("slow", 1, 3), false)
        .await
        .expect("create");
    let lead = leader(&admin, "slow", 0).await;
    let address = cluster.node(lead).address.clone();
    let followers: Vec<i32> = (1..=3).filter(|id| *id != lead).collect();
    // Followers paused: the leader stores the batch but cannot commit it, and the request
    // times out; the producer's retry arrives while the first copy is still in flight.
    for f in &followers {
        cluster.node(*f).signal(nix::sys::signal::Signal::SIGSTOP);
    }
    let a = batch(21, 0, 0, 2);
    let first = produce(&address, "slow", -1, a.clone()).await.unwrap_err();
    assert_eq!(first.code, "REQUEST_TIMED_OUT");
    for f in &followers {
        cluster.node(*f).signal(nix::sys::signal::Signal::SIGCONT);
    }
    // The retry goes wherever the partition is led now (the paused followers may have
    // elected one of themselves when they resumed).
    let mut addresses = std::collections::BTreeMap::new();
    for id in 1..=3 {
        addresses.insert(id, cluster.node(id).address.clone());
    }
    let (_, retried) = eventually("the retry is answered", Duration::from_secs(20), || async {
        let l = leader(&admin, "slow", 0).await;
        let offset = produce(&addresses[&l], "slow", -1, a.clone()).await.ok()?;
        Some((l, offset))
    })
    .await;
    // Leadership can still move after the retry was answered (a resumed follower's
    // election timer fires): the next batch follows it, as a producer does on NOT_LEADER
    // (a refused batch was not stored; one sent again is stored once).
    let (now_leading, next) = eventually(
        "the next batch is answered",
        Duration::from_secs(20),
        || async {
            let l = leader(&admin, "slow", 0).await;
            let offset = produce(&addresses[&l], "slow", -1, batch(21, 0, 2, 1))
                .await
                .ok()?;
            Some((l, offset))
        },
    )
    .await;
    assert!(next > retried);
    let stored = values(&cluster.node(now_leading).read_all("slow").await);
    assert_eq!(stored, ["21/0/0", "21/0/1", "21/0/2"]);
}

/// Sends two rounds of a producer's batches with the later batch first (as can happen with
/// several batches in flight): the partition holds the early one until the one before it
/// arrives, then stores both in sequence order. Round one is the producer's first batches
/// (the partition does not know it yet), round two continues its sequence.
async fn overtaken_batches_are_stored_in_order(address: &str, topic: &str) {
    let mut next_offset = None;
    for (first, second) in [((0, 3), (3, 2)), ((5, 1), (6, 4))] {
        let mut early = tokio::spawn({
            let (address, topic) = (address.to_string(), topic.to_string());
            async move { produce(&address, &topic, -1, batch(31, 0, second.0, second.1)).await }
        });
        // A refusal (or a premature store) would come back at once.
        if let Ok(answer) = tokio::time::timeout(Duration::from_millis(500), &mut early).await {
            panic!("the early batch was answered before the batch ahead of it arrived: {answer:?}");
        }
        let base = produce(address, topic, -1, batch(31, 0, first.0, first.1))
            .await
            .expect("the batch ahead");
        let later = early
            .await
            .expect("task")
            .expect("the early batch, once its predecessor is stored");
        assert_eq!(later, base + i64::from(first.1), "stored right after it");
        if let Some(expected) = next_offset {
            assert!(base >= expected, "{base} follows {expected}");
        }
        next_offset = Some(later + i64::from(second.1));
    }
}

#[tokio::test]
async fn a_batch_that_overtakes_the_one_before_it_waits_for_it() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &["--producer-sequence-wait", "30s"]);
    broker.create_topic(NewTopic::new("ahead", 1, 1)).await;
    overtaken_batches_are_stored_in_order(&broker.address, "ahead").await;
    let stored = values(&broker.read_all("ahead").await);
    let expected: Vec<String> = (0..10).map(|s| format!("31/0/{s}")).collect();
    assert_eq!(stored, expected);

    // Replicated: the leader holds it before proposing.
    let mut cluster = Cluster::start_with(3, &["--producer-sequence-wait", "30s"]);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).expect("admin");
    admin
        .create_topic(
            NewTopic::new("ahead", 1, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .expect("create");
    // Every replica in sync first: a leader that has not heard its followers yet refuses
    // with NOT_ENOUGH_REPLICAS, which is not what this test is about.
    let lead = eventually("all replicas in sync", Duration::from_secs(20), || async {
        let d = admin.describe_topic("ahead").await.ok()?;
        let p = &d.partitions[0];
        (p.leader > 0 && p.isr.len() == 3).then_some(p.leader)
    })
    .await;
    let address = cluster.node(lead).address.clone();
    overtaken_batches_are_stored_in_order(&address, "ahead").await;
    assert_eq!(
        values(&cluster.node(lead).read_all("ahead").await),
        expected
    );
}
