//! Peer liveness and crash takeover: campaigning for the partitions (and controller leadership) of a broker whose process is gone.

use super::*;

impl Broker {
    /// Idle partition groups cost (almost) nothing: a leader with no writes for
    /// [`QUIESCE_AFTER`] asks its followers to stop their election timers and then stops its
    /// heartbeats. Instead, every broker pings every other broker each [`PING_INTERVAL`]; a
    /// follower whose quiesced leader's broker stops answering for [`LEADER_SILENCE`]
    /// restarts its election timer, and the group elects a new leader as usual. A write
    /// resumes heartbeats (leader) and election timers (followers, on the new entries).
    pub(super) async fn run_liveness(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PING_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rounds = 0u64;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            rounds += 1;
            let state = self.controller.state();
            let me = self.node_id();
            for b in state.brokers.values().filter(|b| b.node_id != me) {
                let (broker, node, address) =
                    (self.clone(), b.node_id as u64, b.raft_address.clone());
                self.tasks.spawn(async move {
                    let ping = |broker: &Arc<Self>| {
                        let client = broker.peers.client(&address);
                        async move {
                            let mut client = client.map_err(tonic::Status::unavailable)?;
                            let ping = client.ping(sluice_proto::pb::PingRequest { from: me });
                            tokio::time::timeout(PING_INTERVAL * 2, ping)
                                .await
                                .map_err(|_| tonic::Status::deadline_exceeded("no answer"))?
                        }
                    };
                    let mut answer = ping(&broker).await;
                    // A connection the peer closed fails the next call on it: ask again on a
                    // new one, which tells whether anybody still listens there.
                    if answer
                        .as_ref()
                        .is_err_and(|s| s.code() == tonic::Code::Unavailable && !is_refused(s))
                    {
                        broker.peers.forget(&address);
                        answer = ping(&broker).await;
                    }
                    match answer {
                        Ok(_) => {
                            if let Some(since) = broker.peers.mark_answer(node) {
                                tracing::info!(
                                    broker = node,
                                    %address,
                                    down_for = ?since.elapsed(),
                                    "broker answers again"
                                );
                            }
                        }
                        Err(status) if is_refused(&status) => {
                            let was_up = broker.peers.last_answer(node).is_some();
                            if broker.peers.mark_refused(node) && was_up {
                                tracing::warn!(
                                    broker = node,
                                    %address,
                                    "broker refuses connections: its process is down"
                                );
                                broker.tasks.spawn(broker.clone().take_over_from(node));
                            }
                        }
                        _ => {}
                    }
                });
            }
            // Followers: a quiesced group whose leader's broker went silent elects again. One
            // that refuses connections is taken over instead (`take_over_from`): restarting
            // the timers of every follower of an idle group at once splits votes.
            for (group, leader) in self.quiesced.snapshot() {
                let silent = self
                    .peers
                    .last_answer(leader)
                    .is_none_or(|t| t.elapsed() > LEADER_SILENCE);
                if silent
                    && !self.peers.refuses(leader)
                    && self.quiesced.remove(group)
                    && let Some(raft) = self.groups.get(group)
                {
                    tracing::info!(
                        group,
                        leader,
                        "leader broker silent; restarting the election timer"
                    );
                    raft.runtime_config().tick(true);
                    raft.runtime_config().elect(true);
                }
            }
            // Leaders: quiesce idle groups (checked less often than pings).
            if rounds.is_multiple_of(5) {
                for t in self.local_topics() {
                    let replicas: Vec<_> = t.replicas.read().values().cloned().collect();
                    for r in replicas {
                        if r.should_quiesce(QUIESCE_AFTER) {
                            let group = t.record.group(r.id);
                            self.tasks.spawn(async move { r.quiesce(group).await });
                        }
                    }
                }
            }
        }
    }

    /// Elects new leaders, without waiting for election timeouts, for the partitions (and
    /// the controller) whose leader was on broker `dead`, once `dead` refuses connections:
    /// its process is gone (a crash, an OOM kill, `kill -9`), so its leaderships are
    /// certainly over. A silent broker (a network partition, a stalled host) is left to the
    /// election timers, as in Raft.
    ///
    /// Per group only the follower with the most up-to-date log campaigns (it asks the other
    /// followers for theirs; lowest node id on a tie): two candidates at once would split
    /// the vote, and one with a shorter log would be refused.
    pub(super) async fn take_over_from(self: Arc<Self>, dead: u64) {
        // openraft's followers refuse votes for the leader's lease (election_timeout_max)
        // after the last entries they had from it, and it died before it refused us.
        let partition_lease = ReplicaTiming::default().election_timeout_max;
        let controller_lease = self.controller.timing().election_timeout_max;
        tokio::time::sleep(partition_lease + TAKE_OVER_MARGIN).await;
        if !self.peers.refuses(dead) || self.shutdown.is_cancelled() {
            return;
        }
        let mut led = Vec::new();
        for (group, raft) in self.groups.all() {
            if let Some(voters) = orphaned_voters(&raft.metrics().borrow(), dead) {
                led.push((group, raft, voters));
            }
        }
        let campaign = self
            .best_placed(
                dead,
                led.iter().map(|(g, _, v)| (*g, v.clone())).collect(),
                |groups| {
                    let logs: Vec<_> = groups
                        .iter()
                        .filter_map(|g| self.groups.log(*g).map(|log| (*g, log)))
                        .collect();
                    // Reading a log's end waits for an append's fsync.
                    async move {
                        tokio::task::spawn_blocking(move || {
                            logs.into_iter()
                                .map(|(g, log)| (g, log.last_log_id()))
                                .collect()
                        })
                        .await
                        .unwrap_or_default()
                    }
                },
            )
            .await;
        let mut campaigns = 0;
        for (group, raft, _) in led {
            if campaign.contains(&group) {
                self.quiesced.remove(group);
                raft.runtime_config().tick(true);
                raft.runtime_config().elect(true);
                if raft.trigger().elect().await.is_ok() {
                    campaigns += 1;
                }
                continue;
            }
            // Not this follower's to win: if the one that should campaign has not won by
            // then, this one's election timer takes over (an idle group's was stopped).
            let broker = self.clone();
            self.tasks.spawn(async move {
                tokio::time::sleep(partition_lease * 2).await;
                let orphaned = raft.metrics().borrow().current_leader == Some(dead);
                if orphaned && broker.quiesced.remove(group) {
                    raft.runtime_config().tick(true);
                    raft.runtime_config().elect(true);
                }
            });
        }
        if campaigns > 0 {
            tracing::info!(
                broker = dead,
                partitions = campaigns,
                "campaigning for the partitions the downed broker led"
            );
        }
        // The controller group's lease is longer.
        tokio::time::sleep(controller_lease.saturating_sub(partition_lease)).await;
        let controller = &self.controller.raft;
        if !self.peers.refuses(dead) || self.shutdown.is_cancelled() {
            return;
        }
        let Some(voters) = orphaned_voters(&controller.metrics().borrow(), dead) else {
            return;
        };
        let campaign = self
            .best_placed(dead, vec![(CONTROLLER_GROUP, voters)], |_| async {
                BTreeMap::from([(CONTROLLER_GROUP, self.controller.last_log_id().await)])
            })
            .await;
        if campaign.contains(&CONTROLLER_GROUP) && controller.trigger().elect().await.is_ok() {
            tracing::info!(
                broker = dead,
                "campaigning for the controller leadership the downed broker held"
            );
        }
    }

    /// Of `groups` (with their voters) whose leader `dead` is gone, the ones where this
    /// broker's log is the most up-to-date among the voters that answer (lowest node id on a
    /// tie), provided they make a majority with it. `own` reads this broker's log ends; the
    /// other voters are asked meanwhile, one call per broker for all the groups.
    pub(super) async fn best_placed<F, Fut>(
        &self,
        dead: u64,
        groups: Vec<(u64, Vec<u64>)>,
        own: F,
    ) -> std::collections::BTreeSet<u64>
    where
        F: FnOnce(Vec<u64>) -> Fut,
        Fut: std::future::Future<Output = BTreeMap<u64, Option<openraft::LogId<u64>>>>,
    {
        if groups.is_empty() {
            return Default::default();
        }
        let me = self.node_id() as u64;
        let mut asked: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (group, voters) in &groups {
            for v in voters.iter().filter(|v| **v != me && **v != dead) {
                asked.entry(*v).or_default().push(*group);
            }
        }
        let state = self.controller.state();
        let questions = asked.into_iter().filter_map(|(peer, groups)| {
            let address = state.brokers.get(&(peer as i32))?.raft_address.clone();
            let mut client = self.peers.client(&address).ok()?;
            Some(async move {
                let call = client.log_ends(sluice_proto::pb::LogEndsRequest { groups });
                let reply = tokio::time::timeout(LOG_ENDS_TIMEOUT, call).await;
                (peer, reply)
            })
        });
        let (own, replies) = tokio::join!(
            own(groups.iter().map(|(g, _)| *g).collect()),
            futures::future::join_all(questions)
        );
        let mut ends: BTreeMap<(u64, u64), Option<openraft::LogId<u64>>> = BTreeMap::new();
        for (peer, reply) in replies {
            let Ok(Ok(reply)) = reply else {
                continue;
            };
            for (group, bytes) in reply.into_inner().last_log_ids {
                if let Ok(last) = crate::raft::transport::decode(&bytes) {
                    ends.insert((group, peer), last);
                }
            }
        }
        groups
            .into_iter()
            .filter(|(group, voters)| {
                let Some(&mine) = own.get(group) else {
                    return false;
                };
                let answers: Vec<_> = voters
                    .iter()
                    .filter_map(|v| ends.get(&(*group, *v)).map(|last| (*v, *last)))
                    .collect();
                // Without a majority answering no election can succeed yet: the timers will.
                let quorum = voters.len() / 2 + 1;
                answers.len() + 1 >= quorum
                    && answers.iter().all(|(v, last)| {
                        (mine, std::cmp::Reverse(me)) > (*last, std::cmp::Reverse(*v))
                    })
            })
            .map(|(group, _)| group)
            .collect()
    }
}
