//! `sluice bench consume --group G --members N`: the catch-up read of `bench consume`, done
//! by N members of a consumer group (subscribe, auto-commit, each with its own
//! connections), so a group's read rate can be set against a single consumer's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice_client::{AutoOffsetReset, Consumer, ConsumerConfig};
use std::sync::Mutex;

use super::super::{Context, progress};
use super::{ConsumeBench, Report};

/// What the members share: counts, each partition's position, and when the first record
/// arrived (the group's join is not part of the read rate).
#[derive(Default)]
struct Shared {
    records: AtomicU64,
    bytes: AtomicU64,
    positions: Mutex<HashMap<i32, i64>>,
    first: Mutex<Option<Instant>>,
    stop: AtomicBool,
}

pub(super) async fn run(ctx: &Context, args: ConsumeBench) -> anyhow::Result<Report> {
    let group = args.group.clone().context("--group is set")?;
    let members = args.members.max(1);
    // Ends are read with a plain consumer (not a member).
    let probe = Consumer::new(ctx.client(), ConsumerConfig::default())?;
    let (partitions, offsets, ends) = super::read_span(&probe, &args.topic).await?;
    let ends: HashMap<i32, i64> = ends.into_iter().collect();
    let shared = Arc::new(Shared::default());
    let joined = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for m in 0..members {
        let mut consumer = Consumer::new(
            ctx.client(),
            ConsumerConfig {
                group_id: Some(group.clone()),
                client_id: format!("bench-consume-{m}"),
                auto_offset_reset: AutoOffsetReset::Earliest,
                max_partition_fetch_bytes: args.max_partition_fetch_bytes,
                fetch_max_bytes: args.fetch_max_bytes,
                ..ConsumerConfig::default()
            },
        )?;
        let (topic, shared) = (args.topic.clone(), shared.clone());
        tasks.spawn(async move {
            consumer.subscribe(vec![topic.clone()]).await?;
            while !shared.stop.load(Ordering::Relaxed) {
                let batch = consumer.poll(Duration::from_millis(100)).await?;
                if !batch.is_empty() {
                    shared
                        .first
                        .lock()
                        .expect("bench lock")
                        .get_or_insert_with(Instant::now);
                }
                shared
                    .records
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let bytes: u64 = batch
                    .iter()
                    .map(|r| r.value.len() as u64 + r.key.as_ref().map_or(0, |k| k.len() as u64))
                    .sum();
                shared.bytes.fetch_add(bytes, Ordering::Relaxed);
                let mut positions = shared.positions.lock().expect("bench lock");
                for tp in consumer.assignment() {
                    if let Some(p) = consumer.position(&tp) {
                        positions.insert(tp.partition, p);
                    }
                }
            }
            consumer.close().await?;
            anyhow::Ok(())
        });
    }
    let bar = progress(ctx, Some(offsets), "consuming as a group", false);
    let deadline_idle = Duration::from_secs(30);
    let mut last_progress = (0u64, Instant::now());
    let done = loop {
        if let Some(r) = tasks.try_join_next() {
            r.context("a member's task")?.context("a group member")?;
        }
        let records = shared.records.load(Ordering::Relaxed);
        bar.set_position(records);
        let reached = {
            let positions = shared.positions.lock().expect("bench lock");
            ends.iter()
                .all(|(p, end)| positions.get(p).is_some_and(|pos| pos >= end))
        };
        if reached {
            break Instant::now();
        }
        if records != last_progress.0 {
            last_progress = (records, Instant::now());
        } else if last_progress.1.elapsed() > deadline_idle {
            anyhow::bail!(
                "group '{group}': no records for {deadline_idle:?} after {records}; does it have committed offsets for '{}' already? Use a fresh --group",
                args.topic
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    shared.stop.store(true, Ordering::Relaxed);
    while let Some(r) = tasks.join_next().await {
        r.context("a member's task")?.context("a group member")?;
    }
    bar.finish_and_clear();
    let first = shared.first.lock().expect("bench lock").unwrap_or(joined);
    let seconds = (done - first).as_secs_f64();
    let (records, bytes) = (
        shared.records.load(Ordering::Relaxed),
        shared.bytes.load(Ordering::Relaxed),
    );
    Ok(Report::read(
        format!(
            "consume: topic '{}' from the start ({} partitions) by {members} member(s) of group '{group}'; first record {} ms after subscribing, timed from there",
            args.topic,
            partitions.len(),
            (first - joined).as_millis()
        ),
        records,
        bytes,
        seconds,
    ))
}
