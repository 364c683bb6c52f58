//! `sluice-operator`: `run` reconciles SluiceTopics with their clusters (the SluiceCluster
//! reconciler is planned: docs/DESIGN.md); `crd` writes the CRDs generated from the types.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Watch SluiceTopics and keep each cluster's topics as they declare (in-cluster
    /// credentials, or the kubeconfig outside a cluster).
    Run {
        /// Brokers to use for every SluiceTopic (when running outside the cluster); by
        /// default each topic's clusterRef names its cluster's client Service.
        #[arg(long, env = "SLUICE_BOOTSTRAP")]
        bootstrap: Option<String>,
    },
    /// Print the CustomResourceDefinitions (SluiceCluster, SluiceTopic) as YAML, or write
    /// one file each into --out-dir.
    Crd {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run { bootstrap } => {
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
            runtime.block_on(async {
                let client = kube::Client::try_default().await.map_err(|e| {
                    anyhow::anyhow!("cannot reach the Kubernetes API (in-cluster credentials or kubeconfig): {e}")
                })?;
                let ctx = std::sync::Arc::new(sluice_operator::controller::Context::new(client, bootstrap));
                tracing::info!("watching SluiceTopics");
                sluice_operator::controller::run_topics(ctx).await;
                anyhow::Ok(())
            })?;
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
