//! `sluice bench produce|consume`: throughput and latency against a running cluster, in
//! the spirit of OpenMessaging Benchmark workloads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde::Serialize;
use sluice_client::{
    Acks, Admin, Compression, Consumer, ConsumerConfig, ErrorCode, NewTopic, Offset, Producer,
    ProducerConfig, ProducerRecord, TopicPartition,
};
use std::sync::Mutex;

use super::{Context, invalid, progress};
use crate::output;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Produce records as fast as the cluster takes them.
    Produce(ProduceBench),
    /// Read a topic from the start as fast as possible (catch-up read).
    Consume(ConsumeBench),
    /// Commit consumer group offsets as fast as the coordinators take them.
    Commit(CommitBench),
    /// A member joins a group consuming under load: time until stable, and whether the
    /// members whose partitions did not move paused.
    Join(join::JoinBench),
    /// Latency against throughput: produce at a list of target rates (or in steps up to
    /// the max), each held for a time after a warm-up; a table, CSV, JSON and an SVG chart.
    Sweep(sweep::SweepBench),
    /// Draws the chart of earlier sweeps (their --json files) on one plot.
    Plot(sweep::PlotArgs),
}

mod breakdown;
mod group_consume;
mod join;
mod plot;
mod results;
mod sweep;

#[derive(Debug, Args)]
pub(crate) struct CommitBench {
    /// Topic whose offsets are committed; created with --partitions if missing.
    #[arg(long, default_value = "bench-commits")]
    topic: String,
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Groups committing (bench-group-0, bench-group-1, ...); each spreads over the
    /// coordinators like real groups.
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// Concurrent committers per group, each committing one partition's offset at a time.
    #[arg(long, default_value_t = 8)]
    committers: usize,
    /// How long to commit.
    #[arg(long, default_value = "10s")]
    duration: humantime::Duration,
}

/// The topic and producers of a produce workload (`bench produce`, `bench sweep`).
#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    /// Topic to write to; created with --partitions if missing.
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Record value size in bytes.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Replication factor of the topic when the bench creates it.
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
    /// min.insync.replicas of the topic when the bench creates it.
    #[arg(long, default_value_t = 1)]
    min_insync_replicas: i32,
    /// 0, 1 or all (-1 means all, as in Kafka).
    #[arg(long, default_value = "all", allow_negative_numbers = true)]
    acks: Acks,
    /// batch.size in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    batch_size: usize,
    /// linger.ms, as a duration.
    #[arg(long, default_value = "5ms")]
    linger: humantime::Duration,
    /// buffer.memory per producer, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    buffer_memory: usize,
    /// Concurrent producers (each with its own connection).
    #[arg(long, default_value_t = 1)]
    producers: u32,
    /// none, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// enable.idempotence (takes effect with acks=all, as in Kafka).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    idempotence: bool,
    /// max.in.flight.requests.per.connection: batches in flight per partition, 1-5 (with
    /// idempotence; without it the producer sends one at a time).
    #[arg(long, default_value_t = sluice_client::producer::MAX_IN_FLIGHT)]
    max_in_flight: usize,
}

impl LoadArgs {
    /// Creates the topic unless it exists; the producers' configuration.
    async fn prepare(&self, ctx: &Context) -> anyhow::Result<ProducerConfig> {
        let compression = Compression::parse(&self.compression).ok_or_else(|| {
            invalid(format!(
                "invalid --compression '{}': use none, lz4 or zstd",
                self.compression
            ))
        })?;
        let admin = Admin::new(ctx.client())?;
        let topic = NewTopic::new(&self.topic, self.partitions, self.replication_factor)
            .config("min.insync.replicas", self.min_insync_replicas.to_string());
        match admin.create_topic(topic, false).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("creating bench topic '{}'", self.topic));
            }
        }
        Ok(ProducerConfig {
            acks: self.acks,
            batch_size: self.batch_size,
            linger: self.linger.into(),
            buffer_memory: self.buffer_memory,
            compression,
            enable_idempotence: self.idempotence,
            max_in_flight: self.max_in_flight,
            ..ProducerConfig::default()
        })
    }

    /// The workload in words.
    fn describe(&self) -> String {
        format!(
            "{} B records, topic '{}' ({} partitions, factor {}), acks={:?}, idempotence {}, in flight {}, batch {} B, linger {}, {} producer(s)",
            self.record_size,
            self.topic,
            self.partitions,
            self.replication_factor,
            self.acks,
            self.idempotence,
            self.max_in_flight,
            self.batch_size,
            self.linger,
            self.producers,
        )
    }

    /// A record value of --record-size bytes.
    fn value(&self) -> Bytes {
        Bytes::from(
            (0..self.record_size)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>(),
        )
    }
}

#[derive(Debug, Args)]
pub(crate) struct ProduceBench {
    #[command(flatten)]
    load: LoadArgs,
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Target records/s across producers (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Records at the start left out of the steady-state figures (Kafka's
    /// --warmup-records): connections, metadata and a new topic's first writes. The whole
    /// run is reported as well.
    #[arg(long, default_value_t = 0)]
    warmup_records: u64,
}

#[derive(Debug, Args)]
pub(crate) struct ConsumeBench {
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Stop after this many records (default: everything up to the end at start).
    #[arg(long)]
    records: Option<u64>,
    /// max.partition.fetch.bytes.
    #[arg(long, default_value_t = ConsumerConfig::default().max_partition_fetch_bytes)]
    max_partition_fetch_bytes: u32,
    /// fetch.max.bytes.
    #[arg(long, default_value_t = ConsumerConfig::default().fetch_max_bytes)]
    fetch_max_bytes: u32,
    /// Read as members of this consumer group (subscribe, auto-commit) instead of one
    /// consumer assigned every partition; the group must have no committed offsets for the
    /// topic (a fresh name per run), so it starts at the earliest.
    #[arg(long, conflicts_with = "records")]
    group: Option<String>,
    /// Group members reading together (with --group), each with its own connections.
    #[arg(long, default_value_t = 1, requires = "group")]
    members: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    workload: String,
    records: u64,
    bytes: u64,
    seconds: f64,
    records_per_second: f64,
    mb_per_second: f64,
    failed: u64,
    latency_ms: Option<Latency>,
    /// Where a produced record's time went (Kafka's producer metrics), summed over producers.
    #[serde(skip_serializing_if = "Option::is_none")]
    producer: Option<ProducerSummary>,
    /// The run after its --warmup-records, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    steady_state: Option<SteadyState>,
}

#[derive(Debug, Serialize)]
struct SteadyState {
    warmup_records: u64,
    records: u64,
    /// From the moment the warm-up's records were all answered to the end of the run.
    seconds: f64,
    records_per_second: f64,
    mb_per_second: f64,
    latency_ms: Latency,
}

#[derive(Debug, Serialize)]
struct ProducerSummary {
    batches: u64,
    records_per_batch: f64,
    batch_kib_avg: f64,
    requests: u64,
    retries: u64,
    request_latency_ms_avg: f64,
    request_latency_ms_max: f64,
    record_queue_time_ms_avg: f64,
    record_queue_time_ms_max: f64,
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            self.p50, self.p99, self.p999, self.max
        )
    }
}

impl Latency {
    /// Quantiles of a histogram recorded in microseconds.
    fn of(h: &Histogram<u64>) -> Self {
        Latency {
            p50: h.value_at_quantile(0.5) as f64 / 1000.0,
            p99: h.value_at_quantile(0.99) as f64 / 1000.0,
            p999: h.value_at_quantile(0.999) as f64 / 1000.0,
            max: h.max() as f64 / 1000.0,
        }
    }
}

impl ProducerSummary {
    fn of(all: &[sluice_client::ProducerMetrics]) -> Self {
        let sum = |f: fn(&sluice_client::ProducerMetrics) -> u64| all.iter().map(f).sum::<u64>();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (batches, requests) = (sum(|m| m.batches), sum(|m| m.requests));
        let weighted = |f: fn(&sluice_client::ProducerMetrics) -> Duration,
                        n: fn(&sluice_client::ProducerMetrics) -> u64,
                        total: u64| {
            all.iter().map(|m| ms(f(m)) * n(m) as f64).sum::<f64>() / total.max(1) as f64
        };
        let max = |f: fn(&sluice_client::ProducerMetrics) -> Duration| {
            all.iter().map(|m| ms(f(m))).fold(0.0, f64::max)
        };
        ProducerSummary {
            batches,
            records_per_batch: sum(|m| m.records) as f64 / batches.max(1) as f64,
            batch_kib_avg: sum(|m| m.batch_bytes) as f64 / 1024.0 / batches.max(1) as f64,
            requests,
            retries: sum(|m| m.retries),
            request_latency_ms_avg: weighted(|m| m.request_latency_avg, |m| m.requests, requests),
            request_latency_ms_max: max(|m| m.request_latency_max),
            record_queue_time_ms_avg: weighted(|m| m.record_queue_time_avg, |m| m.batches, batches),
            record_queue_time_ms_max: max(|m| m.record_queue_time_max),
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

pub(crate) async fn run(ctx: &Context, cmd: BenchCommand) -> anyhow::Result<()> {
    let report = match cmd {
        BenchCommand::Produce(args) => produce(ctx, args).await?,
        BenchCommand::Consume(args) => consume(ctx, args).await?,
        BenchCommand::Commit(args) => commit(ctx, args).await?,
        BenchCommand::Join(args) => return join::run(ctx, args).await,
        BenchCommand::Sweep(args) => return sweep::run(ctx, args).await,
        BenchCommand::Plot(args) => return sweep::plot(ctx, args),
    };
    output::print(ctx.output, &report, |r| {
        outln!("{}", r.workload);
        outln!(
            "  {} records, {} in {:.2}s: {:.0} records/s, {:.1} MB/s{}",
            r.records,
            output::bytes(r.bytes),
            r.seconds,
            r.records_per_second,
            r.mb_per_second,
            if r.failed > 0 {
                format!(", {} FAILED", r.failed)
            } else {
                String::new()
            }
        );
        if let Some(l) = &r.latency_ms {
            outln!("  latency ms: {l}");
        }
        if let Some(s) = &r.steady_state {
            outln!(
                "  steady state (after {} warm-up records): {} records in {:.2}s: {:.0} records/s, {:.1} MB/s",
                s.warmup_records,
                s.records,
                s.seconds,
                s.records_per_second,
                s.mb_per_second
            );
            outln!("  steady-state latency ms: {}", s.latency_ms);
        }
        if let Some(p) = &r.producer {
            outln!(
                "  batches: {} ({:.0} records, {:.1} KiB avg), retries {}; request latency ms avg {:.2} max {:.2}; queue time ms avg {:.2} max {:.2}",
                p.batches,
                p.records_per_batch,
                p.batch_kib_avg,
                p.retries,
                p.request_latency_ms_avg,
                p.request_latency_ms_max,
                p.record_queue_time_ms_avg,
                p.record_queue_time_ms_max
            );
        }
    })
}

async fn produce(ctx: &Context, args: ProduceBench) -> anyhow::Result<Report> {
    if args.warmup_records >= args.records {
        return Err(invalid(format!(
            "--warmup-records {} leaves nothing to measure: it must be less than --records {}",
            args.warmup_records, args.records
        )));
    }
    let load = &args.load;
    let config = load.prepare(ctx).await?;
    let workload = format!(
        "produce: {} records x {}{}",
        args.records,
        load.describe(),
        if args.rate > 0 {
            format!(", rate {}/s", args.rate)
        } else {
            String::new()
        }
    );
    let histogram = Arc::new(Mutex::new(latency_histogram()));
    let steady_histogram = Arc::new(Mutex::new(latency_histogram()));
    let bar = progress(ctx, Some(args.records), "producing", false);
    let value = load.value();
    let started = Instant::now();
    let mut tasks = Vec::new();
    let producers = load.producers.max(1) as u64;
    let per = args.records / producers;
    for i in 0..producers {
        let count = if i == 0 {
            per + args.records % producers
        } else {
            per
        };
        let producer = Producer::connect(ctx.client(), config.clone()).await?;
        let topic = load.topic.clone();
        let value = value.clone();
        let histogram = histogram.clone();
        let steady_histogram = steady_histogram.clone();
        let bar = bar.clone();
        let rate = args.rate / producers;
        // Each producer's share of the warm-up, in proportion to its share of the records.
        let warmup = args.warmup_records * count / args.records.max(1);
        tasks.push(tokio::spawn(async move {
            // Outcomes arrive through callbacks (Kafka's `send(record, callback)`), recorded
            // the moment each acknowledgement arrives: a future per record would cost the
            // bench more CPU than the client it measures.
            let tally = Arc::new(Mutex::new(Tally::new(warmup)));
            let t0 = Instant::now();
            for n in 0..count {
                if rate > 0 {
                    let due = t0 + Duration::from_secs_f64(n as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let sent = Instant::now();
                let steady = n >= warmup;
                let tally = tally.clone();
                producer
                    .send_with_callback(ProducerRecord::new(&topic, value.clone()), move |r| {
                        if let Ok(mut t) = tally.lock() {
                            t.settle(sent, steady, r);
                        }
                    })
                    .await?;
                if n % 1024 == 1023 {
                    bar.inc(1024);
                }
            }
            producer.flush().await;
            let metrics = producer.metrics();
            producer.close().await;
            bar.inc(count % 1024);
            let tally = tally
                .lock()
                .map_err(|_| anyhow::anyhow!("bench tally lock poisoned"))?;
            anyhow::ensure!(
                tally.answered == count,
                "{} of {count} records were never answered",
                count - tally.answered
            );
            histogram
                .lock()
                .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?
                .add(&tally.latency)?;
            steady_histogram
                .lock()
                .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?
                .add(&tally.steady)?;
            anyhow::Ok((
                tally.failed,
                tally.first_error.clone(),
                metrics,
                tally.steady_from,
            ))
        }));
    }
    let mut failed = 0;
    let mut metrics = Vec::new();
    let mut steady_from: Option<Instant> = None;
    for t in tasks {
        let (f, e, m, from) = t.await??;
        failed += f;
        metrics.push(m);
        // The earliest end of a warm-up: every steady record was answered after it.
        steady_from = steady_from.into_iter().chain(from).min();
        if let Some(e) = e {
            eprintln!("first error: {e}");
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let h = histogram
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
    let ok = args.records - failed;
    let bytes = ok * load.record_size as u64;
    let steady_state = match steady_from {
        Some(from) if args.warmup_records > 0 => {
            let sh = steady_histogram
                .lock()
                .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
            let records = sh.len();
            let seconds = from.elapsed().as_secs_f64();
            Some(SteadyState {
                warmup_records: args.warmup_records,
                records,
                seconds,
                records_per_second: records as f64 / seconds,
                mb_per_second: (records * load.record_size as u64) as f64 / seconds / 1e6,
                latency_ms: Latency::of(&sh),
            })
        }
        _ => None,
    };
    Ok(Report {
        workload,
        records: ok,
        bytes,
        seconds,
        records_per_second: ok as f64 / seconds,
        mb_per_second: bytes as f64 / seconds / 1e6,
        failed,
        latency_ms: Some(Latency::of(&h)),
        producer: Some(ProducerSummary::of(&metrics)),
        steady_state,
    })
}

/// One producer's outcomes, filled in by its delivery callbacks.
struct Tally {
    latency: Histogram<u64>,
    /// Successful records after the warm-up.
    steady: Histogram<u64>,
    /// Records answered before the steady state begins.
    warmup: u64,
    /// When the warm-up's last answer arrived (the producer's send buffer lets it send far
    /// ahead of the answers, so the time of the first steady send would count the warm-up).
    steady_from: Option<Instant>,
    answered: u64,
    failed: u64,
    first_error: Option<String>,
}

/// Record latencies in microseconds, 1 µs to 60 s, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid")
}

impl Tally {
    fn new(warmup: u64) -> Self {
        Tally {
            warmup,
            latency: latency_histogram(),
            steady: latency_histogram(),
            steady_from: (warmup == 0).then(Instant::now),
            answered: 0,
            failed: 0,
            first_error: None,
        }
    }

    fn settle(
        &mut self,
        sent: Instant,
        steady: bool,
        r: sluice_client::Result<sluice_client::RecordMetadata>,
    ) {
        self.answered += 1;
        if self.answered == self.warmup {
            self.steady_from = Some(Instant::now());
        }
        match r {
            Ok(_) => {
                // Saturates at the histogram's bound (60 s) rather than dropping the sample.
                let micros = sent.elapsed().as_micros().max(1) as u64;
                self.latency.saturating_record(micros);
                if steady {
                    self.steady.saturating_record(micros);
                }
            }
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

async fn consume(ctx: &Context, args: ConsumeBench) -> anyhow::Result<Report> {
    if args.group.is_some() {
        return group_consume::run(ctx, args).await;
    }
    let config = ConsumerConfig {
        max_partition_fetch_bytes: args.max_partition_fetch_bytes,
        fetch_max_bytes: args.fetch_max_bytes,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(ctx.client(), config)?;
    let (partitions, offsets, ends) = read_span(&consumer, &args.topic).await?;
    let tps: Vec<TopicPartition> = partitions
        .iter()
        .map(|&p| TopicPartition::new(&args.topic, p))
        .collect();
    let ends: Vec<(TopicPartition, i64)> = ends
        .into_iter()
        .map(|(p, end)| (TopicPartition::new(&args.topic, p), end))
        .collect();
    consumer.assign(tps, Offset::Earliest).await?;
    let bar = progress(
        ctx,
        Some(args.records.unwrap_or(offsets).min(offsets)),
        "consuming",
        false,
    );
    let started = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    // The read is done when every partition reached its end offset, or at --records.
    let done = |c: &Consumer, records: u64| {
        args.records.is_some_and(|n| records >= n)
            || ends
                .iter()
                .all(|(tp, end)| c.position(tp).unwrap_or(0) >= *end)
    };
    while !done(&consumer, records) {
        let batch = consumer.poll(Duration::from_secs(10)).await?;
        if batch.is_empty() && !done(&consumer, records) {
            anyhow::bail!("no records for 10s after {records}");
        }
        // A poll can return more than --records asks for: only those asked for count.
        let take = args
            .records
            .map_or(batch.len(), |n| batch.len().min((n - records) as usize));
        records += take as u64;
        bytes += batch
            .iter()
            .take(take)
            .map(|r| r.value.len() as u64 + r.key.as_ref().map_or(0, |k| k.len() as u64))
            .sum::<u64>();
        bar.set_position(records);
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok(Report::read(
        format!(
            "consume: topic '{}' from the start ({} partitions), {}",
            args.topic,
            partitions.len(),
            match args.records {
                Some(n) => format!("the first {n} records"),
                None => "up to its end at the start of the run".to_string(),
            }
        ),
        records,
        bytes,
        seconds,
    ))
}

/// What a catch-up read of `topic` covers: its partitions, how many offsets they hold
/// (an upper bound of the records: control batches take offsets too), and each one's end
/// offset now. An error when there is nothing to read.
async fn read_span(
    consumer: &Consumer,
    topic: &str,
) -> anyhow::Result<(Vec<i32>, u64, Vec<(i32, i64)>)> {
    let partitions = consumer
        .partitions_for(topic)
        .await
        .with_context(|| format!("looking up topic '{topic}'"))?;
    let mut ends = Vec::new();
    let mut offsets = 0u64;
    for &p in &partitions {
        let tp = TopicPartition::new(topic, p);
        let start = consumer
            .list_offset(&tp, sluice_proto::list_offsets::EARLIEST)
            .await?;
        let end = consumer
            .list_offset(&tp, sluice_proto::list_offsets::LATEST)
            .await?;
        offsets += (end - start) as u64;
        ends.push((p, end));
    }
    if offsets == 0 {
        anyhow::bail!(
            "topic '{topic}' has no records to read; run `sluice bench produce --topic {topic}` first"
        );
    }
    Ok((partitions, offsets, ends))
}

impl Report {
    /// The report of a read (no latencies, nothing failed).
    fn read(workload: String, records: u64, bytes: u64, seconds: f64) -> Self {
        Report {
            workload,
            records,
            bytes,
            seconds,
            records_per_second: records as f64 / seconds,
            mb_per_second: bytes as f64 / seconds / 1e6,
            failed: 0,
            latency_ms: None,
            producer: None,
            steady_state: None,
        }
    }
}

/// `bench commit`: committers loop on `Admin::commit_offsets` (each commit one acks=all
/// write to the group's `__consumer_offsets` partition) for `--duration`.
async fn commit(ctx: &Context, args: CommitBench) -> anyhow::Result<Report> {
    let admin = Admin::new(ctx.client())?;
    match admin
        .create_topic(NewTopic::new(&args.topic, args.partitions, -1), false)
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
        Err(e) => return Err(e).with_context(|| format!("creating bench topic '{}'", args.topic)),
    }
    // Coordinators found and offsets topic made before the clock starts.
    for g in 0..args.groups {
        admin
            .commit_offsets(
                &format!("bench-group-{g}"),
                &[(TopicPartition::new(&args.topic, 0), 0)],
            )
            .await
            .context("first commit")?;
    }
    let duration: Duration = args.duration.into();
    let bar = progress(ctx, Some(duration.as_secs()), "committing", false);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for g in 0..args.groups {
        for c in 0..args.committers {
            let admin = Admin::new(ctx.client())?;
            let (group, topic) = (format!("bench-group-{g}"), args.topic.clone());
            let partitions = args.partitions;
            tasks.spawn(async move {
                let mut h = latency_histogram();
                let (mut done, mut failed) = (0u64, 0u64);
                let mut i = 0i64;
                while started.elapsed() < duration {
                    i += 1;
                    let tp = TopicPartition::new(&topic, (c as i32 + g as i32) % partitions);
                    let t = Instant::now();
                    match admin.commit_offsets(&group, &[(tp, i)]).await {
                        Ok(()) => {
                            let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                            done += 1;
                        }
                        Err(_) => failed += 1,
                    }
                }
                (h, done, failed)
            });
        }
    }
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bar.set_position(started.elapsed().as_secs());
            }
        })
    };
    let mut latency = latency_histogram();
    let (mut commits, mut failed) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        let (h, d, f) = r.context("a committer failed")?;
        latency.add(&h).ok();
        commits += d;
        failed += f;
    }
    ticker.abort();
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        workload: format!(
            "commit: {} group(s) x {} committer(s), one partition's offset per commit, {}",
            args.groups,
            args.committers,
            humantime::format_duration(duration)
        ),
        records: commits,
        bytes: 0,
        seconds,
        records_per_second: commits as f64 / seconds,
        mb_per_second: 0.0,
        failed,
        latency_ms: Some(Latency::of(&latency)),
        producer: None,
        steady_state: None,
    })
}
