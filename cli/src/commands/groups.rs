//! `sluice groups`: consumer groups' committed offsets and lag, with Kafka's columns.

use anyhow::Context as _;
use clap::Subcommand;
use serde::Serialize;
use sluice_client::{Admin, TopicPartition};

use super::Context;
use crate::output::{self, table};

#[derive(Debug, Subcommand)]
pub(crate) enum GroupsCommand {
    /// Every consumer group, with its topics and total lag.
    List,
    /// A group's committed offsets per partition, with log end offsets and lag.
    Describe {
        /// The group.
        group: String,
    },
    /// Move a group's committed offsets (Kafka's strategies), also while it has members:
    /// they continue from the new offsets without a restart. Shows the plan; --execute
    /// applies it.
    ResetOffsets(ResetArgs),
    /// Lag per group and topic (records and time behind); --watch refreshes it in place.
    Lag {
        /// Only these groups (repeatable); default: every group.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Refresh every --interval until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// How often --watch refreshes.
        #[arg(long, default_value = "5s")]
        interval: humantime::Duration,
    },
    /// Delete a group's committed offsets. Refused while it has members.
    Delete {
        /// The group.
        group: String,
        /// Delete it even with members: they are removed (and rejoin as a new group if
        /// still running).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Serialize)]
struct GroupRow {
    group: String,
    state: String,
    members: i32,
    coordinator: i32,
    topics: Vec<String>,
    partitions: i32,
    /// Records behind across its partitions; absent when a partition's leader could not
    /// be asked.
    lag: Option<i64>,
}

#[derive(Debug, Serialize)]
struct PartitionRow {
    topic: String,
    partition: i32,
    /// -1: nothing committed yet.
    current_offset: i64,
    log_end_offset: Option<i64>,
    lag: Option<i64>,
    /// Age of the first record not consumed, in milliseconds (0: caught up).
    lag_ms: Option<i64>,
    committed_at: String,
    metadata: String,
    /// The member reading it now.
    consumer_id: String,
}

#[derive(Debug, Serialize)]
struct MemberRow {
    member_id: String,
    client_id: String,
    epoch: i32,
    /// `topic-partition` of each partition it owns.
    partitions: Vec<String>,
}

#[derive(Debug, Serialize)]
struct GroupDescription {
    group: String,
    state: String,
    epoch: i32,
    coordinator: i32,
    partitions: Vec<PartitionRow>,
    members: Vec<MemberRow>,
    /// Partitions whose lag in time nears their topic's retention.ms.
    warnings: Vec<String>,
}

/// A lag in time past this share of retention.ms is warned about.
const RETENTION_WARNING_SHARE: f64 = 0.8;

/// Warnings for partitions whose unread records are about to be deleted by retention
/// (`retention_ms` per topic; -1 or absent: kept forever).
fn retention_warnings(
    group: &str,
    partitions: &[PartitionRow],
    retention_ms: &std::collections::BTreeMap<String, i64>,
) -> Vec<String> {
    let human = |ms: i64| {
        humantime::format_duration(std::time::Duration::from_secs(
            (ms.max(0) as u64).div_ceil(1000),
        ))
        .to_string()
    };
    partitions
        .iter()
        .filter_map(|p| {
            let lag = p.lag_ms?;
            let r = *retention_ms.get(&p.topic)?;
            if r < 0 || (lag as f64) < r as f64 * RETENTION_WARNING_SHARE {
                return None;
            }
            Some(format!(
                "group '{group}' is {} behind on {}-{}, {:.0}% of its retention.ms ({}): records older than that are deleted whether or not the group has read them; add consumers (or partitions), or raise retention.ms",
                human(lag),
                p.topic,
                p.partition,
                lag as f64 * 100.0 / r.max(1) as f64,
                human(r)
            ))
        })
        .collect()
}

fn known(v: i64) -> Option<i64> {
    (v >= 0).then_some(v)
}

fn or_dash(v: Option<i64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// A commit time for people: RFC 3339 in UTC, to the millisecond.
fn timestamp(ms: i64) -> String {
    if ms < 0 {
        return String::new();
    }
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64),
    )
    .to_string()
}

pub(crate) async fn run(ctx: &Context, cmd: GroupsCommand) -> anyhow::Result<()> {
    let admin = Admin::new(ctx.client())?;
    match cmd {
        GroupsCommand::ResetOffsets(args) => reset_offsets(ctx, args).await,
        GroupsCommand::Lag {
            groups,
            watch,
            interval,
        } => lag(ctx, &admin, &groups, watch, interval.into()).await,
        GroupsCommand::Delete { group, force } => {
            let (offsets, members) = admin
                .delete_group(&group, force)
                .await
                .with_context(|| format!("deleting group '{group}'"))?;
            #[derive(Serialize)]
            struct Deleted {
                group: String,
                offsets_deleted: i32,
                members_removed: i32,
            }
            let d = Deleted {
                group,
                offsets_deleted: offsets,
                members_removed: members,
            };
            output::print(ctx.output, &d, |d| {
                outln!(
                    "Deleted group '{}': {} committed offset(s){}.",
                    d.group,
                    d.offsets_deleted,
                    if d.members_removed > 0 {
                        format!(", {} member(s) removed", d.members_removed)
                    } else {
                        String::new()
                    }
                );
            })
        }
        GroupsCommand::List => {
            let groups = admin.list_groups().await.context("listing groups")?;
            let mut rows = Vec::new();
            for g in groups {
                let lag = admin.describe_group(&g.group).await.ok().and_then(|d| {
                    d.partitions
                        .iter()
                        .map(|p| known(p.lag))
                        .sum::<Option<i64>>()
                });
                rows.push(GroupRow {
                    group: g.group,
                    state: g.state,
                    members: g.members,
                    coordinator: g.coordinator,
                    topics: g.topics,
                    partitions: g.partitions,
                    lag,
                });
            }
            output::print(ctx.output, &rows, |rows| {
                if rows.is_empty() {
                    outln!("No consumer groups.");
                    return;
                }
                outln!(
                    "{}",
                    table(
                        &[
                            "group",
                            "state",
                            "members",
                            "topics",
                            "partitions",
                            "lag",
                            "coordinator"
                        ],
                        rows.iter().map(|r| vec![
                            r.group.clone(),
                            r.state.clone(),
                            r.members.to_string(),
                            r.topics.join(","),
                            r.partitions.to_string(),
                            or_dash(r.lag),
                            r.coordinator.to_string(),
                        ])
                    )
                );
            })
        }
        GroupsCommand::Describe { group } => {
            let d = admin
                .describe_group(&group)
                .await
                .with_context(|| format!("describing group '{group}'"))?;
            let description = GroupDescription {
                group: d.group,
                state: d.state,
                epoch: d.epoch,
                coordinator: d.coordinator,
                members: d
                    .members
                    .into_iter()
                    .map(|m| MemberRow {
                        member_id: m.member_id,
                        client_id: m.client_id,
                        epoch: m.member_epoch,
                        partitions: m
                            .owned
                            .iter()
                            .flat_map(|t| {
                                t.partitions.iter().map(move |p| format!("{}-{p}", t.topic))
                            })
                            .collect(),
                    })
                    .collect(),
                partitions: d
                    .partitions
                    .into_iter()
                    .map(|p| PartitionRow {
                        topic: p.topic,
                        partition: p.partition,
                        current_offset: p.committed_offset,
                        log_end_offset: known(p.log_end_offset),
                        lag: known(p.lag),
                        lag_ms: known(p.lag_ms),
                        committed_at: timestamp(p.commit_timestamp_ms),
                        metadata: p.metadata,
                        consumer_id: p.owner,
                    })
                    .collect(),
                warnings: Vec::new(),
            };
            let mut description = description;
            let mut retention = std::collections::BTreeMap::new();
            for t in description
                .partitions
                .iter()
                .map(|p| p.topic.clone())
                .collect::<std::collections::BTreeSet<_>>()
            {
                // A topic that cannot be described now gets no warning (the lag is shown).
                if let Some(r) = admin
                    .describe_topic(&t)
                    .await
                    .ok()
                    .and_then(|d| d.config.get("retention.ms").and_then(|v| v.parse().ok()))
                {
                    retention.insert(t, r);
                }
            }
            description.warnings =
                retention_warnings(&description.group, &description.partitions, &retention);
            if ctx.output == output::Format::Table {
                for w in &description.warnings {
                    eprintln!("warning: {w}");
                }
            }
            output::print(ctx.output, &description, |d| {
                outln!(
                    "Group {}  state: {}  members: {}  coordinator: broker {}",
                    d.group,
                    d.state,
                    d.members.len(),
                    d.coordinator
                );
                outln!(
                    "{}",
                    table(
                        &[
                            "topic",
                            "partition",
                            "current-offset",
                            "log-end-offset",
                            "lag",
                            "lag-time",
                            "consumer-id",
                            "committed-at",
                        ],
                        d.partitions.iter().map(|p| vec![
                            p.topic.clone(),
                            p.partition.to_string(),
                            or_dash(known(p.current_offset)),
                            or_dash(p.log_end_offset),
                            or_dash(p.lag),
                            p.lag_ms.map_or("-".into(), |ms| {
                                humantime::format_duration(std::time::Duration::from_secs(
                                    (ms as u64).div_ceil(1000),
                                ))
                                .to_string()
                            }),
                            if p.consumer_id.is_empty() {
                                "-".into()
                            } else {
                                p.consumer_id.clone()
                            },
                            p.committed_at.clone(),
                        ])
                    )
                );
            })
        }
    }
}

/// `groups reset-offsets`: which partitions, and where to.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("strategy").required(true).multiple(false)))]
#[command(group(clap::ArgGroup::new("scope").multiple(false)))]
pub(crate) struct ResetArgs {
    /// The group.
    group: String,
    /// A topic (all its partitions) or TOPIC:0,1,3 (those partitions); repeatable.
    #[arg(long = "topic", value_name = "TOPIC[:P,...]", group = "scope")]
    topics: Vec<String>,
    /// Every topic the group has committed offsets for or reads.
    #[arg(long, group = "scope")]
    all_topics: bool,
    /// To each partition's log start offset.
    #[arg(long, group = "strategy")]
    to_earliest: bool,
    /// To each partition's end (its high watermark): skip everything not read.
    #[arg(long, group = "strategy")]
    to_latest: bool,
    /// To the committed offsets (a no-op that members re-read from).
    #[arg(long, group = "strategy")]
    to_current: bool,
    /// To this offset in every partition (clamped to the log).
    #[arg(long, value_name = "N", group = "strategy")]
    to_offset: Option<i64>,
    /// By N records from the committed offset (negative: back).
    #[arg(
        long,
        value_name = "N",
        group = "strategy",
        allow_negative_numbers = true
    )]
    shift_by: Option<i64>,
    /// To the first record at or after this time: 2026-11-21T10:00:00[.sss][Z|+hh:mm], or
    /// epoch milliseconds.
    #[arg(long, value_name = "TIME", group = "strategy")]
    to_datetime: Option<String>,
    /// To the first record at or after this long ago: PT1H, P1DT2H, or 1h, 90m.
    #[arg(long, value_name = "DURATION", group = "strategy")]
    by_duration: Option<String>,
    /// To the offsets in a CSV file of topic,partition,offset lines (as --export writes).
    #[arg(long, value_name = "FILE", group = "strategy")]
    from_file: Option<std::path::PathBuf>,
    /// Apply the plan (without it, the plan is only shown).
    #[arg(long)]
    execute: bool,
    /// Print the plan as CSV (topic,partition,offset) on stdout, for --from-file.
    #[arg(long)]
    export: bool,
}

#[derive(Debug, Serialize)]
struct PlanRow {
    topic: String,
    partition: i32,
    /// -1: nothing committed.
    current_offset: i64,
    new_offset: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    note: String,
}

#[derive(Debug, Serialize)]
struct Plan {
    group: String,
    executed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    members_notified: Option<i32>,
    partitions: Vec<PlanRow>,
}

/// `2026-11-21T10:00:00[.sss][Z|+hh:mm|-hh:mm]` or epoch ms, as epoch ms.
fn parse_datetime(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || {
        crate::output::invalid(format!(
            "invalid --to-datetime '{s}': use 2026-11-21T10:00:00[.sss][Z|+hh:mm], or epoch milliseconds"
        ))
    };
    let (local, offset_min) = match s.len().checked_sub(6).map(|i| s.split_at(i)) {
        Some((head, tail))
            if (tail.starts_with('+') || tail.starts_with('-')) && tail.as_bytes()[3] == b':' =>
        {
            let h: i64 = tail[1..3].parse().map_err(|_| bad())?;
            let m: i64 = tail[4..6].parse().map_err(|_| bad())?;
            let sign = if tail.starts_with('-') { -1 } else { 1 };
            (head, sign * (h * 60 + m))
        }
        _ => (s, 0),
    };
    let t = humantime::parse_rfc3339_weak(local).map_err(|_| bad())?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Ok(ms - offset_min * 60_000)
}

/// `PT1H`, `P1DT2H30M`, or a humantime duration (`1h`, `90m`), as a duration.
fn parse_ago(s: &str) -> anyhow::Result<std::time::Duration> {
    let text = match s.strip_prefix('P').or_else(|| s.strip_prefix('p')) {
        Some(iso) => iso.replace(['T', 't'], "").to_lowercase(),
        None => s.to_string(),
    };
    humantime::parse_duration(&text).map_err(|_| {
        crate::output::invalid(format!(
            "invalid --by-duration '{s}': use ISO 8601 (PT1H, P1DT2H) or 1h, 90m"
        ))
    })
}

/// The (topic, partition) pairs `--topic` names, checked against the cluster.
async fn named_partitions(admin: &Admin, topics: &[String]) -> anyhow::Result<Vec<TopicPartition>> {
    let mut out = Vec::new();
    for t in topics {
        let (name, list) = match t.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (t.as_str(), None),
        };
        let d = admin
            .describe_topic(name)
            .await
            .with_context(|| format!("describing topic '{name}'"))?;
        let count = d.partitions.len() as i32;
        match list {
            None => out.extend((0..count).map(|p| TopicPartition::new(name, p))),
            Some(list) => {
                for p in list.split(',') {
                    let p: i32 = p.trim().parse().map_err(|_| {
                        crate::output::invalid(format!(
                            "--topic '{t}': '{p}' is not a partition number; use TOPIC:0,1,2"
                        ))
                    })?;
                    if !(0..count).contains(&p) {
                        return Err(crate::output::invalid(format!(
                            "--topic '{t}': topic '{name}' has no partition {p} (it has 0-{})",
                            count - 1
                        )));
                    }
                    out.push(TopicPartition::new(name, p));
                }
            }
        }
    }
    Ok(out)
}

/// Reads a CSV of topic,partition,offset lines (blank lines and # comments skipped).
fn read_plan_file(path: &std::path::Path) -> anyhow::Result<Vec<(TopicPartition, i64)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed = match parts[..] {
            [t, p, o] => p
                .parse::<i32>()
                .ok()
                .zip(o.parse::<i64>().ok())
                .map(|(p, o)| (t, p, o)),
            _ => None,
        };
        let Some((t, p, o)) = parsed else {
            return Err(crate::output::invalid(format!(
                "{}:{}: '{line}' is not topic,partition,offset",
                path.display(),
                i + 1
            )));
        };
        out.push((TopicPartition::new(t, p), o));
    }
    Ok(out)
}

pub(crate) async fn reset_offsets(ctx: &Context, args: ResetArgs) -> anyhow::Result<()> {
    let admin = Admin::new(ctx.client())?;
    let group = args.group.clone();
    let committed: std::collections::BTreeMap<TopicPartition, i64> = admin
        .committed_offsets(&group)
        .await
        .with_context(|| format!("reading the offsets of group '{group}'"))?
        .into_iter()
        .map(|c| (TopicPartition::new(c.topic, c.partition), c.offset))
        .collect();
    let from_file = match &args.from_file {
        Some(path) => Some(read_plan_file(path)?),
        None => None,
    };
    let partitions: Vec<TopicPartition> = if let Some(rows) = &from_file {
        rows.iter().map(|(tp, _)| tp.clone()).collect()
    } else if args.all_topics {
        let mut tps: std::collections::BTreeSet<TopicPartition> =
            committed.keys().cloned().collect();
        if let Ok(d) = admin.describe_group(&group).await {
            tps.extend(
                d.partitions
                    .into_iter()
                    .map(|p| TopicPartition::new(p.topic, p.partition)),
            );
        }
        if tps.is_empty() {
            anyhow::bail!(
                "group '{group}' has no committed offsets and no members: name the partitions with --topic"
            );
        }
        tps.into_iter().collect()
    } else if !args.topics.is_empty() {
        named_partitions(&admin, &args.topics).await?
    } else {
        return Err(crate::output::invalid(
            "name the partitions to reset: --topic TOPIC[:P,...] (repeatable) or --all-topics",
        ));
    };
    // Each topic's log range, once.
    let mut ranges: std::collections::BTreeMap<(String, i32), (i64, i64)> = Default::default();
    let topics: std::collections::BTreeSet<&str> =
        partitions.iter().map(|tp| tp.topic.as_str()).collect();
    for t in topics {
        let d = admin
            .describe_topic(t)
            .await
            .with_context(|| format!("describing topic '{t}'"))?;
        for p in d.partitions {
            ranges.insert(
                (t.to_string(), p.partition),
                (p.log_start_offset, p.high_watermark),
            );
        }
    }
    let at_time = match (&args.to_datetime, &args.by_duration) {
        (Some(t), _) => Some(parse_datetime(t)?),
        (_, Some(d)) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            Some(now - parse_ago(d)?.as_millis() as i64)
        }
        _ => None,
    };
    let lookup = sluice_client::Consumer::new(ctx.client(), Default::default())?;
    let mut rows = Vec::new();
    for tp in &partitions {
        let Some(&(start, end)) = ranges.get(&(tp.topic.clone(), tp.partition)) else {
            anyhow::bail!("topic '{}' has no partition {}", tp.topic, tp.partition);
        };
        let current = committed.get(tp).copied();
        let mut note = String::new();
        let wanted = if args.to_earliest {
            Some(start)
        } else if args.to_latest {
            Some(end)
        } else if args.to_current {
            current
        } else if let Some(n) = args.to_offset {
            Some(n)
        } else if let Some(n) = args.shift_by {
            current.map(|c| c.saturating_add(n))
        } else if let Some(ts) = at_time {
            let o = lookup
                .list_offset(tp, ts)
                .await
                .with_context(|| format!("looking up the offset of {tp} at {ts} ms"))?;
            Some(if o < 0 { end } else { o })
        } else {
            from_file
                .as_ref()
                .and_then(|rows| rows.iter().find(|(t, _)| t == tp).map(|(_, o)| *o))
        };
        let Some(wanted) = wanted else {
            note = "nothing committed: left alone".into();
            rows.push(PlanRow {
                topic: tp.topic.clone(),
                partition: tp.partition,
                current_offset: -1,
                new_offset: -1,
                note,
            });
            continue;
        };
        let new = wanted.clamp(start, end.max(start));
        if new != wanted {
            note = format!(
                "{wanted} is outside the log [{start}, {end}]: clamped to the {}",
                if wanted < start { "log start" } else { "end" }
            );
        }
        rows.push(PlanRow {
            topic: tp.topic.clone(),
            partition: tp.partition,
            current_offset: current.unwrap_or(-1),
            new_offset: new,
            note,
        });
    }
    let apply: Vec<(TopicPartition, i64)> = rows
        .iter()
        .filter(|r| r.new_offset >= 0)
        .map(|r| (TopicPartition::new(&r.topic, r.partition), r.new_offset))
        .collect();
    let members_notified = if args.execute {
        Some(
            admin
                .reset_offsets(&group, &apply)
                .await
                .with_context(|| format!("resetting the offsets of group '{group}'"))?,
        )
    } else {
        None
    };
    if args.export {
        for (tp, o) in &apply {
            outln!("{},{},{}", tp.topic, tp.partition, o);
        }
    } else {
        let plan = Plan {
            group: group.clone(),
            executed: args.execute,
            members_notified,
            partitions: rows,
        };
        output::print(ctx.output, &plan, |p| {
            outln!(
                "{}",
                table(
                    &["topic", "partition", "current-offset", "new-offset", "note"],
                    p.partitions.iter().map(|r| vec![
                        r.topic.clone(),
                        r.partition.to_string(),
                        or_dash(known(r.current_offset)),
                        or_dash(known(r.new_offset)),
                        r.note.clone(),
                    ])
                )
            );
        })?;
    }
    if ctx.output == crate::output::Format::Table || args.export {
        match members_notified {
            Some(0) => eprintln!(
                "Reset {} partition(s) of group '{group}'; no member is reading them now: the group starts there.",
                apply.len()
            ),
            Some(n) => eprintln!(
                "Reset {} partition(s) of group '{group}'; {n} member(s) told, they continue from the new offsets.",
                apply.len()
            ),
            None => eprintln!("Dry run: nothing changed. Add --execute to apply this plan."),
        }
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct LagRow {
    group: String,
    topic: String,
    partitions: usize,
    /// Records behind, all its partitions; absent when a leader could not be asked.
    lag: Option<i64>,
    /// The oldest record not consumed, in milliseconds behind (0: caught up).
    lag_ms: Option<i64>,
    members: usize,
    state: String,
}

/// Every group's lag by topic, now.
async fn lag_rows(admin: &Admin, only: &[String]) -> anyhow::Result<Vec<LagRow>> {
    let names: Vec<String> = if only.is_empty() {
        admin
            .list_groups()
            .await
            .context("listing groups")?
            .into_iter()
            .map(|g| g.group)
            .collect()
    } else {
        only.to_vec()
    };
    let mut rows = Vec::new();
    for g in names {
        let d = match admin.describe_group(&g).await {
            Ok(d) => d,
            Err(e) if !only.is_empty() => {
                return Err(anyhow::Error::new(e).context(format!("describing group '{g}'")));
            }
            // Deleted between the list and now.
            Err(_) => continue,
        };
        let mut by_topic: std::collections::BTreeMap<
            &str,
            Vec<&sluice_client::pb::GroupPartition>,
        > = Default::default();
        for p in &d.partitions {
            by_topic.entry(p.topic.as_str()).or_default().push(p);
        }
        for (topic, parts) in by_topic {
            rows.push(LagRow {
                group: g.clone(),
                topic: topic.to_string(),
                partitions: parts.len(),
                lag: parts.iter().map(|p| known(p.lag)).sum(),
                lag_ms: parts
                    .iter()
                    .map(|p| known(p.lag_ms))
                    .try_fold(0, |m, v| v.map(|v| m.max(v))),
                members: d.members.len(),
                state: d.state.clone(),
            });
        }
    }
    Ok(rows)
}

fn lag_table(rows: &[LagRow]) -> String {
    if rows.is_empty() {
        return "No consumer groups.".into();
    }
    table(
        &[
            "group",
            "topic",
            "partitions",
            "lag",
            "lag-time",
            "members",
            "state",
        ],
        rows.iter().map(|r| {
            vec![
                r.group.clone(),
                r.topic.clone(),
                r.partitions.to_string(),
                or_dash(r.lag),
                r.lag_ms.map_or("-".into(), |ms| {
                    humantime::format_duration(std::time::Duration::from_secs(
                        (ms as u64).div_ceil(1000),
                    ))
                    .to_string()
                }),
                r.members.to_string(),
                r.state.clone(),
            ]
        }),
    )
}

/// `groups lag`: once, or with `--watch` every `interval` until Ctrl-C; on a terminal the
/// table is redrawn in place, otherwise each refresh is printed after the last (JSON lines
/// with `-o json`).
async fn lag(
    ctx: &Context,
    admin: &Admin,
    only: &[String],
    watch: bool,
    interval: std::time::Duration,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let in_place =
        watch && ctx.output == crate::output::Format::Table && std::io::stdout().is_terminal();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let rows = lag_rows(admin, only).await?;
        match ctx.output {
            crate::output::Format::Table => {
                if in_place {
                    // Home and clear, then the table: it updates where it stands.
                    out!("\x1b[H\x1b[2J");
                }
                if watch {
                    outln!(
                        "{}  (every {}; Ctrl-C stops)",
                        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
                        humantime::format_duration(interval)
                    );
                }
                outln!("{}", lag_table(&rows));
            }
            crate::output::Format::Json if watch => outln!("{}", serde_json::to_string(&rows)?),
            format => output::print(format, &rows, |_| {})?,
        }
        if !watch {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(topic: &str, partition: i32, lag_ms: Option<i64>) -> PartitionRow {
        PartitionRow {
            topic: topic.into(),
            partition,
            current_offset: 0,
            log_end_offset: Some(10),
            lag: Some(10),
            lag_ms,
            committed_at: String::new(),
            metadata: String::new(),
            consumer_id: String::new(),
        }
    }

    #[test]
    fn a_lag_near_retention_is_warned_about_naming_the_partition() {
        let retention = [("orders".to_string(), 3_600_000), ("logs".to_string(), -1)]
            .into_iter()
            .collect();
        let rows = [
            row("orders", 0, Some(3_000_000)),
            row("orders", 1, Some(60_000)),
            row("orders", 2, None),
            row("logs", 0, Some(999_999_999)),
        ];
        let w = retention_warnings("billing", &rows, &retention);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("orders-0") && w[0].contains("83%") && w[0].contains("1h"),
            "{}",
            w[0]
        );
    }
}
