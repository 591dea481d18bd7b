//! Engine errors as a client sees them: status code, `ErrorReason`,
//! metadata and the standard details. The one place they are mapped.

use crate::error::{Error, StaleCause};
use std::time::Duration;
use tonic::{Code, Status};
use workq_proto::errors::Rejection;
use workq_proto::v1::ErrorReason;

/// How long a client waits before retrying after a transient refusal
/// (RetryInfo): a full server, a stopping one.
const RETRY_SOON: Duration = Duration::from_secs(1);

/// How long a client waits before retrying on a server whose store failed:
/// it exits and restarts.
const RETRY_AFTER_RESTART: Duration = Duration::from_secs(5);

/// The refusal a client sees for an engine error: code, reason, metadata
/// and details. The one place errors are mapped.
pub fn rejection(err: &Error) -> Rejection {
    let msg = err.to_string();
    let fp = Code::FailedPrecondition;
    match err {
        Error::InvalidField { field, .. } => {
            Rejection::new(Code::InvalidArgument, ErrorReason::InvalidField, msg).field(field)
        }
        Error::LimitExceeded { bound, .. } => {
            let value_key = if bound.limit.starts_with("min_") {
                "min"
            } else {
                "max"
            };
            Rejection::new(Code::InvalidArgument, ErrorReason::LimitExceeded, msg)
                .meta("limit", bound.limit)
                .meta(value_key, &bound.value)
                .field(&bound.field)
        }
        Error::DuplicateToken { item } => {
            Rejection::new(Code::InvalidArgument, ErrorReason::DuplicateToken, msg)
                .meta("item", item)
        }
        Error::RequestIdReused { request_id, .. } => {
            Rejection::new(Code::InvalidArgument, ErrorReason::RequestIdReused, msg)
                .meta("request_id", request_id)
                .field("request_id")
        }
        Error::InvalidPageToken(_) => {
            Rejection::new(Code::InvalidArgument, ErrorReason::InvalidPageToken, msg)
                .field("page_token")
        }
        Error::QueueNotFound(q) => Rejection::new(Code::NotFound, ErrorReason::QueueNotFound, msg)
            .meta("queue", q)
            .resource("Queue", q.as_str()),
        Error::QueueExists(q) => Rejection::new(Code::AlreadyExists, ErrorReason::QueueExists, msg)
            .meta("queue", q)
            .resource("Queue", q.as_str()),
        Error::Sealed(q) => Rejection::new(fp, ErrorReason::QueueSealed, msg).meta("queue", q),
        Error::StaleLease {
            queue,
            token,
            cause,
        } => {
            let reason = match cause {
                StaleCause::Expired => ErrorReason::LeaseExpired,
                StaleCause::Taken => ErrorReason::LeaseTaken,
                StaleCause::Finished(_) => ErrorReason::LeaseFinished,
                StaleCause::ItemCompleted => ErrorReason::ItemCompleted,
                StaleCause::ItemDead => ErrorReason::ItemDead,
            };
            let r = Rejection::new(fp, reason, msg)
                .meta("queue", queue)
                .meta("item", token.item)
                .meta("lease_token", token);
            match cause {
                StaleCause::Finished(how) => r.meta("finished", how.as_str()),
                _ => r,
            }
        }
        Error::ItemNotDead { queue, item } => Rejection::new(fp, ErrorReason::ItemNotDead, msg)
            .meta("queue", queue)
            .meta("item", item),
        Error::ItemNotFound { queue, item } => {
            Rejection::new(Code::NotFound, ErrorReason::ItemNotFound, msg)
                .meta("queue", queue)
                .meta("item", item)
                .resource("Item", format!("{queue}/{item}"))
        }
        Error::Store(_) => Rejection::new(Code::Unavailable, ErrorReason::StoreFailed, msg)
            .retry_after(RETRY_AFTER_RESTART),
        Error::Unavailable(_) => {
            Rejection::new(Code::Unavailable, ErrorReason::StoreFailed, msg).retry_after(RETRY_SOON)
        }
        Error::ShuttingDown => Rejection::new(Code::Unavailable, ErrorReason::ShuttingDown, msg)
            .retry_after(RETRY_SOON),
        Error::Exhausted { limit, max, .. } => {
            Rejection::new(Code::ResourceExhausted, ErrorReason::ServerFull, msg)
                .meta("limit", limit)
                .meta("max", max)
                .retry_after(RETRY_SOON)
        }
    }
}

/// Maps an engine error to the gRPC status a client sees.
pub fn status(err: Error) -> Status {
    rejection(&err).to_status()
}

/// A malformed request field: INVALID_ARGUMENT, reason INVALID_FIELD, and a
/// BadRequest naming `field`.
pub fn invalid_field_rejection(field: &str, message: impl Into<String>) -> Rejection {
    rejection(&Error::invalid(field, message))
}

/// [`invalid_field_rejection`] as a status.
pub fn invalid_field(field: &str, message: impl Into<String>) -> Status {
    invalid_field_rejection(field, message).to_status()
}
