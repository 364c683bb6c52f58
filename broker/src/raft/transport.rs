//! openraft's network for any Raft group over gRPC: [`Network`] makes a [`Peer`] per
//! target node, which sends each call on the peer's shared channel with the group id.
//! Payloads are openraft's serde types in MessagePack: compact, and record batches travel as
//! raw bytes.

use std::marker::PhantomData;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, LogId, RaftTypeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_proto::pb;

use super::peers::PeerChannels;

/// Encodes a Raft message or proposal.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

/// Decodes a Raft message or proposal.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

/// Creates a [`Peer`] per target node, for Raft group `group` of type config `C`.
#[derive(Debug, Clone)]
pub(crate) struct Network<C> {
    group: u64,
    channels: PeerChannels,
    /// The last log id durable in this node's log, where the leader acknowledges its own
    /// appends before their fsync: followers are told of commits up to it only.
    durable: Option<Durable>,
    _config: PhantomData<C>,
}

/// Reads the last log id fsynced in this node's log.
#[derive(Clone)]
pub(crate) struct Durable(pub std::sync::Arc<dyn Fn() -> Option<LogId<u64>> + Send + Sync>);

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Durable").field(&(self.0)()).finish()
    }
}

/// A commit as far as it may be told or saved: Raft's, but never past this node's fsync
/// (what a leader tells its followers, and what its `raft.json` keeps).
pub(crate) fn capped_commit(
    commit: Option<LogId<u64>>,
    on_disk: Option<LogId<u64>>,
) -> Option<LogId<u64>> {
    match (commit, on_disk) {
        (Some(c), Some(d)) if d.index < c.index => Some(d),
        (Some(_), None) => None,
        (c, _) => c,
    }
}

impl<C> Network<C> {
    pub(crate) fn new(group: u64, channels: PeerChannels) -> Self {
        Network {
            group,
            channels,
            durable: None,
            _config: PhantomData,
        }
    }

    /// Caps the commit index sent to followers at what `durable` says is fsynced.
    pub(crate) fn with_durable(mut self, durable: Durable) -> Self {
        self.durable = Some(durable);
        self
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
            durable: self.durable.clone(),
            target,
            address: node.addr.clone(),
            channels: self.channels.clone(),
            _config: PhantomData,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Peer<C> {
    group: u64,
    durable: Option<Durable>,
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
                self.channels.note_raft_answer(self.target);
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
        mut rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        // Raft counted this leader's copy once written; a commit is told to followers
        // (who apply it) only once the leader's copy is on disk too, so a committed entry
        // is always on a majority of disks.
        if let Some(durable) = &self.durable {
            rpc.leader_commit = capped_commit(rpc.leader_commit, (durable.0)());
        }
        // Partition writes only (not heartbeats, not the controller's entries).
        let timed = (!rpc.entries.is_empty() && self.group != super::CONTROLLER_GROUP)
            .then(std::time::Instant::now);
        let result = self
            .call(pb::RaftRpc::AppendEntries, &rpc, option.hard_ttl())
            .await;
        if let Some(sent) = timed {
            self.channels
                .stages()
                .observe(crate::metrics::Stage::ReplicationRoundTrip, sent.elapsed());
        }
        result
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

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::capped_commit;

    fn id(index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    #[test]
    fn followers_hear_of_commits_only_up_to_the_leaders_fsync() {
        assert_eq!(capped_commit(Some(id(9)), Some(id(7))), Some(id(7)));
        assert_eq!(capped_commit(Some(id(7)), Some(id(9))), Some(id(7)));
        assert_eq!(capped_commit(Some(id(7)), None), None);
        assert_eq!(capped_commit(None, Some(id(7))), None);
    }
}
