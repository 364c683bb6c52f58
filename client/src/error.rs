//! The client's error: what the broker said (with its Kafka-named code), or why the
//! client could not ask.

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::batch::BatchError;
use sluice_proto::{ErrorCode, ErrorDetailExt, pb};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The broker refused the request.
    #[error("{}: {}", detail.code, detail.message)]
    Broker { detail: Box<pb::ErrorDetail> },
    #[error("{}", connect_message(address, source))]
    Connect {
        address: String,
        #[source]
        source: Arc<tonic::transport::Error>,
    },
    /// The call failed without an answer from Sluice (connection lost, broker restarting).
    #[error("{}", rpc_message(address, status))]
    Rpc {
        address: String,
        status: Box<tonic::Status>,
    },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{what} did not succeed within {after:?}; last error: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
    #[error("corrupt data from {topic}-{partition} at offset {offset}: {source}")]
    Corrupt {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: BatchError,
    },
    #[error("the producer is closed")]
    Closed,
    /// A local store (the processed ids of [`crate::dedup`]) failed.
    #[error("{0}")]
    Store(String),
    /// A record failed every try of a [`crate::Processor`]'s handler and no dead-letter
    /// topic was set: processing stopped at it rather than retry forever or skip it.
    #[error(
        "record {topic}-{partition}@{offset} (id {id}) failed {attempts} time(s), the last with: {cause}; with no dead-letter topic set, processing stopped here (offsets are committed below it, so it is the first delivered again: fix the cause, or set a dead-letter topic)"
    )]
    RecordFailed {
        topic: String,
        partition: i32,
        offset: i64,
        id: String,
        attempts: u32,
        cause: String,
    },
    /// A change was sent and no answer came back: it may or may not have been made. Not
    /// sent again by the client, since doing it twice may not be what was meant.
    #[error(
        "{what}: the outcome is unknown: {address} did not answer ({cause}); the change may have been made: check before retrying"
    )]
    OutcomeUnknown {
        what: String,
        address: String,
        cause: String,
    },
    /// Records behind a batch that finally failed: resending them could store them ahead of
    /// it, so they are not retried. They may or may not have been stored.
    #[error(
        "delivery to {topic}-{partition} abandoned: an earlier batch to it failed ({cause}); these records were not retried so that they cannot overtake it, and may or may not have been stored"
    )]
    Abandoned {
        topic: String,
        partition: i32,
        cause: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a refused connection reads as: the likeliest cause is no broker at that address.
fn refused_message(address: &str) -> String {
    format!("cannot reach broker at {address}: connection refused (is a broker running there?)")
}

fn connect_message(address: &str, source: &tonic::transport::Error) -> String {
    if sluice_proto::is_connection_refused(source) {
        refused_message(address)
    } else {
        format!("cannot connect to broker {address}: {source}")
    }
}

/// A failed call without a Sluice answer. tonic's own text for a transport failure is
/// generic (`tcp connect error`), so the innermost cause (`Connection refused`, a failed
/// name lookup) is added when there is one.
fn rpc_message(address: &str, status: &tonic::Status) -> String {
    if sluice_proto::is_connection_refused(status) {
        return refused_message(address);
    }
    let mut root = None;
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        root = Some(e);
        cause = e.source();
    }
    let message = status.message();
    match root.map(ToString::to_string) {
        Some(root) if !root.is_empty() && !message.contains(&root) => format!(
            "request to {address} failed: {message}: {root} ({:?})",
            status.code()
        ),
        _ => format!(
            "request to {address} failed: {message} ({:?})",
            status.code()
        ),
    }
}

impl Error {
    pub(crate) fn broker(detail: pb::ErrorDetail) -> Self {
        Error::Broker {
            detail: Box::new(detail),
        }
    }

    pub(crate) fn from_status(address: &str, status: tonic::Status) -> Self {
        match pb::ErrorDetail::from_status(&status) {
            Some(detail) => Error::broker(detail),
            None => Error::Rpc {
                address: address.to_string(),
                status: Box::new(status),
            },
        }
    }

    /// The broker's error code, when the broker answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Broker { detail } => Some(detail.error_code()),
            Error::Corrupt { .. } => Some(ErrorCode::CorruptMessage),
            Error::Timeout { .. } | Error::OutcomeUnknown { .. } => {
                Some(ErrorCode::RequestTimedOut)
            }
            _ => None,
        }
    }

    /// The broker's detail (leader, valid offset range), if it sent one.
    pub fn detail(&self) -> Option<&pb::ErrorDetail> {
        match self {
            Error::Broker { detail } => Some(detail),
            _ => None,
        }
    }

    /// Whether the broker refused the batch on sight, so it certainly was not stored (and
    /// neither can any later batch of the same producer epoch, which would follow a gap).
    pub(crate) fn refused_unstored(&self) -> bool {
        matches!(self, Error::Broker { detail } if matches!(
            detail.error_code(),
            ErrorCode::MessageTooLarge
                | ErrorCode::InvalidRecord
                | ErrorCode::InvalidRequest
                | ErrorCode::InvalidRequiredAcks
                | ErrorCode::UnsupportedCompressionType
                | ErrorCode::OutOfOrderSequenceNumber
                | ErrorCode::InvalidProducerEpoch
        ))
    }

    /// Whether nobody listens at the broker's address: its host answered but no broker
    /// process runs there (stopped, crashed, not started yet). Unlike a timeout, certain.
    pub fn is_connection_refused(&self) -> bool {
        match self {
            Error::Rpc { status, .. } => sluice_proto::is_connection_refused(status.as_ref()),
            Error::Connect { source, .. } => sluice_proto::is_connection_refused(source.as_ref()),
            _ => false,
        }
    }

    /// Whether the same request may succeed later (after a metadata refresh or a backoff).
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Broker { detail } => detail.error_code().is_retriable(),
            Error::Connect { .. } | Error::Timeout { .. } => true,
            Error::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Aborted
            ),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(status: tonic::Status) -> Error {
        Error::Rpc {
            address: "127.0.0.1:9999".into(),
            status: Box::new(status),
        }
    }

    #[test]
    fn a_refused_connection_says_no_broker_listens_there() {
        let mut status = tonic::Status::unavailable("tcp connect error");
        status.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        let e = rpc(status);
        assert!(e.is_connection_refused());
        assert_eq!(
            e.to_string(),
            "cannot reach broker at 127.0.0.1:9999: connection refused (is a broker running there?)"
        );
    }

    #[test]
    fn another_failed_call_names_its_cause_and_code() {
        let mut status = tonic::Status::unavailable("tcp connect error");
        status.set_source(Arc::new(std::io::Error::other("name lookup failed")));
        assert_eq!(
            rpc(status).to_string(),
            "request to 127.0.0.1:9999 failed: tcp connect error: name lookup failed (Unavailable)"
        );
        assert_eq!(
            rpc(tonic::Status::cancelled("gone")).to_string(),
            "request to 127.0.0.1:9999 failed: gone (Cancelled)"
        );
    }
}
