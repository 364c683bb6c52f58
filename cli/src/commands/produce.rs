//! `sluice produce TOPIC`: one record per input line.
//!
//! Ctrl-C stops reading input, waits for the answers to the records already sent (a
//! second Ctrl-C, or the request timeout, ends that wait) and says how many the cluster
//! acknowledged and how many it did not.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use indicatif::ProgressBar;
use serde::Serialize;
use sluice_client::{Acks, Compression, Producer, ProducerConfig, ProducerRecord};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{Context, invalid, progress};
use crate::output::{self, Format};

#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// A header on every record, KEY=VALUE (repeatable).
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = super::parse_header)]
    headers: Vec<(String, String)>,
    /// 0, 1 or all (-1 means all, as in Kafka).
    #[arg(long, default_value = "all", allow_negative_numbers = true)]
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
    /// Records the cluster acknowledged.
    records: u64,
    bytes: u64,
    /// Records sent but not acknowledged: refused, timed out, or unanswered when the wait
    /// was cut short.
    failed: u64,
    seconds: f64,
    records_per_second: f64,
    first_error: Option<String>,
    /// Ctrl-C ended the input (or the wait for answers).
    interrupted: bool,
}

/// Outcomes, counted by the delivery callbacks as the answers arrive.
#[derive(Debug, Default)]
struct Tally {
    acked: AtomicU64,
    acked_bytes: AtomicU64,
    first_error: Mutex<Option<sluice_client::Error>>,
}

pub(crate) async fn run(ctx: &Context, args: ProduceArgs) -> anyhow::Result<()> {
    let compression = Compression::parse(&args.compression).ok_or_else(|| {
        invalid(format!(
            "invalid --compression '{}': use none, lz4 or zstd",
            args.compression
        ))
    })?;
    let config = ProducerConfig {
        acks: args.acks,
        linger: args.linger.into(),
        batch_size: args.batch_size,
        compression,
        delivery_timeout: args.delivery_timeout.into(),
        ..ProducerConfig::default()
    };
    let client = ctx.client();
    // How long a Ctrl-C waits for answers before giving up on them.
    let patience = client.request_timeout;
    let producer = Producer::connect(client, config).await?;
    let input: Box<dyn AsyncBufRead + Unpin + Send> = match &args.file {
        Some(path) => Box::new(BufReader::new(
            tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open --file {}", path.display()))?,
        )),
        None => Box::new(BufReader::new(tokio::io::stdin())),
    };
    let typed = args.file.is_none() && std::io::stdin().is_terminal();
    let bar = progress(ctx, None, &format!("producing to {}", args.topic), typed);
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let mut sent = 0u64;
    // Installed once, so that no Ctrl-C is missed between the two waits below.
    let mut ctrl_c = signal(SignalKind::interrupt()).ok();
    let (fed, mut interrupted) = tokio::select! {
        r = feed(&args, &producer, input, &tally, &bar, &mut sent) => (r, false),
        () = pressed(&mut ctrl_c) => (Ok(()), true),
    };
    if sent == 0 && !interrupted && fed.is_err() {
        // The first line failed: nothing was sent, nothing to report but the error.
        bar.finish_and_clear();
        producer.close().await;
        return fed;
    }
    if interrupted && ctx.output == Format::Table {
        bar.suspend(|| {
            eprintln!(
                "Interrupted: no more input is read; waiting for the answers to the records sent (up to {}; Ctrl-C again to stop waiting)",
                humantime::format_duration(patience)
            )
        });
    }
    let answered = tokio::select! {
        () = producer.flush() => true,
        () = pressed(&mut ctrl_c) => false,
        () = tokio::time::sleep(patience), if interrupted => false,
    };
    if answered {
        producer.close().await;
    }
    // Otherwise the producer is left as it is: closing would wait for the records again.
    interrupted |= !answered;
    bar.finish_and_clear();
    let seconds = started
        .elapsed()
        .as_secs_f64()
        .max(Duration::from_micros(1).as_secs_f64());
    let acked = tally.acked.load(Ordering::Acquire);
    let failed = sent.saturating_sub(acked);
    let first_error = tally.first_error.lock().ok().and_then(|mut e| e.take());
    let summary = Summary {
        topic: args.topic.clone(),
        records: acked,
        bytes: tally.acked_bytes.load(Ordering::Acquire),
        failed,
        seconds,
        records_per_second: acked as f64 / seconds,
        first_error: first_error.as_ref().map(ToString::to_string),
        interrupted,
    };
    output::print(ctx.output, &summary, |s| {
        eprintln!(
            "{}Produced {} records ({}) to '{}' in {:.2}s ({:.0} records/s){}",
            if s.interrupted { "Interrupted. " } else { "" },
            s.records,
            output::bytes(s.bytes),
            s.topic,
            s.seconds,
            s.records_per_second,
            if s.failed > 0 || s.interrupted {
                format!("; {} NOT acknowledged", s.failed)
            } else {
                String::new()
            }
        )
    })?;
    fed?;
    if failed > 0 {
        let what = format!(
            "{failed} of {sent} records were not acknowledged by '{}'",
            args.topic
        );
        return Err(match first_error {
            Some(e) => anyhow::Error::new(e).context(format!("{what}; first error")),
            None => anyhow::anyhow!(
                "{what}: the wait for their answers was cut short; they may or may not have been stored"
            ),
        });
    }
    Ok(())
}

/// The next Ctrl-C; never, when its handler could not be installed (Ctrl-C then ends the
/// program at once, as it does by default).
async fn pressed(ctrl_c: &mut Option<Signal>) {
    let got = match ctrl_c {
        Some(s) => s.recv().await,
        None => None,
    };
    if got.is_none() {
        std::future::pending::<()>().await;
    }
}

/// Reads the input and hands each line to the producer, counting in `sent` the records it
/// took. Outcomes are counted in `tally` by the delivery callbacks, so a record counts as
/// produced once acknowledged, whether or not reading goes on.
async fn feed(
    args: &ProduceArgs,
    producer: &Producer,
    input: Box<dyn AsyncBufRead + Unpin + Send>,
    tally: &Arc<Tally>,
    bar: &ProgressBar,
    sent: &mut u64,
) -> anyhow::Result<()> {
    let mut lines = input.lines();
    let mut line_no = 0u64;
    while let Some(line) = lines.next_line().await.context("reading input")? {
        line_no += 1;
        let mut record = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => ProducerRecord::new(&args.topic, v.to_string()).key(k.to_string()),
                None => {
                    return Err(invalid(format!(
                        "line {line_no} has no key separator '{sep}': {line:?}"
                    )));
                }
            },
            None => ProducerRecord::new(&args.topic, line.clone()),
        };
        if let Some(p) = args.partition {
            record = record.partition(p);
        }
        for (k, v) in &args.headers {
            record = record.header(k.clone(), v.clone());
        }
        let size = line.len() as u64;
        let (tally, bar) = (tally.clone(), bar.clone());
        producer
            .send_with_callback(record, move |r| match r {
                Ok(_) => {
                    tally.acked_bytes.fetch_add(size, Ordering::Release);
                    tally.acked.fetch_add(1, Ordering::Release);
                    bar.inc(1);
                }
                Err(e) => {
                    if let Ok(mut first) = tally.first_error.lock() {
                        first.get_or_insert(e);
                    }
                }
            })
            .await
            .with_context(|| format!("sending line {line_no} to '{}'", args.topic))?;
        *sent += 1;
    }
    Ok(())
}
