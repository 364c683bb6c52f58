//! `sluice topics create|list|describe|alter|delete`.

use anyhow::Context as _;
use clap::Subcommand;
use serde::Serialize;
use sluice_client::{Admin, NewTopic, pb};

use super::{Context, parse_kv};
use crate::output::{self, table};

#[derive(Debug, Subcommand)]
pub(crate) enum TopicsCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        #[arg(long = "replication-factor", default_value_t = 1)]
        replication_factor: i32,
        /// Topic config, key=value (repeatable): retention.ms, retention.bytes, segment.bytes,
        /// segment.ms, cleanup.policy, min.insync.replicas, max.message.bytes, compression.type.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Check everything, create nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List topics.
    List,
    /// Show a topic's partitions (leader, offsets, size) and config.
    Describe { name: String },
    /// Change a topic while it serves: its config (Kafka's kafka-configs --alter), its
    /// partition count and its replication factor. Every broker applies it without a
    /// restart.
    Alter {
        name: String,
        /// Grow the topic to this many partitions (only up: keys then map to other
        /// partitions, as in Kafka).
        #[arg(long)]
        partitions: Option<i32>,
        /// Change the replication factor (2 or more, from 2 or more): replicas are added
        /// (caught up, then voting) or removed partition by partition while the topic
        /// serves; shows the progress until done.
        #[arg(long)]
        replication_factor: Option<i32>,
        /// With --replication-factor: return once the change is committed, without waiting
        /// for the replicas to move (`topics describe` shows the progress).
        #[arg(long)]
        no_wait: bool,
        /// With --replication-factor: how long to wait for the replicas to move before
        /// returning (the change goes on regardless).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        wait_timeout: std::time::Duration,
        /// Set a config override, key=value (repeatable); same keys and checks as create.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Remove an override, back to the default (repeatable).
        #[arg(long = "delete-config", value_name = "KEY")]
        delete_config: Vec<String>,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete a topic and all its data.
    Delete { name: String },
    /// Write topics as manifests (SluiceTopic YAML documents; `-o json`: a List) for
    /// `sluice apply -f`, so existing topics can be managed declaratively.
    #[command(alias = "get")]
    Export {
        /// Topics to export (default: every topic but the internal ones).
        names: Vec<String>,
    },
    /// Copy a topic into a new one with more partitions (backlog relief: run that many
    /// more consumers), keeping each key's order. DST is created like SOURCE (same
    /// factor and config) if missing. Resumable: its progress is the consumer group
    /// `sluice-repartition-DST` on SOURCE, so after Ctrl-C or a crash it goes on where it
    /// stopped. Ends when it has copied what SOURCE held at the start, or with --follow,
    /// keeps copying new records until Ctrl-C.
    Repartition {
        source: String,
        /// The new topic.
        #[arg(long = "to", value_name = "DST")]
        to: String,
        /// DST's partition count.
        #[arg(long)]
        partitions: i32,
        /// Keep copying new records of SOURCE until Ctrl-C (mirror while producers move).
        #[arg(long)]
        follow: bool,
    },
}

mod export;
mod repartition;

#[derive(Debug, Serialize)]
struct ChangeRow {
    key: String,
    old_value: String,
    new_value: String,
    /// "topic" (an override) or "default".
    old_source: &'static str,
    new_source: &'static str,
}

#[derive(Debug, Serialize)]
struct AlterView {
    topic: String,
    applied: bool,
    partitions_before: i32,
    partitions_after: i32,
    replication_factor_before: i32,
    replication_factor_after: i32,
    changes: Vec<ChangeRow>,
    reassignments: Vec<ReassignmentRow>,
    /// With a replication factor change: whether every partition has its new replicas
    /// (false with --no-wait or --dry-run).
    replicas_moved: bool,
}

#[derive(Debug, Serialize)]
struct ReassignmentRow {
    partition: i32,
    replicas_before: Vec<i32>,
    replicas_after: Vec<i32>,
}

fn source(is_override: bool) -> &'static str {
    if is_override { "topic" } else { "default" }
}

#[derive(Debug, Serialize)]
struct TopicRow {
    name: String,
    partitions: i32,
    replication_factor: i32,
}

#[derive(Debug, Serialize)]
struct PartitionRow {
    partition: i32,
    leader: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    log_start_offset: i64,
    high_watermark: i64,
    log_end_offset: i64,
    size_bytes: u64,
    segments: u32,
    /// While the replicas change: the ones being added and removed, and how many records
    /// the added ones still lack (-1: unknown).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    adding_replicas: Vec<i32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    removing_replicas: Vec<i32>,
    #[serde(skip_serializing_if = "is_zero")]
    records_behind: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

#[derive(Debug, Serialize)]
struct TopicView {
    name: String,
    replication_factor: i32,
    partitions: Vec<PartitionRow>,
    config: std::collections::BTreeMap<String, String>,
    /// The config keys the topic sets itself; the others are defaults.
    overrides: Vec<String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: std::collections::BTreeMap<String, String>,
}

fn view(d: pb::TopicDescription) -> TopicView {
    TopicView {
        name: d.name,
        replication_factor: d.replication_factor,
        config: d.config.into_iter().collect(),
        overrides: d.overrides,
        labels: d.labels.into_iter().collect(),
        annotations: d.annotations.into_iter().collect(),
        partitions: d
            .partitions
            .into_iter()
            .map(|p| PartitionRow {
                records_behind: if p.adding_replicas.is_empty() {
                    0
                } else {
                    p.records_behind
                },
                partition: p.partition,
                leader: p.leader,
                replicas: p.replicas,
                isr: p.isr,
                log_start_offset: p.log_start_offset,
                high_watermark: p.high_watermark,
                log_end_offset: p.log_end_offset,
                size_bytes: p.size_bytes,
                segments: p.segments,
                adding_replicas: p.adding_replicas,
                removing_replicas: p.removing_replicas,
            })
            .collect(),
    }
}

fn ids(v: &[i32]) -> String {
    v.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

fn print_topic(v: &TopicView) {
    outln!(
        "Topic: {}  partitions: {}  replication factor: {}",
        v.name,
        v.partitions.len(),
        v.replication_factor
    );
    let pairs = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !v.labels.is_empty() {
        outln!("Labels: {}", pairs(&v.labels));
    }
    if !v.annotations.is_empty() {
        outln!("Annotations: {}", pairs(&v.annotations));
    }
    outln!(
        "{}",
        table(
            &[
                "partition",
                "leader",
                "replicas",
                "isr",
                "log-start",
                "high-watermark",
                "log-end",
                "size",
                "segments"
            ],
            v.partitions.iter().map(|p| {
                vec![
                    p.partition.to_string(),
                    p.leader.to_string(),
                    ids(&p.replicas),
                    ids(&p.isr),
                    p.log_start_offset.to_string(),
                    p.high_watermark.to_string(),
                    p.log_end_offset.to_string(),
                    output::bytes(p.size_bytes),
                    p.segments.to_string(),
                ]
            })
        )
    );
    let changing: Vec<&PartitionRow> = v
        .partitions
        .iter()
        .filter(|p| !p.adding_replicas.is_empty() || !p.removing_replicas.is_empty())
        .collect();
    if !changing.is_empty() {
        outln!(
            "Replicas changing ({} of {} partitions; `replicas` above is what each has until then):",
            changing.len(),
            v.partitions.len()
        );
        outln!(
            "{}",
            table(
                &["partition", "adding", "removing", "records-behind"],
                changing.iter().map(|p| vec![
                    p.partition.to_string(),
                    ids(&p.adding_replicas),
                    ids(&p.removing_replicas),
                    if p.adding_replicas.is_empty() {
                        "-".to_string()
                    } else if p.records_behind < 0 {
                        "unknown".to_string()
                    } else {
                        p.records_behind.to_string()
                    },
                ])
            )
        );
    }
    outln!(
        "{}",
        table(
            &["config", "value", "source"],
            v.config.iter().map(|(k, value)| vec![
                k.clone(),
                value.clone(),
                source(v.overrides.contains(k)).to_string()
            ])
        )
    );
}

pub(crate) async fn run(ctx: &Context, cmd: TopicsCommand) -> anyhow::Result<()> {
    let admin = Admin::new(ctx.client())?;
    match cmd {
        TopicsCommand::Create {
            name,
            partitions,
            replication_factor,
            config,
            dry_run,
        } => {
            let mut topic = NewTopic::new(&name, partitions, replication_factor);
            topic.config = parse_kv(&config)?;
            let created = admin
                .create_topic(topic, dry_run)
                .await
                .with_context(|| format!("creating topic '{name}'"))?;
            let v = view(created);
            output::print(ctx.output, &v, |v| {
                if dry_run {
                    outln!(
                        "Topic '{}' is valid ({} partitions); nothing created (--dry-run).",
                        v.name,
                        partitions
                    );
                } else {
                    outln!(
                        "Created topic '{}' with {} partitions.",
                        v.name,
                        v.partitions.len()
                    );
                }
            })
        }
        TopicsCommand::List => {
            let topics = admin.list_topics().await.context("listing topics")?;
            let rows: Vec<TopicRow> = topics
                .into_iter()
                .map(|t| TopicRow {
                    name: t.name,
                    partitions: t.partitions,
                    replication_factor: t.replication_factor,
                })
                .collect();
            output::print(ctx.output, &rows, |rows| {
                if rows.is_empty() {
                    outln!("No topics. Create one: sluice topics create NAME --partitions 3");
                } else {
                    outln!(
                        "{}",
                        table(
                            &["name", "partitions", "replication-factor"],
                            rows.iter().map(|r| vec![
                                r.name.clone(),
                                r.partitions.to_string(),
                                r.replication_factor.to_string()
                            ])
                        )
                    );
                }
            })
        }
        TopicsCommand::Describe { name } => {
            let d = admin
                .describe_topic(&name)
                .await
                .with_context(|| format!("describing topic '{name}'"))?;
            output::print(ctx.output, &view(d), print_topic)
        }
        TopicsCommand::Alter {
            name,
            partitions,
            replication_factor,
            no_wait,
            wait_timeout,
            config,
            delete_config,
            dry_run,
        } => {
            if config.is_empty()
                && delete_config.is_empty()
                && partitions.is_none()
                && replication_factor.is_none()
            {
                anyhow::bail!(
                    "altering topic '{name}': nothing to change; give --config KEY=VALUE, --delete-config KEY, --partitions N or --replication-factor N"
                );
            }
            if let Some(n) = partitions.filter(|n| *n < 1) {
                anyhow::bail!("altering topic '{name}': --partitions must be at least 1, got {n}");
            }
            if let Some(n) = replication_factor.filter(|n| *n < 1) {
                anyhow::bail!(
                    "altering topic '{name}': --replication-factor must be at least 1, got {n}"
                );
            }
            let change = sluice_client::AlterTopic {
                set_config: parse_kv(&config)?,
                delete_config,
                partitions,
                replication_factor,
                metadata: None,
            };
            let resp = admin
                .alter_topic(&name, change, dry_run)
                .await
                .with_context(|| format!("altering topic '{name}'"))?;
            let grows = resp.partitions_after > resp.partitions_before;
            let refactors = resp.replication_factor_after != resp.replication_factor_before;
            let mut v = AlterView {
                topic: name.clone(),
                applied: !dry_run && (grows || refactors || !resp.changes.is_empty()),
                partitions_before: resp.partitions_before,
                partitions_after: resp.partitions_after,
                replication_factor_before: resp.replication_factor_before,
                replication_factor_after: resp.replication_factor_after,
                changes: resp
                    .changes
                    .into_iter()
                    .map(|c| ChangeRow {
                        key: c.key,
                        old_value: c.old_value,
                        new_value: c.new_value,
                        old_source: source(c.old_override),
                        new_source: source(c.new_override),
                    })
                    .collect(),
                reassignments: resp
                    .reassignments
                    .into_iter()
                    .map(|r| ReassignmentRow {
                        partition: r.partition,
                        replicas_before: r.replicas_before,
                        replicas_after: r.replicas_after,
                    })
                    .collect(),
                replicas_moved: !refactors,
            };
            if v.applied && refactors && !no_wait {
                await_replicas(
                    ctx,
                    &admin,
                    &name,
                    v.reassignments.len() as u64,
                    wait_timeout,
                )
                .await?;
                v.replicas_moved = true;
            }
            output::print(ctx.output, &v, print_alter)
        }
        TopicsCommand::Export { names } => export::run(ctx, &admin, &names).await,
        TopicsCommand::Repartition {
            source,
            to,
            partitions,
            follow,
        } => repartition::run(ctx, &admin, &source, &to, partitions, follow).await,
        TopicsCommand::Delete { name } => {
            admin
                .delete_topic(&name)
                .await
                .with_context(|| format!("deleting topic '{name}'"))?;
            output::print(ctx.output, &serde_json::json!({ "deleted": name }), |_| {
                outln!("Deleted topic '{name}'.")
            })
        }
    }
}

fn print_alter(v: &AlterView) {
    let grows = v.partitions_after > v.partitions_before;
    let refactors = v.replication_factor_after != v.replication_factor_before;
    if v.changes.is_empty() && !grows && !refactors {
        outln!("Topic '{}' is already like this; nothing changed.", v.topic);
        return;
    }
    let mut rows: Vec<Vec<String>> = v
        .changes
        .iter()
        .map(|c| {
            vec![
                c.key.clone(),
                format!("{} ({})", c.old_value, c.old_source),
                format!("{} ({})", c.new_value, c.new_source),
            ]
        })
        .collect();
    if grows {
        rows.push(vec![
            "partitions".into(),
            v.partitions_before.to_string(),
            v.partitions_after.to_string(),
        ]);
    }
    if refactors {
        rows.push(vec![
            "replication factor".into(),
            v.replication_factor_before.to_string(),
            v.replication_factor_after.to_string(),
        ]);
        for r in &v.reassignments {
            rows.push(vec![
                format!("replicas of partition {}", r.partition),
                ids(&r.replicas_before),
                ids(&r.replicas_after),
            ]);
        }
    }
    outln!("{}", table(&["change", "from", "to"], rows.into_iter()));
    if grows {
        outln!(
            "Keys are spread over {} partitions from now on: a key may go to another partition than before (as in Kafka).",
            v.partitions_after
        );
    }
    if !v.applied {
        outln!("Nothing changed (--dry-run).");
    } else if refactors && !v.replicas_moved {
        outln!(
            "Altered topic '{}'; its partitions move to their new replicas in the background: watch with `sluice topics describe {}`.",
            v.topic,
            v.topic
        );
    } else {
        outln!(
            "Altered topic '{}', in effect on every broker as it applies it (no restart).",
            v.topic
        );
    }
}

/// Waits, with a progress bar, until no partition of `name` is changing replicas.
pub(crate) async fn await_replicas(
    ctx: &Context,
    admin: &Admin,
    name: &str,
    moving: u64,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let bar = super::progress(
        ctx,
        Some(moving),
        &format!("moving the replicas of '{name}'"),
        false,
    );
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // A broker may be briefly unable to answer (a leader moving): keep asking.
        if let Ok(d) = admin.describe_topic(name).await {
            let left: Vec<&pb::PartitionDescription> = d
                .partitions
                .iter()
                .filter(|p| !p.adding_replicas.is_empty() || !p.removing_replicas.is_empty())
                .collect();
            bar.set_position(moving.saturating_sub(left.len() as u64));
            let behind: i64 = left.iter().map(|p| p.records_behind.max(0)).sum();
            bar.set_message(format!(
                "moving the replicas of '{name}' ({behind} records behind)"
            ));
            if left.is_empty() {
                bar.finish_and_clear();
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bar.abandon();
            anyhow::bail!(
                "topic '{name}': its partitions were still moving to their new replicas after {} (the change goes on in the background); watch it with `sluice topics describe {name}`",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
