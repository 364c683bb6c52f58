//! Error codes with Kafka's names and retriability, and their place in a `tonic::Status`.
//!
//! A whole-call error is a `tonic::Status` whose `details` hold an encoded
//! [`pb::ErrorDetail`]; a per-partition error is the same `ErrorDetail` inside the partition's
//! entry. Both sides convert through this module only.

use std::fmt;
use std::str::FromStr;

use prost::Message;

use crate::pb;

macro_rules! error_codes {
    ($($variant:ident = $name:literal, retriable = $retriable:literal, $grpc:ident;)*) => {
        /// A machine-readable error, named as in Kafka.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            /// Every code, for documentation and tests.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The Kafka-style name, e.g. `NOT_LEADER`.
            pub fn name(self) -> &'static str {
                match self { $(ErrorCode::$variant => $name,)* }
            }

            /// Whether retrying the same request later can succeed.
            pub fn is_retriable(self) -> bool {
                match self { $(ErrorCode::$variant => $retriable,)* }
            }

            /// The gRPC status code used when this error fails a whole call.
            pub fn grpc_code(self) -> tonic::Code {
                match self { $(ErrorCode::$variant => tonic::Code::$grpc,)* }
            }
        }

        impl FromStr for ErrorCode {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($name => Ok(ErrorCode::$variant),)* _ => Err(()) }
            }
        }
    };
}

error_codes! {
    UnknownServerError = "UNKNOWN_SERVER_ERROR", retriable = false, Internal;
    OffsetOutOfRange = "OFFSET_OUT_OF_RANGE", retriable = false, OutOfRange;
    CorruptMessage = "CORRUPT_MESSAGE", retriable = true, DataLoss;
    UnknownTopicOrPartition = "UNKNOWN_TOPIC_OR_PARTITION", retriable = false, NotFound;
    LeaderNotAvailable = "LEADER_NOT_AVAILABLE", retriable = true, Unavailable;
    NotLeader = "NOT_LEADER", retriable = true, FailedPrecondition;
    RequestTimedOut = "REQUEST_TIMED_OUT", retriable = true, DeadlineExceeded;
    MessageTooLarge = "MESSAGE_TOO_LARGE", retriable = false, InvalidArgument;
    TopicAlreadyExists = "TOPIC_ALREADY_EXISTS", retriable = false, AlreadyExists;
    InvalidTopic = "INVALID_TOPIC_EXCEPTION", retriable = false, InvalidArgument;
    InvalidPartitions = "INVALID_PARTITIONS", retriable = false, InvalidArgument;
    InvalidReplicationFactor = "INVALID_REPLICATION_FACTOR", retriable = false, InvalidArgument;
    InvalidConfig = "INVALID_CONFIG", retriable = false, InvalidArgument;
    InvalidRequiredAcks = "INVALID_REQUIRED_ACKS", retriable = false, InvalidArgument;
    InvalidRequest = "INVALID_REQUEST", retriable = false, InvalidArgument;
    InvalidRecord = "INVALID_RECORD", retriable = false, InvalidArgument;
    UnsupportedCompressionType = "UNSUPPORTED_COMPRESSION_TYPE", retriable = false, InvalidArgument;
    NotEnoughReplicas = "NOT_ENOUGH_REPLICAS", retriable = true, Unavailable;
    NotEnoughReplicasAfterAppend = "NOT_ENOUGH_REPLICAS_AFTER_APPEND", retriable = true, Unavailable;
    StorageError = "STORAGE_ERROR", retriable = true, Internal;
    BrokerNotAvailable = "BROKER_NOT_AVAILABLE", retriable = true, Unavailable;
    NotController = "NOT_CONTROLLER", retriable = true, Unavailable;
    OutOfOrderSequenceNumber = "OUT_OF_ORDER_SEQUENCE_NUMBER", retriable = false, FailedPrecondition;
    InvalidProducerEpoch = "INVALID_PRODUCER_EPOCH", retriable = false, FailedPrecondition;
    ReassignmentInProgress = "REASSIGNMENT_IN_PROGRESS", retriable = false, FailedPrecondition;
    CoordinatorNotAvailable = "COORDINATOR_NOT_AVAILABLE", retriable = true, Unavailable;
    NotCoordinator = "NOT_COORDINATOR", retriable = true, FailedPrecondition;
    CoordinatorLoadInProgress = "COORDINATOR_LOAD_IN_PROGRESS", retriable = true, Unavailable;
    InvalidGroupId = "INVALID_GROUP_ID", retriable = false, InvalidArgument;
    GroupIdNotFound = "GROUP_ID_NOT_FOUND", retriable = false, NotFound;
    OffsetMetadataTooLarge = "OFFSET_METADATA_TOO_LARGE", retriable = false, InvalidArgument;
    UnknownMemberId = "UNKNOWN_MEMBER_ID", retriable = false, FailedPrecondition;
    FencedMemberEpoch = "FENCED_MEMBER_EPOCH", retriable = false, FailedPrecondition;
    NonEmptyGroup = "NON_EMPTY_GROUP", retriable = false, FailedPrecondition;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Helpers on [`pb::ErrorDetail`].
pub trait ErrorDetailExt: Sized {
    /// A detail for `code` with `message` and no leader or offsets.
    fn new(code: ErrorCode, message: impl Into<String>) -> Self;
    /// The code, or `UNKNOWN_SERVER_ERROR` for a name this build does not know.
    fn error_code(&self) -> ErrorCode;
    /// Wraps the detail into a `tonic::Status`, for whole-call errors.
    fn into_status(self) -> tonic::Status;
    /// Reads the detail a Sluice broker put into a status, if any.
    fn from_status(status: &tonic::Status) -> Option<Self>;
}

impl ErrorDetailExt for pb::ErrorDetail {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        pb::ErrorDetail {
            code: code.name().to_string(),
            message: message.into(),
            retriable: code.is_retriable(),
            leader_id: -1,
            leader_address: String::new(),
            log_start_offset: -1,
            log_end_offset: -1,
        }
    }

    fn error_code(&self) -> ErrorCode {
        self.code.parse().unwrap_or(ErrorCode::UnknownServerError)
    }

    fn into_status(self) -> tonic::Status {
        let code = self.error_code().grpc_code();
        let message = format!("{}: {}", self.code, self.message);
        tonic::Status::with_details(code, message, self.encode_to_vec().into())
    }

    fn from_status(status: &tonic::Status) -> Option<Self> {
        if status.details().is_empty() {
            return None;
        }
        pb::ErrorDetail::decode(status.details())
            .ok()
            .filter(|d| !d.code.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.name()), "duplicate name {}", code.name());
            assert_eq!(code.name().parse::<ErrorCode>(), Ok(*code));
        }
    }

    #[test]
    fn status_carries_the_detail() {
        let mut detail =
            pb::ErrorDetail::new(ErrorCode::OffsetOutOfRange, "offset 99 is past the end");
        detail.log_start_offset = 0;
        detail.log_end_offset = 10;
        let status = detail.clone().into_status();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert!(status.message().starts_with("OFFSET_OUT_OF_RANGE: "));
        assert_eq!(pb::ErrorDetail::from_status(&status), Some(detail));
        assert_eq!(
            pb::ErrorDetail::from_status(&tonic::Status::internal("x")),
            None
        );
    }

    #[test]
    fn kafka_retriability() {
        assert!(ErrorCode::NotLeader.is_retriable());
        assert!(ErrorCode::NotEnoughReplicas.is_retriable());
        assert!(!ErrorCode::MessageTooLarge.is_retriable());
        assert!(!ErrorCode::InvalidConfig.is_retriable());
    }
}
