//! The operator's reconciles timed end to end: one SluiceCluster and TOPICS SluiceTopics
//! (default 100, 12 partitions each) through the controllers' `reconcile` (finalizer,
//! apply, server-side-applied status, Events) against the in-memory API server
//! (`memory_api`), with real brokers behind them:
//! `cargo run --release -p sluice-operator --example reconcile_bench -- BOOTSTRAP [TOPICS]
//! [HTTP_BASE_PORT]`, e.g. against `sluice dev` (`127.0.0.1:9092`, HTTP 9644 for broker 1,
//! 9645 for broker 2, ...). Prints time per reconcile (median, p99, max) for each phase and
//! the process's peak RSS (which includes the in-memory API's own store).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams};
use serde_json::json;
use sluice_manifest::SluiceTopic;
use sluice_operator::SluiceCluster;
use sluice_operator::brokers::LiveBrokers;
use sluice_operator::controller::Context;
use sluice_operator::memory_api::MemoryApi;
use sluice_operator::{cluster_controller, controller, resources};

const NS: &str = "bench";

fn quantiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    let total: Duration = v.iter().sum();
    format!(
        "{} reconciles in {:.2} s: median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        v.len(),
        total.as_secs_f64(),
        ms(q(0.5)),
        ms(q(0.99)),
        ms(q(1.0))
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn topic_object(i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "sluice.io/v1alpha1",
        "kind": "SluiceTopic",
        "metadata": {"name": format!("bench-op-{i}"), "namespace": NS, "generation": 1},
        "spec": {
            "clusterRef": {"name": "main"},
            "partitions": 12,
            "deletionPolicy": "Delete",
            "config": {"retention.ms": "86400000"},
        },
    })
}

/// Reconciles every topic once as the API holds it now; the time of each.
async fn reconcile_topics(mem: &MemoryApi, ctx: &Arc<Context>, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let Some(v) = mem.get("sluicetopics", NS, &format!("bench-op-{i}")) else {
            continue;
        };
        let t: SluiceTopic = match serde_json::from_value(v) {
            Ok(t) => t,
            Err(e) => panic!("bench-op-{i} does not parse: {e}"),
        };
        let started = Instant::now();
        if let Err(e) = controller::reconcile(Arc::new(t), ctx.clone()).await {
            panic!("reconciling bench-op-{i}: {e}");
        }
        times.push(started.elapsed());
    }
    times
}

/// The StatefulSet controller's and kubelet's part: a ready pod per broker, at the
/// StatefulSet's current revision.
fn pods_ready(mem: &MemoryApi, name: &str) {
    let Some(mut set) = mem.get("statefulsets", NS, name) else {
        return;
    };
    set["status"] = json!({"updateRevision": "r1"});
    let replicas = set["spec"]["replicas"].as_i64().unwrap_or(0);
    mem.put("statefulsets", set);
    for o in 0..replicas {
        let mut labels = json!(resources::selector(name));
        labels["controller-revision-hash"] = json!("r1");
        mem.put(
            "pods",
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{name}-{o}"), "namespace": NS, "labels": labels},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            }),
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(100);
    let http_base: i32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(9644);
    let rss_start = rss_kib("VmRSS:");

    let (mem, client) = MemoryApi::new();
    let brokers = LiveBrokers::new(
        Some(bootstrap.clone()),
        Some(Box::new(move |_: &SluiceCluster, id: i32| {
            Some(format!("http://127.0.0.1:{}", http_base + id - 1))
        })),
    );
    let ctx = Arc::new(Context::with_brokers(
        client.clone(),
        Some(bootstrap),
        Arc::new(brokers),
    ));

    // The SluiceCluster: the finalizer, its objects, then (pods ready) its status from
    // the brokers; then reconciles with nothing to change, as the 60 s resync makes them.
    let mut c: serde_json::Value =
        serde_yaml::from_str(include_str!("../../examples/k8s/cluster.yaml"))?;
    c["metadata"]["namespace"] = json!(NS);
    c["metadata"]["generation"] = json!(1);
    let name = c["metadata"]["name"].as_str().unwrap_or("main").to_string();
    mem.put("sluiceclusters", c);
    let cluster = |mem: &MemoryApi| -> anyhow::Result<Arc<SluiceCluster>> {
        let v = mem
            .get("sluiceclusters", NS, &name)
            .ok_or_else(|| anyhow::anyhow!("the SluiceCluster is gone"))?;
        Ok(Arc::new(serde_json::from_value(v)?))
    };
    let mut first = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        cluster_controller::reconcile(cluster(&mem)?, ctx.clone()).await?;
        first.push(started.elapsed());
    }
    pods_ready(&mem, &name);
    let mut settled = Vec::new();
    for _ in 0..100 {
        let started = Instant::now();
        cluster_controller::reconcile(cluster(&mem)?, ctx.clone()).await?;
        settled.push(started.elapsed());
    }
    let status = cluster(&mem)?.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| format!("{} ({})", c.status, c.reason))
        .unwrap_or_default();
    println!(
        "SluiceCluster: finalizer then objects created: {:.2} ms, {:.2} ms; Ready {ready}",
        ms(first[0]),
        ms(first[1])
    );
    println!(
        "SluiceCluster, nothing to change (pods listed, brokers' /metrics read, status applied): {}",
        quantiles(settled)
    );

    // The SluiceTopics: finalizer, create, nothing to change, delete.
    for i in 0..n {
        mem.put("sluicetopics", topic_object(i));
    }
    println!(
        "SluiceTopic, finalizer added: {}",
        quantiles(reconcile_topics(&mem, &ctx, n).await)
    );
    println!(
        "SluiceTopic, created (12 partitions): {}",
        quantiles(reconcile_topics(&mem, &ctx, n).await)
    );
    println!(
        "SluiceTopic, nothing to change: {}",
        quantiles(reconcile_topics(&mem, &ctx, n).await)
    );
    let rss_full = rss_kib("VmRSS:");
    let api: Api<SluiceTopic> = Api::namespaced(client, NS);
    for i in 0..n {
        api.delete(&format!("bench-op-{i}"), &DeleteParams::default())
            .await?;
    }
    println!(
        "SluiceTopic, deleted (topic deleted, finalizer removed): {}",
        quantiles(reconcile_topics(&mem, &ctx, n).await)
    );
    let left = mem.list("sluicetopics").len();
    anyhow::ensure!(left == 0, "{left} SluiceTopics still held by the finalizer");
    println!(
        "RSS: {} MiB at start, {} MiB with the cluster and {n} topics held, peak {} MiB \
         (the in-memory API's store included)",
        rss_start / 1024,
        rss_full / 1024,
        rss_kib("VmHWM:") / 1024
    );
    Ok(())
}
