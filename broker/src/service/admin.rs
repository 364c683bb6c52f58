//! The `Admin` service: topics and cluster metadata, from the controller's replicated
//! metadata; a topic's description gathers each partition's figures from the broker that
//! holds it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::TopicConfig;
use sluice_proto::pb::{self, admin_client::AdminClient, admin_server::Admin};
use tonic::{Request, Response, Status};

use crate::broker::Broker;
use crate::coordinator::OFFSETS_TOPIC;
use crate::error::Error;
use crate::metadata::TopicRecord;

/// How long gathering a description waits for another broker.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub(crate) struct AdminService {
    broker: Arc<Broker>,
}

impl AdminService {
    pub(crate) fn new(broker: Arc<Broker>) -> Self {
        AdminService { broker }
    }

    /// A partition this broker leads (replicated partitions are described by their leader).
    fn local_partition(&self, record: &TopicRecord, p: i32) -> Option<pb::PartitionDescription> {
        let topic = self.broker.local_topic(&record.name)?;
        let (replicas, target) = record.replicas_of(p);
        let (adding, removing) = changing(&replicas, target);
        let part = topic.partition(p)?;
        let view = part.replication(&replicas, &adding)?;
        let o = part.offsets();
        Some(pb::PartitionDescription {
            partition: p,
            leader: self.broker.node_id(),
            isr: view.in_sync,
            replicas,
            log_start_offset: o.log_start,
            high_watermark: part.high_watermark(),
            log_end_offset: o.log_end,
            size_bytes: o.size_bytes,
            segments: o.segments,
            adding_replicas: adding,
            removing_replicas: removing,
            records_behind: view.records_behind,
        })
    }

    /// Partitions held elsewhere, asked of their leaders (one call per broker). The leader is
    /// the freshest this broker knows: its own replica's Raft view when it holds one (right
    /// after an election, before the controller has recorded it), else the controller's record.
    async fn remote_partitions(
        &self,
        record: &TopicRecord,
        wanted: &[i32],
    ) -> BTreeMap<i32, pb::PartitionDescription> {
        let state = self.broker.controller.state();
        let mut by_broker: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for &p in wanted {
            if let Some(leader) = self.broker.current_leader(record, p) {
                by_broker.entry(leader).or_default().push(p);
            }
        }
        let mut out = BTreeMap::new();
        let calls = by_broker
            .keys()
            .filter_map(|id| state.brokers.get(id))
            .map(|b| {
                let channel = self.broker.peers.channel(&b.address);
                let req = pb::DescribeTopicRequest {
                    name: record.name.clone(),
                    local_only: true,
                };
                async move {
                    let mut client = AdminClient::new(channel.ok()?);
                    let resp = tokio::time::timeout(PEER_TIMEOUT, client.describe_topic(req))
                        .await
                        .ok()?
                        .ok()?;
                    resp.into_inner().topic
                }
            });
        for d in futures::future::join_all(calls).await.into_iter().flatten() {
            for p in d.partitions {
                out.insert(p.partition, p);
            }
        }
        out
    }

    pub(crate) async fn describe(
        &self,
        record: &TopicRecord,
        local_only: bool,
    ) -> Result<pb::TopicDescription, Error> {
        let config =
            TopicConfig::from_map(&record.config, record.replication_factor).map_err(|e| {
                Error::Internal(format!(
                    "stored config of '{}' is invalid: {e}",
                    record.name
                ))
            })?;
        let mut partitions = Vec::new();
        let mut missing = Vec::new();
        for p in 0..record.partitions {
            match self.local_partition(record, p) {
                Some(d) => partitions.push(d),
                None if !local_only => missing.push(p),
                None => {}
            }
        }
        let mut remote = self.remote_partitions(record, &missing).await;
        for p in missing {
            let (replicas, target) = record.replicas_of(p);
            let (adding_replicas, removing_replicas) = changing(&replicas, target);
            partitions.push(remote.remove(&p).unwrap_or(pb::PartitionDescription {
                partition: p,
                // The leader did not answer: shown as offline.
                leader: -1,
                replicas,
                isr: Vec::new(),
                log_start_offset: -1,
                high_watermark: -1,
                log_end_offset: -1,
                size_bytes: 0,
                segments: 0,
                adding_replicas,
                removing_replicas,
                records_behind: -1,
            }));
        }
        partitions.sort_by_key(|p| p.partition);
        Ok(pb::TopicDescription {
            name: record.name.clone(),
            replication_factor: record.replication_factor,
            config: config.to_map().into_iter().collect(),
            partitions,
            overrides: record.config.keys().cloned().collect(),
            labels: record.meta.labels.clone().into_iter().collect(),
            annotations: record.meta.annotations.clone().into_iter().collect(),
        })
    }
}

/// The replicas a partition is adding and removing while they change (both empty otherwise).
fn changing(replicas: &[i32], target: Option<&Vec<i32>>) -> (Vec<i32>, Vec<i32>) {
    let Some(target) = target else {
        return (Vec::new(), Vec::new());
    };
    (
        target
            .iter()
            .filter(|r| !replicas.contains(r))
            .copied()
            .collect(),
        replicas
            .iter()
            .filter(|r| !target.contains(r))
            .copied()
            .collect(),
    )
}

#[tonic::async_trait]
impl Admin for AdminService {
    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().name))]
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        let req = request.into_inner();
        if req.name == OFFSETS_TOPIC {
            return Err(Error::InvalidTopic(format!(
                "'{OFFSETS_TOPIC}' is Sluice's internal topic of consumer group offsets; it is created when a group is first used (size it with the brokers' --offsets-topic-partitions)"
            ))
            .into());
        }
        let record = self
            .broker
            .create_topic(
                req.name,
                req.partitions,
                req.replication_factor,
                req.config.into_iter().collect(),
                crate::metadata::TopicMeta {
                    labels: req.labels.into_iter().collect(),
                    annotations: req.annotations.into_iter().collect(),
                },
                req.validate_only,
            )
            .await?;
        let topic = self.describe(&record, req.validate_only).await?;
        Ok(Response::new(pb::CreateTopicResponse {
            topic: Some(topic),
        }))
    }

    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().name))]
    async fn alter_topic(
        &self,
        request: Request<pb::AlterTopicRequest>,
    ) -> Result<Response<pb::AlterTopicResponse>, Status> {
        let req = request.into_inner();
        if req.name == OFFSETS_TOPIC && req.partitions > 0 {
            return Err(Error::InvalidPartitions(format!(
                "'{OFFSETS_TOPIC}' keeps its partition count: each group lives in partition hash(group) % count, so a new count would lose every group's offsets"
            ))
            .into());
        }
        let change = crate::broker::TopicChange {
            set: req.set_config.into_iter().collect(),
            delete: req.delete_config,
            partitions: (req.partitions > 0).then_some(req.partitions),
            replication_factor: (req.replication_factor > 0).then_some(req.replication_factor),
            meta: req.set_metadata.then(|| crate::metadata::TopicMeta {
                labels: req.labels.into_iter().collect(),
                annotations: req.annotations.into_iter().collect(),
            }),
        };
        let (changes, record) = self
            .broker
            .alter_topic(&req.name, change, req.validate_only)
            .await?;
        let topic = self.describe(&record, true).await?;
        Ok(Response::new(pb::AlterTopicResponse {
            partitions_before: changes.partitions.0,
            partitions_after: changes.partitions.1,
            replication_factor_before: changes.replication_factor.0,
            replication_factor_after: changes.replication_factor.1,
            reassignments: changes
                .reassignments
                .into_iter()
                .map(|(partition, before, after)| pb::Reassignment {
                    partition,
                    replicas_before: before,
                    replicas_after: after,
                })
                .collect(),
            changes: changes
                .config
                .into_iter()
                .map(|c| pb::ConfigChange {
                    key: c.key,
                    old_value: c.old_value,
                    new_value: c.new_value,
                    old_override: c.old_override,
                    new_override: c.new_override,
                })
                .collect(),
            topic: Some(topic),
            metadata_changed: changes.meta_changed,
        }))
    }

    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().name))]
    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let name = request.into_inner().name;
        if name == OFFSETS_TOPIC {
            return Err(Error::InvalidTopic(format!(
                "'{OFFSETS_TOPIC}' holds every consumer group's committed offsets and cannot be deleted; delete groups instead"
            ))
            .into());
        }
        self.broker.delete_topic(&name).await?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let topics = self
            .broker
            .controller
            .state()
            .topics
            .values()
            .map(|t| pb::TopicSummary {
                name: t.name.clone(),
                partitions: t.partitions,
                replication_factor: t.replication_factor,
                config: t.config.clone().into_iter().collect(),
                labels: t.meta.labels.clone().into_iter().collect(),
                annotations: t.meta.annotations.clone().into_iter().collect(),
            })
            .collect();
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        let req = request.into_inner();
        let record = self.broker.topic_record_current(&req.name).await?;
        let topic = self.describe(&record, req.local_only).await?;
        Ok(Response::new(pb::DescribeTopicResponse {
            topic: Some(topic),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn drain_brokers(
        &self,
        request: Request<pb::DrainBrokersRequest>,
    ) -> Result<Response<pb::DrainBrokersResponse>, Status> {
        let brokers = request.into_inner().brokers.into_iter().collect();
        let progress = self.broker.drain_brokers(brokers).await?;
        Ok(Response::new(pb::DrainBrokersResponse {
            brokers: progress
                .remaining
                .into_iter()
                .map(|(node_id, replicas)| pb::DrainedBroker { node_id, replicas })
                .collect(),
            partitions_moving: progress.moving,
        }))
    }

    async fn metadata(
        &self,
        request: Request<pb::MetadataRequest>,
    ) -> Result<Response<pb::MetadataResponse>, Status> {
        let wanted = request.into_inner().topics;
        // A topic asked for by name that this broker does not know may exist already: the
        // answer waits for this broker to catch up with the controller (or fails, retriable).
        let mut state = self.broker.controller.state();
        if let Some(missing) = wanted.iter().find(|t| !state.topics.contains_key(*t)) {
            let unknown: Result<(), _> = Err(crate::error::Error::UnknownTopic(missing.clone()));
            if self.broker.catch_up_if_unknown(missing, &unknown).await? {
                state = self.broker.controller.state();
            }
        }
        let topics = state
            .topics
            .values()
            .filter(|t| wanted.is_empty() || wanted.contains(&t.name))
            .map(|t| pb::TopicMetadata {
                name: t.name.clone(),
                max_message_bytes: TopicConfig::from_map(&t.config, t.replication_factor)
                    .map_or(TopicConfig::default().max_message_bytes, |c| {
                        c.max_message_bytes
                    }),
                partitions: (0..t.partitions)
                    .map(|p| {
                        let replicas = t.replicas.get(p as usize).cloned().unwrap_or_default();
                        pb::PartitionMetadata {
                            partition: p,
                            leader: self.broker.current_leader(t, p).unwrap_or(-1),
                            isr: replicas.clone(),
                            replicas,
                        }
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::MetadataResponse {
            cluster_id: self.broker.cluster_id(),
            controller_id: self.broker.controller_leader().unwrap_or(-1),
            brokers: self
                .broker
                .known_brokers()
                .into_iter()
                .map(|(node_id, address)| pb::BrokerInfo { node_id, address })
                .collect(),
            topics,
        }))
    }
}
