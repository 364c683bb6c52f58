//! What a `SluiceCluster` is made of on Kubernetes, computed from its spec (pure, so every
//! object is checked in tests, and against Kubernetes' schemas): a ConfigMap with the broker
//! config, a headless Service (the brokers' stable names), a client Service, a StatefulSet
//! (broker id = pod ordinal + 1; the first three are the controller quorum; a volume claim
//! per broker; probes on `/livez`, `/readyz`), and a PodDisruptionBudget (one broker down
//! at a time). Every object carries an owner reference to the cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Resource;
use serde_json::json;

use crate::cluster::{DEFAULT_IMAGE, SluiceCluster};

/// Controller voters, at most (Kafka's usual three).
const MAX_VOTERS: i32 = 3;
pub const CLIENT_PORT: i32 = 9092;
pub const RAFT_PORT: i32 = 19092;
pub const HTTP_PORT: i32 = 9644;
/// The pod annotation that changes with the broker config, so a config change rolls pods.
pub const CONFIG_HASH_ANNOTATION: &str = "sluice.io/config-hash";

/// The objects of one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub config_map: ConfigMap,
    pub headless: Service,
    pub client: Service,
    pub stateful_set: StatefulSet,
    pub pdb: PodDisruptionBudget,
}

impl Children {
    /// Every object as JSON, in the order they are applied.
    pub fn objects(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        Ok(vec![
            serde_json::to_value(&self.config_map)?,
            serde_json::to_value(&self.headless)?,
            serde_json::to_value(&self.client)?,
            serde_json::to_value(&self.stateful_set)?,
            serde_json::to_value(&self.pdb)?,
        ])
    }
}

/// Why a cluster's objects cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SluiceCluster {0} has no {1}; it must be one the API server stored")]
    Missing(String, &'static str),
    #[error("SluiceCluster {name}: {what}")]
    Invalid { name: String, what: String },
}

/// The labels selecting a cluster's broker pods.
pub fn selector(name: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name".to_string(), "sluice".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
    ]
    .into()
}

/// The broker config file from `spec.config` (keys as in the broker's YAML file).
fn broker_yaml(config: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (k, v) in config {
        // Quoted as a JSON string (valid YAML) when it could be read as something else.
        let plain = !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
        if plain {
            out.push_str(&format!("{k}: {v}\n"));
        } else {
            out.push_str(&format!("{k}: {}\n", serde_json::Value::String(v.clone())));
        }
    }
    out
}

/// A short, stable hash of `s` (FNV-1a), for the config annotation.
fn hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The objects `c` is made of.
pub fn children(c: &SluiceCluster) -> Result<Children, Error> {
    let name = c
        .metadata
        .name
        .clone()
        .ok_or_else(|| Error::Missing("(unnamed)".into(), "name"))?;
    let ns = c
        .metadata
        .namespace
        .clone()
        .ok_or_else(|| Error::Missing(name.clone(), "namespace"))?;
    let owner = c
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Missing(name.clone(), "uid"))?;
    let spec = &c.spec;
    if spec.brokers < 1 {
        return Err(Error::Invalid {
            name,
            what: format!("spec.brokers must be at least 1, got {}", spec.brokers),
        });
    }
    let listeners = spec.listeners.clone();
    let port = |p: Option<i32>, d: i32| p.unwrap_or(d);
    let client_port = port(listeners.as_ref().and_then(|l| l.client), CLIENT_PORT);
    let raft_port = port(listeners.as_ref().and_then(|l| l.raft), RAFT_PORT);
    let http_port = port(listeners.as_ref().and_then(|l| l.http), HTTP_PORT);
    let headless = format!("{name}-brokers");
    let labels = selector(&name);
    let meta = |object: &str| {
        json!({
            "name": object,
            "namespace": ns,
            "labels": labels,
            "ownerReferences": [owner],
        })
    };
    let config = broker_yaml(&spec.config);
    let config_map: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(&format!("{name}-config")),
        "data": {"broker.yaml": config},
    }))
    .map_err(|e| invalid(&name, "ConfigMap", e))?;
    let ports = json!([
        {"name": "client", "port": client_port, "targetPort": "client"},
        {"name": "raft", "port": raft_port, "targetPort": "raft"},
        {"name": "http", "port": http_port, "targetPort": "http"},
    ]);
    let headless_svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(&headless),
        "spec": {
            "clusterIP": "None",
            // Brokers find each other before they are ready (the controller quorum forms first).
            "publishNotReadyAddresses": true,
            "selector": labels,
            "ports": ports,
        },
    }))
    .map_err(|e| invalid(&name, "headless Service", e))?;
    let client_svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(&name),
        "spec": {
            "selector": labels,
            "ports": [{"name": "client", "port": client_port, "targetPort": "client"}],
        },
    }))
    .map_err(|e| invalid(&name, "client Service", e))?;
    let domain = format!("{headless}.{ns}.svc");
    let voters: Vec<String> = (0..spec.brokers.min(MAX_VOTERS))
        .map(|i| format!("{}@{name}-{i}.{domain}:{raft_port}", i + 1))
        .collect();
    // Broker id from the pod's ordinal (`name-3` is broker 4).
    let start = format!(
        "exec sluice-broker --node-id $(( ${{HOSTNAME##*-}} + 1 )) --config /etc/sluice/broker.yaml \
         --data-dir /var/lib/sluice/data --listen 0.0.0.0:{client_port} --raft-listen 0.0.0.0:{raft_port} \
         --http-listen 0.0.0.0:{http_port} --advertised-address $HOSTNAME.{domain}:{client_port} \
         --advertised-raft-address $HOSTNAME.{domain}:{raft_port} --controller-quorum-voters {}",
        voters.join(",")
    );
    let template = spec.template.clone().unwrap_or_default();
    let mut pod_labels = template.labels.clone();
    pod_labels.extend(labels.clone());
    let mut pod_annotations = template.annotations.clone();
    pod_annotations.insert(CONFIG_HASH_ANNOTATION.to_string(), hash(&config));
    let probe = |path: &str, failures: i32| {
        json!({
            "httpGet": {"path": path, "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": failures,
        })
    };
    let mut claim_spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage.size}},
    });
    if let Some(class) = &spec.storage.storage_class_name {
        claim_spec["storageClassName"] = json!(class);
    }
    let mut pod_spec = json!({
        "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "fsGroup": 10001},
        // Long enough for a controlled shutdown (leaderships handed off, logs closed).
        "terminationGracePeriodSeconds": 60,
        "containers": [{
            "name": "broker",
            "image": spec.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.to_string()),
            "command": ["/bin/sh", "-c", start],
            "ports": [
                {"name": "client", "containerPort": client_port},
                {"name": "raft", "containerPort": raft_port},
                {"name": "http", "containerPort": http_port},
            ],
            "startupProbe": probe("/livez", 60),
            "livenessProbe": probe("/livez", 3),
            "readinessProbe": probe("/readyz", 3),
            "volumeMounts": [
                {"name": "data", "mountPath": "/var/lib/sluice"},
                {"name": "config", "mountPath": "/etc/sluice"},
            ],
        }],
        "volumes": [{"name": "config", "configMap": {"name": format!("{name}-config")}}],
    });
    if let Some(r) = &spec.resources {
        pod_spec["containers"][0]["resources"] = json!(r);
    }
    if let Some(a) = &template.affinity {
        pod_spec["affinity"] = json!(a);
    }
    if !template.tolerations.is_empty() {
        pod_spec["tolerations"] = json!(template.tolerations);
    }
    if !template.topology_spread_constraints.is_empty() {
        pod_spec["topologySpreadConstraints"] = json!(template.topology_spread_constraints);
    }
    if !template.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(template.node_selector);
    }
    let stateful_set: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(&name),
        "spec": {
            "serviceName": headless,
            "replicas": spec.brokers,
            "podManagementPolicy": "Parallel",
            // The operator rolls brokers itself, one at a time, each once the next may stop
            // (`/ready-to-stop`).
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": pod_spec,
            },
            // The claims go with the StatefulSet only under `deletionPolicy: Delete` (the
            // operator deletes them too); a scale-down keeps them (drained first, and a
            // broker added back later finds its old data dropped by the cluster).
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": if spec.deletion_policy.unwrap_or_default() == sluice_manifest::DeletionPolicy::Delete { "Delete" } else { "Retain" },
                "whenScaled": "Retain",
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data", "labels": labels},
                "spec": claim_spec,
            }],
        },
    }))
    .map_err(|e| invalid(&name, "StatefulSet", e))?;
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(&name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
    }))
    .map_err(|e| invalid(&name, "PodDisruptionBudget", e))?;
    Ok(Children {
        config_map,
        headless: headless_svc,
        client: client_svc,
        stateful_set,
        pdb,
    })
}

fn invalid(name: &str, what: &str, e: serde_json::Error) -> Error {
    Error::Invalid {
        name: name.to_string(),
        what: format!("its {what} would not be a valid object: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> SluiceCluster {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/k8s/cluster.yaml");
        let mut c: SluiceCluster =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        // As the API server stores it.
        c.metadata.namespace = Some("data".into());
        c.metadata.uid = Some("6f1c2f0e-0000-4000-8000-000000000001".into());
        c
    }

    #[test]
    fn a_cluster_is_made_of_owned_objects_that_find_each_other() {
        let c = example();
        let k = children(&c).unwrap();
        for o in k.objects().unwrap() {
            let owner = &o["metadata"]["ownerReferences"][0];
            assert_eq!(owner["kind"], "SluiceCluster", "{o}");
            assert_eq!(owner["name"], "main");
            assert_eq!(owner["controller"], true);
            assert_eq!(o["metadata"]["namespace"], "data");
        }
        let sts = serde_json::to_value(&k.stateful_set).unwrap();
        assert_eq!(sts["spec"]["replicas"], 3);
        assert_eq!(sts["spec"]["serviceName"], "main-brokers");
        let cmd = sts["spec"]["template"]["spec"]["containers"][0]["command"][2]
            .as_str()
            .unwrap();
        assert!(cmd.contains("--controller-quorum-voters 1@main-0.main-brokers.data.svc:19092,2@main-1.main-brokers.data.svc:19092,3@main-2.main-brokers.data.svc:19092"), "{cmd}");
        assert!(
            cmd.contains("--node-id $(( ${HOSTNAME##*-} + 1 ))"),
            "{cmd}"
        );
        assert_eq!(
            sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
            "/readyz"
        );
        assert_eq!(
            sts["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["topologyKey"],
            "topology.kubernetes.io/zone"
        );
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "100Gi"
        );
        // Volumes outlive the StatefulSet unless the cluster says Delete.
        let policy = &sts["spec"]["persistentVolumeClaimRetentionPolicy"];
        assert_eq!(
            (
                policy["whenDeleted"].as_str(),
                policy["whenScaled"].as_str()
            ),
            (Some("Retain"), Some("Retain"))
        );
        let mut deleting = c.clone();
        deleting.spec.deletion_policy = Some(sluice_manifest::DeletionPolicy::Delete);
        let sts2 = serde_json::to_value(children(&deleting).unwrap().stateful_set).unwrap();
        assert_eq!(
            sts2["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
            "Delete"
        );
        let cm = serde_json::to_value(&k.config_map).unwrap();
        assert_eq!(cm["data"]["broker.yaml"], "group_session_timeout: 30s\n");
        let headless = serde_json::to_value(&k.headless).unwrap();
        assert_eq!(headless["spec"]["clusterIP"], "None");
        assert_eq!(
            serde_json::to_value(&k.pdb).unwrap()["spec"]["maxUnavailable"],
            1
        );
    }

    #[test]
    fn a_config_change_changes_the_pods_and_a_size_change_only_the_count() {
        let c = example();
        let hash = |c: &SluiceCluster| {
            let sts = serde_json::to_value(children(c).unwrap().stateful_set).unwrap();
            sts["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION].clone()
        };
        let mut changed = c.clone();
        changed
            .spec
            .config
            .insert("max_fetch_wait".into(), "1s".into());
        assert_ne!(
            hash(&c),
            hash(&changed),
            "a config change rolls the brokers"
        );
        let mut bigger = c.clone();
        bigger.spec.brokers = 5;
        assert_eq!(hash(&c), hash(&bigger));
        let sts = serde_json::to_value(children(&bigger).unwrap().stateful_set).unwrap();
        let cmd = sts["spec"]["template"]["spec"]["containers"][0]["command"][2]
            .as_str()
            .unwrap();
        assert!(!cmd.contains("4@"), "still three voters: {cmd}");
        let mut unstored = c.clone();
        unstored.metadata.uid = None;
        assert!(children(&unstored).unwrap_err().to_string().contains("uid"));
    }

    #[test]
    fn every_object_and_crd_is_valid_for_kubernetes() {
        let dir = tempfile::tempdir().unwrap();
        let mut docs = String::new();
        for o in children(&example()).unwrap().objects().unwrap() {
            docs.push_str("---\n");
            docs.push_str(&serde_yaml::to_string(&o).unwrap());
        }
        for (_, crd) in crate::crd::crds().unwrap() {
            docs.push_str("---\n");
            docs.push_str(&crd);
        }
        let path = dir.path().join("objects.yaml");
        std::fs::write(&path, docs).unwrap();
        let out = std::process::Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .arg(&path)
            .output()
            .expect(
                "kubernetes-validate (pip install kubernetes-validate; scripts/test installs it)",
            );
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
