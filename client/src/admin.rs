//! [`Admin`]: create, alter, delete, list and describe topics; cluster metadata.

use std::collections::BTreeMap;

use sluice_proto::pb;

use crate::cluster::{ClientConfig, Cluster};
use crate::error::{Error, Result};
use crate::groups::GroupCalls;

/// A change to a topic: config overrides to set and to remove, the partition count to grow
/// to (partitions are only ever added), the replication factor, and labels and annotations
/// to replace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlterTopic {
    pub set_config: BTreeMap<String, String>,
    pub delete_config: Vec<String>,
    pub partitions: Option<i32>,
    /// The replication factor to change to (2 or more, from 2 or more). The call returns
    /// once the change is committed; each partition's leader then moves its replicas in the
    /// background ([`Admin::describe_topic`] shows the progress).
    pub replication_factor: Option<i32>,
    /// New labels and annotations, replacing the old whole, both maps (`None`: unchanged;
    /// the same ones again: no change, `metadata_changed` false).
    pub metadata: Option<TopicMetadata>,
}

/// A topic's Kubernetes-style labels and annotations, kept in the cluster's metadata
/// (`sluice apply` marks the topics it manages with them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicMetadata {
    /// Keys: an optional DNS-subdomain prefix and '/', then a name of 1-63 letters, digits,
    /// '-', '_' and '.'; values empty or such a name (Kubernetes' rules; the broker refuses
    /// others with INVALID_REQUEST naming the key).
    pub labels: BTreeMap<String, String>,
    /// Keys as labels'; values any text, 256 KiB in all.
    pub annotations: BTreeMap<String, String>,
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    /// -1: the broker's default.
    pub replication_factor: i32,
    pub config: BTreeMap<String, String>,
    /// Kubernetes-style labels (rules: [`TopicMetadata::labels`]).
    pub labels: BTreeMap<String, String>,
    /// Kubernetes-style annotations (rules: [`TopicMetadata::annotations`]).
    pub annotations: BTreeMap<String, String>,
}

impl NewTopic {
    pub fn new(name: impl Into<String>, partitions: i32, replication_factor: i32) -> Self {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor,
            config: BTreeMap::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// Adds a label (one with the same key is replaced).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds an annotation (one with the same key is replaced).
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }
}

#[derive(Debug, Clone)]
pub struct Admin {
    cluster: Cluster,
}

impl Admin {
    pub fn new(config: ClientConfig) -> Result<Self> {
        Ok(Admin {
            cluster: Cluster::new(config)?,
        })
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    #[tracing::instrument(skip(self))]
    pub async fn create_topic(
        &self,
        topic: NewTopic,
        validate_only: bool,
    ) -> Result<pb::TopicDescription> {
        let req = pb::CreateTopicRequest {
            name: topic.name,
            partitions: topic.partitions,
            replication_factor: topic.replication_factor,
            config: topic.config.into_iter().collect(),
            validate_only,
            labels: topic.labels.into_iter().collect(),
            annotations: topic.annotations.into_iter().collect(),
        };
        let what = format!("creating topic '{}'", req.name);
        let resp = self.cluster.admin_change(&what, |mut c| {
            let r = req.clone();
            async move { c.create_topic(r).await }
        });
        Ok(resp.await?.topic.unwrap_or_default())
    }

    /// Creates `name` for the dead letters of `source` (its partitions, replication factor
    /// and `min.insync.replicas`), unless it exists: whether it was created.
    pub async fn ensure_dead_letter_topic(&self, name: &str, source: &str) -> Result<bool> {
        match self.describe_topic(name).await {
            Ok(_) => return Ok(false),
            Err(e) if e.code() == Some(sluice_proto::ErrorCode::UnknownTopicOrPartition) => {}
            Err(e) => return Err(e),
        }
        let src = self.describe_topic(source).await?;
        let mut topic = NewTopic::new(
            name,
            src.partitions.len().max(1) as i32,
            src.replication_factor,
        )
        .annotation("sluice.io/dead-letters-of", source);
        if let Some(m) = src.config.get("min.insync.replicas") {
            topic = topic.config("min.insync.replicas", m.clone());
        }
        match self.create_topic(topic, false).await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some(sluice_proto::ErrorCode::TopicAlreadyExists) => Ok(false),
            Err(e) => Err(e),
        }
    }

    #[tracing::instrument(skip(self))]
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let req = pb::DeleteTopicRequest {
            name: name.to_string(),
        };
        self.cluster
            .admin_change(&format!("deleting topic '{name}'"), |mut c| {
                let r = req.clone();
                async move { c.delete_topic(r).await }
            })
            .await?;
        self.cluster.invalidate(name);
        Ok(())
    }

    /// Changes a topic, all or none (Kafka's IncrementalAlterConfigs, CreatePartitions and
    /// partition reassignment): config overrides set and removed, partitions added, the
    /// replication factor changed, labels and annotations replaced. Returns what changes
    /// (nothing: nothing to do); with `validate_only`, what would, changing nothing.
    #[tracing::instrument(skip(self))]
    pub async fn alter_topic(
        &self,
        name: &str,
        change: AlterTopic,
        validate_only: bool,
    ) -> Result<pb::AlterTopicResponse> {
        let (set_metadata, metadata) = match change.metadata {
            Some(m) => (true, m),
            None => (false, TopicMetadata::default()),
        };
        let req = pb::AlterTopicRequest {
            name: name.to_string(),
            set_config: change.set_config.into_iter().collect(),
            delete_config: change.delete_config,
            validate_only,
            partitions: change.partitions.unwrap_or(0),
            replication_factor: change.replication_factor.unwrap_or(0),
            set_metadata,
            labels: metadata.labels.into_iter().collect(),
            annotations: metadata.annotations.into_iter().collect(),
        };
        let what = format!("altering topic '{name}'");
        let resp = self.cluster.admin_change(&what, |mut c| {
            let r = req.clone();
            async move { c.alter_topic(r).await }
        });
        let resp = resp.await?;
        if !validate_only {
            // The route caches max.message.bytes and the partition count.
            self.cluster.invalidate(name);
        }
        Ok(resp)
    }

    /// [`Admin::alter_topic`] for config only: overrides to set and to remove.
    pub async fn alter_topic_config(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
        validate_only: bool,
    ) -> Result<pb::AlterTopicResponse> {
        let change = AlterTopic {
            set_config: set,
            delete_config: delete,
            partitions: None,
            replication_factor: None,
            metadata: None,
        };
        self.alter_topic(name, change, validate_only).await
    }

    pub async fn list_topics(&self) -> Result<Vec<pb::TopicSummary>> {
        let resp = self
            .cluster
            .admin_call(|mut c| async move { c.list_topics(pb::ListTopicsRequest {}).await });
        Ok(resp.await?.topics)
    }

    pub async fn describe_topic(&self, name: &str) -> Result<pb::TopicDescription> {
        let req = pb::DescribeTopicRequest {
            name: name.to_string(),
            local_only: false,
        };
        let resp = self.cluster.admin_call(|mut c| {
            let r = req.clone();
            async move { c.describe_topic(r).await }
        });
        Ok(resp.await?.topic.unwrap_or_default())
    }

    /// Makes the drained brokers exactly `brokers` (empty: none): they take no new
    /// replicas and their partitions move to the others in the background. Asking again
    /// is safe and answers the progress; a drained broker with 0 replicas left can go.
    pub async fn drain_brokers(&self, brokers: &[i32]) -> Result<pb::DrainBrokersResponse> {
        let req = pb::DrainBrokersRequest {
            brokers: brokers.to_vec(),
        };
        let resp = self.cluster.admin_call(|mut c| {
            let r = req.clone();
            async move { c.drain_brokers(r).await }
        });
        resp.await
    }

    pub async fn metadata(&self) -> Result<pb::MetadataResponse> {
        self.cluster.refresh(&[]).await
    }

    /// Every consumer group of the cluster (each broker lists those it coordinates), by
    /// name. Fails naming the brokers that did not answer, since their groups would be
    /// missing.
    pub async fn list_groups(&self) -> Result<Vec<pb::GroupSummary>> {
        let meta = self.cluster.refresh(&[]).await?;
        let timeout = self.cluster.config.request_timeout;
        let calls = meta.brokers.iter().map(|b| {
            let cluster = self.cluster.clone();
            let address = b.address.clone();
            async move {
                let mut client = cluster.groups_client(&address)?;
                match tokio::time::timeout(timeout, client.list_groups(pb::ListGroupsRequest {}))
                    .await
                {
                    Ok(Ok(r)) => Ok(r.into_inner().groups),
                    Ok(Err(s)) => Err(Error::from_status(&address, s)),
                    Err(_) => Err(Error::Timeout {
                        what: format!("listing the groups of the broker at {address}"),
                        after: timeout,
                        last: "no answer".into(),
                    }),
                }
            }
        });
        let mut groups: BTreeMap<String, pb::GroupSummary> = BTreeMap::new();
        for answer in futures::future::join_all(calls).await {
            for g in answer? {
                groups.entry(g.group.clone()).or_insert(g);
            }
        }
        Ok(groups.into_values().collect())
    }

    /// A group's committed offsets with each partition's log end offset and lag, from its
    /// coordinator. GROUP_ID_NOT_FOUND for a group with nothing committed.
    pub async fn describe_group(&self, group: &str) -> Result<pb::DescribeGroupResponse> {
        let calls = GroupCalls::new(self.cluster.clone(), group);
        let req = pb::DescribeGroupRequest {
            group: group.to_string(),
        };
        calls
            .call("describing the group", |mut c| {
                let req = req.clone();
                async move { c.describe_group(req).await }
            })
            .await
    }

    /// The offsets `group` has committed, every partition.
    pub async fn committed_offsets(&self, group: &str) -> Result<Vec<pb::CommittedOffset>> {
        GroupCalls::new(self.cluster.clone(), group)
            .committed(&[])
            .await
    }

    /// Resets `group`'s committed offsets (the next offset to read of each partition), also
    /// while the group has members: those owning the partitions continue from the new
    /// offsets at their next heartbeat, without a restart. Returns how many members were
    /// told.
    pub async fn reset_offsets(
        &self,
        group: &str,
        offsets: &[(crate::TopicPartition, i64)],
    ) -> Result<i32> {
        let req = pb::ResetOffsetsRequest {
            group: group.to_string(),
            partitions: crate::groups::commit_partitions(offsets),
        };
        GroupCalls::new(self.cluster.clone(), group)
            .call("resetting offsets", |mut c| {
                let req = req.clone();
                async move { c.reset_offsets(req).await }
            })
            .await
            .map(|r| r.members_notified)
    }

    /// Deletes `group`'s committed offsets; NON_EMPTY_GROUP while it has members unless
    /// `force` (which removes them). Returns (offsets deleted, members removed).
    pub async fn delete_group(&self, group: &str, force: bool) -> Result<(i32, i32)> {
        let req = pb::DeleteGroupRequest {
            group: group.to_string(),
            force,
        };
        GroupCalls::new(self.cluster.clone(), group)
            .call("deleting the group", |mut c| {
                let req = req.clone();
                async move { c.delete_group(req).await }
            })
            .await
            .map(|r| (r.offsets_deleted, r.members_removed))
    }

    /// Sets `group`'s committed offsets (the next offset to read of each partition), as a
    /// consumer's commit does. Refused while the group has members (they commit their own).
    pub async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(crate::TopicPartition, i64)],
    ) -> Result<()> {
        GroupCalls::new(self.cluster.clone(), group)
            .commit(offsets, None)
            .await
    }
}
