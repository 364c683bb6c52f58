//! Retention: deleting the segments `retention.ms` / `retention.bytes` no longer keep.

use super::*;

impl Broker {
    /// Deletes expired segments until shutdown.
    pub(crate) async fn run_retention(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.retention_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for topic in this.local_topics() {
                    for p in topic.partitions.values() {
                        if let Err(e) = p.enforce_retention(now_ms()) {
                            tracing::error!(topic = %p.topic, partition = p.id, cause = %e, "retention failed");
                        }
                    }
                }
            })
            .await;
            for topic in self.local_topics() {
                let replicas: Vec<_> = topic.replicas.read().values().cloned().collect();
                for r in replicas {
                    if let Err(e) = r.enforce_retention(now_ms()).await {
                        tracing::error!(topic = %r.topic, partition = r.id, cause = %e, "retention failed");
                    }
                }
            }
        }
    }
}
