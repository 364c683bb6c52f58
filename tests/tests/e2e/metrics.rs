//! The brokers' HTTP endpoints: `/metrics` read with a Prometheus parser and checked against
//! the cluster, `/readyz` and `/ready-to-stop` as brokers go down.

use std::time::Duration;

use sluice_client::{Acks, NewTopic, ProducerConfig, ProducerRecord, TopicPartition};
use sluice_tests::{Cluster, eventually, http_get};

const DEADLINE: Duration = Duration::from_secs(30);

/// Every sample of every running broker's /metrics.
fn scrape(cluster: &Cluster) -> Vec<prometheus_parse::Sample> {
    let mut all = Vec::new();
    for b in cluster.brokers.iter().filter(|b| b.is_running()) {
        let (status, body) = http_get(&b.http_url(), "/metrics").expect("metrics answer");
        assert_eq!(status, 200, "{body}");
        assert!(
            body.ends_with("# EOF\n"),
            "OpenMetrics text ends with # EOF"
        );
        let lines = body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
        all.extend(scrape.samples);
    }
    all
}

fn value(s: &prometheus_parse::Sample) -> f64 {
    match &s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        _ => f64::NAN,
    }
}

/// The sum over brokers of `metric` with these labels.
fn sum(samples: &[prometheus_parse::Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(value)
        .sum()
}

/// Observations of the histogram `metric`, summed over brokers and label sets.
fn observations(samples: &[prometheus_parse::Sample], metric: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == metric)
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            _ => f64::NAN,
        })
        .sum()
}

#[tokio::test]
async fn metrics_match_the_cluster_and_health_endpoints_follow_it() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let admin = sluice_client::Admin::new(cluster.client()).unwrap();
    admin
        .create_topic(
            NewTopic::new("orders", 3, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .unwrap();
    let producer = sluice_client::Producer::connect(
        cluster.client(),
        ProducerConfig {
            acks: Acks::All,
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    let mut per_partition = [0i64; 3];
    for i in 0..30 {
        let p = i % 3;
        let mut record = ProducerRecord::new("orders", format!("v{i}"));
        record.partition = Some(p);
        producer.send(record).await.unwrap().await.unwrap();
        per_partition[p as usize] += 1;
    }
    // A group that has read nothing of partition 0: its lag is the whole partition.
    admin
        .commit_offsets("billing", &[(TopicPartition::new("orders", 0), 0)])
        .await
        .unwrap();

    // Each partition is reported by its one leader: orders' 3 at their counts of records,
    // and the 50 of __consumer_offsets, which was just created (a replica may still think it
    // leads an older term, or a leadership may be moving to its preferred replica, until
    // the cluster settles).
    let samples = eventually(
        "each partition reported by its one leader",
        DEADLINE,
        || async {
            let s = scrape(&cluster);
            let orders_ok = per_partition.iter().enumerate().all(|(p, count)| {
                let p = p.to_string();
                let labels = [("topic", "orders"), ("partition", &*p)];
                sum(&s, "sluice_partition_high_watermark", &labels) == *count as f64
                    && sum(&s, "sluice_partition_log_end_offset", &labels) == *count as f64
                    && sum(&s, "sluice_partition_replicas", &labels) == 3.0
            });
            (orders_ok && sum(&s, "sluice_partitions_led", &[]) == 3.0 + 50.0).then_some(s)
        },
    )
    .await;
    assert!(
        sum(
            &samples,
            "sluice_requests_total",
            &[("request", "produce"), ("code", "NONE")]
        ) >= 30.0
    );
    assert!(
        samples
            .iter()
            .any(|s| s.metric.starts_with("sluice_request_duration_seconds")
                && s.labels.get("acks") == Some("all"))
    );
    assert!(sum(&samples, "sluice_produce_bytes_total", &[]) > 0.0);
    // Every partition (orders' 3, __consumer_offsets' 50) got a leader at least once, and
    // each acks=all batch was committed through Raft.
    assert!(sum(&samples, "sluice_raft_leaderships_total", &[]) >= 53.0);
    assert!(observations(&samples, "sluice_raft_commit_duration_seconds") >= 30.0);
    // Every broker holds a replica of each partition (RF 3 on 3 brokers): its logs'
    // bytes are at least those of the partitions it leads.
    assert!(
        sum(&samples, "sluice_log_size_bytes", &[])
            >= sum(&samples, "sluice_partition_size_bytes", &[])
    );
    assert_eq!(
        sum(&samples, "sluice_controller_active", &[]),
        1.0,
        "one controller leader"
    );
    assert_eq!(
        sum(
            &samples,
            "sluice_group_lag_records",
            &[
                ("group", "billing"),
                ("topic", "orders"),
                ("partition", "0")
            ]
        ),
        per_partition[0] as f64
    );
    // The group's records are far from retention (7 days by default): headroom is most of it.
    let headroom = sum(
        &samples,
        "sluice_group_retention_headroom_seconds",
        &[
            ("group", "billing"),
            ("topic", "orders"),
            ("partition", "0"),
        ],
    );
    assert!(headroom > 6.0 * 86_400.0, "{headroom}");
    // Every metric the example Grafana dashboard draws is one the brokers export.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/grafana/sluice-dashboard.json"),
    )
    .unwrap();
    let (_, body) = http_get(&cluster.node(1).http_url(), "/metrics").unwrap();
    for name in dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("sluice_"))
    {
        assert!(
            body.contains(name),
            "the dashboard uses {name}, which /metrics lacks"
        );
    }
    for b in &cluster.brokers {
        assert_eq!(http_get(&b.http_url(), "/livez").unwrap().0, 200);
        assert_eq!(http_get(&b.http_url(), "/readyz").unwrap().0, 200);
    }
    // Every replica in sync: any one broker may stop.
    eventually("all partitions fully in sync", DEADLINE, || async {
        let s = scrape(&cluster);
        (sum(&s, "sluice_under_replicated_partitions", &[]) == 0.0).then_some(())
    })
    .await;
    for b in &cluster.brokers {
        let (status, body) = http_get(&b.http_url(), "/ready-to-stop").unwrap();
        assert_eq!(status, 200, "{body}");
    }

    // Broker 3 dies: every partition is under-replicated (2 of 3 in sync, still at
    // min.insync.replicas), and stopping another broker now would leave one in sync.
    cluster.node(3).kill();
    let s = eventually(
        "partitions under-replicated after a broker kill",
        DEADLINE,
        || async {
            let s = scrape(&cluster);
            (sum(&s, "sluice_under_replicated_partitions", &[]) == 53.0).then_some(s)
        },
    )
    .await;
    assert_eq!(sum(&s, "sluice_under_min_isr_partitions", &[]), 0.0);
    let b1 = cluster.node(1).http_url();
    let (status, body) = http_get(&b1, "/ready-to-stop").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("orders-0") && body.contains("min.insync.replicas 2"),
        "{body}"
    );

    // Broker 2 dies too: the controller quorum is lost, broker 1 is not ready.
    cluster.node(2).kill();
    let body = eventually(
        "broker 1 not ready without a controller quorum",
        DEADLINE,
        || async {
            let (status, body) = http_get(&b1, "/readyz")?;
            (status == 503).then_some(body)
        },
    )
    .await;
    assert!(body.contains("no leader"), "{body}");
    assert_eq!(
        http_get(&b1, "/livez").unwrap().0,
        200,
        "alive all the same"
    );
}
