//! ListOffsets: earliest, latest (the high watermark), or the first offset at a timestamp.

use std::sync::Arc;

use sluice_proto::{list_offsets, pb};

use super::blocking;
use crate::broker::Broker;
use crate::error::Result;

#[tracing::instrument(skip_all, fields(partitions = req.partitions.len()))]
pub(super) async fn handle(
    broker: &Arc<Broker>,
    req: pb::ListOffsetsRequest,
) -> Result<pb::ListOffsetsResponse> {
    let found = broker
        .partitions_current(
            req.partitions
                .iter()
                .map(|q| (q.topic.as_str(), q.partition)),
        )
        .await;
    blocking(move || {
        let partitions = req
            .partitions
            .into_iter()
            .zip(found)
            .map(|(q, p)| {
                let mut out = pb::ListedOffset {
                    topic: q.topic.clone(),
                    partition: q.partition,
                    error: None,
                    offset: -1,
                    timestamp: -1,
                };
                let found = p.and_then(|p| match q.timestamp {
                    list_offsets::EARLIEST => Ok(Some((p.offsets().log_start, -1))),
                    list_offsets::LATEST => Ok(Some((p.high_watermark(), -1))),
                    ts => p.offset_for_timestamp(ts),
                });
                match found {
                    Ok(Some((offset, ts))) => {
                        out.offset = offset;
                        out.timestamp = ts;
                    }
                    Ok(None) => {}
                    Err(e) => out.error = Some(e.detail()),
                }
                out
            })
            .collect();
        Ok(pb::ListOffsetsResponse { partitions })
    })
    .await
}
