//! The workq wire contract, package `workq.v1`, generated from
//! `proto/workq/v1/queue.proto` at build time.
//!
//! Every client in any language is generated from that file; this crate is the
//! Rust one, shared by `queue-server` (server side) and `worker-sdk` (client side).

/// Generated messages, client and server of package `workq.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("workq.v1");
}

/// The encoded `FileDescriptorSet` of the contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("workq_descriptor");

/// KEDA's external scaler protocol (package `externalscaler`), generated from
/// `proto/keda/externalscaler.proto`, KEDA's own definition: `queue-server`
/// serves it so that KEDA can scale on exact queue counts. Not part of the
/// workq contract.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod externalscaler {
    tonic::include_proto!("externalscaler");

    /// The encoded `FileDescriptorSet` of the protocol, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("externalscaler_descriptor");
}

/// Defaults of the contract, written once for the server and every client.
///
/// A queue created without its own settings gets these; clients that keep
/// queues elsewhere (the SDK's `redis://` and `amqp://` backends) use the same
/// numbers so that a worker behaves alike on every backend.
pub mod defaults {
    use std::time::Duration;

    /// How long a lease lasts when neither the call nor the queue names a
    /// duration.
    pub const LEASE: Duration = Duration::from_secs(30);

    /// Attempts (retriable failures and lease expiries) before an item goes dead.
    pub const MAX_ATTEMPTS: u32 = 5;

    /// Back-off after the first retriable failure, doubled for each further one.
    pub const RETRY_BACKOFF: Duration = Duration::from_secs(1);

    /// Upper bound of the retry back-off.
    pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(60);

    /// The largest gRPC message the server accepts or sends by default
    /// (`queue-server --max-message-bytes`); clients accept answers this large.
    pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
}

/// Conversions between the contract's well-known types
/// (`google.protobuf.Duration`, `Timestamp`) and the ones code works with.
pub mod time {
    use std::time::Duration;

    /// The wire form of a duration.
    pub fn duration(d: Duration) -> prost_types::Duration {
        prost_types::Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        }
    }

    /// A wire duration as a [`Duration`]; refuses a negative or malformed
    /// one with a message naming `field`.
    pub fn from_duration(field: &str, d: &prost_types::Duration) -> Result<Duration, String> {
        if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
            return Err(format!(
                "{field} must be a non-negative duration (seconds {}, nanos {}); \
                 give a duration of zero or more",
                d.seconds, d.nanos
            ));
        }
        Ok(Duration::new(
            d.seconds.unsigned_abs(),
            d.nanos.unsigned_abs(),
        ))
    }

    /// An optional wire duration: `None` when unset.
    pub fn opt_duration(
        field: &str,
        d: Option<&prost_types::Duration>,
    ) -> Result<Option<Duration>, String> {
        d.map(|d| from_duration(field, d)).transpose()
    }

    /// The wire form of a time given in milliseconds since the Unix epoch.
    pub fn timestamp_ms(ms: u64) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
            nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
        }
    }

    /// A wire time as milliseconds since the Unix epoch (0 before it).
    pub fn ms_of_timestamp(t: &prost_types::Timestamp) -> u64 {
        let secs = u64::try_from(t.seconds).unwrap_or(0);
        let millis = u64::try_from(t.nanos / 1_000_000).unwrap_or(0);
        secs.saturating_mul(1000).saturating_add(millis)
    }
}

/// Machine-readable errors: the [`v1::ErrorReason`] of a refusal, carried as
/// a `google.rpc.ErrorInfo` (domain [`errors::DOMAIN`]) in a status's details
/// or as a [`v1::Problem`] inside a stream.
///
/// The server builds refusals with [`errors::Rejection`]; a client reads the
/// reason back with [`errors::reason`] (or [`errors::problem_reason`] in a
/// stream), as a client in any language would, by decoding the status details.
pub mod errors {
    use crate::v1::{ErrorReason, Problem};
    use std::collections::HashMap;
    use std::time::Duration;
    use tonic::{Code, Status};
    use tonic_types::{ErrorDetails, StatusExt};

    /// The `ErrorInfo.domain` of every workq error.
    pub const DOMAIN: &str = "workq.dev";

    const PREFIX: &str = "ERROR_REASON_";

    impl ErrorReason {
        /// The reason as `ErrorInfo.reason` carries it: the value's name
        /// without its `ERROR_REASON_` prefix (`LEASE_EXPIRED`).
        pub fn label(self) -> &'static str {
            let name = self.as_str_name();
            name.strip_prefix(PREFIX).unwrap_or(name)
        }

        /// The reason named by an `ErrorInfo.reason`; `None` for one this
        /// client does not know (decide by the status code then).
        pub fn from_label(label: &str) -> Option<Self> {
            ErrorReason::from_str_name(&format!("{PREFIX}{label}"))
                .filter(|r| *r != ErrorReason::Unspecified)
        }
    }

    /// A refusal: status code, message for people, reason and metadata for
    /// programs, and the standard details that apply.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Rejection {
        /// The status code (google/rpc/code.proto).
        pub code: Code,
        /// What went wrong and what to do.
        pub message: String,
        /// What went wrong, for programs.
        pub reason: ErrorReason,
        /// The queue, item, lease token or limit involved.
        pub metadata: HashMap<String, String>,
        /// The request field at fault (sent as a `google.rpc.BadRequest`).
        pub field: Option<String>,
        /// The resource not found or already there (a `google.rpc.ResourceInfo`
        /// of type `workq.dev/Queue` or `workq.dev/Item`).
        pub resource: Option<(&'static str, String)>,
        /// When to retry (a `google.rpc.RetryInfo`).
        pub retry_after: Option<Duration>,
    }

    impl Rejection {
        /// A refusal with no metadata or details yet.
        pub fn new(code: Code, reason: ErrorReason, message: impl Into<String>) -> Self {
            Rejection {
                code,
                message: message.into(),
                reason,
                metadata: HashMap::new(),
                field: None,
                resource: None,
                retry_after: None,
            }
        }

        /// Adds a metadata entry.
        pub fn meta(mut self, key: &str, value: impl ToString) -> Self {
            self.metadata.insert(key.to_owned(), value.to_string());
            self
        }

        /// Names the request field at fault.
        pub fn field(mut self, field: impl Into<String>) -> Self {
            self.field = Some(field.into());
            self
        }

        /// Names the resource (`"Queue"` or `"Item"`) not found or already there.
        pub fn resource(mut self, kind: &'static str, name: impl Into<String>) -> Self {
            self.resource = Some((kind, name.into()));
            self
        }

        /// Says when to retry.
        pub fn retry_after(mut self, after: Duration) -> Self {
            self.retry_after = Some(after);
            self
        }

        /// The in-stream form.
        pub fn to_problem(&self) -> Problem {
            Problem {
                code: self.code as i32,
                message: self.message.clone(),
                reason: self.reason as i32,
                metadata: self.metadata.clone(),
            }
        }

        /// The status form, with `ErrorInfo` and the details that apply.
        pub fn to_status(&self) -> Status {
            let mut details = ErrorDetails::new();
            if self.reason != ErrorReason::Unspecified {
                details.set_error_info(self.reason.label(), DOMAIN, self.metadata.clone());
            }
            if let Some(field) = &self.field {
                details.add_bad_request_violation(field.clone(), self.message.clone());
            }
            if let Some((kind, name)) = &self.resource {
                details.set_resource_info(format!("{DOMAIN}/{kind}"), name.clone(), "", "");
            }
            if let Some(after) = self.retry_after {
                details.set_retry_info(Some(after));
            }
            Status::with_error_details(self.code, self.message.clone(), details)
        }
    }

    impl From<Rejection> for Status {
        fn from(r: Rejection) -> Status {
            r.to_status()
        }
    }

    /// The reason and metadata of an error status, from its `ErrorInfo`;
    /// `None` when it carries none of ours (decide by the code then).
    pub fn reason(status: &Status) -> Option<(ErrorReason, HashMap<String, String>)> {
        let info = status.get_details_error_info()?;
        if info.domain != DOMAIN {
            return None;
        }
        Some((ErrorReason::from_label(&info.reason)?, info.metadata))
    }

    /// The reason of an in-stream problem (`Unspecified` for one this client
    /// does not know).
    pub fn problem_reason(p: &Problem) -> ErrorReason {
        ErrorReason::try_from(p.reason).unwrap_or(ErrorReason::Unspecified)
    }

    /// The status a unary call would have answered for an in-stream problem,
    /// with the same reason and metadata.
    pub fn problem_status(p: &Problem) -> Status {
        let mut r = Rejection::new(Code::from(p.code), problem_reason(p), p.message.clone());
        r.metadata = p.metadata.clone();
        r.to_status()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn reasons_round_trip_through_error_info() {
            let st = Rejection::new(
                Code::FailedPrecondition,
                ErrorReason::LeaseExpired,
                "lease 7.1 expired",
            )
            .meta("item", 7)
            .meta("queue", "jobs")
            .to_status();
            assert_eq!(st.code(), Code::FailedPrecondition);
            let (reason, meta) = reason(&st).expect("error info");
            assert_eq!(reason, ErrorReason::LeaseExpired);
            assert_eq!(meta.get("item").map(String::as_str), Some("7"));
            let info = st.get_details_error_info().expect("info");
            assert_eq!(info.reason, "LEASE_EXPIRED");
            assert_eq!(info.domain, "workq.dev");
        }

        #[test]
        fn labels_are_names_without_the_prefix() {
            assert_eq!(ErrorReason::QueueSealed.label(), "QUEUE_SEALED");
            assert_eq!(
                ErrorReason::from_label("QUEUE_SEALED"),
                Some(ErrorReason::QueueSealed)
            );
            assert_eq!(ErrorReason::from_label("NO_SUCH_REASON"), None);
            assert_eq!(ErrorReason::from_label("UNSPECIFIED"), None);
        }

        #[test]
        fn problems_become_the_same_status() {
            let r = Rejection::new(Code::NotFound, ErrorReason::QueueNotFound, "no queue x")
                .meta("queue", "x");
            let st = problem_status(&r.to_problem());
            assert_eq!(st.code(), Code::NotFound);
            assert_eq!(
                reason(&st).map(|(r, _)| r),
                Some(ErrorReason::QueueNotFound)
            );
        }
    }
}

#[cfg(test)]
mod time_tests {
    use super::time::*;
    use std::time::Duration;

    #[test]
    fn durations_and_times_round_trip() {
        let d = Duration::from_millis(1_500);
        assert_eq!(from_duration("lease", &duration(d)), Ok(d));
        assert_eq!(
            ms_of_timestamp(&timestamp_ms(1_700_000_000_123)),
            1_700_000_000_123
        );
        let neg = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert!(
            from_duration("lease", &neg)
                .expect_err("negative")
                .contains("lease")
        );
    }
}
