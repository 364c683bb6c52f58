//! Consumer groups as this broker serves them: the internal `__consumer_offsets` topic
//! (created when a group is first used), finding a group's coordinator, and handing the
//! local leader of a group's offsets partition to the [`Coordinator`].

use super::*;
use crate::coordinator::{
    self, Answer, Committed, GroupView, Heartbeat, OFFSETS_TOPIC, TopicPartition,
};

/// Where a group's coordinator is.
#[derive(Debug, Clone)]
pub(crate) struct CoordinatorAddress {
    pub node_id: i32,
    pub address: String,
    pub partition: i32,
}

impl Broker {
    /// The `__consumer_offsets` topic, created if it does not exist yet: its configured
    /// partitions, its replication factor or the live broker count if fewer,
    /// `min.insync.replicas` 2 where it has two replicas or more, no time or size retention
    /// (the coordinator deletes what its rewrites make obsolete, see [`Coordinator`]), its
    /// configured segment size.
    pub(crate) async fn offsets_topic(self: &Arc<Self>) -> Result<TopicRecord> {
        if let Ok(r) = self.topic_record(OFFSETS_TOPIC) {
            return Ok(r);
        }
        if let Err(e) = self
            .controller
            .catch_up(self.config.metadata_catch_up_timeout)
            .await
        {
            tracing::debug!(cause = %e, "catching up before creating {OFFSETS_TOPIC}");
        }
        if let Ok(r) = self.topic_record(OFFSETS_TOPIC) {
            return Ok(r);
        }
        let live = self.live_brokers().len().max(1) as i32;
        let rf = self.config.offsets_topic_replication_factor.min(live);
        let config = BTreeMap::from([
            (
                "min.insync.replicas".to_string(),
                if rf >= 2 { "2" } else { "1" }.to_string(),
            ),
            ("retention.ms".to_string(), "-1".to_string()),
            (
                "segment.bytes".to_string(),
                self.config.offsets_topic_segment_bytes.to_string(),
            ),
        ]);
        let partitions = self.config.offsets_topic_partitions;
        match self
            .create_topic(
                OFFSETS_TOPIC.to_string(),
                partitions,
                rf,
                config,
                Default::default(),
                false,
            )
            .await
        {
            Ok(r) => {
                tracing::info!(partitions, replication_factor = rf, "created the consumer offsets topic {OFFSETS_TOPIC}");
                Ok(r)
            }
            Err(Error::TopicExists(_)) => self.topic_record(OFFSETS_TOPIC).map_err(|_| {
                Error::CoordinatorNotAvailable(format!(
                    "{OFFSETS_TOPIC} was just created by another broker and is not known here yet; retry"
                ))
            }),
            Err(e) => Err(Error::CoordinatorNotAvailable(format!(
                "{OFFSETS_TOPIC}, which holds consumer groups' offsets, could not be created ({e}); retry"
            ))),
        }
    }

    /// Which broker coordinates `group`: the leader of its offsets partition.
    pub(crate) async fn find_coordinator(
        self: &Arc<Self>,
        group: &str,
    ) -> Result<CoordinatorAddress> {
        coordinator::validate_group(group)?;
        let record = self.offsets_topic().await?;
        let partition = coordinator::partition_for(group, record.partitions);
        let state = self.controller.state();
        self.current_leader(&record, partition)
            .and_then(|l| state.brokers.get(&l))
            .map(|b| CoordinatorAddress {
                node_id: b.node_id,
                address: b.address.clone(),
                partition,
            })
            .ok_or_else(|| {
                Error::CoordinatorNotAvailable(format!(
                    "group '{group}': {OFFSETS_TOPIC}-{partition}, which holds it, has no leader right now; retry"
                ))
            })
    }

    /// The replica here that leads `group`'s offsets partition, or NOT_COORDINATOR.
    async fn group_replica(self: &Arc<Self>, group: &str) -> Result<Arc<Replica>> {
        coordinator::validate_group(group)?;
        let record = match self.topic_record(OFFSETS_TOPIC) {
            Ok(r) => r,
            Err(_) => self.offsets_topic().await?,
        };
        let partition = coordinator::partition_for(group, record.partitions);
        let replica = self
            .local_topic(OFFSETS_TOPIC)
            .filter(|t| t.record.topic_id == record.topic_id)
            .and_then(|t| t.replicas.read().get(&partition).cloned());
        match replica {
            Some(r) if r.is_leader() => Ok(r),
            _ => Err(Error::NotCoordinator {
                group: group.to_string(),
                partition,
                node: self.node_id(),
                leader: self
                    .current_leader(&record, partition)
                    .filter(|l| *l != self.node_id()),
            }),
        }
    }

    /// Commits `offsets` (partition, next offset to read, metadata) for `group`, stamped
    /// with this broker's clock. Every partition must exist.
    pub(crate) async fn commit_offsets(
        self: &Arc<Self>,
        group: &str,
        member: Option<(&str, i32)>,
        offsets: Vec<(TopicPartition, i64, String)>,
        timeout: Duration,
    ) -> Result<()> {
        let state = self.controller.state();
        existing(&state, offsets.iter().map(|(tp, _, _)| tp))?;
        let replica = self.group_replica(group).await?;
        let now = now_ms();
        let offsets = offsets
            .into_iter()
            .map(|(tp, offset, metadata)| {
                (
                    tp,
                    Committed {
                        offset,
                        metadata,
                        commit_ms: now,
                    },
                )
            })
            .collect();
        self.coordinator
            .commit(&replica, &state, group, member, offsets, timeout)
            .await
    }

    /// Resets `group`'s committed offsets, also while it has members (see
    /// [`Coordinator::reset`]). Every partition must exist.
    pub(crate) async fn reset_offsets(
        self: &Arc<Self>,
        group: &str,
        offsets: Vec<(TopicPartition, i64)>,
        timeout: Duration,
    ) -> Result<usize> {
        let state = self.controller.state();
        existing(&state, offsets.iter().map(|(tp, _)| tp))?;
        let replica = self.group_replica(group).await?;
        let now = now_ms();
        let offsets = offsets
            .into_iter()
            .map(|(tp, offset)| {
                (
                    tp,
                    Committed {
                        offset,
                        metadata: String::new(),
                        commit_ms: now,
                    },
                )
            })
            .collect();
        self.coordinator
            .reset(&replica, &state, group, offsets, timeout)
            .await
    }

    /// Deletes `group` at its coordinator (here); see [`Coordinator::delete_group`].
    pub(crate) async fn delete_group(
        self: &Arc<Self>,
        group: &str,
        force: bool,
        timeout: Duration,
    ) -> Result<(usize, usize)> {
        let replica = self.group_replica(group).await?;
        let state = self.controller.state();
        self.coordinator
            .delete_group(&replica, &state, group, force, timeout)
            .await
    }

    /// What `group` has committed: of `wanted`, or everything.
    pub(crate) async fn committed_offsets(
        self: &Arc<Self>,
        group: &str,
        wanted: Option<&[TopicPartition]>,
    ) -> Result<Vec<(TopicPartition, Committed)>> {
        let replica = self.group_replica(group).await?;
        self.coordinator.fetch(&replica, group, wanted).await
    }

    /// `group` at its coordinator (here), or GROUP_ID_NOT_FOUND.
    pub(crate) async fn describe_group(self: &Arc<Self>, group: &str) -> Result<GroupView> {
        let replica = self.group_replica(group).await?;
        self.coordinator
            .describe(&replica, group)
            .await?
            .ok_or_else(|| Error::GroupNotFound(group.to_string()))
    }

    /// A member's heartbeat, at its group's coordinator (here). A subscription by
    /// `topic_regex` is resolved here, against the topics as of now (internal ones left
    /// out), so topics created later that match are assigned at the next heartbeat.
    pub(crate) async fn group_heartbeat(
        self: &Arc<Self>,
        group: &str,
        mut hb: Heartbeat,
        topic_regex: Option<&str>,
    ) -> Result<Answer> {
        let replica = self.group_replica(group).await?;
        let state = self.controller.state();
        if let Some(pattern) = topic_regex {
            let re = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                Error::InvalidRequest(format!(
                    "group '{group}': the subscription pattern '{pattern}' is not a valid regular expression: {e}"
                ))
            })?;
            hb.topics.extend(
                state
                    .topics
                    .keys()
                    .filter(|t| *t != OFFSETS_TOPIC && re.is_match(t))
                    .cloned(),
            );
        }
        let partitions = |topic: &str| state.topics.get(topic).map(|t| t.partitions);
        self.coordinator
            .heartbeat(&replica, group, hb, &partitions)
            .await
    }

    /// The groups of the offsets partitions led here. A partition still loading is left
    /// out (its groups show once it has loaded).
    pub(crate) async fn local_groups(&self) -> Vec<GroupView> {
        let Some(topic) = self.local_topic(OFFSETS_TOPIC) else {
            return Vec::new();
        };
        let replicas: Vec<_> = topic
            .replicas
            .read()
            .values()
            .filter(|r| r.is_leader())
            .cloned()
            .collect();
        let mut out = Vec::new();
        for r in replicas {
            match self.coordinator.groups(&r).await {
                Ok(groups) => out.extend(groups),
                Err(e) => {
                    tracing::debug!(partition = r.id, cause = %e, "listing the groups of an offsets partition");
                }
            }
        }
        out
    }
}

/// UNKNOWN_TOPIC_OR_PARTITION for the first of `partitions` the cluster does not have.
fn existing<'a>(
    state: &crate::controller::ClusterState,
    partitions: impl IntoIterator<Item = &'a TopicPartition>,
) -> Result<()> {
    for (topic, partition) in partitions {
        let record = state
            .topics
            .get(topic)
            .ok_or_else(|| Error::UnknownTopic(topic.clone()))?;
        if *partition < 0 || *partition >= record.partitions {
            return Err(Error::UnknownPartition {
                topic: topic.clone(),
                partition: *partition,
                count: record.partitions,
            });
        }
    }
    Ok(())
}
