//! Partition leadership moves: the preferred-leader rebalance and the hand-off of a controlled shutdown.

use super::*;

impl Broker {
    /// Hands leadership of partitions led here back to their preferred replicas, one
    /// partition at a time, every `leader_rebalance_interval`.
    pub(super) async fn run_leader_rebalance(self: Arc<Self>) {
        let every = self.config.leader_rebalance_interval;
        if every.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for topic in self.local_topics() {
                let replicas: Vec<_> = topic.replicas.read().values().cloned().collect();
                for r in replicas {
                    if self.shutdown.is_cancelled() {
                        return;
                    }
                    let group = topic.record.group(r.id);
                    if r.hand_back_leadership(group).await {
                        tracing::info!(topic = %r.topic, partition = r.id, leader = r.preferred(), "preferred leader restored");
                    }
                }
            }
        }
    }

    /// Controlled shutdown (Kafka's `controlled.shutdown.enable`): hands every partition
    /// led here to an in-sync follower, 64 at a time, for at most `within`, so that its
    /// producers and consumers move over as after a planned leader move rather than a
    /// crash (no election timeouts, no failed calls). Returns (moved, led).
    pub(crate) async fn hand_off_leaderships(self: &Arc<Self>, within: Duration) -> (usize, usize) {
        use futures::StreamExt;
        let led: Vec<(Arc<Replica>, u64)> = self
            .local_topics()
            .into_iter()
            .flat_map(|t| {
                let replicas: Vec<_> = t.replicas.read().values().cloned().collect();
                replicas
                    .into_iter()
                    // A one-voter group (replication factor 1) has nobody to hand off to.
                    .filter(|r| r.is_leader() && r.voters() > 1)
                    .map(|r| {
                        let group = t.record.group(r.id);
                        (r, group)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let started = tokio::time::Instant::now();
        tracing::info!(
            partitions = led.len(),
            "controlled shutdown: handing off leaderships"
        );
        let count = led.len();
        let moved = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let hand_offs = futures::stream::iter(led.into_iter().map(|(r, group)| {
            let moved = moved.clone();
            async move {
                match r.hand_off(group).await {
                    Some(to) => {
                        moved.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(topic = %r.topic, partition = r.id, to, "handed off leadership");
                    }
                    None => {
                        tracing::warn!(topic = %r.topic, partition = r.id, in_sync = ?r.in_sync(), "could not hand off leadership (no follower in sync and caught up); its followers will elect a leader after this broker stops")
                    }
                }
            }
        }))
        .buffer_unordered(64)
        .collect::<Vec<()>>();
        if tokio::time::timeout(within, hand_offs).await.is_err() {
            tracing::warn!(timeout = ?within, "controlled shutdown: stopped handing off leaderships at the timeout");
        }
        let moved = moved.load(Ordering::Relaxed);
        tracing::info!(moved, led = count, took = ?started.elapsed(), "controlled shutdown: leaderships handed off");
        (moved, count)
    }
}
