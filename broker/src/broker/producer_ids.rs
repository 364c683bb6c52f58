//! Idempotent producer ids: handed out from blocks reserved through the controller, one block kept ahead.

use super::*;

impl Broker {
    /// A producer id no other producer of the cluster gets: from this broker's reserved
    /// blocks; the next block is reserved through the controller before this one runs out.
    pub(crate) async fn allocate_producer_id(self: &Arc<Self>) -> Result<i64> {
        let mut ids = self.producer_ids.lock().await;
        while ids.front().is_some_and(|r| r.is_empty()) {
            ids.pop_front();
        }
        if ids.is_empty() {
            ids.push_back(self.reserve_producer_ids().await?);
        }
        let Some(front) = ids.front_mut() else {
            return Err(Error::Internal("no producer ids reserved".into()));
        };
        let id = front.start;
        front.start += 1;
        let left: i64 = ids.iter().map(|r| r.end - r.start).sum();
        if left < i64::from(PRODUCER_ID_BLOCK / 2) {
            self.prefetch_producer_ids();
        }
        Ok(id)
    }

    /// Reserves a block of producer ids in the background, unless one is on its way.
    pub(super) fn prefetch_producer_ids(self: &Arc<Self>) {
        if self.refilling_producer_ids.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            match this.reserve_producer_ids().await {
                Ok(block) => this.producer_ids.lock().await.push_back(block),
                Err(e) => {
                    tracing::warn!(cause = %e, "reserving producer ids; will retry when asked")
                }
            }
            this.refilling_producer_ids.store(false, Ordering::Release);
        });
    }

    pub(super) async fn reserve_producer_ids(&self) -> Result<std::ops::Range<i64>> {
        let command = MetaCommand::AllocateProducerIds {
            count: PRODUCER_ID_BLOCK,
        };
        match self.controller.propose(command).await? {
            MetaResponse::ProducerIds { first } => Ok(first..first + i64::from(PRODUCER_ID_BLOCK)),
            other => Err(Error::Internal(format!(
                "the controller answered a producer id request with {other:?}"
            ))),
        }
    }
}
