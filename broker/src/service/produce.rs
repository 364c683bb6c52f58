//! Produce: validate, append (locally or through the partition's Raft group), then answer
//! as `acks` and the flush policy require.

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::{acks, pb};

use super::blocking;
use crate::broker::{Broker, PartitionRef};
use crate::clock::now_ms;
use crate::config::FlushPolicy;
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
    if broker.shutdown.is_cancelled() {
        return Err(Error::ShuttingDown);
    }
    // Answer a little before the client gives up, so it learns why.
    let timeout = if req.timeout_ms == 0 {
        DEFAULT_TIMEOUT
    } else {
        Duration::from_millis(req.timeout_ms as u64) * 9 / 10
    };
    let partition = match broker.partition_current(&req.topic, req.partition).await? {
        PartitionRef::Local(p) => p,
        PartitionRef::Replica(r) => {
            let state = broker.controller.state();
            let (base_offset, _) = r.produce(&state, req.batch, req.acks, timeout).await?;
            let base_offset = if req.acks == acks::NONE {
                -1
            } else {
                base_offset
            };
            return Ok(pb::ProduceResponse {
                base_offset,
                log_start_offset: r.offsets().log_start,
            });
        }
    };
    partition.await_turn(&req.batch).await;
    let p = partition.clone();
    let batch = req.batch;
    let info = blocking(move || {
        let batch = p.validate(batch)?;
        p.append(batch, now_ms())
    })
    .await?;
    broker.written(&partition);
    if req.acks != acks::NONE && broker.config.flush == FlushPolicy::Always {
        tokio::time::timeout(timeout, partition.wait_flushed(info.last_offset + 1)).await.map_err(|_| {
            Error::Timeout(format!(
                "{}-{}: batch at offset {} was appended but not flushed within {} ms; it may still become visible",
                req.topic,
                req.partition,
                info.base_offset,
                timeout.as_millis()
            ))
        })??;
    }
    let base_offset = if req.acks == acks::NONE {
        -1
    } else {
        info.base_offset
    };
    Ok(pb::ProduceResponse {
        base_offset,
        log_start_offset: partition.offsets().log_start,
    })
}
