//! Records go in and come back out: order, partitioning, offsets, long-poll, timestamps.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::partitioner::partition_for_key;
use sluice_client::{
    Acks, Consumer, ConsumerConfig, ErrorCode, NewTopic, Offset, ProducerConfig, ProducerRecord,
    TopicPartition,
};
use sluice_proto::{RecordBatchBuilder, pb};
use sluice_tests::{Broker, data_dir, eventually};

#[tokio::test]
async fn round_trip_keeps_every_field() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    broker.create_topic(NewTopic::new("rt", 1, 1)).await;
    let producer = broker.producer(ProducerConfig::default()).await;
    let mut deliveries = Vec::new();
    for i in 0..100i64 {
        let mut r = ProducerRecord::new("rt", format!("value-{i}"))
            .timestamp(1_700_000_000_000 + i)
            .header("n", i.to_string());
        if i % 3 != 0 {
            r = r.key(format!("key-{i}"));
        }
        deliveries.push(producer.send(r).await.expect("send"));
    }
    for (i, d) in deliveries.into_iter().enumerate() {
        assert_eq!(d.await.expect("delivered").offset, i as i64);
    }
    let m = producer.metrics();
    assert_eq!(m.records, 100, "{m:?}");
    assert!(m.batches >= 1 && m.requests >= m.batches, "{m:?}");
    assert!(m.batch_bytes > 100 * 7, "{m:?}");
    assert!(
        m.request_latency_avg > Duration::ZERO
            && m.request_latency_max >= m.request_latency_avg
            && m.record_queue_time_max >= m.record_queue_time_avg,
        "{m:?}"
    );
    let records = broker.read_all("rt").await;
    assert_eq!(records.len(), 100);
    for (i, r) in records.iter().enumerate() {
        let i = i as i64;
        assert_eq!(r.offset, i);
        assert_eq!(r.value, Bytes::from(format!("value-{i}")));
        assert_eq!(r.key, (i % 3 != 0).then(|| Bytes::from(format!("key-{i}"))));
        assert_eq!(r.timestamp, 1_700_000_000_000 + i);
        assert_eq!(r.headers[0].key, "n");
        assert_eq!(
            r.headers[0].value.as_deref(),
            Some(i.to_string().as_bytes())
        );
    }
}

#[tokio::test]
async fn a_key_stays_on_its_kafka_partition_in_send_order() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &["--flush", "50ms"]);
    broker.create_topic(NewTopic::new("keys", 8, 1)).await;
    let producer = broker
        .producer(ProducerConfig {
            batch_size: 2048,
            ..ProducerConfig::default()
        })
        .await;
    let mut deliveries = Vec::new();
    for seq in 0..40 {
        for k in 0..60 {
            let r = ProducerRecord::new("keys", format!("{seq}")).key(format!("customer-{k}"));
            deliveries.push(producer.send(r).await.expect("send"));
        }
    }
    for d in deliveries {
        d.await.expect("delivered");
    }
    let records = broker.read_all("keys").await;
    assert_eq!(records.len(), 2400);
    let mut by_key: HashMap<Bytes, Vec<(i32, i64, u32)>> = HashMap::new();
    for r in &records {
        let seq: u32 = std::str::from_utf8(&r.value).unwrap().parse().unwrap();
        by_key
            .entry(r.key.clone().unwrap())
            .or_default()
            .push((r.partition, r.offset, seq));
    }
    assert_eq!(by_key.len(), 60);
    let mut used = std::collections::HashSet::new();
    for (key, mut seen) in by_key {
        let expected = partition_for_key(&key, 8);
        assert!(
            seen.iter().all(|(p, ..)| *p == expected),
            "key {key:?} spread over partitions or off Kafka's partition {expected}"
        );
        used.insert(expected);
        seen.sort_by_key(|(_, offset, _)| *offset);
        let seqs: Vec<u32> = seen.iter().map(|(.., s)| *s).collect();
        assert_eq!(
            seqs,
            (0..40).collect::<Vec<_>>(),
            "key {key:?} out of send order"
        );
    }
    assert!(
        used.len() > 4,
        "60 keys should spread over most of 8 partitions, used {used:?}"
    );
}

#[tokio::test]
async fn concurrent_producers_get_distinct_gap_free_offsets() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    broker.create_topic(NewTopic::new("shared", 1, 1)).await;
    let mut tasks = Vec::new();
    for p in 0..4 {
        let producer = broker
            .producer(ProducerConfig {
                batch_size: 512,
                linger: Duration::ZERO,
                ..ProducerConfig::default()
            })
            .await;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut pending = Vec::new();
            for i in 0..300 {
                let value = format!("p{p}-{i}");
                pending.push((
                    value.clone(),
                    producer
                        .send(ProducerRecord::new("shared", value).partition(0))
                        .await
                        .unwrap(),
                ));
            }
            for (value, d) in pending {
                out.push((d.await.unwrap().offset, value));
            }
            out
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked.sort();
    let offsets: Vec<i64> = acked.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (0..1200).collect::<Vec<_>>(),
        "offsets must be distinct and gap-free"
    );
    let stored = broker.read_all("shared").await;
    for ((offset, value), r) in acked.iter().zip(&stored) {
        assert_eq!(
            (r.offset, &r.value[..]),
            (*offset, value.as_bytes()),
            "the acknowledged offset holds another value"
        );
    }
}

fn one_batch(value: &str) -> Bytes {
    let mut b = RecordBatchBuilder::new(Default::default());
    b.append(1, None, value.as_bytes(), &[]);
    b.build()
}

#[tokio::test]
async fn long_poll_answers_when_data_arrives_not_at_the_deadline() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    broker.create_topic(NewTopic::new("poll", 1, 1)).await;
    let cluster = sluice_client::cluster::Cluster::new(broker.client()).unwrap();
    let fetch = |wait_ms: u32| {
        let mut client = cluster.log_client(&broker.address).unwrap();
        async move {
            let started = Instant::now();
            let resp = client
                .fetch(pb::FetchRequest {
                    max_wait_ms: wait_ms,
                    min_bytes: 1,
                    max_bytes: 1 << 20,
                    partitions: vec![pb::FetchPartition {
                        topic: "poll".into(),
                        partition: 0,
                        fetch_offset: 0,
                        partition_max_bytes: 1 << 20,
                    }],
                })
                .await
                .unwrap()
                .into_inner();
            (started.elapsed(), resp)
        }
    };
    // With nothing to read, the broker holds the fetch for max_wait.
    let (waited, resp) = fetch(300).await;
    assert!(resp.partitions[0].records.is_empty());
    assert!(
        waited >= Duration::from_millis(250),
        "an empty fetch returned after {waited:?}, before its 300 ms wait"
    );

    // A fetch waiting up to 20 s returns as soon as a record is written.
    let waiting = tokio::spawn(fetch(20_000));
    let mut client = cluster.log_client(&broker.address).unwrap();
    client
        .produce(pb::ProduceRequest {
            topic: "poll".into(),
            partition: 0,
            acks: -1,
            timeout_ms: 5000,
            batch: one_batch("wake up"),
        })
        .await
        .unwrap();
    let (waited, resp) = waiting.await.unwrap();
    assert!(
        !resp.partitions[0].records.is_empty(),
        "the fetch returned without the record"
    );
    assert!(
        waited < Duration::from_secs(10),
        "the fetch waited {waited:?} although data arrived at once"
    );
}

#[tokio::test]
async fn list_offsets_by_timestamp() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &["--index-interval-bytes", "128"]);
    broker
        .create_topic(NewTopic::new("times", 1, 1).config("segment.bytes", "4096"))
        .await;
    let producer = broker
        .producer(ProducerConfig {
            batch_size: 300,
            ..ProducerConfig::default()
        })
        .await;
    let mut ds = Vec::new();
    for i in 0..200i64 {
        ds.push(
            producer
                .send(ProducerRecord::new("times", vec![b'x'; 40]).timestamp(10_000 + i * 10))
                .await
                .unwrap(),
        );
    }
    for d in ds {
        d.await.unwrap();
    }
    let consumer = Consumer::new(broker.client(), ConsumerConfig::default()).unwrap();
    let tp = TopicPartition::new("times", 0);
    assert_eq!(consumer.list_offset(&tp, 10_000).await.unwrap(), 0);
    assert_eq!(consumer.list_offset(&tp, 10_005).await.unwrap(), 1);
    assert_eq!(consumer.list_offset(&tp, 11_230).await.unwrap(), 123);
    assert_eq!(consumer.list_offset(&tp, 11_990).await.unwrap(), 199);
    assert_eq!(
        consumer.list_offset(&tp, 12_000).await.unwrap(),
        -1,
        "no record at or after the time"
    );
    assert_eq!(
        consumer
            .list_offset(&tp, sluice_proto::list_offsets::EARLIEST)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        consumer
            .list_offset(&tp, sluice_proto::list_offsets::LATEST)
            .await
            .unwrap(),
        200
    );
    let d = broker.admin().describe_topic("times").await.unwrap();
    assert!(
        d.partitions[0].segments > 1,
        "the test should span several segments"
    );
    // A consumer seeking by time starts there.
    let mut c = Consumer::new(broker.client(), ConsumerConfig::default()).unwrap();
    c.assign(vec![tp.clone()], Offset::Timestamp(11_000))
        .await
        .unwrap();
    assert_eq!(c.poll(Duration::from_secs(5)).await.unwrap()[0].offset, 100);
}

#[tokio::test]
async fn retention_deletes_whole_old_segments() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &["--retention-check-interval", "100ms"]);
    broker
        .create_topic(
            NewTopic::new("short", 1, 1)
                .config("segment.bytes", "2048")
                .config("retention.bytes", "4096"),
        )
        .await;
    let producer = broker
        .producer(ProducerConfig {
            batch_size: 512,
            acks: Acks::Leader,
            ..ProducerConfig::default()
        })
        .await;
    let mut ds = Vec::new();
    for _ in 0..200 {
        ds.push(
            producer
                .send(ProducerRecord::new("short", vec![b'r'; 100]))
                .await
                .unwrap(),
        );
    }
    for d in ds {
        d.await.unwrap();
    }
    let admin = broker.admin();
    let p = eventually(
        "retention to delete old segments",
        Duration::from_secs(20),
        || async {
            let p = admin
                .describe_topic("short")
                .await
                .unwrap()
                .partitions
                .remove(0);
            (p.log_start_offset > 0 && p.size_bytes <= 4096 + 2048).then_some(p)
        },
    )
    .await;
    assert_eq!(p.log_end_offset, 200);
    let mut c = Consumer::new(broker.client(), ConsumerConfig::default()).unwrap();
    c.assign(vec![TopicPartition::new("short", 0)], Offset::Earliest)
        .await
        .unwrap();
    let first = c.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        first[0].offset, p.log_start_offset,
        "earliest is the new log start"
    );
}

#[tokio::test]
async fn callbacks_hear_every_outcome_once() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    broker
        .create_topic(NewTopic::new("cb", 1, 1).config("max.message.bytes", "1000"))
        .await;
    let producer = broker
        .producer(ProducerConfig {
            // Batches of a few small records stay under the topic's max.message.bytes.
            batch_size: 900,
            ..ProducerConfig::default()
        })
        .await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..50usize {
        // Record 20 is too large for the topic: refused on its own, the rest go through.
        let value = if i == 20 {
            vec![b'x'; 2000]
        } else {
            vec![b'y'; 100]
        };
        let tx = tx.clone();
        producer
            .send_with_callback(ProducerRecord::new("cb", value).partition(0), move |r| {
                let _ = tx.send((i, r));
            })
            .await
            .expect("queued");
    }
    drop(tx);
    producer.flush().await;
    let mut outcomes = Vec::new();
    while let Some(o) = rx.recv().await {
        outcomes.push(o);
    }
    outcomes.sort_by_key(|(i, _)| *i);
    assert_eq!(
        outcomes.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (0..50).collect::<Vec<_>>(),
        "every callback runs exactly once, all before flush returns"
    );
    let mut next = 0;
    for (i, r) in &outcomes {
        if *i == 20 {
            let err = r.as_ref().expect_err("the oversized record is refused");
            assert_eq!(err.code(), Some(ErrorCode::MessageTooLarge), "{err}");
        } else {
            let meta = r.as_ref().expect("delivered");
            assert_eq!(meta.offset, next, "record {i}");
            next += 1;
        }
    }
    assert_eq!(broker.read_all("cb").await.len(), 49);
}
