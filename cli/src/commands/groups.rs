//! `sluice groups`: consumer groups' committed offsets and lag, with Kafka's columns.

use anyhow::Context as _;
use clap::Subcommand;
use serde::Serialize;
use sluice_client::Admin;

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
                        committed_at: timestamp(p.commit_timestamp_ms),
                        metadata: p.metadata,
                        consumer_id: p.owner,
                    })
                    .collect(),
            };
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
                            "consumer-id",
                            "committed-at",
                        ],
                        d.partitions.iter().map(|p| vec![
                            p.topic.clone(),
                            p.partition.to_string(),
                            or_dash(known(p.current_offset)),
                            or_dash(p.log_end_offset),
                            or_dash(p.lag),
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
