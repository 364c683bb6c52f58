//! The Sluice Kubernetes operator: the custom resources `SluiceCluster` (brokers as a
//! StatefulSet) and `SluiceTopic` (the manifest type of `sluice apply`, from
//! `sluice-manifest`), their CRDs, generated from these types, and the controllers that
//! reconcile them.
//!
//! Layout: `cluster` (the SluiceCluster types), `resources` (the Kubernetes objects a
//! SluiceCluster is made of), `cluster_controller` (a SluiceCluster reconciled: objects,
//! scaling after drains, rolling changes, status), `brokers` (what that asks the brokers:
//! `/ready-to-stop`, drains, `/metrics`), `topic` (one SluiceTopic reconciled with the cluster
//! through the admin API), `controller` (the shared `Context`, and the watch, finalizer and
//! status writes around `topic`), `conditions`, `lease` (leader election), `telemetry` (the
//! operator's own metrics and health endpoints), `crd` (the CRDs as YAML), and with the
//! `memory-api` feature `memory_api` (an in-memory API server for tests and benchmarks).

pub mod brokers;
pub mod cluster;
pub mod cluster_controller;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod lease;
#[cfg(feature = "memory-api")]
pub mod memory_api;
pub mod resources;
pub mod telemetry;
pub mod topic;

pub use cluster::{SluiceCluster, SluiceClusterSpec, SluiceClusterStatus};
pub use sluice_manifest::SluiceTopic;
