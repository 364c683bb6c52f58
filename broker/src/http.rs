//! The broker's HTTP endpoints, for Prometheus and Kubernetes:
//! - `/metrics`: Prometheus (OpenMetrics) text: the request metrics of [`crate::metrics`],
//!   and, read at scrape time, the partitions this broker leads (offsets, in-sync replicas,
//!   size), partitions without a leader that it holds a replica of, the controller, and the
//!   lag of the consumer groups it coordinates.
//! - `/livez`: the process serves (200).
//! - `/readyz`: logs open, client listener serving, registered with a controller that has a
//!   leader (200), else 503 with why.
//! - `/ready-to-stop`: stopping this broker now would leave no partition below its
//!   `min.insync.replicas` nor without a replica to lead it (200), else 503 naming the
//!   partitions; the rolling restart of the operator waits on it.
//!
//! Labels are bounded: topic and partition (as many as the cluster has), group; never a
//! record, producer or member.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use sluice_proto::pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::service::{AdminService, GroupsService};

/// Groups whose lag one scrape reads, at most (each costs a read per lagging partition).
const MAX_GROUPS_PER_SCRAPE: usize = 500;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the endpoints on `listener` until `stop`.
pub(crate) async fn serve(broker: Arc<Broker>, listener: TcpListener, stop: CancellationToken) {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/livez", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(readyz))
        .route("/ready-to-stop", axum::routing::get(ready_to_stop))
        .with_state(broker);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::warn!(cause = %e, "the HTTP listener (metrics, health) stopped");
    }
}

/// One gauge family read at scrape time.
#[derive(Debug)]
struct Gauges {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, i64)>,
}

/// What a scrape read, encoded by [`Collector::encode`].
#[derive(Debug, Default)]
struct Snapshot {
    families: Vec<Gauges>,
}

impl Snapshot {
    fn family(
        &mut self,
        name: &'static str,
        help: &'static str,
    ) -> &mut Vec<(Vec<(&'static str, String)>, i64)> {
        self.families.push(Gauges {
            name,
            help,
            samples: Vec::new(),
        });
        &mut self.families.last_mut().expect("just pushed").samples
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, MetricType::Gauge)?;
            match f.samples.as_slice() {
                // One value without labels: `name 3`, not `name{} 3`.
                [(labels, value)] if labels.is_empty() => ConstGauge::new(*value).encode(metric)?,
                samples => {
                    for (labels, value) in samples {
                        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn tp(topic: &str, partition: i32) -> Vec<(&'static str, String)> {
    vec![
        ("topic", topic.to_string()),
        ("partition", partition.to_string()),
    ]
}

/// Reads the state metrics.
async fn snapshot(broker: &Arc<Broker>) -> Snapshot {
    let state = broker.controller.state();
    let me = broker.node_id();
    let admin = AdminService::new(broker.clone());
    // Partitions led here, as `topics describe` shows them.
    let mut led: Vec<(String, i32, pb::PartitionDescription)> = Vec::new();
    for record in state.topics.values() {
        let Ok(d) = admin.describe(record, true).await else {
            continue;
        };
        let min_isr = d
            .config
            .get("min.insync.replicas")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        for p in d.partitions {
            led.push((record.name.clone(), min_isr, p));
        }
    }
    let mut s = Snapshot::default();
    let f = s.family(
        "sluice_partition_log_end_offset",
        "Next offset to be written, per partition led by this broker",
    );
    f.extend(
        led.iter()
            .map(|(t, _, p)| (tp(t, p.partition), p.log_end_offset)),
    );
    let f = s.family(
        "sluice_partition_high_watermark",
        "Offset up to which records are committed (readable), per partition led here",
    );
    f.extend(
        led.iter()
            .map(|(t, _, p)| (tp(t, p.partition), p.high_watermark)),
    );
    let f = s.family(
        "sluice_partition_log_start_offset",
        "First offset still held, per partition led here",
    );
    f.extend(
        led.iter()
            .map(|(t, _, p)| (tp(t, p.partition), p.log_start_offset)),
    );
    let f = s.family(
        "sluice_partition_in_sync_replicas",
        "Replicas in sync, per partition led here",
    );
    f.extend(
        led.iter()
            .map(|(t, _, p)| (tp(t, p.partition), p.isr.len() as i64)),
    );
    let f = s.family(
        "sluice_partition_replicas",
        "Replicas assigned, per partition led here",
    );
    f.extend(
        led.iter()
            .map(|(t, _, p)| (tp(t, p.partition), p.replicas.len() as i64)),
    );
    let f = s.family(
        "sluice_partition_size_bytes",
        "Bytes on disk of the partition's log, per partition led here",
    );
    f.extend(
        led.iter()
            .map(|(t, _, p)| (tp(t, p.partition), p.size_bytes as i64)),
    );
    let under = led
        .iter()
        .filter(|(_, _, p)| p.isr.len() < p.replicas.len())
        .count();
    let under_min = led
        .iter()
        .filter(|(_, m, p)| (p.isr.len() as i32) < *m)
        .count();
    s.family("sluice_partitions_led", "Partitions this broker leads")
        .push((Vec::new(), led.len() as i64));
    s.family(
        "sluice_under_replicated_partitions",
        "Partitions led here with fewer replicas in sync than assigned",
    )
    .push((Vec::new(), under as i64));
    s.family("sluice_under_min_isr_partitions", "Partitions led here with fewer replicas in sync than min.insync.replicas (acks=all writes fail)").push((Vec::new(), under_min as i64));
    // A partition with a replica here and no leader in its Raft group: reported by each of
    // its live replicas (count distinct topic/partition across brokers).
    let mut offline = Vec::new();
    for t in broker.local_topics() {
        for (p, r) in t.replicas.read().iter() {
            if r.leader().is_none() {
                offline.push((tp(&t.record.name, *p), 1));
            }
        }
    }
    // Bytes of every replica's log on this broker (led or not): the disk it uses.
    let mut disk: u64 = 0;
    for t in broker.local_topics() {
        let mut ids: Vec<i32> = t.replicas.read().keys().copied().collect();
        ids.extend(t.partitions.keys().copied());
        for p in ids {
            if let Some(part) = t.partition(p) {
                disk += part.offsets().size_bytes;
            }
        }
    }
    s.family(
        "sluice_log_size_bytes",
        "Bytes on disk of every partition log on this broker (leaders and followers)",
    )
    .push((Vec::new(), disk as i64));
    let f = s.family(
        "sluice_partition_offline",
        "1 for a partition with a replica on this broker whose Raft group has no leader",
    );
    f.extend(offline);
    let leader = broker.controller_leader();
    s.family(
        "sluice_controller_active",
        "1 on the broker leading the controller quorum",
    )
    .push((Vec::new(), i64::from(leader == Some(me))));
    s.family(
        "sluice_controller_leader",
        "Node id of the controller leader, -1 when there is none",
    )
    .push((Vec::new(), i64::from(leader.unwrap_or(-1))));
    s.family("sluice_brokers", "Brokers registered with the controller")
        .push((Vec::new(), state.brokers.len() as i64));
    s.family("sluice_topics", "Topics in the cluster")
        .push((Vec::new(), state.topics.len() as i64));
    // Consumer groups coordinated here.
    let groups = GroupsService::new(broker.clone());
    let mut lag = Vec::new();
    let mut lag_ms = Vec::new();
    let mut headroom = Vec::new();
    let mut members = Vec::new();
    for g in broker
        .local_groups()
        .await
        .into_iter()
        .take(MAX_GROUPS_PER_SCRAPE)
    {
        members.push((vec![("group", g.group.clone())], g.members.len() as i64));
        let req = tonic::Request::new(pb::DescribeGroupRequest {
            group: g.group.clone(),
        });
        let Ok(d) = sluice_proto::pb::groups_server::Groups::describe_group(&groups, req).await
        else {
            continue;
        };
        for p in d.into_inner().partitions {
            let mut labels = tp(&p.topic, p.partition);
            labels.insert(0, ("group", g.group.clone()));
            if p.lag >= 0 {
                lag.push((labels.clone(), p.lag));
            }
            if p.lag_ms >= 0 {
                // Where this broker holds the topic: how long before retention deletes the
                // group's first unread record.
                let retention = broker
                    .local_topic(&p.topic)
                    .map(|t| t.config.get().retention_ms)
                    .filter(|r| *r >= 0);
                if let Some(r) = retention {
                    headroom.push((labels.clone(), (r - p.lag_ms) / 1000));
                }
                lag_ms.push((labels, p.lag_ms / 1000));
            }
        }
    }
    s.family(
        "sluice_group_members",
        "Members of each consumer group coordinated here",
    )
    .extend(members);
    s.family(
        "sluice_group_lag_records",
        "Log end offset minus the committed offset, per group and partition",
    )
    .extend(lag);
    s.family("sluice_group_lag_seconds", "Age of the first record the group has not consumed (0 when caught up), per group and partition").extend(lag_ms);
    s.family("sluice_group_retention_headroom_seconds", "retention.ms minus the group's lag in time: how long before its first unread record may be deleted unread (negative: it may be already), per group and partition, where this broker holds the topic").extend(headroom);
    s
}

async fn metrics(State(broker): State<Arc<Broker>>) -> Response {
    let snap = snapshot(&broker).await;
    let mut text = String::new();
    let mut state = Registry::default();
    state.register_collector(Box::new(snap));
    let encoded =
        prometheus_client::encoding::text::encode_registry(&mut text, broker.metrics.registry())
            .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut text, &state))
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut text));
    match encoded {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

/// Why this broker is not ready to serve, if it is not.
fn not_ready(broker: &Broker) -> Option<String> {
    if !broker.serving.load(Ordering::Acquire) {
        return Some("opening its logs; the client listener is not serving yet".into());
    }
    if broker.shutdown.is_cancelled() {
        return Some("shutting down".into());
    }
    if broker.controller_leader().is_none() {
        return Some("the controller quorum has no leader (or this broker cannot reach it)".into());
    }
    let me = broker.node_id();
    if !broker.controller.state().brokers.contains_key(&me) {
        return Some(format!(
            "broker {me} is not registered with the controller yet"
        ));
    }
    None
}

async fn readyz(State(broker): State<Arc<Broker>>) -> Response {
    match not_ready(&broker) {
        None => "ready\n".into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// The partitions that stopping this broker would leave below `min.insync.replicas` or
/// without a leader, as their leaders see them now.
async fn blocking_stop(broker: &Arc<Broker>) -> Vec<String> {
    let me = broker.node_id();
    let state = broker.controller.state();
    let admin = AdminService::new(broker.clone());
    let mut blocking = Vec::new();
    for record in state.topics.values() {
        if !record.replicas.iter().any(|r| r.contains(&me)) {
            continue;
        }
        let d = match admin.describe(record, false).await {
            Ok(d) => d,
            Err(e) => {
                blocking.push(format!(
                    "topic '{}': cannot be described ({e})",
                    record.name
                ));
                continue;
            }
        };
        let min_isr: usize = d
            .config
            .get("min.insync.replicas")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        for p in d.partitions.iter().filter(|p| p.replicas.contains(&me)) {
            let others = p.isr.iter().filter(|r| **r != me).count();
            if p.leader < 0 {
                blocking.push(format!(
                    "{}-{}: has no leader now",
                    record.name, p.partition
                ));
            } else if p.replicas.len() > 1 && others < min_isr.min(p.replicas.len() - 1).max(1) {
                blocking.push(format!(
                    "{}-{}: {} other replica(s) in sync ({:?}), min.insync.replicas {min_isr}",
                    record.name, p.partition, others, p.isr
                ));
            }
        }
    }
    blocking
}

async fn ready_to_stop(State(broker): State<Arc<Broker>>) -> Response {
    let blocking = blocking_stop(&broker).await;
    if blocking.is_empty() {
        return "ready to stop: every partition here keeps enough replicas in sync without this broker\n".into_response();
    }
    let mut text = format!(
        "not ready to stop: stopping broker {} now would leave {} partition(s) short:\n",
        broker.node_id(),
        blocking.len()
    );
    for b in blocking.iter().take(100) {
        text.push_str(&format!("  {b}\n"));
    }
    (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
}
