//! Time per SluiceTopic reconcile against a running cluster, and the cost of computing a
//! SluiceCluster's objects: `cargo run --release -p sluice-operator --example
//! reconcile_bench -- BOOTSTRAP [TOPICS]` (e.g. against `sluice dev`). Creates TOPICS
//! (default 100) topics `bench-op-N` with 12 partitions, reconciles each again (no change),
//! then deletes them; prints medians, p99 and the process's peak RSS.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_client::{Admin, ClientConfig};
use sluice_manifest::SluiceTopic;

fn quantiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(q(0.5)),
        ms(q(0.99)),
        ms(q(1.0))
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(100);
    let admin = Admin::new(ClientConfig::new(&bootstrap))?;
    let objects: Vec<SluiceTopic> = (0..n)
        .map(|i| {
            serde_yaml::from_str(&format!(
                "apiVersion: sluice.io/v1alpha1\nkind: SluiceTopic\nmetadata: {{name: bench-op-{i}, namespace: bench, generation: 1}}\nspec:\n  clusterRef: {{name: main}}\n  partitions: 12\n  deletionPolicy: Delete\n  config: {{retention.ms: \"86400000\"}}\n"
            ))
        })
        .collect::<Result<_, _>>()?;
    let now = Time(k8s_openapi::chrono::Utc::now());
    for (label, _) in [("create", ()), ("no change", ())] {
        let mut times = Vec::new();
        for t in &objects {
            let started = Instant::now();
            let s = sluice_operator::topic::reconcile(&admin, t, &now)
                .await?
                .status;
            times.push(started.elapsed());
            anyhow::ensure!(s.conditions[0].status == "True", "{:?}", s.conditions);
        }
        let total: Duration = times.iter().sum();
        println!(
            "{n} reconciles ({label}): {:.2} s, {}",
            total.as_secs_f64(),
            quantiles(times)
        );
    }
    // A SluiceCluster's objects.
    let mut c: sluice_operator::SluiceCluster =
        serde_yaml::from_str(include_str!("../../examples/k8s/cluster.yaml"))?;
    c.metadata.namespace = Some("bench".into());
    c.metadata.uid = Some("bench".into());
    let started = Instant::now();
    for _ in 0..1000 {
        std::hint::black_box(sluice_operator::resources::children(&c)?);
    }
    println!(
        "SluiceCluster objects: {:.1} µs each (1,000 computed)",
        started.elapsed().as_secs_f64() * 1e6 / 1000.0
    );
    for t in &objects {
        sluice_operator::topic::cleanup(&admin, t).await?;
    }
    println!("peak RSS of this process: {} MiB", peak_rss_kib() / 1024);
    Ok(())
}
