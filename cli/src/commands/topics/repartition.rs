//! `sluice topics repartition SOURCE --to DST --partitions N`: a backlog copied into a topic
//! with more partitions, each key's records in order (a key's records come from one source
//! partition, are read in offset order, and the idempotent producer stores them in that
//! order in the one destination partition their key hashes to). The copy is a consumer
//! group on SOURCE committing only what DST acknowledged, so it resumes after Ctrl-C or a
//! crash; what was sent and not committed before a crash is copied again (at most two
//! polls' worth of records: one poll's sends stay in flight while the next is read).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use serde::Serialize;
use sluice_client::{
    Admin, AutoOffsetReset, Consumer, ConsumerConfig, DeliveryFuture, NewTopic, Producer,
    ProducerConfig, ProducerRecord, RECORD_ID_HEADER, TopicPartition,
};

use crate::commands::{Context, progress};
use crate::output::{self, Format};

#[derive(Debug, Serialize)]
struct Report {
    source: String,
    destination: String,
    partitions: i32,
    group: String,
    created: bool,
    copied: u64,
    bytes: u64,
    seconds: f64,
    /// Every record SOURCE held at the start is in DST (false after Ctrl-C).
    complete: bool,
}

/// One poll's records, sent.
struct Sent {
    acks: Vec<DeliveryFuture>,
    /// The offset after the last record sent, per partition.
    offsets: Vec<(TopicPartition, i64)>,
}

/// Waits for every send of `sent`, then commits its offsets: records copied.
async fn settle(consumer: &Consumer, sent: Sent, to: &str, group: &str) -> anyhow::Result<u64> {
    let n = sent.acks.len() as u64;
    for a in sent.acks {
        a.await.with_context(|| format!("copying to '{to}'"))?;
    }
    consumer
        .commit(&sent.offsets)
        .await
        .with_context(|| format!("committing the copy's progress (group '{group}')"))?;
    Ok(n)
}

pub(super) async fn run(
    ctx: &Context,
    admin: &Admin,
    source: &str,
    to: &str,
    partitions: i32,
    follow: bool,
) -> anyhow::Result<()> {
    if source == to {
        anyhow::bail!("--to '{to}' is the source topic: name a new topic");
    }
    let src = admin
        .describe_topic(source)
        .await
        .with_context(|| format!("looking up topic '{source}'"))?;
    if partitions < 1 {
        anyhow::bail!("--partitions {partitions}: give at least 1");
    }
    let created = match admin.describe_topic(to).await {
        Ok(d) if d.partitions.len() as i32 == partitions => false,
        Ok(d) => anyhow::bail!(
            "topic '{to}' exists with {} partitions, not {partitions}: name a new topic, or give --partitions {} to resume copying into it",
            d.partitions.len(),
            d.partitions.len()
        ),
        Err(e) if e.code() == Some(sluice_client::ErrorCode::UnknownTopicOrPartition) => {
            let mut topic = NewTopic::new(to, partitions, src.replication_factor)
                .annotation("sluice.io/repartitioned-from", source);
            for key in &src.overrides {
                if let Some(v) = src.config.get(key) {
                    topic = topic.config(key.clone(), v.clone());
                }
            }
            admin
                .create_topic(topic, false)
                .await
                .with_context(|| format!("creating topic '{to}'"))?;
            true
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("looking up topic '{to}'"))),
    };
    let group = format!("sluice-repartition-{to}");
    // What is left to copy of what SOURCE holds now.
    let committed: BTreeMap<i32, i64> = admin
        .committed_offsets(&group)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.topic == source && c.offset >= 0)
        .map(|c| (c.partition, c.offset))
        .collect();
    let ends: BTreeMap<i32, i64> = src
        .partitions
        .iter()
        .map(|p| (p.partition, p.high_watermark))
        .collect();
    // Where the copy starts in each partition.
    let from: BTreeMap<i32, i64> = src
        .partitions
        .iter()
        .map(|p| {
            let c = committed.get(&p.partition).copied();
            (
                p.partition,
                c.unwrap_or(p.log_start_offset).max(p.log_start_offset),
            )
        })
        .collect();
    let left: i64 = ends
        .iter()
        .map(|(p, end)| (end - from.get(p).copied().unwrap_or(0)).max(0))
        .sum();
    if ctx.output == Format::Table {
        eprintln!(
            "{} '{to}' ({partitions} partitions, replication factor {}); copying {left} records of '{source}'{}{}.",
            if created { "Created" } else { "Resuming into" },
            src.replication_factor,
            if committed.is_empty() {
                ""
            } else {
                " from where the last copy stopped"
            },
            if follow {
                ", then following it until Ctrl-C"
            } else {
                ""
            },
        );
    }
    let mut consumer = Consumer::new(
        ctx.client(),
        ConsumerConfig {
            group_id: Some(group.clone()),
            enable_auto_commit: false,
            auto_offset_reset: AutoOffsetReset::Earliest,
            client_id: format!("sluice-repartition-{}", std::process::id()),
            ..ConsumerConfig::default()
        },
    )?;
    consumer
        .subscribe(vec![source.to_string()])
        .await
        .with_context(|| format!("joining group '{group}' on '{source}'"))?;
    let producer = Producer::connect(ctx.client(), ProducerConfig::default()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::SeqCst);
            }
        });
    }
    let bar = progress(
        ctx,
        (!follow).then_some(left.max(0) as u64),
        "copying",
        false,
    );
    let started = Instant::now();
    let (mut copied, mut bytes) = (0u64, 0u64);
    let reached_end = |consumer: &Consumer| {
        ends.iter().all(|(p, end)| {
            *end <= from.get(p).copied().unwrap_or(0)
                || consumer
                    .position(&TopicPartition::new(source, *p))
                    .is_some_and(|pos| pos >= *end)
        })
    };
    // One poll's sends stay in flight while the next poll is read and sent: its offsets are
    // committed once all of them are acknowledged.
    let mut pending: Option<Sent> = None;
    let outcome: anyhow::Result<bool> = async {
        loop {
            let ended = stop.load(Ordering::SeqCst) || (!follow && reached_end(&consumer));
            if ended {
                if let Some(prev) = pending.take() {
                    copied += settle(&consumer, prev, to, &group).await?;
                }
                return Ok(!stop.load(Ordering::SeqCst));
            }
            let records = consumer
                .poll(Duration::from_millis(500))
                .await
                .with_context(|| format!("reading '{source}'"))?;
            if records.is_empty() {
                if let Some(prev) = pending.take() {
                    copied += settle(&consumer, prev, to, &group).await?;
                    bar.set_position(copied);
                }
                continue;
            }
            let mut next: BTreeMap<TopicPartition, i64> = BTreeMap::new();
            let mut acks = Vec::with_capacity(records.len());
            for r in &records {
                let mut out = ProducerRecord::new(to, r.value.clone());
                out.key = r.key.clone();
                out.timestamp = Some(r.timestamp);
                out.headers = r
                    .headers
                    .iter()
                    .map(|h| (h.key.clone(), h.value.clone()))
                    .collect();
                // The copy keeps the original's record id.
                if !r.headers.iter().any(|h| h.key == RECORD_ID_HEADER) {
                    out.headers.push((
                        RECORD_ID_HEADER.to_string(),
                        Some(Bytes::from(r.id.to_string())),
                    ));
                }
                bytes += r.value.len() as u64 + r.key.as_ref().map_or(0, |k| k.len() as u64);
                acks.push(
                    producer
                        .send(out)
                        .await
                        .with_context(|| format!("copying to '{to}'"))?,
                );
            }
            for r in &records {
                next.insert(TopicPartition::new(&*r.topic, r.partition), r.offset + 1);
            }
            if let Some(prev) = pending.take() {
                copied += settle(&consumer, prev, to, &group).await?;
                bar.set_position(copied);
            }
            pending = Some(Sent {
                acks,
                offsets: next.into_iter().collect(),
            });
        }
    }
    .await;
    bar.finish_and_clear();
    producer.close().await;
    if let Err(e) = consumer.close().await {
        eprintln!("warning: leaving group '{group}': {e}");
    }
    let complete = outcome?;
    let seconds = started.elapsed().as_secs_f64();
    let report = Report {
        source: source.to_string(),
        destination: to.to_string(),
        partitions,
        group: group.clone(),
        created,
        copied,
        bytes,
        seconds,
        complete,
    };
    output::print(ctx.output, &report, |r| {
        outln!(
            "Copied {} records ({:.1} MB) from '{}' to '{}' in {:.1}s ({:.0} records/s, {:.1} MB/s){}.",
            r.copied,
            r.bytes as f64 / 1e6,
            r.source,
            r.destination,
            r.seconds,
            r.copied as f64 / r.seconds.max(1e-3),
            r.bytes as f64 / 1e6 / r.seconds.max(1e-3),
            if r.complete {
                String::new()
            } else {
                format!(
                    "; stopped before the end: run it again to go on (its progress is group '{}')",
                    r.group
                )
            }
        );
        outln!(
            "Next: point producers at '{}' (with --follow running, nothing they still send to '{}' is missed); start {} consumers on '{}' in their group from the earliest offset; stop the copy once '{}' is drained, then delete '{}'.",
            r.destination,
            r.source,
            r.partitions,
            r.destination,
            r.source,
            r.source
        );
    })
}
