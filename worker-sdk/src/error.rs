//! The SDK's one error type.
//!
//! Every fallible call of the SDK returns [`Result<T>`](crate::Result). Variants are named
//! for what failed; the cause is kept as a `#[source]` where there is one.
//! [`Error::is_transient`] tells a caller (and the worker loop, which retries those
//! with back-off) whether trying again later may succeed.

use std::time::Duration;

/// What went wrong talking to a queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend URL could not be parsed.
    #[error("invalid queue URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The URL names a backend this build does not have (its cargo feature is off).
    #[error(
        "queue URL {url:?}: this build of worker-sdk has no {scheme}:// backend (enable its feature `{scheme}`)"
    )]
    UnsupportedScheme {
        /// The URL as given.
        url: String,
        /// Its scheme, without `://`.
        scheme: String,
    },

    /// A queue name is empty, too long, or has characters that are not allowed.
    #[error("invalid queue name {name:?}: {reason}")]
    InvalidQueueName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The server could not be reached at all.
    #[error("queue server unreachable at {url}: {reason}")]
    Unreachable {
        /// The URL that was tried.
        url: String,
        /// The innermost cause, in words (e.g. "Connection refused (os error 111)").
        reason: String,
        /// The transport's error.
        #[source]
        source: BoxError,
    },

    /// The backend cannot do this at all (for example: seal an AMQP queue). Says
    /// what to do instead where there is something.
    #[error("the {backend}:// backend cannot {what}")]
    NotSupported {
        /// The backend's scheme, without `://`.
        backend: &'static str,
        /// What it cannot do, and what to do instead.
        what: String,
    },

    /// A Redis or RabbitMQ call failed.
    #[error("{backend} {what}: {reason}")]
    Backend {
        /// `redis` or `amqp`.
        backend: &'static str,
        /// What was being done (e.g. "lease on queue \"job2\"").
        what: String,
        /// The innermost cause, in words.
        reason: String,
        /// Whether trying again later may succeed (a lost connection).
        transient: bool,
        /// The client library's error.
        #[source]
        source: BoxError,
    },

    /// The server answered that the queue does not exist.
    #[error("queue {queue:?} not found")]
    QueueNotFound {
        /// The queue's name.
        queue: String,
    },

    /// A lease token was refused: the lease expired or the item was leased again
    /// by someone else. The item is no longer this worker's to finish.
    #[error("lease lost on queue {queue:?}: {message}")]
    LeaseLost {
        /// The queue's name.
        queue: String,
        /// The server's words.
        message: String,
    },

    /// The server refused the request as it stands (for example: pushing to a
    /// sealed queue, or creating a queue that exists with other settings).
    #[error("the queue server refused: {message}")]
    Refused {
        /// The queue's name (empty for calls about no queue).
        queue: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's words.
        message: String,
    },

    /// The server or the connection to it is unavailable for now; retrying may succeed.
    #[error("queue server unavailable ({code:?}): {message}")]
    Unavailable {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's or transport's words.
        message: String,
    },

    /// A call did not finish in time.
    #[error("queue server did not answer within {0:?}")]
    Timeout(Duration),

    /// The server failed in a way that is not the caller's fault and not transient.
    #[error("queue server error ({code:?}): {message}")]
    Server {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's words.
        message: String,
    },

    /// The server sent an answer the SDK does not understand.
    #[error("unexpected answer from the queue server: {0}")]
    Protocol(String),

    /// A push of many items failed part-way: the first `pushed` items were added
    /// (durably), the rest were not.
    #[error("queue {queue:?}: pushed {pushed} items, then: {source}")]
    PushInterrupted {
        /// The queue's name.
        queue: String,
        /// Items added before the failure.
        pushed: usize,
        /// The failure.
        #[source]
        source: Box<Error>,
    },

    /// A local I/O operation failed (starting or feeding a child process, reading a file).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether trying again later may succeed: lost connections, an unavailable or
    /// overloaded server, timeouts.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. }
                | Error::Timeout(_)
                | Error::Backend {
                    transient: true,
                    ..
                }
        )
    }

    /// Maps a gRPC status to an error, in the context of `queue` (may be empty).
    #[cfg_attr(not(feature = "grpc"), allow(dead_code))]
    pub(crate) fn from_status(queue: &str, status: tonic::Status) -> Error {
        Self::map_status(queue, status, false)
    }

    /// Like [`Error::from_status`], for calls that carry lease tokens: there
    /// FAILED_PRECONDITION means a stale token.
    #[cfg_attr(not(feature = "grpc"), allow(dead_code))]
    pub(crate) fn from_token_status(queue: &str, status: tonic::Status) -> Error {
        Self::map_status(queue, status, true)
    }

    #[cfg_attr(not(feature = "grpc"), allow(dead_code))]
    fn map_status(queue: &str, status: tonic::Status, tokens: bool) -> Error {
        use tonic::Code;
        let message = status.message().to_owned();
        match status.code() {
            Code::NotFound => Error::QueueNotFound {
                queue: queue.to_owned(),
            },
            Code::FailedPrecondition if tokens => Error::LeaseLost {
                queue: queue.to_owned(),
                message,
            },
            Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::Cancelled => {
                Error::Unavailable {
                    code: status.code(),
                    message: describe_transport(&status),
                }
            }
            Code::DeadlineExceeded => Error::Unavailable {
                code: status.code(),
                message,
            },
            code @ (Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unauthenticated) => Error::Refused {
                queue: queue.to_owned(),
                code,
                message,
            },
            code => Error::Server { code, message },
        }
    }
}

/// The text of the innermost cause of `e` (itself when it has none).
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The status message, plus the transport error under it when there is one.
#[cfg_attr(not(feature = "grpc"), allow(dead_code))]
fn describe_transport(status: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut text = status.message().to_owned();
    let mut cause = status.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

/// A boxed error of a transport or client library, kept as a cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The SDK's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    #[test]
    fn statuses_map_to_what_failed() {
        let e = Error::from_status("q", Status::not_found("queue q not found"));
        assert!(matches!(e, Error::QueueNotFound { ref queue } if queue == "q"));
        let e = Error::from_token_status(
            "q",
            Status::failed_precondition("lease 1.2 is no longer held"),
        );
        assert!(matches!(e, Error::LeaseLost { .. }));
        // Outside token calls, FAILED_PRECONDITION is a refusal (e.g. a sealed queue).
        let e = Error::from_status("q", Status::failed_precondition("queue q is sealed"));
        assert!(matches!(
            e,
            Error::Refused {
                code: Code::FailedPrecondition,
                ..
            }
        ));
        assert!(e.to_string().contains("sealed"));
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
        ] {
            let e = Error::from_status("q", Status::new(code, "x"));
            assert!(e.is_transient(), "{code:?}");
        }
        let e = Error::from_status("q", Status::internal("disk full"));
        assert!(matches!(e, Error::Server { .. }) && !e.is_transient());
    }
}
