//! Moving and resting leadership: quiescing idle groups, the preferred-leader hand-back and the controlled-shutdown hand-off.

use super::*;

impl Replica {
    /// Whether this leader has been idle long enough to quiesce its group.
    pub(crate) fn should_quiesce(&self, idle: Duration) -> bool {
        !self.quiesced.load(std::sync::atomic::Ordering::Acquire)
            && self.is_leader()
            && self.last_write.lock().elapsed() >= idle
    }

    /// Asks every follower to stop its election timer; if all agree, stops heartbeats.
    pub(crate) async fn quiesce(&self, group: u64) {
        if self
            .quiescing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        self.quiesce_followers(group).await;
        self.quiescing
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Asks every follower but `except` to stop its election timer under this leader's
    /// current term; returns that term if all of them agreed.
    pub(super) async fn pause_followers(&self, group: u64, except: Option<i32>) -> Option<u64> {
        let (term, followers) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let followers: Vec<String> = m
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.node_id as u64 && Some(**id as i32) != except)
                .map(|(_, n)| n.addr.clone())
                .collect();
            (m.current_term, followers)
        };
        for address in &followers {
            let mut client = self.channels.client(address).ok()?;
            let req = sluice_proto::pb::QuiesceRequest {
                group,
                leader: self.node_id as u64,
                term,
            };
            match tokio::time::timeout(Duration::from_secs(1), client.quiesce(req)).await {
                Ok(Ok(r)) if r.get_ref().accepted => {}
                _ => return None,
            }
        }
        Some(term)
    }

    pub(super) async fn quiesce_followers(&self, group: u64) {
        if self.pause_followers(group, None).await.is_none() {
            return;
        }
        // A write may have arrived meanwhile: then stay active.
        if self.last_write.lock().elapsed() < Duration::from_millis(100) || !self.is_leader() {
            return;
        }
        self.raft.runtime_config().heartbeat(false);
        self.raft.runtime_config().tick(false);
        self.quiesced
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::debug!(topic = %self.topic, partition = self.id, "quiesced an idle group");
    }

    /// Hands leadership to the preferred replica if this leader is not it and it is in sync
    /// and caught up. Returns whether leadership moved.
    pub(crate) async fn hand_back_leadership(&self, group: u64) -> bool {
        let preferred = self.preferred();
        if preferred == self.node_id || !self.is_leader() {
            return false;
        }
        if self
            .matched(preferred)
            .is_none_or(|m| m < self.last_log_index())
            || !self.in_sync().contains(&preferred)
        {
            return false;
        }
        tracing::info!(topic = %self.topic, partition = self.id, to = preferred, "handing leadership back to the preferred replica");
        self.hand_over(group, preferred).await
    }

    /// Controlled shutdown: hands leadership to an in-sync follower (the preferred replica
    /// when it is one, else the one furthest along). Returns the new leader, if it moved.
    pub(crate) async fn hand_off(&self, group: u64) -> Option<i32> {
        if !self.is_leader() {
            return None;
        }
        let isr = self.in_sync();
        let preferred = self.preferred();
        let target = if preferred != self.node_id && isr.contains(&preferred) {
            preferred
        } else {
            isr.iter()
                .copied()
                .filter(|r| *r != self.node_id)
                .max_by_key(|r| (self.matched(*r), std::cmp::Reverse(*r)))?
        };
        self.hand_over(group, target).await.then_some(target)
    }

    /// The last log index the leader knows `follower` holds.
    pub(super) fn matched(&self, follower: i32) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.replication
            .as_ref()?
            .get(&(follower as u64))
            .copied()
            .flatten()
            .map(|l| l.index)
    }

    pub(super) fn last_log_index(&self) -> u64 {
        self.raft.metrics().borrow().last_log_index.unwrap_or(0)
    }

    /// Hands leadership to `target`, an in-sync follower: the other followers pause their
    /// election timers, new writes wait, and once `target` holds every entry this leader
    /// stops its heartbeats and asks `target` to campaign, which it wins (it has the
    /// longest log and nobody else campaigns). Writes that waited are then answered
    /// NOT_LEADER naming the new leader, so producers follow at once. If `target` does not
    /// catch up within a second, or no new term appears within six election timeouts, this
    /// leader resumes. openraft 0.9 has no leadership transfer; this builds one from its
    /// runtime switches.
    pub(super) async fn hand_over(&self, group: u64, target: i32) -> bool {
        let started = tokio::time::Instant::now();
        let Some(term) = self.pause_followers(group, Some(target)).await else {
            return false;
        };
        let Some(target_address) = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&(target as u64))
            .map(|n| n.addr.clone())
        else {
            return false;
        };
        // Appends would keep the followers from voting for anyone, and `target` must hold
        // every entry to win: new writes wait, and the ones already on their way into the
        // log are let through first.
        self.handing_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let catch_up = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.proposing.load(std::sync::atomic::Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < catch_up
        {
            tokio::time::sleep(HAND_OVER_POLL).await;
        }
        let caught_up = self.proposing.load(std::sync::atomic::Ordering::SeqCst) == 0
            && self
                .watch_metrics(catch_up, |m| {
                    let matched = m
                        .replication
                        .as_ref()?
                        .get(&(target as u64))
                        .copied()
                        .flatten()
                        .map(|l| l.index);
                    (matched >= m.last_log_index).then_some(())
                })
                .await
                .is_some();
        self.raft.runtime_config().heartbeat(false);
        self.raft.runtime_config().tick(false);
        let asked = caught_up
            && match self.channels.client(&target_address) {
                Ok(mut client) => {
                    let req = sluice_proto::pb::ElectRequest {
                        group,
                        leader: self.node_id as u64,
                        term,
                    };
                    matches!(
                        tokio::time::timeout(Duration::from_secs(1), client.elect(req)).await,
                        Ok(Ok(r)) if r.get_ref().accepted
                    )
                }
                Err(_) => false,
            };
        let deadline = tokio::time::Instant::now() + self.timing.election_timeout_max * 6;
        let new_term = if asked {
            self.watch_metrics(deadline, |m| {
                (m.current_term > term).then_some(m.current_term)
            })
            .await
        } else {
            None
        };
        let moved = new_term.is_some();
        if let Some(new_term) = new_term {
            // Writes that waited are answered NOT_LEADER naming `target` until this
            // replica hears from the new leader itself.
            *self.handed_to.lock() = Some((target, new_term));
            // The term moves here when this replica grants `target` its vote, before the
            // answer has reached `target`: wait until `target` leads (its first
            // AppendEntries arrives), so that a broker shutting down next does not take
            // the answer down with it and leave `target` campaigning until the other
            // follower's lease runs out.
            let target_id = target as u64;
            self.watch_metrics(deadline, |m| {
                (m.current_leader == Some(target_id)).then_some(())
            })
            .await;
        }
        tracing::debug!(topic = %self.topic, partition = self.id, target, caught_up, asked, moved, took = ?started.elapsed(), "leadership hand-over");
        // As a follower it must campaign again if the new leader fails; if it still leads,
        // it resumes heartbeats.
        self.raft.runtime_config().tick(true);
        self.raft.runtime_config().heartbeat(true);
        self.handing_over
            .store(false, std::sync::atomic::Ordering::SeqCst);
        moved
    }

    /// Replicas (the leader included) whose log holds entry `index`.
    pub(super) fn holding(&self, index: u64) -> usize {
        holding(&self.raft.metrics().borrow(), self.node_id, index)
    }
}
