//! `sluice cluster status`: brokers up or down, the controller leader, and partitions that
//! are offline or under-replicated. `sluice cluster drain`: move every replica off brokers
//! that are to leave.

use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use serde::Serialize;
use sluice_client::{Admin, ClientConfig};

use super::Context;
use crate::output::{self, table};

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Brokers, controller leader, and partition health.
    Status,
    /// Move every partition replica off brokers before removing them (scale-down): the
    /// named brokers take no new replicas and their partitions move to the other brokers.
    /// The set is declarative: the brokers named become exactly the drained ones, so
    /// asking again shows the progress, and `--none` undrains them all.
    Drain {
        /// Broker ids to drain.
        #[arg(required_unless_present = "none", conflicts_with = "none")]
        brokers: Vec<i32>,
        /// Undrain every broker.
        #[arg(long)]
        none: bool,
        /// Wait until no replica is left on the drained brokers.
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits at most.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Debug, Serialize)]
struct Drain {
    brokers: Vec<DrainRow>,
    partitions_moving: i32,
    done: bool,
}

#[derive(Debug, Serialize)]
struct DrainRow {
    node_id: i32,
    replicas_left: i32,
}

impl From<sluice_client::pb::DrainBrokersResponse> for Drain {
    fn from(r: sluice_client::pb::DrainBrokersResponse) -> Self {
        Drain {
            done: r.brokers.iter().all(|b| b.replicas == 0),
            brokers: r
                .brokers
                .into_iter()
                .map(|b| DrainRow {
                    node_id: b.node_id,
                    replicas_left: b.replicas,
                })
                .collect(),
            partitions_moving: r.partitions_moving,
        }
    }
}

async fn drain(
    ctx: &Context,
    brokers: Vec<i32>,
    wait: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let admin = Admin::new(ctx.client())?;
    let what = if brokers.is_empty() {
        "undraining every broker".to_string()
    } else {
        format!("draining brokers {brokers:?}")
    };
    let mut state: Drain = admin
        .drain_brokers(&brokers)
        .await
        .with_context(|| what.clone())?
        .into();
    if wait && !state.done {
        let bar = super::progress(ctx, None, &what, false);
        let deadline = tokio::time::Instant::now() + timeout;
        while !state.done {
            let left: i32 = state.brokers.iter().map(|b| b.replicas_left).sum();
            bar.set_message(format!(
                "{what}: {left} replica(s) left, {} moving",
                state.partitions_moving
            ));
            if tokio::time::Instant::now() >= deadline {
                bar.finish_and_clear();
                anyhow::bail!(
                    "{what}: {left} replica(s) still on them after {}; the moves go on in the background: check with `sluice cluster drain {}`",
                    humantime::format_duration(timeout),
                    brokers
                        .iter()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            state = admin
                .drain_brokers(&brokers)
                .await
                .with_context(|| what.clone())?
                .into();
        }
        bar.finish_and_clear();
    }
    output::print(ctx.output, &state, |s| {
        if s.brokers.is_empty() {
            outln!("No broker is drained.");
            return;
        }
        outln!(
            "{}",
            table(
                &["broker", "replicas left"],
                s.brokers
                    .iter()
                    .map(|b| vec![b.node_id.to_string(), b.replicas_left.to_string()])
            )
        );
        if s.done {
            outln!("Drained: no replica is left on these brokers; they can be stopped for good.");
        } else {
            outln!(
                "{} partition(s) moving; ask again (or add --wait) to follow the progress.",
                s.partitions_moving
            );
        }
    })
}

#[derive(Debug, Serialize)]
struct BrokerRow {
    node_id: i32,
    address: String,
    up: bool,
    /// Why a broker counts as down: no process listening, no answer in time, or the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    down_reason: Option<String>,
    controller_leader: bool,
}

#[derive(Debug, Serialize)]
struct Status {
    cluster_id: String,
    controller_leader: Option<i32>,
    brokers: Vec<BrokerRow>,
    topics: usize,
    partitions: usize,
    offline_partitions: Vec<String>,
    under_replicated_partitions: Vec<String>,
    under_min_isr_partitions: Vec<String>,
}

/// How long a broker may take to answer before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) async fn run(ctx: &Context, cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status => status(ctx).await,
        ClusterCommand::Drain {
            brokers,
            none,
            wait,
            timeout,
        } => drain(ctx, if none { Vec::new() } else { brokers }, wait, timeout).await,
    }
}

async fn status(ctx: &Context) -> anyhow::Result<()> {
    let admin = Admin::new(ctx.client())?;
    let meta = admin.metadata().await.context("reading cluster metadata")?;
    let mut brokers = Vec::new();
    for b in &meta.brokers {
        let mut probe = ClientConfig::new(&b.address);
        probe.request_timeout = PROBE_TIMEOUT;
        probe.connect_timeout = PROBE_TIMEOUT;
        let down_reason = match Admin::new(probe)?.list_topics().await {
            Ok(_) => None,
            Err(e) if e.is_connection_refused() => {
                Some("not running (connection refused)".to_string())
            }
            Err(sluice_client::Error::Timeout { .. }) => {
                Some(format!("no answer within {PROBE_TIMEOUT:?}"))
            }
            Err(e) => Some(e.to_string()),
        };
        brokers.push(BrokerRow {
            node_id: b.node_id,
            address: b.address.clone(),
            up: down_reason.is_none(),
            down_reason,
            controller_leader: b.node_id == meta.controller_id,
        });
    }
    let down: std::collections::HashSet<i32> = brokers
        .iter()
        .filter(|b| !b.up)
        .map(|b| b.node_id)
        .collect();
    let (mut offline, mut under, mut under_min) = (Vec::new(), Vec::new(), Vec::new());
    let mut partitions = 0;
    // Describe asks each partition's leader, so leaders and in-sync sets are live.
    for t in &meta.topics {
        let d = match admin.describe_topic(&t.name).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("warning: cannot describe topic '{}': {e}", t.name);
                continue;
            }
        };
        let min_isr: usize = d
            .config
            .get("min.insync.replicas")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        for p in &d.partitions {
            partitions += 1;
            let name = format!("{}-{}", t.name, p.partition);
            let live_isr = p.isr.iter().filter(|r| !down.contains(r)).count();
            if p.leader < 0 || down.contains(&p.leader) {
                offline.push(name.clone());
            }
            if live_isr < p.replicas.len() {
                under.push(name.clone());
            }
            if live_isr < min_isr {
                under_min.push(name);
            }
        }
    }
    let status = Status {
        cluster_id: meta.cluster_id.clone(),
        controller_leader: (meta.controller_id >= 0).then_some(meta.controller_id),
        brokers,
        topics: meta.topics.len(),
        partitions,
        offline_partitions: offline,
        under_replicated_partitions: under,
        under_min_isr_partitions: under_min,
    };
    output::print(ctx.output, &status, |s| {
        outln!(
            "Cluster {}  controller leader: {}",
            s.cluster_id,
            s.controller_leader
                .map_or("none (no quorum)".to_string(), |c| format!("broker {c}"))
        );
        outln!(
            "{}",
            table(
                &["broker", "address", "status", "role"],
                s.brokers.iter().map(|b| vec![
                    b.node_id.to_string(),
                    b.address.clone(),
                    match &b.down_reason {
                        None => "up".into(),
                        Some(why) => format!("DOWN: {why}"),
                    },
                    if b.controller_leader {
                        "controller leader".into()
                    } else {
                        String::new()
                    },
                ])
            )
        );
        let list = |v: &[String]| {
            if v.is_empty() {
                "0".to_string()
            } else {
                format!("{} ({})", v.len(), v.join(", "))
            }
        };
        outln!("Topics: {}  partitions: {}", s.topics, s.partitions);
        outln!("Offline partitions: {}", list(&s.offline_partitions));
        outln!(
            "Under-replicated partitions: {}",
            list(&s.under_replicated_partitions)
        );
        outln!(
            "Under min ISR partitions: {}",
            list(&s.under_min_isr_partitions)
        );
    })
}
