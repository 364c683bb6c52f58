use super::*;

fn parse_one(text: &str) -> Result<Manifests, Problems> {
    parse(&[("topics.yaml".to_string(), text.to_string())])
}

const GOOD: &str = "\
apiVersion: sluice.io/v1alpha1
kind: SluiceTopic
metadata:
  name: orders
  labels: {team: payments}
spec:
  partitions: 12
  replicationFactor: 3
  config:
    min.insync.replicas: \"2\"
    retention.ms: 604800000
    cleanup.policy: delete
---
apiVersion: sluice.io/v1alpha1
kind: SluiceTopic
metadata:
  name: click-stream
  namespace: data
  uid: 0b7c2d3e
  resourceVersion: \"12\"
  managedFields: [{manager: kubectl}]
spec:
  topicName: Click_Stream
  partitions: 3
  clusterRef: {name: main}
status:
  conditions: [{type: Ready, status: \"True\"}]
";

#[test]
fn documents_become_topics_and_kubernetes_fields_are_ignored() {
    let m = parse_one(GOOD).unwrap();
    assert_eq!(m.topics.len(), 2);
    let orders = &m.topics[0].manifest;
    assert_eq!(orders.topic_name(), "orders");
    assert_eq!(orders.spec.partitions, Some(12));
    assert_eq!(orders.spec.replication_factor, Some(3));
    assert_eq!(
        orders.config()["retention.ms"],
        "604800000",
        "an integer is taken as its string"
    );
    assert_eq!(orders.metadata.labels["team"], "payments");
    let click = &m.topics[1];
    assert_eq!(click.manifest.topic_name(), "Click_Stream");
    assert_eq!(click.manifest.spec.replication_factor, None);
    assert_eq!(click.source.document, 2);
    assert_eq!(click.source.line, 14);
}

#[test]
fn every_problem_is_reported_at_once_with_file_document_field_and_line() {
    let text = "\
apiVersion: sluice.io/v1alpha1
kind: SluiceTopic
metadata:
  name: orders
spec:
  partitions: 0
  replicationFactr: 3
  config:
    retention.ms: soon
    retention.msx: \"1\"
---
apiVersion: sluice.io/v1alpha1
kind: SluiceTopic
metadata:
  name: payments
spec:
  partitions: \"six\"
";
    let Problems(p) = parse_one(text).unwrap_err();
    let shown: Vec<String> = p.iter().map(ToString::to_string).collect();
    let find = |needle: &str| {
        shown
            .iter()
            .find(|s| s.contains(needle))
            .unwrap_or_else(|| panic!("no problem with {needle:?} in {shown:#?}"))
            .clone()
    };
    assert_eq!(
        find("replicationFactr"),
        "topics.yaml:7:3: document 1 (orders), spec.replicationFactr: unknown field 'replicationFactr'; did you mean 'replicationFactor'? (fields here: clusterRef, config, deletionPolicy, partitions, replicationFactor, topicName)"
    );
    assert!(
        find("spec.partitions: must be at least 1")
            .starts_with("topics.yaml:6:15: document 1 (orders)")
    );
    // The second document's problem is reported too, not only the first document's.
    assert!(find("payments").starts_with("topics.yaml:17:15: document 2 (payments), spec.partitions: expected an integer, found a string"));
    // Config is only checked once the document has the right shape.
    assert!(!shown.iter().any(|s| s.contains("soon")), "{shown:#?}");
    assert_eq!(p.len(), 3, "{shown:#?}");
}

#[test]
fn config_keys_and_values_are_checked_like_topics_create() {
    let text = "\
apiVersion: sluice.io/v1alpha1
kind: SluiceTopic
metadata: {name: orders}
spec:
  partitions: 3
  replicationFactor: 2
  config:
    retention.ms: soon
    retention.msx: \"1\"
    min.insync.replicas: 3
    unclean: true
";
    let Problems(p) = parse_one(text).unwrap_err();
    let shown: Vec<String> = p.iter().map(ToString::to_string).collect();
    assert!(
        shown.iter().any(|s| s.starts_with("topics.yaml:11:14:") && s.contains("spec.config.unclean: expected a string or an integer, found a boolean (quote it: \"true\")")),
        "{shown:#?}"
    );
    // With the shape fixed, the values are checked: every one, each at its line.
    let text = text.replace("    unclean: true\n", "");
    let Problems(p) = parse_one(&text).unwrap_err();
    let shown: Vec<String> = p.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 2, "{shown:#?}");
    assert!(shown[0].starts_with("topics.yaml:8:19: document 1 (orders), spec.config[\"retention.ms\"]: invalid value 'soon' for retention.ms"), "{shown:#?}");
    assert!(shown[1].starts_with("topics.yaml:9:5: document 1 (orders), spec.config[\"retention.msx\"]: unknown topic config key 'retention.msx'"), "{shown:#?}");
    assert!(
        shown[1].contains("did you mean 'retention.ms'?"),
        "{shown:#?}"
    );
    let text = text.replace("    retention.ms: soon\n    retention.msx: \"1\"\n", "");
    let Problems(p) = parse_one(&text).unwrap_err();
    assert!(
        p[0].message.contains("exceeds the replication factor 2"),
        "{p:?}"
    );
    assert_eq!((p[0].line, p[0].column), (8, 26));
}

#[test]
fn a_topic_declared_twice_is_refused_naming_both_places() {
    let doc = "apiVersion: sluice.io/v1alpha1\nkind: SluiceTopic\nmetadata: {name: orders}\nspec: {partitions: 1}\n";
    let Problems(p) = parse(&[
        ("a.yaml".to_string(), doc.to_string()),
        ("b.yaml".to_string(), format!("---\n{doc}")),
    ])
    .unwrap_err();
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].to_string(),
        "b.yaml:4:18: document 1 (orders), metadata.name: topic 'orders' is declared twice; first at a.yaml:1 (document 1)"
    );
}

#[test]
fn names_must_suit_kubernetes_and_sluice() {
    let text = "apiVersion: sluice.io/v1alpha1\nkind: SluiceTopic\nmetadata: {name: Orders_V2}\nspec: {partitions: 1}\n";
    let Problems(p) = parse_one(text).unwrap_err();
    assert!(
        p[0].message
            .contains("name it 'orders-v2' and set spec.topicName: Orders_V2"),
        "{p:?}"
    );
    let text = "apiVersion: sluice.io/v1alpha1\nkind: SluiceTopic\nmetadata: {name: orders}\nspec: {partitions: 1, topicName: \"bad name\"}\n";
    let Problems(p) = parse_one(text).unwrap_err();
    assert_eq!(p[0].field, "spec.topicName", "{p:?}");
}

#[test]
fn kinds_versions_lists_and_yaml_errors() {
    let Problems(p) =
        parse_one("apiVersion: sluice.io/v1\nkind: SluiceTopc\nmetadata: {name: x}\nspec: {}\n")
            .unwrap_err();
    assert!(
        p[0].message.contains("did you mean 'SluiceTopic'?"),
        "{p:?}"
    );
    let Problems(p) =
        parse_one("apiVersion: sluice.io/v1\nkind: SluiceTopic\nmetadata: {name: x}\nspec: {}\n")
            .unwrap_err();
    assert!(p[0].message.contains("use sluice.io/v1alpha1"), "{p:?}");
    // A SluiceCluster is the operator's: skipped, not an error.
    let m = parse_one("apiVersion: sluice.io/v1alpha1\nkind: SluiceCluster\nmetadata: {name: main}\nspec: {brokers: 3}\n").unwrap();
    assert!(m.topics.is_empty());
    assert_eq!(m.skipped.len(), 1);
    // `kubectl get -o yaml` of several objects is a List.
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}",
        GOOD.split("---\n")
            .map(|d| {
                let mut lines = d.lines();
                let first = format!("- {}\n", lines.next().unwrap());
                first + &lines.map(|l| format!("  {l}\n")).collect::<String>()
            })
            .collect::<String>()
    );
    let m = parse_one(&list).unwrap();
    assert_eq!(m.topics.len(), 2);
    let Problems(p) = parse_one("a: [1, 2\n").unwrap_err();
    assert!(p[0].message.starts_with("not valid YAML"), "{p:?}");
    assert!(p[0].line >= 1);
}

#[test]
fn directories_are_read_in_order_and_recursively_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let doc = |name: &str| {
        format!(
            "apiVersion: sluice.io/v1alpha1\nkind: SluiceTopic\nmetadata: {{name: {name}}}\nspec: {{partitions: 1}}\n"
        )
    };
    std::fs::write(dir.path().join("b.yaml"), doc("b")).unwrap();
    std::fs::write(dir.path().join("a.yml"), doc("a")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
    std::fs::create_dir(dir.path().join("more")).unwrap();
    std::fs::write(dir.path().join("more/c.yaml"), doc("c")).unwrap();
    let names = |recursive| {
        let inputs = read_inputs(&[dir.path().to_path_buf()], recursive).unwrap();
        parse(&inputs)
            .unwrap()
            .topics
            .iter()
            .map(|t| t.manifest.topic_name().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(false), ["a", "b"]);
    assert_eq!(names(true), ["a", "b", "c"]);
    let Problems(p) = read_inputs(&[dir.path().join("missing.yaml")], false).unwrap_err();
    assert!(
        p[0].to_string().contains("missing.yaml: cannot read it"),
        "{p:?}"
    );
}

#[test]
fn the_schema_is_generated_from_the_types() {
    let s = topic_schema();
    let spec = &s["$defs"]["TopicSpec"];
    assert_eq!(spec["additionalProperties"], false);
    assert_eq!(spec["properties"]["partitions"]["minimum"], 1);
    assert_eq!(
        spec["properties"]["config"]["additionalProperties"]["x-kubernetes-int-or-string"],
        true
    );
    assert!(
        s["required"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "spec")
    );
}

#[test]
fn a_manifest_written_out_reads_back_the_same() {
    let m = parse_one(GOOD).unwrap();
    for t in &m.topics {
        let json = serde_json::to_string_pretty(&t.manifest).unwrap();
        let back = parse_one(&json).unwrap();
        let mut expected = t.manifest.clone();
        expected.status = None;
        assert_eq!(back.topics[0].manifest, expected);
    }
}
