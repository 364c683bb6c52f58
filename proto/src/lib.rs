//! Sluice's shared vocabulary: the gRPC services and messages, Kafka-named error codes, the
//! record batch format with its CRC, and topic configuration with validation. No I/O happens
//! here, so the client and the broker agree on every byte without depending on each other.
//!
//! # Layout
//! - [`pb`]: code generated from `proto/sluice/v1/sluice.proto` (tonic services, messages).
//! - [`error_code`]: [`ErrorCode`], Kafka's names with a retriable flag, and the
//!   `tonic::Status` <-> [`pb::ErrorDetail`] conversion both sides use.
//! - [`batch`]: record batch encoding, decoding and checksum (Kafka's v2 layout).
//! - [`topic`]: topic names and [`TopicConfig`], every key validated with Kafka's names.

pub mod batch;
pub mod error_code;
pub mod labels;
pub mod topic;

/// Generated protobuf and gRPC code.
#[allow(missing_debug_implementations, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("sluice.v1");
}

pub use batch::{Record, RecordBatchBuilder};
pub use error_code::{ErrorCode, ErrorDetailExt};
pub use topic::{TopicConfig, validate_topic_name};

/// `acks` values, Kafka's wire numbers.
pub mod acks {
    /// Answer once the broker accepted the request.
    pub const NONE: i32 = 0;
    /// Answer once the leader appended the batch.
    pub const LEADER: i32 = 1;
    /// Answer once the batch is committed by the in-sync replicas.
    pub const ALL: i32 = -1;
}

/// Special `timestamp` values of a ListOffsets query.
pub mod list_offsets {
    /// The log start offset.
    pub const EARLIEST: i64 = -2;
    /// The high watermark: the next offset a consumer can read.
    pub const LATEST: i64 = -1;
}

/// Whether a failed call's error chain says nobody listens at the address (connection
/// refused): the host answered but no broker process runs there (stopped, crashed, not
/// started yet). Unlike a timeout, that is certain. Brokers act on it to replace a crashed
/// leader at once; the CLI reports it.
pub fn is_connection_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        cause = e.source();
    }
    false
}
