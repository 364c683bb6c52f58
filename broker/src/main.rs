//! `sluice-broker`: parses settings, binds the listener, serves until SIGTERM or Ctrl-C.

use clap::Parser;
use sluice_broker::config::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_broker::server::init_tracing();
    let config = Args::parse()
        .into_config()
        .map_err(|e| anyhow::anyhow!(e))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let raft = match config.raft_bind_address().map_err(|e| anyhow::anyhow!(e))? {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen for brokers on {addr}: {e}"))?,
        ),
        None => None,
    };
    let http = match config.http_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen for HTTP (metrics, health) on {addr}: {e}; set --http-listen to another HOST:PORT, or off"
            )
        })?),
        None => None,
    };
    // Scripts and tests read the bound addresses from these lines (useful with port 0).
    if let Some(r) = &raft {
        println!("raft listening on {}", r.local_addr()?);
    }
    if let Some(h) = &http {
        println!("http listening on {}", h.local_addr()?);
    }
    println!("listening on {}", listener.local_addr()?);
    sluice_broker::server::run(config, listener, raft, http, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(cause = %e, "cannot install the SIGTERM handler; only Ctrl-C stops the broker gracefully");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("received Ctrl-C"),
    }
}
