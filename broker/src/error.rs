//! The broker's error type and its one conversion to the wire.

use sluice_proto::batch::BatchError;
use sluice_proto::{ErrorCode, ErrorDetailExt, pb};

use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error("topic '{topic}' has no partition {partition} (it has partitions 0..{count})")]
    UnknownPartition {
        topic: String,
        partition: i32,
        count: i32,
    },
    #[error(
        "broker {node} does not know topic '{topic}' yet and could not confirm with the controller whether it exists ({cause}); retry, or ask another broker"
    )]
    MetadataBehind {
        topic: String,
        node: i32,
        cause: String,
    },
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("{0}")]
    InvalidTopic(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    ReassignmentInProgress(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("invalid acks {0}: use 0, 1 or -1 (all)")]
    InvalidAcks(i32),
    #[error("{0}")]
    InvalidRequest(String),
    #[error(
        "batch of {size} bytes for {topic}-{partition} exceeds the topic's max.message.bytes={max}; raise max.message.bytes or send smaller batches"
    )]
    MessageTooLarge {
        topic: String,
        partition: i32,
        size: usize,
        max: i32,
    },
    #[error("batch for {topic}-{partition} failed its checks and was not stored: {source}")]
    CorruptBatch {
        topic: String,
        partition: i32,
        source: BatchError,
    },
    #[error("batch for {topic}-{partition} is invalid and was not stored: {source}")]
    InvalidBatch {
        topic: String,
        partition: i32,
        source: BatchError,
    },
    #[error("{topic}-{partition}: {source}")]
    Storage {
        topic: String,
        partition: i32,
        source: StorageError,
    },
    #[error("{topic}-{partition}: storage failed earlier and the partition is offline: {cause}")]
    PartitionOffline {
        topic: String,
        partition: i32,
        cause: String,
    },
    #[error("{0}")]
    Timeout(String),
    /// A change was sent but not confirmed: it may or may not take effect.
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error("metadata store: {0}")]
    Metadata(#[from] sled::Error),
    #[error("{0}")]
    Internal(String),
    #[error("the broker is shutting down")]
    ShuttingDown,
    #[error("this broker is not the controller leader{}", leader.as_ref().map(|l| format!("; the leader is at {l}")).unwrap_or_default())]
    NotController { leader: Option<String> },
    #[error("{topic}-{partition} is led by broker {leader} at {address}, not this one")]
    NotLeader {
        topic: String,
        partition: i32,
        leader: i32,
        address: String,
    },
    #[error("{topic}-{partition} has no leader right now (its broker is starting or down)")]
    LeaderNotAvailable { topic: String, partition: i32 },
    #[error("controller metadata: {0}")]
    Rejected(String),
    #[error("{topic}-{partition}: {} replica(s) in sync ({in_sync:?}), min.insync.replicas is {required}; nothing was written", in_sync.len())]
    NotEnoughReplicas {
        topic: String,
        partition: i32,
        in_sync: Vec<i32>,
        required: usize,
    },
    #[error(
        "{topic}-{partition}: the batch was committed but only {holding} replica(s) hold it, min.insync.replicas is {required}"
    )]
    NotEnoughReplicasAfterAppend {
        topic: String,
        partition: i32,
        holding: usize,
        required: usize,
    },
    /// The group's offsets partition is led elsewhere (or by nobody right now).
    #[error("broker {node} is not the coordinator of group '{group}' ({}); find the coordinator again", leader.map(|l| format!("__consumer_offsets-{partition} is led by broker {l}")).unwrap_or_else(|| format!("__consumer_offsets-{partition} has no leader right now")))]
    NotCoordinator {
        group: String,
        partition: i32,
        node: i32,
        leader: Option<i32>,
    },
    #[error("{0}")]
    CoordinatorNotAvailable(String),
    #[error(
        "group '{group}': its coordinator is loading __consumer_offsets-{partition}; retry shortly"
    )]
    CoordinatorLoading { group: String, partition: i32 },
    #[error("{0}")]
    InvalidGroupId(String),
    #[error("group '{0}' has no committed offsets and no members")]
    GroupNotFound(String),
    #[error("{0}")]
    OffsetMetadataTooLarge(String),
    #[error(
        "group '{group}' has {members} active member(s); stop them first, or force it (they are removed, and rejoin as a new group if still running); nothing was deleted"
    )]
    NonEmptyGroup { group: String, members: usize },
    #[error("group '{group}' has no member '{member}' (it left, or its session timed out); rejoin")]
    UnknownMember { group: String, member: String },
    #[error(
        "group '{group}': member '{member}' sent epoch {sent}, the group gave it {current}; it is out of the group and must rejoin"
    )]
    FencedMemberEpoch {
        group: String,
        member: String,
        sent: i32,
        current: i32,
    },
    #[error("{topic}-{partition}: {source}")]
    Sequence {
        topic: String,
        partition: i32,
        source: crate::producer_state::SequenceError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::UnknownTopic(_) | Error::UnknownPartition { .. } => {
                ErrorCode::UnknownTopicOrPartition
            }
            Error::TopicExists(_) => ErrorCode::TopicAlreadyExists,
            Error::InvalidTopic(_) => ErrorCode::InvalidTopic,
            Error::InvalidPartitions(_) => ErrorCode::InvalidPartitions,
            Error::InvalidReplicationFactor(_) => ErrorCode::InvalidReplicationFactor,
            Error::ReassignmentInProgress(_) => ErrorCode::ReassignmentInProgress,
            Error::InvalidConfig(_) => ErrorCode::InvalidConfig,
            Error::InvalidAcks(_) => ErrorCode::InvalidRequiredAcks,
            Error::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Error::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
            Error::CorruptBatch { .. } => ErrorCode::CorruptMessage,
            Error::InvalidBatch {
                source: BatchError::UnsupportedCompression(_),
                ..
            } => ErrorCode::UnsupportedCompressionType,
            Error::InvalidBatch { .. } => ErrorCode::InvalidRecord,
            Error::Storage { source, .. } => match source {
                StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
                StorageError::Corrupt { .. } => ErrorCode::CorruptMessage,
                StorageError::NotBatchBoundary(_) => ErrorCode::InvalidRequest,
                StorageError::Io { .. } => ErrorCode::StorageError,
            },
            Error::PartitionOffline { .. } => ErrorCode::StorageError,
            Error::Timeout(_) | Error::OutcomeUnknown(_) => ErrorCode::RequestTimedOut,
            Error::Metadata(_) => ErrorCode::StorageError,
            Error::Internal(_) => ErrorCode::UnknownServerError,
            Error::ShuttingDown => ErrorCode::BrokerNotAvailable,
            Error::NotController { .. } => ErrorCode::NotController,
            Error::NotLeader { .. } => ErrorCode::NotLeader,
            Error::NotCoordinator { .. } => ErrorCode::NotCoordinator,
            Error::CoordinatorNotAvailable(_) => ErrorCode::CoordinatorNotAvailable,
            Error::CoordinatorLoading { .. } => ErrorCode::CoordinatorLoadInProgress,
            Error::InvalidGroupId(_) => ErrorCode::InvalidGroupId,
            Error::GroupNotFound(_) => ErrorCode::GroupIdNotFound,
            Error::OffsetMetadataTooLarge(_) => ErrorCode::OffsetMetadataTooLarge,
            Error::UnknownMember { .. } => ErrorCode::UnknownMemberId,
            Error::NonEmptyGroup { .. } => ErrorCode::NonEmptyGroup,
            Error::FencedMemberEpoch { .. } => ErrorCode::FencedMemberEpoch,
            Error::LeaderNotAvailable { .. } | Error::MetadataBehind { .. } => {
                ErrorCode::LeaderNotAvailable
            }
            Error::Rejected(_) => ErrorCode::InvalidRequest,
            Error::NotEnoughReplicas { .. } => ErrorCode::NotEnoughReplicas,
            Error::NotEnoughReplicasAfterAppend { .. } => ErrorCode::NotEnoughReplicasAfterAppend,
            Error::Sequence {
                source: crate::producer_state::SequenceError::OutOfOrder { .. },
                ..
            } => ErrorCode::OutOfOrderSequenceNumber,
            Error::Sequence {
                source: crate::producer_state::SequenceError::Fenced { .. },
                ..
            } => ErrorCode::InvalidProducerEpoch,
        }
    }

    /// The wire form: code, message, and the valid range for OFFSET_OUT_OF_RANGE.
    pub fn detail(&self) -> pb::ErrorDetail {
        let mut d = pb::ErrorDetail::new(self.code(), self.to_string());
        if let Error::NotLeader {
            leader, address, ..
        } = self
        {
            d.leader_id = *leader;
            d.leader_address = address.clone();
        }
        if let Error::Storage {
            source:
                StorageError::OffsetOutOfRange {
                    log_start, log_end, ..
                },
            ..
        } = self
        {
            d.log_start_offset = *log_start;
            d.log_end_offset = *log_end;
        }
        d
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        e.detail().into_status()
    }
}
