//! Raft over gRPC: the client side ([`Network`], one connection per peer shared by every
//! group) and the server side ([`RaftService`], which routes each call to its group).
//! Payloads are openraft's serde types in MessagePack: compact, and record batches travel as
//! raw bytes.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, RaftTypeConfig};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_proto::pb::{self, raft_client::RaftClient};
use tonic::transport::{Channel, Endpoint};

use crate::replica::log_store::SegmentRaftLog;

/// The controller's Raft group id.
pub const CONTROLLER_GROUP: u64 = 0;

/// Encodes a Raft message or proposal.
/// HTTP/2 flow-control windows of every connection (client and inter-broker listeners, peer
/// channels): large enough that one connection carries a full-speed stream of MiB-sized
/// batches without waiting for window updates.
pub const STREAM_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 64 * 1024 * 1024;

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

/// Decodes a Raft message or proposal.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

/// One lazily connected channel per peer address, shared by all groups and by forwarding.
#[derive(Debug, Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// When each node last answered a Raft RPC (heartbeats included): follower liveness
    /// for the in-sync set.
    answered: Arc<Mutex<HashMap<u64, std::time::Instant>>>,
    /// Since when each node's broker has refused connections (its process is gone), until
    /// it answers again.
    refused: Arc<Mutex<HashMap<u64, std::time::Instant>>>,
    /// Failing Raft calls to each node, for the log (see [`PeerChannels::call_failed`]).
    health: Arc<Mutex<HashMap<u64, CallHealth>>>,
    /// This broker is shutting down: its peers (stopping too, with `sluice dev`) failing
    /// its last calls is expected, not news.
    closing: Arc<std::sync::atomic::AtomicBool>,
}

/// At most one warning per peer this often while Raft calls to it fail. Every group calls
/// every peer it replicates to, backing off only to 500 ms: a broker down for a minute used
/// to leave a line per call in its peers' logs (about 30 a second with 12 partitions).
pub const CALL_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Raft calls to one peer: the current run of failures and the last warning about it.
#[derive(Debug, Default)]
struct CallHealth {
    failing_since: Option<std::time::Instant>,
    failures: u64,
    /// Whether this run of failures was warned about (its end is then logged too).
    warned: bool,
    last_warning: Option<std::time::Instant>,
}

/// What [`PeerChannels::call_failed`] or [`PeerChannels::call_answered`] logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallReport {
    Quiet,
    /// The first warning of a run of failures.
    Failing,
    /// A later warning of the same run, one interval on.
    StillFailing,
    /// Calls answer again after a run that was warned about.
    Recovered,
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
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Records that `node` answered (a ping or a Raft call). If it had answered before and
    /// refused connections since (reported down), since when it refused.
    pub fn mark_answer(&self, node: u64) -> Option<std::time::Instant> {
        let answered_before = self
            .answered
            .lock()
            .insert(node, std::time::Instant::now())
            .is_some();
        let refused = self.refused.lock().remove(&node);
        refused.filter(|_| answered_before)
    }

    /// Records that `node`'s broker refused a connection; true if it was answering until now.
    pub fn mark_refused(&self, node: u64) -> bool {
        let mut refused = self.refused.lock();
        if refused.contains_key(&node) {
            return false;
        }
        refused.insert(node, std::time::Instant::now());
        true
    }

    /// Whether `node`'s broker has refused connections since it last answered.
    pub fn refuses(&self, node: u64) -> bool {
        self.refused.lock().contains_key(&node)
    }

    /// When `node` last answered a Raft call from this broker.
    pub fn last_answer(&self, node: u64) -> Option<std::time::Instant> {
        self.answered.lock().get(&node).copied()
    }

    pub fn forget(&self, address: &str) {
        self.channels.lock().remove(address);
    }

    /// Records a failed Raft call to `node` and warns about it at most once per
    /// [`CALL_FAILURE_LOG_INTERVAL`] per peer, whatever the number of groups calling it.
    pub fn call_failed(
        &self,
        node: u64,
        address: &str,
        group: u64,
        rpc: pb::RaftRpc,
        error: &dyn std::fmt::Display,
    ) -> CallReport {
        self.call_failed_at(std::time::Instant::now(), node, address, group, rpc, error)
    }

    fn call_failed_at(
        &self,
        now: std::time::Instant,
        node: u64,
        address: &str,
        group: u64,
        rpc: pb::RaftRpc,
        error: &dyn std::fmt::Display,
    ) -> CallReport {
        if self.closing.load(std::sync::atomic::Ordering::Relaxed) {
            return CallReport::Quiet;
        }
        let report = {
            let mut health = self.health.lock();
            let h = health.entry(node).or_default();
            let since = *h.failing_since.get_or_insert(now);
            h.failures += 1;
            if h.last_warning
                .is_some_and(|t| now.duration_since(t) < CALL_FAILURE_LOG_INTERVAL)
            {
                None
            } else {
                h.last_warning = Some(now);
                let first = !h.warned;
                h.warned = true;
                Some((first, h.failures, now.duration_since(since)))
            }
        };
        let Some((first, failures, failing_for)) = report else {
            return CallReport::Quiet;
        };
        let (what, reported) = if first {
            let every = CALL_FAILURE_LOG_INTERVAL.as_secs();
            (
                format!("are failing (logged at most every {every}s while they do)"),
                CallReport::Failing,
            )
        } else {
            ("are still failing".to_string(), CallReport::StillFailing)
        };
        tracing::warn!(
            broker = node,
            %address,
            group,
            rpc = rpc.as_str_name(),
            %error,
            failures,
            failing_for = ?failing_for,
            "Raft calls to a broker {what}"
        );
        reported
    }

    /// This broker is shutting down: failed calls are no longer reported.
    pub fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records an answered Raft call to `node`; ends its run of failures, if any.
    pub fn call_answered(&self, node: u64) -> CallReport {
        let ended = {
            let mut health = self.health.lock();
            match health.get_mut(&node) {
                Some(h) if h.failing_since.is_some() => {
                    let since = h.failing_since.take();
                    let failures = std::mem::take(&mut h.failures);
                    let warned = std::mem::take(&mut h.warned);
                    warned.then(|| (failures, since.map(|s| s.elapsed())))
                }
                _ => return CallReport::Quiet,
            }
        };
        match ended {
            Some((failures, failed_for)) => {
                tracing::info!(
                    broker = node,
                    failures,
                    failed_for = ?failed_for.unwrap_or_default(),
                    "Raft calls to a broker succeed again"
                );
                CallReport::Recovered
            }
            None => CallReport::Quiet,
        }
    }
}

/// Whether a failed call found nobody listening at the peer's address: its broker process
/// is gone, certainly (see [`sluice_proto::is_connection_refused`]).
pub fn is_refused(status: &tonic::Status) -> bool {
    sluice_proto::is_connection_refused(status)
}

/// Creates a [`Peer`] per target node, for Raft group `group` of type config `C`.
#[derive(Debug, Clone)]
pub struct Network<C> {
    group: u64,
    channels: PeerChannels,
    _config: PhantomData<C>,
}

impl<C> Network<C> {
    pub fn new(group: u64, channels: PeerChannels) -> Self {
        Network {
            group,
            channels,
            _config: PhantomData,
        }
    }
}

impl<C> RaftNetworkFactory<C> for Network<C>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
    AppendEntriesRequest<C>: Serialize,
    InstallSnapshotRequest<C>: Serialize,
{
    type Network = Peer<C>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer<C> {
        Peer {
            group: self.group,
            target,
            address: node.addr.clone(),
            channels: self.channels.clone(),
            _config: PhantomData,
        }
    }
}

#[derive(Debug)]
pub struct Peer<C> {
    group: u64,
    target: u64,
    address: String,
    channels: PeerChannels,
    _config: PhantomData<C>,
}

type CallResult<Resp, E> = Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl<C> Peer<C> {
    /// One Raft call; failures are reported per peer by [`PeerChannels::call_failed`]
    /// (openraft's own line per failed call is filtered out, see `server::init_tracing`).
    async fn call<Req, Resp, E>(
        &self,
        rpc: pb::RaftRpc,
        req: &Req,
        timeout: Duration,
    ) -> CallResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result = self.call_once(rpc, req, timeout).await;
        match &result {
            Ok(_) => {
                self.channels.call_answered(self.target);
            }
            Err(e) => {
                self.channels
                    .call_failed(self.target, &self.address, self.group, rpc, e);
            }
        }
        result
    }

    async fn call_once<Req, Resp, E>(
        &self,
        rpc: pb::RaftRpc,
        req: &Req,
        timeout: Duration,
    ) -> CallResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
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
            Ok(Ok(r)) => {
                self.channels
                    .answered
                    .lock()
                    .insert(self.target, std::time::Instant::now());
                r.into_inner()
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                self.channels.forget(&self.address);
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Ok(Err(status)) => return Err(RPCError::Network(NetworkError::new(&status))),
            Err(_) => {
                // Slow, not unreachable: a loaded follower's append and fsync can outlast
                // the call's timeout. Unreachable would make openraft back off from the
                // follower (500 ms by default), stalling every acks=all write behind it.
                let e = AnyError::error(format!(
                    "no answer from node {} within {timeout:?}",
                    self.target
                ));
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        };
        let result: Result<Resp, RaftError<u64, E>> =
            decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl<C> RaftNetwork<C> for Peer<C>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
    AppendEntriesRequest<C>: Serialize,
    InstallSnapshotRequest<C>: Serialize,
{
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(pb::RaftRpc::AppendEntries, &rpc, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
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

    /// Retrying a peer that refused the connection: soon at first (a restarting broker is
    /// back within moments), then every 500 ms (openraft's default) while it stays down.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::successors(
            Some(UNREACHABLE_BACKOFF_FIRST),
            |d| Some((*d * 2).min(UNREACHABLE_BACKOFF_MAX)),
        ))
    }
}

const UNREACHABLE_BACKOFF_FIRST: Duration = Duration::from_millis(25);
const UNREACHABLE_BACKOFF_MAX: Duration = Duration::from_millis(500);

type PartitionRaftHandle = openraft::Raft<crate::replica::types::PartitionRaft>;

/// The partition groups this broker is a member of, by group id, with their logs.
#[derive(Clone, Default)]
pub struct Groups(Arc<GroupsInner>);

#[derive(Default)]
struct GroupsInner {
    map: parking_lot::RwLock<HashMap<u64, (PartitionRaftHandle, SegmentRaftLog)>>,
    /// Told of every group added.
    added: tokio::sync::Notify,
}

/// How long a Raft call for a group this broker has not started yet waits for it. Every
/// replica starts a new partition's group as the controller's record of it arrives, so the
/// first votes and appends often reach a broker a moment before it has. Shorter than the
/// vote timeout (`election_timeout_min`), so the candidate gets an answer, not a timeout.
const GROUP_START_WAIT: Duration = Duration::from_millis(200);

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Groups({})", self.0.map.read().len())
    }
}

impl Groups {
    pub fn get(&self, group: u64) -> Option<PartitionRaftHandle> {
        self.0.map.read().get(&group).map(|(raft, _)| raft.clone())
    }

    /// The group, waiting up to `wait` for it to start.
    pub async fn get_or_wait(&self, group: u64, wait: Duration) -> Option<PartitionRaftHandle> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let added = self.0.added.notified();
            if let Some(raft) = self.get(group) {
                return Some(raft);
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return self.get(group);
            }
        }
    }

    pub fn log(&self, group: u64) -> Option<SegmentRaftLog> {
        self.0.map.read().get(&group).map(|(_, log)| log.clone())
    }

    pub fn insert(&self, group: u64, raft: PartitionRaftHandle, log: SegmentRaftLog) {
        self.0.map.write().insert(group, (raft, log));
        self.0.added.notify_waiters();
    }

    pub fn remove(&self, group: u64) {
        self.0.map.write().remove(&group);
    }

    pub fn all(&self) -> Vec<(u64, PartitionRaftHandle)> {
        self.0
            .map
            .read()
            .iter()
            .map(|(g, (raft, _))| (*g, raft.clone()))
            .collect()
    }
}

/// Partition groups whose leader asked this (follower) replica to stop its election timer,
/// with that leader's node id.
#[derive(Debug, Clone, Default)]
pub struct Quiesced(Arc<Mutex<HashMap<u64, u64>>>);

impl Quiesced {
    pub fn insert(&self, group: u64, leader: u64) {
        self.0.lock().insert(group, leader);
    }

    /// True if the group was quiesced (it is not any more).
    pub fn remove(&self, group: u64) -> bool {
        self.0.lock().remove(&group).is_some()
    }

    pub fn snapshot(&self) -> Vec<(u64, u64)> {
        self.0.lock().iter().map(|(g, l)| (*g, *l)).collect()
    }
}

/// Serves Raft calls and forwarded proposals on the inter-broker listener.
#[derive(Debug, Clone)]
pub struct RaftService {
    pub controller: Arc<super::Controller>,
    pub groups: Groups,
    pub quiesced: Quiesced,
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
            if !req.entries.is_empty() && self.quiesced.remove(call.group) {
                raft.runtime_config().tick(true);
                raft.runtime_config().elect(true);
            }
            return reply(&raft.append_entries(req).await);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_calls_are_reported_once_per_peer_and_interval() {
        let peers = PeerChannels::default();
        let t0 = std::time::Instant::now();
        let fail = |at: Duration, node: u64, group: u64| {
            peers.call_failed_at(
                t0 + at,
                node,
                "127.0.0.1:1",
                group,
                pb::RaftRpc::AppendEntries,
                &"tcp connect error",
            )
        };
        // A broker goes down: every group replicating to it fails, over and over.
        assert_eq!(fail(Duration::ZERO, 3, 1), CallReport::Failing);
        for (i, group) in (1..=12).cycle().take(200).enumerate() {
            let at = Duration::from_millis(25 * i as u64);
            assert!(at < CALL_FAILURE_LOG_INTERVAL);
            assert_eq!(fail(at, 3, group), CallReport::Quiet, "call {i}");
        }
        // Another peer's failures are its own.
        assert_eq!(fail(Duration::from_secs(1), 2, 1), CallReport::Failing);
        // One interval on, one more line for the same run.
        assert_eq!(
            fail(CALL_FAILURE_LOG_INTERVAL, 3, 5),
            CallReport::StillFailing
        );
        assert_eq!(
            fail(CALL_FAILURE_LOG_INTERVAL + Duration::from_secs(1), 3, 6),
            CallReport::Quiet
        );
        // It is back: said once.
        assert_eq!(peers.call_answered(3), CallReport::Recovered);
        assert_eq!(peers.call_answered(3), CallReport::Quiet);
        // A blip soon after stays quiet, and so does its end: a flapping peer costs at most a
        // warning and a recovery line per interval.
        let soon = CALL_FAILURE_LOG_INTERVAL + Duration::from_secs(2);
        assert_eq!(fail(soon, 3, 1), CallReport::Quiet);
        assert_eq!(peers.call_answered(3), CallReport::Quiet);
        // A new run an interval after the last warning is warned about again.
        assert_eq!(
            fail(CALL_FAILURE_LOG_INTERVAL * 2, 3, 1),
            CallReport::Failing
        );
        assert_eq!(peers.call_answered(3), CallReport::Recovered);
        // A peer that never failed has nothing to report.
        assert_eq!(peers.call_answered(1), CallReport::Quiet);
        // A broker shutting down says nothing of its peers stopping with it.
        peers.close();
        assert_eq!(fail(CALL_FAILURE_LOG_INTERVAL * 4, 1, 1), CallReport::Quiet);
    }

    async fn ping(address: std::net::SocketAddr) -> Result<(), tonic::Status> {
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        let mut client = RaftClient::new(channel);
        let call = client.ping(pb::PingRequest { from: 1 });
        match tokio::time::timeout(Duration::from_millis(300), call).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(tonic::Status::deadline_exceeded("no answer")),
        }
    }

    /// Nobody listening is told apart from a peer that is slow to answer: only the first is
    /// proof that the broker's process is gone.
    #[tokio::test]
    async fn a_closed_port_is_refused_and_a_silent_peer_is_not() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
        let refused = ping(address).await.unwrap_err();
        assert!(is_refused(&refused), "{refused:?}");

        // Listening but never answering (a stopped process: the kernel still accepts).
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let slow = ping(silent.local_addr().unwrap()).await.unwrap_err();
        assert!(!is_refused(&slow), "{slow:?}");
    }
}
