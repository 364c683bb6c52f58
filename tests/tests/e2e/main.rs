//! End-to-end tests against real broker processes. One test binary (one link) with a
//! module per area.

mod admin;
mod apply;
mod cli;
mod cluster;
mod consumer;
mod drain;
mod durability;
mod errors;
mod groups;
mod idempotence;
mod metrics;
mod processing;
mod produce_consume;
mod replication;
mod shutdown;
mod topic_changes;
