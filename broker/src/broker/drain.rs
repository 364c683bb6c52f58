//! Draining brokers before they leave the cluster (scale-down): a drained broker gets no
//! new replicas, and each partition with a replica on it is reassigned to the broker
//! holding the fewest replicas among those that stay; the partitions' leaders then move
//! their Raft groups (`reassign`), as for a replication factor change. The set of drained
//! brokers is declarative: a request names all of them, so asking again is a no-op that
//! reports the progress, and a broker left out of the set is undrained.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// A partition to move off drained brokers: (topic id, partition, its replicas after).
pub(crate) type DrainMove = (String, i32, Vec<i32>);

/// Where a drain stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DrainProgress {
    /// The drained brokers, each with the partitions still having a replica on it.
    pub remaining: BTreeMap<i32, i32>,
    /// Partitions being moved off them now.
    pub moving: i32,
}

impl Broker {
    /// Makes `brokers` exactly the drained set, and starts moving every partition with a
    /// replica on one of them to the others. Refused, with nothing changed, when a broker
    /// is unknown or a partition cannot be placed on the brokers that stay.
    pub(crate) async fn drain_brokers(&self, brokers: BTreeSet<i32>) -> Result<DrainProgress> {
        if let Err(e) = self
            .controller
            .catch_up(self.config.metadata_catch_up_timeout)
            .await
        {
            tracing::debug!(cause = %e, "catching up before draining brokers");
        }
        let state = self.controller.state();
        if let Some(b) = brokers.iter().find(|b| !state.brokers.contains_key(b)) {
            return Err(Error::InvalidRequest(format!(
                "broker {b} is not registered with this cluster (its brokers: {:?}); nothing was drained",
                state.brokers.keys().collect::<Vec<_>>()
            )));
        }
        let staying: Vec<i32> = self
            .live_brokers()
            .into_iter()
            .filter(|b| !brokers.contains(b))
            .collect();
        let moves = drain_moves(&state, &brokers, &staying).map_err(Error::InvalidRequest)?;
        if brokers != state.draining || !moves.is_empty() {
            let count = moves.len();
            let answer = self
                .controller
                .propose(MetaCommand::DrainBrokers {
                    brokers: brokers.clone(),
                    moves,
                })
                .await
                .map_err(|e| match e {
                    Error::OutcomeUnknown(why) => Error::OutcomeUnknown(format!(
                        "brokers {brokers:?} may have been drained: {why}. Ask again: draining the same brokers again is safe"
                    )),
                    other => other,
                })?;
            if let MetaResponse::Rejected { message, .. } = answer {
                return Err(Error::InvalidRequest(message));
            }
            tracing::info!(?brokers, partitions_to_move = count, "drained brokers set");
            // The progress this answers is this broker's view: once it has applied it.
            self.await_local(|| self.controller.state().draining == brokers)
                .await;
        }
        Ok(drain_progress(&self.controller.state()))
    }
}

/// The moves that take every partition off the `drained` brokers, placing each replica
/// on the `staying` broker with the fewest replicas that the partition does not have yet;
/// a partition already moving is left to finish (asked again, it is moved then). Err
/// names a partition that cannot be placed.
pub(crate) fn drain_moves(
    state: &ClusterState,
    drained: &BTreeSet<i32>,
    staying: &[i32],
) -> std::result::Result<Vec<DrainMove>, String> {
    let mut load: BTreeMap<i32, usize> = staying.iter().map(|b| (*b, 0)).collect();
    for t in state.topics.values() {
        for r in t.replicas.iter().flatten() {
            if let Some(n) = load.get_mut(r) {
                *n += 1;
            }
        }
    }
    let mut moves = Vec::new();
    for t in state.topics.values() {
        for (p, replicas) in t.replicas.iter().enumerate() {
            let p = p as i32;
            if !replicas.iter().any(|r| drained.contains(r)) || t.reassigning.contains_key(&p) {
                continue;
            }
            if !t.replicated() {
                return Err(format!(
                    "topic '{}' partition {p} is on broker(s) {:?} and cannot move: the topic was created with replication factor 1 by a broker version without Raft groups for such partitions; copy it into a new topic first",
                    t.name,
                    replicas
                        .iter()
                        .filter(|r| drained.contains(r))
                        .collect::<Vec<_>>()
                ));
            }
            let mut target = replicas.clone();
            for slot in 0..target.len() {
                if !drained.contains(&target[slot]) {
                    continue;
                }
                let Some(to) = staying
                    .iter()
                    .filter(|b| !target.contains(b))
                    .min_by_key(|b| (load[*b], (**b as usize + p as usize) % staying.len()))
                    .copied()
                else {
                    return Err(format!(
                        "topic '{}' has replication factor {} but only {} live broker(s) {staying:?} would remain outside the drained {drained:?}; lower its replication factor first (`sluice topics alter {} --replication-factor N`) or drain fewer brokers; nothing was drained",
                        t.name,
                        t.replication_factor,
                        staying.len(),
                        t.name
                    ));
                };
                *load.entry(to).or_default() += 1;
                target[slot] = to;
            }
            moves.push((t.topic_id.clone(), p, target));
        }
    }
    Ok(moves)
}

/// How far the drain of `state.draining` has come.
pub(crate) fn drain_progress(state: &ClusterState) -> DrainProgress {
    let mut progress = DrainProgress {
        remaining: state.draining.iter().map(|b| (*b, 0)).collect(),
        moving: 0,
    };
    for t in state.topics.values() {
        for (p, replicas) in t.replicas.iter().enumerate() {
            let on: Vec<i32> = replicas
                .iter()
                .copied()
                .filter(|r| state.draining.contains(r))
                .collect();
            for b in &on {
                *progress.remaining.entry(*b).or_default() += 1;
            }
            if !on.is_empty() && t.reassigning.contains_key(&(p as i32)) {
                progress.moving += 1;
            }
        }
    }
    progress
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::TopicRecord;

    fn topic(name: &str, replicas: Vec<Vec<i32>>) -> TopicRecord {
        TopicRecord {
            name: name.into(),
            partitions: replicas.len() as i32,
            replication_factor: replicas[0].len() as i32,
            config: BTreeMap::new(),
            created_ms: 0,
            topic_id: format!("{name}-1"),
            replicas,
            raft: true,
            group_base: 1,
            groups: Vec::new(),
            leaders: Vec::new(),
            reassigning: BTreeMap::new(),
            meta: Default::default(),
        }
    }

    fn state(topics: Vec<TopicRecord>) -> ClusterState {
        ClusterState {
            topics: topics.into_iter().map(|t| (t.name.clone(), t)).collect(),
            ..Default::default()
        }
    }

    /// Draining broker 4 of 4 moves exactly the partitions on it, each replica in its
    /// place (so a preferred leader elsewhere stays), onto brokers the partition lacks,
    /// spread by load; the command applied records the moves and the drained set, and
    /// the progress counts down as partitions report their new replicas.
    #[test]
    fn a_drain_moves_only_the_drained_brokers_replicas_spread_over_the_rest() {
        let mut s = state(vec![topic(
            "t",
            vec![vec![1, 2, 3], vec![2, 3, 4], vec![3, 4, 1], vec![4, 1, 2]],
        )]);
        let drained = BTreeSet::from([4]);
        let moves = drain_moves(&s, &drained, &[1, 2, 3]).unwrap();
        let parts: Vec<i32> = moves.iter().map(|m| m.1).collect();
        assert_eq!(parts, [1, 2, 3]);
        assert_eq!(moves[0].2, vec![2, 3, 1]);
        assert_eq!(moves[1].2, vec![3, 2, 1]);
        assert_eq!(moves[2].2, vec![3, 1, 2]);
        assert_eq!(
            s.apply(&MetaCommand::DrainBrokers {
                brokers: drained.clone(),
                moves: moves.clone()
            }),
            MetaResponse::Ok
        );
        assert_eq!(s.draining, drained);
        assert_eq!(s.topics["t"].reassigning.len(), 3);
        let p = drain_progress(&s);
        assert_eq!((p.remaining[&4], p.moving), (3, 3));
        // Asked again while moving: nothing more to move.
        assert!(drain_moves(&s, &drained, &[1, 2, 3]).unwrap().is_empty());
        for (id, partition, replicas) in moves {
            s.apply(&MetaCommand::PartitionReplicas {
                topic_id: id,
                partition,
                replicas,
            });
        }
        let p = drain_progress(&s);
        assert_eq!((p.remaining[&4], p.moving), (0, 0));
        assert!(s.topics["t"].reassigning.is_empty());
        // Undrained: an empty set.
        s.apply(&MetaCommand::DrainBrokers {
            brokers: BTreeSet::new(),
            moves: Vec::new(),
        });
        assert!(s.draining.is_empty());
    }

    /// A partition that cannot be placed on the brokers that stay refuses the whole drain,
    /// naming the topic and what to do.
    #[test]
    fn a_drain_that_would_leave_too_few_brokers_is_refused() {
        let s = state(vec![topic("wide", vec![vec![1, 2, 3]])]);
        let e = drain_moves(&s, &BTreeSet::from([3]), &[1, 2]).unwrap_err();
        assert!(
            e.contains("'wide'") && e.contains("replication factor 3") && e.contains("lower"),
            "{e}"
        );
    }

    /// A stale move (the partition no longer on a drained broker, or already moving) is
    /// skipped when the command is applied.
    #[test]
    fn a_stale_drain_move_is_skipped_at_apply() {
        let mut s = state(vec![topic("t", vec![vec![1, 2]])]);
        s.apply(&MetaCommand::DrainBrokers {
            brokers: BTreeSet::from([3]),
            moves: vec![("t-1".into(), 0, vec![1, 4])],
        });
        assert!(s.topics["t"].reassigning.is_empty());
    }
}
