//! Bad input gets a specific error and changes nothing.

use bytes::{Bytes, BytesMut};
use sluice_client::{ErrorCode, NewTopic, ProducerConfig, ProducerRecord};
use sluice_proto::{ErrorDetailExt, RecordBatchBuilder, pb};
use sluice_tests::{Broker, data_dir};

fn batch(value: &[u8]) -> Bytes {
    let mut b = RecordBatchBuilder::new(Default::default());
    b.append(1, Some(b"k"), value, &[]);
    b.build()
}

async fn log_end(broker: &Broker, topic: &str) -> i64 {
    broker
        .admin()
        .describe_topic(topic)
        .await
        .unwrap()
        .partitions[0]
        .log_end_offset
}

async fn raw_produce(
    broker: &Broker,
    topic: &str,
    batch: Bytes,
) -> Result<pb::ProduceResponse, pb::ErrorDetail> {
    let cluster = sluice_client::cluster::Cluster::new(broker.client()).unwrap();
    let mut client = cluster.log_client(&broker.address).unwrap();
    client
        .produce(pb::ProduceRequest {
            topic: topic.into(),
            partition: 0,
            acks: -1,
            timeout_ms: 5000,
            batch,
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| {
            pb::ErrorDetail::from_status(&s).unwrap_or_else(|| panic!("status without detail: {s}"))
        })
}

#[tokio::test]
async fn unknown_topic_is_named() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    let producer = broker.producer(ProducerConfig::default()).await;
    let err = producer
        .send(ProducerRecord::new("nope", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopicOrPartition));
    assert!(err.to_string().contains("'nope'"), "{err}");
    let e = raw_produce(&broker, "nope", batch(b"x")).await.unwrap_err();
    assert_eq!(e.code, "UNKNOWN_TOPIC_OR_PARTITION");
    let err = broker.admin().describe_topic("nope").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopicOrPartition));
}

#[tokio::test]
async fn an_oversized_batch_is_refused_and_nothing_is_stored() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    broker
        .create_topic(NewTopic::new("small", 1, 1).config("max.message.bytes", "1000"))
        .await;
    let producer = broker.producer(ProducerConfig::default()).await;
    let err = producer
        .send(ProducerRecord::new("small", vec![b'x'; 2000]))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MessageTooLarge), "{err}");
    assert!(err.to_string().contains("max.message.bytes=1000"), "{err}");
    assert_eq!(
        log_end(&broker, "small").await,
        0,
        "a refused batch must not be stored"
    );
    // A record that fits still goes through.
    let ok = producer
        .send(ProducerRecord::new("small", vec![b'x'; 500]))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ok.offset, 0);
}

#[tokio::test]
async fn topic_creation_errors_name_what_is_wrong() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    let admin = broker.admin();
    let cases = [
        (
            NewTopic::new("t", 1, 1).config("retention.ms", "soon"),
            ErrorCode::InvalidConfig,
            "retention.ms",
        ),
        (
            NewTopic::new("t", 1, 1).config("retention.msec", "1"),
            ErrorCode::InvalidConfig,
            "retention.msec",
        ),
        (
            NewTopic::new("t", 0, 1),
            ErrorCode::InvalidPartitions,
            "got 0",
        ),
        (
            NewTopic::new("t", 1, 3),
            ErrorCode::InvalidReplicationFactor,
            "replication factor 3",
        ),
        (
            NewTopic::new("bad/name", 1, 1),
            ErrorCode::InvalidTopic,
            "'/'",
        ),
    ];
    for (topic, code, mention) in cases {
        let err = admin.create_topic(topic.clone(), false).await.unwrap_err();
        assert_eq!(err.code(), Some(code), "{topic:?}: {err}");
        assert!(
            err.to_string().contains(mention),
            "{topic:?}: '{err}' does not mention {mention}"
        );
    }
    assert!(
        admin.list_topics().await.unwrap().is_empty(),
        "a refused topic must not exist"
    );
    admin
        .create_topic(NewTopic::new("t", 1, 1), false)
        .await
        .unwrap();
    let err = admin
        .create_topic(NewTopic::new("t", 2, 1), false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TopicAlreadyExists));
}

#[tokio::test]
async fn a_batch_with_a_wrong_crc_is_refused() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    broker.create_topic(NewTopic::new("crc", 1, 1)).await;
    let mut bad = BytesMut::from(&batch(b"hello world")[..]);
    let n = bad.len();
    bad[n - 3] ^= 0xff;
    let e = raw_produce(&broker, "crc", bad.freeze()).await.unwrap_err();
    assert_eq!(e.code, "CORRUPT_MESSAGE", "{}", e.message);
    assert!(e.message.contains("CRC"), "{}", e.message);
    assert_eq!(log_end(&broker, "crc").await, 0);
    // Garbage that is not a batch at all is refused too, without harm.
    let e = raw_produce(&broker, "crc", Bytes::from_static(b"not a batch"))
        .await
        .unwrap_err();
    assert_eq!(e.code, "CORRUPT_MESSAGE", "{}", e.message);
    assert_eq!(
        raw_produce(&broker, "crc", batch(b"fine"))
            .await
            .unwrap()
            .base_offset,
        0
    );
}

#[tokio::test]
async fn fetching_past_the_end_reports_the_valid_range() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    broker.create_topic(NewTopic::new("range", 1, 1)).await;
    for i in 0..3 {
        raw_produce(&broker, "range", batch(format!("{i}").as_bytes()))
            .await
            .unwrap();
    }
    let cluster = sluice_client::cluster::Cluster::new(broker.client()).unwrap();
    let mut client = cluster.log_client(&broker.address).unwrap();
    let resp = client
        .fetch(pb::FetchRequest {
            max_wait_ms: 0,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partitions: vec![pb::FetchPartition {
                topic: "range".into(),
                partition: 0,
                fetch_offset: 10,
                partition_max_bytes: 1 << 20,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let e = resp.partitions[0]
        .error
        .clone()
        .expect("an error for offset 10");
    assert_eq!(e.code, "OFFSET_OUT_OF_RANGE");
    assert_eq!((e.log_start_offset, e.log_end_offset), (0, 3));
    assert!(e.message.contains("[0, 3]"), "{}", e.message);
    assert!(resp.partitions[0].records.is_empty());
}
