//! `sluice dev`: a local cluster in this process, for trying Sluice and for development.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use sluice_broker::{Config, FlushPolicy};
use sluice_client::{Admin, ErrorCode, NewTopic};

use super::Context;

/// The example topic `sluice dev` creates.
const EXAMPLE_TOPIC: &str = "events";
const EXAMPLE_PARTITIONS: i32 = 4;

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Number of brokers. Replication (and with it more than one broker) is on its way.
    #[arg(long, default_value_t = 1)]
    brokers: u32,
    /// Where the brokers keep their data (one sub-directory per broker).
    #[arg(long, default_value = "./.sluice-dev")]
    data_dir: PathBuf,
    /// Client port of the first broker.
    #[arg(long, default_value_t = 9092)]
    port: u16,
    /// Flush policy: `always` or an interval such as `100ms`.
    #[arg(long, default_value = sluice_broker::config::DEFAULT_FLUSH)]
    flush: FlushPolicy,
}

pub(crate) async fn run(_ctx: &Context, args: DevArgs) -> anyhow::Result<()> {
    if args.brokers != 1 {
        anyhow::bail!(
            "--brokers {}: this build runs single-broker clusters only; multi-broker clusters come with replication",
            args.brokers
        );
    }
    let address = format!("127.0.0.1:{}", args.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| {
            format!("cannot listen on {address} (is another broker running? try --port)")
        })?;
    let config = Config {
        node_id: 1,
        data_dir: args.data_dir.join("broker-1"),
        listen: listener.local_addr()?,
        flush: args.flush,
        ..Config::default()
    };
    sluice_broker::server::init_tracing();
    let data_dir = config.data_dir.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(sluice_broker::server::run(
        config,
        listener,
        None,
        async move {
            let _ = stop_rx.await;
        },
    ));

    let admin = Admin::new(sluice_client::ClientConfig::new(&address))?;
    match admin
        .create_topic(NewTopic::new(EXAMPLE_TOPIC, EXAMPLE_PARTITIONS, 1), false)
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
        Err(e) => return Err(e).context("creating the example topic"),
    }
    println!(
        "\nSluice is running: 1 broker, bootstrap {address}, data in {}\n\
         Example topic: '{EXAMPLE_TOPIC}' ({EXAMPLE_PARTITIONS} partitions). In another terminal, try:\n\n  \
         cargo run -q --release --bin sluice -- topics list\n  \
         printf 'alice:signed up\\nbob:paid\\nalice:logged in\\n' | cargo run -q --release --bin sluice -- produce {EXAMPLE_TOPIC} --key-separator :\n  \
         cargo run -q --release --bin sluice -- consume {EXAMPLE_TOPIC} --from-beginning --format '{{partition}}@{{offset}} {{key}} {{value}}' --timeout 2s\n  \
         cargo run -q --release --bin sluice -- topics describe {EXAMPLE_TOPIC}\n  \
         cargo run -q --release --bin sluice -- bench produce --records 200000\n\n\
         Press Ctrl-C to stop (data is kept for the next run).\n",
        data_dir.display()
    );
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        r = &mut server => {
            r.context("broker task")?.context("broker")?;
            anyhow::bail!("the broker stopped unexpectedly; see the log above");
        }
    }
    eprintln!("Stopping...");
    let _ = stop_tx.send(());
    server.await.context("broker task")?.context("broker")?;
    eprintln!("Stopped cleanly.");
    Ok(())
}
