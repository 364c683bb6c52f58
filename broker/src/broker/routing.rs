//! Where a request goes: this broker's partitions, the leaders it knows, and catching up with the controller before calling a topic unknown.

use super::*;

impl Broker {
    /// Brokers and their client addresses. This broker's own entry is always its current
    /// address, even before its registration (after a restart on a new port) is committed.
    pub(crate) fn known_brokers(&self) -> BTreeMap<i32, String> {
        let mut out: BTreeMap<i32, String> = self
            .controller
            .state()
            .brokers
            .values()
            .map(|b| (b.node_id, b.address.clone()))
            .collect();
        out.insert(self.node_id(), self.addresses.client.clone());
        out
    }

    /// A partition's leader: what this broker's own replica of it knows from its Raft group
    /// (freshest, right after an election), else what the controller recorded.
    pub(crate) fn current_leader(&self, record: &TopicRecord, partition: i32) -> Option<i32> {
        let local = self
            .local_topic(&record.name)
            .filter(|t| t.record.topic_id == record.topic_id);
        if let Some(r) = local.and_then(|t| t.replicas.read().get(&partition).cloned())
            && let Some(leader) = r.leader()
        {
            return Some(leader);
        }
        record.leader(partition)
    }

    /// The metadata of a topic, or UNKNOWN_TOPIC_OR_PARTITION.
    pub(crate) fn topic_record(&self, name: &str) -> Result<TopicRecord> {
        self.controller
            .state()
            .topics
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic(name.to_string()))
    }

    /// Catches up with the controller's committed metadata when `found` says this broker
    /// does not know the topic or partition asked for: its metadata may simply be behind (a
    /// broker that just restarted, a topic created a moment ago through another broker).
    /// Returns whether it caught up (then ask again: the answer is authoritative), or the
    /// original answer when it was not about an unknown topic; a broker that cannot catch
    /// up in time answers the retriable [`Error::MetadataBehind`], never "unknown topic".
    pub(crate) async fn catch_up_if_unknown<T>(
        &self,
        topic: &str,
        found: &Result<T>,
    ) -> Result<bool> {
        if !matches!(
            found,
            Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. })
        ) {
            return Ok(false);
        }
        self.controller
            .catch_up(self.config.metadata_catch_up_timeout)
            .await
            .map_err(|e| Error::MetadataBehind {
                topic: topic.to_string(),
                node: self.node_id(),
                cause: e.to_string(),
            })?;
        Ok(true)
    }

    /// [`Broker::partition`], caught up with the controller first when this broker does
    /// not know the topic or partition.
    pub(crate) async fn partition_current(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<PartitionRef> {
        let found = self.partition(topic, partition);
        if self.catch_up_if_unknown(topic, &found).await? {
            return self.partition(topic, partition);
        }
        found
    }

    /// [`Broker::partition`] for each of `asked`, with one catch-up with the controller
    /// when this broker does not know some of them.
    pub(crate) async fn partitions_current<'a>(
        &self,
        asked: impl IntoIterator<Item = (&'a str, i32)>,
    ) -> Vec<Result<PartitionRef>> {
        let asked: Vec<_> = asked.into_iter().collect();
        let mut found: Vec<_> = asked.iter().map(|(t, p)| self.partition(t, *p)).collect();
        let unknown = |r: &Result<PartitionRef>| {
            matches!(
                r,
                Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. })
            )
        };
        let Some(first) = found.iter().position(unknown) else {
            return found;
        };
        let caught_up = self
            .controller
            .catch_up(self.config.metadata_catch_up_timeout)
            .await
            .map_err(|e| e.to_string());
        for (i, (topic, partition)) in asked.iter().enumerate().skip(first) {
            if !unknown(&found[i]) {
                continue;
            }
            found[i] = match &caught_up {
                Ok(()) => self.partition(topic, *partition),
                Err(cause) => Err(Error::MetadataBehind {
                    topic: topic.to_string(),
                    node: self.node_id(),
                    cause: cause.clone(),
                }),
            };
        }
        found
    }

    /// [`Broker::topic_record`], caught up with the controller first when this broker does
    /// not know the topic.
    pub(crate) async fn topic_record_current(&self, name: &str) -> Result<TopicRecord> {
        let found = self.topic_record(name);
        if self.catch_up_if_unknown(name, &found).await? {
            return self.topic_record(name);
        }
        found
    }

    /// This broker's partitions of a topic, if it has any.
    pub(crate) fn local_topic(&self, name: &str) -> Option<Arc<LocalTopic>> {
        self.local.read().get(name).cloned()
    }

    pub(crate) fn local_topics(&self) -> Vec<Arc<LocalTopic>> {
        self.local.read().values().cloned().collect()
    }

    /// A partition this broker leads, or the error that tells the client where to go.
    pub(crate) fn partition(&self, topic: &str, partition: i32) -> Result<PartitionRef> {
        let local = self.local.read().get(topic).cloned();
        let state = self.controller.state();
        if let Some(t) = local {
            if let Some(p) = t.partitions.get(&partition) {
                return Ok(PartitionRef::Local(p.clone()));
            }
            if let Some(r) = t.replicas.read().get(&partition).cloned() {
                r.check_leader(&state)?;
                return Ok(PartitionRef::Replica(r));
            }
        }
        let record = state
            .topics
            .get(topic)
            .ok_or_else(|| Error::UnknownTopic(topic.to_string()))?;
        if partition < 0 || partition >= record.partitions {
            return Err(Error::UnknownPartition {
                topic: topic.to_string(),
                partition,
                count: record.partitions,
            });
        }
        let unavailable = || Error::LeaderNotAvailable {
            topic: topic.to_string(),
            partition,
        };
        let leader = record.leader(partition).ok_or_else(unavailable)?;
        if leader == self.node_id() {
            return Err(unavailable());
        }
        let address = state
            .brokers
            .get(&leader)
            .map(|b| b.address.clone())
            .ok_or_else(unavailable)?;
        Err(Error::NotLeader {
            topic: topic.to_string(),
            partition,
            leader,
            address,
        })
    }
}
