//! The controller: cluster metadata (brokers, topics, partition assignments) replicated by
//! one Raft group across the controller voters, like Kafka's KRaft.
//!
//! # Layout
//! - [`types`]: the Raft type config, [`ClusterState`] and the commands that change it.
//! - [`store`]: the sled-backed Raft log and state machine.

pub mod store;
pub mod types;

pub use types::{BrokerRecord, ClusterState, MetaCommand, MetaRaft, MetaResponse};
