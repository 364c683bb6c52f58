//! Live topic changes: config overrides set and removed through the controller, and applied
//! by every broker holding a partition of the topic without a restart (see
//! `Broker::update_config`, which the reconciler calls).

use std::collections::BTreeMap;

use sluice_proto::TopicConfig;

use super::{Broker, change_outcome};
use crate::controller::{MetaCommand, MetaResponse};
use crate::error::{Error, Result};
use crate::metadata::TopicRecord;

/// One key whose effective value, or whether the topic sets it, an alter changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    pub key: String,
    pub old_value: String,
    pub new_value: String,
    /// Whether the topic sets the key itself (otherwise the default applies).
    pub old_override: bool,
    pub new_override: bool,
}

/// What changes between two override maps of a topic, key by key, in key order.
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
    Ok(TopicConfig::keys()
        .map(|key| ConfigChange {
            key: key.to_string(),
            old_value: old.get(key).cloned().unwrap_or_default(),
            new_value: new.get(key).cloned().unwrap_or_default(),
            old_override: before.contains_key(key),
            new_override: after.contains_key(key),
        })
        .filter(|c| c.old_value != c.new_value || c.old_override != c.new_override)
        .collect())
}

impl Broker {
    /// Sets and removes config overrides of topic `name`, all or none: checked here with
    /// the messages of topic creation, committed through the controller (which checks the
    /// result again against the topic as it is then), and in effect on this broker's
    /// partitions when this returns (on other brokers' as soon as they apply it). Returns
    /// the changes, none when there is nothing to do, and the topic as altered.
    pub async fn alter_topic_config(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
        validate_only: bool,
    ) -> Result<(Vec<ConfigChange>, TopicRecord)> {
        let mut record = self.topic_record_current(name).await?;
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
        let changes = diff(&record.config, &after, record.replication_factor)
            .map_err(|e| Error::InvalidConfig(format!("topic '{name}': {e}")))?;
        if validate_only || changes.is_empty() {
            record.config = after;
            return Ok((changes, record));
        }
        let proposed = self
            .controller
            .propose(MetaCommand::AlterTopicConfig {
                name: name.to_string(),
                topic_id: record.topic_id.clone(),
                set,
                delete,
            })
            .await
            .map_err(|e| change_outcome(e, name, "altered", ""))?;
        match proposed {
            MetaResponse::Ok => {}
            MetaResponse::Rejected { code, message } if code == "INVALID_CONFIG" => {
                return Err(Error::InvalidConfig(message));
            }
            MetaResponse::Rejected { .. } => return Err(Error::UnknownTopic(name.to_string())),
            other => {
                return Err(Error::Internal(format!(
                    "the controller answered altering '{name}' with {other:?}"
                )));
            }
        }
        // The committed overrides are this alter's unless another one came in between.
        let wanted = TopicConfig::from_map(&after, record.replication_factor).ok();
        self.await_local(|| {
            let committed = self
                .controller
                .state()
                .topics
                .get(name)
                .is_some_and(|t| t.topic_id == record.topic_id && t.config == after);
            let applied = self
                .local_topic(name)
                .is_none_or(|t| Some(&*t.config.get()) == wanted.as_ref());
            committed && applied
        })
        .await;
        tracing::info!(topic = %name, changes = changes.len(), "altered topic config");
        record.config = after;
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
        assert_eq!(keys, ["retention.ms", "max.message.bytes"]);
        let retention = &changes[0];
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
