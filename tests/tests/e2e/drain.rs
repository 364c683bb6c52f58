//! Draining a broker before it leaves (`sluice cluster drain`, the operator's scale-down):
//! every partition moves off it with its records, nothing new is placed on it, and a drain
//! the other brokers cannot absorb is refused with nothing changed.

use std::time::Duration;

use sluice_client::{Admin, ErrorCode, NewTopic, ProducerConfig, ProducerRecord};
use sluice_tests::{Cluster, eventually, read_all, run_cli};

fn on_broker(d: &sluice_client::pb::TopicDescription, broker: i32) -> Vec<i32> {
    d.partitions
        .iter()
        .filter(|p| p.replicas.contains(&broker) || p.adding_replicas.contains(&broker))
        .map(|p| p.partition)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_broker_is_emptied_and_can_go() {
    let mut cluster = Cluster::start(4);
    cluster.wait_ready().await;
    let admin = Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(NewTopic::new("stay", 8, 3), false)
        .await
        .unwrap();
    let producer = sluice_client::Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    let mut acked = Vec::new();
    for i in 0..400u32 {
        let d = producer
            .send(ProducerRecord::new("stay", format!("v{i}")).key(format!("k{}", i % 40)))
            .await
            .unwrap();
        acked.push(d);
    }
    for d in acked {
        d.await.unwrap();
    }
    assert!(
        !on_broker(&admin.describe_topic("stay").await.unwrap(), 4).is_empty(),
        "placement puts some of 8 partitions on broker 4"
    );

    // A topic as wide as the cluster cannot leave broker 4: refused, naming it, nothing
    // drained.
    admin
        .create_topic(NewTopic::new("wide", 1, 4), false)
        .await
        .unwrap();
    let err = admin.drain_brokers(&[4]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest), "{err}");
    assert!(
        err.to_string().contains("'wide'") && err.to_string().contains("replication factor 4"),
        "{err}"
    );
    let none = admin.drain_brokers(&[]).await.unwrap();
    assert!(none.brokers.is_empty(), "{none:?}");
    admin.delete_topic("wide").await.unwrap();
    let err = admin.drain_brokers(&[9]).await.unwrap_err();
    assert!(err.to_string().contains("broker 9"), "{err}");

    // Drained through the CLI, waiting until it is empty.
    let address = cluster.brokers[0].address.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(
            &address,
            &[
                "cluster",
                "drain",
                "4",
                "--wait",
                "--timeout",
                "2m",
                "-o",
                "json",
            ],
            "",
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["done"], true, "{json}");
    assert_eq!(json["brokers"][0]["node_id"], 4, "{json}");
    assert_eq!(json["brokers"][0]["replicas_left"], 0, "{json}");
    let d = admin.describe_topic("stay").await.unwrap();
    assert!(on_broker(&d, 4).is_empty(), "{d:?}");
    for p in &d.partitions {
        assert_eq!(p.replicas.len(), 3, "{p:?}");
    }

    // Nothing new lands on it while drained.
    admin
        .create_topic(NewTopic::new("later", 6, 3), false)
        .await
        .unwrap();
    assert!(on_broker(&admin.describe_topic("later").await.unwrap(), 4).is_empty());

    // Gone for good: every record is still there and the topic takes acks=all writes.
    cluster.node(4).kill();
    cluster.brokers.pop();
    let records = eventually("reading every record", Duration::from_secs(30), || async {
        let r = read_all(cluster.client(), "stay").await;
        (r.len() >= 400).then_some(r)
    })
    .await;
    let mut values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    values.sort();
    let mut expected: Vec<String> = (0..400).map(|i| format!("v{i}")).collect();
    expected.sort();
    assert_eq!(values, expected);
    let producer = sluice_client::Producer::connect(cluster.client(), ProducerConfig::default())
        .await
        .unwrap();
    producer
        .send(ProducerRecord::new("stay", "after").key("k1"))
        .await
        .unwrap()
        .await
        .unwrap();

    // Undrained: the set is empty again.
    let address = cluster.brokers[0].address.clone();
    let out =
        tokio::task::spawn_blocking(move || run_cli(&address, &["cluster", "drain", "--none"], ""))
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No broker is drained"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
