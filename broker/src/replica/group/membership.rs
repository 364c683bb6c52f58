//! Changing the group's replicas (a replication factor change), driven by its leader: new
//! replicas join as learners and catch up, then one membership change (openraft's joint
//! consensus) replaces the voters.

use std::collections::BTreeSet;

use super::*;

/// How often a move checks on learners catching up.
const MOVE_POLL: Duration = Duration::from_millis(50);

/// A learner is ready to vote once it holds what the leader had this long ago.
const CAUGHT_UP_WITHIN: Duration = Duration::from_secs(1);

/// What [`Replica::move_to`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Moved {
    /// The group's voters are the target replicas now.
    Done,
    /// This replica does not lead the group (or stopped leading it): its leader carries on.
    NotLeader,
    /// This leader is not one of the target replicas: it handed leadership to one that is,
    /// which carries on.
    HandedOff(i32),
    /// The change was withdrawn or replaced while this leader worked on it.
    Withdrawn,
}

impl Replica {
    /// Moves the group's voters to `target` (node id and Raft address of each), as its
    /// leader: adds the new replicas as learners, waits until they keep up with the log
    /// (however long a large partition takes: [`Replica::catching_up`] shows how far they
    /// are), then replaces the voters in one membership change. A leader that is not in
    /// `target` first hands leadership to a target replica that is in sync. `wanted` is
    /// asked while waiting whether the change still stands. Calling it again after any
    /// outcome carries on where it stopped.
    pub(crate) async fn move_to(
        &self,
        group: u64,
        target: &BTreeMap<u64, BasicNode>,
        wanted: impl Fn() -> bool,
    ) -> Result<Moved> {
        if !self.is_leader() {
            return Ok(Moved::NotLeader);
        }
        let voters: BTreeSet<u64> = target.keys().copied().collect();
        if self.voter_ids() == voters {
            return Ok(Moved::Done);
        }
        if !voters.contains(&(self.node_id as u64)) {
            let isr = self.in_sync();
            let to = voters
                .iter()
                .map(|v| *v as i32)
                .filter(|v| isr.contains(v))
                .max_by_key(|v| self.matched(*v));
            if let Some(to) = to
                && self.hand_over(group, to).await
            {
                return Ok(Moved::HandedOff(to));
            }
            return Err(self.move_error(format!(
                "this leader is not one of the new replicas {voters:?} and none of them is in sync to take over (in sync: {isr:?})"
            )));
        }
        self.wake();
        let known: BTreeSet<u64> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        for (id, node) in target.iter().filter(|(id, _)| !known.contains(id)) {
            self.raft
                .add_learner(*id, node.clone(), false)
                .await
                .map_err(|e| self.move_error(format!("adding replica {id}: {e}")))?;
            tracing::info!(topic = %self.topic, partition = self.id, replica = id, "adding a replica: catching it up");
        }
        // Learners chase a log that may keep growing: they are ready once they hold what
        // this leader held `CAUGHT_UP_WITHIN` ago.
        let mut marks = std::collections::VecDeque::new();
        loop {
            if !self.is_leader() {
                return Ok(Moved::NotLeader);
            }
            if !wanted() {
                return Ok(Moved::Withdrawn);
            }
            // A group quiesces when idle; a move keeps it awake.
            self.wake();
            let now = Instant::now();
            marks.push_back((now, self.last_log_index()));
            while marks
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > CAUGHT_UP_WITHIN)
            {
                marks.pop_front();
            }
            let needed = marks.front().map_or(0, |(_, index)| *index);
            let current = self.voter_ids();
            let ready = voters
                .iter()
                .filter(|v| !current.contains(v))
                .all(|v| self.matched(*v as i32).is_some_and(|m| m >= needed));
            if ready {
                break;
            }
            tokio::time::sleep(MOVE_POLL).await;
        }
        match self.raft.change_membership(voters.clone(), false).await {
            Ok(_) => {}
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                return Ok(Moved::NotLeader);
            }
            Err(e) => return Err(self.move_error(format!("replacing the voters: {e}"))),
        }
        tracing::info!(topic = %self.topic, partition = self.id, replicas = ?voters, "the partition's replicas changed");
        Ok(Moved::Done)
    }

    /// The replicas being added that are still catching up, with how many records each is
    /// behind this leader's log end.
    pub(crate) fn catching_up(&self) -> Vec<(i32, i64)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let end = self.log.offsets().log_end;
        membership
            .learner_ids()
            .map(|learner| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&learner).copied().flatten());
                let from = matched
                    .and_then(|l| self.log.next_offset_after(l.index))
                    .unwrap_or(0);
                (learner as i32, (end - from).max(0))
            })
            .collect()
    }

    fn voter_ids(&self) -> BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    fn move_error(&self, what: String) -> Error {
        Error::Internal(format!(
            "{}-{}: changing replicas: {what}",
            self.topic, self.id
        ))
    }
}
