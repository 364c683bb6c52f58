//! The Sluice broker: stores partition logs in segment files and serves them over gRPC.
//!
//! # Layout
//! - [`config`]: settings from YAML, `SLUICE_*` environment and flags.
//! - [`server`]: [`server::run`], which takes a bound listener and a shutdown future.
//! - [`broker`]: topics, partitions, the flusher, retention, admin operations.
//! - [`partition`]: one partition: validate, append, read, high watermark, flush.
//! - [`storage`]: the [`storage::LogStorage`] trait and its segment-file implementation.
//! - [`metadata`]: topics and node identity, durable in sled.
//! - [`service`]: the gRPC handlers, one file per RPC group.
//! - [`error`]: [`Error`], with its one conversion to `tonic::Status`.

pub mod broker;
pub mod config;
pub mod controller;
pub mod error;
pub mod metadata;
pub mod partition;
pub mod replica;
pub mod server;
pub mod service;
pub mod storage;

pub use config::{Config, FlushPolicy};
pub use error::{Error, Result};
