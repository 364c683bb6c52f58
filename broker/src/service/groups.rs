//! The `Groups` service: consumer groups' coordinators and committed offsets. Decodes,
//! calls the [`Broker`] (which hands the group to its coordinator), encodes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::pb;

use super::AdminService;
use crate::broker::Broker;
use crate::coordinator::{Heartbeat, TopicPartition};

/// Partitions grouped by topic, for the wire.
fn by_topic<'a>(tps: impl IntoIterator<Item = &'a TopicPartition>) -> Vec<pb::TopicPartitions> {
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in tps {
        topics.entry(t.as_str()).or_default().push(*p);
    }
    topics
        .into_iter()
        .map(|(topic, partitions)| pb::TopicPartitions {
            topic: topic.to_string(),
            partitions,
        })
        .collect()
}

/// How long a commit waits for its acks=all write.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a member waiting for partitions to be released heartbeats.
const WAITING_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);

/// How long `describe` waits for the record at a committed offset (for lag in time).
const LAG_TIME_TIMEOUT: Duration = Duration::from_secs(2);

/// What one read for lag in time brings: enough for the batch holding the record.
const LAG_TIME_READ_BYTES: u32 = 64 * 1024;

/// The timestamp of the first record at or after `offset` in `batches`.
fn first_timestamp(batches: bytes::Bytes, offset: i64) -> Option<i64> {
    for whole in sluice_proto::batch::split_batches(batches) {
        let whole = whole.ok()?;
        let (header, records) = sluice_proto::batch::decode(&whole, 64 << 20).ok()?;
        if header.is_control() {
            continue;
        }
        if let Some(r) = records.iter().find(|r| r.offset >= offset) {
            return Some(r.timestamp);
        }
    }
    None
}

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

    /// The timestamp of the first record at or after `offset` of a partition, read from its
    /// leader (here, or asked with a Fetch).
    async fn timestamp_at(&self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        if let Ok(local) = self.broker.partition(topic, partition) {
            let bytes = tokio::task::spawn_blocking(move || {
                local.read(offset, LAG_TIME_READ_BYTES as usize)
            })
            .await
            .ok()?
            .ok()?;
            return first_timestamp(bytes, offset);
        }
        let record = self.broker.topic_record(topic).ok()?;
        let leader = self.broker.current_leader(&record, partition)?;
        let address = self
            .broker
            .controller
            .state()
            .brokers
            .get(&leader)?
            .address
            .clone();
        let channel = self.broker.peers.channel(&address).ok()?;
        let mut client = pb::log_client::LogClient::new(channel);
        let req = pb::FetchRequest {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: LAG_TIME_READ_BYTES,
            partitions: vec![pb::FetchPartition {
                topic: topic.to_string(),
                partition,
                fetch_offset: offset,
                partition_max_bytes: LAG_TIME_READ_BYTES,
            }],
        };
        let resp = client.fetch(req).await.ok()?.into_inner();
        let p = resp.partitions.into_iter().next()?;
        if p.error.is_some() {
            return None;
        }
        first_timestamp(p.records, offset)
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
        let member =
            (!req.member_id.is_empty()).then_some((req.member_id.as_str(), req.member_epoch));
        self.broker
            .commit_offsets(&req.group, member, offsets, COMMIT_TIMEOUT)
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
                let topics: BTreeSet<&str> = g
                    .offsets
                    .iter()
                    .map(|((t, _), _)| t.as_str())
                    .chain(
                        g.members
                            .iter()
                            .flat_map(|m| m.target.iter().map(|(t, _)| t.as_str())),
                    )
                    .collect();
                pb::GroupSummary {
                    group: g.group.clone(),
                    coordinator: node,
                    topics: topics.into_iter().map(str::to_string).collect(),
                    partitions: g.offsets.len() as i32,
                    members: g.members.len() as i32,
                    state: g.state.to_string(),
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
        let view = self.broker.describe_group(&group).await?;
        let owners: BTreeMap<&TopicPartition, &str> = view
            .members
            .iter()
            .flat_map(|m| m.owned.iter().map(move |tp| (tp, m.member_id.as_str())))
            .collect();
        // Every partition the group has committed or owns.
        let mut rows: BTreeMap<TopicPartition, Option<&crate::coordinator::Committed>> = view
            .offsets
            .iter()
            .map(|(tp, c)| (tp.clone(), Some(c)))
            .collect();
        for tp in owners.keys() {
            rows.entry((*tp).clone()).or_insert(None);
        }
        let topics: BTreeSet<String> = rows.keys().map(|(t, _)| t.clone()).collect();
        let ends = self.log_ends(&topics).await;
        // Lag in time of the partitions behind: the age of the first record not consumed.
        let now = crate::clock::now_ms();
        let behind: Vec<(TopicPartition, i64)> = rows
            .iter()
            .filter_map(|(tp, c)| {
                let c = (*c)?;
                (ends.get(tp).is_some_and(|e| *e > c.offset)).then(|| (tp.clone(), c.offset))
            })
            .collect();
        let stamps = futures::future::join_all(behind.iter().map(|(tp, offset)| async move {
            let ts =
                tokio::time::timeout(LAG_TIME_TIMEOUT, self.timestamp_at(&tp.0, tp.1, *offset))
                    .await
                    .ok()
                    .flatten();
            (tp.clone(), ts)
        }))
        .await;
        let stamps: BTreeMap<TopicPartition, Option<i64>> = stamps.into_iter().collect();
        let partitions = rows
            .iter()
            .map(|(tp, c)| {
                let end = ends.get(tp).copied();
                let lag_ms = match (end, c) {
                    (Some(e), Some(c)) if e <= c.offset => 0,
                    (Some(_), Some(_)) => stamps
                        .get(tp)
                        .copied()
                        .flatten()
                        .map_or(-1, |ts| (now - ts).max(0)),
                    _ => -1,
                };
                let committed = c.map_or(-1, |c| c.offset);
                pb::GroupPartition {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    committed_offset: committed,
                    metadata: c.map(|c| c.metadata.clone()).unwrap_or_default(),
                    commit_timestamp_ms: c.map_or(-1, |c| c.commit_ms),
                    log_end_offset: end.unwrap_or(-1),
                    lag: match (end, c) {
                        (Some(e), Some(c)) => (e - c.offset).max(0),
                        _ => -1,
                    },
                    owner: owners.get(tp).map(|m| m.to_string()).unwrap_or_default(),
                    lag_ms,
                }
            })
            .collect();
        let members = view
            .members
            .iter()
            .map(|m| pb::GroupMember {
                member_id: m.member_id.clone(),
                client_id: m.client_id.clone(),
                member_epoch: m.epoch,
                owned: by_topic(&m.owned),
                target: by_topic(&m.target),
            })
            .collect();
        Ok(tonic::Response::new(pb::DescribeGroupResponse {
            group,
            coordinator: self.broker.node_id(),
            partitions,
            members,
            state: view.state.to_string(),
            epoch: view.epoch,
        }))
    }

    async fn heartbeat(
        &self,
        request: tonic::Request<pb::GroupHeartbeatRequest>,
    ) -> Result<tonic::Response<pb::GroupHeartbeatResponse>, tonic::Status> {
        let req = request.into_inner();
        let hb = Heartbeat {
            member_id: req.member_id,
            member_epoch: req.member_epoch,
            topics: req.topics.into_iter().collect(),
            owned: req
                .owned
                .into_iter()
                .flat_map(|t| {
                    let topic = t.topic;
                    t.partitions.into_iter().map(move |p| (topic.clone(), p))
                })
                .collect(),
            client_id: req.client_id,
            resets_applied: req.resets_applied,
            instance_id: (!req.instance_id.is_empty()).then_some(req.instance_id),
        };
        let regex = (!req.topic_regex.is_empty()).then_some(req.topic_regex.as_str());
        let answer = self.broker.group_heartbeat(&req.group, hb, regex).await?;
        Ok(tonic::Response::new(pb::GroupHeartbeatResponse {
            member_id: answer.member_id,
            member_epoch: answer.member_epoch,
            // A member waiting for partitions another still owns asks again soon: it gets
            // them as soon as they are released, not a whole interval later.
            heartbeat_interval_ms: if answer.waiting {
                self.broker
                    .config
                    .group_heartbeat_interval
                    .min(WAITING_HEARTBEAT_INTERVAL)
            } else {
                self.broker.config.group_heartbeat_interval
            }
            .as_millis() as i32,
            assignment: by_topic(&answer.assignment),
            resets: answer
                .resets
                .iter()
                .map(|(id, partitions)| pb::OffsetReset {
                    id: *id,
                    partitions: by_topic(partitions),
                })
                .collect(),
        }))
    }

    async fn delete_group(
        &self,
        request: tonic::Request<pb::DeleteGroupRequest>,
    ) -> Result<tonic::Response<pb::DeleteGroupResponse>, tonic::Status> {
        let req = request.into_inner();
        let (offsets, members) = self
            .broker
            .delete_group(&req.group, req.force, COMMIT_TIMEOUT)
            .await?;
        Ok(tonic::Response::new(pb::DeleteGroupResponse {
            offsets_deleted: offsets as i32,
            members_removed: members as i32,
        }))
    }

    async fn reset_offsets(
        &self,
        request: tonic::Request<pb::ResetOffsetsRequest>,
    ) -> Result<tonic::Response<pb::ResetOffsetsResponse>, tonic::Status> {
        let req = request.into_inner();
        let offsets = req
            .partitions
            .into_iter()
            .map(|p| ((p.topic, p.partition), p.offset))
            .collect();
        let told = self
            .broker
            .reset_offsets(&req.group, offsets, COMMIT_TIMEOUT)
            .await?;
        Ok(tonic::Response::new(pb::ResetOffsetsResponse {
            members_notified: told as i32,
        }))
    }
}
