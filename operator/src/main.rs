//! `sluice-operator`: `run` reconciles SluiceClusters and SluiceTopics (one replica at a
//! time: leader election with a Lease) and serves its metrics and health; `crd` writes
//! the CRDs generated from the types.

use std::path::PathBuf;

use std::sync::Arc;

use clap::{Parser, Subcommand};
use sluice_operator::controller::{self, Context};
use sluice_operator::{cluster_controller, lease, telemetry};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "sluice-operator",
    version,
    about = "The Sluice Kubernetes operator."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch SluiceClusters and SluiceTopics and keep each cluster and its topics as they
    /// declare (in-cluster credentials, or the kubeconfig outside a cluster).
    Run {
        /// Brokers to use for every SluiceTopic (when running outside the cluster); by
        /// default each topic's clusterRef names its cluster's client Service.
        #[arg(long, env = "SLUICE_BOOTSTRAP")]
        bootstrap: Option<String>,
        /// Where `/metrics`, `/livez` and `/readyz` are served (`off`: nowhere).
        #[arg(
            long,
            default_value = "0.0.0.0:8080",
            env = "SLUICE_OPERATOR_HTTP_LISTEN"
        )]
        http_listen: String,
        /// Run without leader election (only ever one replica).
        #[arg(long)]
        no_leader_election: bool,
        /// The Lease replicas elect a leader with.
        #[arg(long, default_value = "sluice-operator")]
        lease_name: String,
        /// The namespace of that Lease [default: this pod's namespace, else `default`].
        #[arg(long, env = "POD_NAMESPACE")]
        lease_namespace: Option<String>,
        /// This replica's name in the Lease [default: this pod's name, else the host name].
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
    },
    /// Print the CustomResourceDefinitions (SluiceCluster, SluiceTopic) as YAML, or write
    /// one file each into --out-dir.
    Crd {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

/// Stops on SIGTERM or Ctrl-C.
fn stop_on_signal() -> CancellationToken {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::info!("stopping");
        token.cancel();
    });
    stop
}

async fn run(
    bootstrap: Option<String>,
    http_listen: String,
    election: Option<(String, String, String)>,
) -> anyhow::Result<()> {
    let stop = stop_on_signal();
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the Kubernetes API (in-cluster credentials or kubeconfig): {e}"
        )
    })?;
    let ctx = Arc::new(Context::new(client.clone(), bootstrap));
    if http_listen != "off" {
        let listener = tokio::net::TcpListener::bind(&http_listen)
            .await
            .map_err(|e| anyhow::anyhow!("--http-listen {http_listen}: {e}"))?;
        tracing::info!(address = %http_listen, "serving /metrics, /livez, /readyz");
        tokio::spawn(telemetry::serve(
            ctx.metrics.clone(),
            listener,
            stop.clone().cancelled_owned(),
        ));
    }
    client.apiserver_version().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the Kubernetes API (in-cluster credentials or kubeconfig): {e}"
        )
    })?;
    ctx.metrics.set_ready();
    let mut elector = election.map(|(name, ns, identity)| {
        lease::Elector::new(
            client.clone(),
            &ns,
            &name,
            &identity,
            lease::Timing::default(),
        )
    });
    if let Some(e) = elector.as_mut() {
        tracing::info!(identity = e.identity(), "waiting for the leader Lease");
        tokio::select! {
            _ = e.acquire() => {}
            _ = stop.cancelled() => return Ok(()),
        }
        tracing::info!(
            identity = e.identity(),
            "holding the leader Lease: reconciling"
        );
    }
    ctx.metrics.set_leader(true);
    let controllers = futures::future::join(
        controller::run_topics(ctx.clone(), stop.clone().cancelled_owned()),
        cluster_controller::run(ctx.clone(), stop.clone().cancelled_owned()),
    );
    let lost = async {
        match elector.as_mut() {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = controllers => {}
        _ = lost => {
            ctx.metrics.set_leader(false);
            anyhow::bail!("lost the leader Lease (another replica holds it, or it could not be renewed in time); exiting so this replica restarts as a standby");
        }
    }
    if let Some(e) = elector.as_mut() {
        e.release().await;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            bootstrap,
            http_listen,
            no_leader_election,
            lease_name,
            lease_namespace,
            identity,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,kube=warn".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let election = (!no_leader_election).then(|| {
                let identity = identity
                    .or_else(|| std::env::var("HOSTNAME").ok())
                    .unwrap_or_else(|| format!("sluice-operator-{}", std::process::id()));
                (
                    lease_name,
                    lease_namespace.unwrap_or_else(|| "default".into()),
                    identity,
                )
            });
            runtime.block_on(run(bootstrap, http_listen, election))?;
        }
        Command::Crd { out_dir } => {
            let crds = sluice_operator::crd::crds()?;
            match out_dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    for (name, yaml) in crds {
                        let path = dir.join(name);
                        std::fs::write(&path, yaml)
                            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
                        eprintln!("wrote {}", path.display());
                    }
                }
                None => {
                    for (_, yaml) in crds {
                        print!("---\n{yaml}");
                    }
                }
            }
        }
    }
    Ok(())
}
