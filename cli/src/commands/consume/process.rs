//! `sluice consume TOPIC --group G --exec CMD` (a command per record, in parallel, in key
//! order, committing only what succeeded, dead-lettering what never does) and `sluice
//! consume DLQ --redrive-to TOPIC` (dead letters sent back), both on the client's
//! [`Processor`].

use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use serde::Serialize;
use sluice_client::consumer::processor::dead_letter_headers;
use sluice_client::{
    Admin, AutoOffsetReset, Consumer, ConsumerConfig, ConsumerRecord, Processor, ProcessorConfig,
    Producer, ProducerConfig, ProducerRecord, RECORD_ID_HEADER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{ConsumeArgs, Reset};
use crate::commands::Context;
use crate::output::Format;

/// The part of a failed command's stderr kept for its error (and dead-letter header).
const STDERR_TAIL: usize = 2048;
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Serialize)]
struct Summary {
    topic: String,
    group: String,
    processed: u64,
    retries: u64,
    dead_lettered: u64,
    committed: Vec<Committed>,
}

#[derive(Debug, Serialize)]
struct Committed {
    topic: String,
    partition: i32,
    offset: i64,
}

pub(super) async fn run(ctx: &Context, args: &ConsumeArgs) -> anyhow::Result<()> {
    let group = match (&args.group, &args.redrive_to) {
        (Some(g), _) => g.clone(),
        (None, Some(_)) => format!("sluice-redrive-{}", args.topic),
        (None, None) => anyhow::bail!("--exec needs --group"),
    };
    let reset = match (args.reset, args.from_beginning || args.redrive_to.is_some()) {
        (Some(Reset::Earliest), _) | (None, true) => AutoOffsetReset::Earliest,
        (Some(Reset::None), _) => AutoOffsetReset::None,
        _ => AutoOffsetReset::Latest,
    };
    let consumer_config = ConsumerConfig {
        auto_offset_reset: reset,
        group_id: Some(group.clone()),
        enable_auto_commit: false,
        client_id: format!("sluice-cli-{}", std::process::id()),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(ctx.client(), consumer_config)?;
    consumer
        .subscribe(vec![args.topic.clone()])
        .await
        .with_context(|| format!("joining group '{group}' on '{}'", args.topic))?;
    let defaults = ProcessorConfig::default();
    let config = ProcessorConfig {
        workers: args.parallel.unwrap_or(defaults.workers),
        ordering: args.ordering.unwrap_or(defaults.ordering),
        max_attempts: args.max_attempts.unwrap_or(defaults.max_attempts),
        ..defaults
    };
    let mut processor = Processor::new(consumer, config)?;
    if let Some(dlq) = &args.dead_letter_topic {
        let admin = Admin::new(ctx.client())?;
        let created = admin
            .ensure_dead_letter_topic(dlq, &args.topic)
            .await
            .with_context(|| format!("creating the dead-letter topic '{dlq}'"))?;
        if created && ctx.output == Format::Table {
            eprintln!("Created dead-letter topic '{dlq}' (like '{}').", args.topic);
        }
        let producer = Producer::connect(ctx.client(), ProducerConfig::default()).await?;
        processor = processor.dead_letters(producer, dlq.clone());
    }
    // Each record handled marks the time, for --timeout (stop when idle this long).
    let last = Arc::new(Mutex::new(Instant::now()));
    let idle: Option<Duration> = args.timeout.map(Into::into);
    let stop = {
        let last = last.clone();
        async move {
            let ctrl_c = tokio::signal::ctrl_c();
            tokio::pin!(ctrl_c);
            loop {
                tokio::select! {
                    _ = &mut ctrl_c => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                if idle.is_some_and(|l| {
                    last.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .elapsed()
                        >= l
                }) {
                    return;
                }
            }
        }
    };
    let what = format!("processing '{}' in group '{group}'", args.topic);
    let report = match (&args.exec, &args.redrive_to) {
        (Some(cmd), _) => {
            let cmd: Arc<str> = Arc::from(cmd.as_str());
            let timeout: Duration = args.exec_timeout.map_or(DEFAULT_EXEC_TIMEOUT, Into::into);
            processor
                .run(
                    move |r: ConsumerRecord| {
                        *last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
                        exec(cmd.clone(), timeout, r)
                    },
                    stop,
                )
                .await
        }
        (None, Some(to)) => {
            let producer = Producer::connect(ctx.client(), ProducerConfig::default()).await?;
            let to: Arc<str> = Arc::from(to.as_str());
            processor
                .run(
                    move |r: ConsumerRecord| {
                        *last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
                        redrive(producer.clone(), to.clone(), r)
                    },
                    stop,
                )
                .await
        }
        (None, None) => anyhow::bail!("nothing to do: --exec or --redrive-to"),
    }
    .context(what)?;
    let summary = Summary {
        topic: args.topic.clone(),
        group,
        processed: report.processed,
        retries: report.retries,
        dead_lettered: report.dead_lettered,
        committed: report
            .committed
            .iter()
            .map(|(tp, o)| Committed {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: *o,
            })
            .collect(),
    };
    match ctx.output {
        Format::Table => {
            let verb = if args.redrive_to.is_some() {
                "Redrove"
            } else {
                "Processed"
            };
            eprintln!(
                "{verb} {} records ({} retries, {} dead-lettered); committed {} partitions of '{}' for group '{}'.",
                summary.processed,
                summary.retries,
                summary.dead_lettered,
                summary.committed.len(),
                summary.topic,
                summary.group
            );
        }
        Format::Json => println!("{}", serde_json::to_string(&summary)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(&summary)?),
    }
    Ok(())
}

/// Runs `cmd` for one record: its value on stdin, the rest in the environment.
async fn exec(cmd: Arc<str>, timeout: Duration, r: ConsumerRecord) -> Result<(), String> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(&*cmd)
        .env("SLUICE_TOPIC", &*r.topic)
        .env("SLUICE_PARTITION", r.partition.to_string())
        .env("SLUICE_OFFSET", r.offset.to_string())
        .env("SLUICE_TIMESTAMP", r.timestamp.to_string())
        .env("SLUICE_ID", r.id.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match &r.key {
        Some(k) => command.env("SLUICE_KEY", text(k)),
        None => command.env_remove("SLUICE_KEY"),
    };
    let mut child = command
        .spawn()
        .map_err(|e| format!("starting `{cmd}`: {e}"))?;
    let stdin = child.stdin.take();
    let value = r.value.clone();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its input closes the pipe early: not an error.
            let _ = stdin.write_all(&value).await;
        }
    };
    let stderr = child.stderr.take();
    let tail = async move {
        let mut kept: Vec<u8> = Vec::new();
        if let Some(mut e) = stderr {
            let mut buf = [0u8; 4096];
            while let Ok(n) = e.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > STDERR_TAIL {
                    kept.drain(..kept.len() - STDERR_TAIL);
                }
            }
        }
        kept
    };
    let run = async {
        let (_, kept, status) = tokio::join!(feed, tail, child.wait());
        (kept, status)
    };
    let (kept, status) = match tokio::time::timeout(timeout, run).await {
        Ok(done) => done,
        Err(_) => {
            // kill_on_drop ends it.
            return Err(format!(
                "`{cmd}` ran longer than {} and was killed",
                humantime::format_duration(timeout)
            ));
        }
    };
    let status = status.map_err(|e| format!("waiting for `{cmd}`: {e}"))?;
    let stderr = text(&kept);
    if status.success() {
        if !stderr.is_empty() {
            eprint!("{stderr}");
        }
        return Ok(());
    }
    let why = match status.code() {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    };
    let stderr = stderr.trim();
    Err(if stderr.is_empty() {
        format!("`{cmd}` failed ({why})")
    } else {
        format!("`{cmd}` failed ({why}): {stderr}")
    })
}

/// Sends a dead letter back to `to` as it was: its key, value and own headers, and its
/// original id in `sluice.record.id`, so the copy has the same record id.
async fn redrive(producer: Producer, to: Arc<str>, r: ConsumerRecord) -> Result<(), String> {
    let original_id = r
        .headers
        .iter()
        .find(|h| h.key == dead_letter_headers::ID)
        .and_then(|h| h.value.clone())
        .unwrap_or_else(|| Bytes::from(r.id.to_string()));
    let mut out = ProducerRecord::new(&*to, r.value.clone());
    out.key = r.key.clone();
    out.headers = r
        .headers
        .iter()
        .filter(|h| !h.key.starts_with(dead_letter_headers::PREFIX) && h.key != RECORD_ID_HEADER)
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    out.headers
        .push((RECORD_ID_HEADER.to_string(), Some(original_id)));
    let delivery = producer
        .send(out)
        .await
        .map_err(|e| format!("sending to '{to}': {e}"))?;
    delivery
        .await
        .map(|_| ())
        .map_err(|e| format!("sending to '{to}': {e}"))
}
