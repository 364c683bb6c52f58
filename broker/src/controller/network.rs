//! Raft over gRPC: the client side ([`Network`], one connection per peer shared by every
//! group) and the server side ([`RaftService`], which routes each call to its group).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_proto::pb::{self, raft_client::RaftClient};
use tonic::transport::{Channel, Endpoint};

use super::types::MetaRaft;

/// The controller's Raft group id.
pub const CONTROLLER_GROUP: u64 = 0;

/// One lazily connected channel per peer address, shared by all groups and by forwarding.
#[derive(Debug, Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl PeerChannels {
    pub fn client(&self, address: &str) -> Result<RaftClient<Channel>, String> {
        self.channel(address).map(RaftClient::new)
    }

    /// The channel to a broker's address (its Raft or its client listener).
    pub fn channel(&self, address: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("invalid peer address '{address}': {e}"))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    pub fn forget(&self, address: &str) {
        self.channels.lock().remove(address);
    }
}

/// Creates a [`Peer`] per target node.
#[derive(Debug, Clone)]
pub struct Network {
    pub group: u64,
    pub channels: PeerChannels,
}

impl RaftNetworkFactory<MetaRaft> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            group: self.group,
            target,
            address: node.addr.clone(),
            channels: self.channels.clone(),
        }
    }
}

#[derive(Debug)]
pub struct Peer {
    group: u64,
    target: u64,
    address: String,
    channels: PeerChannels,
}

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        rpc: pb::RaftRpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload =
            serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self
            .channels
            .client(&self.address)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&AnyError::error(e))))?;
        let call = pb::RaftCall {
            group: self.group,
            rpc: rpc as i32,
            payload,
        };
        let reply = match tokio::time::timeout(timeout, client.call(call)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                if status.code() == tonic::Code::Unavailable {
                    self.channels.forget(&self.address);
                    return Err(RPCError::Unreachable(Unreachable::new(&status)));
                }
                return Err(RPCError::Network(NetworkError::new(&status)));
            }
            Err(_) => {
                return Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(
                    format!("no answer from node {} within {timeout:?}", self.target),
                ))));
            }
        };
        let result: Result<Resp, RaftError<u64, E>> = serde_json::from_slice(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<MetaRaft> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<MetaRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(pb::RaftRpc::AppendEntries, &rpc, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<MetaRaft>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(pb::RaftRpc::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(pb::RaftRpc::Vote, &rpc, option.hard_ttl()).await
    }
}

/// Serves Raft calls and forwarded proposals on the inter-broker listener.
#[derive(Debug, Clone)]
pub struct RaftService {
    pub controller: Arc<super::Controller>,
}

fn reply<T: Serialize>(value: &T) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
    serde_json::to_vec(value)
        .map(|payload| tonic::Response::new(pb::RaftReply { payload }))
        .map_err(|e| tonic::Status::internal(format!("encoding a Raft reply: {e}")))
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, tonic::Status> {
    serde_json::from_slice(payload)
        .map_err(|e| tonic::Status::invalid_argument(format!("undecodable Raft request: {e}")))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn call(
        &self,
        request: tonic::Request<pb::RaftCall>,
    ) -> Result<tonic::Response<pb::RaftReply>, tonic::Status> {
        let call = request.into_inner();
        if call.group != CONTROLLER_GROUP {
            return Err(tonic::Status::not_found(format!(
                "no Raft group {} on this broker",
                call.group
            )));
        }
        let raft = &self.controller.raft;
        match pb::RaftRpc::try_from(call.rpc) {
            Ok(pb::RaftRpc::AppendEntries) => {
                reply(&raft.append_entries(decode(&call.payload)?).await)
            }
            Ok(pb::RaftRpc::Vote) => reply(&raft.vote(decode(&call.payload)?).await),
            Ok(pb::RaftRpc::InstallSnapshot) => {
                reply(&raft.install_snapshot(decode(&call.payload)?).await)
            }
            Err(_) => Err(tonic::Status::invalid_argument(format!(
                "unknown Raft RPC {}",
                call.rpc
            ))),
        }
    }

    async fn propose(
        &self,
        request: tonic::Request<pb::Proposal>,
    ) -> Result<tonic::Response<pb::ProposalReply>, tonic::Status> {
        let command = decode(&request.into_inner().command)?;
        let response = self
            .controller
            .propose_here(command)
            .await
            .map_err(tonic::Status::from)?;
        let bytes =
            serde_json::to_vec(&response).map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(tonic::Response::new(pb::ProposalReply { response: bytes }))
    }
}
