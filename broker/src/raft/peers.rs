//! The connection pool to other brokers (one lazily connected HTTP/2 channel per address,
//! shared by every Raft group, forwarding and pings) and what it learns of each peer's
//! health: when it last answered, whether its process is gone (connections refused), and
//! failing calls, logged once per peer and interval.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_proto::pb::{self, raft_client::RaftClient};
use tonic::transport::{Channel, Endpoint};

/// HTTP/2 flow-control windows of every connection (client and inter-broker listeners, peer
/// channels): large enough that one connection carries a full-speed stream of MiB-sized
/// batches without waiting for window updates.
pub(crate) const STREAM_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
pub(crate) const CONNECTION_WINDOW_BYTES: u32 = 64 * 1024 * 1024;

/// One lazily connected channel per peer address, shared by all groups and by forwarding.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// When each node last answered a Raft RPC (heartbeats included): follower liveness
    /// for the in-sync set.
    answered: Arc<Mutex<HashMap<u64, std::time::Instant>>>,
    /// Since when each node's broker has refused connections (its process is gone), until
    /// it answers again.
    refused: Arc<Mutex<HashMap<u64, std::time::Instant>>>,
    /// Failing Raft calls to each node, for the log (see [`PeerChannels::call_failed`]).
    health: Arc<Mutex<HashMap<u64, CallHealth>>>,
    /// This broker is shutting down: its peers (stopping too, with `sluice dev`) failing
    /// its last calls is expected, not news.
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// Where replication round trips are timed.
    stages: crate::metrics::Stages,
}

/// At most one warning per peer this often while Raft calls to it fail. Every group calls
/// every peer it replicates to, backing off only to 500 ms: a broker down for a minute used
/// to leave a line per call in its peers' logs (about 30 a second with 12 partitions).
pub(crate) const CALL_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Raft calls to one peer: the current run of failures and the last warning about it.
#[derive(Debug, Default)]
struct CallHealth {
    failing_since: Option<std::time::Instant>,
    failures: u64,
    /// Whether this run of failures was warned about (its end is then logged too).
    warned: bool,
    last_warning: Option<std::time::Instant>,
}

/// What [`PeerChannels::call_failed`] or [`PeerChannels::call_answered`] logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallReport {
    Quiet,
    /// The first warning of a run of failures.
    Failing,
    /// A later warning of the same run, one interval on.
    StillFailing,
    /// Calls answer again after a run that was warned about.
    Recovered,
}

impl PeerChannels {
    /// Channels that time replication round trips into `stages`.
    pub(crate) fn with_stages(stages: crate::metrics::Stages) -> Self {
        PeerChannels {
            stages,
            ..PeerChannels::default()
        }
    }

    pub(crate) fn stages(&self) -> &crate::metrics::Stages {
        &self.stages
    }

    pub(crate) fn client(&self, address: &str) -> Result<RaftClient<Channel>, String> {
        self.channel(address).map(RaftClient::new)
    }

    /// The channel to a broker's address (its Raft or its client listener).
    pub(crate) fn channel(&self, address: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("invalid peer address '{address}': {e}"))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Records that `node` answered (a ping or a Raft call). If it had answered before and
    /// refused connections since (reported down), since when it refused.
    /// Notes that `node` answered a Raft call (follower liveness for the in-sync set).
    pub(crate) fn note_raft_answer(&self, node: u64) {
        self.answered.lock().insert(node, std::time::Instant::now());
    }

    pub(crate) fn mark_answer(&self, node: u64) -> Option<std::time::Instant> {
        let answered_before = self
            .answered
            .lock()
            .insert(node, std::time::Instant::now())
            .is_some();
        let refused = self.refused.lock().remove(&node);
        refused.filter(|_| answered_before)
    }

    /// Records that `node`'s broker refused a connection; true if it was answering until now.
    pub(crate) fn mark_refused(&self, node: u64) -> bool {
        let mut refused = self.refused.lock();
        if refused.contains_key(&node) {
            return false;
        }
        refused.insert(node, std::time::Instant::now());
        true
    }

    /// Whether `node`'s broker has refused connections since it last answered.
    pub(crate) fn refuses(&self, node: u64) -> bool {
        self.refused.lock().contains_key(&node)
    }

    /// When `node` last answered a Raft call from this broker.
    pub(crate) fn last_answer(&self, node: u64) -> Option<std::time::Instant> {
        self.answered.lock().get(&node).copied()
    }

    pub(crate) fn forget(&self, address: &str) {
        self.channels.lock().remove(address);
    }

    /// Records a failed Raft call to `node` and warns about it at most once per
    /// [`CALL_FAILURE_LOG_INTERVAL`] per peer, whatever the number of groups calling it.
    pub(crate) fn call_failed(
        &self,
        node: u64,
        address: &str,
        group: u64,
        rpc: pb::RaftRpc,
        error: &dyn std::fmt::Display,
    ) -> CallReport {
        self.call_failed_at(std::time::Instant::now(), node, address, group, rpc, error)
    }

    fn call_failed_at(
        &self,
        now: std::time::Instant,
        node: u64,
        address: &str,
        group: u64,
        rpc: pb::RaftRpc,
        error: &dyn std::fmt::Display,
    ) -> CallReport {
        if self.closing.load(std::sync::atomic::Ordering::Relaxed) {
            return CallReport::Quiet;
        }
        let report = {
            let mut health = self.health.lock();
            let h = health.entry(node).or_default();
            let since = *h.failing_since.get_or_insert(now);
            h.failures += 1;
            if h.last_warning
                .is_some_and(|t| now.duration_since(t) < CALL_FAILURE_LOG_INTERVAL)
            {
                None
            } else {
                h.last_warning = Some(now);
                let first = !h.warned;
                h.warned = true;
                Some((first, h.failures, now.duration_since(since)))
            }
        };
        let Some((first, failures, failing_for)) = report else {
            return CallReport::Quiet;
        };
        let (what, reported) = if first {
            let every = CALL_FAILURE_LOG_INTERVAL.as_secs();
            (
                format!("are failing (logged at most every {every}s while they do)"),
                CallReport::Failing,
            )
        } else {
            ("are still failing".to_string(), CallReport::StillFailing)
        };
        tracing::warn!(
            broker = node,
            %address,
            group,
            rpc = rpc.as_str_name(),
            %error,
            failures,
            failing_for = ?failing_for,
            "Raft calls to a broker {what}"
        );
        reported
    }

    /// This broker is shutting down: failed calls are no longer reported.
    pub(crate) fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records an answered Raft call to `node`; ends its run of failures, if any.
    pub(crate) fn call_answered(&self, node: u64) -> CallReport {
        let ended = {
            let mut health = self.health.lock();
            match health.get_mut(&node) {
                Some(h) if h.failing_since.is_some() => {
                    let since = h.failing_since.take();
                    let failures = std::mem::take(&mut h.failures);
                    let warned = std::mem::take(&mut h.warned);
                    warned.then(|| (failures, since.map(|s| s.elapsed())))
                }
                _ => return CallReport::Quiet,
            }
        };
        match ended {
            Some((failures, failed_for)) => {
                tracing::info!(
                    broker = node,
                    failures,
                    failed_for = ?failed_for.unwrap_or_default(),
                    "Raft calls to a broker succeed again"
                );
                CallReport::Recovered
            }
            None => CallReport::Quiet,
        }
    }
}

/// Whether a failed call found nobody listening at the peer's address: its broker process
/// is gone, certainly (see [`sluice_proto::is_connection_refused`]).
pub(crate) fn is_refused(status: &tonic::Status) -> bool {
    sluice_proto::is_connection_refused(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_calls_are_reported_once_per_peer_and_interval() {
        let peers = PeerChannels::default();
        let t0 = std::time::Instant::now();
        let fail = |at: Duration, node: u64, group: u64| {
            peers.call_failed_at(
                t0 + at,
                node,
                "127.0.0.1:1",
                group,
                pb::RaftRpc::AppendEntries,
                &"tcp connect error",
            )
        };
        // A broker goes down: every group replicating to it fails, over and over.
        assert_eq!(fail(Duration::ZERO, 3, 1), CallReport::Failing);
        for (i, group) in (1..=12).cycle().take(200).enumerate() {
            let at = Duration::from_millis(25 * i as u64);
            assert!(at < CALL_FAILURE_LOG_INTERVAL);
            assert_eq!(fail(at, 3, group), CallReport::Quiet, "call {i}");
        }
        // Another peer's failures are its own.
        assert_eq!(fail(Duration::from_secs(1), 2, 1), CallReport::Failing);
        // One interval on, one more line for the same run.
        assert_eq!(
            fail(CALL_FAILURE_LOG_INTERVAL, 3, 5),
            CallReport::StillFailing
        );
        assert_eq!(
            fail(CALL_FAILURE_LOG_INTERVAL + Duration::from_secs(1), 3, 6),
            CallReport::Quiet
        );
        // It is back: said once.
        assert_eq!(peers.call_answered(3), CallReport::Recovered);
        assert_eq!(peers.call_answered(3), CallReport::Quiet);
        // A blip soon after stays quiet, and so does its end: a flapping peer costs at most a
        // warning and a recovery line per interval.
        let soon = CALL_FAILURE_LOG_INTERVAL + Duration::from_secs(2);
        assert_eq!(fail(soon, 3, 1), CallReport::Quiet);
        assert_eq!(peers.call_answered(3), CallReport::Quiet);
        // A new run an interval after the last warning is warned about again.
        assert_eq!(
            fail(CALL_FAILURE_LOG_INTERVAL * 2, 3, 1),
            CallReport::Failing
        );
        assert_eq!(peers.call_answered(3), CallReport::Recovered);
        // A peer that never failed has nothing to report.
        assert_eq!(peers.call_answered(1), CallReport::Quiet);
        // A broker shutting down says nothing of its peers stopping with it.
        peers.close();
        assert_eq!(fail(CALL_FAILURE_LOG_INTERVAL * 4, 1, 1), CallReport::Quiet);
    }

    async fn ping(address: std::net::SocketAddr) -> Result<(), tonic::Status> {
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        let mut client = RaftClient::new(channel);
        let call = client.ping(pb::PingRequest { from: 1 });
        match tokio::time::timeout(Duration::from_millis(300), call).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(tonic::Status::deadline_exceeded("no answer")),
        }
    }

    /// Nobody listening is told apart from a peer that is slow to answer: only the first is
    /// proof that the broker's process is gone.
    #[tokio::test]
    async fn a_closed_port_is_refused_and_a_silent_peer_is_not() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
        let refused = ping(address).await.unwrap_err();
        assert!(is_refused(&refused), "{refused:?}");

        // Listening but never answering (a stopped process: the kernel still accepts).
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let slow = ping(silent.local_addr().unwrap()).await.unwrap_err();
        assert!(!is_refused(&slow), "{slow:?}");
    }
}
