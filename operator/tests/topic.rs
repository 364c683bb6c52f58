//! A SluiceTopic reconciled against a real broker: created, changed, drift reverted, a
//! decrease refused with the right condition, deletion by policy.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_manifest::SluiceTopic;
use sluice_operator::topic::{cleanup, reconcile};
use sluice_tests::{Broker, data_dir};

fn object(partitions: i32, retention: &str, policy: &str) -> SluiceTopic {
    let mut t: SluiceTopic = serde_yaml::from_str(&format!(
        "apiVersion: sluice.io/v1alpha1\nkind: SluiceTopic\nmetadata:\n  name: orders\n  namespace: shop\n  generation: 1\n  labels: {{team: payments}}\n  annotations: {{kubectl.kubernetes.io/last-applied-configuration: '{{}}'}}\nspec:\n  clusterRef: {{name: main}}\n  partitions: {partitions}\n  deletionPolicy: {policy}\n  config:\n    retention.ms: \"{retention}\"\n"
    ))
    .unwrap();
    t.status = None;
    t
}

fn ready(s: &sluice_manifest::status::SluiceTopicStatus) -> (&str, &str, &str) {
    let c = &s.conditions[0];
    assert_eq!(c.type_, "Ready");
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

#[tokio::test]
async fn a_sluice_topic_is_created_changed_kept_as_declared_and_refused_a_decrease() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    let admin = broker.admin();
    let now = Time(k8s_openapi::chrono::Utc::now());

    // Created as declared, labelled, without kubectl's own annotation.
    let mut t = object(3, "3600000", "Retain");
    let s = reconcile(&admin, &t, &now).await.unwrap().status;
    assert_eq!(ready(&s).0, "True", "{s:?}");
    assert_eq!((s.partitions, s.observed_generation), (Some(3), Some(1)));
    let d = admin.describe_topic("orders").await.unwrap();
    assert_eq!(d.config["retention.ms"], "3600000");
    assert_eq!(d.labels["team"], "payments");
    assert_eq!(d.labels["app.kubernetes.io/managed-by"], "sluice");
    assert!(
        !d.annotations
            .keys()
            .any(|k| k.starts_with("kubectl.kubernetes.io/")),
        "{:?}",
        d.annotations
    );
    t.status = Some(s);

    // Drift is reverted: a key the spec sets, changed by hand, goes back.
    admin
        .alter_topic_config(
            "orders",
            [("retention.ms".to_string(), "1000".to_string())].into(),
            vec![],
            false,
        )
        .await
        .unwrap();
    let s = reconcile(&admin, &t, &now).await.unwrap().status;
    assert_eq!(ready(&s).0, "True");
    assert_eq!(
        admin.describe_topic("orders").await.unwrap().config["retention.ms"],
        "3600000"
    );

    // A change of the spec is made.
    let mut grown = object(6, "7200000", "Retain");
    grown.metadata.generation = Some(2);
    grown.status = t.status.clone();
    let s = reconcile(&admin, &grown, &now).await.unwrap().status;
    assert_eq!(
        (ready(&s).0, s.partitions, s.observed_generation),
        ("True", Some(6), Some(2))
    );

    // Fewer partitions: refused with the reason, the topic untouched.
    let mut fewer = object(2, "60000", "Retain");
    fewer.metadata.generation = Some(3);
    let s = reconcile(&admin, &fewer, &now).await.unwrap().status;
    let (status, reason, message) = ready(&s);
    assert_eq!((status, reason), ("False", "ChangeRefused"), "{message}");
    assert!(message.contains("partitions 6 -> 2"), "{message}");
    let d = admin.describe_topic("orders").await.unwrap();
    assert_eq!(
        (d.partitions.len(), d.config["retention.ms"].as_str()),
        (6, "7200000"),
        "nothing changed"
    );

    // An invalid spec is a status too, naming the field.
    let bad = object(6, "soon", "Retain");
    let s = reconcile(&admin, &bad, &now).await.unwrap().status;
    let (status, reason, message) = ready(&s);
    assert_eq!((status, reason), ("False", "InvalidSpec"));
    assert!(
        message.contains("retention.ms") && message.contains("soon"),
        "{message}"
    );

    // Deletion: Retain keeps the topic, Delete deletes it.
    assert!(
        !cleanup(&admin, &object(6, "7200000", "Retain"))
            .await
            .unwrap()
    );
    assert!(admin.describe_topic("orders").await.is_ok());
    assert!(
        cleanup(&admin, &object(6, "7200000", "Delete"))
            .await
            .unwrap()
    );
    assert!(admin.describe_topic("orders").await.is_err());
}
