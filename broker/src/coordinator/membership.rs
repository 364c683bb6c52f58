//! A consumer group's members and their partitions, on the server (Kafka 4's KIP-848
//! model): members heartbeat with their subscription and the partitions they own, and get
//! their assignment back. The coordinator computes a sticky, balanced target and moves it
//! incrementally: a partition is given to its new owner only once its old owner has
//! reported it released, and members whose partitions do not move are not disturbed.
//!
//! Pure logic: time comes in as an argument, topics' partition counts as a function, so
//! it is tested without brokers. Membership is held in memory by the coordinator; a new
//! coordinator (after a failover) does not know the members, which rejoin
//! (UNKNOWN_MEMBER_ID) and get their partitions again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::state::TopicPartition;

/// How long members may be silent, and how long one may take to give up partitions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// A member not heard from for this long is removed.
    pub session: Duration,
    /// A member still owning a partition this long after it was first told to give it up
    /// is removed (it is stuck: its partitions must not wait on it for ever).
    pub rebalance: Duration,
}

/// Why a heartbeat was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The member is not in the group (never joined, left, or was removed after its
    /// session timed out): rejoin with epoch 0.
    UnknownMember(String),
    /// The member's epoch is not one the group gave it: rejoin with epoch 0.
    FencedEpoch {
        member: String,
        sent: i32,
        current: i32,
    },
}

/// One heartbeat, as the coordinator reads it.
#[derive(Debug, Clone)]
pub(crate) struct Heartbeat {
    /// Empty to join.
    pub member_id: String,
    /// 0 to join, -1 to leave, else the epoch the group last gave the member.
    pub member_epoch: i32,
    pub topics: BTreeSet<String>,
    /// The partitions the member owns now (has not released).
    pub owned: BTreeSet<TopicPartition>,
    pub client_id: String,
    /// The highest offset reset it has applied.
    pub resets_applied: u64,
    /// `group.instance.id` (static membership): a member that rejoins with the instance id
    /// of one the group still has takes its place and its partitions, without a
    /// reassignment; one that leaves with epoch -2 keeps them until its session times out.
    pub instance_id: Option<String>,
}

/// What a member is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub member_id: String,
    pub member_epoch: i32,
    /// The partitions it may own now: its target, less those another member still owns.
    pub assignment: BTreeSet<TopicPartition>,
    /// Offset resets it has not applied yet.
    pub resets: Vec<(u64, BTreeSet<TopicPartition>)>,
    /// Partitions of its target still owned by another member: it gets them once they are
    /// released, so it should ask again soon.
    pub waiting: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub id: String,
    pub epoch: i32,
    /// The epoch it had before the last answer (which may have been lost on its way).
    prev_epoch: i32,
    pub client_id: String,
    pub topics: BTreeSet<String>,
    pub owned: BTreeSet<TopicPartition>,
    pub target: BTreeSet<TopicPartition>,
    last_seen: Instant,
    /// Offset resets of its partitions it has not applied yet.
    resets: Vec<(u64, BTreeSet<TopicPartition>)>,
    pub instance_id: Option<String>,
    /// Since when it has owned partitions no longer in its target (told to give them up).
    revoking_since: Option<Instant>,
}

/// A group's members.
#[derive(Debug, Default)]
pub(crate) struct Membership {
    /// The group's name (for what is logged).
    pub group: String,
    /// Bumped whenever the target assignment changes.
    pub epoch: i32,
    pub members: BTreeMap<String, Member>,
    /// Partition counts the target was computed with.
    counts: BTreeMap<String, i32>,
    next_member: u64,
    next_reset: u64,
    /// Members were removed since the target was last computed (by an expiry outside a
    /// heartbeat): the next heartbeat computes it again.
    stale: bool,
}

impl Membership {
    pub(crate) fn new(group: &str) -> Self {
        Self {
            group: group.to_string(),
            ..Self::default()
        }
    }

    /// Handles one heartbeat at `now`. `partitions` says how many partitions a topic has
    /// (`None`: no such topic).
    pub(crate) fn heartbeat(
        &mut self,
        hb: Heartbeat,
        now: Instant,
        timeouts: Timeouts,
        partitions: &dyn Fn(&str) -> Option<i32>,
    ) -> Result<Answer, Refused> {
        self.expire(now, timeouts);
        let mut changed = std::mem::take(&mut self.stale);
        let id = if hb.member_epoch == 0 {
            // A static member back (a restart): it takes the place of the member with its
            // instance id, partitions included, and nothing is reassigned.
            let previous = hb.instance_id.as_ref().and_then(|instance| {
                self.members
                    .values()
                    .find(|m| m.instance_id.as_ref() == Some(instance))
                    .map(|m| m.id.clone())
            });
            let inherited = previous.and_then(|old| self.members.remove(&old));
            // Join (or rejoin): a fresh id unless it names itself and is known.
            let id = if hb.member_id.is_empty() || !self.members.contains_key(&hb.member_id) {
                self.next_member += 1;
                format!("{}-{}", sanitize(&hb.client_id), self.next_member)
            } else {
                hb.member_id.clone()
            };
            if let Some(old) = inherited {
                self.members.insert(
                    id.clone(),
                    Member {
                        id: id.clone(),
                        epoch: 0,
                        prev_epoch: 0,
                        client_id: hb.client_id.clone(),
                        topics: old.topics,
                        owned: BTreeSet::new(),
                        target: old.target,
                        last_seen: now,
                        resets: old.resets,
                        instance_id: old.instance_id,
                        revoking_since: None,
                    },
                );
            }
            let m = self.members.entry(id.clone()).or_insert_with(|| Member {
                id: id.clone(),
                epoch: 0,
                prev_epoch: 0,
                client_id: hb.client_id.clone(),
                topics: BTreeSet::new(),
                owned: BTreeSet::new(),
                target: BTreeSet::new(),
                last_seen: now,
                resets: Vec::new(),
                instance_id: hb.instance_id.clone(),
                revoking_since: None,
            });
            m.epoch = 0;
            // A static member taking its own place changes nothing for the others.
            changed |= m.target.is_empty();
            id
        } else {
            let Some(m) = self.members.get(&hb.member_id) else {
                return Err(Refused::UnknownMember(hb.member_id));
            };
            if hb.member_epoch == -2 && m.instance_id.is_some() {
                // A static member leaving for a moment (a restart): it keeps its partitions
                // (owning none now) until it is back or its session times out.
                let m = self.members.get_mut(&hb.member_id).expect("found above");
                m.owned.clear();
                m.last_seen = now;
                return Ok(Answer {
                    member_id: hb.member_id,
                    member_epoch: -2,
                    assignment: BTreeSet::new(),
                    resets: Vec::new(),
                    waiting: false,
                });
            }
            if hb.member_epoch == -1 || hb.member_epoch == -2 {
                self.members.remove(&hb.member_id);
                self.reassign(partitions);
                return Ok(Answer {
                    member_id: hb.member_id,
                    member_epoch: -1,
                    assignment: BTreeSet::new(),
                    resets: Vec::new(),
                    waiting: false,
                });
            }
            // The member may be one answer behind (the answer that gave it the new epoch was
            // lost), never ahead.
            if !m.accepts(hb.member_epoch) {
                let refused = Refused::FencedEpoch {
                    member: hb.member_id.clone(),
                    sent: hb.member_epoch,
                    current: m.epoch,
                };
                // It is out: what it owned is free for the others.
                self.members.remove(&hb.member_id);
                self.reassign(partitions);
                return Err(refused);
            }
            hb.member_id.clone()
        };
        {
            let m = self.members.get_mut(&id).expect("just found or added");
            m.last_seen = now;
            // A member (re)joining owns nothing: whatever it held may be another's by now.
            m.owned = if hb.member_epoch == 0 {
                BTreeSet::new()
            } else {
                hb.owned
            };
            if m.topics != hb.topics {
                m.topics = hb.topics;
                changed = true;
            }
            m.client_id = hb.client_id;
            m.resets.retain(|(id, _)| *id > hb.resets_applied);
        }
        // Partitions added to a subscribed topic count as a change too.
        let subscribed: BTreeSet<&String> = self
            .members
            .values()
            .flat_map(|m| m.topics.iter())
            .collect();
        let counts: BTreeMap<String, i32> = subscribed
            .into_iter()
            .filter_map(|t| partitions(t).map(|n| (t.clone(), n)))
            .collect();
        if counts != self.counts {
            changed = true;
        }
        if changed {
            self.reassign(partitions);
        }
        let epoch = self.epoch;
        let m = self.members.get_mut(&id).expect("present");
        if m.epoch != epoch {
            m.prev_epoch = m.epoch;
            m.epoch = epoch;
        }
        // The rebalance timeout runs from the answer that first tells it to give some up.
        if m.owned.is_subset(&m.target) {
            m.revoking_since = None;
        } else {
            m.revoking_since.get_or_insert(now);
        }
        let taken: BTreeSet<&TopicPartition> = self
            .members
            .values()
            .filter(|o| o.id != id)
            .flat_map(|o| o.owned.iter())
            .collect();
        let m = &self.members[&id];
        let assignment: BTreeSet<TopicPartition> = m
            .target
            .iter()
            .filter(|tp| !taken.contains(tp))
            .cloned()
            .collect();
        Ok(Answer {
            waiting: assignment.len() < m.target.len(),
            member_id: id,
            member_epoch: epoch,
            assignment,
            resets: m.resets.clone(),
        })
    }

    /// Records that the committed offsets of `partitions` were reset: each member owning
    /// or about to own some of them is told at its next heartbeat. Returns how many.
    pub(crate) fn reset(&mut self, partitions: &BTreeSet<TopicPartition>) -> usize {
        self.next_reset += 1;
        let id = self.next_reset;
        let mut told = 0;
        for m in self.members.values_mut() {
            let mine: BTreeSet<TopicPartition> = partitions
                .iter()
                .filter(|tp| m.owned.contains(*tp) || m.target.contains(*tp))
                .cloned()
                .collect();
            if !mine.is_empty() {
                m.resets.push((id, mine));
                told += 1;
            }
        }
        told
    }

    /// Of `partitions`, those `member` still has to re-read after a reset: its commits for
    /// them are dropped until it has.
    pub(crate) fn resetting(&self, member: &str) -> BTreeSet<TopicPartition> {
        self.members
            .get(member)
            .map(|m| {
                m.resets
                    .iter()
                    .flat_map(|(_, p)| p.iter().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether a commit from `member_id` at `epoch` is one the group accepts: from a member
    /// it has, at the epoch it gave (or the one before, whose answer may have been lost).
    /// `now` expires silent members first.
    pub(crate) fn check_commit(
        &mut self,
        member_id: &str,
        epoch: i32,
        now: Instant,
        timeouts: Timeouts,
    ) -> Result<(), Refused> {
        self.expire(now, timeouts);
        let Some(m) = self.members.get(member_id) else {
            return Err(Refused::UnknownMember(member_id.to_string()));
        };
        if !m.accepts(epoch) {
            return Err(Refused::FencedEpoch {
                member: member_id.to_string(),
                sent: epoch,
                current: m.epoch,
            });
        }
        Ok(())
    }

    /// Removes every member (a forced group deletion); how many.
    pub(crate) fn remove_all(&mut self) -> usize {
        let n = self.members.len();
        self.members.clear();
        self.epoch += 1;
        n
    }

    /// Removes members not heard from within the session timeout, and those still owning
    /// partitions they were told to give up a rebalance timeout ago; whether any was.
    pub(crate) fn expire(&mut self, now: Instant, timeouts: Timeouts) -> bool {
        let before = self.members.len();
        self.members.retain(|_, m| {
            let stuck = m
                .revoking_since
                .is_some_and(|t| now.saturating_duration_since(t) >= timeouts.rebalance);
            if stuck {
                tracing::warn!(
                    group = %self.group,
                    member = %m.id,
                    client_id = %m.client_id,
                    partitions = m.owned.difference(&m.target).count(),
                    "a consumer group member did not give up its revoked partitions within the rebalance timeout; it is removed from the group and they go to their new owners"
                );
            }
            now.saturating_duration_since(m.last_seen) < timeouts.session && !stuck
        });
        let removed = before != self.members.len();
        self.stale |= removed;
        removed
    }

    /// Computes the target assignment again: sticky (a partition stays with its member
    /// while that is balanced) and balanced (counts differ by at most one among members
    /// subscribed to the same topics).
    fn reassign(&mut self, partitions: &dyn Fn(&str) -> Option<i32>) {
        let subscribed: BTreeSet<String> = self
            .members
            .values()
            .flat_map(|m| m.topics.iter().cloned())
            .collect();
        self.counts = subscribed
            .iter()
            .filter_map(|t| partitions(t).map(|n| (t.clone(), n)))
            .collect();
        let all: Vec<TopicPartition> = self
            .counts
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
            .collect();
        let eligible = |m: &Member, tp: &TopicPartition| m.topics.contains(&tp.0);
        // Keep what is still valid.
        let mut kept: BTreeMap<String, Vec<TopicPartition>> = BTreeMap::new();
        let mut placed: BTreeSet<TopicPartition> = BTreeSet::new();
        for m in self.members.values() {
            let mut mine: Vec<TopicPartition> = m
                .target
                .iter()
                .filter(|tp| {
                    eligible(m, tp)
                        && self.counts.get(&tp.0).is_some_and(|n| tp.1 < *n)
                        && !placed.contains(*tp)
                })
                .cloned()
                .collect();
            mine.sort();
            placed.extend(mine.iter().cloned());
            kept.insert(m.id.clone(), mine);
        }
        // Quotas: an even share of the partitions each member can take, the remainder to
        // those holding the most already (fewer moves).
        let members: Vec<&Member> = self
            .members
            .values()
            .filter(|m| !m.topics.is_empty())
            .collect();
        let n = members.len().max(1);
        let total = all
            .iter()
            .filter(|tp| members.iter().any(|m| eligible(m, tp)))
            .count();
        let mut order: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        order.sort_by_key(|id| std::cmp::Reverse(kept[*id].len()));
        let quota: BTreeMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, total / n + usize::from(i < total % n)))
            .collect();
        let mut free: Vec<TopicPartition> = all
            .iter()
            .filter(|tp| !placed.contains(*tp))
            .cloned()
            .collect();
        for (id, q) in &quota {
            let mine = kept.get_mut(*id).expect("every member kept");
            while mine.len() > *q {
                free.push(mine.pop().expect("over quota"));
            }
        }
        free.sort();
        for tp in free {
            let least = members.iter().filter(|m| eligible(m, &tp)).min_by_key(|m| {
                let have = kept[m.id.as_str()].len();
                (have >= quota[m.id.as_str()], have, m.id.clone())
            });
            if let Some(m) = least {
                kept.get_mut(m.id.as_str()).expect("kept").push(tp);
            }
        }
        let mut moved = false;
        for (id, mine) in kept {
            let m = self.members.get_mut(&id).expect("member");
            let target: BTreeSet<TopicPartition> = mine.into_iter().collect();
            if m.target != target {
                m.target = target;
                moved = true;
            }
        }
        if moved {
            self.epoch += 1;
        }
    }
}

impl Member {
    /// Whether `epoch` is the member's, or the one its last answer replaced.
    fn accepts(&self, epoch: i32) -> bool {
        epoch == self.epoch || epoch == self.prev_epoch
    }
}

/// A member id prefix from a client id: printable, short.
fn sanitize(client_id: &str) -> String {
    let s: String = client_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(64)
        .collect();
    if s.is_empty() { "member".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_secs(45);
    const REBALANCE: Duration = Duration::from_secs(30);
    const TIMEOUTS: Timeouts = Timeouts {
        session: SESSION,
        rebalance: REBALANCE,
    };

    fn topics(t: &[&str]) -> BTreeSet<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    fn six(t: &str) -> Option<i32> {
        (t == "orders").then_some(6)
    }

    fn join(g: &mut Membership, now: Instant) -> Answer {
        g.heartbeat(
            Heartbeat {
                member_id: String::new(),
                member_epoch: 0,
                topics: topics(&["orders"]),
                owned: BTreeSet::new(),
                client_id: "c".into(),
                resets_applied: 0,
                instance_id: None,
            },
            now,
            TIMEOUTS,
            &six,
        )
        .unwrap()
    }

    fn beat(
        g: &mut Membership,
        a: &Answer,
        owned: &BTreeSet<TopicPartition>,
        now: Instant,
    ) -> Answer {
        g.heartbeat(
            Heartbeat {
                member_id: a.member_id.clone(),
                member_epoch: a.member_epoch,
                topics: topics(&["orders"]),
                owned: owned.clone(),
                client_id: "c".into(),
                resets_applied: 0,
                instance_id: None,
            },
            now,
            TIMEOUTS,
            &six,
        )
        .unwrap()
    }

    /// Members heartbeat until nothing changes; returns each member's final assignment.
    fn settle(g: &mut Membership, answers: &mut [Answer], now: Instant) {
        for _ in 0..10 {
            for answer in answers.iter_mut() {
                let owned = answer.assignment.clone();
                *answer = beat(g, answer, &owned, now);
            }
        }
    }

    #[test]
    fn three_members_on_six_partitions_get_two_each_disjoint_and_covering() {
        let now = Instant::now();
        let mut g = Membership::default();
        let mut a: Vec<Answer> = (0..3).map(|_| join(&mut g, now)).collect();
        settle(&mut g, &mut a, now);
        let mut all = BTreeSet::new();
        for x in &a {
            assert_eq!(x.assignment.len(), 2, "{a:?}");
            for tp in &x.assignment {
                assert!(all.insert(tp.clone()), "{tp:?} twice");
            }
        }
        assert_eq!(all.len(), 6);
    }

    #[test]
    fn a_partition_moves_only_once_its_old_owner_released_it_and_others_keep_theirs() {
        let now = Instant::now();
        let mut g = Membership::default();
        let mut a: Vec<Answer> = (0..3).map(|_| join(&mut g, now)).collect();
        settle(&mut g, &mut a, now);
        let before: Vec<_> = a.iter().map(|x| x.assignment.clone()).collect();
        // A fourth joins: it gets nothing while the owners still hold everything.
        let d = join(&mut g, now);
        assert!(d.assignment.is_empty(), "{d:?}");
        a.push(d);
        settle(&mut g, &mut a, now);
        let moved: usize = (0..3)
            .map(|i| before[i].difference(&a[i].assignment).count())
            .sum();
        assert_eq!(moved, 1, "only what the newcomer needs moves: {a:?}");
        let counts: Vec<usize> = a.iter().map(|x| x.assignment.len()).collect();
        assert_eq!(counts.iter().sum::<usize>(), 6);
        assert!(counts.iter().all(|c| (1..=2).contains(c)), "{counts:?}");
        for i in 0..3 {
            assert!(a[i].assignment.is_subset(&before[i]), "kept, not shuffled");
        }
    }

    #[test]
    fn a_member_that_never_gives_up_a_revoked_partition_is_removed_after_the_rebalance_timeout() {
        let now = Instant::now();
        let mut g = Membership::default();
        let mut a: Vec<Answer> = (0..2).map(|_| join(&mut g, now)).collect();
        settle(&mut g, &mut a, now);
        let stuck_owned = a[0].assignment.clone();
        let d = join(&mut g, now);
        // Everyone keeps heartbeating; member 0 is told to give one partition up but keeps
        // reporting all three as owned.
        let mut t = now;
        let step = Duration::from_secs(2);
        let mut newcomer = d;
        while t < now + REBALANCE - step {
            t += step;
            a[0] = beat(&mut g, &a[0], &stuck_owned, t);
            let owned = a[1].assignment.clone();
            a[1] = beat(&mut g, &a[1], &owned, t);
            let owned = newcomer.assignment.clone();
            newcomer = beat(&mut g, &newcomer, &owned, t);
        }
        assert!(
            a[0].assignment.len() < stuck_owned.len(),
            "told to give some up"
        );
        assert!(newcomer.waiting, "still waiting on member 0: {newcomer:?}");
        assert_eq!(newcomer.assignment.len() + a[1].assignment.len(), 3);
        // Past the rebalance timeout member 0 is out: its next heartbeat is refused and the
        // others take all six.
        t += step * 2;
        let owned = a[1].assignment.clone();
        a[1] = beat(&mut g, &a[1], &owned, t);
        let refused = g.heartbeat(
            Heartbeat {
                member_id: a[0].member_id.clone(),
                member_epoch: a[0].member_epoch,
                topics: topics(&["orders"]),
                owned: stuck_owned.clone(),
                client_id: "c".into(),
                resets_applied: 0,
                instance_id: None,
            },
            t,
            TIMEOUTS,
            &six,
        );
        assert!(
            matches!(refused, Err(Refused::UnknownMember(_))),
            "{refused:?}"
        );
        let mut rest = vec![a[1].clone(), newcomer];
        settle(&mut g, &mut rest, t);
        let all: BTreeSet<_> = rest.iter().flat_map(|x| x.assignment.clone()).collect();
        assert_eq!(all.len(), 6, "{rest:?}");
        assert!(rest.iter().all(|x| x.assignment.len() == 3), "{rest:?}");
    }

    #[test]
    fn a_member_that_gives_up_its_revoked_partitions_in_time_stays() {
        let now = Instant::now();
        let mut g = Membership::default();
        let mut a: Vec<Answer> = (0..2).map(|_| join(&mut g, now)).collect();
        settle(&mut g, &mut a, now);
        let newcomer = join(&mut g, now);
        // Told at `now` to give one up each, they hold on until just under the timeout.
        for x in a.iter_mut() {
            let owned = x.assignment.clone();
            *x = beat(&mut g, x, &owned, now);
            assert_eq!(owned.len(), 3);
        }
        a.push(newcomer);
        settle(&mut g, &mut a, now + REBALANCE - Duration::from_secs(1));
        assert_eq!(g.members.len(), 3);
        assert!(a.iter().all(|x| x.assignment.len() == 2), "{a:?}");
    }

    #[test]
    fn a_silent_member_is_removed_after_the_session_timeout_and_a_leaving_one_at_once() {
        let now = Instant::now();
        let mut g = Membership::default();
        let mut a: Vec<Answer> = (0..3).map(|_| join(&mut g, now)).collect();
        settle(&mut g, &mut a, now);
        // Member 2 leaves cleanly.
        let leave = g
            .heartbeat(
                Heartbeat {
                    member_id: a[2].member_id.clone(),
                    member_epoch: -1,
                    topics: topics(&["orders"]),
                    owned: BTreeSet::new(),
                    client_id: "c".into(),
                    resets_applied: 0,
                    instance_id: None,
                },
                now,
                TIMEOUTS,
                &six,
            )
            .unwrap();
        assert_eq!(leave.member_epoch, -1);
        a.truncate(2);
        settle(&mut g, &mut a, now);
        assert_eq!(a[0].assignment.len() + a[1].assignment.len(), 6);
        // Member 1 goes silent while member 0 heartbeats; after the timeout member 0 holds
        // all.
        let mid = now + SESSION / 2;
        let owned = a[0].assignment.clone();
        let x = beat(&mut g, &a[0], &owned, mid);
        let later = now + SESSION + Duration::from_secs(1);
        let x = beat(&mut g, &x, &owned, later);
        let x = beat(&mut g, &x, &x.assignment.clone(), later);
        assert_eq!(x.assignment.len(), 6);
        let gone = g.heartbeat(
            Heartbeat {
                member_id: a[1].member_id.clone(),
                member_epoch: a[1].member_epoch,
                topics: topics(&["orders"]),
                owned: a[1].assignment.clone(),
                client_id: "c".into(),
                resets_applied: 0,
                instance_id: None,
            },
            later,
            TIMEOUTS,
            &six,
        );
        assert!(matches!(gone, Err(Refused::UnknownMember(_))), "{gone:?}");
    }

    #[test]
    fn a_member_expired_outside_a_heartbeat_still_hands_its_partitions_over() {
        let now = Instant::now();
        let mut g = Membership::default();
        let mut a: Vec<Answer> = (0..2).map(|_| join(&mut g, now)).collect();
        settle(&mut g, &mut a, now);
        // Member 1 is silent; member 0 heartbeats; a describe expires member 1 first.
        let mid = now + SESSION / 2;
        let owned = a[0].assignment.clone();
        let x = beat(&mut g, &a[0], &owned, mid);
        let later = now + SESSION + Duration::from_secs(1);
        assert!(g.expire(later, TIMEOUTS));
        let x = beat(&mut g, &x, &owned, later);
        assert_eq!(x.assignment.len(), 6, "{x:?}");
    }

    #[test]
    fn a_static_member_that_restarts_gets_its_partitions_back_and_nothing_moves() {
        let now = Instant::now();
        let mut g = Membership::default();
        let hb =
            |id: &str, epoch: i32, owned: &BTreeSet<TopicPartition>, instance: &str| Heartbeat {
                member_id: id.to_string(),
                member_epoch: epoch,
                topics: topics(&["orders"]),
                owned: owned.clone(),
                client_id: "c".into(),
                resets_applied: 0,
                instance_id: Some(instance.to_string()),
            };
        let none = BTreeSet::new();
        let mut a = [
            g.heartbeat(hb("", 0, &none, "s1"), now, TIMEOUTS, &six)
                .unwrap(),
            g.heartbeat(hb("", 0, &none, "s2"), now, TIMEOUTS, &six)
                .unwrap(),
        ];
        for _ in 0..5 {
            for (x, inst) in a.iter_mut().zip(["s1", "s2"]) {
                let owned = x.assignment.clone();
                *x = g
                    .heartbeat(
                        hb(&x.member_id, x.member_epoch, &owned, inst),
                        now,
                        TIMEOUTS,
                        &six,
                    )
                    .unwrap();
            }
        }
        let (mine, epoch) = (a[0].assignment.clone(), g.epoch);
        assert_eq!(mine.len(), 3);
        // s1 leaves for a restart (-2): its partitions stay its own; s2 gets nothing more.
        let gone = g
            .heartbeat(hb(&a[0].member_id, -2, &none, "s1"), now, TIMEOUTS, &six)
            .unwrap();
        assert_eq!(gone.member_epoch, -2);
        let owned = a[1].assignment.clone();
        let other = g
            .heartbeat(
                hb(&a[1].member_id, a[1].member_epoch, &owned, "s2"),
                now,
                TIMEOUTS,
                &six,
            )
            .unwrap();
        assert_eq!(other.assignment, owned);
        // s1 is back under a new member id: the same partitions, no new epoch.
        let back = g
            .heartbeat(hb("", 0, &none, "s1"), now, TIMEOUTS, &six)
            .unwrap();
        assert_ne!(back.member_id, a[0].member_id);
        assert_eq!(back.assignment, mine);
        assert_eq!(g.epoch, epoch, "nothing was reassigned");
        // The old member id is gone.
        let stale = g.heartbeat(
            hb(&a[0].member_id, a[0].member_epoch, &mine, "s1"),
            now,
            TIMEOUTS,
            &six,
        );
        assert!(matches!(stale, Err(Refused::UnknownMember(_))), "{stale:?}");
    }

    #[test]
    fn an_epoch_from_the_future_is_fenced() {
        let now = Instant::now();
        let mut g = Membership::default();
        let a = join(&mut g, now);
        let refused = g.heartbeat(
            Heartbeat {
                member_id: a.member_id.clone(),
                member_epoch: a.member_epoch + 5,
                topics: topics(&["orders"]),
                owned: BTreeSet::new(),
                client_id: "c".into(),
                resets_applied: 0,
                instance_id: None,
            },
            now,
            TIMEOUTS,
            &six,
        );
        assert!(
            matches!(refused, Err(Refused::FencedEpoch { .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn partitions_added_to_a_subscribed_topic_are_assigned() {
        let now = Instant::now();
        let mut g = Membership::default();
        let mut a: Vec<Answer> = (0..2).map(|_| join(&mut g, now)).collect();
        settle(&mut g, &mut a, now);
        let eight = |t: &str| (t == "orders").then_some(8);
        for _ in 0..3 {
            for x in a.iter_mut() {
                *x = g
                    .heartbeat(
                        Heartbeat {
                            member_id: x.member_id.clone(),
                            member_epoch: x.member_epoch,
                            topics: topics(&["orders"]),
                            owned: x.assignment.clone(),
                            client_id: "c".into(),
                            resets_applied: 0,
                            instance_id: None,
                        },
                        now,
                        TIMEOUTS,
                        &eight,
                    )
                    .unwrap();
            }
        }
        assert_eq!(a[0].assignment.len() + a[1].assignment.len(), 8);
        assert_eq!(a[0].assignment.len(), 4);
    }
}
