//! Live topic changes through the controller, applied by every broker without a restart:
//! config overrides set and removed (see `Broker::update_config`, which the reconciler
//! calls), partitions added (opened by the reconciler like a new topic's), and the
//! replication factor changed (each partition's leader then moves its Raft group to the new
//! replicas: see `reassign`).

use std::collections::BTreeMap;

use sluice_proto::TopicConfig;

use super::Broker;
use super::topics::{change_outcome, place, reassign};
use crate::controller::types::ReplicationChange;
use crate::controller::{MetaCommand, MetaResponse};
use crate::error::{Error, Result};
use crate::metadata::TopicRecord;

/// A change to a topic: config overrides to set and to remove, the partition count to grow
/// to, the replication factor, and labels and annotations to replace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TopicChange {
    pub set: BTreeMap<String, String>,
    pub delete: Vec<String>,
    /// The new partition count (more than now), if partitions are to be added.
    pub partitions: Option<i32>,
    /// The new replication factor, if it changes.
    pub replication_factor: Option<i32>,
    /// New labels and annotations, replacing the old, if they are to be set.
    pub meta: Option<crate::metadata::TopicMeta>,
}

/// What an alter changes (or would, with `validate_only`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TopicChanges {
    pub config: Vec<ConfigChange>,
    /// Partition count before and after.
    pub partitions: (i32, i32),
    /// Replication factor before and after.
    pub replication_factor: (i32, i32),
    /// The partitions whose replicas change, with their replicas before and after.
    pub reassignments: Vec<(i32, Vec<i32>, Vec<i32>)>,
    /// Whether the labels or annotations change.
    pub meta_changed: bool,
}

impl TopicChanges {
    pub(crate) fn is_empty(&self) -> bool {
        !self.meta_changed
            && self.config.is_empty()
            && self.partitions.0 == self.partitions.1
            && self.replication_factor.0 == self.replication_factor.1
    }
}

/// One key whose effective value, or whether the topic sets it, an alter changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigChange {
    pub key: String,
    pub old_value: String,
    pub new_value: String,
    /// Whether the topic sets the key itself (otherwise the default applies).
    pub old_override: bool,
    pub new_override: bool,
}

/// What changes between two override maps of a topic, key by key, in alphabetical order.
fn diff(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    replication_factor: i32,
) -> std::result::Result<Vec<ConfigChange>, String> {
    let old = TopicConfig::from_map(before, replication_factor)
        .map_err(|e| e.to_string())?
        .to_map();
    let new = TopicConfig::from_map(after, replication_factor)
        .map_err(|e| e.to_string())?
        .to_map();
    let mut changes: Vec<ConfigChange> = TopicConfig::keys()
        .map(|key| ConfigChange {
            key: key.to_string(),
            old_value: old.get(key).cloned().unwrap_or_default(),
            new_value: new.get(key).cloned().unwrap_or_default(),
            old_override: before.contains_key(key),
            new_override: after.contains_key(key),
        })
        .filter(|c| c.old_value != c.new_value || c.old_override != c.new_override)
        .collect();
    changes.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(changes)
}

impl Broker {
    /// Changes topic `name`, all or none: sets and removes config overrides (checked here
    /// with the messages of topic creation), adds partitions (placed like a new topic's)
    /// and replaces labels and annotations (checked like at creation), committed through
    /// the controller in one command, which checks it again against the topic as it is
    /// then. In effect on this broker when this returns (the new partitions opened and, when
    /// replicated, led), on the others as soon as they apply it. Returns what changed
    /// (nothing: nothing to do) and the topic as altered.
    pub(crate) async fn alter_topic(
        &self,
        name: &str,
        change: TopicChange,
        validate_only: bool,
    ) -> Result<(TopicChanges, TopicRecord)> {
        let TopicChange {
            set,
            delete,
            partitions,
            replication_factor,
            meta,
        } = change;
        let mut record = self.topic_record_current(name).await?;
        if let Some(m) = &meta {
            m.validate(name)?;
        }
        // Replaced whole; the same labels and annotations again change nothing.
        let meta = meta.filter(|m| *m != record.meta);
        let known: Vec<&str> = TopicConfig::keys().collect();
        for key in &delete {
            if !known.contains(&key.as_str()) {
                return Err(Error::InvalidConfig(format!(
                    "topic '{name}': unknown config key '{key}' to delete; known keys: {}",
                    known.join(", ")
                )));
            }
            if set.contains_key(key) {
                return Err(Error::InvalidConfig(format!(
                    "topic '{name}': config key '{key}' is both set and deleted; choose one"
                )));
            }
        }
        let mut after = record.config.clone();
        for key in &delete {
            after.remove(key);
        }
        after.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        let from = record.replication_factor;
        let to = replication_factor.unwrap_or(from);
        if to != from && !record.replicated() {
            return Err(Error::InvalidReplicationFactor(format!(
                "topic '{name}': its replication factor cannot change from {from} to {to}: it was created with replication factor 1 by a broker version whose factor-1 partitions have no Raft group to add replicas to. \
                 Create a new topic with replication factor {to} and copy the records into it (topics created now change factor freely, 1 included)"
            )));
        }
        if to != from && !record.reassigning.is_empty() {
            return Err(Error::ReassignmentInProgress(format!(
                "topic '{name}': {} partition(s) are still changing replicas from the last replication factor change; wait until `sluice topics describe {name}` shows none adding or removing, then try again",
                record.reassigning.len()
            )));
        }
        let config = diff(&record.config, &after, to)
            .map_err(|e| Error::InvalidConfig(format!("topic '{name}': {e}")))?;
        let before = record.partitions;
        let total = partitions.unwrap_or(before);
        let max = self.config.max_partitions_per_topic;
        if total < before {
            return Err(Error::InvalidPartitions(format!(
                "topic '{name}' has {before} partitions; partitions can only be added: removing one would delete its records and move its keys to other partitions. To have fewer, create a new topic with {total} and copy the records into it"
            )));
        }
        if total > max {
            return Err(Error::InvalidPartitions(format!(
                "topic '{name}': partitions must be between 1 and {max}, got {total}"
            )));
        }
        let brokers = if total > before || to != from {
            self.placement_brokers(name, to).await?
        } else {
            Vec::new()
        };
        let replication = (to != from).then(|| {
            let leaders: Vec<Option<i32>> = (0..before)
                .map(|p| self.current_leader(&record, p))
                .collect();
            ReplicationChange {
                from,
                to,
                targets: reassign(&record.replicas, to as usize, &brokers, &leaders),
            }
        });
        let reassignments = replication.as_ref().map_or_else(Vec::new, |r| {
            r.targets
                .iter()
                .enumerate()
                .filter(|(p, target)| record.replicas.get(*p) != Some(*target))
                .map(|(p, target)| (p as i32, record.replicas[p].clone(), target.clone()))
                .collect()
        });
        let changes = TopicChanges {
            config,
            partitions: (before, total),
            replication_factor: (from, to),
            reassignments,
            meta_changed: meta.is_some(),
        };
        let add_replicas = if total > before {
            // The same rotation as at creation, continued: partitions stay spread.
            place(name, total, to, &brokers).split_off(before as usize)
        } else {
            Vec::new()
        };
        if validate_only || changes.is_empty() {
            record.config = after;
            if let Some(m) = meta {
                record.meta = m;
            }
            return Ok((changes, record));
        }
        let meta_after = meta.clone().unwrap_or_else(|| record.meta.clone());
        let proposed = self
            .controller
            .propose(MetaCommand::AlterTopic {
                name: name.to_string(),
                topic_id: record.topic_id.clone(),
                set,
                delete,
                add_replicas,
                partitions_before: before,
                replication,
                meta,
            })
            .await
            .map_err(|e| change_outcome(e, name, "altered", ""))?;
        match proposed {
            MetaResponse::Ok => {}
            MetaResponse::Rejected { code, message } if code == "INVALID_CONFIG" => {
                return Err(Error::InvalidConfig(message));
            }
            MetaResponse::Rejected { code, message } if code == "INVALID_REPLICATION_FACTOR" => {
                return Err(Error::InvalidReplicationFactor(message));
            }
            MetaResponse::Rejected { code, message } if code == "INVALID_PARTITIONS" => {
                return Err(Error::InvalidPartitions(message));
            }
            MetaResponse::Rejected { code, message } if code == "REASSIGNMENT_IN_PROGRESS" => {
                return Err(Error::ReassignmentInProgress(message));
            }
            MetaResponse::Rejected { .. } => return Err(Error::UnknownTopic(name.to_string())),
            other => {
                return Err(Error::Internal(format!(
                    "the controller answered altering '{name}' with {other:?}"
                )));
            }
        }
        // Committed as this alter left it (unless another one came in between), applied to
        // this broker's partitions, and every partition led.
        // A replication factor change goes on in the background (`topics describe` shows it):
        // committed is enough here.
        let wanted = TopicConfig::from_map(&after, to).ok();
        let me = self.node_id();
        self.await_local(|| {
            let state = self.controller.state();
            let Some(t) = state
                .topics
                .get(name)
                .filter(|t| t.topic_id == record.topic_id)
            else {
                return true;
            };
            // Labels and annotations included: a change of them alone is committed, and
            // the topic this returns shows them, only once this broker has applied it.
            let committed = t.config == after
                && t.meta == meta_after
                && t.partitions >= total
                && t.replication_factor == to;
            let local = self.local_topic(name);
            let applied = local
                .as_ref()
                .is_none_or(|l| Some(&*l.config.get()) == wanted.as_ref());
            let opened = t
                .partitions_on(me, before..t.partitions)
                .into_iter()
                .all(|p| {
                    local.as_ref().is_some_and(|l| {
                        l.partitions.contains_key(&p) || l.replicas.read().contains_key(&p)
                    })
                });
            // The added partitions have leaders (others may lack one for their own reasons).
            let led =
                !t.replicated() || t.leaders.iter().skip(before as usize).all(Option::is_some);
            committed && applied && opened && led
        })
        .await;
        tracing::info!(topic = %name, config_changes = changes.config.len(),
            partitions_before = before, partitions = total, replication_factor_before = from,
            replication_factor = to, meta_changed = changes.meta_changed, "altered topic");
        if let Some(t) = self.controller.state().topics.get(name) {
            record = t.clone();
        }
        Ok((changes, record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A change is a key whose value or override status moves; setting a key to its
    /// default value is a change (it becomes an override), deleting it is one back.
    #[test]
    fn diff_names_each_key_that_changes() {
        let before = map(&[("retention.ms", "1000"), ("segment.bytes", "4096")]);
        let after = map(&[("segment.bytes", "4096"), ("max.message.bytes", "1048588")]);
        let changes = diff(&before, &after, 3).unwrap();
        let keys: Vec<_> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["max.message.bytes", "retention.ms"]);
        let retention = &changes[1];
        assert_eq!(retention.old_value, "1000");
        assert!(retention.old_override && !retention.new_override);
        assert_eq!(
            retention.new_value,
            TopicConfig::default().to_map()["retention.ms"]
        );
        assert!(diff(&before, &before, 3).unwrap().is_empty());
        let err = diff(&before, &map(&[("min.insync.replicas", "4")]), 3).unwrap_err();
        assert!(err.contains("min.insync.replicas"), "{err}");
    }
}
