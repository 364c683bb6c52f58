//! `sluice bench join`: a member joins a group that is consuming under load; how long until
//! the group is stable again, how many partitions moved, and the longest gap in records of
//! the partitions that did not move (against the same measure before the join): with
//! incremental assignment, members whose partitions stay should not pause.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use sluice_client::{
    Admin, AutoOffsetReset, Consumer, ConsumerConfig, ErrorCode, NewTopic, Producer,
    ProducerConfig, ProducerRecord,
};
use std::sync::Mutex;

use super::super::Context;
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct JoinBench {
    /// Topic consumed; created with --partitions if missing.
    #[arg(long, default_value = "bench-join")]
    topic: String,
    #[arg(long, default_value_t = 60)]
    partitions: i32,
    /// Members consuming before one more joins.
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Records/s produced across the partitions throughout.
    #[arg(long, default_value_t = 6000)]
    rate: u64,
    /// The group (a fresh name per run keeps runs apart).
    #[arg(long, default_value = "bench-join")]
    group: String,
    /// How long gaps are measured before the join, and after the group is stable again.
    #[arg(long, default_value = "5s")]
    window: humantime::Duration,
}

#[derive(Debug, Serialize)]
struct JoinReport {
    members_before: usize,
    partitions: i32,
    records_per_second: u64,
    /// From the new member's subscribe until the group is Stable with it.
    stable_after_ms: u64,
    moved_partitions: usize,
    /// Longest time without a record, over partitions whose owner did not change, from
    /// the join until a window after the group was stable again.
    unmoved_max_gap_ms: u64,
    /// The same measure over a window before the join: the normal gap.
    baseline_max_gap_ms: u64,
}

/// Per partition: when its last record arrived, and the longest gap since the reset.
#[derive(Debug, Default)]
struct Gaps {
    last: HashMap<i32, Instant>,
    max: HashMap<i32, Duration>,
}

impl Gaps {
    fn seen(&mut self, partition: i32, now: Instant) {
        if let Some(prev) = self.last.insert(partition, now) {
            let gap = now - prev;
            let m = self.max.entry(partition).or_default();
            *m = (*m).max(gap);
        }
    }

    fn reset(&mut self) {
        self.max.clear();
    }

    /// The longest gap of each partition, counting one still open now.
    fn longest(&self, now: Instant) -> HashMap<i32, Duration> {
        self.last
            .iter()
            .map(|(p, last)| {
                let open = now - *last;
                (*p, self.max.get(p).copied().unwrap_or_default().max(open))
            })
            .collect()
    }
}

struct Running {
    owned: Arc<Mutex<Vec<i32>>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start_member(
    ctx: &Context,
    group: &str,
    topic: &str,
    gaps: Arc<Mutex<Gaps>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Running> {
    let mut consumer = Consumer::new(
        ctx.client(),
        ConsumerConfig {
            group_id: Some(group.to_string()),
            auto_offset_reset: AutoOffsetReset::Latest,
            ..ConsumerConfig::default()
        },
    )?;
    let owned = Arc::new(Mutex::new(Vec::new()));
    let (topic, o) = (topic.to_string(), owned.clone());
    let task = tokio::spawn(async move {
        consumer.subscribe(vec![topic]).await?;
        while !stop.load(Ordering::Relaxed) {
            let records = consumer.poll(Duration::from_millis(100)).await?;
            let now = Instant::now();
            {
                let mut g = gaps.lock().expect("bench lock");
                for r in &records {
                    g.seen(r.partition, now);
                }
            }
            *o.lock().expect("bench lock") = consumer
                .assignment()
                .iter()
                .map(|tp| tp.partition)
                .collect();
        }
        consumer.close().await?;
        Ok(())
    });
    Ok(Running { owned, task })
}

fn owners(members: &[Running]) -> HashMap<i32, usize> {
    members
        .iter()
        .enumerate()
        .flat_map(|(i, m)| {
            m.owned
                .lock()
                .expect("bench lock")
                .clone()
                .into_iter()
                .map(move |p| (p, i))
        })
        .collect()
}

async fn wait_stable(admin: &Admin, group: &str, members: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(d) = admin.describe_group(group).await
            && d.state == "Stable"
            && d.members.len() == members
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "group '{group}' not stable with {members} members after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn run(ctx: &Context, args: JoinBench) -> anyhow::Result<()> {
    let admin = Admin::new(ctx.client())?;
    match admin
        .create_topic(NewTopic::new(&args.topic, args.partitions, -1), false)
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
        Err(e) => return Err(e).with_context(|| format!("creating topic '{}'", args.topic)),
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Load: `rate` records/s spread over the partitions, in 10 ms steps.
    let producer = Producer::connect(ctx.client(), ProducerConfig::default()).await?;
    let load = {
        let (producer, stop, topic) = (producer.clone(), stop.clone(), args.topic.clone());
        let (rate, partitions) = (args.rate, args.partitions);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..(rate / 100).max(1) {
                    let p = (n % partitions as u64) as i32;
                    n += 1;
                    if producer
                        .send(ProducerRecord::new(&topic, "x").partition(p))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        })
    };
    let gaps = Arc::new(Mutex::new(Gaps::default()));
    let mut members = Vec::new();
    for _ in 0..args.members {
        members.push(start_member(
            ctx,
            &args.group,
            &args.topic,
            gaps.clone(),
            stop.clone(),
        )?);
    }
    wait_stable(&admin, &args.group, args.members).await?;
    let window: Duration = args.window.into();
    tokio::time::sleep(window).await;
    gaps.lock().expect("bench lock").reset();
    tokio::time::sleep(window).await;
    let baseline = gaps
        .lock()
        .expect("bench lock")
        .longest(Instant::now())
        .into_values()
        .max()
        .unwrap_or_default();
    let before = owners(&members);

    gaps.lock().expect("bench lock").reset();
    let joined = Instant::now();
    members.push(start_member(
        ctx,
        &args.group,
        &args.topic,
        gaps.clone(),
        stop.clone(),
    )?);
    wait_stable(&admin, &args.group, args.members + 1).await?;
    let stable_after = joined.elapsed();
    tokio::time::sleep(window).await;
    let longest = gaps.lock().expect("bench lock").longest(Instant::now());
    let after = owners(&members);
    let moved: Vec<i32> = before
        .iter()
        .filter(|(p, o)| after.get(*p) != Some(*o))
        .map(|(p, _)| *p)
        .collect();
    let unmoved = longest
        .iter()
        .filter(|(p, _)| !moved.contains(*p))
        .map(|(_, g)| *g)
        .max()
        .unwrap_or_default();

    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    for m in members {
        m.task.await??;
    }
    producer.close().await;
    let report = JoinReport {
        members_before: args.members,
        partitions: args.partitions,
        records_per_second: args.rate,
        stable_after_ms: stable_after.as_millis() as u64,
        moved_partitions: moved.len(),
        unmoved_max_gap_ms: unmoved.as_millis() as u64,
        baseline_max_gap_ms: baseline.as_millis() as u64,
    };
    output::print(ctx.output, &report, |r| {
        outln!(
            "join: a member joins {} members consuming {} partitions at {} records/s",
            r.members_before,
            r.partitions,
            r.records_per_second
        );
        outln!(
            "  stable again after {} ms; {} partition(s) moved",
            r.stable_after_ms,
            r.moved_partitions
        );
        outln!(
            "  longest gap of the partitions that did not move: {} ms (before the join: {} ms)",
            r.unmoved_max_gap_ms,
            r.baseline_max_gap_ms
        );
    })
}
