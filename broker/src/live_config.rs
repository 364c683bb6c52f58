//! A topic's configuration as its partitions on this broker read it: shared by all of them,
//! replaced in place when the topic's config is altered (no restart, no reopen).

use std::sync::Arc;

use parking_lot::RwLock;
use sluice_proto::TopicConfig;

/// The current [`TopicConfig`] of one topic. Cheap to clone (shared); a read is a lock and
/// an `Arc` clone, so a request reads it once and keeps the copy it got.
#[derive(Debug, Clone)]
pub(crate) struct LiveConfig(Arc<RwLock<Arc<TopicConfig>>>);

impl LiveConfig {
    pub(crate) fn new(config: TopicConfig) -> Self {
        LiveConfig(Arc::new(RwLock::new(Arc::new(config))))
    }

    /// The config now.
    pub(crate) fn get(&self) -> Arc<TopicConfig> {
        self.0.read().clone()
    }

    /// Replaces it for every holder; returns whether it changed.
    pub(crate) fn set(&self, config: TopicConfig) -> bool {
        let mut current = self.0.write();
        if **current == config {
            return false;
        }
        *current = Arc::new(config);
        true
    }
}
