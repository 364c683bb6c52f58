//! Creating and deleting topics through the controller, and placing their replicas.

use super::*;

/// Set (to anything) in a broker's environment, it creates factor-1 topics the way versions
/// before one-voter groups did (unreplicated, no Raft group), so tests can check that such
/// topics, still found in data directories, keep working. Not for use otherwise.
const LEGACY_FACTOR_1_ENV: &str = "SLUICE_TEST_LEGACY_FACTOR_1";

fn legacy_factor_1(rf: i32) -> bool {
    rf == 1 && std::env::var_os(LEGACY_FACTOR_1_ENV).is_some()
}

/// How long creating a topic waits for its partitions' leaders before it answers.
const CREATE_LEADERS_WAIT: Duration = Duration::from_secs(4);

impl Broker {
    /// Validates a topic, places its partitions on registered brokers, and commits it
    /// through the controller. Returns once this broker has applied it.
    pub(crate) async fn create_topic(
        self: &Arc<Self>,
        name: String,
        partitions: i32,
        replication_factor: i32,
        overrides: BTreeMap<String, String>,
        meta: crate::metadata::TopicMeta,
        validate_only: bool,
    ) -> Result<TopicRecord> {
        sluice_proto::validate_topic_name(&name).map_err(Error::InvalidTopic)?;
        meta.validate(&name)?;
        let max = self.config.max_partitions_per_topic;
        if partitions < 1 || partitions > max {
            return Err(Error::InvalidPartitions(format!(
                "topic '{name}': partitions must be between 1 and {max}, got {partitions}"
            )));
        }
        // Right after start this broker may not have finished registering.
        self.await_local(|| {
            self.controller
                .state()
                .brokers
                .contains_key(&self.node_id())
        })
        .await;
        let rf = if replication_factor == -1 {
            1
        } else {
            replication_factor
        };
        let brokers = self.placement_brokers(&name, rf).await?;
        let state = self.controller.state();
        TopicConfig::from_map(&overrides, rf)
            .map_err(|e| Error::InvalidConfig(format!("topic '{name}': {e}")))?;
        if state.topics.contains_key(&name) {
            return Err(Error::TopicExists(name));
        }
        let replicas = place(&name, partitions, rf, &brokers);
        let record = TopicRecord {
            name: name.clone(),
            partitions,
            replication_factor: rf,
            config: overrides,
            created_ms: now_ms(),
            topic_id: format!("{name}-{}-{}", now_ms(), self.node_id()),
            replicas,
            raft: !legacy_factor_1(rf),
            group_base: 0,
            groups: Vec::new(),
            leaders: Vec::new(),
            reassigning: BTreeMap::new(),
            meta,
        };
        if validate_only {
            return Ok(record);
        }
        let proposed = self
            .controller
            .propose(MetaCommand::CreateTopic(record.clone()))
            .await
            .map_err(|e| {
                change_outcome(
                    e,
                    &name,
                    "created",
                    "; creating it again answers TOPIC_ALREADY_EXISTS if it was",
                )
            })?;
        match proposed {
            MetaResponse::Ok => {}
            MetaResponse::Rejected { code, .. } if code == "TOPIC_ALREADY_EXISTS" => {
                // The controller may have applied an earlier attempt of this very call (a
                // forward whose answer was lost, then retried): that is a success.
                self.await_local(|| self.controller.state().topics.contains_key(&name))
                    .await;
                let ours = self
                    .controller
                    .state()
                    .topics
                    .get(&name)
                    .is_some_and(|t| t.topic_id == record.topic_id);
                if !ours {
                    return Err(Error::TopicExists(name));
                }
            }
            MetaResponse::Rejected { message, .. } => return Err(Error::Rejected(message)),
            other => {
                return Err(Error::Internal(format!(
                    "the controller answered creating '{name}' with {other:?}"
                )));
            }
        }
        self.await_local(|| {
            self.local
                .read()
                .get(&name)
                .is_some_and(|t| t.record.topic_id == record.topic_id)
                || self
                    .controller
                    .state()
                    .topics
                    .get(&name)
                    .is_some_and(|t| t.topic_id == record.topic_id)
                    && !record.replicas.iter().any(|r| r.contains(&self.node_id()))
        })
        .await;
        if record.replicated() {
            // Clients route by the leaders the controller knows: wait (bounded, well within a
            // client's admin timeout) until every partition's group has elected and reported
            // one, so the topic is usable at once. A partition whose only replica's broker is
            // stalled gets its leader later; clients retry LEADER_NOT_AVAILABLE meanwhile.
            self.await_within(CREATE_LEADERS_WAIT, || {
                self.controller.state().topics.get(&name).is_some_and(|t| {
                    t.topic_id == record.topic_id
                        && t.leaders.len() == t.partitions as usize
                        && t.leaders.iter().all(Option::is_some)
                })
            })
            .await;
        }
        tracing::info!(topic = %name, partitions, replication_factor = rf, "created topic");
        Ok(record)
    }

    /// The brokers new replicas of topic `name` may go to: the live ones, of those
    /// registered as of the controller's latest commit (this broker's metadata may be
    /// behind: a broker that registered a moment ago through another one), or
    /// INVALID_REPLICATION_FACTOR when fewer than `rf` are live.
    pub(super) async fn placement_brokers(&self, name: &str, rf: i32) -> Result<Vec<i32>> {
        // If it cannot catch up, the proposal that follows fails and says why.
        if let Err(e) = self
            .controller
            .catch_up(self.config.metadata_catch_up_timeout)
            .await
        {
            tracing::debug!(topic = %name, cause = %e, "catching up before placing replicas");
        }
        // A broker this one has not heard from yet (it just started) gets a moment to answer
        // a ping.
        let deadline = tokio::time::Instant::now() + LEADER_SILENCE * 2;
        let brokers = loop {
            let live = self.live_brokers();
            let registered = self.controller.state().brokers.len();
            if live.len() >= registered || tokio::time::Instant::now() >= deadline {
                break live;
            }
            tokio::time::sleep(PING_INTERVAL / 2).await;
        };
        // Drained brokers are leaving: nothing new goes there.
        let draining = self.controller.state().draining.clone();
        let brokers: Vec<i32> = brokers
            .into_iter()
            .filter(|b| !draining.contains(b))
            .collect();
        let live = brokers.len() as i32;
        if rf < 1 || rf > live {
            let down: Vec<i32> = self
                .controller
                .state()
                .brokers
                .keys()
                .filter(|b| !brokers.contains(b) && !draining.contains(b))
                .copied()
                .collect();
            let mut down = if down.is_empty() {
                String::new()
            } else {
                format!(" (registered but not answering: {down:?})")
            };
            if !draining.is_empty() {
                down.push_str(&format!(
                    " (being drained, so taking no new replicas: {draining:?})"
                ));
            }
            return Err(Error::InvalidReplicationFactor(format!(
                "topic '{name}': replication factor {rf} is not possible with {live} live broker(s) {brokers:?}{down}; \
                 use a value between 1 and {live}"
            )));
        }
        Ok(brokers)
    }

    /// Waits (bounded) until this broker has applied a metadata change, so that a client
    /// that created a topic here can use it here right away.
    pub(super) async fn await_local(&self, done: impl Fn() -> bool) {
        self.await_within(Duration::from_secs(10), done).await
    }

    /// Waits until `done`, for at most `limit`.
    pub(super) async fn await_within(&self, limit: Duration, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !done() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Deletes a topic through the controller; every broker then removes its data.
    pub(crate) async fn delete_topic(self: &Arc<Self>, name: &str) -> Result<()> {
        self.topic_record_current(name).await?;
        let proposed = self
            .controller
            .propose(MetaCommand::DeleteTopic {
                name: name.to_string(),
            })
            .await
            .map_err(|e| change_outcome(e, name, "deleted", ""))?;
        match proposed {
            MetaResponse::Ok => {}
            MetaResponse::Rejected { .. } => return Err(Error::UnknownTopic(name.to_string())),
            other => {
                return Err(Error::Internal(format!(
                    "the controller answered deleting '{name}' with {other:?}"
                )));
            }
        }
        self.await_local(|| {
            !self.local.read().contains_key(name)
                && !self.controller.state().topics.contains_key(name)
        })
        .await;
        tracing::info!(topic = %name, "deleted topic");
        Ok(())
    }
}

/// Words a failed proposal about `topic`: certainly not `done` (nothing changed), or maybe
/// `done` (the outcome is unknown; `then` says what a retry answers).
pub(super) fn change_outcome(e: Error, topic: &str, done: &str, then: &str) -> Error {
    match e {
        Error::OutcomeUnknown(why) => Error::OutcomeUnknown(format!(
            "topic '{topic}' may have been {done}: {why}. Check with `sluice topics describe {topic}`{then}"
        )),
        Error::Timeout(why) => Error::Timeout(format!("topic '{topic}' was not {done}: {why}")),
        other => other,
    }
}

/// Spreads partitions over brokers: partition `p`'s replicas are `rf` consecutive brokers
/// starting at a per-topic offset plus `p`, so partitions and preferred leaders are
/// balanced across brokers and topics do not all start on the same broker.
pub(super) fn place(topic: &str, partitions: i32, rf: i32, brokers: &[i32]) -> Vec<Vec<i32>> {
    let n = brokers.len();
    let start = topic
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % n.max(1);
    (0..partitions as usize)
        .map(|p| {
            (0..rf as usize)
                .map(|r| brokers[(start + p + r) % n])
                .collect()
        })
        .collect()
}

/// The replicas each partition moves to for a replication factor of `to`. Growing keeps a
/// partition's replicas (in order: the preferred leader stays) and adds the live brokers
/// holding the fewest replicas of the topic; shrinking removes replicas on brokers that are
/// not live first, then the most loaded, never the current leader (`leaders`) nor, while it
/// is live, the preferred one.
pub(super) fn reassign(
    current: &[Vec<i32>],
    to: usize,
    live: &[i32],
    leaders: &[Option<i32>],
) -> Vec<Vec<i32>> {
    let mut load: BTreeMap<i32, usize> = live.iter().map(|b| (*b, 0)).collect();
    for r in current.iter().flatten() {
        *load.entry(*r).or_default() += 1;
    }
    current
        .iter()
        .enumerate()
        .map(|(p, replicas)| {
            let mut out = replicas.clone();
            while out.len() < to {
                // Rotating the tie-break by partition spreads equal loads.
                let Some(&add) = live
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| !out.contains(b))
                    .min_by_key(|(i, b)| {
                        (
                            load[*b],
                            (i + live.len() - p % live.len().max(1)) % live.len().max(1),
                        )
                    })
                    .map(|(_, b)| b)
                else {
                    break;
                };
                out.push(add);
                *load.entry(add).or_default() += 1;
            }
            let leader = leaders.get(p).copied().flatten();
            while out.len() > to {
                let Some(i) = (0..out.len())
                    .filter(|&i| Some(out[i]) != leader && (i > 0 || !live.contains(&out[i])))
                    .max_by_key(|&i| {
                        (
                            !live.contains(&out[i]),
                            load.get(&out[i]).copied().unwrap_or(0),
                            i,
                        )
                    })
                else {
                    break;
                };
                let removed = out.remove(i);
                if let Some(n) = load.get_mut(&removed) {
                    *n = n.saturating_sub(1);
                }
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn placement_spreads_partitions_and_leaders() {
        let brokers = [1, 2, 3];
        let replicas = place("orders", 6, 1, &brokers);
        let mut per_broker = BTreeMap::new();
        for r in &replicas {
            *per_broker.entry(r[0]).or_insert(0) += 1;
        }
        assert_eq!(per_broker.values().collect::<Vec<_>>(), vec![&2, &2, &2]);
        let three = place("orders", 4, 3, &brokers);
        assert!(
            three
                .iter()
                .all(|r| r.iter().collect::<HashSet<_>>().len() == 3),
            "{three:?}"
        );
    }

    /// Growing keeps each partition's replicas in order and adds the least loaded live
    /// brokers (the topic stays balanced); shrinking removes brokers that are down first and
    /// never the leader or the live preferred replica.
    #[test]
    fn reassignment_keeps_leaders_and_balance() {
        let live = [1, 2, 3, 4];
        let two = place("orders", 4, 2, &live);
        let three = reassign(&two, 3, &live, &[None; 4]);
        for (before, after) in two.iter().zip(&three) {
            assert_eq!(&after[..2], &before[..], "{three:?}");
            assert_eq!(after.iter().collect::<HashSet<_>>().len(), 3, "{three:?}");
        }
        let mut load = BTreeMap::new();
        for b in three.iter().flatten() {
            *load.entry(*b).or_insert(0) += 1;
        }
        assert_eq!(
            load.values().collect::<Vec<_>>(),
            vec![&3, &3, &3, &3],
            "{three:?}"
        );

        let current = vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]];
        // Broker 3 is down; partition 0 is led by 2 and partition 1 by its preferred 2.
        let two = reassign(&current, 2, &[1, 2], &[Some(2), Some(2), None]);
        assert_eq!(two, vec![vec![1, 2], vec![2, 1], vec![1, 2]]);
        // Nothing is down: the leader and the preferred replica stay.
        let two = reassign(&current, 2, &[1, 2, 3], &[Some(3), None, None]);
        assert!(two[0].contains(&1) && two[0].contains(&3), "{two:?}");
        assert_eq!(two[1][0], 2);
        assert_eq!(two[2][0], 3);
        assert!(two.iter().all(|r| r.len() == 2));
        // Unchanged factor: unchanged replicas.
        assert_eq!(reassign(&current, 3, &[1, 2, 3], &[]), current);
    }
}
