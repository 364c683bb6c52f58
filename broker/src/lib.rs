//! The Sluice broker: stores partition logs in segment files and serves them over gRPC.
//!
//! # Layout
//! - [`clock`]: wall-clock milliseconds (a leaf every layer may use).
//! - [`config`]: settings from YAML, `SLUICE_*` environment and flags.
//! - [`server`]: [`server::run`], which takes a bound listener and a shutdown future.
//! - [`broker`]: topics, partitions, the flusher, retention, admin operations, liveness.
//! - [`controller`]: the metadata Raft group (KRaft-like).
//! - [`raft`]: Raft over gRPC for every group: peer connections and health, the transport,
//!   the registry of partition groups.
//! - [`partition`]: an unreplicated partition (factor 1 as earlier versions made it): validate,
//!   append, read, high watermark, flush.
//! - [`producer_state`]: idempotent producers: what each partition remembers to drop retries.
//! - [`replica`]: Raft-replicated partitions (factor 1 included): a Raft group per
//!   partition on segment files.
//! - [`coordinator`]: consumer groups' committed offsets in `__consumer_offsets`, kept by
//!   the leader of the group's partition there.
//! - [`storage`]: the [`storage::LogStorage`] trait and its segment-file implementation.
//! - [`metadata`]: topics and node identity, durable in sled.
//! - [`service`]: the gRPC handlers, one file per RPC group.
//! - [`http`]: `/metrics`, `/livez`, `/readyz`, `/ready-to-stop` (beside `service`, at the edge).
//! - [`error`]: [`Error`], with its one conversion to `tonic::Status`.
//! - [`live_config`]: a topic's config as its partitions read it, replaced when altered.
//! - [`metrics`]: request metrics recorded as requests are served (a leaf).

pub(crate) mod broker;
pub(crate) mod clock;
pub mod config;
pub(crate) mod controller;
pub(crate) mod coordinator;
pub(crate) mod error;
pub(crate) mod http;
pub(crate) mod live_config;
pub(crate) mod metadata;
pub(crate) mod metrics;
pub(crate) mod partition;
pub(crate) mod producer_state;
pub(crate) mod raft;
pub(crate) mod replica;
pub mod server;
pub(crate) mod service;
pub mod storage;

pub use config::{Config, FlushPolicy};
pub use error::{Error, Result};
