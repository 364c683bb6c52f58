//! Produce: checks the request, then the partition validates, appends and answers as `acks`
//! asks.

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::{acks, pb};

use crate::broker::Broker;
use crate::coordinator::OFFSETS_TOPIC;
use crate::error::{Error, Result};

/// Used when the request names no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[tracing::instrument(skip_all, fields(topic = %req.topic, partition = req.partition, acks = req.acks, bytes = req.batch.len()))]
pub(super) async fn handle(
    broker: &Arc<Broker>,
    req: pb::ProduceRequest,
) -> Result<pb::ProduceResponse> {
    if ![acks::NONE, acks::LEADER, acks::ALL].contains(&req.acks) {
        return Err(Error::InvalidAcks(req.acks));
    }
    if req.topic == OFFSETS_TOPIC {
        return Err(Error::InvalidTopic(format!(
            "'{OFFSETS_TOPIC}' is written by group coordinators only: commit offsets through a consumer group (sluice_client::Consumer::commit)"
        )));
    }
    if broker.shutdown.is_cancelled() {
        return Err(Error::ShuttingDown);
    }
    // Answer a little before the client gives up, so it learns why.
    let timeout = if req.timeout_ms == 0 {
        DEFAULT_TIMEOUT
    } else {
        Duration::from_millis(req.timeout_ms as u64) * 9 / 10
    };
    let partition = broker.partition_current(&req.topic, req.partition).await?;
    let produced = partition
        .produce(broker, req.batch, req.acks, timeout)
        .await?;
    Ok(pb::ProduceResponse {
        base_offset: produced.base_offset,
        log_start_offset: produced.log_start,
    })
}
