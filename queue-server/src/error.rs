//! The engine's one error type. The gRPC adapter maps each variant to a
//! status code, an `ErrorReason` and its details in exactly one place
//! (`grpc::rejection`).

use crate::names::{ItemId, LeaseToken, QueueName};

/// How a lease was finished: by a completion, a failure or a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Finish {
    /// Completed.
    Completed,
    /// Failed (retriable or fatal).
    Failed,
    /// Released.
    Released,
}

impl Finish {
    /// As the `finished` metadata of LEASE_FINISHED says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Completed => "completed",
            Finish::Failed => "failed",
            Finish::Released => "released",
        }
    }
}

/// Why a lease token is refused: what became of its lease or its item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleCause {
    /// The lease's deadline passed (it may not have been reaped yet).
    Expired,
    /// The lease ended and another worker holds the item now.
    Taken,
    /// This lease was already finished in another way.
    Finished(Finish),
    /// The item was completed under another lease (or purged, or its queue
    /// recreated): it is no longer in the queue.
    ItemCompleted,
    /// The item is dead.
    ItemDead,
}

impl StaleCause {
    /// What happened, for people.
    pub fn describe(self) -> &'static str {
        match self {
            StaleCause::Expired => {
                "the lease expired and the item goes back to the queue (or dead once its \
                 attempts are used up); stop working on it, another worker will get it"
            }
            StaleCause::Taken => {
                "the lease expired or was released, and another worker now holds the item; \
                 stop working on it"
            }
            StaleCause::Finished(Finish::Completed) => {
                "this lease already completed the item; do not finish it again"
            }
            StaleCause::Finished(Finish::Failed) => {
                "this lease already failed the item; do not finish it again"
            }
            StaleCause::Finished(Finish::Released) => {
                "this lease already released the item; do not finish it again"
            }
            StaleCause::ItemCompleted => {
                "the item is no longer in the queue (completed under another lease, or \
                 purged); nothing is lost"
            }
            StaleCause::ItemDead => "the item is dead (see ListDead)",
        }
    }
}

/// Which server limit a request exceeded, as `GetServerInfoResponse` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// The request field at fault (`items[3].payload`, `lease`, `max_items`).
    pub field: String,
    /// The limit's name (`max_item_bytes`, `min_lease`, ...).
    pub limit: &'static str,
    /// The limit's value, as a string (`1048576`, `1s`).
    pub value: String,
}

/// What went wrong, or why a call was refused. Nothing changed when a call
/// returns an error — except after [`Error::Store`]: the change was made in
/// memory but is not durable, and every later change is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A request field is malformed (or missing); the message names it and
    /// the fix.
    #[error("{message}")]
    InvalidField {
        /// The request field at fault.
        field: String,
        /// What is wrong with it and what to do.
        message: String,
    },
    /// A request field is outside the server's limits.
    #[error("{message}")]
    LimitExceeded {
        /// The field and the limit.
        bound: Box<Bound>,
        /// What is wrong and what to do.
        message: String,
    },
    /// A batch names the same item twice.
    #[error("item {item} is named twice in one call; pass each lease token once")]
    DuplicateToken {
        /// The item.
        item: ItemId,
    },
    /// A request id was reused for a different request.
    #[error(
        "request_id {request_id} was used for an earlier call of {earlier} item(s), this one has \
         {now}: use a new request_id for a new call"
    )]
    RequestIdReused {
        /// The request id (quoted, cut when huge).
        request_id: String,
        /// Items in the earlier call.
        earlier: usize,
        /// Items in this one.
        now: usize,
    },
    /// A page token this server did not issue for this listing.
    #[error(
        "page_token {0} was not issued by this server for this listing: pass the \
         next_page_token of the previous page, or none for the first page"
    )]
    InvalidPageToken(String),
    /// No queue has this name.
    #[error("queue {0} not found: create it first (wq push creates it, or CreateQueue)")]
    QueueNotFound(QueueName),
    /// The queue exists with other settings.
    #[error(
        "queue {0} already exists with different settings: use its settings, change them with \
         UpdateQueue, or delete it first"
    )]
    QueueExists(QueueName),
    /// Enqueue into a sealed queue.
    #[error("queue {0} is sealed: no more items can be added to it (create a new queue)")]
    Sealed(QueueName),
    /// A lease token whose lease expired, was finished, or moved on.
    #[error("lease {token} is no longer held: {}", cause.describe())]
    StaleLease {
        /// The queue.
        queue: QueueName,
        /// The refused token.
        token: LeaseToken,
        /// What happened to the lease or its item.
        cause: StaleCause,
    },
    /// RequeueDead named an item that is not dead.
    #[error("item {item} of queue {queue} is not dead; list the dead ones with ListDead")]
    ItemNotDead {
        /// The queue.
        queue: QueueName,
        /// The item.
        item: ItemId,
    },
    /// No such item in the queue.
    #[error("item {item} is not in queue {queue}; list the dead ones with ListDead")]
    ItemNotFound {
        /// The queue.
        queue: QueueName,
        /// The item.
        item: ItemId,
    },
    /// The store could not persist a change; the server refuses every
    /// further call (UNAVAILABLE), reports NOT_SERVING and exits, to be
    /// restarted on what is durable.
    #[error(
        "the store failed ({0}): this server takes no more calls and restarts on what is durable; \
         retry on the restarted server (free disk space if the disk is full)"
    )]
    Store(#[from] crate::store::StoreError),
    /// A server-wide resource limit is reached; the message names the limit
    /// and the setting that raises it.
    #[error("{message}")]
    Exhausted {
        /// The limit (`max_queues`, `max_queued_bytes`).
        limit: &'static str,
        /// Its value.
        max: u64,
        /// What to do.
        message: String,
    },
    /// The shared database (the postgres store) could not be reached or
    /// answered with an error; the call may or may not have taken effect
    /// only if the connection broke during its COMMIT (a retry is answered
    /// as the first call's effect: completions are remembered).
    #[error(
        "the database is unavailable ({0}): retry shortly, on this replica or another \
         (queue-server --database-url)"
    )]
    Unavailable(String),
    /// The server is stopping and takes no new calls.
    #[error("the server is shutting down: retry on another replica or after the restart")]
    ShuttingDown,
}

impl Error {
    /// A malformed field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A field beyond limit `limit` (whose value is `value`).
    pub fn limit(
        field: impl Into<String>,
        limit: &'static str,
        value: impl ToString,
        message: impl Into<String>,
    ) -> Self {
        Error::LimitExceeded {
            bound: Box::new(Bound {
                field: field.into(),
                limit,
                value: value.to_string(),
            }),
            message: message.into(),
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
