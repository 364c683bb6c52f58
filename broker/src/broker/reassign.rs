//! Replication factor changes carried out: the leader of each partition whose replicas
//! change moves its Raft group to the new replicas, then reports them to the controller
//! (whereupon the brokers that left delete their copies).

use std::collections::{BTreeSet, HashMap};

use openraft::BasicNode;

use super::*;
use crate::replica::group::Moved;

/// How often this broker looks for partitions it leads whose replicas are to change.
const REASSIGN_CHECK: Duration = Duration::from_millis(500);
/// How long a partition's move waits after a failed attempt before the next.
const REASSIGN_RETRY: Duration = Duration::from_secs(5);

impl Broker {
    /// Starts a move for each partition led here whose replicas are to change, one at a
    /// time per partition; a move stopped by a leadership change is carried on by the
    /// next leader, found here or on its broker.
    pub(super) async fn run_reassignments(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REASSIGN_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut moving = tokio::task::JoinSet::new();
        let mut busy: HashMap<tokio::task::Id, u64> = HashMap::new();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                Some(done) = moving.join_next_with_id() => {
                    let id = match &done {
                        Ok((id, ())) => *id,
                        Err(e) => e.id(),
                    };
                    busy.remove(&id);
                    continue;
                }
                _ = tick.tick() => {}
            }
            let state = self.controller.state();
            let groups: BTreeSet<u64> = busy.values().copied().collect();
            for t in self.local_topics() {
                let Some(record) = state
                    .topics
                    .get(&t.record.name)
                    .filter(|r| r.topic_id == t.record.topic_id)
                else {
                    continue;
                };
                for (&partition, target) in &record.reassigning {
                    let Some(r) = t.replicas.read().get(&partition).cloned() else {
                        continue;
                    };
                    let group = record.group(partition);
                    if !r.is_leader() || groups.contains(&group) {
                        continue;
                    }
                    let broker = self.clone();
                    let (topic_id, target) = (record.topic_id.clone(), target.clone());
                    let task = moving.spawn(async move {
                        broker
                            .move_partition(r, group, topic_id, partition, target)
                            .await;
                    });
                    busy.insert(task.id(), group);
                }
            }
        }
    }

    /// Moves one partition's group to `target` as its leader, and records the new replicas
    /// with the controller.
    async fn move_partition(
        &self,
        replica: Arc<Replica>,
        group: u64,
        topic_id: String,
        partition: i32,
        target: Vec<i32>,
    ) {
        let topic = replica.topic.clone();
        let state = self.controller.state();
        let nodes: Option<BTreeMap<u64, BasicNode>> = target
            .iter()
            .map(|id| {
                let b = state.brokers.get(id)?;
                Some((*id as u64, BasicNode::new(&b.raft_address)))
            })
            .collect();
        let Some(nodes) = nodes else {
            tracing::warn!(topic = %topic, partition, ?target, "a new replica's broker is not registered; waiting for it");
            tokio::time::sleep(REASSIGN_RETRY).await;
            return;
        };
        let wanted =
            || {
                self.controller.state().topics.values().any(|t| {
                    t.topic_id == topic_id && t.reassigning.get(&partition) == Some(&target)
                })
            };
        match replica.move_to(group, &nodes, wanted).await {
            Ok(Moved::Done) => {
                let command = MetaCommand::PartitionReplicas {
                    topic_id: topic_id.clone(),
                    partition,
                    replicas: target.clone(),
                };
                match self.controller.propose(command).await {
                    Ok(_) => {
                        tracing::info!(topic = %topic, partition, replicas = ?target, "partition reassigned")
                    }
                    Err(e) => {
                        // The group has moved; recording it is retried (moving again is a no-op).
                        tracing::warn!(topic = %topic, partition, cause = %e, "recording the partition's new replicas; will retry");
                        tokio::time::sleep(REASSIGN_RETRY).await;
                    }
                }
            }
            Ok(Moved::HandedOff(to)) => {
                tracing::info!(topic = %topic, partition, to, "not one of the partition's new replicas: handed its leadership to one that is");
            }
            Ok(Moved::NotLeader | Moved::Withdrawn) => {}
            Err(e) => {
                tracing::warn!(topic = %topic, partition, cause = %e, "moving the partition to its new replicas; will retry");
                tokio::time::sleep(REASSIGN_RETRY).await;
            }
        }
    }
}
