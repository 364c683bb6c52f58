//! What applying manifests would do: each declared topic against the cluster's (create,
//! change, unchanged, refused) and what a prune would delete. Pure (no calls), and the one
//! implementation: `sluice apply`/`diff` and the Kubernetes operator both plan with it.

use std::collections::{BTreeMap, BTreeSet};

use crate::{APPLIED_CONFIG_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, TopicManifest};
use serde::Serialize;

/// A topic as the cluster has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    pub partitions: i32,
    pub replication_factor: i32,
    /// Overrides only (keys the topic sets).
    pub config: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Change,
    Unchanged,
    Refused,
    /// Deleted by `--prune`.
    Delete,
}

impl Action {
    pub fn word(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Change => "change",
            Action::Unchanged => "unchanged",
            Action::Refused => "refused",
            Action::Delete => "delete",
        }
    }
}

/// A config key's change: set (no `old`), changed, or removed (no `new`: back to the
/// cluster's default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigChange {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
}

/// One topic's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicPlan {
    pub topic: String,
    pub action: Action,
    /// Where it is declared (`file:line`); empty for a topic only `--prune` deletes.
    pub source: String,
    /// (before, after); before is 0 for a topic to create.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<(i32, i32)>,
    /// (before, after); after is -1 for the cluster's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<(i32, i32)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<ConfigChange>,
    /// Labels and annotations change (apply's own bookkeeping included).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<ConfigChange>,
    /// Why it cannot be done, and what to do instead.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// Only apply's record of the config keys the manifest sets differs (the manifest now
    /// declares a key the topic already has at that value): written, but not a change.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bookkeeping: bool,
    /// What the topic's labels and annotations become.
    #[serde(skip)]
    pub want_labels: BTreeMap<String, String>,
    #[serde(skip)]
    pub want_annotations: BTreeMap<String, String>,
}

impl TopicPlan {
    pub fn changes(&self) -> bool {
        matches!(
            self.action,
            Action::Create | Action::Change | Action::Delete
        )
    }

    /// Whether applying it makes a call (a change, or only the bookkeeping).
    pub fn writes(&self) -> bool {
        self.changes() || (self.action == Action::Unchanged && self.bookkeeping)
    }
}

/// The labels and annotations `sluice apply` gives a topic declared by `m`.
fn wanted_metadata(m: &TopicManifest) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut labels = m.metadata.labels.clone();
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string());
    let mut annotations = m.metadata.annotations.clone();
    annotations.remove(APPLIED_CONFIG_ANNOTATION);
    let keys: Vec<&str> = m.spec.config.keys().map(String::as_str).collect();
    if !keys.is_empty() {
        annotations.insert(APPLIED_CONFIG_ANNOTATION.to_string(), keys.join(","));
    }
    (labels, annotations)
}

/// The differences between two maps, as changes.
fn map_changes(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    prefix: &str,
) -> Vec<ConfigChange> {
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| ConfigChange {
            key: format!("{prefix}{k}"),
            old: before.get(k).cloned(),
            new: after.get(k).cloned(),
        })
        .collect()
}

/// The plan of topic `m`, declared at `source` (`file:line`, or a Kubernetes object's
/// name), against what the cluster has (`None`: no such topic).
pub fn plan_topic(m: &TopicManifest, source: &str, live: Option<&Live>) -> TopicPlan {
    let (want_labels, want_annotations) = wanted_metadata(m);
    let want_config = m.config();
    let mut plan = TopicPlan {
        topic: m.topic_name().to_string(),
        action: Action::Unchanged,
        source: source.to_string(),
        partitions: None,
        replication_factor: None,
        config: Vec::new(),
        labels: Vec::new(),
        refused: Vec::new(),
        bookkeeping: false,
        want_labels,
        want_annotations,
    };
    let Some(live) = live else {
        plan.action = Action::Create;
        plan.partitions = Some((0, m.spec.partitions.unwrap_or(1)));
        plan.replication_factor = Some((0, m.spec.replication_factor.unwrap_or(-1)));
        plan.config = want_config
            .into_iter()
            .map(|(key, v)| ConfigChange {
                key,
                old: None,
                new: Some(v),
            })
            .collect();
        return plan;
    };
    if let Some(n) = m.spec.partitions {
        if n < live.partitions {
            plan.refused.push(format!(
                "partitions {} -> {n}: a topic's partitions cannot be removed (keys are spread over them by hash, and their records would go). Declare {} or more, or create a new topic with {n} partitions and copy the records into it",
                live.partitions, live.partitions
            ));
        } else if n > live.partitions {
            plan.partitions = Some((live.partitions, n));
        }
    }
    if let Some(rf) = m.spec.replication_factor
        && rf != live.replication_factor
    {
        plan.replication_factor = Some((live.replication_factor, rf));
    }
    // Config: set what differs; remove what an earlier apply set and the manifest no longer
    // has; leave keys set by other means alone.
    for (key, v) in &want_config {
        let old = live.config.get(key);
        if old.map(|o| o.trim()) != Some(v.trim()) {
            plan.config.push(ConfigChange {
                key: key.clone(),
                old: old.cloned(),
                new: Some(v.clone()),
            });
        }
    }
    let owned = live
        .annotations
        .get(APPLIED_CONFIG_ANNOTATION)
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .collect::<BTreeSet<_>>()
        })
        .unwrap_or_default();
    for key in owned {
        if !want_config.contains_key(key)
            && let Some(old) = live.config.get(key)
        {
            plan.config.push(ConfigChange {
                key: key.to_string(),
                old: Some(old.clone()),
                new: None,
            });
        }
    }
    plan.labels = map_changes(&live.labels, &plan.want_labels, "");
    let own = |m: &BTreeMap<String, String>| {
        let mut m = m.clone();
        m.remove(APPLIED_CONFIG_ANNOTATION);
        m
    };
    plan.labels.extend(map_changes(
        &own(&live.annotations),
        &own(&plan.want_annotations),
        "annotation ",
    ));
    plan.bookkeeping = live.annotations.get(APPLIED_CONFIG_ANNOTATION)
        != plan.want_annotations.get(APPLIED_CONFIG_ANNOTATION);
    plan.action = if !plan.refused.is_empty() {
        Action::Refused
    } else if plan.partitions.is_some()
        || plan.replication_factor.is_some()
        || !plan.config.is_empty()
        || !plan.labels.is_empty()
    {
        Action::Change
    } else {
        Action::Unchanged
    };
    plan
}

/// Topics `--prune` deletes: managed by `sluice apply` (the label), not declared, not
/// internal.
pub fn prune(live: &BTreeMap<String, Live>, declared: &BTreeSet<String>) -> Vec<TopicPlan> {
    live.iter()
        .filter(|(name, l)| {
            !name.starts_with("__")
                && !declared.contains(*name)
                && l.labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
        })
        .map(|(name, _)| TopicPlan {
            topic: name.clone(),
            action: Action::Delete,
            source: String::new(),
            partitions: None,
            replication_factor: None,
            config: Vec::new(),
            labels: Vec::new(),
            refused: Vec::new(),
            bookkeeping: false,
            want_labels: BTreeMap::new(),
            want_annotations: BTreeMap::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConfigValue, TopicSpec};

    fn declared(
        partitions: Option<i32>,
        rf: Option<i32>,
        config: &[(&str, &str)],
    ) -> TopicManifest {
        TopicManifest::new(
            "orders",
            TopicSpec {
                partitions,
                replication_factor: rf,
                config: config
                    .iter()
                    .map(|(k, v)| (k.to_string(), ConfigValue(v.to_string())))
                    .collect(),
                ..TopicSpec::default()
            },
        )
    }

    fn plan_topic(m: &TopicManifest, live: Option<&Live>) -> TopicPlan {
        super::plan_topic(m, "t.yaml:1", live)
    }

    fn live_from(d: &TopicManifest) -> Live {
        let p = plan_topic(d, None);
        Live {
            partitions: p.partitions.unwrap().1,
            replication_factor: p.replication_factor.unwrap().1,
            config: d.config(),
            labels: p.want_labels,
            annotations: p.want_annotations,
        }
    }

    #[test]
    fn a_new_topic_is_created_with_its_labels_and_owned_keys() {
        let d = declared(Some(12), Some(3), &[("retention.ms", "1000")]);
        let p = plan_topic(&d, None);
        assert_eq!(p.action, Action::Create);
        assert_eq!(p.partitions, Some((0, 12)));
        assert_eq!(p.want_labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert_eq!(
            p.want_annotations[APPLIED_CONFIG_ANNOTATION],
            "retention.ms"
        );
    }

    #[test]
    fn what_is_as_declared_is_unchanged() {
        let d = declared(Some(12), Some(3), &[("retention.ms", "1000")]);
        let p = plan_topic(&d, Some(&live_from(&d)));
        assert_eq!(p.action, Action::Unchanged, "{p:?}");
        // Absent partitions and factor are not managed: whatever the cluster has is fine.
        let loose = declared(None, None, &[("retention.ms", "1000")]);
        let mut live = live_from(&d);
        live.partitions = 30;
        assert_eq!(plan_topic(&loose, Some(&live)).action, Action::Unchanged);
    }

    #[test]
    fn changes_are_listed_old_to_new_and_fewer_partitions_are_refused() {
        let before = declared(
            Some(6),
            Some(2),
            &[("retention.ms", "1000"), ("segment.ms", "5000")],
        );
        let mut live = live_from(&before);
        // Set outside the manifest: left alone.
        live.config
            .insert("max.message.bytes".into(), "2048".into());
        let after = declared(
            Some(12),
            Some(3),
            &[("retention.ms", "2000"), ("cleanup.policy", "delete")],
        );
        let p = plan_topic(&after, Some(&live));
        assert_eq!(p.action, Action::Change);
        assert_eq!(p.partitions, Some((6, 12)));
        assert_eq!(p.replication_factor, Some((2, 3)));
        let cfg: Vec<(String, Option<String>, Option<String>)> = p
            .config
            .iter()
            .map(|c| (c.key.clone(), c.old.clone(), c.new.clone()))
            .collect();
        assert_eq!(
            cfg,
            [
                (
                    "cleanup.policy".to_string(),
                    None,
                    Some("delete".to_string())
                ),
                (
                    "retention.ms".to_string(),
                    Some("1000".to_string()),
                    Some("2000".to_string())
                ),
                ("segment.ms".to_string(), Some("5000".to_string()), None),
            ]
        );
        let fewer = declared(Some(3), Some(2), &[]);
        let p = plan_topic(&fewer, Some(&live));
        assert_eq!(p.action, Action::Refused);
        assert!(
            p.refused[0].contains("partitions 6 -> 3"),
            "{:?}",
            p.refused
        );
    }

    #[test]
    fn declaring_a_key_the_topic_already_has_is_only_bookkeeping() {
        let before = declared(Some(1), None, &[("retention.ms", "1000")]);
        let mut live = live_from(&before);
        live.config.insert("segment.ms".into(), "5000".into());
        let after = declared(
            Some(1),
            None,
            &[("retention.ms", "1000"), ("segment.ms", "5000")],
        );
        let p = plan_topic(&after, Some(&live));
        assert_eq!(p.action, Action::Unchanged, "{p:?}");
        assert!(p.bookkeeping && p.writes() && !p.changes());
        assert_eq!(
            p.want_annotations[APPLIED_CONFIG_ANNOTATION],
            "retention.ms,segment.ms"
        );
    }

    #[test]
    fn an_existing_topic_is_adopted_with_the_label() {
        let d = declared(Some(1), None, &[]);
        let live = Live {
            partitions: 1,
            replication_factor: 1,
            ..Live::default()
        };
        let p = plan_topic(&d, Some(&live));
        assert_eq!(p.action, Action::Change);
        assert_eq!(p.labels[0].key, MANAGED_BY_LABEL);
    }

    #[test]
    fn prune_takes_only_managed_undeclared_non_internal_topics() {
        let managed = Live {
            labels: [(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into(),
            ..Live::default()
        };
        let live: BTreeMap<String, Live> = [
            ("kept".to_string(), managed.clone()),
            ("gone".to_string(), managed.clone()),
            ("__consumer_offsets".to_string(), managed.clone()),
            ("hand-made".to_string(), Live::default()),
        ]
        .into();
        let declared: BTreeSet<String> = ["kept".to_string()].into();
        let p: Vec<String> = prune(&live, &declared)
            .into_iter()
            .map(|p| p.topic)
            .collect();
        assert_eq!(p, ["gone"]);
    }
}
