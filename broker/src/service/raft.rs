//! The inter-broker gRPC service: Raft calls routed to their group (the controller's or a
//! partition's), proposals forwarded to the controller leader, read indexes, quiesce
//! requests, log ends for crash takeover, and pings.

use std::collections::HashMap;
use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest};
use openraft::{BasicNode, RaftTypeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_proto::pb;

use crate::controller::Controller;
use crate::raft::groups::GROUP_START_WAIT;
use crate::raft::transport::{decode, encode};
use crate::raft::{CONTROLLER_GROUP, Groups, Quiesced};

/// Serves Raft calls and forwarded proposals on the inter-broker listener.
#[derive(Debug, Clone)]
pub(crate) struct RaftService {
    pub controller: Arc<Controller>,
    pub groups: Groups,
    pub quiesced: Quiesced,
    pub stages: crate::metrics::Stages,
}

fn reply<T: Serialize>(value: &T) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
    encode(value)
        .map(|payload| tonic::Response::new(pb::RaftReply { payload }))
        .map_err(|e| tonic::Status::internal(format!("encoding a Raft reply: {e}")))
}

fn request<T: DeserializeOwned>(payload: &[u8]) -> Result<T, tonic::Status> {
    decode(payload)
        .map_err(|e| tonic::Status::invalid_argument(format!("undecodable Raft request: {e}")))
}

/// Runs one Raft RPC against a group of any type config.
async fn dispatch<C>(
    raft: &openraft::Raft<C>,
    call: &pb::RaftCall,
) -> Result<tonic::Response<pb::RaftReply>, tonic::Status>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
    AppendEntriesRequest<C>: DeserializeOwned,
    InstallSnapshotRequest<C>: DeserializeOwned,
{
    match pb::RaftRpc::try_from(call.rpc) {
        Ok(pb::RaftRpc::AppendEntries) => {
            reply(&raft.append_entries(request(&call.payload)?).await)
        }
        Ok(pb::RaftRpc::Vote) => reply(&raft.vote(request(&call.payload)?).await),
        Ok(pb::RaftRpc::InstallSnapshot) => {
            reply(&raft.install_snapshot(request(&call.payload)?).await)
        }
        Err(_) => Err(tonic::Status::invalid_argument(format!(
            "unknown Raft RPC {}",
            call.rpc
        ))),
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn call(
        &self,
        request_: tonic::Request<pb::RaftCall>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        let call = request_.into_inner();
        if call.group == CONTROLLER_GROUP {
            return dispatch(&self.controller.raft, &call).await;
        }
        let Some(raft) = self.groups.get_or_wait(call.group, GROUP_START_WAIT).await else {
            return Err(tonic::Status::not_found(format!(
                "no Raft group {} on this broker",
                call.group
            )));
        };
        if call.rpc == pb::RaftRpc::AppendEntries as i32 {
            let req: AppendEntriesRequest<crate::replica::types::PartitionRaft> =
                request(&call.payload)?;
            // New entries mean the group is active again: restart the election timer.
            // (Empty appends are heartbeats, which a quiesced leader does not send.)
            let entries = !req.entries.is_empty();
            if entries && self.quiesced.remove(call.group) {
                raft.runtime_config().tick(true);
                raft.runtime_config().elect(true);
            }
            let received = std::time::Instant::now();
            let response = raft.append_entries(req).await;
            if entries {
                self.stages.observe(
                    crate::metrics::Stage::FollowerAppendEntries,
                    received.elapsed(),
                );
            }
            return reply(&response);
        }
        dispatch(&raft, &call).await
    }

    async fn ping(
        &self,
        _: tonic::Request<pb::PingRequest>,
    ) -> Result<tonic::Response<pb::PingReply>, tonic::Status> {
        Ok(tonic::Response::new(pb::PingReply {}))
    }

    async fn quiesce(
        &self,
        request_: tonic::Request<pb::QuiesceRequest>,
    ) -> Result<tonic::Response<pb::QuiesceReply>, tonic::Status> {
        let q = request_.into_inner();
        let Some(raft) = self.groups.get(q.group) else {
            return Ok(tonic::Response::new(pb::QuiesceReply { accepted: false }));
        };
        let m = raft.metrics().borrow().clone();
        let accepted = m.current_leader == Some(q.leader) && m.current_term == q.term;
        if accepted {
            raft.runtime_config().elect(false);
            raft.runtime_config().tick(false);
            self.quiesced.insert(q.group, q.leader);
        }
        Ok(tonic::Response::new(pb::QuiesceReply { accepted }))
    }

    async fn log_ends(
        &self,
        request_: tonic::Request<pb::LogEndsRequest>,
    ) -> Result<tonic::Response<pb::LogEndsReply>, tonic::Status> {
        let groups = request_.into_inner().groups;
        let controller = if groups.contains(&CONTROLLER_GROUP) {
            Some(self.controller.last_log_id().await)
        } else {
            None
        };
        let logs: Vec<_> = groups
            .into_iter()
            .filter_map(|g| self.groups.log(g).map(|log| (g, log)))
            .collect();
        // Reading a log's end waits for an append's fsync: off the async workers.
        let ends = tokio::task::spawn_blocking(move || {
            logs.into_iter()
                .map(|(g, log)| (g, log.last_log_id()))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| tonic::Status::internal(format!("reading log ends: {e}")))?;
        let mut last_log_ids = HashMap::new();
        for (group, last) in ends
            .into_iter()
            .chain(controller.map(|last| (CONTROLLER_GROUP, last)))
        {
            let bytes = encode(&last)
                .map_err(|e| tonic::Status::internal(format!("encoding a log id: {e}")))?;
            last_log_ids.insert(group, bytes);
        }
        Ok(tonic::Response::new(pb::LogEndsReply { last_log_ids }))
    }

    async fn elect(
        &self,
        request_: tonic::Request<pb::ElectRequest>,
    ) -> Result<tonic::Response<pb::ElectReply>, tonic::Status> {
        let e = request_.into_inner();
        let Some(raft) = self.groups.get(e.group) else {
            return Ok(tonic::Response::new(pb::ElectReply { accepted: false }));
        };
        let (leader, term) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term)
        };
        let accepted = leader == Some(e.leader) && term == e.term;
        if accepted {
            self.quiesced.remove(e.group);
            raft.runtime_config().tick(true);
            raft.runtime_config().elect(true);
            if let Err(err) = raft.trigger().elect().await {
                tracing::warn!(group = e.group, cause = %err, "starting an election on request");
                return Ok(tonic::Response::new(pb::ElectReply { accepted: false }));
            }
        }
        Ok(tonic::Response::new(pb::ElectReply { accepted }))
    }

    async fn read_index(
        &self,
        _: tonic::Request<pb::ReadIndexRequest>,
    ) -> Result<tonic::Response<pb::ReadIndexReply>, tonic::Status> {
        let index = self
            .controller
            .read_index_here()
            .await
            .map_err(tonic::Status::from)?;
        Ok(tonic::Response::new(pb::ReadIndexReply {
            index: index.map_or(-1, |i| i as i64),
        }))
    }

    async fn propose(
        &self,
        request_: tonic::Request<pb::Proposal>,
    ) -> Result<tonic::Response<pb::ProposalReply>, tonic::Status> {
        let command = request(&request_.into_inner().command)?;
        let response = self
            .controller
            .propose_here(command)
            .await
            .map_err(tonic::Status::from)?;
        let bytes = encode(&response).map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(tonic::Response::new(pb::ProposalReply { response: bytes }))
    }
}
