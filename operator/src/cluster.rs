//! `SluiceCluster`: a Sluice cluster on Kubernetes. The operator reconciles it into a
//! StatefulSet (broker ids from pod ordinals, a volume claim per broker, probes on the
//! brokers' `/livez` and `/readyz`), a headless Service, a client Service, a ConfigMap with
//! the broker config and a PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_manifest::DeletionPolicy;

/// The image brokers run when the spec names none.
pub const DEFAULT_IMAGE: &str = "ghcr.io/sluice-io/sluice:0.1.0";

/// A Sluice cluster.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sluice.io",
    version = "v1alpha1",
    kind = "SluiceCluster",
    namespaced,
    status = "SluiceClusterStatus",
    shortname = "scluster",
    category = "sluice",
    printcolumn = r#"{"name":"Brokers","type":"integer","jsonPath":".spec.brokers"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyBrokers"}"#,
    printcolumn = r#"{"name":"Controller","type":"integer","jsonPath":".status.controllerLeader"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SluiceClusterSpec {
    /// Brokers (pods of the StatefulSet). The first three are the controller quorum.
    /// Scaling down moves replicas off the leaving brokers first.
    #[schemars(range(min = 1))]
    pub brokers: i32,
    /// Container image with `sluice-broker` [default: the operator's own version].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Each broker's data volume.
    pub storage: Storage,
    /// CPU and memory of each broker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Broker settings, as in the broker's YAML config file (e.g. `group_session_timeout:
    /// 30s`). Changing them rolls the brokers one at a time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Ports the brokers listen on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listeners: Option<Listeners>,
    /// Overrides of the broker pods' scheduling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodOverrides>,
    /// What deleting the SluiceCluster does to the brokers' volumes: Retain (the default)
    /// keeps them, Delete deletes them with their data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// A broker's data volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Storage {
    /// Size of each broker's volume claim, a Kubernetes quantity (`100Gi`).
    pub size: String,
    /// Storage class of the claims [default: the cluster's default class].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Listener ports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listeners {
    /// Clients (produce, consume, admin) [default: 9092].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub client: Option<i32>,
    /// Between brokers (Raft) [default: 19092].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub raft: Option<i32>,
    /// `/metrics` and the health probes [default: 9644].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub http: Option<i32>,
}

/// Scheduling overrides of the broker pods.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Added to the pods' labels and annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What the operator last saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SluiceClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_brokers: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_leader: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub under_replicated_partitions: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_cluster_is_a_valid_sluice_cluster() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/k8s/cluster.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let c: SluiceCluster =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(c.spec.brokers, 3);
        assert_eq!(c.spec.storage.size, "100Gi");
        let spread = c.spec.template.unwrap().topology_spread_constraints;
        assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
        // A typo is refused, not dropped.
        let typo = text.replace("brokers: 3", "broker: 3");
        assert!(serde_yaml::from_str::<SluiceCluster>(&typo).is_err());
    }

    #[test]
    fn the_example_topics_are_what_sluice_apply_reads() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/k8s/topics.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let m = sluice_manifest::parse(&[(path.display().to_string(), text.clone())])
            .unwrap_or_else(|p| panic!("{p}"));
        assert_eq!(m.topics.len(), 2);
        // And each document is a SluiceTopic object as the API server would hold it.
        for doc in text.split("\n---\n") {
            let t: sluice_manifest::SluiceTopic = serde_yaml::from_str(doc).unwrap();
            assert_eq!(
                t.spec.cluster_ref.as_ref().map(|c| c.name.as_str()),
                Some("main")
            );
        }
    }
}
