//! `sluice bench sweep`: latency against throughput, in the shape of the OpenMessaging
//! Benchmark. Each step produces at a target rate for a warm-up and then a measured
//! window; the step reports the rate achieved in the window and the latency of the records
//! sent in it. The rates are a list (`--rates`), or found: an unthrottled step measures the
//! max, then `--steps` steps go up to it. The result is a table (or `-o json|yaml`), and
//! optionally a CSV, the JSON (`--json`, which `bench plot` and `--compare` read back) and
//! an SVG chart with earlier runs on the same axes.
//!
//! Latency is from the `send` call to the acknowledgement, as `bench produce --rate`
//! measures it (a send that waits for buffer memory counts the wait). Each producer is
//! paced by its own thread with the OS's sleep, so records go out evenly spaced. A step whose sender
//! cannot keep to its schedule says so: the achieved rate falls short of the target and
//! `not_sent` counts the records the schedule wanted and the window had no time for.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use sluice_client::{Producer, ProducerRecord};

use super::breakdown::{self, Scrape};
use super::results::{Step, SweepRun};
use super::{Latency, LoadArgs, latency_histogram};
use crate::commands::{Context, invalid, progress};
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct SweepBench {
    #[command(flatten)]
    load: LoadArgs,
    /// Target rates in records/s across producers, comma-separated (5000,20000,100000).
    #[arg(long, value_delimiter = ',', conflicts_with = "steps")]
    rates: Vec<u64>,
    /// Without --rates: measure the max rate first (a step as fast as the cluster takes
    /// records), then run this many steps up to it (max/N, 2max/N, ..., max).
    #[arg(long)]
    steps: Option<u32>,
    /// How long each step produces before its window is measured.
    #[arg(long, default_value = "3s")]
    warmup: humantime::Duration,
    /// How long each step is measured.
    #[arg(long, default_value = "10s")]
    duration: humantime::Duration,
    /// This run's name in the chart and the CSV (before, after, rf1, ...).
    #[arg(long, default_value = "run")]
    label: String,
    /// Writes the result as JSON (for `bench plot` and --compare).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Writes one CSV row per step.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Draws latency against achieved rate as SVG (this run and every --compare run).
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Earlier runs (their --json files) drawn on the same chart.
    #[arg(long, value_name = "RUN.json", requires = "svg")]
    compare: Vec<PathBuf>,
    /// Brokers' HTTP addresses (host:port of /metrics; `sluice dev` uses 127.0.0.1:9644 to
    /// 9646), comma-separated: each step also reports where a write's time went on them.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT")]
    breakdown: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PlotArgs {
    /// Sweep results (`bench sweep --json FILE`).
    #[arg(required = true, value_name = "RUN.json")]
    runs: Vec<PathBuf>,
    /// Where to write the SVG.
    #[arg(long, value_name = "FILE")]
    svg: PathBuf,
    /// The chart's title [default: the first run's workload].
    #[arg(long)]
    title: Option<String>,
}

/// One producer's outcomes in one step, filled in by its delivery callbacks.
struct Tally {
    latency: Histogram<u64>,
    acked_in_window: u64,
    failed: u64,
    first_error: Option<String>,
}

pub(crate) async fn run(ctx: &Context, args: SweepBench) -> anyhow::Result<()> {
    if args.rates.contains(&0) {
        return Err(invalid(
            "--rates: every rate must be at least 1 record/s (leave --rates out to find the max)",
        ));
    }
    let steps = match (&args.rates[..], args.steps) {
        ([], None) => 6,
        ([], Some(0)) => return Err(invalid("--steps must be at least 1")),
        ([], Some(n)) => n,
        (_, _) => 0,
    };
    let duration: Duration = args.duration.into();
    if duration.is_zero() {
        return Err(invalid("--duration must be longer than 0s"));
    }
    let earlier = args
        .compare
        .iter()
        .map(|p| read_run(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = args.load.prepare(ctx).await?;
    let mut producers = Vec::new();
    for _ in 0..args.load.producers.max(1) {
        producers.push(Producer::connect(ctx.client(), config.clone()).await?);
    }
    let load = Load {
        producers,
        topic: args.load.topic.clone(),
        value: args.load.value(),
        warmup: args.warmup.into(),
        duration,
        breakdown: args.breakdown.clone(),
    };
    let planned = if args.rates.is_empty() {
        steps as u64 + 1
    } else {
        args.rates.len() as u64
    };
    let bar = progress(ctx, Some(planned), "sweep", false);
    let mut run = SweepRun {
        label: args.label.clone(),
        workload: format!("sweep: {}", args.load.describe()),
        max_rate: None,
        steps: Vec::new(),
    };
    let rates: Vec<f64> = if args.rates.is_empty() {
        bar.set_message("sweep: finding the max rate");
        let max = load.step(None).await?;
        bar.inc(1);
        if max.achieved_rate < 1.0 {
            anyhow::bail!(
                "the unthrottled step acknowledged no records in {}: is the cluster up? ({} failed)",
                args.duration,
                max.failed
            );
        }
        run.max_rate = Some(max.achieved_rate);
        (1..=steps)
            .map(|i| {
                (max.achieved_rate * i as f64 / steps as f64)
                    .round()
                    .max(1.0)
            })
            .collect()
    } else {
        args.rates.iter().map(|&r| r as f64).collect()
    };
    for rate in rates {
        bar.set_message(format!("sweep: {rate:.0} records/s"));
        run.steps.push(load.step(Some(rate)).await?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    for p in &load.producers {
        p.close().await;
    }

    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&run)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, csv(&run)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        let mut all = earlier;
        all.push(run.clone());
        std::fs::write(path, super::plot::svg(&all, &run.workload))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    output::print(ctx.output, &run, |r| {
        outln!("{}", r.workload);
        if let Some(max) = r.max_rate {
            outln!("max rate (unthrottled step): {max:.0} records/s");
        }
        outln!("{}", table(r));
        for s in &r.steps {
            if let Some(b) = &s.breakdown {
                outln!(
                    "\nwhere a write's time went at {:.0} records/s:",
                    s.achieved_rate
                );
                outln!("{}", breakdown::table(b));
            }
        }
    })
}

pub(crate) fn plot(ctx: &Context, args: PlotArgs) -> anyhow::Result<()> {
    let runs = args
        .runs
        .iter()
        .map(|p| read_run(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let title = args
        .title
        .unwrap_or_else(|| runs.first().map(|r| r.workload.clone()).unwrap_or_default());
    std::fs::write(&args.svg, super::plot::svg(&runs, &title))
        .with_context(|| format!("writing {}", args.svg.display()))?;
    #[derive(Serialize)]
    struct Plotted {
        svg: String,
        runs: Vec<String>,
    }
    let plotted = Plotted {
        svg: args.svg.display().to_string(),
        runs: runs.iter().map(|r| r.label.clone()).collect(),
    };
    output::print(ctx.output, &plotted, |p| {
        outln!(
            "Wrote {} ({} run(s): {}).",
            p.svg,
            p.runs.len(),
            p.runs.join(", ")
        );
    })
}

fn read_run(path: &std::path::Path) -> anyhow::Result<SweepRun> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        invalid(format!(
            "{}: not a sweep result ({e}); write one with `sluice bench sweep --json FILE`",
            path.display()
        ))
    })
}

fn table(run: &SweepRun) -> String {
    output::table(
        &[
            "target/s",
            "achieved/s",
            "MB/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "failed",
            "not sent",
        ],
        run.steps.iter().map(|s| {
            vec![
                s.target_rate
                    .map_or_else(|| "max".to_string(), |r| format!("{r:.0}")),
                format!("{:.0}", s.achieved_rate),
                format!("{:.1}", s.mb_per_second),
                format!("{:.2}", s.latency_ms.p50),
                format!("{:.2}", s.latency_ms.p99),
                format!("{:.2}", s.latency_ms.p999),
                format!("{:.2}", s.latency_ms.max),
                s.failed.to_string(),
                s.not_sent.to_string(),
            ]
        }),
    )
}

fn csv(run: &SweepRun) -> String {
    let mut out = String::from(
        "label,target_rate,achieved_rate,mb_per_second,p50_ms,p99_ms,p999_ms,max_ms,records,failed,not_sent\n",
    );
    let label = if run.label.contains([',', '"', '\n']) {
        format!("\"{}\"", run.label.replace('"', "\"\""))
    } else {
        run.label.clone()
    };
    for s in &run.steps {
        out.push_str(&format!(
            "{label},{},{:.1},{:.2},{:.3},{:.3},{:.3},{:.3},{},{},{}\n",
            s.target_rate
                .map_or_else(String::new, |r| format!("{r:.0}")),
            s.achieved_rate,
            s.mb_per_second,
            s.latency_ms.p50,
            s.latency_ms.p99,
            s.latency_ms.p999,
            s.latency_ms.max,
            s.records,
            s.failed,
            s.not_sent
        ));
    }
    out
}

/// What every step produces with.
struct Load {
    producers: Vec<Producer>,
    topic: String,
    value: Bytes,
    warmup: Duration,
    duration: Duration,
    breakdown: Vec<String>,
}

impl Load {
    /// One step at `rate` records/s across producers (`None`: as fast as they can).
    async fn step(&self, rate: Option<f64>) -> anyhow::Result<Step> {
        let start = Instant::now();
        let window_start = start + self.warmup;
        let end = window_start + self.duration;
        let per_producer = rate.map(|r| r / self.producers.len() as f64);
        let mut tasks = Vec::new();
        for producer in &self.producers {
            let producer = producer.clone();
            let (topic, value) = (self.topic.clone(), self.value.clone());
            let runtime = tokio::runtime::Handle::current();
            // Paced on a thread of its own with the OS's sleep (tens of microseconds), not
            // tokio's timer (a millisecond, later under load): a rate is sent as evenly
            // spread records, not as bursts that queue behind each other in the producer.
            tasks.push(tokio::task::spawn_blocking(move || {
                let tally = Arc::new(Mutex::new(Tally {
                    latency: latency_histogram(),
                    acked_in_window: 0,
                    failed: 0,
                    first_error: None,
                }));
                let mut sent = 0u64;
                loop {
                    let now = Instant::now();
                    let due = match per_producer {
                        Some(r) => start + Duration::from_secs_f64(sent as f64 / r),
                        None => now,
                    };
                    if now >= end || due >= end {
                        break;
                    }
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let at = Instant::now();
                    let measured = at >= window_start;
                    let t = tally.clone();
                    let record = ProducerRecord::new(&topic, value.clone());
                    runtime.block_on(producer.send_with_callback(record, move |r| {
                        let now = Instant::now();
                        let Ok(mut t) = t.lock() else { return };
                        match r {
                            Ok(_) => {
                                if measured {
                                    let micros = at.elapsed().as_micros().max(1) as u64;
                                    t.latency.saturating_record(micros);
                                }
                                if now >= window_start && now <= end {
                                    t.acked_in_window += 1;
                                }
                            }
                            Err(e) => {
                                if measured {
                                    t.failed += 1;
                                }
                                t.first_error.get_or_insert_with(|| e.to_string());
                            }
                        }
                    }))?;
                    sent += 1;
                }
                // Every answer is in before the next step starts.
                runtime.block_on(producer.flush());
                let scheduled = per_producer.map_or(sent, |r| {
                    (r * end.duration_since(start).as_secs_f64()) as u64
                });
                let tally = Arc::try_unwrap(tally)
                    .ok()
                    .and_then(|m| m.into_inner().ok())
                    .ok_or_else(|| anyhow::anyhow!("a delivery callback outlived its flush"))?;
                anyhow::Ok((tally, scheduled.saturating_sub(sent)))
            }));
        }
        let before = self.scrape_at(window_start).await?;
        let after = self.scrape_at(end).await?;
        let mut latency = latency_histogram();
        let (mut acked, mut failed, mut not_sent) = (0u64, 0u64, 0u64);
        for t in tasks {
            let (tally, behind) = t.await.context("a bench producer task failed")??;
            latency.add(&tally.latency)?;
            acked += tally.acked_in_window;
            failed += tally.failed;
            not_sent += behind;
            if let Some(e) = tally.first_error {
                eprintln!("first error at {rate:?} records/s: {e}");
            }
        }
        let seconds = self.duration.as_secs_f64();
        let achieved_rate = acked as f64 / seconds;
        Ok(Step {
            target_rate: rate,
            achieved_rate,
            mb_per_second: achieved_rate * self.value.len() as f64 / 1e6,
            records: latency.len(),
            failed,
            not_sent,
            latency_ms: Latency::of(&latency),
            breakdown: match (before, after) {
                (Some(b), Some(a)) => Some(breakdown::figures(&b, &a)),
                _ => None,
            },
        })
    }

    /// The brokers' stage histograms at `at` (with --breakdown).
    async fn scrape_at(&self, at: Instant) -> anyhow::Result<Option<Scrape>> {
        if self.breakdown.is_empty() {
            return Ok(None);
        }
        tokio::time::sleep_until(at.into()).await;
        Ok(Some(breakdown::scrape(&self.breakdown).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_a_row_per_step_and_quotes_a_label_with_a_comma() {
        let step = |rate: Option<f64>| Step {
            target_rate: rate,
            achieved_rate: 4999.5,
            mb_per_second: 5.1,
            records: 49995,
            failed: 0,
            not_sent: 2,
            latency_ms: Latency {
                p50: 1.5,
                p99: 4.0,
                p999: 6.0,
                max: 9.0,
            },
            breakdown: None,
        };
        let run = SweepRun {
            label: "rf3, acks=all".into(),
            workload: "w".into(),
            max_rate: None,
            steps: vec![step(Some(5000.0)), step(None)],
        };
        let text = csv(&run);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[1],
            "\"rf3, acks=all\",5000,4999.5,5.10,1.500,4.000,6.000,9.000,49995,0,2"
        );
        assert!(lines[2].starts_with("\"rf3, acks=all\",,"));
        // What --json writes, `bench plot` reads back.
        let back: SweepRun = serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
        assert_eq!(back.steps.len(), 2);
        assert_eq!(back.steps[0].latency_ms.p99, 4.0);
    }
}
