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

use tokio::time::Instant;

use parking_lot::Mutex;
use sluice_proto::{ErrorCode, pb};

use super::{Assigned, AutoOffsetReset, Consumer, Offset, PartitionEvent};
use crate::TopicPartition;
use crate::error::{Error, Result};
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
    /// Offset resets the coordinator announced and `poll` has not applied yet: their
    /// partitions are read again from the committed offsets, and not committed meanwhile.
    pub resets: Vec<(u64, BTreeSet<TopicPartition>)>,
    /// The highest reset applied (reported in every heartbeat).
    pub resets_applied: u64,
}

impl MemberState {
    /// Partitions whose offsets were reset and are not re-read yet.
    pub(super) fn resetting(&self) -> BTreeSet<TopicPartition> {
        self.resets
            .iter()
            .flat_map(|(_, p)| p.iter().cloned())
            .collect()
    }
}

#[derive(Debug)]
pub(super) struct Member {
    pub state: Arc<Mutex<MemberState>>,
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
    calls: Arc<GroupCalls>,
    topics: Vec<String>,
    client_id: String,
    instance_id: Option<String>,
    pattern: Option<String>,
}

impl Drop for Member {
    fn drop(&mut self) {
        // Without `close`, the coordinator removes the member after its session timeout.
        self.task.abort();
    }
}

/// The partitions of a heartbeat answer's topic lists.
fn from_topics(topics: Vec<pb::TopicPartitions>) -> BTreeSet<TopicPartition> {
    topics
        .into_iter()
        .flat_map(|t| {
            let topic = t.topic;
            t.partitions
                .into_iter()
                .map(move |p| TopicPartition::new(topic.clone(), p))
        })
        .collect()
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
    pub(super) fn start(
        calls: GroupCalls,
        topics: Vec<String>,
        client_id: String,
        instance_id: Option<String>,
        pattern: Option<String>,
    ) -> Member {
        let state = Arc::new(Mutex::new(MemberState::default()));
        let wake = Arc::new(tokio::sync::Notify::new());
        let calls = Arc::new(calls);
        let task = tokio::spawn(heartbeat_loop(
            calls.clone(),
            state.clone(),
            wake.clone(),
            topics.clone(),
            client_id.clone(),
            instance_id.clone(),
            pattern.clone(),
        ));
        Member {
            state,
            wake,
            task,
            calls,
            topics,
            client_id,
            instance_id,
            pattern,
        }
    }

    /// Tells the coordinator at once what this consumer owns now.
    pub(super) fn set_owned(&self, owned: BTreeSet<TopicPartition>) {
        self.state.lock().owned = owned;
        self.wake.notify_one();
    }

    /// Leaves the group: its partitions go to the others at once, or, for a static member
    /// (`group.instance.id`), stay its own until it is back or its session times out.
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
            member_epoch: if self.instance_id.is_some() { -2 } else { -1 },
            topics: self.topics.clone(),
            owned: Vec::new(),
            client_id: self.client_id.clone(),
            resets_applied: 0,
            instance_id: self.instance_id.clone().unwrap_or_default(),
            topic_regex: self.pattern.clone().unwrap_or_default(),
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
    instance_id: Option<String>,
    pattern: Option<String>,
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
                resets_applied: s.resets_applied,
                instance_id: instance_id.clone().unwrap_or_default(),
                topic_regex: pattern.clone().unwrap_or_default(),
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
                let assignment = from_topics(resp.assignment);
                let mut s = state.lock();
                s.member_id = resp.member_id;
                s.epoch = resp.member_epoch;
                s.assignment = Some(assignment);
                for r in resp.resets {
                    if r.id > s.resets_applied && !s.resets.iter().any(|(id, _)| *id == r.id) {
                        s.resets.push((r.id, from_topics(r.partitions)));
                    }
                }
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

/// The consumer's side of its group: joining, reconciling, committing.
impl Consumer {
    /// Assigns `partitions`, each starting at the group's committed offset; a partition
    /// with none starts as `auto.offset.reset` says (`None`: an error naming every such
    /// partition, assigning nothing). Needs `group.id`.
    pub async fn assign_committed(&mut self, partitions: Vec<TopicPartition>) -> Result<()> {
        let starts = self.committed_starts(&partitions).await?;
        self.assign_each(starts).await
    }

    /// Where each of `partitions` starts for the group: its committed offset, else as
    /// `auto.offset.reset` says (`None`: an error naming every such partition).
    async fn committed_starts(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, Offset)>> {
        let committed = self.committed(partitions).await?;
        let mut starts = Vec::new();
        let mut missing = Vec::new();
        for (tp, offset) in committed {
            match (offset, self.config.auto_offset_reset) {
                (Some(o), _) => starts.push((tp, Offset::At(o))),
                (None, AutoOffsetReset::Earliest) => starts.push((tp, Offset::Earliest)),
                (None, AutoOffsetReset::Latest) => starts.push((tp, Offset::Latest)),
                (None, AutoOffsetReset::None) => missing.push(tp.to_string()),
            }
        }
        if !missing.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "group '{}' has no committed offset for {} and auto.offset.reset is none: commit offsets for them, or start from earliest or latest",
                self.config.group_id.as_deref().unwrap_or_default(),
                missing.join(", ")
            )));
        }
        Ok(starts)
    }

    /// Joins the consumer group (`group.id`) reading `topics`: the group's coordinator
    /// assigns this consumer its share of their partitions, and moves them as members come
    /// and go (see [`PartitionEvent::Assigned`] and [`PartitionEvent::Revoked`]). Replaces
    /// any manual assignment. Every topic must exist.
    pub async fn subscribe(&mut self, topics: Vec<String>) -> Result<()> {
        let Some(group) = self.config.group_id.clone() else {
            return Err(Error::InvalidArgument(
                "subscribe needs a group: set ConsumerConfig::group_id (or use assign)".into(),
            ));
        };
        if topics.is_empty() {
            return Err(Error::InvalidArgument(
                "subscribe to at least one topic".into(),
            ));
        }
        for t in &topics {
            self.cluster.topic(t).await?;
        }
        self.join_group(group, topics, None);
        Ok(())
    }

    /// Like [`Consumer::subscribe`], for every topic whose whole name matches `pattern` (a
    /// regular expression, e.g. `logs-.*`), now and created later: the coordinator resolves
    /// it at every heartbeat. An invalid pattern is an error from the next `poll`.
    pub async fn subscribe_pattern(&mut self, pattern: &str) -> Result<()> {
        let Some(group) = self.config.group_id.clone() else {
            return Err(Error::InvalidArgument(
                "subscribe_pattern needs a group: set ConsumerConfig::group_id".into(),
            ));
        };
        if pattern.is_empty() {
            return Err(Error::InvalidArgument("the topic pattern is empty".into()));
        }
        self.join_group(group, Vec::new(), Some(pattern.to_string()));
        Ok(())
    }

    /// Drops any assignment and starts membership of `group`.
    fn join_group(&mut self, group: String, topics: Vec<String>, pattern: Option<String>) {
        self.inflight = tokio::task::JoinSet::new();
        self.lookups = 0;
        self.buffered.clear();
        self.error = None;
        self.assigned.clear();
        self.releasing.clear();
        self.member = Some(Member::start(
            GroupCalls::new(self.cluster.clone(), group),
            topics,
            self.config.client_id.clone(),
            self.config.group_instance_id.clone(),
            pattern,
        ));
    }

    /// Stops reading `partitions` and drops what was fetched of them.
    fn drop_partitions(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            self.assigned.remove(tp);
        }
        self.buffered.retain(|r| {
            !partitions
                .iter()
                .any(|tp| tp.partition == r.partition && *tp.topic == *r.topic)
        });
    }

    /// Brings the partitions read in line with the group's latest answer (see
    /// [`group`]), and auto-commits when due.
    pub(super) async fn reconcile_group(&mut self) -> Result<()> {
        let Some(state) = self.member.as_ref().map(|m| m.state.clone()) else {
            return Ok(());
        };
        let mut changed = false;
        if !self.releasing.is_empty() {
            self.releasing.clear();
            changed = true;
        }
        let (assignment, lost, error) = {
            let mut s = state.lock();
            (
                s.assignment.take(),
                std::mem::take(&mut s.lost),
                s.error.take(),
            )
        };
        if let Some(e) = error {
            return Err(e);
        }
        if lost {
            let all: Vec<TopicPartition> = self.assigned.keys().cloned().collect();
            self.drop_partitions(&all);
            if !all.is_empty() {
                self.event(PartitionEvent::Lost { partitions: all });
            }
            changed = true;
        }
        // Offsets reset by an admin: the partitions held here are read again from the new
        // committed offsets.
        let resets = std::mem::take(&mut state.lock().resets);
        if !resets.is_empty() {
            let reset: BTreeSet<TopicPartition> = resets
                .iter()
                .flat_map(|(_, p)| p.iter().cloned())
                .filter(|tp| self.assigned.contains_key(tp))
                .collect();
            let reset: Vec<TopicPartition> = reset.into_iter().collect();
            if !reset.is_empty() {
                let starts = self.committed_starts(&reset).await?;
                self.drop_partitions(&reset);
                let backoff = self.config.retry_backoff;
                for (tp, start) in starts {
                    let mut a = Assigned::new(start.into(), backoff);
                    self.next_epoch += 1 << 20;
                    a.epoch = self.next_epoch;
                    self.assigned.insert(tp, a);
                }
            }
            let applied = resets.iter().map(|(id, _)| *id).max().unwrap_or(0);
            let mut s = state.lock();
            s.resets_applied = s.resets_applied.max(applied);
            changed = true;
        }
        if let Some(target) = assignment {
            let current: std::collections::BTreeSet<TopicPartition> =
                self.assigned.keys().cloned().collect();
            let revoked: Vec<TopicPartition> = current.difference(&target).cloned().collect();
            let added: Vec<TopicPartition> = target.difference(&current).cloned().collect();
            if !revoked.is_empty() {
                let positions: Vec<(TopicPartition, Option<i64>)> = revoked
                    .iter()
                    .map(|tp| (tp.clone(), self.position(tp)))
                    .collect();
                self.drop_partitions(&revoked);
                self.event(PartitionEvent::Revoked {
                    partitions: revoked,
                });
                if self.config.enable_auto_commit {
                    let commit: Vec<(TopicPartition, i64)> = positions
                        .into_iter()
                        .filter_map(|(tp, p)| p.map(|p| (tp, p)))
                        .collect();
                    if !commit.is_empty()
                        && let Err(e) = self.commit(&commit).await
                    {
                        tracing::warn!(cause = %e, "committing revoked partitions before releasing them");
                    }
                } else {
                    self.releasing.extend(positions);
                }
                changed = true;
            }
            if !added.is_empty() {
                let starts = self.committed_starts(&added).await?;
                let backoff = self.config.retry_backoff;
                for (tp, start) in starts {
                    let mut a = Assigned::new(start.into(), backoff);
                    self.next_epoch += 1 << 20;
                    a.epoch = self.next_epoch;
                    self.assigned.insert(tp, a);
                }
                self.event(PartitionEvent::Assigned { partitions: added });
                changed = true;
            }
        }
        if changed && let Some(m) = &self.member {
            m.set_owned(
                self.assigned
                    .keys()
                    .chain(self.releasing.keys())
                    .cloned()
                    .collect(),
            );
        }
        if self.config.enable_auto_commit
            && self.last_auto_commit.elapsed() >= self.config.auto_commit_interval
        {
            self.last_auto_commit = Instant::now();
            if let Err(e) = self.commit_sync().await {
                tracing::warn!(cause = %e, "auto-commit failed; trying again at the next interval");
            }
        }
        Ok(())
    }

    /// Commits (with auto-commit) and leaves the group at once, so its partitions move to
    /// the other members without waiting for the session timeout. Without a group, does
    /// nothing.
    pub async fn close(mut self) -> Result<()> {
        if self.member.is_none() {
            return Ok(());
        }
        // As a member, before leaving: the group refuses commits from outside.
        let committed = if self.config.enable_auto_commit {
            self.commit_sync().await.map(|_| ())
        } else {
            Ok(())
        };
        let left = match self.member.take() {
            Some(member) => member.leave().await,
            None => Ok(()),
        };
        // A member the group already dropped (its session timed out, or the group was
        // deleted) has nothing to commit or leave: closing it succeeds.
        let out = |r: Result<()>| match r {
            Err(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::UnknownMemberId | ErrorCode::FencedMemberEpoch)
                ) =>
            {
                tracing::debug!(cause = %e, "closing a consumer its group no longer has");
                Ok(())
            }
            other => other,
        };
        out(committed).and(out(left))
    }

    fn group_calls(&self) -> Result<&Arc<GroupCalls>> {
        self.group.as_ref().ok_or_else(|| {
            Error::InvalidArgument(
                "this consumer has no group.id: set ConsumerConfig::group_id to commit offsets"
                    .into(),
            )
        })
    }

    /// Commits `offsets` (the next offset to read of each partition) for the group.
    /// Acknowledged once replicated like an acks=all write.
    pub async fn commit(&self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        match self.prepare_commit(offsets)? {
            Some((calls, offsets, member)) => calls.commit(&offsets, member).await,
            None => Ok(()),
        }
    }

    /// Starts committing the position of every assigned partition that has one, without
    /// waiting (Kafka's `commitAsync()`): the handle answers with what was committed, or why
    /// not. Commits started one after the other are sent in that order, but a later one may
    /// be answered first.
    pub fn commit_async(&self) -> tokio::task::JoinHandle<Result<Vec<(TopicPartition, i64)>>> {
        let offsets = self.positions();
        let prepared = if self
            .member
            .as_ref()
            .is_some_and(|m| m.state.lock().epoch <= 0)
        {
            Ok(None)
        } else {
            self.prepare_commit(&offsets)
        };
        tokio::spawn(async move {
            match prepared? {
                Some((calls, offsets, member)) => {
                    calls.commit(&offsets, member).await?;
                    Ok(offsets)
                }
                None => Ok(Vec::new()),
            }
        })
    }

    /// The next offset to read of every assigned partition that has a position (and of
    /// revoked ones not released yet).
    fn positions(&self) -> Vec<(TopicPartition, i64)> {
        self.assigned
            .keys()
            .filter_map(|tp| self.position(tp).map(|p| (tp.clone(), p)))
            .chain(
                self.releasing
                    .iter()
                    .filter_map(|(tp, p)| p.map(|p| (tp.clone(), p))),
            )
            .collect()
    }

    /// What a commit of `offsets` sends, and as which member; `None` when nothing is left
    /// to send.
    #[allow(clippy::type_complexity)]
    fn prepare_commit(
        &self,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<
        Option<(
            Arc<GroupCalls>,
            Vec<(TopicPartition, i64)>,
            Option<(String, i32)>,
        )>,
    > {
        let (member, resetting) = match &self.member {
            None => (None, Default::default()),
            Some(m) => {
                let s = m.state.lock();
                (
                    (s.epoch > 0).then(|| (s.member_id.clone(), s.epoch)),
                    s.resetting(),
                )
            }
        };
        if self.member.is_some() && member.is_none() {
            return Err(Error::InvalidArgument(format!(
                "this consumer has not joined group '{}' yet (or is rejoining): nothing it owns to commit",
                self.config.group_id.as_deref().unwrap_or_default()
            )));
        }
        // Positions from before a reset of their committed offsets would undo it.
        let offsets: Vec<(TopicPartition, i64)> = offsets
            .iter()
            .filter(|(tp, _)| !resetting.contains(tp))
            .cloned()
            .collect();
        if offsets.is_empty() {
            return Ok(None);
        }
        Ok(Some((self.group_calls()?.clone(), offsets, member)))
    }

    /// Commits the position of every assigned partition that has one: past every record
    /// `poll` has returned (Kafka's `commitSync()`). Returns what it committed.
    pub async fn commit_sync(&self) -> Result<Vec<(TopicPartition, i64)>> {
        // Between groups (rejoining after the group dropped it) it owns nothing to commit.
        if self
            .member
            .as_ref()
            .is_some_and(|m| m.state.lock().epoch <= 0)
        {
            return Ok(Vec::new());
        }
        let offsets = self.positions();
        if !offsets.is_empty() {
            self.commit(&offsets).await?;
        }
        Ok(offsets)
    }

    /// The group's committed offset of each of `partitions` (`None`: nothing committed).
    pub async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, Option<i64>)>> {
        let found = self.group_calls()?.committed(partitions).await?;
        Ok(partitions
            .iter()
            .map(|tp| {
                let offset = found
                    .iter()
                    .find(|c| c.topic == tp.topic && c.partition == tp.partition)
                    .map(|c| c.offset)
                    .filter(|o| *o >= 0);
                (tp.clone(), offset)
            })
            .collect())
    }
}
