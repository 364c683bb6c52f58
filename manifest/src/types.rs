//! The manifest types: one `SluiceTopic` document, the same shape `sluice apply` reads and
//! the Kubernetes `SluiceTopic` custom resource has (the operator builds its CRD on
//! [`TopicSpec`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `apiVersion` of every Sluice manifest.
pub const API_VERSION: &str = "sluice.io/v1alpha1";
/// `kind` of a topic manifest.
pub const TOPIC_KIND: &str = "SluiceTopic";
/// The label `sluice apply` puts on the topics it creates or changes; `--prune` deletes
/// only topics that carry it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY_VALUE: &str = "sluice";
/// The annotation in which `sluice apply` records the config keys the manifest set (comma
/// separated), so a key later removed from the manifest goes back to its default while
/// keys set by other means stay (`kubectl apply`'s last-applied, for config).
pub const APPLIED_CONFIG_ANNOTATION: &str = "sluice.io/applied-config";

/// One topic, declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(
    title = "SluiceTopic",
    description = "A Sluice topic, declared: `sluice apply -f` or `kubectl apply -f`"
)]
pub struct TopicManifest {
    /// sluice.io/v1alpha1
    pub api_version: String,
    /// SluiceTopic
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: TopicSpec,
    /// Written by the Kubernetes operator; ignored by `sluice apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub status: Option<serde_json::Value>,
}

/// The parts of Kubernetes' ObjectMeta a manifest sets. Fields Kubernetes adds itself
/// (uid, resourceVersion, managedFields, ...) are accepted and ignored by `sluice apply`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// The topic's name, unless `spec.topicName` is set. A Kubernetes name: lowercase
    /// letters, digits, '-' and '.'.
    pub name: String,
    /// Kubernetes only; ignored by `sluice apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels of the topic, kept in the cluster's metadata and shown by `topics describe`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What the topic should be: for `sluice apply`, and the spec of the Kubernetes custom
/// resource `SluiceTopic` (derived with this crate's `kube` feature), so a file one takes
/// the other takes too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kube", derive(kube::CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "sluice.io",
        version = "v1alpha1",
        kind = "SluiceTopic",
        namespaced,
        status = "crate::status::SluiceTopicStatus",
        shortname = "stopic",
        category = "sluice",
        printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterRef.name"}"#,
        printcolumn = r#"{"name":"Partitions","type":"integer","jsonPath":".spec.partitions"}"#,
        printcolumn = r#"{"name":"Replication","type":"integer","jsonPath":".spec.replicationFactor"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
pub struct TopicSpec {
    /// The topic's name when it cannot be a Kubernetes name (upper case, '_'); default:
    /// `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,
    /// Partitions (only ever added). Absent: 1 when the topic is created, and the count is
    /// left as it is afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub partitions: Option<i32>,
    /// Replicas of each partition. Absent: the cluster's default when the topic is created,
    /// and left as it is afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub replication_factor: Option<i32>,
    /// Topic config overrides, Kafka's keys (`retention.ms`, `min.insync.replicas`, ...).
    /// Keys not listed keep the cluster's defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, ConfigValue>,
    /// Kubernetes only: the SluiceCluster the topic belongs to; ignored by `sluice apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ref: Option<ClusterRef>,
    /// Kubernetes only: what deleting the SluiceTopic does to the topic. Retain (the
    /// default) keeps it and its records; Delete deletes them. Ignored by `sluice apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// What deleting a Kubernetes object does to what it made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep it (the default: records are never lost to a deleted manifest).
    #[default]
    Retain,
    /// Delete it, records included.
    Delete,
}

/// Which SluiceCluster (Kubernetes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterRef {
    pub name: String,
}

/// A config value: written as a string or an integer (`retention.ms: 604800000` and
/// `retention.ms: "604800000"` are the same); held as a string, Kafka's form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigValue(pub String);

impl std::fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ConfigValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ConfigValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::S(s) => ConfigValue(s),
            Raw::I(i) => ConfigValue(i.to_string()),
        })
    }
}

impl JsonSchema for ConfigValue {
    fn schema_name() -> Cow<'static, str> {
        "ConfigValue".into()
    }

    fn inline_schema() -> bool {
        true
    }

    /// Kubernetes' int-or-string, so `kubectl apply` takes both forms as `sluice apply` does.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string"}]
        })
    }
}

impl TopicManifest {
    /// A manifest for topic `name` (metadata.name when it is a valid Kubernetes name, else
    /// a derived one with `spec.topicName` set).
    pub fn new(name: &str, spec: TopicSpec) -> Self {
        let (meta_name, topic_name) = if crate::is_k8s_name(name) {
            (name.to_string(), None)
        } else {
            (crate::k8s_name_for(name), Some(name.to_string()))
        };
        TopicManifest {
            api_version: API_VERSION.to_string(),
            kind: TOPIC_KIND.to_string(),
            metadata: ObjectMeta {
                name: meta_name,
                ..ObjectMeta::default()
            },
            spec: TopicSpec { topic_name, ..spec },
            status: None,
        }
    }

    /// The topic's name in the cluster.
    pub fn topic_name(&self) -> &str {
        self.spec
            .topic_name
            .as_deref()
            .unwrap_or(&self.metadata.name)
    }

    /// The config as plain strings.
    pub fn config(&self) -> BTreeMap<String, String> {
        self.spec
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect()
    }
}

/// The JSON Schema of a topic manifest (`sluice schema topic`), for editors.
pub fn topic_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(TopicManifest);
    let mut value = schema.to_value();
    if let Some(obj) = value.as_object_mut() {
        obj.insert(
            "$id".into(),
            "https://sluice.io/schemas/v1alpha1/sluicetopic.json".into(),
        );
    }
    value
}
