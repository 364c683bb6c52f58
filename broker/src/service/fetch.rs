//! Fetch with long-poll: answer as soon as `min_bytes` are readable, or at `max_wait_ms`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::select_all;
use sluice_proto::pb;

use super::blocking;
use crate::broker::Broker;
use crate::broker::PartitionRef;
use crate::error::{Error, Result};

#[tracing::instrument(skip_all, fields(partitions = req.partitions.len(), max_wait_ms = req.max_wait_ms))]
pub(super) async fn handle(
    broker: &Arc<Broker>,
    req: pb::FetchRequest,
) -> Result<pb::FetchResponse> {
    let max_wait = Duration::from_millis(req.max_wait_ms as u64).min(broker.config.max_fetch_wait);
    let deadline = tokio::time::Instant::now() + max_wait;
    let max_bytes = if req.max_bytes == 0 {
        usize::MAX
    } else {
        req.max_bytes as usize
    }
    .min(broker.config.max_request_bytes);
    let found = broker
        .partitions_current(
            req.partitions
                .iter()
                .map(|fp| (fp.topic.as_str(), fp.partition)),
        )
        .await;
    let targets: Vec<(pb::FetchPartition, Result<PartitionRef>)> =
        req.partitions.into_iter().zip(found).collect();
    let targets = Arc::new(targets);
    loop {
        // Subscribe before reading, so a write between the read and the wait still wakes us.
        let mut watchers: Vec<_> = targets
            .iter()
            .filter_map(|(_, p)| p.as_ref().ok().map(|p| p.subscribe_high_watermark()))
            .collect();
        for w in &mut watchers {
            w.borrow_and_update();
        }
        let t = targets.clone();
        let (response, bytes, errors) = blocking(move || Ok(read_all(&t, max_bytes))).await?;
        let now = tokio::time::Instant::now();
        if bytes >= req.min_bytes.max(1) as usize
            || errors
            || now >= deadline
            || watchers.is_empty()
        {
            return Ok(response);
        }
        let changed = select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = broker.shutdown.cancelled() => return Err(Error::ShuttingDown),
            _ = changed => {}
        }
    }
}

fn read_all(
    targets: &[(pb::FetchPartition, Result<PartitionRef>)],
    max_bytes: usize,
) -> (pb::FetchResponse, usize, bool) {
    let mut total = 0usize;
    let mut errors = false;
    let mut out = Vec::with_capacity(targets.len());
    for (fp, partition) in targets {
        let mut entry = pb::FetchedPartition {
            topic: fp.topic.clone(),
            partition: fp.partition,
            error: None,
            high_watermark: -1,
            log_start_offset: -1,
            records: Bytes::new(),
        };
        match partition {
            Err(e) => {
                entry.error = Some(e.detail());
                errors = true;
            }
            Ok(p) => {
                entry.high_watermark = p.high_watermark();
                entry.log_start_offset = p.offsets().log_start;
                // Past the response budget, partitions answer empty (but always one batch
                // for the first partition with data, so a large batch is never stuck).
                let budget = if total >= max_bytes {
                    0
                } else {
                    (max_bytes - total).min(fp.partition_max_bytes.max(1) as usize)
                };
                if budget > 0 || total == 0 {
                    match p.read(fp.fetch_offset, budget.max(1)) {
                        Ok(records) => {
                            total += records.len();
                            entry.records = records;
                        }
                        Err(e) => {
                            entry.error = Some(e.detail());
                            errors = true;
                        }
                    }
                }
            }
        }
        out.push(entry);
    }
    (pb::FetchResponse { partitions: out }, total, errors)
}
