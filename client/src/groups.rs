//! Consumer groups from the client: finding a group's coordinator (the broker leading the
//! group's partition of `__consumer_offsets`) and calling it, following it when it moves.
//! NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE and COORDINATOR_LOAD_IN_PROGRESS (and a
//! coordinator that does not answer) send the call to a freshly found coordinator after a
//! backoff (50 ms doubling to 1 s), within the request timeout. Group calls are safe to send
//! again: a commit repeated writes the same offsets.

use std::future::Future;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_proto::ErrorCode;
use sluice_proto::pb::{self, groups_client::GroupsClient};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::cluster::Cluster;
use crate::error::{Error, Result};

const BACKOFF: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Calls to one group's coordinator.
#[derive(Debug)]
pub(crate) struct GroupCalls {
    cluster: Cluster,
    group: String,
    /// The coordinator's address, once found.
    coordinator: Mutex<Option<String>>,
}

impl GroupCalls {
    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    pub(crate) fn new(cluster: Cluster, group: impl Into<String>) -> Self {
        GroupCalls {
            cluster,
            group: group.into(),
            coordinator: Mutex::new(None),
        }
    }

    /// Asks the brokers this client knows, in turn, where the group's coordinator is.
    async fn find(&self) -> Result<String> {
        let timeout = self.cluster.config.request_timeout;
        let mut last = None;
        for address in self.cluster.known_brokers() {
            let mut client = self.cluster.groups_client(&address)?;
            let req = pb::FindCoordinatorRequest {
                group: self.group.clone(),
            };
            match tokio::time::timeout(timeout, client.find_coordinator(req)).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner().address),
                Ok(Err(status)) => {
                    let e = Error::from_status(&address, status);
                    if !e.is_retriable() {
                        return Err(e);
                    }
                    last = Some(e);
                }
                Err(_) => {
                    last = Some(Error::Timeout {
                        what: format!("finding the coordinator of group '{}'", self.group),
                        after: timeout,
                        last: format!("no answer from {address}"),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidArgument("no bootstrap broker".into())))
    }

    /// Runs `call` against the group's coordinator (`what` names it in a timeout).
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T>
    where
        F: FnMut(GroupsClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let timeout = self.cluster.config.request_timeout;
        let deadline = Instant::now() + timeout;
        let mut backoff = BACKOFF;
        loop {
            let cached = self.coordinator.lock().clone();
            let found = match cached {
                Some(a) => Ok(a),
                None => self.find().await,
            };
            let e = match found {
                Err(e) => e,
                Ok(address) => {
                    let client = self.cluster.groups_client(&address)?;
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left.max(Duration::from_millis(1)), call(client))
                        .await
                    {
                        Ok(Ok(resp)) => {
                            *self.coordinator.lock() = Some(address);
                            return Ok(resp.into_inner());
                        }
                        Ok(Err(status)) => Error::from_status(&address, status),
                        Err(_) => Error::Timeout {
                            what: format!("{what} (group '{}')", self.group),
                            after: timeout,
                            last: format!("no answer from {address}"),
                        },
                    }
                }
            };
            let moved = matches!(
                e.code(),
                Some(
                    ErrorCode::NotCoordinator
                        | ErrorCode::CoordinatorNotAvailable
                        | ErrorCode::CoordinatorLoadInProgress
                )
            ) || !matches!(e, Error::Broker { .. });
            if moved {
                *self.coordinator.lock() = None;
            }
            if !e.is_retriable() || Instant::now() + backoff >= deadline {
                return Err(e);
            }
            tracing::debug!(group = %self.group, cause = %e, "retrying a group call");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Commits `offsets` (the next offset to read of each partition), as `member` (id and
    /// epoch) when given.
    pub(crate) async fn commit(
        &self,
        offsets: &[(crate::TopicPartition, i64)],
        member: Option<(String, i32)>,
    ) -> Result<()> {
        let (member_id, member_epoch) = member.unwrap_or_default();
        let req = pb::OffsetCommitRequest {
            member_id,
            member_epoch,
            group: self.group.clone(),
            partitions: commit_partitions(offsets),
        };
        self.call("committing offsets", |mut c| {
            let req = req.clone();
            async move { c.offset_commit(req).await }
        })
        .await
        .map(|_| ())
    }

    /// The group's committed offsets: of `partitions`, or all of them (empty).
    pub(crate) async fn committed(
        &self,
        partitions: &[crate::TopicPartition],
    ) -> Result<Vec<pb::CommittedOffset>> {
        let req = pb::OffsetFetchRequest {
            group: self.group.clone(),
            partitions: partitions
                .iter()
                .map(|tp| pb::TopicPartitionRef {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                })
                .collect(),
        };
        self.call("reading committed offsets", |mut c| {
            let req = req.clone();
            async move { c.offset_fetch(req).await }
        })
        .await
        .map(|r| r.offsets)
    }
}

/// Offsets as the commit and reset requests carry them (no metadata).
pub(crate) fn commit_partitions(
    offsets: &[(crate::TopicPartition, i64)],
) -> Vec<pb::OffsetCommitPartition> {
    offsets
        .iter()
        .map(|(tp, offset)| pb::OffsetCommitPartition {
            topic: tp.topic.clone(),
            partition: tp.partition,
            offset: *offset,
            metadata: String::new(),
        })
        .collect()
}
