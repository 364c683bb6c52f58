//! `sluice dev`: a local cluster in this process, for trying Sluice and for development.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use sluice_broker::config::{Config, FlushPolicy};
use sluice_client::{Admin, ErrorCode, NewTopic};

use super::Context;

/// How long `sluice dev` waits for its brokers to register before creating the example topic.
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How to run the CLI from a checkout: the release build, the one `sluice dev` itself is run
/// with in the README (a debug build would be a second, slower build). The README's tour
/// says the same.
const SLUICE_FROM_SOURCE: &str = "cargo run -q --release --bin sluice --";

/// The CLI's `--bootstrap` default, which `sluice dev` serves with its default `--port`.
pub(crate) const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9092";

/// The example topic `sluice dev` creates.
const EXAMPLE_TOPIC: &str = "events";
const EXAMPLE_PARTITIONS: i32 = 6;
/// At most this many brokers are controller voters (Kafka's usual three).
const MAX_VOTERS: u32 = 3;
/// Broker i's inter-broker port is its client port plus this.
const RAFT_PORT_OFFSET: u16 = 10_000;

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Number of brokers; the first three are the controller quorum.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    brokers: u32,
    /// Where the brokers keep their data (one sub-directory per broker).
    #[arg(long, default_value = "./.sluice-dev")]
    data_dir: PathBuf,
    /// Client port of the first broker; broker i listens on PORT+i-1, and for other
    /// brokers on PORT+i-1+10000.
    #[arg(long, default_value_t = 9092)]
    port: u16,
    /// HTTP port (/metrics, /livez, /readyz, /ready-to-stop) of the first broker; broker i
    /// uses PORT+i-1; 0 picks free ports.
    #[arg(long, default_value_t = 9644)]
    http_port: u16,
    /// Flush policy: `always` or an interval such as `100ms`.
    #[arg(long, default_value = sluice_broker::config::DEFAULT_FLUSH)]
    flush: FlushPolicy,
    /// Topic manifests to apply once the brokers are up (a file or a directory) [default:
    /// the example topics of examples/topics.yaml, with 3 brokers or more]
    #[arg(long, value_name = "PATH")]
    topics: Option<PathBuf>,
    /// Apply no topic manifests at start.
    #[arg(long, conflicts_with = "topics")]
    no_topics: bool,
}

/// The example topics (replication factor 3), applied by default.
const EXAMPLE_MANIFESTS: &str = include_str!("../../../examples/topics.yaml");

/// The example topic: replicated three ways (two in sync for acks=all) when there are
/// enough brokers.
fn example_topic(brokers: u32) -> NewTopic {
    let rf = brokers.min(3) as i32;
    NewTopic::new(EXAMPLE_TOPIC, EXAMPLE_PARTITIONS, rf)
        .config("min.insync.replicas", rf.min(2).to_string())
}

pub(crate) async fn run(ctx: &Context, args: DevArgs) -> anyhow::Result<()> {
    sluice_broker::server::init_tracing();
    let n = args.brokers;
    let client_port = |i: u32| args.port + (i - 1) as u16;
    let voters = (1..=n.min(MAX_VOTERS))
        .map(|i| {
            (
                i as i32,
                format!("127.0.0.1:{}", client_port(i) + RAFT_PORT_OFFSET),
            )
        })
        .collect::<std::collections::BTreeMap<_, _>>();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for i in 1..=n {
        let address = format!("127.0.0.1:{}", client_port(i));
        let raft_address = format!("127.0.0.1:{}", client_port(i) + RAFT_PORT_OFFSET);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| {
                format!("cannot listen on {address} (is another broker running? try --port)")
            })?;
        let raft = tokio::net::TcpListener::bind(&raft_address)
            .await
            .with_context(|| {
                format!("cannot listen on {raft_address} (is another broker running? try --port)")
            })?;
        let http_address = format!(
            "127.0.0.1:{}",
            if args.http_port == 0 {
                0
            } else {
                args.http_port + (i - 1) as u16
            }
        );
        let http = tokio::net::TcpListener::bind(&http_address)
            .await
            .with_context(|| {
                format!("cannot listen on {http_address} for /metrics (is another broker running? try --http-port, 0 picks free ports)")
            })?;
        let config = Config {
            node_id: i as i32,
            data_dir: args.data_dir.join(format!("broker-{i}")),
            listen: listener.local_addr()?,
            controller_quorum_voters: voters.clone(),
            flush: args.flush,
            // All brokers stop together: there is nobody to hand leadership to.
            controlled_shutdown_timeout: std::time::Duration::ZERO,
            ..Config::default()
        };
        let mut stop = stop_rx.clone();
        servers.spawn(sluice_broker::server::run(
            config,
            listener,
            Some(raft),
            Some(http),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
    }
    let bootstrap = (1..=n)
        .map(|i| format!("127.0.0.1:{}", client_port(i)))
        .collect::<Vec<_>>()
        .join(",");
    let mut client = sluice_client::ClientConfig::new(&bootstrap);
    client.request_timeout = std::time::Duration::from_secs(30);
    let admin = Admin::new(client)?;
    // The brokers register with the controller as they start; a replicated example topic
    // needs all of them known and answering, which takes a moment after the listeners open.
    let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        match admin.create_topic(example_topic(n), false).await {
            Ok(_) => break,
            Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => break,
            Err(e)
                if e.code() == Some(ErrorCode::InvalidReplicationFactor)
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(e).context(format!(
                    "creating the example topic (the {n} brokers had {STARTUP_TIMEOUT:?} to start)"
                ));
            }
        }
    }
    let manifests = match (&args.topics, args.no_topics) {
        (_, true) => None,
        (Some(path), false) => Some(sluice_manifest::read_inputs(
            std::slice::from_ref(path),
            true,
        )?),
        // The examples ask for three replicas.
        (None, false) if n >= 3 => Some(vec![(
            "examples/topics.yaml".to_string(),
            EXAMPLE_MANIFESTS.to_string(),
        )]),
        (None, false) => {
            eprintln!(
                "note: the example topics of examples/topics.yaml need 3 brokers; with {n}, only '{EXAMPLE_TOPIC}' is created (--topics FILE applies your own)"
            );
            None
        }
    };
    let mut declared = String::new();
    if let Some(inputs) = manifests {
        let m = sluice_manifest::parse(&inputs)?;
        let options = super::apply::Options {
            dry_run: false,
            prune: false,
            yes: false,
            wait: None,
            stdin_used: false,
        };
        let names: Vec<&str> = inputs.iter().map(|(f, _)| f.as_str()).collect();
        super::apply::apply_loaded(ctx, &admin, &m, &options)
            .await
            .with_context(|| format!("applying the topic manifests {}", names.join(", ")))?;
        let topics: Vec<String> = m
            .topics
            .iter()
            .map(|t| format!("'{}'", t.manifest.topic_name()))
            .collect();
        declared = format!(
            "Declared in {}: {} (`sluice diff -f {}` shows what an edit would change).\n",
            names.join(", "),
            topics.join(", "),
            names.join(" -f ")
        );
    }
    let first = format!("127.0.0.1:{}", args.port);
    let sluice = SLUICE_FROM_SOURCE;
    let bootstrap_hint = if first == DEFAULT_BOOTSTRAP {
        format!("The CLI's default --bootstrap is {first}.")
    } else {
        format!("Add --bootstrap {first}: the CLI's default is {DEFAULT_BOOTSTRAP}.")
    };
    outln!(
        "\nSluice is running: {n} broker(s), bootstrap {bootstrap}, data in {}\n\
         Example topic: '{EXAMPLE_TOPIC}' ({EXAMPLE_PARTITIONS} partitions, replication factor {}).\n{declared}In another terminal, try:\n\n  \
         {sluice} cluster status\n  \
         printf 'alice:signed up\\nbob:paid\\nalice:logged in\\n' | {sluice} produce {EXAMPLE_TOPIC} --key-separator :\n  \
         {sluice} consume {EXAMPLE_TOPIC} --from-beginning --format '{{partition}}@{{offset}} {{key}} {{value}}' --timeout 2s\n  \
         {sluice} topics describe {EXAMPLE_TOPIC}\n  \
         {sluice} bench produce --records 200000\n\n\
         (`cargo install --path cli` puts `sluice` on your PATH instead. {bootstrap_hint}) Press Ctrl-C to stop; data is kept for the next run.\n",
        args.data_dir.display(),
        n.min(3)
    );
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        Some(r) = servers.join_next() => {
            r.context("broker task")?.context("broker")?;
            anyhow::bail!("a broker stopped unexpectedly; see the log above");
        }
    }
    eprintln!("Stopping...");
    let _ = stop_tx.send(true);
    while let Some(r) = servers.join_next().await {
        r.context("broker task")?.context("broker")?;
    }
    eprintln!("Stopped cleanly.");
    Ok(())
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_example_manifests_are_valid() {
        let m = sluice_manifest::parse(&[(
            "examples/topics.yaml".to_string(),
            EXAMPLE_MANIFESTS.to_string(),
        )])
        .unwrap_or_else(|p| panic!("{p}"));
        let names: Vec<&str> = m.topics.iter().map(|t| t.manifest.topic_name()).collect();
        assert_eq!(names, ["orders", "customers", "clickstream"]);
    }
}
