//! The broker's own sled database: the identity of the data directory (node id, cluster
//! id), and the trees of the controller group (see [`crate::controller::store`]).
//!
//! sled calls block, so callers run them on the blocking pool.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A topic as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TopicRecord {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Only the keys that were set; defaults are filled in when read.
    pub config: BTreeMap<String, String>,
    pub created_ms: i64,
    /// Unique per incarnation of the name: a deleted and re-created topic never reuses the
    /// old one's directories.
    pub topic_id: String,
    /// The replicas of each partition, preferred leader first.
    pub replicas: Vec<Vec<i32>>,
    /// Every partition is a Raft group, at any replication factor (a factor 1 partition is a
    /// one-voter group). Set on every topic created since; a factor 1 topic created before
    /// keeps the unreplicated segment-log path.
    #[serde(default)]
    pub raft: bool,
    /// Raft group id of partition 0; partition `p` is group `group_base + p`. Assigned by
    /// the controller when the topic is created (replicated topics only).
    #[serde(default)]
    pub group_base: u64,
    /// Once partitions were added: the Raft group id of every partition (the added ones
    /// got ids of their own, after every group handed out before). Empty until then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u64>,
    /// The last leader each replicated partition reported, with its Raft term.
    #[serde(default)]
    pub leaders: Vec<Option<LeaderRecord>>,
    /// Partitions whose replicas are changing (a replication factor change), with the
    /// replicas each moves to. `replicas` stays what the partition's Raft group has until its
    /// leader has moved the group over (new replicas added as learners, caught up, then the
    /// voters replaced) and reported it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reassigning: BTreeMap<i32, Vec<i32>>,
    /// Kubernetes-style labels and annotations (`sluice apply` marks the topics it manages).
    #[serde(default, skip_serializing_if = "TopicMeta::is_empty")]
    pub meta: TopicMeta,
}

/// A topic's labels and annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TopicMeta {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl TopicMeta {
    pub(crate) fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty()
    }

    /// Checks the labels and annotations of topic `topic`.
    pub(crate) fn validate(&self, topic: &str) -> crate::error::Result<()> {
        match sluice_proto::labels::metadata_problem(&self.labels, &self.annotations) {
            Some(p) => Err(crate::error::Error::InvalidRequest(format!(
                "topic '{topic}': {p}; nothing changed"
            ))),
            None => Ok(()),
        }
    }
}

/// A partition leader as reported by its Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaderRecord {
    pub leader: i32,
    pub term: u64,
}

impl TopicRecord {
    /// Whether partitions are Raft groups: every topic created since one-voter groups, and
    /// any with more than one replica.
    pub(crate) fn replicated(&self) -> bool {
        self.raft || self.replication_factor > 1
    }

    /// The Raft group id of a partition.
    pub(crate) fn group(&self, partition: i32) -> u64 {
        match self.groups.get(partition as usize) {
            Some(&g) => g,
            None => self.group_base + partition as u64,
        }
    }

    /// The partitions in `range` that have a replica on `broker`, or are getting one.
    pub(crate) fn partitions_on(&self, broker: i32, range: std::ops::Range<i32>) -> Vec<i32> {
        range
            .filter(|&p| {
                self.replicas
                    .get(p as usize)
                    .is_some_and(|r| r.contains(&broker))
                    || self
                        .reassigning
                        .get(&p)
                        .is_some_and(|r| r.contains(&broker))
            })
            .collect()
    }

    /// The replicas partition `p` has now and, while they change, the ones it moves to.
    pub(crate) fn replicas_of(&self, p: i32) -> (Vec<i32>, Option<&Vec<i32>>) {
        let now = self.replicas.get(p as usize).cloned().unwrap_or_default();
        (now, self.reassigning.get(&p))
    }

    /// The broker that leads `partition`: the last one its group reported, else the
    /// preferred (first) replica.
    pub(crate) fn leader(&self, partition: i32) -> Option<i32> {
        let p = usize::try_from(partition).ok()?;
        if let Some(Some(l)) = self.leaders.get(p) {
            return Some(l.leader);
        }
        self.replicas.get(p)?.first().copied()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct MetadataStore {
    db: sled::Db,
}

impl MetadataStore {
    /// Opens the store and checks that `data_dir` belongs to `node_id`.
    pub(crate) fn open(data_dir: &Path, node_id: i32, cache_bytes: u64) -> Result<(Self, String)> {
        let path = data_dir.join("metadata");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| {
                Error::Internal(format!(
                    "cannot open the metadata store at {}: {e}",
                    path.display()
                ))
            })?;
        match db.get("node_id")? {
            Some(v) => {
                let stored = i32::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    Error::Internal(format!(
                        "metadata store at {} has a damaged node_id",
                        path.display()
                    ))
                })?);
                if stored != node_id {
                    return Err(Error::Internal(format!(
                        "data directory {} belongs to node {stored}, but this broker is configured as node {node_id}; \
                         use --node-id {stored} or a different --data-dir",
                        data_dir.display()
                    )));
                }
            }
            None => {
                db.insert("node_id", &node_id.to_be_bytes())?;
            }
        }
        let cluster_id = match db.get("cluster_id")? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let id = new_cluster_id();
                db.insert("cluster_id", id.as_bytes())?;
                id
            }
        };
        db.flush()?;
        Ok((MetadataStore { db }, cluster_id))
    }

    /// The database, for the controller group's trees.
    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    pub(crate) fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

fn new_cluster_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::ErrorCode;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> TopicMeta {
        TopicMeta {
            labels: map(labels),
            annotations: map(annotations),
        }
    }

    /// The message of a refused label or annotation, after checking it is INVALID_REQUEST
    /// and names the topic.
    fn refused(m: &TopicMeta) -> String {
        let e = m.validate("orders").expect_err("refused");
        assert_eq!(e.code(), ErrorCode::InvalidRequest, "{e}");
        let text = e.to_string();
        assert!(text.contains("'orders'"), "names the topic: {text}");
        text
    }

    /// Kubernetes' rules: an optional DNS-subdomain prefix, then a name of 1-63 characters;
    /// values empty or a name; annotation values anything, 256 KiB in all.
    #[test]
    fn labels_and_annotations_follow_kubernetes_rules() {
        let ok = meta(
            &[
                ("app.kubernetes.io/managed-by", "sluice"),
                ("team", "payments"),
                ("Tier_1.x", "A-b_c.9"),
                ("empty", ""),
                (&"k".repeat(63), &"v".repeat(63)),
            ],
            &[
                ("sluice.io/applied-config", "[\"retention.ms\"]"),
                ("note", "any text at all: spaces, ünïcode, newlines\n"),
                ("blank", ""),
            ],
        );
        assert!(ok.validate("orders").is_ok());
        assert!(TopicMeta::default().validate("orders").is_ok());
        let prefix = format!("{}/x", "a".repeat(253));
        assert!(meta(&[(&prefix, "v")], &[]).validate("orders").is_ok());

        for key in [
            "bad key",
            "",
            "/x",
            "x/",
            "-x",
            "x-",
            "Upper.io/x",
            "a/b/c",
            "é",
        ] {
            let text = refused(&meta(&[(key, "v")], &[]));
            assert!(text.contains(&format!("'{key}'")), "names '{key}': {text}");
            let text = refused(&meta(&[], &[(key, "v")]));
            assert!(text.contains(&format!("'{key}'")), "names '{key}': {text}");
            assert!(text.contains("annotation"), "{text}");
        }
        let long = "k".repeat(64);
        assert!(refused(&meta(&[(&long, "v")], &[])).contains(&long));
        let long_prefix = format!("{}/x", "a".repeat(254));
        assert!(refused(&meta(&[(&long_prefix, "v")], &[])).contains("prefix"));

        for value in ["a b", "-x", "x.", "ü", &"v".repeat(64)] {
            let text = refused(&meta(&[("team", value)], &[]));
            assert!(
                text.contains("'team'") && text.contains(value),
                "names the label and value: {text}"
            );
        }

        let half = "x".repeat(128 * 1024);
        let full = meta(&[], &[("a", &half), ("b", &half[2..])]);
        assert!(
            full.validate("orders").is_ok(),
            "exactly 256 KiB is allowed"
        );
        let over = meta(&[], &[("a", &half), ("b", &half[1..])]);
        assert!(refused(&over).contains("bytes"));
    }

    /// Records and commands stored before topics had labels still load, and a topic without
    /// any stores none.
    #[test]
    fn records_without_labels_load_and_store_none() {
        let old = r#"{"name":"t","partitions":1,"replication_factor":1,"config":{},
            "created_ms":0,"topic_id":"t-1","replicas":[[1]],"raft":true,"group_base":1,
            "leaders":[null]}"#;
        let record: TopicRecord = serde_json::from_str(old).expect("an old record loads");
        assert!(record.meta.is_empty());
        let json = serde_json::to_string(&record).expect("serializes");
        assert!(!json.contains("meta"), "{json}");

        let mut labelled = record;
        labelled.meta = meta(&[("team", "payments")], &[("note", "x")]);
        let json = serde_json::to_string(&labelled).expect("serializes");
        let back: TopicRecord = serde_json::from_str(&json).expect("loads");
        assert_eq!(back, labelled);
    }
}
