//! Raft over gRPC for every group this broker is in (the controller's and each
//! partition's), below both: they share one connection per peer.
//!
//! # Layout
//! - [`peers`]: the connection pool and peer health (answers, refused connections, failing
//!   calls logged once per peer and interval).
//! - [`transport`]: openraft's `RaftNetwork` over those connections, for any type config.
//! - [`groups`]: the partition groups this broker is in, for routing incoming calls, and the
//!   quiesced ones.
//!
//! The server side, which routes incoming calls to their group, is
//! [`crate::service::raft::RaftService`].

pub(crate) mod groups;
pub(crate) mod peers;
pub(crate) mod transport;

pub(crate) use groups::{Groups, Quiesced};
pub(crate) use peers::{CONNECTION_WINDOW_BYTES, PeerChannels, STREAM_WINDOW_BYTES, is_refused};
pub(crate) use transport::Network;

/// The controller's Raft group id.
pub(crate) const CONTROLLER_GROUP: u64 = 0;
