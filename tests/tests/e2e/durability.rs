//! Acknowledged records survive crashes and restarts; damaged bytes are cut or reported,
//! never served.

use std::time::Duration;

use nix::sys::signal::Signal;
use sluice_client::{
    Acks, Consumer, ConsumerConfig, ErrorCode, NewTopic, Offset, ProducerConfig, ProducerRecord,
    TopicPartition,
};
use sluice_tests::{Broker, data_dir, segment_files};

/// Produces `n` records one batch each (linger 0, awaited one by one) and returns the offsets.
async fn produce_each(broker: &Broker, topic: &str, n: usize, acks: Acks) -> Vec<i64> {
    let producer = broker
        .producer(ProducerConfig {
            acks,
            linger: Duration::ZERO,
            ..ProducerConfig::default()
        })
        .await;
    let mut offsets = Vec::new();
    for i in 0..n {
        let d = producer
            .send(
                ProducerRecord::new(topic, format!("record-{i:04}-{}", "x".repeat(100)))
                    .partition(0),
            )
            .await
            .unwrap();
        offsets.push(d.await.unwrap().offset);
    }
    producer.close().await;
    offsets
}

fn values(records: &[sluice_client::ConsumerRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value)[..11].to_string())
        .collect()
}

fn expected(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("record-{i:04}")).collect()
}

#[tokio::test]
async fn sigkill_keeps_every_acknowledged_record_with_flush_always() {
    let (_tmp, dir) = data_dir();
    let mut broker = Broker::start(&dir, &["--flush", "always"]);
    broker.create_topic(NewTopic::new("d", 1, 1)).await;
    let producer = broker.producer(ProducerConfig::default()).await;
    let mut ds = Vec::new();
    for i in 0..500 {
        ds.push(
            producer
                .send(ProducerRecord::new(
                    "d",
                    format!("record-{i:04}-{}", "y".repeat(200)),
                ))
                .await
                .unwrap(),
        );
    }
    for d in ds {
        d.await.unwrap();
    }
    broker.signal(Signal::SIGKILL);
    broker.kill();
    broker.restart();
    let records = broker.read_all("d").await;
    assert_eq!(values(&records), expected(500));
    assert!(
        broker.log().contains("recovered partition log"),
        "an unclean start must recover the log"
    );
}

#[tokio::test]
async fn sigterm_keeps_every_acknowledged_record_and_restarts_clean() {
    let (_tmp, dir) = data_dir();
    let mut broker = Broker::start(&dir, &["--flush", "10s"]);
    broker.create_topic(NewTopic::new("d", 3, 1)).await;
    let producer = broker
        .producer(ProducerConfig {
            acks: Acks::Leader,
            ..ProducerConfig::default()
        })
        .await;
    let mut ds = Vec::new();
    for i in 0..900 {
        ds.push(
            producer
                .send(ProducerRecord::new("d", format!("record-{i:04}")).key(format!("{}", i % 7)))
                .await
                .unwrap(),
        );
    }
    for d in ds {
        d.await.unwrap();
    }
    let status = broker.terminate();
    assert!(
        status.success(),
        "graceful shutdown failed: {status:?}\n{}",
        broker.log()
    );
    assert!(broker.log().contains("broker closed cleanly"));
    broker.restart();
    let mut got = values(&broker.read_all("d").await);
    got.sort();
    assert_eq!(got, expected(900));
}

#[tokio::test]
async fn a_torn_write_is_cut_on_restart_and_earlier_records_stay() {
    let (_tmp, dir) = data_dir();
    let mut broker = Broker::start(&dir, &["--flush", "always"]);
    broker.create_topic(NewTopic::new("torn", 1, 1)).await;
    let offsets = produce_each(&broker, "torn", 10, Acks::All).await;
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    broker.kill();
    // Cut the last batch in half, as a crash in the middle of a write would.
    let segment = segment_files(&dir, "torn", 0).pop().unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    f.set_len(len - 60).unwrap();
    drop(f);
    broker.restart();
    assert_eq!(values(&broker.read_all("torn").await), expected(9));
    assert!(
        broker.log().contains("torn write"),
        "recovery should say what it cut:\n{}",
        broker.log()
    );
    let next = produce_each(&broker, "torn", 1, Acks::All).await;
    assert_eq!(
        next,
        vec![9],
        "the log continues right after the last whole batch"
    );
}

#[tokio::test]
async fn a_flipped_byte_is_reported_never_served() {
    let (_tmp, dir) = data_dir();
    let mut broker = Broker::start(&dir, &[]);
    broker.create_topic(NewTopic::new("rot", 1, 1)).await;
    produce_each(&broker, "rot", 6, Acks::All).await;
    assert!(broker.terminate().success());
    // Flip one byte inside the value of the record at offset 3.
    let segment = segment_files(&dir, "rot", 0).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes
        .windows(11)
        .position(|w| w == b"record-0003")
        .expect("record 3 on disk");
    bytes[at + 20] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();
    broker.restart();

    let mut consumer = Consumer::new(broker.client(), ConsumerConfig::default()).unwrap();
    let tp = TopicPartition::new("rot", 0);
    consumer
        .assign(vec![tp.clone()], Offset::Earliest)
        .await
        .unwrap();
    let mut served = Vec::new();
    let err = loop {
        match consumer.poll(Duration::from_secs(5)).await {
            Ok(rs) => {
                assert!(
                    !rs.is_empty(),
                    "the consumer should hit the corrupt record, not wait"
                );
                served.extend(rs);
            }
            Err(e) => break e,
        }
    };
    assert_eq!(
        values(&served),
        expected(3),
        "only the records before the damage are served"
    );
    assert_eq!(err.code(), Some(ErrorCode::CorruptMessage), "{err}");
    assert!(
        err.to_string().contains("offset 3"),
        "the error names the offset: {err}"
    );
    // Records after the damaged batch are intact and readable by seeking past it.
    consumer.seek(&tp, Offset::At(4)).await.unwrap();
    let rest = consumer.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        values(&rest),
        vec!["record-0004".to_string(), "record-0005".to_string()]
    );
}

/// A factor-1 topic created by a version before factor 1 became a one-voter Raft group (made
/// here the way those versions made it) keeps its unreplicated path: its acknowledged records
/// survive a crash, and changing its replication factor is refused with what to do instead.
#[tokio::test]
async fn a_factor_1_topic_from_an_earlier_version_keeps_working() {
    let (_tmp, dir) = data_dir();
    let mut broker = Broker::start_with_env(&dir, &[], &[("SLUICE_TEST_LEGACY_FACTOR_1", "1")]);
    broker.create_topic(NewTopic::new("old", 1, 1)).await;
    produce_each(&broker, "old", 20, Acks::All).await;
    let partition_dir = dir.join("logs").join("old-0");
    assert!(partition_dir.join("00000000000000000000.log").exists());
    assert!(
        !partition_dir.join("raft.json").exists(),
        "the topic is on the unreplicated path"
    );
    broker.signal(Signal::SIGKILL);
    broker.kill();
    broker.restart();
    assert_eq!(values(&broker.read_all("old").await), expected(20));
    let err = sluice_client::Admin::new(broker.client())
        .unwrap()
        .alter_topic(
            "old",
            sluice_client::AlterTopic {
                replication_factor: Some(2),
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::InvalidReplicationFactor),
        "{err}"
    );
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("create a new topic"),
        "{err}"
    );
}
