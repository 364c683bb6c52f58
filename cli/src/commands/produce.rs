//! `sluice produce TOPIC`: one record per input line.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use sluice_client::{Acks, Compression, Producer, ProducerConfig, ProducerRecord};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use super::{Context, progress};
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// 0, 1 or all.
    #[arg(long, default_value = "all")]
    acks: Acks,
    /// Send every record to this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// linger.ms, as a duration.
    #[arg(long, default_value = "5ms")]
    linger: humantime::Duration,
    /// batch.size in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    batch_size: usize,
    /// none, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// delivery.timeout.ms, as a duration.
    #[arg(long, default_value = "2m")]
    delivery_timeout: humantime::Duration,
}

#[derive(Debug, Serialize)]
struct Summary {
    topic: String,
    records: u64,
    bytes: u64,
    failed: u64,
    seconds: f64,
    records_per_second: f64,
    first_error: Option<String>,
}

/// Most deliveries awaited at once; beyond it reading input waits.
const MAX_OUTSTANDING: usize = 100_000;

pub(crate) async fn run(ctx: &Context, args: ProduceArgs) -> anyhow::Result<()> {
    let compression = Compression::parse(&args.compression).with_context(|| {
        format!(
            "invalid --compression '{}': use none, lz4 or zstd",
            args.compression
        )
    })?;
    let config = ProducerConfig {
        acks: args.acks,
        linger: args.linger.into(),
        batch_size: args.batch_size,
        compression,
        delivery_timeout: args.delivery_timeout.into(),
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(ctx.client(), config).await?;
    let input: Box<dyn AsyncBufRead + Unpin + Send> = match &args.file {
        Some(path) => Box::new(BufReader::new(
            tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open --file {}", path.display()))?,
        )),
        None => Box::new(BufReader::new(tokio::io::stdin())),
    };
    let bar = progress(ctx, None, &format!("producing to {}", args.topic));
    let started = Instant::now();
    let mut lines = input.lines();
    let mut pending = FuturesUnordered::new();
    let (mut records, mut bytes, mut failed, mut first_error) = (0u64, 0u64, 0u64, None::<String>);
    let mut line_no = 0u64;
    let mut settle = |r: sluice_client::Result<sluice_client::RecordMetadata>, failed: &mut u64| {
        if let Err(e) = r {
            *failed += 1;
            first_error.get_or_insert_with(|| e.to_string());
        }
    };
    while let Some(line) = lines.next_line().await.context("reading input")? {
        line_no += 1;
        let mut record = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => ProducerRecord::new(&args.topic, v.to_string()).key(k.to_string()),
                None => anyhow::bail!("line {line_no} has no key separator '{sep}': {line:?}"),
            },
            None => ProducerRecord::new(&args.topic, line.clone()),
        };
        if let Some(p) = args.partition {
            record = record.partition(p);
        }
        bytes += line.len() as u64;
        let delivery = producer
            .send(record)
            .await
            .with_context(|| format!("sending line {line_no} to '{}'", args.topic))?;
        pending.push(delivery);
        records += 1;
        while pending.len() >= MAX_OUTSTANDING {
            if let Some(r) = pending.next().await {
                settle(r, &mut failed);
                bar.inc(1);
            }
        }
        while let Some(Some(r)) = futures::FutureExt::now_or_never(pending.next()) {
            settle(r, &mut failed);
            bar.inc(1);
        }
    }
    producer.flush().await;
    while let Some(r) = pending.next().await {
        settle(r, &mut failed);
        bar.inc(1);
    }
    producer.close().await;
    bar.finish_and_clear();
    let seconds = started
        .elapsed()
        .as_secs_f64()
        .max(Duration::from_micros(1).as_secs_f64());
    let summary = Summary {
        topic: args.topic.clone(),
        records: records - failed,
        bytes,
        failed,
        seconds,
        records_per_second: (records - failed) as f64 / seconds,
        first_error: first_error.clone(),
    };
    output::print(ctx.output, &summary, |s| {
        eprintln!(
            "Produced {} records ({}) to '{}' in {:.2}s ({:.0} records/s){}",
            s.records,
            output::bytes(s.bytes),
            s.topic,
            s.seconds,
            s.records_per_second,
            if s.failed > 0 {
                format!("; {} FAILED", s.failed)
            } else {
                String::new()
            }
        )
    })?;
    if let Some(e) = first_error {
        anyhow::bail!(
            "{failed} of {records} records were not delivered to '{}'; first error: {e}",
            args.topic
        );
    }
    Ok(())
}
