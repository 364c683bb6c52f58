//! Serving: [`run`] takes a bound listener and a shutdown future, so tests bind port 0 and
//! stop brokers cleanly, and `sluice dev` runs several in one process.

use sluice_proto::pb::{
    admin_server::AdminServer, groups_server::GroupsServer, log_server::LogServer,
};
use std::future::Future;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use sluice_proto::pb::raft_server::RaftServer;

use crate::broker::{Addresses, Broker};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::service::raft::RaftService;
use crate::service::{AdminService, GroupsService, LogService};

use crate::raft::{CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES};

/// How long a graceful shutdown waits for in-flight requests before closing connections.
pub const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a stopping broker waits for its background tasks (after its Raft groups have
/// stopped, every one of them ends within about a second: pings, takeovers and hand-offs are
/// bounded by their own timeouts).
const TASKS_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens the broker on `config.data_dir` and serves on `listener` until `shutdown`
/// resolves; then stops accepting, finishes in-flight requests, flushes and closes every
/// log so that the next start is fast.
///
/// `raft` is the inter-broker listener; a single-broker cluster (no controller voters
/// configured) needs none. `http` serves `/metrics` and the health endpoints (see
/// [`crate::http`]) from before the logs open, so `/livez` answers during a long start.
pub async fn run(
    config: Config,
    listener: TcpListener,
    raft: Option<TcpListener>,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let local = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener address: {e}")))?;
    let raft_local = match &raft {
        Some(l) => Some(
            l.local_addr()
                .map_err(|e| Error::Internal(format!("raft listener address: {e}")))?,
        ),
        None => None,
    };
    if !config.controller_quorum_voters.is_empty() && raft.is_none() {
        return Err(Error::Internal(
            "controller voters are configured but there is no inter-broker listener".into(),
        ));
    }
    let addresses = Addresses {
        client: config
            .advertised_address
            .clone()
            .unwrap_or_else(|| local.to_string()),
        raft: config
            .advertised_raft_address
            .clone()
            .or_else(|| {
                config
                    .controller_quorum_voters
                    .get(&config.node_id)
                    .cloned()
            })
            .or_else(|| raft_local.map(|a| a.to_string()))
            .unwrap_or_default(),
    };
    let mut voters = config.controller_quorum_voters.clone();
    if voters.is_empty() {
        voters.insert(config.node_id, addresses.raft.clone());
    }
    let shutdown_timeout = config.shutdown_timeout;
    if let crate::config::FlushPolicy::Interval(every) = config.flush {
        tracing::warn!(interval = ?every, "--flush with an interval applies only to factor-1 topics created by versions before factor 1 became a one-voter Raft group; every Raft log fsyncs before it acknowledges");
    }
    let broker = Broker::open(config, addresses, voters).await?;
    let raft_server = raft.map(|l| {
        let stop = broker.shutdown.clone();
        let max = broker.config.max_request_bytes;
        let service = RaftServer::new(RaftService {
            controller: broker.controller.clone(),
            groups: broker.groups.clone(),
            quiesced: broker.quiesced.clone(),
            stages: broker.metrics.stages(),
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
        tokio::spawn(
            tonic::transport::Server::builder()
                .initial_stream_window_size(STREAM_WINDOW_BYTES)
                .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
                .add_service(service)
                .serve_with_incoming_shutdown(
                    closing_with(TcpIncoming::from(l).with_nodelay(Some(true)), stop.clone()),
                    async move { stop.cancelled().await },
                ),
        )
    });
    let http_server = http.map(|l| {
        tokio::spawn(crate::http::serve(
            broker.clone(),
            l,
            broker.shutdown.clone(),
        ))
    });
    // The inter-broker listener serves before the logs open (so the controller's
    // heartbeats reach this broker meanwhile); the client listener after.
    if let Err(e) = broker.open_logs().await {
        broker.shutdown.cancel();
        if let Some(server) = raft_server {
            server.abort();
        }
        if let Some(server) = http_server {
            server.abort();
        }
        return Err(e);
    }
    let retention = tokio::spawn(broker.clone().run_retention());
    let max = broker.config.max_request_bytes;
    tracing::info!(address = %local, node_id = broker.config.node_id, flush = %broker.config.flush, "serving");
    let stop = broker.shutdown.clone();
    let peers = broker.peers.clone();
    let handing_off = broker.clone();
    let controlled = broker.config.controlled_shutdown_timeout;
    // Options on the builder apply only to listeners tonic binds itself; set them here.
    let incoming = closing_with(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        broker.shutdown.clone(),
    );
    broker
        .serving
        .store(true, std::sync::atomic::Ordering::Release);
    let served = tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .add_service(AdminServer::new(AdminService::new(broker.clone())))
        .add_service(
            GroupsServer::new(GroupsService::new(broker.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            LogServer::new(LogService::new(broker.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            // Still serving: writes that arrive during a hand-off are answered NOT_LEADER
            // with the new leader.
            if !controlled.is_zero() {
                handing_off.hand_off_leaderships(controlled).await;
            }
            tracing::info!("shutting down: finishing in-flight requests");
            peers.close();
            // Long-polls end now rather than at their deadline.
            stop.cancel();
        });
    // Clients may keep their connections open after the server's GOAWAY; in-flight requests
    // get DRAIN_GRACE to finish, then the connections are dropped.
    let stopping = broker.shutdown.clone();
    let result = tokio::select! {
        r = served => r.map_err(|e| Error::Internal(format!("server failed: {e}"))),
        _ = async { stopping.cancelled().await; tokio::time::sleep(DRAIN_GRACE).await } => {
            tracing::info!(grace = ?DRAIN_GRACE, "closing connections that are still open");
            Ok(())
        }
    };
    retention.abort();
    broker.shutdown.cancel();
    if let Some(server) = raft_server {
        server.abort();
    }
    if let Some(server) = http_server {
        server.abort();
    }
    broker.stop_replicas().await;
    broker.controller.shutdown().await;
    // Every background task ends on the shutdown token or with its Raft group.
    broker.tasks.close();
    if tokio::time::timeout(TASKS_STOP_WAIT, broker.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(tasks = broker.tasks.len(), timeout = ?TASKS_STOP_WAIT, "background tasks still running at shutdown; stopping without them");
    }
    let b = broker.clone();
    let closed = tokio::task::spawn_blocking(move || b.close());
    if tokio::time::timeout(shutdown_timeout, closed)
        .await
        .is_err()
    {
        tracing::error!(timeout = ?shutdown_timeout, "closing logs took too long; the next start will recover them");
    }
    result
}

/// The accepted connections of a listener, ending (and closing the listening socket) when
/// `stop` is cancelled. A socket that is still open but no longer accepted from completes
/// new TCP handshakes into its backlog, so a client reconnecting to a stopping broker would
/// hang until the process exits instead of being refused at once and moving on.
fn closing_with(
    incoming: TcpIncoming,
    stop: tokio_util::sync::CancellationToken,
) -> impl futures::Stream<Item = <TcpIncoming as futures::Stream>::Item> {
    use futures::StreamExt;
    incoming.take_until(stop.cancelled_owned())
}

/// Structured logs to stderr; `RUST_LOG` filters. The default is `info` for Sluice and
/// `error` for openraft. Its info lines (a full Raft state dump per group start, every
/// vote) would bury the broker's own with 1,000 partitions, and its warnings are about
/// stale messages every election leaves behind (a vote answered after the election was
/// decided, replication to a deposed term): about one per partition on every start.
/// Sluice logs what an operator acts on itself: leaderships taken, brokers down, campaigns.
/// `RUST_LOG=info,openraft=warn` shows them again.
pub const DEFAULT_LOG_FILTER: &str = "info,openraft=error";

/// Installs the stderr subscriber with `RUST_LOG` or [`DEFAULT_LOG_FILTER`].
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colour for a person at a terminal; plain text in a log file, for grep.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::registry()
        .with(log_layer(std::io::stderr, ansi, filter))
        .try_init();
}

/// The broker's log output: `filter`, less openraft's line per failed Raft call (see
/// [`is_per_call_raft_error`]).
pub fn log_layer<S, W>(
    writer: W,
    ansi: bool,
    filter: tracing_subscriber::EnvFilter,
) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer;
    tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer)
        .with_filter(filter)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            !is_per_call_raft_error(meta)
        }))
}

/// openraft 0.9's replication stream logs every failed call at ERROR (`RPCError`, with an
/// `err` field): with a broker down, each group leading a replica on it does so on every
/// retry, 25-500 ms apart. The network layer reports the same failures once per peer and
/// interval instead ([`crate::raft::PeerChannels::call_failed`]), with the
/// error. openraft's other errors (storage, its `error` field) still show, and
/// `RUST_LOG=info,openraft=warn` shows each failed call again (openraft's own warning line).
///
/// Its Raft core does the same for each vote request that fails or times out (`while
/// requesting vote`, `timeout`: fields `error` and `target`, the peer): with two of three
/// brokers down, 612 lines of it in 140 s. Those calls go through the same network layer
/// and are reported there too. The core's other errors (no `target` field) still show.
pub fn is_per_call_raft_error(meta: &tracing::Metadata<'_>) -> bool {
    if *meta.level() != tracing::Level::ERROR {
        return false;
    }
    let fields = meta.fields();
    match meta.target() {
        "openraft::replication" => fields.field("err").is_some(),
        "openraft::core::raft_core" => {
            fields.field("error").is_some() && fields.field("target").is_some()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_log_leaves_out_openrafts_line_per_failed_call_and_keeps_its_other_errors() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::registry().with(log_layer(
            move || writer.clone(),
            false,
            tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER),
        ));
        tracing::subscriber::with_default(subscriber, || {
            // The shapes of openraft 0.9.25's own events (replication/mod.rs).
            tracing::error!(target: "openraft::replication", err = %"Unreachable node: tcp connect error", "RPCError");
            tracing::error!(target: "openraft::replication", error = %"disk full", "error replication to target=3");
            tracing::warn!(target: "openraft::replication", error = %"stale", "error replication to target=3");
            tracing::error!(target: "openraft::core::raft_core", error = %"refused", target = %"2", "while requesting vote");
            tracing::error!(target: "openraft::core::raft_core", error = %"log corrupt", "quit RaftCore::main on error");
            tracing::info!(broker = 3, "broker answers again");
        });
        let log = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(!log.contains("RPCError"), "{log}");
        assert!(
            log.contains("disk full"),
            "openraft's storage error is kept: {log}"
        );
        assert!(!log.contains("while requesting vote"), "{log}");
        assert!(
            log.contains("quit RaftCore::main"),
            "openraft's fatal core error is kept: {log}"
        );
        assert!(
            !log.contains("stale"),
            "openraft's warnings stay off by default: {log}"
        );
        assert!(log.contains("broker answers again"), "{log}");
    }
}
