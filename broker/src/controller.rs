//! The controller: cluster metadata (brokers, topics, partition assignments) replicated by
//! one Raft group across the controller voters, like Kafka's KRaft. Every other broker is a
//! learner of the group, so every broker holds the metadata and serves it locally.
//!
//! # Layout
//! - [`types`]: the Raft type config, [`ClusterState`] and the commands that change it.
//! - [`store`]: the sled-backed Raft log and state machine.

pub(crate) mod store;
pub(crate) mod types;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Raft};
use sluice_proto::pb;
use tokio::sync::watch;

pub(crate) use self::types::{BrokerRecord, ClusterState, MetaCommand, MetaRaft, MetaResponse};
use crate::error::{Error, Result};
use crate::raft::{CONTROLLER_GROUP, Network, PeerChannels, transport};

/// Raft timing of the controller group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ControllerTiming {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// How long a proposal may wait for a leader (elections included).
    pub propose_timeout: Duration,
}

impl Default for ControllerTiming {
    fn default() -> Self {
        ControllerTiming {
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            propose_timeout: Duration::from_secs(10),
        }
    }
}

pub(crate) struct Controller {
    pub raft: Raft<MetaRaft>,
    pub node_id: i32,
    /// The group's log (sled; shared with the Raft), for its last log id.
    log: store::LogStore,
    state: watch::Receiver<Arc<ClusterState>>,
    channels: PeerChannels,
    timing: ControllerTiming,
    /// Cancelled when the group stops: proposals, waiting or not, fail at once rather than
    /// reach a stopped Raft (or hold up the broker's shutdown).
    stopped: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("node_id", &self.node_id)
            .field("leader", &self.leader())
            .finish()
    }
}

impl Controller {
    /// Starts this broker's member of the controller group. Voters initialize the group
    /// with all voters (idempotent); other brokers wait to be added as learners.
    pub(crate) async fn start(
        node_id: i32,
        db: &sled::Db,
        voters: &BTreeMap<i32, String>,
        channels: PeerChannels,
        timing: ControllerTiming,
    ) -> Result<Arc<Self>> {
        let config = openraft::Config {
            cluster_name: "sluice-controller".into(),
            heartbeat_interval: timing.heartbeat.as_millis() as u64,
            election_timeout_min: timing.election_timeout_min.as_millis() as u64,
            election_timeout_max: timing.election_timeout_max.as_millis() as u64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Internal(format!("controller Raft config: {e}")))?;
        let log = store::LogStore::open(db)?;
        let sm = store::StateMachine::open(db)
            .map_err(|e| Error::Internal(format!("controller state: {e}")))?;
        let state = sm.subscribe();
        let network = Network::<MetaRaft>::new(CONTROLLER_GROUP, channels.clone());
        let raft = Raft::new(node_id as u64, Arc::new(config), network, log.clone(), sm)
            .await
            .map_err(|e| Error::Internal(format!("starting the controller Raft: {e}")))?;
        // openraft logs an ERROR ("Can not initialize") when the group already has a vote or
        // a log: only a new voter initializes.
        let new = !raft.is_initialized().await.unwrap_or(false);
        if new && voters.contains_key(&node_id) {
            let members: BTreeMap<u64, BasicNode> = voters
                .iter()
                .map(|(id, addr)| (*id as u64, BasicNode::new(addr)))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(voters = ?voters, "initialized the controller quorum"),
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => {
                    return Err(Error::Internal(format!(
                        "initializing the controller quorum: {e}"
                    )));
                }
            }
        }
        Ok(Arc::new(Controller {
            raft,
            node_id,
            log,
            state,
            channels,
            timing,
            stopped: tokio_util::sync::CancellationToken::new(),
        }))
    }

    /// Logs each controller leadership this broker wins (Kafka's "became the active
    /// controller"), the moment openraft reports it. Runs until the group stops.
    pub(crate) async fn log_leadership(self: Arc<Self>) {
        let mut metrics = self.raft.metrics();
        let mut logged = 0u64;
        loop {
            let (leading, term) = {
                let m = metrics.borrow_and_update();
                (
                    m.state == openraft::ServerState::Leader
                        && m.current_leader == Some(self.node_id as u64),
                    m.current_term,
                )
            };
            if leading && term > logged {
                logged = term;
                tracing::info!(term, "leading the controller (cluster metadata) group");
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// The controller group's timing.
    pub(crate) fn timing(&self) -> ControllerTiming {
        self.timing
    }

    /// The last log id of this broker's copy of the metadata log: what a vote compares.
    pub(crate) async fn last_log_id(&self) -> Option<openraft::LogId<u64>> {
        use openraft::storage::RaftLogStorage;
        let mut log = self.log.clone();
        log.get_log_state().await.ok().and_then(|s| s.last_log_id)
    }

    /// The current metadata as this broker has applied it.
    pub(crate) fn state(&self) -> Arc<ClusterState> {
        self.state.borrow().clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    /// The controller leader's node id, if there is one now.
    pub(crate) fn leader(&self) -> Option<i32> {
        self.raft
            .metrics()
            .borrow()
            .current_leader
            .map(|l| l as i32)
    }

    /// The controller leader, if it leads with a quorum as far as this broker can tell:
    /// openraft 0.9 keeps a leader that lost its quorum in its role, and followers keep
    /// naming a leader that died. So this broker counts as the leader only if a quorum
    /// acknowledged it within the election timeout, and another broker only if `answers`
    /// says it answered this broker lately.
    pub(crate) fn leader_with_quorum(&self, answers: impl Fn(i32) -> bool) -> Option<i32> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader? as i32;
        if leader != self.node_id {
            return answers(leader).then_some(leader);
        }
        let voters = m.membership_config.membership().voter_ids().count();
        let lease = self.timing.election_timeout_max.as_millis() as u64;
        (voters <= 1 || m.millis_since_quorum_ack.is_some_and(|ms| ms <= lease)).then_some(leader)
    }

    fn leader_address(&self) -> Option<(i32, String)> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader)?;
        Some((leader as i32, node.addr.clone()))
    }

    /// Commits a command through the controller leader, wherever it is, waiting through
    /// elections up to the propose timeout. Fails with [`Error::OutcomeUnknown`] when the
    /// command may have reached a leader that did not confirm it in time (a leader without
    /// a quorum keeps it in its log and commits it once the quorum is back), and with
    /// [`Error::Timeout`] only when it certainly reached none. Once this broker's group
    /// stops (shutdown, after the client listener has drained) it fails with
    /// [`Error::ShuttingDown`] at once, whatever became of the command.
    pub(crate) async fn propose(&self, command: MetaCommand) -> Result<MetaResponse> {
        tokio::select! {
            r = self.propose_until_stopped(command) => r,
            _ = self.stopped.cancelled() => Err(Error::ShuttingDown),
        }
    }

    async fn propose_until_stopped(&self, command: MetaCommand) -> Result<MetaResponse> {
        let timeout = self.timing.propose_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no controller leader elected yet");
        let mut maybe_applied = false;
        while tokio::time::Instant::now() < deadline {
            let attempt = match self.leader_address() {
                Some((leader, _)) if leader == self.node_id => {
                    match tokio::time::timeout_at(deadline, self.propose_here(command.clone()))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => {
                            maybe_applied = true;
                            last = format!(
                                "this broker (node {}) leads the controller group, but no quorum of its voters confirmed the change",
                                self.node_id
                            );
                            break;
                        }
                    }
                }
                Some((leader, address)) => {
                    self.forward(leader, &address, &command, deadline, &mut maybe_applied)
                        .await
                }
                None => Err(Error::NotController { leader: None }),
            };
            match attempt {
                Ok(r) => return Ok(r),
                // This broker is stopping: no retry will get through here.
                Err(Error::ShuttingDown) => return Err(Error::ShuttingDown),
                Err(e) if e.code().is_retriable() => last = e.to_string(),
                Err(e) => return Err(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if maybe_applied {
            Err(Error::OutcomeUnknown(format!(
                "the controller quorum did not confirm the change within {timeout:?} ({last}); it may still be applied once a quorum of the controller voters answers"
            )))
        } else {
            Err(Error::Timeout(format!(
                "no controller quorum took the change within {timeout:?} ({last}); nothing was changed"
            )))
        }
    }

    /// Sends a command to the controller leader. A refused connection certainly delivered
    /// nothing; any other failure may have, and sets `maybe_applied`.
    async fn forward(
        &self,
        leader: i32,
        address: &str,
        command: &MetaCommand,
        deadline: tokio::time::Instant,
        maybe_applied: &mut bool,
    ) -> Result<MetaResponse> {
        let bytes = transport::encode(command).map_err(|e| Error::Internal(e.to_string()))?;
        let mut client = self.channels.client(address).map_err(Error::Internal)?;
        let answer =
            tokio::time::timeout_at(deadline, client.propose(pb::Proposal { command: bytes }))
                .await;
        let status = match answer {
            Ok(Ok(r)) => {
                return transport::decode(&r.into_inner().response).map_err(|e| {
                    Error::Internal(format!("controller {leader} answered undecodably: {e}"))
                });
            }
            Ok(Err(status)) => status,
            Err(_) => {
                *maybe_applied = true;
                return Err(Error::NotController { leader: None });
            }
        };
        use sluice_proto::ErrorDetailExt;
        Err(match pb::ErrorDetail::from_status(&status) {
            Some(d) if d.error_code() == sluice_proto::ErrorCode::NotController => {
                Error::NotController { leader: None }
            }
            // The leader answered with an outcome it knows to be unknown.
            Some(d) if d.error_code() == sluice_proto::ErrorCode::RequestTimedOut => {
                *maybe_applied = true;
                Error::NotController { leader: None }
            }
            Some(d) => Error::Internal(format!("controller {leader}: {}: {}", d.code, d.message)),
            None => {
                if !sluice_proto::is_connection_refused(&status) {
                    *maybe_applied = true;
                }
                self.channels.forget(address);
                Error::NotController { leader: None }
            }
        })
    }

    /// Waits until this broker has applied every metadata change the controller leader
    /// had committed when asked (a linearizable read of the metadata), within `timeout`,
    /// through an election if one is under way. After `Ok`, a topic missing from
    /// [`Controller::state`] does not exist.
    pub(crate) async fn catch_up(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no controller leader elected yet");
        let index = loop {
            match tokio::time::timeout_at(deadline, self.read_index()).await {
                Ok(Ok(index)) => break index,
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => {}
            }
            if tokio::time::Instant::now() + Duration::from_millis(50) >= deadline {
                return Err(Error::Timeout(format!(
                    "no controller leader gave its commit index within {timeout:?} ({last})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(index, "catching up with the controller")
            .await
            .map(|_| ())
            .map_err(|e| {
                Error::Timeout(format!(
                    "this broker (node {}) did not apply the controller's metadata up to index {index:?} within {timeout:?}: {e}",
                    self.node_id
                ))
            })
    }

    /// The controller leader's read index, asked of it wherever it is.
    async fn read_index(&self) -> Result<Option<u64>> {
        match self.leader_address() {
            Some((leader, _)) if leader == self.node_id => self.read_index_here().await,
            Some((leader, address)) => {
                let mut client = self.channels.client(&address).map_err(Error::Internal)?;
                match client.read_index(pb::ReadIndexRequest {}).await {
                    Ok(r) => Ok(u64::try_from(r.into_inner().index).ok()),
                    Err(status) => Err(Error::Internal(format!(
                        "controller leader {leader} did not give its commit index: {}",
                        status.message()
                    ))),
                }
            }
            None => Err(Error::NotController { leader: None }),
        }
    }

    /// The read index of this node, which must lead the group: its commit index, once a
    /// quorum confirmed it still leads.
    pub(crate) async fn read_index_here(&self) -> Result<Option<u64>> {
        match self.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(read.map(|l| l.index)),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(Error::NotController {
                    leader: f.leader_node.map(|n| n.addr),
                })
            }
            Err(e) => {
                tracing::debug!(cause = %e, "controller read index");
                Err(Error::NotController { leader: None })
            }
        }
    }

    /// Commits a command on this node, which must lead the group.
    pub(crate) async fn propose_here(&self, command: MetaCommand) -> Result<MetaResponse> {
        // A stopped group would answer too, after openraft logs the call as an error.
        if self.stopped.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        if let MetaCommand::RegisterBroker { broker: b, .. } = &command {
            let known = self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&(b.node_id as u64))
                .is_some();
            if !known {
                self.raft
                    .add_learner(b.node_id as u64, BasicNode::new(&b.raft_address), false)
                    .await
                    .map_err(|e| write_error(e, "adding a broker to the controller group"))?;
            }
        }
        self.raft
            .client_write(command)
            .await
            .map(|r| r.data)
            .map_err(|e| write_error(e, "committing"))
    }

    pub(crate) async fn shutdown(&self) {
        self.stopped.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::error!(cause = %e, "stopping the controller Raft");
        }
    }
}

fn write_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>, what: &str) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotController {
            leader: f.leader_node.map(|n| n.addr),
        },
        other => Error::Internal(format!("controller {what}: {other}")),
    }
}
