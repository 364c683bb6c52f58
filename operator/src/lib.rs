//! The Sluice Kubernetes operator: the custom resources `SluiceCluster` (brokers as a
//! StatefulSet) and `SluiceTopic` (the manifest type of `sluice apply`, from
//! `sluice-manifest`), and their CRDs, generated from these types.
//!
//! Layout: `cluster` (the SluiceCluster types), `controller` (the watch, finalizer and
//! status writes around `topic`), `crd` (the CRDs as YAML), `resources` (the
//! Kubernetes objects a SluiceCluster is made of), `topic` (one SluiceTopic reconciled with
//! the cluster through the admin API).
//! **Planned** (see docs/DESIGN.md, declarative operation): leader election, Events, the
//! SluiceCluster reconciler, the operator's own metrics and health endpoints.

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
