//! The `Groups` service: consumer groups' coordinators and committed offsets. Decodes,
//! calls the [`Broker`] (which hands the group to its coordinator), encodes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::pb;

use super::AdminService;
use crate::broker::Broker;
use crate::error::Error;

/// How long a commit waits for its acks=all write.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub(crate) struct GroupsService {
    broker: Arc<Broker>,
    admin: AdminService,
}

impl GroupsService {
    pub(crate) fn new(broker: Arc<Broker>) -> Self {
        GroupsService {
            admin: AdminService::new(broker.clone()),
            broker,
        }
    }

    /// Log end offsets (high watermarks: what a consumer can reach) of every partition of
    /// `topics`, asked of their leaders; a partition whose leader did not answer is left out.
    async fn log_ends(&self, topics: &BTreeSet<String>) -> BTreeMap<(String, i32), i64> {
        let mut out = BTreeMap::new();
        for topic in topics {
            let Ok(record) = self.broker.topic_record(topic) else {
                continue;
            };
            if let Ok(d) = self.admin.describe(&record, false).await {
                for p in d.partitions {
                    if p.leader >= 0 && p.high_watermark >= 0 {
                        out.insert((topic.clone(), p.partition), p.high_watermark);
                    }
                }
            }
        }
        out
    }
}

#[tonic::async_trait]
impl pb::groups_server::Groups for GroupsService {
    async fn find_coordinator(
        &self,
        request: tonic::Request<pb::FindCoordinatorRequest>,
    ) -> Result<tonic::Response<pb::FindCoordinatorResponse>, tonic::Status> {
        let c = self
            .broker
            .find_coordinator(&request.into_inner().group)
            .await?;
        Ok(tonic::Response::new(pb::FindCoordinatorResponse {
            node_id: c.node_id,
            address: c.address,
            partition: c.partition,
        }))
    }

    async fn offset_commit(
        &self,
        request: tonic::Request<pb::OffsetCommitRequest>,
    ) -> Result<tonic::Response<pb::OffsetCommitResponse>, tonic::Status> {
        let req = request.into_inner();
        let offsets = req
            .partitions
            .into_iter()
            .map(|p| ((p.topic, p.partition), p.offset, p.metadata))
            .collect();
        self.broker
            .commit_offsets(&req.group, offsets, COMMIT_TIMEOUT)
            .await?;
        Ok(tonic::Response::new(pb::OffsetCommitResponse {}))
    }

    async fn offset_fetch(
        &self,
        request: tonic::Request<pb::OffsetFetchRequest>,
    ) -> Result<tonic::Response<pb::OffsetFetchResponse>, tonic::Status> {
        let req = request.into_inner();
        let wanted: Vec<_> = req
            .partitions
            .iter()
            .map(|p| (p.topic.clone(), p.partition))
            .collect();
        let found = self
            .broker
            .committed_offsets(&req.group, (!wanted.is_empty()).then_some(&wanted[..]))
            .await?;
        let mut offsets: Vec<pb::CommittedOffset> = found
            .iter()
            .map(|((topic, partition), c)| pb::CommittedOffset {
                topic: topic.clone(),
                partition: *partition,
                offset: c.offset,
                metadata: c.metadata.clone(),
                commit_timestamp_ms: c.commit_ms,
            })
            .collect();
        // Asked for and never committed: -1, as Kafka answers.
        for (topic, partition) in wanted {
            if !found
                .iter()
                .any(|((t, p), _)| *t == topic && *p == partition)
            {
                offsets.push(pb::CommittedOffset {
                    topic,
                    partition,
                    offset: -1,
                    metadata: String::new(),
                    commit_timestamp_ms: -1,
                });
            }
        }
        Ok(tonic::Response::new(pb::OffsetFetchResponse { offsets }))
    }

    async fn list_groups(
        &self,
        _request: tonic::Request<pb::ListGroupsRequest>,
    ) -> Result<tonic::Response<pb::ListGroupsResponse>, tonic::Status> {
        let node = self.broker.node_id();
        let groups = self
            .broker
            .local_groups()
            .await
            .into_iter()
            .map(|g| {
                let topics: BTreeSet<&str> =
                    g.offsets.iter().map(|((t, _), _)| t.as_str()).collect();
                pb::GroupSummary {
                    group: g.group.clone(),
                    coordinator: node,
                    topics: topics.into_iter().map(str::to_string).collect(),
                    partitions: g.offsets.len() as i32,
                }
            })
            .collect();
        Ok(tonic::Response::new(pb::ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        request: tonic::Request<pb::DescribeGroupRequest>,
    ) -> Result<tonic::Response<pb::DescribeGroupResponse>, tonic::Status> {
        let group = request.into_inner().group;
        if !self.broker.group_exists(&group).await? {
            return Err(Error::GroupNotFound(group).into());
        }
        let committed = self.broker.committed_offsets(&group, None).await?;
        let topics: BTreeSet<String> = committed.iter().map(|((t, _), _)| t.clone()).collect();
        let ends = self.log_ends(&topics).await;
        let partitions = committed
            .into_iter()
            .map(|((topic, partition), c)| {
                let end = ends.get(&(topic.clone(), partition)).copied();
                pb::GroupPartition {
                    committed_offset: c.offset,
                    metadata: c.metadata,
                    commit_timestamp_ms: c.commit_ms,
                    log_end_offset: end.unwrap_or(-1),
                    lag: end.map_or(-1, |e| (e - c.offset).max(0)),
                    topic,
                    partition,
                }
            })
            .collect();
        Ok(tonic::Response::new(pb::DescribeGroupResponse {
            group,
            coordinator: self.broker.node_id(),
            partitions,
        }))
    }
}
