//! Group membership from the consumer's side (KIP-848): a background task heartbeats with
//! the subscription and the partitions this consumer owns, and keeps the assignment the
//! coordinator answers. `poll` reconciles the consumer with it: revoked partitions stop
//! being read and are released (after a commit with auto-commit, or at the next `poll` so
//! the application can commit them after seeing [`PartitionEvent::Revoked`]); assigned ones
//! start at the group's committed offset (else `auto.offset.reset`). A member the group
//! fenced or forgot drops every partition without committing and joins again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_proto::{ErrorCode, pb};

use crate::TopicPartition;
use crate::error::Error;
use crate::groups::GroupCalls;

/// Until the first answer says otherwise.
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// After a heartbeat failed for a reason retrying within the request timeout did not fix.
const FAILED_HEARTBEAT_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub(super) struct MemberState {
    pub member_id: String,
    pub epoch: i32,
    /// What this consumer owns (reads, or has not released yet).
    pub owned: BTreeSet<TopicPartition>,
    /// The coordinator's latest answer.
    pub assignment: Option<BTreeSet<TopicPartition>>,
    /// Fenced or forgotten: drop everything (no commit) and join again.
    pub lost: bool,
    /// A failure retrying cannot fix, for `poll` to return.
    pub error: Option<Error>,
}

#[derive(Debug)]
pub(super) struct Member {
    pub state: Arc<Mutex<MemberState>>,
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
    calls: Arc<GroupCalls>,
    topics: Vec<String>,
    client_id: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        // Without `close`, the coordinator removes the member after its session timeout.
        self.task.abort();
    }
}

fn by_topic(tps: &BTreeSet<TopicPartition>) -> Vec<pb::TopicPartitions> {
    let mut out: Vec<pb::TopicPartitions> = Vec::new();
    for tp in tps {
        match out.last_mut() {
            Some(t) if t.topic == tp.topic => t.partitions.push(tp.partition),
            _ => out.push(pb::TopicPartitions {
                topic: tp.topic.clone(),
                partitions: vec![tp.partition],
            }),
        }
    }
    out
}

impl Member {
    /// Joins the group and keeps heartbeating until dropped or left.
    pub(super) fn start(calls: GroupCalls, topics: Vec<String>, client_id: String) -> Member {
        let state = Arc::new(Mutex::new(MemberState::default()));
        let wake = Arc::new(tokio::sync::Notify::new());
        let calls = Arc::new(calls);
        let task = tokio::spawn(heartbeat_loop(
            calls.clone(),
            state.clone(),
            wake.clone(),
            topics.clone(),
            client_id.clone(),
        ));
        Member {
            state,
            wake,
            task,
            calls,
            topics,
            client_id,
        }
    }

    /// Tells the coordinator at once what this consumer owns now.
    pub(super) fn set_owned(&self, owned: BTreeSet<TopicPartition>) {
        self.state.lock().owned = owned;
        self.wake.notify_one();
    }

    /// Leaves the group: its partitions go to the others at once.
    pub(super) async fn leave(&self) -> crate::Result<()> {
        self.task.abort();
        let (member_id, epoch) = {
            let s = self.state.lock();
            (s.member_id.clone(), s.epoch)
        };
        if member_id.is_empty() || epoch <= 0 {
            return Ok(());
        }
        let req = pb::GroupHeartbeatRequest {
            group: String::new(),
            member_id,
            member_epoch: -1,
            topics: self.topics.clone(),
            owned: Vec::new(),
            client_id: self.client_id.clone(),
        };
        self.calls
            .call("leaving the group", |mut c| {
                let mut req = req.clone();
                req.group = self.calls.group().to_string();
                async move { c.heartbeat(req).await }
            })
            .await
            .map(|_| ())
    }
}

async fn heartbeat_loop(
    calls: Arc<GroupCalls>,
    state: Arc<Mutex<MemberState>>,
    wake: Arc<tokio::sync::Notify>,
    topics: Vec<String>,
    client_id: String,
) {
    let mut interval = DEFAULT_HEARTBEAT_INTERVAL;
    loop {
        let req = {
            let s = state.lock();
            pb::GroupHeartbeatRequest {
                group: calls.group().to_string(),
                member_id: s.member_id.clone(),
                member_epoch: s.epoch,
                topics: topics.clone(),
                owned: if s.epoch == 0 {
                    Vec::new()
                } else {
                    by_topic(&s.owned)
                },
                client_id: client_id.clone(),
            }
        };
        let answer = calls
            .call("heartbeating", |mut c| {
                let req = req.clone();
                async move { c.heartbeat(req).await }
            })
            .await;
        let mut pause = interval;
        match answer {
            Ok(resp) => {
                if resp.heartbeat_interval_ms > 0 {
                    interval = Duration::from_millis(resp.heartbeat_interval_ms as u64);
                    pause = interval;
                }
                let assignment = resp
                    .assignment
                    .into_iter()
                    .flat_map(|t| {
                        let topic = t.topic;
                        t.partitions
                            .into_iter()
                            .map(move |p| TopicPartition::new(topic.clone(), p))
                    })
                    .collect();
                let mut s = state.lock();
                s.member_id = resp.member_id;
                s.epoch = resp.member_epoch;
                s.assignment = Some(assignment);
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::UnknownMemberId | ErrorCode::FencedMemberEpoch)
                ) =>
            {
                tracing::warn!(group = %calls.group(), cause = %e, "this consumer is out of its group; dropping its partitions and joining again");
                let mut s = state.lock();
                s.epoch = 0;
                s.lost = true;
                s.assignment = Some(BTreeSet::new());
                pause = Duration::ZERO;
            }
            Err(e) if e.is_retriable() => {
                tracing::debug!(group = %calls.group(), cause = %e, "heartbeat failed; trying again");
                pause = FAILED_HEARTBEAT_PAUSE;
            }
            Err(e) => {
                state.lock().error = Some(e);
                pause = FAILED_HEARTBEAT_PAUSE.max(interval);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = wake.notified() => {}
        }
    }
}
