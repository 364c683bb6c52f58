//! Where a write's time goes on the brokers: the stage histograms every broker keeps
//! (`sluice_commit_stage_seconds{stage}` on /metrics), read before and after a measured
//! window and subtracted, summed over the brokers given. Each stage is timed where it
//! happens (the leader's append, a follower's, the round trip between them), so the
//! figures are per stage, not one write followed through; in the order below they add up
//! to the commit.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::output;

const METRIC: &str = "sluice_commit_stage_seconds";

/// The stages, in the order a write passes them, with what each one times.
pub(crate) const STAGES: [(&str, &str); 11] = [
    (
        "produce_request",
        "leader: a produce request, received to answered",
    ),
    (
        "leader_queue",
        "leader: proposed to its log append starting",
    ),
    (
        "leader_append_hop",
        "leader: the append's blocking-pool hop",
    ),
    ("leader_write", "leader: write the batch"),
    ("leader_fsync", "leader: fsync"),
    (
        "replication_round_trip",
        "leader: AppendEntries with entries, sent to answered",
    ),
    (
        "follower_append_entries",
        "follower: AppendEntries with entries, received to answered",
    ),
    ("follower_write", "follower: write the batches"),
    ("follower_fsync", "follower: fsync"),
    ("apply", "leader and followers: apply committed entries"),
    ("committed", "leader: proposed to committed and applied"),
];

/// One scrape of every broker: per stage, cumulative bucket counts by upper bound, the sum
/// of seconds and the count.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scrape {
    stages: BTreeMap<String, Series>,
}

#[derive(Debug, Clone, Default)]
struct Series {
    /// (upper bound in seconds, cumulative count), summed over brokers.
    buckets: BTreeMap<Bound, f64>,
    sum: f64,
    count: f64,
}

/// A bucket's upper bound, ordered (`+Inf` last).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound(f64);
impl Eq for Bound {}
impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One stage over a window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StageFigure {
    pub stage: String,
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Reads /metrics of every broker in `addresses` (host:port, or http://host:port).
pub(crate) async fn scrape(addresses: &[String]) -> anyhow::Result<Scrape> {
    let mut all = Scrape::default();
    for address in addresses {
        let text = get_metrics(address)
            .await
            .with_context(|| format!("reading http://{}/metrics for --breakdown", host(address)))?;
        all.add(&parse(&text));
    }
    Ok(all)
}

fn host(address: &str) -> &str {
    address
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .trim_end_matches("/metrics")
}

/// A plain HTTP/1.1 GET of /metrics (the brokers' endpoint speaks nothing fancier).
async fn get_metrics(address: &str) -> anyhow::Result<String> {
    let host = host(address);
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        stream
            .write_all(
                format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut body = Vec::new();
        // Bounded: a broker's metrics are well under this.
        stream.take(64 << 20).read_to_end(&mut body).await?;
        anyhow::Ok(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 5s"))??;
    let text = String::from_utf8_lossy(&body);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        anyhow::bail!("answered '{status}'");
    }
    Ok(rest.to_string())
}

/// The stage series of one /metrics text.
fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(METRIC) else {
            continue;
        };
        let Some((name_labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (kind, labels) = match name_labels.split_once('{') {
            Some((kind, labels)) => (kind, labels.trim_end_matches('}')),
            None => (name_labels, ""),
        };
        let label = |key: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
            })
        };
        let Some(stage) = label("stage") else {
            continue;
        };
        let series = scrape.stages.entry(stage).or_default();
        match kind {
            "_bucket" => {
                let bound = match label("le").as_deref() {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => match le.parse() {
                        Ok(b) => b,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                *series.buckets.entry(Bound(bound)).or_default() += value;
            }
            "_sum" => series.sum += value,
            "_count" => series.count += value,
            _ => {}
        }
    }
    scrape
}

impl Scrape {
    fn add(&mut self, other: &Scrape) {
        for (stage, s) in &other.stages {
            let mine = self.stages.entry(stage.clone()).or_default();
            for (b, c) in &s.buckets {
                *mine.buckets.entry(*b).or_default() += c;
            }
            mine.sum += s.sum;
            mine.count += s.count;
        }
    }
}

/// Each stage's figures between two scrapes, in [`STAGES`] order (stages nobody
/// recorded in the window are left out).
pub(crate) fn figures(before: &Scrape, after: &Scrape) -> Vec<StageFigure> {
    let empty = Series::default();
    STAGES
        .iter()
        .filter_map(|(stage, _)| {
            let a = after.stages.get(*stage)?;
            let b = before.stages.get(*stage).unwrap_or(&empty);
            let count = a.count - b.count;
            if count < 1.0 {
                return None;
            }
            let buckets: Vec<(f64, f64)> = a
                .buckets
                .iter()
                .map(|(bound, c)| (bound.0, c - b.buckets.get(bound).copied().unwrap_or(0.0)))
                .collect();
            Some(StageFigure {
                stage: stage.to_string(),
                count: count as u64,
                mean_ms: (a.sum - b.sum) / count * 1000.0,
                p50_ms: quantile(&buckets, count, 0.5) * 1000.0,
                p99_ms: quantile(&buckets, count, 0.99) * 1000.0,
            })
        })
        .collect()
}

/// The `q` quantile of cumulative `buckets` (upper bound, count) holding `count`
/// observations, interpolated linearly inside its bucket.
fn quantile(buckets: &[(f64, f64)], count: f64, q: f64) -> f64 {
    let rank = q * count;
    let mut lower = (0.0, 0.0);
    for &(bound, cumulative) in buckets {
        if cumulative >= rank {
            if bound.is_infinite() {
                // Past the last finite bucket: its bound is all that is known.
                return lower.0;
            }
            let within = cumulative - lower.1;
            let fraction = if within > 0.0 {
                (rank - lower.1) / within
            } else {
                1.0
            };
            return lower.0 + (bound - lower.0) * fraction;
        }
        lower = (bound, cumulative);
    }
    lower.0
}

pub(crate) fn table(figures: &[StageFigure]) -> String {
    output::table(
        &["stage", "what", "count", "mean ms", "p50 ms", "p99 ms"],
        figures.iter().map(|f| {
            let what = STAGES
                .iter()
                .find(|(s, _)| *s == f.stage)
                .map_or("", |(_, w)| *w);
            vec![
                f.stage.clone(),
                what.to_string(),
                f.count.to_string(),
                format!("{:.3}", f.mean_ms),
                format!("{:.3}", f.p50_ms),
                format!("{:.3}", f.p99_ms),
            ]
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(fsync: [u64; 3], sum: f64) -> String {
        format!(
            "# TYPE {METRIC} histogram\n\
             {METRIC}_sum{{stage=\"leader_fsync\"}} {sum}\n\
             {METRIC}_count{{stage=\"leader_fsync\"}} {}\n\
             {METRIC}_bucket{{le=\"0.0001\",stage=\"leader_fsync\"}} {}\n\
             {METRIC}_bucket{{stage=\"leader_fsync\",le=\"0.0002\"}} {}\n\
             {METRIC}_bucket{{stage=\"leader_fsync\",le=\"+Inf\"}} {}\n\
             sluice_other_total 5\n",
            fsync[2], fsync[0], fsync[1], fsync[2]
        )
    }

    #[test]
    fn a_window_is_the_difference_of_two_scrapes_summed_over_brokers() {
        let mut before = parse(&metrics([10, 10, 10], 0.001));
        before.add(&parse(&metrics([0, 0, 0], 0.0)));
        // 100 more fsyncs: 50 under 0.1 ms, 50 between 0.1 and 0.2 ms, 15 ms in all.
        let mut after = parse(&metrics([60, 110, 110], 0.016));
        after.add(&parse(&metrics([0, 0, 0], 0.0)));
        let f = figures(&before, &after);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].stage, "leader_fsync");
        assert_eq!(f[0].count, 100);
        assert!((f[0].mean_ms - 0.15).abs() < 1e-9, "{f:?}");
        assert!((f[0].p50_ms - 0.1).abs() < 1e-9, "{f:?}");
        assert!((f[0].p99_ms - 0.198).abs() < 1e-9, "{f:?}");
        assert!(table(&f).contains("leader: fsync"));
    }

    #[test]
    fn host_takes_an_address_or_a_url() {
        assert_eq!(host("127.0.0.1:9644"), "127.0.0.1:9644");
        assert_eq!(host("http://127.0.0.1:9644/metrics"), "127.0.0.1:9644");
    }
}
