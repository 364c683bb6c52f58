//! The Sluice Kubernetes operator: the custom resources `SluiceCluster` (brokers as a
//! StatefulSet) and `SluiceTopic` (the manifest type of `sluice apply`, from
//! `sluice-manifest`), and their CRDs, generated from these types.
//!
//! Layout: `cluster` (the SluiceCluster types), `crd` (the CRDs as YAML).
//! **Planned** (see docs/DESIGN.md, declarative operation): the reconcilers, leader
//! election, the operator's own metrics.

pub mod cluster;
pub mod crd;

pub use cluster::{SluiceCluster, SluiceClusterSpec, SluiceClusterStatus};
pub use sluice_manifest::SluiceTopic;
