//! `sluice topics create|list|describe|delete`.

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
    /// Delete a topic and all its data.
    Delete { name: String },
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
}

#[derive(Debug, Serialize)]
struct TopicView {
    name: String,
    replication_factor: i32,
    partitions: Vec<PartitionRow>,
    config: std::collections::BTreeMap<String, String>,
}

fn view(d: pb::TopicDescription) -> TopicView {
    TopicView {
        name: d.name,
        replication_factor: d.replication_factor,
        config: d.config.into_iter().collect(),
        partitions: d
            .partitions
            .into_iter()
            .map(|p| PartitionRow {
                partition: p.partition,
                leader: p.leader,
                replicas: p.replicas,
                isr: p.isr,
                log_start_offset: p.log_start_offset,
                high_watermark: p.high_watermark,
                log_end_offset: p.log_end_offset,
                size_bytes: p.size_bytes,
                segments: p.segments,
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
    outln!("Config:");
    for (k, v) in &v.config {
        outln!("  {k}={v}");
    }
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
