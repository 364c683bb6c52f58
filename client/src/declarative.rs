//! Applying a plan of `sluice_manifest::plan` through [`Admin`]: the cluster's topics as the
//! plan sees them, and each planned create, change or delete as the admin call that makes
//! it. Shared by `sluice apply` and the Kubernetes operator.

use std::collections::BTreeMap;

use sluice_manifest::plan::{Action, Live, TopicPlan};

use crate::admin::{Admin, AlterTopic, NewTopic, TopicMetadata};
use crate::error::Result;

/// Every topic of the cluster as the plan sees it (one ListTopics call).
pub async fn live_topics(admin: &Admin) -> Result<BTreeMap<String, Live>> {
    Ok(admin
        .list_topics()
        .await?
        .into_iter()
        .map(|t| {
            (
                t.name,
                Live {
                    partitions: t.partitions,
                    replication_factor: t.replication_factor,
                    config: t.config.into_iter().collect(),
                    labels: t.labels.into_iter().collect(),
                    annotations: t.annotations.into_iter().collect(),
                },
            )
        })
        .collect())
}

/// What creates a topic as planned.
pub fn new_topic(p: &TopicPlan) -> NewTopic {
    let (_, partitions) = p.partitions.unwrap_or((0, 1));
    let (_, rf) = p.replication_factor.unwrap_or((0, -1));
    let mut t = NewTopic::new(&p.topic, partitions, rf);
    for c in &p.config {
        if let Some(v) = &c.new {
            t = t.config(&c.key, v);
        }
    }
    t.labels = p.want_labels.clone();
    t.annotations = p.want_annotations.clone();
    t
}

/// What changes a topic as planned.
pub fn alter(p: &TopicPlan) -> AlterTopic {
    AlterTopic {
        set_config: p
            .config
            .iter()
            .filter_map(|c| c.new.clone().map(|v| (c.key.clone(), v)))
            .collect(),
        delete_config: p
            .config
            .iter()
            .filter(|c| c.new.is_none())
            .map(|c| c.key.clone())
            .collect(),
        partitions: p.partitions.map(|(_, n)| n),
        replication_factor: p.replication_factor.map(|(_, n)| n),
        metadata: (!p.labels.is_empty() || p.bookkeeping).then(|| TopicMetadata {
            labels: p.want_labels.clone(),
            annotations: p.want_annotations.clone(),
        }),
    }
}

/// Makes (or, with `validate_only`, checks with the brokers) one planned change; nothing
/// for a plan that writes nothing (unchanged, refused) and, when validating, for a delete.
pub async fn execute(admin: &Admin, p: &TopicPlan, validate_only: bool) -> Result<()> {
    match p.action {
        Action::Create => {
            admin.create_topic(new_topic(p), validate_only).await?;
        }
        Action::Change | Action::Unchanged if p.writes() => {
            admin.alter_topic(&p.topic, alter(p), validate_only).await?;
        }
        Action::Delete if !validate_only => admin.delete_topic(&p.topic).await?,
        Action::Change | Action::Delete | Action::Unchanged | Action::Refused => {}
    }
    Ok(())
}
