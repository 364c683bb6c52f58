//! `sluice consume TOPIC`: print records as they arrive.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use sluice_client::{
    AutoOffsetReset, Consumer, ConsumerConfig, ConsumerRecord, Offset, PartitionEvent,
    TopicPartition,
};

use super::{Context, parse_time};

mod process;
use crate::output::Format;

#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    topic: String,
    /// Start at the oldest record (default: only new records).
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    from_beginning: bool,
    /// Start at this offset (needs --partition: offsets are per partition). An offset
    /// outside the partition's log is an error naming the valid range, unless --reset says
    /// where to go instead.
    #[arg(long, requires = "partition", conflicts_with = "from_time")]
    offset: Option<i64>,
    /// Where to go when the position is outside the log (Kafka's auto.offset.reset):
    /// earliest, latest, or none (fail). Default: none with --offset, else latest.
    #[arg(long, value_enum, value_name = "WHERE")]
    reset: Option<Reset>,
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
    /// Stop at the end of the log: once every partition has been read up to its high
    /// watermark (kcat's -e). Partitions that cannot be read hold it; --timeout bounds that.
    #[arg(short = 'e', long)]
    until_end: bool,
    /// Line format; placeholders: {topic} {partition} {offset} {timestamp} {key} {value}
    /// {headers} {id} (the record's id, the same on every delivery); \t for a tab.
    #[arg(long, default_value = "{value}")]
    format: String,
    /// Read as a member of this consumer group: the group's coordinator gives this consumer
    /// its share of the partitions (other members get the rest), each from the group's
    /// committed offset (else from where --reset or --from-beginning says), and what is
    /// printed is committed.
    #[arg(long, conflicts_with_all = ["offset", "from_time", "partition"])]
    group: Option<String>,
    /// With --group: read without committing (peek).
    #[arg(long, requires = "group")]
    no_commit: bool,
    /// Run this shell command once per record instead of printing it (needs --group): the
    /// value on stdin; the key, id, topic, partition, offset and timestamp in SLUICE_KEY,
    /// SLUICE_ID, SLUICE_TOPIC, SLUICE_PARTITION, SLUICE_OFFSET, SLUICE_TIMESTAMP. Exit
    /// status 0 is success; only records that succeeded (or were dead-lettered) are
    /// committed, never past one that did not.
    #[arg(long, value_name = "CMD", requires = "group", conflicts_with_all = ["max_messages", "until_end", "no_commit"])]
    exec: Option<String>,
    /// With --exec: records handled at once [default: 16].
    #[arg(long, value_name = "N", requires = "exec")]
    parallel: Option<usize>,
    /// With --exec: what runs one after another: key (records with the same key, in offset
    /// order), partition, or none [default: key].
    #[arg(long, requires = "exec")]
    ordering: Option<sluice_client::Ordering>,
    /// With --exec: runs per record before it is dead-lettered, or processing stops
    /// [default: 3]; the waits between them double from 100ms up to 10s.
    #[arg(long, value_name = "N", requires = "exec")]
    max_attempts: Option<u32>,
    /// With --exec: where a record goes after failing every run (created like TOPIC if
    /// missing), with headers naming its origin, attempts and last error; processing moves
    /// on. Without it, processing stops at such a record with an error naming it.
    #[arg(long, value_name = "TOPIC", requires = "exec")]
    dead_letter_topic: Option<String>,
    /// With --exec: the longest one run may take; then it is killed and counts as failed.
    #[arg(long, value_name = "DURATION", requires = "exec")]
    exec_timeout: Option<humantime::Duration>,
    /// Send the records of TOPIC (a dead-letter topic) back to this topic, as they were
    /// before they failed (no dead-letter headers, the same key and record id), committing
    /// in the group (default: sluice-redrive-TOPIC) as each is stored. Stops with
    /// --timeout or Ctrl-C.
    #[arg(long, value_name = "TOPIC", conflicts_with_all = ["exec", "max_messages", "until_end", "no_commit", "offset", "from_time", "partition"])]
    redrive_to: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Reset {
    Earliest,
    Latest,
    None,
}

/// The placeholders `--format` knows.
const PLACEHOLDERS: [&str; 8] = [
    "id",
    "topic",
    "partition",
    "offset",
    "timestamp",
    "key",
    "value",
    "headers",
];

/// Refuses a `--format` with a placeholder it does not know (which would be printed as
/// is), naming the valid ones.
fn check_format(format: &str) -> anyhow::Result<()> {
    let mut rest = format;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            anyhow::bail!(
                "--format '{format}': '{{' without a closing '}}'; placeholders: {}",
                placeholder_list()
            );
        };
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            anyhow::bail!(
                "--format '{format}': unknown placeholder {{{name}}}; placeholders: {}",
                placeholder_list()
            );
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

fn placeholder_list() -> String {
    PLACEHOLDERS
        .iter()
        .map(|p| format!("{{{p}}}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Serialize)]
struct JsonRecord<'a> {
    id: String,
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
            id: r.id.to_string(),
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
        .replace("{id}", &r.id.to_string())
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

/// Tells the person at the terminal (or the script, as JSON) which partitions cannot be
/// read and when they can again.
fn report(ctx: &Context, topic: &str, events: Vec<PartitionEvent>) {
    for e in events {
        let (partition, state, detail) = match &e {
            PartitionEvent::Unavailable { partition, reason } => {
                (partition, "unavailable", reason.clone())
            }
            PartitionEvent::Available { partition, after } => (
                partition,
                "available",
                format!("after {}", humantime::format_duration(round_ms(*after))),
            ),
            PartitionEvent::Assigned { partitions }
            | PartitionEvent::Revoked { partitions }
            | PartitionEvent::Lost { partitions } => {
                let (state, what) = match &e {
                    PartitionEvent::Assigned { .. } => ("assigned", "Reading"),
                    PartitionEvent::Revoked { .. } => ("revoked", "The group moved away"),
                    _ => ("lost", "Out of the group (rejoining); dropped"),
                };
                let list = partitions
                    .iter()
                    .map(|tp| tp.partition.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                match ctx.output {
                    Format::Table => {
                        eprintln!("{what} partition(s) {list} of '{topic}'.")
                    }
                    _ => eprintln!(
                        "{}",
                        serde_json::json!({"event": {"topic": topic, "partitions": partitions.iter().map(|tp| tp.partition).collect::<Vec<_>>(), "state": state}})
                    ),
                }
                continue;
            }
            _ => continue,
        };
        match ctx.output {
            Format::Table => match e {
                PartitionEvent::Unavailable { .. } => eprintln!(
                    "warning: partition {partition} of '{topic}' cannot be read: {detail}; reading the others and retrying"
                ),
                _ => {
                    eprintln!("partition {partition} of '{topic}' is readable again ({detail})")
                }
            },
            _ => eprintln!(
                "{}",
                serde_json::json!({"event": {"partition": partition.to_string(), "state": state, "detail": detail}})
            ),
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// How often a consumer of a whole topic looks for partitions added to it.
const PARTITION_CHECK: Duration = Duration::from_secs(5);

pub(crate) async fn run(ctx: &Context, args: ConsumeArgs) -> anyhow::Result<()> {
    check_format(&args.format)?;
    let reset = match (args.reset, args.offset) {
        (Some(Reset::Earliest), _) => AutoOffsetReset::Earliest,
        (Some(Reset::Latest), _) => AutoOffsetReset::Latest,
        (Some(Reset::None), _) | (None, Some(_)) => AutoOffsetReset::None,
        (None, None) => AutoOffsetReset::Latest,
    };
    if args.exec.is_some() || args.redrive_to.is_some() {
        return process::run(ctx, &args).await;
    }
    if let Some(group) = &args.group {
        return consume_in_group(ctx, &args, group).await;
    }
    let config = ConsumerConfig {
        auto_offset_reset: reset,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(ctx.client(), config)?;
    let all = consumer
        .partitions_for(&args.topic)
        .await
        .with_context(|| format!("looking up topic '{}'", args.topic))?;
    let partitions = match args.partition {
        Some(p) if all.contains(&p) => vec![p],
        Some(p) => anyhow::bail!(
            "topic '{}' has no partition {p} (its partitions are 0-{})",
            args.topic,
            all.len().saturating_sub(1)
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
    report(ctx, &args.topic, consumer.take_events());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut count = 0u64;
    let mut last_record = Instant::now();
    let idle_limit: Option<Duration> = args.timeout.map(Into::into);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Without --partition, partitions added to the topic while this runs are read too,
    // from their start (they are new): checked every PARTITION_CHECK.
    let mut known = partitions.len();
    let mut checked = Instant::now();
    'outer: loop {
        if args.partition.is_none() && checked.elapsed() >= PARTITION_CHECK {
            checked = Instant::now();
            if let Ok(now) = consumer.partitions_now(&args.topic).await
                && now.len() > known
            {
                let added: Vec<TopicPartition> = now[known..]
                    .iter()
                    .map(|&p| TopicPartition::new(&args.topic, p))
                    .collect();
                match ctx.output {
                    Format::Table => eprintln!(
                        "Topic '{}' grew to {} partitions; reading the new ones from their start.",
                        args.topic,
                        now.len()
                    ),
                    _ => eprintln!(
                        "{}",
                        serde_json::json!({"event": {"topic": args.topic, "state": "partitions_added", "partitions": now.len()}})
                    ),
                }
                consumer
                    .add_partitions(added, Offset::Earliest)
                    .await
                    .with_context(|| {
                        format!("positioning on the new partitions of '{}'", args.topic)
                    })?;
                known = now.len();
            }
        }
        if args.max_messages.is_some_and(|m| count >= m) {
            break;
        }
        let wait = idle_limit.map_or(Duration::from_secs(1), |l| {
            l.saturating_sub(last_record.elapsed())
                .min(Duration::from_secs(1))
        });
        if args.until_end && consumer.at_end() {
            break;
        }
        let polled = tokio::select! {
            r = consumer.poll(wait) => r,
            _ = &mut ctrl_c => break,
        };
        report(ctx, &args.topic, consumer.take_events());
        let records = polled.with_context(|| format!("consuming '{}'", args.topic))?;
        if records.is_empty() {
            out.flush()?;
            if idle_limit.is_some_and(|l| last_record.elapsed() >= l) {
                break;
            }
            continue;
        }
        last_record = Instant::now();
        for r in &records {
            write_record(ctx, &args, &mut out, r)?;
            count += 1;
            if args.max_messages.is_some_and(|m| count >= m) {
                break 'outer;
            }
        }
        out.flush()?;
    }
    out.flush()?;
    let unread = consumer.unavailable();
    if ctx.output == Format::Table {
        eprintln!("Processed {count} records.");
    }
    if !unread.is_empty() {
        let list = unread
            .iter()
            .map(|(tp, why)| format!("{tp} ({why})"))
            .collect::<Vec<_>>()
            .join("; ");
        anyhow::bail!(
            "stopped with {} partition(s) of '{}' not read: {list}",
            unread.len(),
            args.topic
        );
    }
    Ok(())
}

/// Writes one record as `--format` or `-o` says.
fn write_record(
    ctx: &Context,
    args: &ConsumeArgs,
    out: &mut impl Write,
    r: &ConsumerRecord,
) -> anyhow::Result<()> {
    match ctx.output {
        Format::Table => writeln!(out, "{}", render(&args.format, r))?,
        Format::Json => {
            serde_json::to_writer(&mut *out, &JsonRecord::from(r))?;
            writeln!(out)?;
        }
        Format::Yaml => write!(out, "---\n{}", serde_yaml::to_string(&JsonRecord::from(r))?)?,
    }
    Ok(())
}

/// `consume --group`: a member of the group, committing what it printed (after printing
/// it: a crash between the two prints a record again, never skips one).
async fn consume_in_group(ctx: &Context, args: &ConsumeArgs, group: &str) -> anyhow::Result<()> {
    let reset = match (args.reset, args.from_beginning) {
        (Some(Reset::Earliest), _) | (None, true) => AutoOffsetReset::Earliest,
        (Some(Reset::None), _) => AutoOffsetReset::None,
        _ => AutoOffsetReset::Latest,
    };
    let config = ConsumerConfig {
        auto_offset_reset: reset,
        group_id: Some(group.to_string()),
        enable_auto_commit: false,
        client_id: format!("sluice-cli-{}", std::process::id()),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(ctx.client(), config)?;
    consumer
        .subscribe(vec![args.topic.clone()])
        .await
        .with_context(|| format!("joining group '{group}' on '{}'", args.topic))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut count = 0u64;
    let mut last_record = Instant::now();
    let idle_limit: Option<Duration> = args.timeout.map(Into::into);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut assigned_once = false;
    let mut printed: std::collections::BTreeMap<TopicPartition, i64> = Default::default();
    let outcome: anyhow::Result<()> = async {
        'outer: loop {
            if args.max_messages.is_some_and(|m| count >= m) {
                break;
            }
            if args.until_end && assigned_once && consumer.at_end() {
                break;
            }
            let wait = idle_limit.map_or(Duration::from_secs(1), |l| {
                l.saturating_sub(last_record.elapsed())
                    .min(Duration::from_secs(1))
            });
            let polled = tokio::select! {
                r = consumer.poll(wait) => r,
                _ = &mut ctrl_c => break,
            };
            let events = consumer.take_events();
            assigned_once |= events
                .iter()
                .any(|e| matches!(e, PartitionEvent::Assigned { .. }));
            report(ctx, &args.topic, events);
            let records = polled.with_context(|| format!("consuming '{}'", args.topic))?;
            if records.is_empty() {
                out.flush()?;
                if idle_limit.is_some_and(|l| last_record.elapsed() >= l) {
                    break;
                }
                continue;
            }
            last_record = Instant::now();
            for r in &records {
                write_record(ctx, args, &mut out, r)?;
                printed.insert(TopicPartition::new(&*r.topic, r.partition), r.offset + 1);
                count += 1;
                if args.max_messages.is_some_and(|m| count >= m) {
                    out.flush()?;
                    break 'outer;
                }
            }
            out.flush()?;
            if !args.no_commit && !printed.is_empty() {
                let offsets: Vec<_> = std::mem::take(&mut printed).into_iter().collect();
                commit_printed(&consumer, group, &offsets).await?;
            }
        }
        Ok(())
    }
    .await;
    out.flush()?;
    if !args.no_commit && !printed.is_empty() {
        let offsets: Vec<_> = printed.into_iter().collect();
        commit_printed(&consumer, group, &offsets).await?;
    }
    // Leave at once: the partitions go to the other members without waiting for the
    // session timeout.
    if let Err(e) = consumer.close().await {
        eprintln!("warning: leaving group '{group}': {e}");
    }
    if ctx.output == Format::Table {
        eprintln!("Processed {count} records.");
    }
    outcome
}

/// Commits what was printed. A commit the group refuses because this consumer is no longer
/// a member (its session timed out while it was stalled; it rejoins) is a warning: the
/// partitions' new owners read those records again.
async fn commit_printed(
    consumer: &Consumer,
    group: &str,
    offsets: &[(TopicPartition, i64)],
) -> anyhow::Result<()> {
    match consumer.commit(offsets).await {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.code(),
                Some(
                    sluice_client::ErrorCode::UnknownMemberId
                        | sluice_client::ErrorCode::FencedMemberEpoch
                )
            ) || matches!(e, sluice_client::Error::InvalidArgument(_)) =>
        {
            eprintln!(
                "warning: group '{group}' did not take this consumer's commit ({e}); the records since its last commit will be read again"
            );
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("committing group '{group}'"))),
    }
}
