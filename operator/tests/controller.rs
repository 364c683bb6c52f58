//! The SluiceTopic controller's wiring against the in-memory API and a real broker: the
//! finalizer goes on first; a reconcile creates the topic, writes the status with
//! server-side apply and publishes an Event; a deleted SluiceTopic (policy Delete) has its
//! topic deleted before the finalizer comes off.

use std::sync::Arc;

use serde_json::json;
use sluice_manifest::SluiceTopic;
use sluice_operator::controller::{Context, FINALIZER, reconcile};
use sluice_operator::memory_api::MemoryApi;
use sluice_tests::{Broker, data_dir};

fn current(mem: &MemoryApi) -> Option<SluiceTopic> {
    mem.get("sluicetopics", "shop", "orders")
        .map(|v| serde_json::from_value(v).unwrap())
}

#[tokio::test]
async fn a_topic_is_reconciled_its_status_applied_and_its_deletion_cleaned_up() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    let (mem, client) = MemoryApi::new();
    mem.put(
        "sluicetopics",
        json!({
            "apiVersion": "sluice.io/v1alpha1", "kind": "SluiceTopic",
            "metadata": {"name": "orders", "namespace": "shop", "generation": 4},
            "spec": {"clusterRef": {"name": "main"}, "partitions": 2, "deletionPolicy": "Delete"},
        }),
    );
    let ctx = Arc::new(Context::new(client, Some(broker.address.clone())));

    // First sight: the finalizer, nothing else.
    reconcile(Arc::new(current(&mem).unwrap()), ctx.clone())
        .await
        .unwrap();
    let t = current(&mem).unwrap();
    assert_eq!(t.metadata.finalizers, Some(vec![FINALIZER.to_string()]));
    assert!(broker.admin().describe_topic("orders").await.is_err());

    reconcile(Arc::new(t), ctx.clone()).await.unwrap();
    let t = current(&mem).unwrap();
    let status = t.status.expect("a status");
    let ready = &status.conditions[0];
    assert_eq!(
        (ready.type_.as_str(), ready.status.as_str()),
        ("Ready", "True")
    );
    assert_eq!(status.observed_generation, Some(4));
    assert_eq!(status.partitions, Some(2));
    assert_eq!(
        broker
            .admin()
            .describe_topic("orders")
            .await
            .unwrap()
            .partitions
            .len(),
        2
    );
    let events = mem.list("events");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "TopicChanged");
    assert!(
        events[0]["note"]
            .as_str()
            .unwrap()
            .contains("created topic 'orders'"),
        "{}",
        events[0]
    );
    assert_eq!(events[0]["regarding"]["kind"], "SluiceTopic");
    assert_eq!(events[0]["reportingController"], "sluice-operator");

    // Reconciled again with nothing to do: no write at all.
    mem.clear_writes();
    reconcile(Arc::new(current(&mem).unwrap()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(mem.writes(), []);

    // Deleted with deletionPolicy: Delete: the topic goes, then the finalizer, then the
    // object.
    let mut deleting = mem.get("sluicetopics", "shop", "orders").unwrap();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
    mem.put("sluicetopics", deleting);
    reconcile(Arc::new(current(&mem).unwrap()), ctx.clone())
        .await
        .unwrap();
    assert!(current(&mem).is_none(), "the finalizer came off");
    assert!(
        broker.admin().describe_topic("orders").await.is_err(),
        "the topic was deleted"
    );
}
