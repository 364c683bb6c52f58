//! The controller's Raft type configuration and the replicated cluster metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::metadata::TopicRecord;

openraft::declare_raft_types!(
    /// The metadata (controller) Raft group.
    pub(crate) MetaRaft:
        D = MetaCommand,
        R = MetaResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<MetaRaft>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A broker as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BrokerRecord {
    pub node_id: i32,
    /// host:port for clients.
    pub address: String,
    /// host:port for other brokers (Raft, forwarding).
    pub raft_address: String,
}

/// Everything the controller group replicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClusterState {
    /// Set by the first broker that registers; the same on every broker.
    #[serde(default)]
    pub cluster_id: String,
    pub brokers: BTreeMap<i32, BrokerRecord>,
    /// The next Raft group id to hand out (0 is the controller).
    #[serde(default)]
    pub next_group: u64,
    /// The next idempotent-producer id to hand out; brokers take them in blocks.
    #[serde(default)]
    pub next_producer_id: i64,
    pub topics: BTreeMap<String, TopicRecord>,
    /// Brokers being drained (before they leave): no new replicas are placed on them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub draining: BTreeSet<i32>,
}

/// A change to the cluster metadata. Validation that needs the current state happens when
/// the command is applied, so every replica reaches the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MetaCommand {
    /// Adds or updates a broker; `cluster_id` is this broker's candidate for the cluster id,
    /// used only when the cluster has none yet.
    RegisterBroker {
        broker: BrokerRecord,
        cluster_id: String,
    },
    CreateTopic(TopicRecord),
    DeleteTopic {
        name: String,
    },
    /// Changes a topic (the incarnation `topic_id`), checked against the topic as it is at
    /// apply, all of it or none: sets and removes config overrides, and adds partitions
    /// (`add_replicas`: the replicas of each new one, placed by the proposer).
    AlterTopic {
        name: String,
        topic_id: String,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
        #[serde(default)]
        add_replicas: Vec<Vec<i32>>,
        /// The partition count `add_replicas` grows from: a command applied again (a
        /// proposal retried after an unknown outcome) or against a topic grown meanwhile
        /// adds nothing more.
        #[serde(default)]
        partitions_before: i32,
        /// A replication factor change: applied against the factor it was planned from
        /// (a stale one is refused, a repeated one changes nothing).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replication: Option<ReplicationChange>,
        /// New labels and annotations, replacing the old (none: unchanged).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        meta: Option<crate::metadata::TopicMeta>,
    },
    /// A partition's Raft group now has `replicas` (its leader moved the group's voters to
    /// them): the end of that partition's reassignment.
    PartitionReplicas {
        topic_id: String,
        partition: i32,
        replicas: Vec<i32>,
    },
    /// A partition's Raft group elected `leader` in `term`.
    PartitionLeader {
        topic_id: String,
        partition: i32,
        leader: i32,
        term: u64,
    },
    /// Reserves `count` producer ids for one broker to hand out.
    AllocateProducerIds {
        count: u32,
    },
    /// The drained brokers become exactly `brokers`, and each partition in `moves` (topic
    /// id, partition, replicas after; placed by the proposer) starts moving, unless it is
    /// already moving or no longer on a drained broker.
    DrainBrokers {
        brokers: BTreeSet<i32>,
        moves: Vec<(String, i32, Vec<i32>)>,
    },
}

/// A topic's replication factor going from `from` to `to`: `targets` has the replicas of
/// each of its partitions after the change (placed by the proposer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReplicationChange {
    pub from: i32,
    pub to: i32,
    pub targets: Vec<Vec<i32>>,
}

/// The outcome of applying a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MetaResponse {
    Ok,
    /// The first of the ids an [`MetaCommand::AllocateProducerIds`] reserved.
    ProducerIds {
        first: i64,
    },
    /// `code` is an ErrorCode name.
    Rejected {
        code: String,
        message: String,
    },
}

impl ClusterState {
    /// Applies one command.
    pub(crate) fn apply(&mut self, command: &MetaCommand) -> MetaResponse {
        match command {
            MetaCommand::RegisterBroker { broker, cluster_id } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = cluster_id.clone();
                }
                self.brokers.insert(broker.node_id, broker.clone());
                MetaResponse::Ok
            }
            MetaCommand::CreateTopic(t) => {
                if self.topics.contains_key(&t.name) {
                    return MetaResponse::Rejected {
                        code: "TOPIC_ALREADY_EXISTS".into(),
                        message: format!("topic '{}' already exists", t.name),
                    };
                }
                let mut t = t.clone();
                if t.replicated() {
                    self.next_group = self.next_group.max(1);
                    t.group_base = self.next_group;
                    self.next_group += t.partitions as u64;
                }
                t.leaders = vec![None; t.partitions.max(0) as usize];
                self.topics.insert(t.name.clone(), t);
                MetaResponse::Ok
            }
            MetaCommand::PartitionLeader {
                topic_id,
                partition,
                leader,
                term,
            } => {
                let Some(t) = self.topics.values_mut().find(|t| &t.topic_id == topic_id) else {
                    return MetaResponse::Rejected {
                        code: "UNKNOWN_TOPIC_OR_PARTITION".into(),
                        message: format!("no topic with id {topic_id}"),
                    };
                };
                if let Some(slot) = t.leaders.get_mut(*partition as usize)
                    && slot.is_none_or(|l| l.term <= *term)
                {
                    *slot = Some(crate::metadata::LeaderRecord {
                        leader: *leader,
                        term: *term,
                    });
                }
                MetaResponse::Ok
            }
            MetaCommand::PartitionReplicas {
                topic_id,
                partition,
                replicas,
            } => {
                let Some(t) = self.topics.values_mut().find(|t| &t.topic_id == topic_id) else {
                    return MetaResponse::Rejected {
                        code: "UNKNOWN_TOPIC_OR_PARTITION".into(),
                        message: format!("no topic with id {topic_id}"),
                    };
                };
                let Some(slot) = t.replicas.get_mut(*partition as usize) else {
                    return MetaResponse::Rejected {
                        code: "UNKNOWN_TOPIC_OR_PARTITION".into(),
                        message: format!("topic '{}' has no partition {partition}", t.name),
                    };
                };
                *slot = replicas.clone();
                if t.reassigning.get(partition) == Some(replicas) {
                    t.reassigning.remove(partition);
                }
                MetaResponse::Ok
            }
            MetaCommand::DrainBrokers { brokers, moves } => {
                self.draining = brokers.clone();
                for (topic_id, partition, target) in moves {
                    let Some(t) = self.topics.values_mut().find(|t| &t.topic_id == topic_id) else {
                        continue;
                    };
                    let Some(current) = t.replicas.get(*partition as usize) else {
                        continue;
                    };
                    let stale = !current.iter().any(|r| brokers.contains(r))
                        || t.reassigning.contains_key(partition)
                        || target.len() != current.len()
                        || target.iter().any(|r| brokers.contains(r));
                    if !stale {
                        t.reassigning.insert(*partition, target.clone());
                    }
                }
                MetaResponse::Ok
            }
            MetaCommand::AllocateProducerIds { count } => {
                let first = self.next_producer_id;
                self.next_producer_id = first.saturating_add(i64::from(*count));
                MetaResponse::ProducerIds { first }
            }
            MetaCommand::AlterTopic {
                name,
                topic_id,
                set,
                delete,
                add_replicas,
                partitions_before,
                replication,
                meta,
            } => {
                let Some(t) = self
                    .topics
                    .get_mut(name)
                    .filter(|t| &t.topic_id == topic_id)
                else {
                    return MetaResponse::Rejected {
                        code: "UNKNOWN_TOPIC_OR_PARTITION".into(),
                        message: format!("unknown topic '{name}' (it was deleted or recreated)"),
                    };
                };
                let mut config = t.config.clone();
                for key in delete {
                    config.remove(key);
                }
                config.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                let factor = match replication {
                    None => t.replication_factor,
                    Some(r) if r.to == t.replication_factor && r.from != r.to => {
                        // This very change, applied already (or one to the same factor).
                        r.to
                    }
                    Some(r) if r.from != t.replication_factor => {
                        return MetaResponse::Rejected {
                            code: "INVALID_REPLICATION_FACTOR".into(),
                            message: format!(
                                "topic '{name}' has replication factor {} now, not {} as when this change was made; nothing changed, check with `sluice topics describe {name}`",
                                t.replication_factor, r.from
                            ),
                        };
                    }
                    Some(_) if !t.reassigning.is_empty() => {
                        return MetaResponse::Rejected {
                            code: "REASSIGNMENT_IN_PROGRESS".into(),
                            message: format!(
                                "topic '{name}': {} partition(s) are still changing replicas; wait until `sluice topics describe {name}` shows none adding or removing, then try again",
                                t.reassigning.len()
                            ),
                        };
                    }
                    Some(r)
                        if r.to < 1
                            || !t.replicated()
                            || r.targets.len() != t.partitions as usize
                            || r.targets.iter().any(|p| p.len() != r.to as usize) =>
                    {
                        return MetaResponse::Rejected {
                            code: "INVALID_REPLICATION_FACTOR".into(),
                            message: format!(
                                "topic '{name}': a replication factor change must place {} replicas for each of its {} partitions",
                                r.to, t.partitions
                            ),
                        };
                    }
                    Some(r) => r.to,
                };
                if let Err(e) = sluice_proto::TopicConfig::from_map(&config, factor) {
                    return MetaResponse::Rejected {
                        code: "INVALID_CONFIG".into(),
                        message: format!("topic '{name}': {e}"),
                    };
                }
                let add_replicas = if add_replicas.is_empty() || t.partitions == *partitions_before
                {
                    add_replicas.as_slice()
                } else if t.partitions == partitions_before + add_replicas.len() as i32
                    && t.replicas.ends_with(add_replicas)
                {
                    // This very change, applied already.
                    &[]
                } else {
                    return MetaResponse::Rejected {
                        code: "INVALID_PARTITIONS".into(),
                        message: format!(
                            "topic '{name}' has {} partitions now, not {partitions_before} as when this change was made; nothing changed, check with `sluice topics describe {name}`",
                            t.partitions
                        ),
                    };
                };
                if add_replicas.iter().any(|r| r.len() != factor as usize) {
                    return MetaResponse::Rejected {
                        code: "INVALID_REPLICATION_FACTOR".into(),
                        message: format!(
                            "topic '{name}': new partitions must have {factor} replicas each"
                        ),
                    };
                }
                t.config = config;
                if let Some(m) = meta {
                    t.meta = m.clone();
                }
                if let Some(r) = replication
                    && r.from == t.replication_factor
                    && r.from != r.to
                {
                    t.replication_factor = r.to;
                    for (p, target) in r.targets.iter().enumerate() {
                        if t.replicas.get(p) != Some(target) {
                            t.reassigning.insert(p as i32, target.clone());
                        }
                    }
                }
                if !add_replicas.is_empty() {
                    if t.replicated() {
                        if t.groups.is_empty() {
                            t.groups = (0..t.partitions).map(|p| t.group(p)).collect();
                        }
                        self.next_group = self.next_group.max(1);
                        for _ in add_replicas {
                            t.groups.push(self.next_group);
                            self.next_group += 1;
                        }
                    }
                    t.replicas.extend(add_replicas.iter().cloned());
                    t.partitions += add_replicas.len() as i32;
                    t.leaders.resize(t.partitions as usize, None);
                }
                MetaResponse::Ok
            }
            MetaCommand::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => MetaResponse::Ok,
                None => MetaResponse::Rejected {
                    code: "UNKNOWN_TOPIC_OR_PARTITION".into(),
                    message: format!("unknown topic '{name}'"),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, partitions: i32, rf: i32) -> TopicRecord {
        TopicRecord {
            name: name.into(),
            partitions,
            replication_factor: rf,
            config: BTreeMap::new(),
            created_ms: 0,
            topic_id: format!("{name}-1"),
            replicas: (0..partitions).map(|_| (1..=rf).collect()).collect(),
            raft: true,
            group_base: 0,
            groups: Vec::new(),
            leaders: Vec::new(),
            reassigning: BTreeMap::new(),
            meta: Default::default(),
        }
    }

    fn alter(name: &str, set: &[(&str, &str)], add: Vec<Vec<i32>>) -> MetaCommand {
        MetaCommand::AlterTopic {
            name: name.into(),
            topic_id: format!("{name}-1"),
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            delete: Vec::new(),
            partitions_before: 2,
            add_replicas: add,
            replication: None,
            meta: None,
        }
    }

    /// Added partitions of a replicated topic get Raft group ids after every id handed
    /// out before (never one of another topic's), and the existing ones keep theirs; a
    /// change whose result is invalid, or aimed at another incarnation, changes nothing.
    #[test]
    fn alter_topic_adds_partitions_with_fresh_groups_or_changes_nothing() {
        let mut state = ClusterState::default();
        assert_eq!(
            state.apply(&MetaCommand::CreateTopic(topic("a", 2, 3))),
            MetaResponse::Ok
        );
        assert_eq!(
            state.apply(&MetaCommand::CreateTopic(topic("b", 2, 3))),
            MetaResponse::Ok
        );
        let before: Vec<u64> = (0..2).map(|p| state.topics["a"].group(p)).collect();
        assert_eq!(
            state.apply(&alter(
                "a",
                &[("retention.ms", "1000")],
                vec![vec![3, 1, 2]]
            )),
            MetaResponse::Ok
        );
        let a = &state.topics["a"];
        assert_eq!(a.partitions, 3);
        assert_eq!(a.config["retention.ms"], "1000");
        assert_eq!((0..2).map(|p| a.group(p)).collect::<Vec<_>>(), before);
        let used: Vec<u64> = (0..2).map(|p| state.topics["b"].group(p)).collect();
        assert!(!used.contains(&a.group(2)) && !before.contains(&a.group(2)));
        assert_eq!(state.next_group, a.group(2) + 1);
        assert_eq!(a.leaders.len(), 3);

        // The same command again (a retried proposal) adds nothing more.
        let again = state.apply(&alter(
            "a",
            &[("retention.ms", "1000")],
            vec![vec![3, 1, 2]],
        ));
        assert_eq!(again, MetaResponse::Ok);
        assert_eq!(state.topics["a"].partitions, 3);
        // Another growth from the old count is refused: the topic grew meanwhile.
        let stale = state.apply(&alter("a", &[], vec![vec![1, 2, 3]]));
        assert!(
            matches!(stale, MetaResponse::Rejected { ref code, .. } if code == "INVALID_PARTITIONS")
        );
        let snapshot = state.clone();
        let invalid = state.apply(&alter("a", &[("min.insync.replicas", "4")], vec![]));
        assert!(
            matches!(invalid, MetaResponse::Rejected { ref code, .. } if code == "INVALID_CONFIG")
        );
        let mut wrong = alter("a", &[], vec![vec![1]]);
        if let MetaCommand::AlterTopic {
            partitions_before, ..
        } = &mut wrong
        {
            *partitions_before = 3;
        }
        let wrong_rf = state.apply(&wrong);
        assert!(
            matches!(wrong_rf, MetaResponse::Rejected { ref code, .. } if code == "INVALID_REPLICATION_FACTOR")
        );
        let mut other = alter("a", &[("retention.ms", "5")], vec![]);
        if let MetaCommand::AlterTopic { topic_id, .. } = &mut other {
            *topic_id = "a-2".into();
        }
        assert!(matches!(state.apply(&other), MetaResponse::Rejected { .. }));
        assert_eq!(
            state, snapshot,
            "a refused change leaves the state as it was"
        );
    }

    /// Labels and annotations are replaced whole by an alter that carries them, left alone
    /// by one that does not; an alter logged before topics had them still decodes.
    #[test]
    fn alter_topic_replaces_labels_and_annotations_whole() {
        let mut state = ClusterState::default();
        let mut t = topic("a", 2, 3);
        t.meta.labels = [("team".to_string(), "payments".to_string())].into();
        t.meta.annotations = [("note".to_string(), "hello".to_string())].into();
        assert_eq!(state.apply(&MetaCommand::CreateTopic(t)), MetaResponse::Ok);
        assert_eq!(state.topics["a"].meta.labels["team"], "payments");

        let replacement = crate::metadata::TopicMeta {
            labels: [("tier".to_string(), "gold".to_string())].into(),
            annotations: BTreeMap::new(),
        };
        let mut with_meta = alter("a", &[], vec![]);
        if let MetaCommand::AlterTopic { meta, .. } = &mut with_meta {
            *meta = Some(replacement.clone());
        }
        assert_eq!(state.apply(&with_meta), MetaResponse::Ok);
        assert_eq!(state.topics["a"].meta, replacement);
        assert!(state.topics["a"].config.is_empty(), "nothing else changed");

        assert_eq!(
            state.apply(&alter("a", &[("retention.ms", "1000")], vec![])),
            MetaResponse::Ok
        );
        assert_eq!(state.topics["a"].meta, replacement, "left alone");

        let old = r#"{"AlterTopic":{"name":"a","topic_id":"a-1","set":{},"delete":[]}}"#;
        let decoded: MetaCommand = serde_json::from_str(old).expect("an old command decodes");
        assert!(matches!(
            decoded,
            MetaCommand::AlterTopic { meta: None, .. }
        ));
        let json = serde_json::to_string(&alter("a", &[], vec![])).expect("serializes");
        assert!(!json.contains("meta"), "{json}");
    }
}
