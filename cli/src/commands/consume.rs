//! `sluice consume TOPIC`: print records as they arrive.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use sluice_client::{Consumer, ConsumerConfig, ConsumerRecord, Offset, TopicPartition};

use super::{Context, parse_time};
use crate::output::Format;

#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    topic: String,
    /// Start at the oldest record (default: only new records).
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    from_beginning: bool,
    /// Start at this offset (needs --partition: offsets are per partition).
    #[arg(long, requires = "partition", conflicts_with = "from_time")]
    offset: Option<i64>,
    /// Start at the first record at or after this time: RFC 3339, epoch ms, or a duration ago (15m).
    #[arg(long, value_name = "TIME")]
    from_time: Option<String>,
    /// Read only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// Stop after this many records.
    #[arg(long)]
    max_messages: Option<u64>,
    /// Stop when no record arrived for this long (e.g. 5s).
    #[arg(long)]
    timeout: Option<humantime::Duration>,
    /// Line format; placeholders: {topic} {partition} {offset} {timestamp} {key} {value} {headers}.
    #[arg(long, default_value = "{value}")]
    format: String,
}

#[derive(Debug, Serialize)]
struct JsonRecord<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: Option<String>,
    value: String,
    headers: Vec<(String, Option<String>)>,
}

impl<'a> From<&'a ConsumerRecord> for JsonRecord<'a> {
    fn from(r: &'a ConsumerRecord) -> Self {
        JsonRecord {
            topic: &r.topic,
            partition: r.partition,
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key.as_deref().map(text),
            value: text(&r.value),
            headers: r
                .headers
                .iter()
                .map(|h| (h.key.clone(), h.value.as_deref().map(text)))
                .collect(),
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn render(format: &str, r: &ConsumerRecord) -> String {
    let headers = r
        .headers
        .iter()
        .map(|h| {
            format!(
                "{}={}",
                h.key,
                h.value.as_deref().map(text).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    format
        .replace("{topic}", &r.topic)
        .replace("{partition}", &r.partition.to_string())
        .replace("{offset}", &r.offset.to_string())
        .replace("{timestamp}", &r.timestamp.to_string())
        .replace(
            "{key}",
            &r.key.as_deref().map(text).unwrap_or_else(|| "null".into()),
        )
        .replace("{headers}", &headers)
        .replace("{value}", &text(&r.value))
        .replace("\\t", "\t")
}

pub(crate) async fn run(ctx: &Context, args: ConsumeArgs) -> anyhow::Result<()> {
    let mut consumer = Consumer::new(ctx.client(), ConsumerConfig::default())?;
    let all = consumer
        .partitions_for(&args.topic)
        .await
        .with_context(|| format!("looking up topic '{}'", args.topic))?;
    let partitions = match args.partition {
        Some(p) if all.contains(&p) => vec![p],
        Some(p) => anyhow::bail!(
            "topic '{}' has no partition {p} (it has 0..{})",
            args.topic,
            all.len()
        ),
        None => all,
    };
    let start = if args.from_beginning {
        Offset::Earliest
    } else if let Some(o) = args.offset {
        Offset::At(o)
    } else if let Some(t) = &args.from_time {
        Offset::Timestamp(parse_time(t)?)
    } else {
        Offset::Latest
    };
    consumer
        .assign(
            partitions
                .iter()
                .map(|&p| TopicPartition::new(&args.topic, p))
                .collect(),
            start,
        )
        .await
        .with_context(|| format!("positioning on '{}'", args.topic))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut count = 0u64;
    let mut last_record = Instant::now();
    let idle_limit: Option<Duration> = args.timeout.map(Into::into);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    'outer: loop {
        if args.max_messages.is_some_and(|m| count >= m) {
            break;
        }
        let wait = idle_limit.map_or(Duration::from_secs(1), |l| {
            l.saturating_sub(last_record.elapsed())
                .min(Duration::from_secs(1))
        });
        let records = tokio::select! {
            r = consumer.poll(wait) => r.with_context(|| format!("consuming '{}'", args.topic))?,
            _ = &mut ctrl_c => break,
        };
        if records.is_empty() {
            out.flush()?;
            if idle_limit.is_some_and(|l| last_record.elapsed() >= l) {
                break;
            }
            continue;
        }
        last_record = Instant::now();
        for r in &records {
            match ctx.output {
                Format::Table => writeln!(out, "{}", render(&args.format, r))?,
                Format::Json => {
                    serde_json::to_writer(&mut out, &JsonRecord::from(r))?;
                    writeln!(out)?;
                }
                Format::Yaml => {
                    write!(out, "---\n{}", serde_yaml::to_string(&JsonRecord::from(r))?)?
                }
            }
            count += 1;
            if args.max_messages.is_some_and(|m| count >= m) {
                break 'outer;
            }
        }
        out.flush()?;
    }
    out.flush()?;
    eprintln!("Processed {count} records.");
    Ok(())
}
