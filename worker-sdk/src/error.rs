//! The SDK's one error type.
//!
//! Every fallible call of the SDK returns [`Result<T>`](crate::Result). Variants are named
//! for what failed; the cause is kept as a `#[source]` where there is one.
//! [`Error::is_transient`] tells a caller (and the worker loop, which retries those
//! with back-off) whether trying again later may succeed.

use std::time::Duration;

use workq_proto::v1::ErrorReason;

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

    /// The TLS handshake with a `grpcs://` server failed: its certificate is
    /// not signed by a trusted CA (give the CA with `--ca-file` /
    /// `WQ_CA_FILE`), does not name the host of the URL, has expired, or the
    /// server wanted a client certificate. Not retried.
    #[error("TLS handshake with {url} failed, a certificate problem: {reason}")]
    Tls {
        /// The URL that was tried.
        url: String,
        /// What was wrong with the certificate, in words.
        reason: String,
        /// The transport's error.
        #[source]
        source: BoxError,
    },

    /// A credential file (CA bundle, token, client certificate or key) could
    /// not be read or parsed.
    #[error("cannot use the {what} file {path}: {reason}")]
    Credentials {
        /// Which file: `CA`, `token`, `client certificate`, `client key`.
        what: &'static str,
        /// Its path.
        path: String,
        /// Why.
        reason: String,
    },

    /// The server refused the call's credential: none was sent, or the token
    /// is unknown, expired or for another audience (UNAUTHENTICATED).
    #[error(
        "the queue server refused the token (UNAUTHENTICATED): {message}{}",
        expected.as_deref().map(|e| format!(" (the server expects: {e}; give a token with --token-file or WQ_TOKEN_FILE)")).unwrap_or_else(|| " (give a token with --token-file or WQ_TOKEN_FILE)".to_owned())
    )]
    Unauthenticated {
        /// The server's message.
        message: String,
        /// The kinds of credential the server accepts, when it said.
        expected: Option<String>,
    },

    /// The caller is known but holds no grant of `verb` on `queue`
    /// (PERMISSION_DENIED).
    #[error(
        "permission denied: {} may not {verb} queue {queue:?} (no grant of {verb:?} on it): {message}",
        identity.as_deref().unwrap_or("this caller")
    )]
    PermissionDenied {
        /// The verb refused: `produce`, `consume`, `read` or `admin`.
        verb: String,
        /// The queue.
        queue: String,
        /// Who the server took the caller to be, when it said.
        identity: Option<String>,
        /// The server's message.
        message: String,
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

    /// A lease token was refused: the lease is no longer this worker's to
    /// renew or finish. `reason` says what became of it (expired, taken by
    /// another worker, finished already, the item completed or dead).
    #[error("lease lost on queue {queue:?} ({reason}): {message}")]
    LeaseLost {
        /// The queue's name.
        queue: String,
        /// What became of the lease.
        reason: LeaseLostReason,
        /// The item's id, when the server named it.
        item: Option<String>,
        /// The server's words.
        message: String,
    },

    /// The queue is sealed and takes no more items (reason `QUEUE_SEALED`).
    /// Do not retry; use a new queue.
    #[error("queue {queue:?} is sealed: it takes no more items")]
    QueueSealed {
        /// The queue's name.
        queue: String,
    },

    /// The server refused the request as it stands (for example: creating a
    /// queue that exists with other settings, a field out of bounds).
    #[error("the queue server refused: {message}")]
    Refused {
        /// The queue's name (empty for calls about no queue).
        queue: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's reason (`ErrorInfo.reason`, e.g. `QUEUE_EXISTS`,
        /// `LIMIT_EXCEEDED`), when it gave one this SDK knows.
        reason: Option<&'static str>,
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
        /// How long the server asked to wait before trying again
        /// (`google.rpc.RetryInfo`), when it said.
        retry_after: Option<Duration>,
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

/// What became of a lease the server refused a token of (the `ErrorReason`
/// of the refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeaseLostReason {
    /// The lease's deadline passed (`LEASE_EXPIRED`); the item went back to
    /// the queue (or dead, attempts exhausted). Another worker will get it.
    Expired,
    /// The lease ended and another worker holds the item now (`LEASE_TAKEN`).
    Taken,
    /// This lease was already finished in another way (`LEASE_FINISHED`):
    /// completed, failed or released.
    Finished,
    /// The item was completed under another lease, or its queue was purged
    /// or recreated (`ITEM_COMPLETED`): nothing is lost.
    ItemCompleted,
    /// The item is dead (`ITEM_DEAD`): see the queue's dead items.
    ItemDead,
    /// The backend did not say (a Redis or RabbitMQ queue, or a server that
    /// sends no reason).
    Unknown,
}

impl LeaseLostReason {
    /// The reason's name as the server spells it (`LEASE_EXPIRED`), or
    /// `UNKNOWN`.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseLostReason::Expired => "LEASE_EXPIRED",
            LeaseLostReason::Taken => "LEASE_TAKEN",
            LeaseLostReason::Finished => "LEASE_FINISHED",
            LeaseLostReason::ItemCompleted => "ITEM_COMPLETED",
            LeaseLostReason::ItemDead => "ITEM_DEAD",
            LeaseLostReason::Unknown => "UNKNOWN",
        }
    }

    /// The lease-lost reason of a server's `ErrorReason`, if it is one.
    #[cfg_attr(not(feature = "grpc"), allow(dead_code))]
    pub(crate) fn of(reason: ErrorReason) -> Option<Self> {
        Some(match reason {
            ErrorReason::LeaseExpired => LeaseLostReason::Expired,
            ErrorReason::LeaseTaken => LeaseLostReason::Taken,
            ErrorReason::LeaseFinished => LeaseLostReason::Finished,
            ErrorReason::ItemCompleted => LeaseLostReason::ItemCompleted,
            ErrorReason::ItemDead => LeaseLostReason::ItemDead,
            _ => return None,
        })
    }
}

impl std::fmt::Display for LeaseLostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LeaseLostReason::Expired => "lease expired",
            LeaseLostReason::Taken => "taken by another worker",
            LeaseLostReason::Finished => "lease already finished",
            LeaseLostReason::ItemCompleted => "item completed elsewhere",
            LeaseLostReason::ItemDead => "item dead",
            LeaseLostReason::Unknown => "no reason given",
        })
    }
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

    /// How long to wait before trying again, when the server said
    /// (`google.rpc.RetryInfo` on an unavailable or exhausted server).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A copy of this error for a second receiver (one failed call answering
    /// many items): the same variant where it is plain data, else
    /// [`Error::Server`] with this error's words.
    pub(crate) fn replicate(&self) -> Error {
        match self {
            Error::QueueNotFound { queue } => Error::QueueNotFound {
                queue: queue.clone(),
            },
            Error::QueueSealed { queue } => Error::QueueSealed {
                queue: queue.clone(),
            },
            Error::LeaseLost {
                queue,
                reason,
                item,
                message,
            } => Error::LeaseLost {
                queue: queue.clone(),
                reason: *reason,
                item: item.clone(),
                message: message.clone(),
            },
            Error::Refused {
                queue,
                code,
                reason,
                message,
            } => Error::Refused {
                queue: queue.clone(),
                code: *code,
                reason: *reason,
                message: message.clone(),
            },
            Error::Unavailable {
                code,
                message,
                retry_after,
            } => Error::Unavailable {
                code: *code,
                message: message.clone(),
                retry_after: *retry_after,
            },
            Error::Unauthenticated { message, expected } => Error::Unauthenticated {
                message: message.clone(),
                expected: expected.clone(),
            },
            Error::PermissionDenied {
                verb,
                queue,
                identity,
                message,
            } => Error::PermissionDenied {
                verb: verb.clone(),
                queue: queue.clone(),
                identity: identity.clone(),
                message: message.clone(),
            },
            Error::Timeout(d) => Error::Timeout(*d),
            Error::Protocol(m) => Error::Protocol(m.clone()),
            other => Error::Server {
                code: tonic::Code::Unknown,
                message: other.to_string(),
            },
        }
    }

    /// The lease-lost reason, when this is [`Error::LeaseLost`].
    pub fn lease_lost_reason(&self) -> Option<LeaseLostReason> {
        match self {
            Error::LeaseLost { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// Maps a gRPC status to an error, in the context of `queue` (may be
    /// empty): by the reason its `google.rpc.ErrorInfo` carries, and by its
    /// code when it carries none this SDK knows.
    #[cfg_attr(not(feature = "grpc"), allow(dead_code))]
    pub(crate) fn from_status(queue: &str, status: tonic::Status) -> Error {
        Self::map_status(queue, status, false)
    }

    /// Like [`Error::from_status`], for calls that carry lease tokens: a
    /// FAILED_PRECONDITION *without* a reason (a server older than the
    /// settled contract) is then taken as a stale token. With a reason, the
    /// reason decides, whatever the call.
    #[cfg_attr(not(feature = "grpc"), allow(dead_code))]
    pub(crate) fn from_token_status(queue: &str, status: tonic::Status) -> Error {
        Self::map_status(queue, status, true)
    }

    #[cfg_attr(not(feature = "grpc"), allow(dead_code))]
    fn map_status(queue: &str, status: tonic::Status, tokens: bool) -> Error {
        use tonic::Code;
        use tonic_types::StatusExt;
        let message = status.message().to_owned();
        let retry_after = status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay);
        let reason = workq_proto::errors::reason(&status);
        if let Some((reason, metadata)) = &reason {
            if let Some(lost) = LeaseLostReason::of(*reason) {
                return Error::LeaseLost {
                    queue: metadata
                        .get("queue")
                        .cloned()
                        .unwrap_or_else(|| queue.to_owned()),
                    reason: lost,
                    item: metadata.get("item").cloned(),
                    message,
                };
            }
            match reason {
                ErrorReason::QueueSealed => {
                    return Error::QueueSealed {
                        queue: queue.to_owned(),
                    };
                }
                ErrorReason::QueueNotFound => {
                    return Error::QueueNotFound {
                        queue: metadata
                            .get("queue")
                            .cloned()
                            .unwrap_or_else(|| queue.to_owned()),
                    };
                }
                ErrorReason::Unauthenticated => {
                    return Error::Unauthenticated {
                        message,
                        expected: metadata.get("expected").cloned(),
                    };
                }
                ErrorReason::PermissionDenied => {
                    return Error::PermissionDenied {
                        verb: metadata
                            .get("verb")
                            .cloned()
                            .unwrap_or_else(|| "?".to_owned()),
                        queue: metadata
                            .get("queue")
                            .cloned()
                            .unwrap_or_else(|| queue.to_owned()),
                        identity: metadata.get("identity").cloned(),
                        message,
                    };
                }
                ErrorReason::ServerFull | ErrorReason::ShuttingDown | ErrorReason::StoreFailed => {
                    return Error::Unavailable {
                        code: status.code(),
                        message: describe_transport(&status),
                        retry_after,
                    };
                }
                _ => {}
            }
        }
        // A TLS refusal that surfaced at a call rather than at connect (TLS
        // 1.3: the server's alert comes after the client's side of the
        // handshake, e.g. a missing client certificate).
        if reason.is_none() && matches!(status.code(), Code::Unknown | Code::Unavailable) {
            use std::error::Error as _;
            if let Some(problem) = status.source().and_then(tls_problem) {
                return Error::Tls {
                    url: "the server".to_owned(),
                    reason: problem,
                    source: Box::new(status),
                };
            }
        }
        let label = reason.map(|(r, _)| r.label());
        match status.code() {
            Code::NotFound if label.is_none() => Error::QueueNotFound {
                queue: queue.to_owned(),
            },
            Code::FailedPrecondition if tokens && label.is_none() => Error::LeaseLost {
                queue: queue.to_owned(),
                reason: LeaseLostReason::Unknown,
                item: None,
                message,
            },
            Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::Cancelled => {
                Error::Unavailable {
                    code: status.code(),
                    message: describe_transport(&status),
                    retry_after,
                }
            }
            Code::DeadlineExceeded => Error::Unavailable {
                code: status.code(),
                message,
                retry_after,
            },
            Code::Unauthenticated => Error::Unauthenticated {
                message,
                expected: None,
            },
            code @ (Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::OutOfRange
            | Code::PermissionDenied) => Error::Refused {
                queue: queue.to_owned(),
                code,
                reason: label,
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

/// When a connection failed in its TLS handshake, what was wrong, in words
/// that name the certificate; `None` for any other failure.
#[cfg_attr(not(feature = "grpc"), allow(dead_code))]
pub(crate) fn tls_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        let lower = text.to_ascii_lowercase();
        if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
            return Some(format!(
                "the server's certificate is not signed by a CA this client trusts ({text}); give its CA with --ca-file or WQ_CA_FILE"
            ));
        }
        if lower.contains("notvalidforname") || lower.contains("not valid for name") {
            return Some(format!(
                "the server's certificate does not name the host of the URL ({text})"
            ));
        }
        if lower.contains("certificaterequired") || lower.contains("certificate required") {
            return Some(format!(
                "the server requires a client certificate ({text}); give --client-cert and \
                 --client-key (or WQ_CLIENT_CERT and WQ_CLIENT_KEY)"
            ));
        }
        if lower.contains("expired") && lower.contains("certificate") {
            return Some(format!("the server's certificate has expired ({text})"));
        }
        if lower.contains("certificate") || lower.contains("handshake") || lower.contains("tls") {
            return Some(format!(
                "{text} (a certificate problem: check --ca-file, --client-cert and --client-key)"
            ));
        }
        if lower.contains("invalidcontenttype") || lower.contains("corrupt message") {
            return Some(format!(
                "the server did not answer TLS ({text}); is it serving plain grpc://?"
            ));
        }
        cur = err.source();
    }
    None
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
mod tests;
